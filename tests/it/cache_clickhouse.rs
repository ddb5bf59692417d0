//! The response cache, end to end into ClickHouse: a caching proxy serves two teams chat
//! (whole and streamed), Anthropic messages and embeddings, some of them repeats, one
//! bypassing the cache; then every store a FinOps user reads (`requests`, `attempts`, the
//! hourly rollup, `report` from ClickHouse and from the ledger, the metrics) shows each hit
//! once, at no cost and with no upstream call, saving exactly what its miss spent.

use crate::common::clickhouse::ClickHouse;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tollgate::money::NanoUsd;
use tollgate::record::{AttemptRecord, Record};

const POLICIES: &str =
    "rules:\n  - name: cached\n    match: {feature: cached}\n    cache: {scope: team}\n";

/// Who sends a call: team `search` through its key in either API format, or team `billing`
/// through the key without bindings, naming its team in a header.
#[derive(Clone, Copy)]
enum Client {
    Search,
    SearchAnthropic,
    Billing,
}

/// What the cache does with a call. A hit names the call whose answer it replays; an
/// uncached call matches no caching rule.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Miss,
    Hit(&'static str),
    Bypass,
    Uncached,
}

impl Expect {
    fn header(self) -> Option<&'static str> {
        match self {
            Expect::Miss => Some("miss"),
            Expect::Hit(_) => Some("hit"),
            Expect::Bypass => Some("bypass"),
            Expect::Uncached => None,
        }
    }
}

struct Call {
    name: &'static str,
    client: Client,
    path: &'static str,
    body: Value,
    expect: Expect,
    /// How many tokens the simulated provider answers with, when not its default: answers
    /// of different lengths tell which one a hit replayed.
    output_tokens: Option<&'static str>,
}

impl Call {
    fn answering(self, output_tokens: &'static str) -> Call {
        Call {
            output_tokens: Some(output_tokens),
            ..self
        }
    }
}

const CHAT: &str = "/v1/chat/completions";
const EMBEDDINGS: &str = "/v1/embeddings";

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0,
           "messages": [{"role": "user", "content": prompt}]})
}

fn streamed(prompt: &str) -> Value {
    let mut body = chat(prompt);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

fn messages(prompt: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 200, "temperature": 0, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

fn embed() -> Value {
    json!({"model": "text-embedding-3-small", "input": ["a lake", "a river"]})
}

/// The traffic, in order. Team `billing` asks what `search` asked and gets an answer of its
/// own, of another length; the bypass goes upstream for another one and stores nothing, so
/// the repeat after it still replays the first.
fn traffic() -> Vec<Call> {
    use Client::*;
    use Expect::*;
    let call = |name, client, path, body, expect| Call {
        name,
        client,
        path,
        body,
        expect,
        output_tokens: None,
    };
    vec![
        call("chat", Search, CHAT, chat("Name a bird."), Miss),
        call(
            "chat again",
            Search,
            CHAT,
            chat("Name a bird."),
            Hit("chat"),
        ),
        call("stream", Search, CHAT, streamed("Name a river."), Miss),
        call(
            "stream again",
            Search,
            CHAT,
            streamed("Name a river."),
            Hit("stream"),
        ),
        call(
            "stream as whole",
            Search,
            CHAT,
            chat("Name a river."),
            Hit("stream"),
        ),
        call(
            "messages",
            SearchAnthropic,
            "/v1/messages",
            messages("Name a hill.", false),
            Miss,
        ),
        call(
            "messages streamed",
            SearchAnthropic,
            "/v1/messages",
            messages("Name a hill.", true),
            Hit("messages"),
        ),
        call("embeddings", Search, EMBEDDINGS, embed(), Miss),
        call(
            "embeddings again",
            Search,
            EMBEDDINGS,
            embed(),
            Hit("embeddings"),
        ),
        call("billing chat", Billing, CHAT, chat("Name a bird."), Miss).answering("17"),
        call(
            "billing stream",
            Billing,
            CHAT,
            streamed("Name a bird."),
            Hit("billing chat"),
        ),
        call("billing embeddings", Billing, EMBEDDINGS, embed(), Miss),
        call(
            "billing embeddings again",
            Billing,
            EMBEDDINGS,
            embed(),
            Hit("billing embeddings"),
        ),
        call("bypass", Search, CHAT, chat("Name a bird."), Bypass).answering("23"),
        call(
            "chat after bypass",
            Search,
            CHAT,
            chat("Name a bird."),
            Hit("chat"),
        ),
        call("uncached", Search, CHAT, chat("Name a bird."), Uncached),
    ]
}

/// Sends `call`, checks the cache's header and reads the whole answer; returns the request
/// id.
async fn send(proxy: &Proxy, call: &Call) -> String {
    let mut headers = Vec::new();
    if call.expect != Expect::Uncached {
        headers.push(("x-tollgate-feature", "cached"));
    }
    if call.expect == Expect::Bypass {
        headers.push(("x-tollgate-cache", "bypass"));
    }
    if let Some(tokens) = call.output_tokens {
        headers.push(("x-sim-output-tokens", tokens));
    }
    let resp = match call.client {
        Client::Search => openai(proxy, call.path, &headers, &call.body).await,
        Client::SearchAnthropic => anthropic(proxy, call.path, &headers, &call.body).await,
        Client::Billing => {
            headers.push(("x-tollgate-team", "billing"));
            openai_as(proxy, OPEN_KEY, call.path, &headers, &call.body).await
        }
    };
    assert_eq!(resp.status(), 200, "{}", call.name);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        header("x-tollgate-cache").as_deref(),
        call.expect.header(),
        "{}",
        call.name
    );
    let id = header("x-tollgate-request-id").expect("a request id");
    let body = resp.text().await.unwrap();
    assert!(!body.is_empty(), "{}", call.name);
    id
}

/// A team's totals: its hits and what they saved, and what its requests that went upstream
/// spent.
#[derive(Default, Debug, PartialEq)]
struct Expected {
    hits: u64,
    saved_input: u64,
    saved_output: u64,
    saved: NanoUsd,
    /// Tokens and cost of the requests that went upstream.
    input: u64,
    output: u64,
    cost: NanoUsd,
}

/// The rows of `requests`, their counts and money (decimals as text), by request id.
async fn request_rows(ch: &ClickHouse, db: &str) -> BTreeMap<String, Value> {
    let rows = ch
        .rows(&format!(
            "SELECT request_id, team, cache_hit, input_tokens, output_tokens, \
             cached_input_tokens, cache_write_tokens, reasoning_tokens, \
             toString(cost_usd) AS cost_usd, attempts, saved_input_tokens, \
             saved_output_tokens, toString(saved_cost_usd) AS saved_cost_usd \
             FROM {db}.requests"
        ))
        .await;
    let n = rows.len();
    let by_id: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|r| (r["request_id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(by_id.len(), n, "a request id stored twice");
    by_id
}

/// Sums per team from `table` (`requests` or `requests_hourly`), decimals as text.
async fn per_team(ch: &ClickHouse, db: &str, table: &str) -> Vec<Value> {
    let (requests, hits, cost, saved) = if table == "requests" {
        (
            "count()",
            "countIf(cache_hit)",
            "sum(ifNull(cost_usd, 0))",
            "sum(ifNull(saved_cost_usd, 0))",
        )
    } else {
        (
            "sum(requests)",
            "sum(cache_hits)",
            "sum(cost_usd)",
            "sum(saved_cost_usd)",
        )
    };
    ch.rows(&format!(
        "SELECT team, {requests} AS requests, {hits} AS hits, \
         sum(saved_input_tokens) AS saved_input, sum(saved_output_tokens) AS saved_output, \
         toString({saved}) AS saved, sum(input_tokens) AS input, \
         sum(output_tokens) AS output, toString({cost}) AS cost \
         FROM {db}.{table} GROUP BY team ORDER BY team"
    ))
    .await
}

fn nanos(text: &Value) -> NanoUsd {
    NanoUsd::parse_usd(text.as_str().unwrap_or_else(|| panic!("a decimal: {text}")))
        .unwrap_or_else(|| panic!("not a decimal: {text}"))
}

#[tokio::test]
async fn cache_hits_reach_clickhouse_the_rollup_reports_and_metrics_as_savings_not_spend() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("cache_end_to_end").await;
    let up = start_sim().await;
    let extra = format!(
        "policies: policies\ncache: {{enabled: true}}\ntelemetry:\n  clickhouse:\n    \
         url: {}\n    database: {db}\n    batch_period_ms: 50\n",
        ch.url
    );
    // Shipped segments are kept, so the ledger can be read and reported from afterwards.
    let cfg = config_for(up.addr, &extra).replace(
        "flush_interval_ms: 5",
        "flush_interval_ms: 5\n  shipped_retention_secs: 3600",
    );
    let proxy = Proxy::start_with(&cfg, &[("policies/cache.yaml", POLICIES.as_bytes())]).await;

    let calls = traffic();
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    for call in &calls {
        let id = send(&proxy, call).await;
        ids.insert(call.name, id);
    }
    let hit_calls: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c.expect, Expect::Hit(_)))
        .collect();
    let upstream_calls = calls.len() - hit_calls.len();
    assert_eq!(
        up.sim.stats().requests as usize,
        upstream_calls,
        "hits never reach the provider"
    );

    // Every request is in the ledger, and the sink has shipped it all.
    let n = calls.len();
    let ledger: BTreeMap<String, Record> = proxy
        .records(n)
        .await
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    assert_eq!(ledger.len(), n);
    // Each request that went upstream made one call, so one attempt record.
    let shipped = [("table", "requests")];
    proxy
        .wait_metric("tollgate_sink_shipped_total", &shipped, n as f64)
        .await;
    let attempts_shipped = [("table", "attempts")];
    proxy
        .wait_metric(
            "tollgate_sink_shipped_total",
            &attempts_shipped,
            upstream_calls as f64,
        )
        .await;
    // The lag gauge is updated after the shipped counter: wait for it rather than read it.
    for table in [shipped, attempts_shipped] {
        proxy
            .wait_metric("tollgate_sink_lag_records", &table, 0.0)
            .await;
    }
    let attempts_dir = tollgate::ledger::Stream::Attempts.dir(&proxy.ledger_dir());
    let ledger_attempts: Vec<AttemptRecord> = tollgate::ledger::read_all(&attempts_dir).unwrap();

    let output_of = |name: &str| ledger[&ids[name]].output_tokens;
    assert_ne!(
        output_of("billing chat"),
        output_of("chat"),
        "answers apart"
    );
    assert_ne!(output_of("bypass"), output_of("chat"), "answers apart");

    // What the stores should show, from the ledger: a hit saves what its miss spent.
    let miss_of = |call: &Call| match call.expect {
        Expect::Hit(of) => Some(&ledger[&ids[of]]),
        _ => None,
    };
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for call in &calls {
        let record = &ledger[&ids[call.name]];
        let e = expected.entry(record.team.clone()).or_default();
        match miss_of(call) {
            Some(miss) => {
                e.hits += 1;
                e.saved_input += miss.input_tokens;
                e.saved_output += miss.output_tokens;
                e.saved += miss.cost_usd.unwrap();
            }
            None => {
                e.input += record.input_tokens;
                e.output += record.output_tokens;
                e.cost += record.cost_usd.unwrap();
            }
        }
    }
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        ["billing", "search"],
        "two teams"
    );
    let hits_expected: u64 = expected.values().map(|e| e.hits).sum();
    let saved_expected: NanoUsd = expected.values().map(|e| e.saved).sum();
    assert_eq!(hits_expected as usize, hit_calls.len());
    assert!(saved_expected.0 > 0);

    // Every request arrives once; hits cost nothing and save exactly their miss's spend.
    let rows = request_rows(&ch, &db).await;
    assert_eq!(
        rows.keys().collect::<BTreeSet<_>>(),
        ids.values().collect::<BTreeSet<_>>(),
        "exactly the requests sent"
    );
    for call in &calls {
        let row = &rows[&ids[call.name]];
        let what = format!("{}: {row}", call.name);
        let tokens = [
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ]
        .map(|c| row[c].as_u64().unwrap());
        match call.expect {
            Expect::Hit(of) => {
                let miss_row = &rows[&ids[of]];
                let miss = &ledger[&ids[of]];
                assert_eq!(row["cache_hit"], true, "{what}");
                assert_eq!(tokens, [0; 5], "{what}");
                assert_eq!(row["cost_usd"], "0", "{what}");
                assert_eq!(row["attempts"], 0, "{what}");
                assert_eq!(
                    row["saved_input_tokens"], miss_row["input_tokens"],
                    "{what}"
                );
                assert_eq!(
                    row["saved_output_tokens"], miss_row["output_tokens"],
                    "{what}"
                );
                assert_eq!(row["saved_cost_usd"], miss_row["cost_usd"], "{what}");
                assert_eq!(row["saved_input_tokens"], miss.input_tokens, "{what}");
                assert_eq!(row["saved_output_tokens"], miss.output_tokens, "{what}");
                assert_eq!(Some(nanos(&row["saved_cost_usd"])), miss.cost_usd, "{what}");
            }
            _ => {
                assert_eq!(row["cache_hit"], false, "{what}");
                assert_eq!(row["attempts"], 1, "{what}");
                assert!(tokens[0] > 0, "{what}");
                assert!(nanos(&row["cost_usd"]).0 > 0, "{what}");
                assert_eq!(
                    (&row["saved_input_tokens"], &row["saved_output_tokens"]),
                    (&json!(0), &json!(0)),
                    "{what}"
                );
                assert_eq!(row["saved_cost_usd"], "0", "{what}");
            }
        }
    }

    // Hits made no upstream call: no attempt rows, in the ledger or in ClickHouse.
    let hit_ids: BTreeSet<&String> = hit_calls.iter().map(|c| &ids[c.name]).collect();
    let sent_ids: BTreeSet<&String> = calls
        .iter()
        .filter(|c| !matches!(c.expect, Expect::Hit(_)))
        .map(|c| &ids[c.name])
        .collect();
    let in_ledger: BTreeSet<&String> = ledger_attempts.iter().map(|a| &a.request_id).collect();
    assert_eq!(ledger_attempts.len(), upstream_calls);
    assert_eq!(in_ledger, sent_ids);
    let attempt_rows = ch
        .rows(&format!("SELECT request_id FROM {db}.attempts"))
        .await;
    assert_eq!(attempt_rows.len(), upstream_calls, "one call each");
    let attempted: BTreeSet<String> = attempt_rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(attempted.iter().collect::<BTreeSet<_>>(), sent_ids);
    assert!(attempted.iter().all(|id| !hit_ids.contains(id)));

    // The rollup sums what the rows hold, and its spend leaves the hits out.
    let raw = per_team(&ch, &db, "requests").await;
    let rolled = per_team(&ch, &db, "requests_hourly").await;
    assert_eq!(raw, rolled);
    let from_rollup: BTreeMap<String, Expected> = rolled
        .iter()
        .map(|r| {
            let e = Expected {
                hits: r["hits"].as_u64().unwrap(),
                saved_input: r["saved_input"].as_u64().unwrap(),
                saved_output: r["saved_output"].as_u64().unwrap(),
                saved: nanos(&r["saved"]),
                input: r["input"].as_u64().unwrap(),
                output: r["output"].as_u64().unwrap(),
                cost: nanos(&r["cost"]),
            };
            (r["team"].as_str().unwrap().to_string(), e)
        })
        .collect();
    assert_eq!(from_rollup, expected);

    // `report` from ClickHouse and from the ledger: the same hits and savings, per team and
    // in total.
    let report = |from_ledger: bool| {
        let mut args = vec![
            "report", "--since", "1h", "--by", "team", "--format", "json",
        ];
        args.extend(from_ledger.then_some("--ledger"));
        let out = proxy.command(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (from_ch, from_ledger) = (report(false), report(true));
    assert_eq!(from_ch, from_ledger);
    let lines = from_ch.as_array().unwrap();
    assert_eq!(lines.len(), 3, "two teams and a total: {from_ch}");
    let cache_columns = |r: &Value| (r["cache_hits"].clone(), r["cache_saved_usd"].clone());
    for line in &lines[..2] {
        let e = &expected[line["team"].as_str().unwrap()];
        assert_eq!(
            cache_columns(line),
            (json!(e.hits), json!(e.saved.to_string()))
        );
        assert_eq!(line["cost_usd"], e.cost.to_string(), "hits are not spend");
    }
    assert_eq!(
        cache_columns(&lines[2]),
        (json!(hits_expected), json!(saved_expected.to_string()))
    );

    // The metrics count the same hits and savings, per attribution and policy.
    let mut series: BTreeMap<[&str; 5], (u64, NanoUsd)> = BTreeMap::new();
    for call in &hit_calls {
        let r = &ledger[&ids[call.name]];
        let labels = [
            r.team.as_str(),
            r.project.as_str(),
            r.env.as_str(),
            r.model.as_str(),
            r.policy.as_str(),
        ];
        let s = series.entry(labels).or_default();
        s.0 += 1;
        s.1 += miss_of(call).unwrap().cost_usd.unwrap();
    }
    let metrics = proxy.metrics().await;
    let (mut hits_counted, mut saved_counted) = (0.0, 0.0);
    for ([team, project, env, model, policy], (hits, saved)) in &series {
        let labels = [
            ("team", *team),
            ("project", *project),
            ("env", *env),
            ("model", *model),
            ("policy", *policy),
        ];
        let counted = metric(&metrics, "tollgate_cache_hits_total", &labels);
        assert_eq!(counted, Some(*hits as f64), "{labels:?}");
        let saved_usd = metric(&metrics, "tollgate_cache_saved_usd_total", &labels).unwrap();
        assert!(
            (saved_usd - saved.0 as f64 / 1e9).abs() < 1e-9,
            "{labels:?}: {saved_usd} vs {saved}"
        );
        hits_counted += counted.unwrap();
        saved_counted += saved_usd;
    }
    let samples = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count()
    };
    assert_eq!(
        samples("tollgate_cache_hits_total"),
        series.len(),
        "{metrics}"
    );
    assert_eq!(hits_counted, hits_expected as f64);
    assert!(
        (saved_counted - saved_expected.0 as f64 / 1e9).abs() < 1e-9,
        "{saved_counted} vs {saved_expected}"
    );
    let policy = [("policy", "cached")];
    let misses = calls.iter().filter(|c| c.expect == Expect::Miss).count();
    assert_eq!(
        metric(&metrics, "tollgate_cache_misses_total", &policy),
        Some(misses as f64)
    );
    assert_eq!(
        metric(&metrics, "tollgate_cache_bypasses_total", &policy),
        Some(1.0)
    );
}
