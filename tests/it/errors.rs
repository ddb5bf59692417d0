//! Bad input and failures: each answered in the client's wire format, recorded, never a
//! panic. Also what reaches the provider, and the metrics endpoint.

use crate::common::*;
use serde_json::{Value, json};

async fn post_openai(proxy: &Proxy, key: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_wire_format_errors_and_are_recorded() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "max_body_bytes: 1048576")).await;

    let (s, v) = post_openai(&proxy, KEY, "{not json").await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "invalid_json");

    let (s, v) = post_openai(&proxy, KEY, r#"{"model":"gpt-9","messages":[]}"#).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));

    let (s, v) = post_openai(&proxy, "tg-wrong", r#"{"model":"gpt-4o-mini"}"#).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o-mini"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(2 << 20)
    );
    let (s, v) = post_openai(&proxy, KEY, big).await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["code"], "request_too_large");

    // Anthropic clients get Anthropic's error shape.
    let resp = anthropic(
        &proxy,
        "/v1/messages",
        &[],
        &json!({"model": "gpt-9", "max_tokens": 1, "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");

    let records = proxy.records(6).await;
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![400, 404, 401, 401, 413, 404]);
    assert!(
        records
            .iter()
            .all(|r| r.cost_usd.unwrap().0 == 0 && r.error.is_some())
    );
    assert_eq!(up.sim.stats().requests, 0, "nothing reached the provider");

    // The proxy is still healthy after all that.
    let (s, _) = post_openai(
        &proxy,
        KEY,
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_with_the_reason() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&config_for(dead, "")).await;
    let (s, v) = post_openai(&proxy, KEY, r#"{"model":"gpt-4o-mini","messages":[]}"#).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    assert!(v["error"]["message"].as_str().unwrap().contains("openai"));
    let r = proxy.only_record().await;
    assert_eq!(r.status, 502);
    assert_eq!(r.cost_usd.unwrap().0, 0);
}

#[tokio::test]
async fn the_provider_gets_its_own_key_and_none_of_tollgates_headers() {
    let (addr, seen) = recording_upstream().await;
    let proxy = Proxy::start(&config_for(addr, "")).await;
    let resp = openai_as(
        &proxy,
        OPEN_KEY,
        "/v1/chat/completions",
        &[
            ("x-tollgate-team", "growth"),
            ("x-tollgate-project", "onboarding"),
            ("x-tollgate-workflow", "wf-9"),
            ("openai-organization", "org-1"),
        ],
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let headers = seen.lock().unwrap().pop().unwrap().headers;
    assert_eq!(headers["authorization"], "Bearer sk-upstream-openai");
    assert!(
        headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-tollgate-")),
        "{headers:?}"
    );
    assert_eq!(
        headers["openai-organization"], "org-1",
        "other headers pass through"
    );
    let r = proxy.only_record().await;
    assert_eq!(
        (r.team.as_str(), r.project.as_str(), r.workflow_id.as_str()),
        ("growth", "onboarding", "wf-9")
    );
    assert_eq!(r.key_name, "open");
}

#[tokio::test]
async fn other_v1_paths_pass_through_with_zero_tokens() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let resp = client()
        .get(proxy.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let r = proxy.only_record().await;
    assert_eq!(r.endpoint, "/v1/models");
    assert_eq!((r.input_tokens, r.output_tokens), (0, 0));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_exact_cost() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let mut input = 0;
    for _ in 0..3 {
        let v: Value = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-output-tokens", "10")],
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
        input += v["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    proxy.records(3).await;
    let m = proxy.metrics().await;
    let who = [
        ("team", "search"),
        ("project", "ranking"),
        ("env", "prod"),
        ("model", "gpt-4o-mini"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = who.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        metric(&m, "tollgate_requests_total", &with(("status", "200"))),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tollgate_tokens_total", &with(("kind", "output"))),
        Some(30.0)
    );
    assert_eq!(
        metric(&m, "tollgate_tokens_total", &with(("kind", "input"))),
        Some(input as f64)
    );
    // $2/M input, $8/M output, summed in nano-USD and divided once.
    let usd = (input as i64 * 2000 + 30 * 8000) as f64 / 1e9;
    let cost = metric(&m, "tollgate_cost_usd_total", &who).unwrap();
    assert!((cost - usd).abs() < 1e-12, "{cost} vs {usd}");
    assert!(m.contains("tollgate_request_duration_seconds_bucket"));
    assert!(m.contains("tollgate_upstream_ttfb_seconds_bucket"));
    assert!(!m.contains(KEY), "keys never appear in metrics");
    assert!(proxy.log().find(KEY).is_none(), "keys never appear in logs");
}

#[tokio::test]
async fn unpriced_models_are_recorded_with_unknown_cost() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let resp = anthropic(
        &proxy,
        "/v1/messages",
        &[],
        &json!({"model": "claude-unpriced-9", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let r = proxy.only_record().await;
    assert!(r.input_tokens > 0);
    assert_eq!(r.cost_usd, None, "an unknown price is never $0");
    let m = proxy.metrics().await;
    assert!(
        m.contains(r#"tollgate_unpriced_requests_total{model="claude-unpriced-9"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn sigterm_flushes_the_ledger_and_exits_cleanly() {
    let up = start_sim().await;
    let mut proxy = Proxy::start(&config_for(up.addr, "")).await;
    for _ in 0..5 {
        openai(
            &proxy,
            "/v1/chat/completions",
            &[],
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    }
    let status = proxy.stop();
    assert!(status.success(), "{status:?}\n{}", proxy.log());
    let records =
        tollgate::ledger::read_all::<tollgate::record::Record>(&proxy.ledger_dir()).unwrap();
    assert_eq!(records.len(), 5);
}
