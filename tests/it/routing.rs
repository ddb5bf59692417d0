//! Routing policies end to end: fallbacks on each failure kind, judged cascades in both API
//! formats, streamed and not, denials and rewrites; attempts and totals in the ledger.

use crate::common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tollgate::ledger::Stream;
use tollgate::record::{AttemptRecord, Record};

const ROUTING_PRICES: &str = r#"
version: 1
models:
  o3-mini:
    context_window: 60
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 4
  gpt-4o:
    prices:
      - effective_from: 2024-01-01
        input: 25
        output: 100
  claude-haiku-4-5:
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 5
"#;

const POLICIES: &str = r#"
rules:
  - name: failover
    priority: 50
    match: {model: tollgate/failover, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: openai, model: gpt-4o-mini, timeout_ms: 700}
        - {provider: openai, model: gpt-4o}

  - name: down-first
    priority: 50
    match: {model: tollgate/down-first, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: down, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}

  - name: patient
    priority: 50
    match: {model: tollgate/patient, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      retries: {per_target: 1, backoff_ms: 50, max_wait_ms: 3000}

  - name: long-prompts-elsewhere
    priority: 50
    match: {model: tollgate/windowed, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: openai, model: o3-mini}
        - {provider: openai, model: gpt-4o-mini}

  - name: split
    priority: 50
    match: {model: tollgate/split, endpoint: /v1/chat/completions}
    route:
      loadbalance: true
      targets:
        - {provider: openai, model: gpt-4o-mini, weight: 3}
        - {provider: openai, model: gpt-4o, weight: 1}

  - name: ab
    priority: 50
    match: {model: tollgate/ab, endpoint: /v1/chat/completions}
    route:
      loadbalance: true
      sticky: true
      targets:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}

  - name: guarded
    priority: 50
    match: {model: tollgate/guarded, endpoint: /v1/chat/completions}
    route:
      cooldown: {failures: 2, seconds: 1}
      targets:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}

  - name: cheap-first
    priority: 40
    match: {model: tollgate/cheap-first, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {finish: true, refusal: true, json: true, tool_args: true}

  - name: short-answers
    priority: 40
    match: {model: tollgate/short, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {length: {max_chars: 5}}

  - name: claude-cheap-first
    priority: 40
    match: {model: tollgate/claude-cheap-first, endpoint: /v1/messages}
    cascade:
      steps:
        - {provider: anthropic, model: claude-haiku-4-5}
        - {provider: anthropic, model: claude-sonnet-4-5}
      judges: {finish: true, refusal: true}

  - name: confident
    priority: 40
    match: {model: tollgate/confident, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {logprob: {min_mean: -1.0}}

  - name: graded
    priority: 40
    match: {model: tollgate/graded, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {llm: {provider: anthropic, model: claude-haiku-4-5, prompt: "Grade the answer.", accept: "(?s).+"}}

  - name: graded-strictly
    priority: 40
    match: {model: tollgate/graded-strictly, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {llm: {provider: openai, model: gpt-4o-mini, prompt: "Reply PASS or FAIL.", accept: "^PASS$"}}

  - name: no-gpt-4o-for-search
    priority: 30
    match: {team: search, model: gpt-4o}
    deny: "search uses the mini models"

  - name: capped
    priority: 20
    match: {feature: summaries}
    rewrite: {max_tokens: 64}
"#;

/// A proxy whose `openai` and `anthropic` providers are `upstream`, with a `down` provider
/// nothing listens on, and the policies above.
async fn routed_proxy(upstream: SocketAddr) -> Proxy {
    routed_proxy_with(upstream, &[]).await
}

/// [`routed_proxy`] with more files (policies of a test's own) beside its config.
pub(crate) async fn routed_proxy_with(upstream: SocketAddr, extra: &[(&str, &[u8])]) -> Proxy {
    let down = free_port();
    let config = format!(
        r#"
builtin_prices: false
prices: [prices.yaml, routing-prices.yaml]
policies: policies
ledger:
  flush_interval_ms: 5
server:
  threads: 2
  grace_period_secs: 0
providers:
  openai:
    kind: openai_compatible
    base_url: http://{upstream}
    api_key_env: TEST_OPENAI_KEY
  anthropic:
    kind: anthropic
    base_url: http://{upstream}
    api_key_env: TEST_ANTHROPIC_KEY
  down:
    kind: openai_compatible
    base_url: http://127.0.0.1:{down}
    api_key_env: TEST_OPENAI_KEY
models:
  gpt-4o-mini: {{ provider: openai }}
  gpt-4o: {{ provider: openai }}
  "claude-*": {{ provider: anthropic }}
keys:
  - name: search-prod
    key_env: TEST_VKEY_SEARCH
    team: search
    project: ranking
    env: prod
"#
    );
    let mut files = vec![
        ("routing-prices.yaml", ROUTING_PRICES.as_bytes()),
        ("policies/routing.yaml", POLICIES.as_bytes()),
    ];
    files.extend_from_slice(extra);
    Proxy::start_with(&config, &files).await
}

/// The simulated provider and a routed proxy in front of it.
async fn routed_sim() -> (Upstream, Proxy) {
    let up = start_sim().await;
    let proxy = routed_proxy(up.addr).await;
    (up, proxy)
}

pub(crate) fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say something useful."}]})
}

pub(crate) fn route_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-tollgate-route")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The request's record and its attempts, once both are in the ledger.
pub(crate) async fn records_of(proxy: &Proxy, request_id: &str) -> (Record, Vec<AttemptRecord>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = tollgate::ledger::read_all::<Record>(&proxy.ledger_dir()).unwrap();
        if let Some(r) = requests.into_iter().find(|r| r.request_id == request_id) {
            let attempts: Vec<AttemptRecord> =
                tollgate::ledger::read_all(&Stream::Attempts.dir(&proxy.ledger_dir()))
                    .unwrap()
                    .into_iter()
                    .filter(|a: &AttemptRecord| a.request_id == request_id)
                    .collect();
            return (r, attempts);
        }
        assert!(Instant::now() < deadline, "no record for {request_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn verdicts(attempts: &[AttemptRecord]) -> Vec<(String, String, String)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.model.clone(),
                a.verdict.as_str().to_string(),
                a.judge.clone(),
            )
        })
        .collect()
}

/// The request's totals are the sums of its attempts.
pub(crate) fn assert_totals(r: &Record, attempts: &[AttemptRecord]) {
    assert_eq!(r.attempts as usize, attempts.len());
    assert_eq!(
        r.input_tokens,
        attempts.iter().map(|a| a.input_tokens).sum::<u64>()
    );
    assert_eq!(
        r.output_tokens,
        attempts.iter().map(|a| a.output_tokens).sum::<u64>()
    );
    let sum = attempts.iter().map(|a| a.cost_usd.unwrap().0).sum::<i64>();
    assert_eq!(r.cost_usd.unwrap().0, sum);
}

#[tokio::test]
async fn a_route_falls_back_on_429_5xx_and_timeouts() {
    let (_up, proxy) = routed_sim().await;
    for (fault, status, error) in [
        ("status=429@gpt-4o-mini", 429, "rate_limit_exceeded"),
        ("status=503@gpt-4o-mini", 503, ""),
        ("hang@gpt-4o-mini", 0, "upstream_timeout"),
    ] {
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-fault", fault)],
            &chat("tollgate/failover"),
        )
        .await;
        assert_eq!(resp.status(), 200, "{fault}");
        assert_eq!(
            route_of(&resp),
            "openai/gpt-4o-mini=failed, openai/gpt-4o=served"
        );
        let id = request_id(&resp);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model"], "gpt-4o", "the answering model is named");
        let (r, attempts) = records_of(&proxy, &id).await;
        assert_eq!(
            (r.policy.as_str(), r.model.as_str(), r.status, r.escalations),
            ("failover", "gpt-4o", 200, 0)
        );
        assert_eq!(attempts[0].status, status, "{fault}");
        if !error.is_empty() {
            assert_eq!(attempts[0].error.as_deref(), Some(error), "{fault}");
        }
        assert_eq!(
            verdicts(&attempts),
            [
                ("gpt-4o-mini".into(), "failed".into(), String::new()),
                ("gpt-4o".into(), "served".into(), String::new())
            ]
        );
        assert_totals(&r, &attempts);
    }
}

#[tokio::test]
async fn a_route_falls_back_when_the_first_provider_is_unreachable() {
    let (_up, proxy) = routed_sim().await;
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[],
        &chat("tollgate/down-first"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        route_of(&resp),
        "down/gpt-4o-mini=failed, openai/gpt-4o=served"
    );
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    assert_eq!(attempts[0].error.as_deref(), Some("upstream_unreachable"));
    assert_eq!(r.provider, "openai");
    assert_totals(&r, &attempts);
}

#[tokio::test]
async fn retries_wait_for_retry_after_then_fall_back() {
    let (_up, proxy) = routed_sim().await;
    let started = Instant::now();
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[(
            "x-sim-fault",
            "status=429@gpt-4o-mini, retry-after=1@gpt-4o-mini",
        )],
        &chat("tollgate/patient"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited for retry-after"
    );
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    let roles: Vec<&str> = attempts.iter().map(|a| a.role.as_str()).collect();
    assert_eq!(roles, ["primary", "retry", "fallback"]);
    assert_totals(&r, &attempts);
}

#[tokio::test]
async fn no_fallback_once_bytes_reached_the_client() {
    let (_up, proxy) = routed_sim().await;
    let mut body = chat("tollgate/failover");
    body["stream"] = json!(true);
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-fault", "reset-after=2@gpt-4o-mini")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let mut resp = resp;
    let mut received = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        received.extend_from_slice(&c);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("upstream_stream_error"),
        "a clean error event ends the stream: {text}"
    );
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(r.error.as_deref(), Some("upstream_failed"));
    assert_eq!(attempts[0].model, "gpt-4o-mini");
}

#[tokio::test]
async fn a_cascade_accepts_a_good_cheap_answer_and_records_the_savings() {
    let (_up, proxy) = routed_sim().await;
    for stream in [false, true] {
        let mut body = chat("tollgate/cheap-first");
        body["stream"] = json!(stream);
        let resp = openai(&proxy, "/v1/chat/completions", &[], &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(route_of(&resp), "openai/gpt-4o-mini=accepted");
        let id = request_id(&resp);
        let text = resp.text().await.unwrap();
        if stream {
            let events = sse_data(&text);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            assert!(chunks.iter().all(|c| c["model"] == "gpt-4o-mini"));
            assert!(
                chunks.iter().all(|c| c["usage"].is_null()),
                "no usage chunk the client did not ask for"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["model"], "gpt-4o-mini");
        }
        let (r, attempts) = records_of(&proxy, &id).await;
        assert_eq!(
            verdicts(&attempts),
            [("gpt-4o-mini".into(), "accepted".into(), String::new())]
        );
        assert_totals(&r, &attempts);
        // The same tokens on gpt-4o, the cascade's strongest model.
        let want = r.input_tokens as i64 * nanos_per_token(25.0)
            + r.output_tokens as i64 * nanos_per_token(100.0);
        assert_eq!(r.counterfactual_cost_usd.unwrap().0, want);
        assert!(r.cost_usd.unwrap().0 < want);
    }
    let m = proxy.metrics().await;
    let cost = |kind| {
        metric(
            &m,
            "tollgate_routing_cost_usd_total",
            &[("policy", "cheap-first"), ("kind", kind)],
        )
        .unwrap()
    };
    assert!(
        cost("counterfactual") > cost("actual"),
        "savings show in the metrics"
    );
}

#[tokio::test]
async fn a_cascade_escalates_on_each_judge_streamed_and_not() {
    let (_up, proxy) = routed_sim().await;
    let tool = json!([{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("truncate@gpt-4o-mini", json!({}), "finish"),
        ("refuse@gpt-4o-mini", json!({}), "refusal"),
        (
            "invalid-json@gpt-4o-mini",
            json!({"response_format": {"type": "json_object"}}),
            "json",
        ),
        (
            "bad-tool-args@gpt-4o-mini",
            json!({"tools": tool, "tool_choice": "required"}),
            "tool_args",
        ),
    ];
    for (fault, extra, judge) in cases {
        for stream in [false, true] {
            let mut body = chat("tollgate/cheap-first");
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body["stream"] = json!(stream);
            let resp = openai(
                &proxy,
                "/v1/chat/completions",
                &[("x-sim-fault", fault)],
                &body,
            )
            .await;
            assert_eq!(resp.status(), 200, "{fault}");
            assert_eq!(
                route_of(&resp),
                format!("openai/gpt-4o-mini=rejected:{judge}, openai/gpt-4o=served"),
                "{fault} stream={stream}"
            );
            let id = request_id(&resp);
            let text = resp.text().await.unwrap();
            assert!(text.contains("gpt-4o"), "the strong model answered");
            let (r, attempts) = records_of(&proxy, &id).await;
            assert_eq!((r.escalations, r.model.as_str()), (1, "gpt-4o"), "{fault}");
            assert_eq!(attempts[0].role.as_str(), "primary");
            assert_eq!(attempts[1].role.as_str(), "escalation");
            assert!(
                attempts[0].output_tokens > 0,
                "the rejected answer's tokens are counted"
            );
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn a_length_judge_escalates_long_answers() {
    let (_up, proxy) = routed_sim().await;
    let resp = openai(&proxy, "/v1/chat/completions", &[], &chat("tollgate/short")).await;
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=rejected:length, openai/gpt-4o=served"
    );
}

#[tokio::test]
async fn an_anthropic_cascade_escalates_and_replays_in_its_own_format() {
    let (_up, proxy) = routed_sim().await;
    for (fault, want) in [
        ("", "anthropic/claude-haiku-4-5=accepted"),
        (
            "truncate@claude-haiku-4-5",
            "anthropic/claude-haiku-4-5=rejected:finish, anthropic/claude-sonnet-4-5=served",
        ),
        (
            "refuse@claude-haiku-4-5",
            "anthropic/claude-haiku-4-5=rejected:finish, anthropic/claude-sonnet-4-5=served",
        ),
    ] {
        for stream in [false, true] {
            let body = json!({"model": "tollgate/claude-cheap-first", "max_tokens": 200, "stream": stream,
                "messages": [{"role": "user", "content": "Say something useful."}]});
            let headers: Vec<(&str, &str)> = if fault.is_empty() {
                vec![]
            } else {
                vec![("x-sim-fault", fault)]
            };
            let resp = anthropic(&proxy, "/v1/messages", &headers, &body).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(route_of(&resp), want, "{fault} stream={stream}");
            let id = request_id(&resp);
            let text = resp.text().await.unwrap();
            if stream {
                let events = sse_data(&text);
                let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
                assert_eq!(last["type"], "message_stop");
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "message");
            }
            let (r, attempts) = records_of(&proxy, &id).await;
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn a_deny_rule_answers_in_the_clients_format_naming_the_policy() {
    let (up, proxy) = routed_sim().await;
    let resp = openai(&proxy, "/v1/chat/completions", &[], &chat("gpt-4o")).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "policy_denied");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no-gpt-4o-for-search") && msg.contains("search uses the mini models"),
        "{msg}"
    );
    let body = json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let resp = anthropic(&proxy, "/v1/messages", &[], &body).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "permission_error");
    assert_eq!(up.sim.stats().requests, 0, "nothing went upstream");
}

#[tokio::test]
async fn a_rewrite_caps_max_tokens_in_the_clients_bytes() {
    let (addr, seen) = recording_upstream().await;
    let proxy = routed_proxy(addr).await;
    for (sent, want) in [(json!(1000), json!(64)), (json!(10), json!(10))] {
        let mut body = chat("gpt-4o-mini");
        body["max_tokens"] = sent;
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-tollgate-feature", "summaries")],
            &body,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let got: Value =
            serde_json::from_slice(&seen.lock().unwrap().last().unwrap().body).unwrap();
        assert_eq!(got["max_tokens"], want);
    }
    // Absent: the cap is added.
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-tollgate-feature", "summaries")],
        &chat("gpt-4o-mini"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let got: Value = serde_json::from_slice(&seen.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(got["max_completion_tokens"], 64);
}

#[tokio::test]
async fn a_logprob_judge_asks_for_logprobs_and_hides_them_unless_the_client_asked() {
    let (_up, proxy) = routed_sim().await;
    for stream in [false, true] {
        for (fault, client_asks, want) in [
            ("", false, "openai/gpt-4o-mini=accepted"),
            ("", true, "openai/gpt-4o-mini=accepted"),
            (
                "logprob=-3.5@gpt-4o-mini",
                false,
                "openai/gpt-4o-mini=rejected:logprob, openai/gpt-4o=served",
            ),
        ] {
            let mut body = chat("tollgate/confident");
            body["stream"] = json!(stream);
            if client_asks {
                body["logprobs"] = json!(true);
            }
            let resp = openai(
                &proxy,
                "/v1/chat/completions",
                &[("x-sim-fault", fault)],
                &body,
            )
            .await;
            assert_eq!(
                route_of(&resp),
                want,
                "{fault} asks={client_asks} stream={stream}"
            );
            let text = resp.text().await.unwrap();
            let chunks: Vec<Value> = if stream {
                sse_data(&text)
                    .iter()
                    .filter(|d| *d != "[DONE]")
                    .map(|d| serde_json::from_str(d).unwrap())
                    .collect()
            } else {
                vec![serde_json::from_str(&text).unwrap()]
            };
            let with_logprobs = chunks
                .iter()
                .filter(|c| !c["choices"][0]["logprobs"].is_null())
                .count();
            if want.ends_with("accepted") {
                assert_eq!(with_logprobs > 0, client_asks, "{text}");
            }
        }
    }
}

#[tokio::test]
async fn an_llm_judge_is_a_metered_attempt_and_its_verdict_decides() {
    let (_up, proxy) = routed_sim().await;
    for (model, want) in [
        (
            "tollgate/graded",
            "openai/gpt-4o-mini=accepted, anthropic/claude-haiku-4-5=graded",
        ),
        (
            "tollgate/graded-strictly",
            "openai/gpt-4o-mini=rejected:llm, openai/gpt-4o-mini=graded, openai/gpt-4o=served",
        ),
    ] {
        let resp = openai(&proxy, "/v1/chat/completions", &[], &chat(model)).await;
        assert_eq!(resp.status(), 200);
        let id = request_id(&resp);
        let route = route_of(&resp);
        let (r, attempts) = records_of(&proxy, &id).await;
        let judge_calls: Vec<&AttemptRecord> = attempts
            .iter()
            .filter(|a| a.role.as_str() == "judge")
            .collect();
        assert_eq!(judge_calls.len(), 1, "{route}");
        assert!(
            judge_calls[0].input_tokens > 0 && judge_calls[0].output_tokens > 0,
            "{route} {judge_calls:?}"
        );
        assert_eq!(judge_calls[0].verdict.as_str(), "graded");
        assert_totals(&r, &attempts);
        assert_eq!(route, want);
        let roles: Vec<&str> = attempts.iter().map(|a| a.role.as_str()).collect();
        assert_eq!(
            roles[..2],
            ["primary", "judge"],
            "attempts in the order they were made"
        );
        if model == "tollgate/graded" {
            assert_eq!(
                judge_calls[0].provider, "anthropic",
                "an Anthropic judge for an OpenAI client"
            );
            assert_eq!(r.escalations, 0);
        } else {
            assert_eq!(r.escalations, 1);
            assert_eq!(r.model, "gpt-4o");
        }
    }
}

/// The model of the first call each of `n` requests made.
async fn first_picks(proxy: &Proxy, model: &str, users: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for user in users {
        let resp = openai(
            proxy,
            "/v1/chat/completions",
            &[("x-tollgate-user", user)],
            &chat(model),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let route = route_of(&resp);
        let first = route
            .split('=')
            .next()
            .unwrap()
            .trim_start_matches("openai/");
        out.push(first.to_string());
    }
    out
}

#[tokio::test]
async fn a_balanced_route_honours_weights_and_sticky_splits_keep_a_user_on_one_target() {
    let (_up, proxy) = routed_sim().await;
    let picks = first_picks(&proxy, "tollgate/split", &["u"; 200]).await;
    let mini = picks.iter().filter(|m| *m == "gpt-4o-mini").count() as f64 / 200.0;
    // Weight 3 of 4: 0.75, with a standard deviation of 0.03 over 200 picks.
    assert!((0.63..=0.87).contains(&mini), "share of gpt-4o-mini {mini}");

    let users: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    let mut seen = std::collections::BTreeSet::new();
    for user in &users {
        let picks = first_picks(&proxy, "tollgate/ab", &[user.as_str(); 3]).await;
        assert!(
            picks.iter().all(|p| *p == picks[0]),
            "{user} moved: {picks:?}"
        );
        seen.insert(picks[0].clone());
    }
    assert_eq!(seen.len(), 2, "users are spread over both targets");
}

#[tokio::test]
async fn a_failing_target_is_cooled_down_then_probed_back() {
    let (_up, proxy) = routed_sim().await;
    for _ in 0..2 {
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-fault", "status=503@gpt-4o-mini")],
            &chat("tollgate/guarded"),
        )
        .await;
        assert_eq!(
            route_of(&resp),
            "openai/gpt-4o-mini=failed, openai/gpt-4o=served"
        );
    }
    // Out of rotation: the healthy target goes first, without a wasted call.
    let healthy = first_picks(&proxy, "tollgate/guarded", &["u"]).await;
    assert_eq!(healthy, ["gpt-4o"]);
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tollgate_target_cooldowns_total",
            &[("model", "gpt-4o-mini")]
        ),
        Some(1.0)
    );
    // After the cooldown one request probes it; it answers, and it is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = first_picks(&proxy, "tollgate/guarded", &["u", "u"]).await;
    assert_eq!(back, ["gpt-4o-mini", "gpt-4o-mini"]);
}

#[tokio::test]
async fn a_prompt_too_long_for_the_first_target_goes_to_the_next() {
    let (_up, proxy) = routed_sim().await;
    let short = openai(
        &proxy,
        "/v1/chat/completions",
        &[],
        &chat("tollgate/windowed"),
    )
    .await;
    assert_eq!(route_of(&short), "openai/o3-mini=served");
    let long = json!({"model": "tollgate/windowed", "messages": [{"role": "user",
        "content": "Tell me about the sea and its tides. ".repeat(20)}]});
    let resp = openai(&proxy, "/v1/chat/completions", &[], &long).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=served",
        "o3-mini's 60-token window is skipped"
    );
}

/// Sends a chat request for `model` with the simulated provider's `faults`, from a client
/// that gives up waiting after `patience`; asserts that it did, and returns the record.
pub(crate) async fn leave_after(
    proxy: &Proxy,
    patience: Duration,
    model: &str,
    faults: &str,
) -> Record {
    let impatient = reqwest::Client::builder()
        .timeout(patience)
        .build()
        .unwrap();
    let sent = impatient
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-fault", faults)
        .json(&chat(model))
        .send()
        .await;
    assert!(sent.is_err(), "the client got an answer before it left");
    proxy.only_record().await
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_rest_of_the_cascade_and_is_recorded() {
    let (up, proxy) = routed_sim().await;
    // The cheap step takes 2 s to answer; the client gives up after 300 ms.
    let faults = "delay-ms=2000@gpt-4o-mini";
    let r = leave_after(
        &proxy,
        Duration::from_millis(300),
        "tollgate/cheap-first",
        faults,
    )
    .await;
    assert_eq!(
        (r.status, r.error.as_deref()),
        (499, Some("client_disconnected"))
    );
    let (_, attempts) = records_of(&proxy, &r.request_id).await;
    assert_eq!(
        verdicts(&attempts),
        [("gpt-4o-mini".into(), "aborted".into(), String::new())]
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        up.sim.stats().requests,
        1,
        "the strong step was never called"
    );
}

#[tokio::test]
async fn fields_only_rules_read_never_turn_a_valid_request_into_an_error() {
    let (_up, proxy) = routed_sim().await;
    // Legacy completions' `logprobs` is a number, not chat's boolean.
    let body = json!({"model": "gpt-4o-mini", "prompt": "Say hi", "logprobs": 2});
    let resp = openai(&proxy, "/v1/completions", &[], &body).await;
    assert_eq!(resp.status(), 200);
    // Shapes Tollgate does not expect are the provider's to judge, not Tollgate's.
    let mut body = chat("gpt-4o-mini");
    body["text"] = json!("an extension field");
    body["response_format"] = json!("json");
    let resp = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_ne!(v["error"]["code"], "invalid_json", "{status} {v}");
}

#[tokio::test]
async fn reports_group_by_policy_and_show_what_it_saved() {
    let (_up, proxy) = routed_sim().await;
    for (model, fault) in [
        ("tollgate/cheap-first", ""),
        ("tollgate/cheap-first", ""),
        ("gpt-4o-mini", ""),
    ] {
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-fault", fault)],
            &chat(model),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    let records = proxy.records(3).await;
    let out = proxy.command(&[
        "report", "--ledger", "--since", "1h", "--by", "policy", "--format", "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = |policy: &str| rows.iter().find(|r| r["policy"] == policy).unwrap().clone();
    let routed: Vec<&Record> = records
        .iter()
        .filter(|r| r.policy == "cheap-first")
        .collect();
    let saved: i64 = routed
        .iter()
        .map(|r| r.counterfactual_cost_usd.unwrap().0 - r.cost_usd.unwrap().0)
        .sum();
    assert!(saved > 0);
    assert_eq!(row("cheap-first")["requests"], 2);
    assert_eq!(row("cheap-first")["saved_usd"], cost_str(saved));
    assert_eq!(
        row("")["saved_usd"],
        cost_str(0),
        "unrouted requests save nothing"
    );
}
