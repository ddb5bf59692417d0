//! Delivery to a real ClickHouse: schema and migrations, exactly-once shipping through
//! ClickHouse and proxy crashes, rollups, and `report` from either store.

use crate::common::clickhouse::{ClickHouse, PrivateServer, TlsFront, telemetry};
use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tollgate::money::NanoUsd;
use tollgate::record::Record;

/// A proxy config shipping to `db`, keeping shipped segments so tests can compare the
/// ledger with ClickHouse.
pub(crate) fn keeping(
    upstream: std::net::SocketAddr,
    ch_url: &str,
    db: &str,
    extra: &str,
) -> String {
    config_for(upstream, &telemetry(ch_url, db, extra)).replace(
        "flush_interval_ms: 5",
        "flush_interval_ms: 5\n  shipped_retention_secs: 3600",
    )
}

/// Sends `n` chat requests, `parallel` at a time, calling `midway` once after `n / 3`.
async fn load(proxy_port: u16, n: usize, parallel: usize) -> usize {
    let client = client();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _p = permit;
            let resp = client
                .post(format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"))
                .bearer_auth(KEY)
                .header("x-tollgate-feature", if i % 2 == 0 { "even" } else { "odd" })
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("request {i}")}]}))
                .send()
                .await;
            matches!(resp, Ok(r) if r.status() == 200)
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    ok
}

/// Waits until `db.requests` holds `n` rows; returns (rows, distinct request ids).
pub(crate) async fn wait_rows(ch: &ClickHouse, db: &str, n: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // The sink creates the table when it first connects.
        let exists = ch
            .rows(&format!("SELECT count() AS n FROM system.tables WHERE database = '{db}' AND name = 'requests'"))
            .await;
        if exists[0]["n"].as_u64() != Some(1) {
            assert!(
                Instant::now() < deadline,
                "the sink never created {db}.requests"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let r = ch
            .rows(&format!(
                "SELECT count() AS c, uniqExact(request_id) AS u FROM {db}.requests"
            ))
            .await;
        let (c, u) = (
            r[0]["c"].as_u64().unwrap_or(0),
            r[0]["u"].as_u64().unwrap_or(0),
        );
        if c >= n || Instant::now() > deadline {
            return (c, u);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ledger's ids once no more records are arriving: a record is written just after its
/// response completes, so the last ones can trail the client by a moment.
async fn settled_ledger_ids(proxy: &Proxy) -> Vec<String> {
    let mut ids = ids_in_ledger(proxy);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = ids_in_ledger(proxy);
        if again == ids {
            return ids;
        }
        ids = again;
    }
}

/// (request id, attempt, verdict) of every attempt in the ledger, sorted.
fn attempts_in_ledger(proxy: &Proxy) -> Vec<(String, u16, String)> {
    let dir = tollgate::ledger::Stream::Attempts.dir(&proxy.ledger_dir());
    let mut keys: Vec<_> = tollgate::ledger::read_all::<tollgate::record::AttemptRecord>(&dir)
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.request_id,
                a.attempt,
                json!(a.verdict).as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// Waits until `db.attempts` holds `n` rows; returns their (request id, attempt, verdict),
/// sorted.
pub(crate) async fn wait_attempts(
    ch: &ClickHouse,
    db: &str,
    n: usize,
) -> Vec<(String, u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut keys: Vec<_> = ch
            .rows(&format!(
                "SELECT request_id, attempt, verdict FROM {db}.attempts"
            ))
            .await
            .iter()
            .map(|r| {
                (
                    r["request_id"].as_str().unwrap().to_string(),
                    r["attempt"].as_u64().unwrap() as u16,
                    r["verdict"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if keys.len() >= n || Instant::now() > deadline {
            keys.sort();
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids_in_ledger(proxy: &Proxy) -> Vec<String> {
    let mut ids: Vec<String> =
        tollgate::ledger::read_all::<tollgate::record::Record>(&proxy.ledger_dir())
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
    ids.sort();
    ids
}

async fn ids_in_clickhouse(ch: &ClickHouse, db: &str) -> Vec<String> {
    let mut ids: Vec<String> = ch
        .rows(&format!("SELECT request_id FROM {db}.requests"))
        .await
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn schema_is_created_from_nothing_and_migrated_from_the_previous_version() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("migrations").await;
    let up = start_sim().await;
    let mut cfg = config_for(
        up.addr,
        &telemetry(&ch.url, &db, "    migrate_on_start: false"),
    );
    cfg.push('\n');
    let proxy = Proxy::start(&cfg).await;

    let dry = proxy.command(&["migrate", "--dry-run"]);
    let sql = String::from_utf8_lossy(&dry.stdout);
    assert!(
        sql.contains(&format!("CREATE TABLE IF NOT EXISTS {db}.requests")),
        "{sql}"
    );
    let tables = |ch: ClickHouse, db: String| async move {
        ch.rows(&format!(
            "SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"
        ))
        .await
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
    };
    assert!(
        tables(ch.clone(), db.clone()).await.is_empty(),
        "dry run changes nothing"
    );

    // The previous version of the schema, with data in it.
    let out = proxy.command(&["migrate", "--to", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tables(ch.clone(), db.clone()).await,
        ["requests", "schema_migrations"]
    );
    ch.exec(&format!(
        "INSERT INTO {db}.requests (ts, request_id, team, input_tokens, cost_usd) VALUES (now64(3), 'old-1', 'legacy', 5, 0.5)"
    ))
    .await;

    // Two replicas migrating at once both succeed.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| proxy.command(&["migrate"]));
        let b = s.spawn(|| proxy.command(&["migrate"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(
        tables(ch.clone(), db.clone()).await,
        [
            "attempts",
            "outcomes",
            "requests",
            "requests_hourly",
            "requests_hourly_mv",
            "schema_migrations"
        ]
    );
    let versions = ch
        .rows(&format!(
            "SELECT version FROM {db}.schema_migrations FINAL ORDER BY version"
        ))
        .await;
    assert_eq!(
        versions
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let old = ch
        .rows(&format!(
            "SELECT team, input_tokens FROM {db}.requests WHERE request_id = 'old-1'"
        ))
        .await;
    assert_eq!(old[0]["team"], "legacy", "data survives migration");
    let again = proxy.command(&["migrate"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("applied 0 migration"));
}

#[tokio::test]
async fn records_arrive_exactly_once_and_rollups_and_reports_agree() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("exactly_once").await;
    let up = start_sim().await;
    let proxy = Proxy::start(&keeping(up.addr, &ch.url, &db, "    batch_max_rows: 25")).await;
    let ok = load(proxy.port, 200, 8).await;
    assert_eq!(ok, 200);
    let (rows, distinct) = wait_rows(&ch, &db, 200).await;
    assert_eq!((rows, distinct), (200, 200));
    assert_eq!(ids_in_clickhouse(&ch, &db).await, ids_in_ledger(&proxy));
    // Each request made one upstream call; its attempt row arrives once, beside it.
    let attempts = wait_attempts(&ch, &db, 200).await;
    assert_eq!(attempts, attempts_in_ledger(&proxy));
    let totals = ch
        .rows(&format!(
            "SELECT toString(sum(cost_usd)) AS c, sum(output_tokens) AS o FROM {db}.requests \
         UNION ALL SELECT toString(sum(cost_usd)), sum(output_tokens) FROM {db}.attempts"
        ))
        .await;
    assert_eq!(totals[0], totals[1], "requests total their attempts");

    // Rollup sums equal raw sums, to the nano-dollar.
    let raw = ch.rows(&format!(
        "SELECT count() AS n, sum(input_tokens) AS i, sum(output_tokens) AS o, toString(sum(cost_usd)) AS c FROM {db}.requests"
    )).await;
    let rolled = ch.rows(&format!(
        "SELECT sum(requests) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o, toString(sum(cost_usd)) AS c FROM {db}.requests_hourly"
    )).await;
    assert_eq!(raw, rolled);
    assert!(raw[0]["c"].as_str().unwrap() != "0");

    // `report` gives the same numbers from ClickHouse and from the ledger.
    let by = ["--by", "team,project,env,model,feature,policy"];
    let from_ch = report_json(&proxy, &by);
    let from_ledger = report_json(&proxy, &[&by[..], &["--ledger"]].concat());
    assert_eq!(from_ch, from_ledger);
    assert_eq!(
        from_ch.as_array().unwrap().len(),
        3,
        "two features and a total: {from_ch}"
    );

    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "tollgate_sink_shipped_total", &[("table", "requests")]),
        Some(200.0)
    );
    // The lag gauge is updated after the shipped counter.
    proxy
        .wait_metric("tollgate_sink_lag_records", &[("table", "requests")], 0.0)
        .await;
}

#[tokio::test]
async fn clickhouse_killed_mid_load_and_restarted_loses_and_duplicates_nothing() {
    let mut server = PrivateServer::start().await;
    let ch = server.client();
    let db = ch.fresh_database("ch_restart").await;
    let up = start_sim().await;
    let proxy = Proxy::start(&keeping(
        up.addr,
        &server.url(),
        &db,
        "    batch_max_rows: 10",
    ))
    .await;

    let port = proxy.port;
    let traffic = tokio::spawn(async move { load(port, 300, 6).await });
    wait_rows(&ch, &db, 30).await;
    server.kill9();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.restart().await;
    // Clients never noticed: every request was answered while ClickHouse was down.
    assert_eq!(traffic.await.unwrap(), 300);

    let (rows, distinct) = wait_rows(&ch, &db, 300).await;
    assert_eq!((rows, distinct), (300, 300), "{}", proxy.log());
    assert_eq!(ids_in_clickhouse(&ch, &db).await, ids_in_ledger(&proxy));
    let errors = metric(
        &proxy.metrics().await,
        "tollgate_sink_errors_total",
        &[("table", "requests")],
    )
    .unwrap();
    assert!(errors > 0.0, "the outage was seen and retried");
}

#[tokio::test]
async fn proxy_killed_mid_load_and_restarted_ships_the_ledger_exactly_once() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("proxy_restart").await;
    let up = start_sim().await;
    let mut proxy = Proxy::start(&keeping(up.addr, &ch.url, &db, "    batch_max_rows: 7")).await;

    let port = proxy.port;
    let traffic = tokio::spawn(async move { load(port, 150, 6).await });
    wait_rows(&ch, &db, 20).await;
    proxy.kill9();
    let served_before_kill = traffic.await.unwrap();
    proxy.restart().await;
    let second = load(proxy.port, 50, 6).await;
    assert_eq!(second, 50);

    let ledger = settled_ledger_ids(&proxy).await;
    assert!(
        ledger.len() >= 50 + served_before_kill.saturating_sub(20),
        "ledger {} served {served_before_kill}",
        ledger.len()
    );
    let (rows, distinct) = wait_rows(&ch, &db, ledger.len() as u64).await;
    assert_eq!(rows, distinct, "no duplicates");
    assert_eq!(
        ids_in_clickhouse(&ch, &db).await,
        ledger,
        "exactly the ledger's records"
    );
    // The attempts stream, shipped by its own cursor, arrives exactly once too.
    let want = attempts_in_ledger(&proxy);
    assert_eq!(wait_attempts(&ch, &db, want.len()).await, want);
}

#[tokio::test]
async fn lines_that_are_not_records_are_set_aside_and_the_rest_ships() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("dead_letter").await;
    let up = start_sim().await;
    // Seed the ledger with a corrupt line before the proxy starts.
    let mut proxy = Proxy::start(&config_for(up.addr, &telemetry(&ch.url, &db, ""))).await;
    assert_eq!(load(proxy.port, 5, 2).await, 5);
    wait_rows(&ch, &db, 5).await;
    proxy.kill9();
    let segs = tollgate::ledger::list_segments(&proxy.ledger_dir()).unwrap();
    let (_, last) = segs.last().unwrap();
    let mut text = std::fs::read_to_string(last).unwrap();
    text.push_str("{\"this is\": \"not a record\"}\n");
    std::fs::write(last, text).unwrap();
    // A new segment follows, so the corrupt one is finished.
    proxy.restart().await;
    assert_eq!(load(proxy.port, 5, 2).await, 5);

    let (rows, _) = wait_rows(&ch, &db, 10).await;
    assert_eq!(rows, 10);
    proxy
        .wait_metric(
            "tollgate_sink_dead_letter_total",
            &[("table", "requests")],
            1.0,
        )
        .await;
    let dl: Vec<_> = std::fs::read_dir(proxy.dir.path().join("data/sink/dead-letter"))
        .unwrap()
        .collect();
    assert_eq!(dl.len(), 2, "the rows and the reason");
    // With no retention configured, a segment is deleted once fully shipped.
    let (first, _) = segs[0];
    let remaining = tollgate::ledger::list_segments(&proxy.ledger_dir()).unwrap();
    assert!(
        remaining.iter().all(|(seq, _)| *seq > first),
        "{remaining:?}"
    );
}

/// Sends `n` chat requests one after the other, attributed to `feature`.
async fn calls_with_feature(proxy: &Proxy, feature: &str, n: usize) {
    for _ in 0..n {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        let resp = openai(
            proxy,
            "/v1/chat/completions",
            &[("x-tollgate-feature", feature)],
            &body,
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn rows_clickhouse_rejects_are_set_aside_once_and_never_retried() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("rejected_rows").await;
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, &telemetry(&ch.url, &db, ""))).await;
    calls_with_feature(&proxy, "search", 2).await;
    assert_eq!(wait_rows(&ch, &db, 2).await, (2, 2));

    // A column that now takes only known values: the next batch is bad data to ClickHouse.
    ch.exec(&format!(
        "ALTER TABLE {db}.requests MODIFY COLUMN feature Enum8('search' = 1)"
    ))
    .await;
    calls_with_feature(&proxy, "chat", 3).await;
    proxy
        .wait_metric(
            "tollgate_sink_dead_letter_total",
            &[("table", "requests")],
            3.0,
        )
        .await;
    calls_with_feature(&proxy, "search", 2).await;
    let m = proxy
        .wait_metric("tollgate_sink_shipped_total", &[("table", "requests")], 4.0)
        .await;

    assert_eq!(
        metric(&m, "tollgate_sink_errors_total", &[("table", "requests")]),
        Some(0.0),
        "bad data is not retried"
    );
    assert_eq!(wait_rows(&ch, &db, 4).await, (4, 4));
    // Each rejected batch is set aside as its rows and ClickHouse's reason.
    let dead = proxy.dir.path().join("data/sink/dead-letter");
    let (mut rows, mut reasons) = (String::new(), Vec::new());
    for entry in std::fs::read_dir(&dead).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if path.to_string_lossy().ends_with(".error.txt") {
            reasons.push(text);
        } else {
            rows.push_str(&text);
        }
    }
    assert_eq!(rows.lines().count(), 3, "{rows}");
    assert!(
        rows.lines().all(|l| l.contains(r#""feature":"chat""#)),
        "{rows}"
    );
    assert!(!reasons.is_empty());
    for reason in reasons {
        assert!(
            reason.contains("code 691") && reason.contains("chat"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_batch_replayed_after_a_crash_before_its_commit_is_stored_once() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("replay").await;
    let up = start_sim().await;
    // One batch for everything: wait long enough for all 20 records to queue up.
    let cfg = keeping(up.addr, &ch.url, &db, "    batch_max_rows: 1000")
        .replace("batch_period_ms: 50", "batch_period_ms: 1500");
    let mut proxy = Proxy::start(&cfg).await;
    assert_eq!(load(proxy.port, 20, 4).await, 20);
    assert_eq!(wait_rows(&ch, &db, 20).await, (20, 20));
    // ClickHouse has the rows a moment before the sink records that it does: wait for the
    // cursor to reach the end of the ledger, so the rewind below covers the whole batch.
    let cursor_path = proxy.dir.path().join("data/sink/clickhouse.cursor");
    let ledger_len: u64 = tollgate::ledger::list_segments(&proxy.ledger_dir())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c: Value = serde_json::from_slice(&std::fs::read(&cursor_path).unwrap()).unwrap();
        if c["pending"].is_null() && c["offset"].as_u64() == Some(ledger_len) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never recorded its commit: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.kill9();

    // Rewind the cursor as if the process died after ClickHouse stored the batch but
    // before the sink recorded that: the batch is pending again.
    let cursor: Value = serde_json::from_slice(&std::fs::read(&cursor_path).unwrap()).unwrap();
    let (segment, end) = (
        cursor["segment"].as_u64().unwrap(),
        cursor["offset"].as_u64().unwrap(),
    );
    let rewound = json!({"segment": segment, "offset": 0, "pending": {"segment": segment, "start": 0, "end": end}});
    std::fs::write(&cursor_path, rewound.to_string()).unwrap();

    proxy.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c: Value = serde_json::from_slice(&std::fs::read(&cursor_path).unwrap()).unwrap();
        if c["pending"].is_null() && c["offset"].as_u64() == Some(end) {
            break;
        }
        assert!(Instant::now() < deadline, "replay never committed: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ch
        .rows(&format!("SELECT count() AS c FROM {db}.requests"))
        .await;
    assert_eq!(r[0]["c"], 20, "the replay was deduplicated");
    let h = ch
        .rows(&format!(
            "SELECT sum(requests) AS c FROM {db}.requests_hourly"
        ))
        .await;
    assert_eq!(h[0]["c"], 20, "and so was the rollup");
}

#[tokio::test]
async fn a_backlog_from_a_previous_run_ships_without_waiting_for_the_batch_period() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("backlog").await;
    let up = start_sim().await;
    // Small batches that would each wait a minute for more records.
    let cfg = keeping(up.addr, &ch.url, &db, "    batch_max_rows: 7")
        .replace("batch_period_ms: 50", "batch_period_ms: 60000");
    let mut proxy = Proxy::start(&cfg).await;
    assert_eq!(load(proxy.port, 30, 4).await, 30);
    let ledger = settled_ledger_ids(&proxy).await;
    proxy.kill9();

    // The restarted proxy writes a new segment, so the old one cannot grow: its batches,
    // full or not, ship at once.
    proxy.restart().await;
    let started = Instant::now();
    let (rows, distinct) = wait_rows(&ch, &db, ledger.len() as u64).await;
    assert_eq!((rows, distinct), (30, 30), "{}", proxy.log());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(ids_in_clickhouse(&ch, &db).await, ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clickhouse_is_trusted_through_ca_file_only() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("https").await;
    let front = TlsFront::start(&ch).await;
    let up = start_sim().await;
    let ca = "    ca_file: clickhouse-ca.pem";
    let cfg = config_for(up.addr, &telemetry(&front.url, &db, ca));
    let proxy = Proxy::start_with(&cfg, &[("clickhouse-ca.pem", &front.ca_pem)]).await;
    assert_eq!(load(proxy.port, 10, 2).await, 10);
    assert_eq!(wait_rows(&ch, &db, 10).await, (10, 10), "{}", proxy.log());
    let report = report_json(&proxy, &[]);
    assert_eq!(report.as_array().unwrap().last().unwrap()["requests"], 10);

    // Without the CA the server's certificate is refused.
    let untrusting = proxy.dir.path().join("untrusting.yaml");
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(&untrusting, text.replace(ca, "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["migrate", "--config"])
        .arg(&untrusting)
        .envs(test_env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn shutdown_drains_the_ledger_into_clickhouse() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("drain").await;
    let up = start_sim().await;
    // Batches would wait a minute; only the shutdown drain can ship them in time.
    let cfg =
        keeping(up.addr, &ch.url, &db, "").replace("batch_period_ms: 50", "batch_period_ms: 60000");
    let mut proxy = Proxy::start(&cfg).await;
    assert_eq!(load(proxy.port, 30, 4).await, 30);
    let status = proxy.stop();
    assert!(status.success(), "{}", proxy.log());
    let r = ch
        .rows(&format!(
            "SELECT count() AS c, uniqExact(request_id) AS u FROM {db}.requests"
        ))
        .await;
    assert_eq!(
        (r[0]["c"].as_u64(), r[0]["u"].as_u64()),
        (Some(30), Some(30)),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn routed_requests_total_their_attempts_in_clickhouse() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("routed").await;
    let up = start_sim().await;
    let policy = "rules:\n  - name: cheap-first\n    match: {model: tollgate/cheap-first, endpoint: /v1/chat/completions}\n    cascade:\n      steps:\n        - {provider: openai, model: gpt-4o-mini}\n        - {provider: openai, model: o3-mini}\n      judges: {finish: true}\n";
    let proxy = Proxy::start_with(
        &keeping(up.addr, &ch.url, &db, "policies: policies"),
        &[("policies/cascade.yaml", policy.as_bytes())],
    )
    .await;
    for i in 0..20 {
        let fault = if i % 2 == 0 {
            "truncate@gpt-4o-mini"
        } else {
            ""
        };
        let body = json!({"model": "tollgate/cheap-first", "stream": i % 4 < 2,
            "messages": [{"role": "user", "content": format!("question {i}")}]});
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-fault", fault)],
            &body,
        )
        .await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(wait_rows(&ch, &db, 20).await, (20, 20));
    let attempts = wait_attempts(&ch, &db, 30).await;
    assert_eq!(attempts, attempts_in_ledger(&proxy));
    // Every request row is the sum of its attempt rows, to the nano-dollar.
    let mismatched = ch
        .rows(&format!(
            "SELECT count() AS n FROM {db}.requests AS r INNER JOIN \
             (SELECT request_id, count() AS calls, sum(input_tokens) AS i, sum(output_tokens) AS o, \
              sum(cost_usd) AS c FROM {db}.attempts GROUP BY request_id) AS a ON a.request_id = r.request_id \
             WHERE r.attempts != a.calls OR r.input_tokens != a.i OR r.output_tokens != a.o OR r.cost_usd != a.c"
        ))
        .await;
    assert_eq!(mismatched[0]["n"].as_u64(), Some(0));
    let totals = ch
        .rows(&format!(
            "SELECT sum(escalations) AS e, countIf(counterfactual_cost_usd IS NULL) AS unknown, \
             uniqExact(policy) AS p FROM {db}.requests"
        ))
        .await;
    assert_eq!(totals[0]["e"].as_u64(), Some(10));
    assert_eq!(totals[0]["unknown"].as_u64(), Some(0));
    assert_eq!(totals[0]["p"].as_u64(), Some(1));
    // An escalated request's counterfactual is its answer on the last step: what the
    // served attempt cost.
    let off = ch
        .rows(&format!(
            "SELECT count() AS n FROM {db}.requests AS r INNER JOIN {db}.attempts AS a \
             ON a.request_id = r.request_id AND a.verdict = 'served' \
             WHERE r.escalations = 1 AND r.counterfactual_cost_usd != a.cost_usd"
        ))
        .await;
    assert_eq!(off[0]["n"].as_u64(), Some(0));
    let judged = ch
        .rows(&format!(
            "SELECT verdict, judge, count() AS n FROM {db}.attempts GROUP BY verdict, judge ORDER BY verdict"
        ))
        .await;
    let judged: Vec<(String, String, u64)> = judged
        .iter()
        .map(|r| {
            (
                r["verdict"].as_str().unwrap().to_string(),
                r["judge"].as_str().unwrap().to_string(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        judged,
        [
            ("accepted".into(), String::new(), 10),
            ("rejected".into(), "finish".into(), 10),
            ("served".into(), String::new(), 10)
        ]
    );
}

/// Raw sums of `requests` and the same sums from `requests_hourly`, cache columns included
/// (decimals as text, to the nano-dollar).
async fn raw_and_rolled_up(ch: &ClickHouse, db: &str) -> (Vec<Value>, Vec<Value>) {
    let raw = ch
        .rows(&format!(
            "SELECT count() AS n, sum(input_tokens) AS i, sum(output_tokens) AS o, \
             toString(sum(ifNull(cost_usd, 0))) AS c, countIf(cost_usd IS NULL) AS unpriced, \
             countIf(cache_hit) AS hits, sum(saved_input_tokens) AS si, \
             sum(saved_output_tokens) AS so, toString(sum(ifNull(saved_cost_usd, 0))) AS sc \
             FROM {db}.requests"
        ))
        .await;
    let rolled = ch
        .rows(&format!(
            "SELECT sum(requests) AS n, sum(input_tokens) AS i, sum(output_tokens) AS o, \
             toString(sum(cost_usd)) AS c, sum(unpriced_requests) AS unpriced, \
             sum(cache_hits) AS hits, sum(saved_input_tokens) AS si, \
             sum(saved_output_tokens) AS so, toString(sum(saved_cost_usd)) AS sc \
             FROM {db}.requests_hourly"
        ))
        .await;
    (raw, rolled)
}

/// `tollgate report ARGS --format json`, which must succeed.
fn report_json(proxy: &Proxy, args: &[&str]) -> Value {
    let out = proxy.command(&[&["report", "--since", "1h", "--format", "json"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_0004_schema_with_data_migrates_to_0005_and_its_rollup_counts_cache_hits() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("migrate_0005").await;
    let up = start_sim().await;
    let cfg = config_for(
        up.addr,
        &telemetry(&ch.url, &db, "    migrate_on_start: false"),
    );
    let proxy = Proxy::start(&cfg).await;
    let migrate = |args: &[&str]| {
        let out = proxy.command(&[&["migrate"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    migrate(&["--to", "4"]);
    // Rows of the previous version, rolled up by the previous view.
    ch.exec(&format!(
        "INSERT INTO {db}.requests (ts, request_id, team, model, input_tokens, cost_usd) VALUES \
         (now64(3), 'old-1', 't', 'm', 5, 0.5), (now64(3), 'old-2', 't', 'm', 7, NULL)"
    ))
    .await;

    assert!(migrate(&["--to", "5"]).contains("applied 1 migration(s): [5]"));
    let old = ch
        .rows(&format!(
            "SELECT count() AS n FROM {db}.requests WHERE NOT cache_hit AND saved_input_tokens = 0 \
             AND saved_output_tokens = 0 AND saved_cost_usd IS NULL"
        ))
        .await;
    assert_eq!(old[0]["n"], 2, "old rows read as no hit, nothing saved");

    // Rows after it: two hits (one whose saving is unknown) and a miss.
    ch.exec(&format!(
        "INSERT INTO {db}.requests (ts, request_id, team, model, input_tokens, cost_usd, \
         cache_hit, saved_input_tokens, saved_output_tokens, saved_cost_usd) VALUES \
         (now64(3), 'hit-1', 't', 'm', 0, 0, true, 5, 2, 0.5), \
         (now64(3), 'hit-2', 't', 'm', 0, 0, true, 7, 3, NULL), \
         (now64(3), 'miss-1', 't', 'm', 4, 0.25, false, 0, 0, 0)"
    ))
    .await;
    let (raw, rolled) = raw_and_rolled_up(&ch, &db).await;
    assert_eq!(raw, rolled);
    assert_eq!(
        (
            &rolled[0]["n"],
            &rolled[0]["hits"],
            &rolled[0]["si"],
            &rolled[0]["sc"]
        ),
        (&json!(5), &json!(2), &json!(12), &json!("0.5"))
    );
    assert!(migrate(&["--to", "5"]).contains("applied 0 migration"));

    let total = report_json(&proxy, &[]);
    let total = total.as_array().unwrap().last().unwrap();
    assert_eq!(total["cache_hits"], 2);
    assert_eq!(total["cache_saved_usd"], "0.500000000");
    assert_eq!(total["cost_usd"], "0.750000000", "hits cost nothing");
}

/// A hit as the proxy records it for a request answered like `answered`: no upstream
/// call, so no tokens and no cost; `answered`'s tokens and cost are what it saved.
fn hit_replaying(answered: &Record, request_id: &str) -> Record {
    Record {
        request_id: request_id.to_string(),
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_usd: Some(NanoUsd(0)),
        attempts: 0,
        ttfb_ms: None,
        cache_hit: true,
        saved_input_tokens: answered.input_tokens,
        saved_output_tokens: answered.output_tokens,
        saved_cost_usd: answered.cost_usd,
        ..answered.clone()
    }
}

#[tokio::test]
async fn cache_hits_in_the_ledger_reach_clickhouse_whole_and_both_stores_report_them_alike() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("cache_hits").await;
    let up = start_sim().await;
    let mut proxy = Proxy::start(&keeping(up.addr, &ch.url, &db, "")).await;
    assert_eq!(load(proxy.port, 12, 4).await, 12);
    let answered = proxy.records(12).await;
    proxy.kill9();

    // Hits written by the proxy's own ledger writer, between two runs of the proxy; one
    // replayed an answer whose cost was unknown.
    let mut hits: Vec<Record> = answered[..5]
        .iter()
        .enumerate()
        .map(|(i, r)| hit_replaying(r, &format!("hit-{i}")))
        .collect();
    hits[0].saved_cost_usd = None;
    let ledger = tollgate::ledger::Ledger::open(
        &proxy.dir.path().join("data"),
        &tollgate::config::LedgerConfig::default(),
        tollgate::metrics::Metrics::new(),
    )
    .unwrap();
    for h in &hits {
        ledger.append(h, &[]).unwrap();
    }
    ledger.close();
    proxy.restart().await;
    assert_eq!(wait_rows(&ch, &db, 17).await, (17, 17), "{}", proxy.log());

    // Every record arrives as the ledger holds it, read back the way Tollgate reads.
    let tg = ch.tollgate_client(&db);
    let mut stored: Vec<Record> = tg
        .fetch_records(tg.query("SELECT * FROM requests"))
        .await
        .unwrap();
    stored.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let mut written: Vec<Record> = tollgate::ledger::read_all(&proxy.ledger_dir()).unwrap();
    written.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(stored, written);
    assert_eq!(stored.iter().filter(|r| r.cache_hit).count(), 5);

    let (raw, rolled) = raw_and_rolled_up(&ch, &db).await;
    assert_eq!(raw, rolled);
    assert_eq!(rolled[0]["hits"], 5);

    // Both stores give the same report; hits add to neither tokens nor cost.
    let by = ["--by", "team,model,feature,policy"];
    let from_ch = report_json(&proxy, &by);
    assert_eq!(
        from_ch,
        report_json(&proxy, &[&by[..], &["--ledger"]].concat())
    );
    let total = from_ch.as_array().unwrap().last().unwrap();
    let sum = |f: fn(&Record) -> i64| answered.iter().map(f).sum::<i64>();
    let saved: i64 = hits
        .iter()
        .filter_map(|h| h.saved_cost_usd)
        .map(|c| c.0)
        .sum();
    assert!(saved > 0);
    assert_eq!(total["requests"], 17);
    assert_eq!(total["cache_hits"], 5);
    assert_eq!(total["cache_saved_usd"], NanoUsd(saved).to_string());
    assert_eq!(total["input_tokens"], sum(|r| r.input_tokens as i64));
    assert_eq!(
        total["cost_usd"],
        NanoUsd(sum(|r| r.cost_usd.unwrap().0)).to_string()
    );
}
