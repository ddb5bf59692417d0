//! The outcomes API: `POST /tollgate/v1/outcomes` on the proxy port records business results
//! of requests and workflows in the ledger's outcomes stream, ships them to ClickHouse
//! `outcomes` exactly once, and `tollgate report --by outcome` prices them.

use crate::common::clickhouse::ClickHouse;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tollgate::money::NanoUsd;
use tollgate::record::{OutcomeRecord, Record};

const PATH: &str = "/tollgate/v1/outcomes";

async fn post(proxy: &Proxy, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = client().post(proxy.url(PATH)).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Posts `body` with the search team's key and expects all of it accepted.
async fn report(proxy: &Proxy, key: &str, body: &Value, n: u64) {
    let (status, answer) = post(proxy, Some(key), body).await;
    assert_eq!(status, 202, "{answer}\n{}", proxy.log());
    assert_eq!(answer["accepted"], n, "{answer}");
}

fn outcomes_in_ledger(proxy: &Proxy) -> Vec<OutcomeRecord> {
    tollgate::ledger::read_all(&proxy.ledger_dir().join("outcomes")).unwrap()
}

/// A chat call with `headers`; returns its request id once its answer is read.
async fn chat(proxy: &Proxy, key: &str, headers: &[(&str, &str)]) -> String {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "Name a bird."}]});
    let resp = openai_as(proxy, key, "/v1/chat/completions", headers, &body).await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let _ = resp.bytes().await.unwrap();
    id
}

#[tokio::test]
async fn single_and_batch_reports_are_recorded_with_the_keys_team() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    report(
        &proxy,
        KEY,
        &json!({"request_id": "r-1", "outcome": "success", "value": 12.5,
                "tags": {"ticket": "T-9"}}),
        1,
    )
    .await;
    report(
        &proxy,
        KEY,
        &json!({"outcomes": [
            {"workflow_id": "wf-1", "outcome": "failure"},
            {"request_id": "r-2", "outcome": "refund_issued", "value": null},
        ]}),
        2,
    )
    .await;
    let got = outcomes_in_ledger(&proxy);
    assert_eq!(got.len(), 3, "{got:#?}");
    let first = &got[0];
    assert_eq!(
        (
            first.team.as_str(),
            first.key_name.as_str(),
            first.request_id.as_str(),
            first.workflow_id.as_str(),
            first.outcome.as_str(),
            first.value,
        ),
        ("search", "search-prod", "r-1", "", "success", Some(12.5))
    );
    assert_eq!(first.tags.get("ticket").map(String::as_str), Some("T-9"));
    assert_eq!(
        (got[1].workflow_id.as_str(), got[1].request_id.as_str()),
        ("wf-1", "")
    );
    assert_eq!(
        (got[2].outcome.as_str(), got[2].value),
        ("refund_issued", None)
    );
    // Reporting makes no request record and calls no provider.
    assert!(
        tollgate::ledger::read_all::<Record>(&proxy.ledger_dir())
            .unwrap()
            .is_empty()
    );
    assert_eq!(up.sim.stats().requests, 0);
    // Counted by team and label for Prometheus.
    let metrics = proxy.metrics().await;
    for (label, n) in [("success", 1.0), ("failure", 1.0), ("refund_issued", 1.0)] {
        assert_eq!(
            metric(
                &metrics,
                "tollgate_outcomes_total",
                &[("team", "search"), ("outcome", label)]
            ),
            Some(n),
            "{label}"
        );
    }
}

#[tokio::test]
async fn bad_reports_get_a_400_naming_the_field_and_nothing_is_recorded() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let ok = json!({"request_id": "r", "outcome": "success"});
    let batch = |bad: Value| json!({"outcomes": [ok.clone(), ok.clone(), ok.clone(), bad]});
    let too_many: Vec<Value> = (0..1001).map(|_| ok.clone()).collect();
    let cases = [
        (
            batch(json!({"outcome": "success"})),
            "outcomes[3].request_id",
        ),
        (
            batch(json!({"request_id": "r", "workflow_id": "w", "outcome": "success"})),
            "outcomes[3].workflow_id",
        ),
        (
            batch(json!({"request_id": "r", "outcome": "success", "value": "high"})),
            "outcomes[3].value",
        ),
        (batch(json!({"request_id": "r"})), "outcomes[3].outcome"),
        (
            batch(json!({"request_id": "r", "outcome": "x".repeat(65)})),
            "outcomes[3].outcome",
        ),
        (json!({"request_id": "r", "outcome": 3}), "outcome"),
        (json!({ "outcomes": too_many }), "outcomes"),
    ];
    for (body, field) in cases {
        let (status, answer) = post(&proxy, Some(KEY), &body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{field}: {message}"
        );
    }
    let (status, answer) = post(&proxy, None, &ok).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "missing_api_key");
    let (status, _) = post(&proxy, Some("tg-not-a-key"), &ok).await;
    assert_eq!(status, 401);
    let resp = client()
        .get(proxy.url(PATH))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    // A rejected batch is rejected whole.
    assert!(outcomes_in_ledger(&proxy).is_empty());
}

/// The latest outcome of each (team, request) in ClickHouse, the way the migration's
/// comment reads it.
async fn latest_by_request(ch: &ClickHouse, db: &str) -> BTreeMap<(String, String), String> {
    ch.rows(&format!(
        "SELECT team, request_id, argMax(outcome, (ts, id)) AS outcome FROM {db}.outcomes \
         WHERE request_id != '' GROUP BY team, request_id"
    ))
    .await
    .into_iter()
    .map(|r| {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        ((s("team"), s("request_id")), s("outcome"))
    })
    .collect()
}

/// A proxy shipping to a fresh database (named after `test`, returned) of `ch`; shipped
/// segments are kept so the ledger can be reported from too.
async fn shipping_proxy(up: &Upstream, ch: &ClickHouse, test: &str) -> (Proxy, String) {
    let db = ch.fresh_database(test).await;
    let cfg = crate::clickhouse::keeping(up.addr, &ch.url, &db, "");
    (Proxy::start(&cfg).await, db)
}

#[tokio::test]
async fn outcomes_ship_once_the_latest_wins_within_a_team_and_both_stores_report_alike() {
    let ch = ClickHouse::shared().await;
    let up = start_sim().await;
    let (proxy, db) = shipping_proxy(&up, &ch, "outcomes_end_to_end").await;

    // Reported before its request exists: it joins once the request is recorded.
    report(
        &proxy,
        KEY,
        &json!({"request_id": "early-1", "outcome": "success"}),
        1,
    )
    .await;
    let early = chat(&proxy, KEY, &[("x-request-id", "early-1")]).await;
    assert_eq!(early, "early-1");
    let late = chat(&proxy, KEY, &[]).await;
    // The latest report wins: failure first, then success.
    report(
        &proxy,
        KEY,
        &json!({"request_id": late, "outcome": "failure"}),
        1,
    )
    .await;
    report(
        &proxy,
        KEY,
        &json!({"request_id": late, "outcome": "success"}),
        1,
    )
    .await;
    // Another team's key labels the same request: stored under its own team, it does not
    // attach to search's request.
    report(
        &proxy,
        OPEN_KEY,
        &json!({"request_id": late, "outcome": "failure"}),
        1,
    )
    .await;
    // A workflow of two requests, reported as a whole; and a request with no outcome.
    let wf_1 = chat(
        &proxy,
        KEY,
        &[
            ("x-tollgate-workflow", "wf-1"),
            ("x-sim-output-tokens", "31"),
        ],
    )
    .await;
    let wf_2 = chat(
        &proxy,
        KEY,
        &[
            ("x-tollgate-workflow", "wf-1"),
            ("x-sim-output-tokens", "7"),
        ],
    )
    .await;
    report(
        &proxy,
        KEY,
        &json!({"workflow_id": "wf-1", "outcome": "failure", "value": 3}),
        1,
    )
    .await;
    let unlabelled = chat(&proxy, KEY, &[("x-sim-output-tokens", "5")]).await;
    let posted = outcomes_in_ledger(&proxy);
    assert_eq!(posted.len(), 5);

    proxy
        .wait_metric("tollgate_sink_shipped_total", &[("table", "outcomes")], 5.0)
        .await;
    proxy
        .wait_metric("tollgate_sink_shipped_total", &[("table", "requests")], 5.0)
        .await;
    let rows = ch
        .rows(&format!(
            "SELECT id, team, key_name, request_id, outcome FROM {db}.outcomes ORDER BY ts, id"
        ))
        .await;
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = posted.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, want, "each report stored once");
    assert_eq!(rows[3]["team"], "", "the open key binds no team");

    let latest = latest_by_request(&ch, &db).await;
    let search = |id: &str| latest.get(&("search".to_string(), id.to_string())).cloned();
    assert_eq!(search("early-1").as_deref(), Some("success"));
    assert_eq!(search(&late).as_deref(), Some("success"));
    // Joined on (team, request_id), each search request has the search team's outcome.
    let joined = ch
        .rows(&format!(
            "SELECT r.request_id AS request_id, o.outcome AS outcome FROM {db}.requests AS r \
             INNER JOIN (SELECT team, request_id, argMax(outcome, (ts, id)) AS outcome \
             FROM {db}.outcomes WHERE request_id != '' GROUP BY team, request_id) AS o \
             ON r.team = o.team AND r.request_id = o.request_id ORDER BY request_id"
        ))
        .await;
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(
        joined.iter().all(|r| r["outcome"] == "success"),
        "{joined:?}"
    );

    // `report --by outcome`, computed here from the ledger's request records.
    let records: BTreeMap<String, Record> = proxy
        .records(5)
        .await
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    let sum = |ids: &[&str]| {
        let rs: Vec<&Record> = ids.iter().map(|id| &records[*id]).collect();
        let tokens: u64 = rs.iter().map(|r| r.input_tokens + r.output_tokens).sum();
        let cost = rs
            .iter()
            .map(|r| r.cost_usd.expect("priced"))
            .fold(NanoUsd::ZERO, |a, b| a + b);
        (tokens, cost)
    };
    let (success_tokens, success_cost) = sum(&["early-1", &late]);
    let (failure_tokens, failure_cost) = sum(&[&wf_1, &wf_2]);
    let (none_tokens, none_cost) = sum(&[&unlabelled]);
    assert!(failure_tokens > 0 && success_tokens > 0);
    let row = |label: &str, counts: [u64; 4], cost: NanoUsd| {
        let [outcomes, requests, workflows, tokens] = counts;
        json!({"outcome": label, "outcomes": outcomes, "requests": requests,
               "workflows": workflows, "tokens": tokens, "cost_usd": cost.to_string()})
    };
    let mut expect_rows = vec![
        (
            success_cost,
            row("success", [2, 2, 0, success_tokens], success_cost),
        ),
        (
            failure_cost,
            row("failure", [1, 2, 1, failure_tokens], failure_cost),
        ),
        (none_cost, row("", [0, 1, 0, none_tokens], none_cost)),
    ];
    expect_rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1["outcome"].as_str().cmp(&b.1["outcome"].as_str()))
    });
    let expect_rows: Vec<Value> = expect_rows.into_iter().map(|(_, r)| r).collect();
    let outcome_tokens = success_tokens + failure_tokens;
    let per_10k = (success_tokens * 10_000 + outcome_tokens / 2) / outcome_tokens;
    let token_yield = format!("{}.{:04}", per_10k / 10_000, per_10k % 10_000);
    let cost_per_success = NanoUsd((success_cost + failure_cost).0 / 2).to_string();
    for store in [&[][..], &["--ledger"][..]] {
        let out = proxy.command(
            &[
                &[
                    "report", "--by", "outcome", "--since", "1h", "--format", "json",
                ],
                store,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows: Vec<Value> = got["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                json!({"outcome": r["outcome"], "outcomes": r["outcomes"],
                       "requests": r["requests"], "workflows": r["workflows"],
                       "tokens": r["tokens"], "cost_usd": r["cost_usd"]})
            })
            .collect();
        assert_eq!(rows, expect_rows, "{store:?}: {got:#}");
        assert_eq!(got["successes"], 2, "{store:?}");
        assert_eq!(got["workflows"], 1, "{store:?}");
        assert_eq!(got["cost_per_success_usd"], cost_per_success, "{store:?}");
        assert_eq!(got["token_yield"], token_yield, "{store:?}");
    }
    let mixed = proxy.command(&["report", "--by", "outcome,team"]);
    assert!(!mixed.status.success());
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(
        stderr.contains("--by outcome is a report of its own"),
        "{stderr}"
    );
}

/// A crash after ClickHouse stored a batch but before the cursor moved past it: the restarted
/// proxy sends the same bytes with the same deduplication token, and each outcome is still
/// stored once.
#[tokio::test]
async fn a_replayed_outcomes_batch_is_stored_once() {
    let ch = ClickHouse::shared().await;
    let up = start_sim().await;
    let (mut proxy, db) = shipping_proxy(&up, &ch, "outcomes_replay").await;
    let batch: Vec<Value> = (0..3)
        .map(|i| json!({"request_id": format!("r-{i}"), "outcome": "success"}))
        .collect();
    // One call is one write: the sink ships it as one batch, the whole segment so far.
    report(&proxy, KEY, &json!({ "outcomes": batch }), 3).await;
    let shipped = [("table", "outcomes")];
    proxy
        .wait_metric("tollgate_sink_shipped_total", &shipped, 3.0)
        .await;
    proxy.kill9();

    let segments = tollgate::ledger::list_segments(&proxy.ledger_dir().join("outcomes")).unwrap();
    let [(seq, path)] = &segments[..] else {
        panic!("one outcomes segment expected: {segments:?}");
    };
    let len = std::fs::metadata(path).unwrap().len();
    let cursor = json!({"segment": seq, "offset": 0,
                        "pending": {"segment": seq, "start": 0, "end": len}});
    write(
        &proxy
            .dir
            .path()
            .join("data/sink/clickhouse-outcomes.cursor"),
        &cursor.to_string(),
    );
    proxy.restart().await;
    proxy
        .wait_metric("tollgate_sink_shipped_total", &shipped, 3.0)
        .await;
    report(
        &proxy,
        KEY,
        &json!({"request_id": "r-after", "outcome": "failure"}),
        1,
    )
    .await;
    proxy
        .wait_metric("tollgate_sink_shipped_total", &shipped, 4.0)
        .await;
    let rows = ch
        .rows(&format!(
            "SELECT request_id, count() AS n FROM {db}.outcomes GROUP BY request_id \
             ORDER BY request_id"
        ))
        .await;
    assert_eq!(
        rows,
        [
            json!({"request_id": "r-0", "n": 1}),
            json!({"request_id": "r-1", "n": 1}),
            json!({"request_id": "r-2", "n": 1}),
            json!({"request_id": "r-after", "n": 1}),
        ]
    );
}
