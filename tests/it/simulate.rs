//! `tollgate simulate`: recorded traffic, written to a ledger (and to ClickHouse) with known
//! tokens, replayed through a candidate policy set by the real binary; the printed costs are
//! checked against costs computed here by hand.

use crate::common::clickhouse::ClickHouse;
use chrono::{Duration, Utc};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tollgate::money::NanoUsd;
use tollgate::record::{AttemptRecord, Record, Role, Verdict};
use tollgate::usage::UsageSource;

/// USD per 1M tokens: small 1 in / 2 out, big 10 in / 20 out; in nano-USD per token below.
const PRICES: &str = "\
version: 1
models:
  small:
    prices:
      - {effective_from: 2024-01-01, input: 1, output: 2}
  big:
    prices:
      - {effective_from: 2024-01-01, input: 10, output: 20}
";
const SMALL: (i64, i64) = (1_000, 2_000);
const BIG: (i64, i64) = (10_000, 20_000);

const POLICIES: &str = "\
rules:
  - name: deny-dev
    priority: 100
    match: {env: [dev]}
    deny: no dev traffic
  - name: search-small
    match: {team: [search]}
    route:
      targets: [{provider: sim, model: small}]
  - name: chat-cascade
    match: {feature: [chat]}
    cascade:
      steps: [{provider: sim, model: small}, {provider: sim, model: big}]
      judges: {finish: true}
  - name: fresh-cascade
    match: {feature: [fresh]}
    cascade:
      steps: [{provider: sim, model: small}, {provider: sim, model: big}]
      judges: {finish: true}
";

/// Tokens of an answer: (input, output).
const ANSWER: (u64, u64) = (1_000, 400);
/// Tokens of a rejected cheap answer.
const REJECTED: (u64, u64) = (1_000, 100);

fn cost((input, output): (u64, u64), (pin, pout): (i64, i64)) -> i64 {
    input as i64 * pin + output as i64 * pout
}

/// A call made for a request, as the proxy records it.
struct Made {
    model: &'static str,
    role: Role,
    verdict: Verdict,
    tokens: (u64, u64),
    price: (i64, i64),
}

fn made(model: &'static str, role: Role, verdict: Verdict, tokens: (u64, u64)) -> Made {
    let price = if model == "small" { SMALL } else { BIG };
    Made {
        model,
        role,
        verdict,
        tokens,
        price,
    }
}

/// The records of one request: attribution, the rule that planned it, its calls (none for
/// a request recorded before calls were), and its totals when it has no calls.
struct Request {
    id: String,
    team: &'static str,
    feature: &'static str,
    env: &'static str,
    policy: &'static str,
    calls: Vec<Made>,
    /// Tokens and price of a request without call records.
    totals: Option<((u64, u64), (i64, i64))>,
    counterfactual: Option<i64>,
}

impl Request {
    fn records(&self) -> (Record, Vec<AttemptRecord>) {
        let ts = Utc::now() - Duration::minutes(10);
        let attempts: Vec<AttemptRecord> = self
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| AttemptRecord {
                ts,
                request_id: self.id.clone(),
                attempt: i as u16 + 1,
                role: c.role,
                policy: self.policy.into(),
                team: self.team.into(),
                project: "p".into(),
                env: self.env.into(),
                user: String::new(),
                feature: self.feature.into(),
                key_name: String::new(),
                endpoint: "/v1/chat/completions".into(),
                provider: "sim".into(),
                model: c.model.into(),
                stream: false,
                status: 200,
                input_tokens: c.tokens.0,
                output_tokens: c.tokens.1,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                usage_source: UsageSource::Reported,
                cost_usd: Some(NanoUsd(cost(c.tokens, c.price))),
                latency_ms: 1,
                ttfb_ms: Some(1),
                error: None,
                verdict: c.verdict,
                judge: String::new(),
            })
            .collect();
        let (tokens, total) = match self.totals {
            Some((tokens, price)) => (tokens, cost(tokens, price)),
            None => (
                attempts.iter().fold((0, 0), |(i, o), a| {
                    (i + a.input_tokens, o + a.output_tokens)
                }),
                attempts.iter().map(|a| a.cost_usd.unwrap().0).sum(),
            ),
        };
        let record = Record {
            ts,
            request_id: self.id.clone(),
            team: self.team.into(),
            project: "p".into(),
            env: self.env.into(),
            user: String::new(),
            feature: self.feature.into(),
            workflow_id: String::new(),
            tags: Default::default(),
            key_name: String::new(),
            provider: "sim".into(),
            endpoint: "/v1/chat/completions".into(),
            requested_model: "big".into(),
            model: self.calls.last().map_or("big", |c| c.model).into(),
            stream: false,
            status: 200,
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            usage_source: UsageSource::Reported,
            cost_usd: Some(NanoUsd(total)),
            latency_ms: 1,
            ttfb_ms: Some(1),
            error: None,
            policy: self.policy.into(),
            attempts: attempts.len() as u16,
            escalations: attempts
                .iter()
                .filter(|a| a.verdict == Verdict::Rejected)
                .count() as u16,
            counterfactual_cost_usd: self.counterfactual.map(NanoUsd),
            cache_hit: false,
            saved_input_tokens: 0,
            saved_output_tokens: 0,
            saved_cost_usd: None,
        };
        (record, attempts)
    }
}

/// The recorded traffic, in groups of (team, feature):
/// - search: 3 plain calls to big, and 1 an old cascade escalated (small rejected, big
///   answered);
/// - apps/chat: 24 requests an old cascade planned; 6 escalated, 18 small answers accepted;
/// - apps/fresh: 2 requests without call records, and 1 escalated by the old cascade;
/// - lab (env dev): 3 plain calls to big;
/// - other: 2 plain calls to big, and 1 an old route sent to small instead of big.
fn traffic() -> Vec<Request> {
    let mut n = 0;
    let mut req = |team, feature, env, policy, calls: Vec<Made>| {
        n += 1;
        Request {
            id: format!("req-{n}"),
            team,
            feature,
            env,
            policy,
            calls,
            totals: None,
            counterfactual: None,
        }
    };
    let plain = || vec![made("big", Role::Primary, Verdict::Served, ANSWER)];
    let escalated = || {
        vec![
            made("small", Role::Primary, Verdict::Rejected, REJECTED),
            made("big", Role::Escalation, Verdict::Served, ANSWER),
        ]
    };
    let accepted = || vec![made("small", Role::Primary, Verdict::Accepted, ANSWER)];
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(req("search", "", "prod", "", plain()));
    }
    out.push(req("search", "", "prod", "old-cascade", escalated()));
    for i in 0..24 {
        let calls = if i % 4 == 0 { escalated() } else { accepted() };
        out.push(req("apps", "chat", "prod", "old-cascade", calls));
    }
    for _ in 0..2 {
        let mut r = req("apps", "fresh", "prod", "", Vec::new());
        r.totals = Some((ANSWER, BIG));
        out.push(r);
    }
    out.push(req("apps", "fresh", "prod", "old-cascade", escalated()));
    for _ in 0..3 {
        out.push(req("lab", "", "dev", "", plain()));
    }
    for _ in 0..2 {
        out.push(req("other", "", "prod", "", plain()));
    }
    let mut routed = req(
        "other",
        "",
        "prod",
        "old-route",
        vec![made("small", Role::Primary, Verdict::Served, ANSWER)],
    );
    routed.counterfactual = Some(cost(ANSWER, BIG));
    out.push(routed);
    out
}

/// A config, price file, candidate policies and a ledger holding `traffic()` in `dir`.
fn setup(dir: &Path, telemetry: &str) -> Vec<(Record, Vec<AttemptRecord>)> {
    let data = dir.join("data");
    std::fs::write(
        dir.join("tollgate.yaml"),
        format!(
            "builtin_prices: false\nprices: [prices.yaml]\ndata_dir: {}\n\
             providers:\n  sim: {{kind: simulated}}\n\
             models:\n  small: {{provider: sim}}\n  big: {{provider: sim}}\n{telemetry}",
            data.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("prices.yaml"), PRICES).unwrap();
    std::fs::create_dir_all(dir.join("candidate")).unwrap();
    std::fs::write(dir.join("candidate/rules.yaml"), POLICIES).unwrap();
    let ledger = tollgate::ledger::Ledger::open(
        &data,
        &tollgate::config::LedgerConfig::default(),
        tollgate::metrics::Metrics::new(),
    )
    .unwrap();
    let written: Vec<_> = traffic().iter().map(Request::records).collect();
    for (record, attempts) in &written {
        ledger.append(record, attempts).unwrap();
    }
    ledger.close();
    written
}

/// Runs `tollgate ARGS --config DIR/tollgate.yaml`; its standard output when it succeeds.
fn tollgate(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(dir.join("tollgate.yaml"))
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap()
}

fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `tollgate simulate` of the candidate policies, with `extra` arguments.
fn simulate_with(dir: &Path, extra: &[&str]) -> std::process::Output {
    let candidate = dir.join("candidate");
    let mut args = vec!["simulate", "--policies", candidate.to_str().unwrap()];
    args.extend(extra);
    tollgate(dir, &args)
}

/// The JSON of `tollgate simulate --by team,feature`.
fn simulate(dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--by", "team,feature", "--format", "json"];
    args.extend(extra);
    serde_json::from_str(&succeeded(simulate_with(dir, &args))).unwrap()
}

fn row<'a>(out: &'a Value, team: &str, feature: &str) -> &'a Value {
    out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["team"] == team && r["feature"] == feature)
        .unwrap_or_else(|| panic!("no row {team}/{feature} in {out:#}"))
}

/// (requests, matched, denied, actual, simulated) of a row.
fn totals(r: &Value) -> (u64, u64, u64, String, String) {
    (
        r["requests"].as_u64().unwrap(),
        r["matched"].as_u64().unwrap(),
        r["denied"].as_u64().unwrap(),
        r["actual_usd"].as_str().unwrap().to_string(),
        r["simulated_usd"].as_str().unwrap().to_string(),
    )
}

fn usd(nanos: i64) -> String {
    NanoUsd(nanos).to_string()
}

/// Every group's numbers, computed from the traffic by hand.
fn assert_hand_computed(out: &Value) {
    let small = cost(ANSWER, SMALL); // 1,800,000
    let big = cost(ANSWER, BIG); // 18,000,000
    let escalated = cost(REJECTED, SMALL) + big;

    // Route: each answer priced on small.
    assert_eq!(
        totals(row(out, "search", "")),
        (4, 4, 0, usd(3 * big + escalated), usd(4 * small))
    );
    // Cascade with an observed rate: small's answers for chat were rejected 6 times in
    // 24, so each request costs small + 1/4 × big.
    let chat = row(out, "apps", "chat");
    assert_eq!(
        totals(chat),
        (
            24,
            24,
            0,
            usd(6 * escalated + 18 * small),
            usd(24 * (small + big / 4))
        )
    );
    assert_eq!(
        chat["escalation_rates"],
        serde_json::json!([{"feature": "chat", "model": "small", "rate": "0.25",
            "source": "observed", "rejected": 6, "judged": 24, "requests": 24}])
    );
    // Cascade with one judged answer on record: the assumed 0.5 applies.
    let fresh = row(out, "apps", "fresh");
    assert_eq!(
        totals(fresh),
        (
            3,
            3,
            0,
            usd(2 * big + escalated),
            usd(3 * (small + big / 2))
        )
    );
    assert_eq!(fresh["escalation_rates"][0]["source"], "assumed");
    assert_eq!(fresh["escalation_rates"][0]["rate"], "0.50");
    assert_eq!(fresh["escalation_rates"][0]["judged"], 1);
    // Deny: nothing spent, counted as denied.
    assert_eq!(totals(row(out, "lab", "")), (3, 3, 3, usd(3 * big), usd(0)));
    // Unmatched: what it cost; the request an old route sent to small goes back to big.
    assert_eq!(
        totals(row(out, "other", "")),
        (3, 0, 0, usd(2 * big + small), usd(3 * big))
    );
    let rows = out["rows"].as_array().unwrap();
    let total = rows.last().unwrap();
    assert_eq!(total["team"], "TOTAL");
    let actual = 3 * big
        + escalated
        + 6 * escalated
        + 18 * small
        + 2 * big
        + escalated
        + 3 * big
        + 2 * big
        + small;
    let simulated = 4 * small + 24 * (small + big / 4) + 3 * (small + big / 2) + 3 * big;
    assert_eq!(totals(total), (37, 34, 3, usd(actual), usd(simulated)));
    assert_eq!(total["difference_usd"], usd(simulated - actual));
    let assumptions = out["assumptions"].to_string();
    assert!(
        assumptions.contains("tools and json are not recorded"),
        "{assumptions}"
    );
    assert!(
        assumptions.contains("2 request(s) have no call records"),
        "{assumptions}"
    );
}

#[test]
fn simulated_costs_from_the_ledger_are_the_hand_computed_ones() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let out = simulate(dir.path(), &["--assume-escalation", "0.5"]);
    assert_hand_computed(&out);
    // The default assumed rate, 0.2, prices the fresh cascade at small + big / 5.
    let out = simulate(dir.path(), &[]);
    let fresh = row(&out, "apps", "fresh");
    let (small, big) = (cost(ANSWER, SMALL), cost(ANSWER, BIG));
    assert_eq!(fresh["simulated_usd"], usd(3 * (small + big / 5)));
    assert_eq!(fresh["escalation_rates"][0]["rate"], "0.20");
    // Outside the window there is nothing to replay.
    let out = simulate(dir.path(), &["--since", "5m"]);
    assert_eq!(out["rows"].as_array().unwrap().len(), 1);
    assert_eq!(out["rows"][0]["requests"], 0);
}

#[test]
fn the_table_names_the_rates_and_assumptions_and_csv_has_a_line_per_group() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    let run = |format: &str| succeeded(simulate_with(dir.path(), &["--format", format]));
    let table = run("table");
    assert!(
        table.contains("apps, chat: small for feature \"chat\": 0.25 observed (6 rejected of 24 judged answers), 24 requests"),
        "{table}"
    );
    assert!(
        table.contains("apps, fresh: small for feature \"fresh\": 0.20 assumed (1 judged answers seen), 3 requests"),
        "{table}"
    );
    assert!(table.contains("Assumptions:"), "{table}");
    let csv = run("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("team,feature,requests,matched,denied,unpriced,actual_usd,simulated_usd,difference_usd,escalation_rates"), "{csv}");
    // Five groups and the total.
    assert_eq!(lines.len(), 1 + 5 + 1, "{csv}");
}

#[test]
fn candidate_policies_with_problems_are_reported_at_their_position() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), "");
    std::fs::write(
        dir.path().join("candidate/rules.yaml"),
        POLICIES.replace("model: big}]", "model: huge}]"),
    )
    .unwrap();
    let out = simulate_with(dir.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("candidate/rules.yaml");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{}:", file.display())) && l.contains("huge")),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_gives_the_same_numbers_as_the_ledger() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("simulate_same_numbers").await;
    let dir = tempfile::tempdir().unwrap();
    let written = setup(
        dir.path(),
        &format!(
            "telemetry:\n  clickhouse:\n    url: {}\n    database: {db}\n",
            ch.url
        ),
    );
    succeeded(tollgate(dir.path(), &["migrate"]));
    let lines = |rows: Vec<String>| rows.join("\n");
    let requests = lines(
        written
            .iter()
            .map(|(r, _)| serde_json::to_string(r).unwrap())
            .collect(),
    );
    let attempts = lines(
        written
            .iter()
            .flat_map(|(_, a)| a.iter().map(|a| serde_json::to_string(a).unwrap()))
            .collect(),
    );
    for (table, rows) in [("requests", requests), ("attempts", attempts)] {
        ch.exec(&format!(
            "INSERT INTO {db}.{table} SETTINGS date_time_input_format = 'best_effort' \
             FORMAT JSONEachRow\n{rows}"
        ))
        .await;
    }
    let from_ch = simulate(dir.path(), &["--assume-escalation", "0.5"]);
    assert_hand_computed(&from_ch);
    let from_ledger = simulate(dir.path(), &["--assume-escalation", "0.5", "--ledger"]);
    assert_eq!(from_ch, from_ledger);
}
