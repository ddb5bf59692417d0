//! The outcomes API: `POST /tollgate/v1/outcomes` on the proxy port records business results
//! of requests and workflows in the ledger's outcomes stream, ships them to ClickHouse
//! `outcomes` exactly once, and `tollgate report --by outcome` prices them.

use crate::common::clickhouse::ClickHouse;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
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

#[tokio::test]
async fn outcomes_reach_clickhouse_once_the_latest_wins_and_only_the_own_team_joins() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("outcomes_end_to_end").await;
    let up = start_sim().await;
    let extra = format!(
        "telemetry:\n  clickhouse:\n    url: {}\n    database: {db}\n    batch_period_ms: 50\n",
        ch.url
    );
    let cfg = config_for(up.addr, &extra).replace(
        "flush_interval_ms: 5",
        "flush_interval_ms: 5\n  shipped_retention_secs: 3600",
    );
    let proxy = Proxy::start(&cfg).await;

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
    let posted = outcomes_in_ledger(&proxy);
    assert_eq!(posted.len(), 4);

    proxy
        .wait_metric("tollgate_sink_shipped_total", &[("table", "outcomes")], 4.0)
        .await;
    proxy
        .wait_metric("tollgate_sink_shipped_total", &[("table", "requests")], 2.0)
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
}
