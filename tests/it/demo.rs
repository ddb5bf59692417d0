//! `tollgate demo`: the whole path offline, ending in a spend report from the ledger, with
//! the savings of routing and of the cache, and the alerts of a budget the traffic overruns.

use std::path::Path;
use std::process::Command;
use tollgate::money::NanoUsd;

/// Runs `tollgate demo` with `args` and its ledger in `data_dir`; its output, once it
/// succeeded.
fn demo(args: &[&str], data_dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("demo")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn demo_runs_end_to_end_and_reports_spend_per_team() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = demo(&["--requests", "60"], dir.path());
    assert!(stdout.contains("the ledger holds 60 records"), "{stdout}");
    for team in ["search", "support", "growth"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(team)),
            "{team} missing:\n{stdout}"
        );
    }
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("team"))
        .expect("a header row")
        .split_whitespace()
        .collect();
    let total: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .expect("a total row")
        .split_whitespace()
        .collect();
    // TOTAL spans the three key columns.
    let column = |name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap() - 2;
        total[i].parse().unwrap()
    };
    assert!(column("cost_usd") > 0.0, "{total:?}");
    assert!(
        column("saved_usd") > 0.0,
        "the cheap-first policy saves: {stdout}"
    );
    assert!(stdout.contains("Policy cheap-first:"), "{stdout}");
    assert!(
        column("cache_hits") > 0.0 && column("cache_saved_usd") > 0.0,
        "repeated requests are answered from the cache: {stdout}"
    );
    assert!(stdout.contains("answered from the cache"), "{stdout}");
    // The ledger it reports from is kept and holds every request.
    let records =
        tollgate::ledger::read_all::<tollgate::record::Record>(&dir.path().join("data/ledger"))
            .unwrap();
    assert_eq!(records.len(), 60);
    assert!(records.iter().any(|r| r.stream) && records.iter().any(|r| !r.stream));
    let routed: Vec<_> = records
        .iter()
        .filter(|r| r.policy == "cheap-first")
        .collect();
    assert!(
        routed
            .iter()
            .any(|r| r.escalations == 1 && r.model == "gpt-5")
            && routed
                .iter()
                .any(|r| r.escalations == 0 && r.model.starts_with("gpt-5-mini")),
        "some cheap-first requests escalate, others do not"
    );
    // Hits cost nothing and carry what they saved.
    let hits: Vec<_> = records.iter().filter(|r| r.cache_hit).collect();
    assert!(!hits.is_empty());
    for hit in hits {
        assert_eq!(hit.cost_usd, Some(NanoUsd::ZERO));
        assert_eq!(
            (hit.input_tokens, hit.output_tokens, hit.attempts),
            (0, 0, 0)
        );
        assert!(hit.saved_cost_usd.unwrap().0 > 0 && hit.saved_output_tokens > 0);
    }
    budget_alerts_are_shown(&stdout, &records);
    outcomes_are_reported(&stdout, dir.path(), &records);
}

/// Teams (keys of one team report together) x features x workflows per feature.
const DEMO_WORKFLOWS: usize = 3 * 4 * 4;

/// Each team reported an outcome for each of its workflows, and the outcome report joins
/// them to the requests that carried the workflow.
fn outcomes_are_reported(stdout: &str, dir: &Path, records: &[tollgate::record::Record]) {
    let outcomes: Vec<tollgate::record::OutcomeRecord> =
        tollgate::ledger::read_all(&dir.join("data/ledger/outcomes")).unwrap();
    assert_eq!(outcomes.len(), DEMO_WORKFLOWS);
    assert!(outcomes.iter().all(|o| !o.workflow_id.is_empty()));
    let successes = outcomes.iter().filter(|o| o.outcome == "success").count();
    assert!(successes > 0 && successes < DEMO_WORKFLOWS, "{successes}");
    assert!(
        stdout.contains(&format!(
            "Outcomes: {DEMO_WORKFLOWS} reported, one per workflow of each team ({successes} success)"
        )),
        "{stdout}"
    );
    assert!(records.iter().all(|r| !r.workflow_id.is_empty()));
    let report = tollgate::report::outcomes::aggregate(records, &outcomes);
    let joined: u64 = report
        .rows
        .iter()
        .filter(|r| !r.outcome.is_empty())
        .map(|r| r.requests)
        .sum();
    assert_eq!(
        joined as usize,
        records.len(),
        "every request has its workflow's outcome"
    );
}

/// Growth overruns its daily budget: the demo's webhook shows each threshold's alert, the
/// budget's spend is the ledger's for growth, and nothing else alerted.
fn budget_alerts_are_shown(stdout: &str, records: &[tollgate::record::Record]) {
    let alerts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  threshold ") || l.starts_with("  forecast "))
        .collect();
    for pct in [50, 80, 100] {
        assert!(
            alerts
                .iter()
                .any(|l| l.contains("budget=growth-daily")
                    && l.contains(&format!(" percent={pct} "))),
            "no {pct}% alert:\n{stdout}"
        );
    }
    assert!(
        alerts.iter().all(|l| l.contains("budget=growth-daily")),
        "only growth's budget alerts:\n{stdout}"
    );
    let field = |line: &str, name: &str| -> NanoUsd {
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        NanoUsd::parse_usd(value).unwrap()
    };
    let full = alerts.iter().find(|l| l.contains(" percent=100 ")).unwrap();
    assert!(
        field(full, "spend_usd") >= field(full, "limit_usd"),
        "{full}"
    );
    // Each alert's text follows it, with the budget's scope: team growth only.
    assert!(
        stdout.contains("has reached 100% of its daily limit"),
        "{stdout}"
    );
    let scopes: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("Scope: ").map(|(_, s)| s))
        .collect();
    assert_eq!(scopes.len(), alerts.len(), "{stdout}");
    assert!(scopes.iter().all(|s| *s == "team=growth."), "{scopes:?}");

    // The budget's spend, as the proxy's metrics had it, is what the ledger holds for growth.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Budget growth-daily "))
        .unwrap_or_else(|| panic!("no budget line:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "spent").unwrap();
    let spent = NanoUsd::parse_usd(words[at - 2]).unwrap();
    let limit = NanoUsd::parse_usd(words[at + 2]).unwrap();
    let growth: Vec<_> = records.iter().filter(|r| r.team == "growth").collect();
    assert_eq!(
        spent,
        growth.iter().filter_map(|r| r.cost_usd).sum::<NanoUsd>()
    );
    assert_eq!(limit, field(full, "limit_usd"));
    assert!(spent >= limit, "{line}");
    assert!(
        line.ends_with(&format!("0 of growth's {} requests refused.", growth.len())),
        "an alerting budget keeps serving: {line}"
    );
}

#[tokio::test]
async fn the_demo_loads_its_records_into_clickhouse_for_the_dashboards() {
    let ch = crate::common::clickhouse::ClickHouse::shared().await;
    let db = ch.fresh_database("demo::clickhouse").await;
    let dir = tempfile::tempdir().unwrap();
    let (url, data_dir) = (ch.url.clone(), dir.path().to_path_buf());
    let database = db.clone();
    let stdout = tokio::task::spawn_blocking(move || {
        let args = ["--requests", "40", "--clickhouse", &url];
        demo(
            &[&args[..], &["--clickhouse-database", &database]].concat(),
            &data_dir,
        )
    })
    .await
    .unwrap();
    assert!(
        stdout.contains(&format!(
            "40 request records and {DEMO_WORKFLOWS} outcomes shipped to database {db}"
        )),
        "{stdout}"
    );
    // Every record is there once, with the same total cost as the ledger's.
    let ledger: Vec<tollgate::record::Record> =
        tollgate::ledger::read_all(&dir.path().join("data/ledger")).unwrap();
    let rows = ch
        .rows(&format!(
            "SELECT count() AS n, uniqExact(request_id) AS ids, toString(sum(ifNull(cost_usd, 0))) AS cost FROM {db}.requests"
        ))
        .await;
    assert_eq!(rows[0]["n"], 40, "{rows:?}");
    assert_eq!(rows[0]["ids"], 40);
    let cost: i64 = ledger.iter().filter_map(|r| r.cost_usd).map(|c| c.0).sum();
    let shipped = tollgate::money::NanoUsd::parse_usd(rows[0]["cost"].as_str().unwrap()).unwrap();
    assert_eq!(shipped.0, cost);
    // The rollup the dashboards read for long ranges has them too.
    let hourly = ch
        .rows(&format!(
            "SELECT sum(requests) AS n FROM {db}.requests_hourly"
        ))
        .await;
    assert_eq!(hourly[0]["n"], 40, "{hourly:?}");
    // The outcomes the dashboards join to them.
    let outcomes = ch
        .rows(&format!("SELECT count() AS n FROM {db}.outcomes"))
        .await;
    assert_eq!(outcomes[0]["n"], DEMO_WORKFLOWS, "{outcomes:?}");
}
