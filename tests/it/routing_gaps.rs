//! Routing behaviours the main routing tests leave out: every fact a rule matches on, the
//! judges not exercised there (content filter, custom refusal patterns, structured-output
//! refusals, JSON schemas, minimum length, Anthropic tool calls), the bounds of a plan
//! (attempts, deadline, `retry-after` past its limit, context windows), the attempt metrics,
//! model rewrites, requests in flight across a reload, and what `tollgate check` locates.

use crate::check::check_with;
use crate::clickhouse::{keeping, wait_attempts, wait_rows};
use crate::common::clickhouse::ClickHouse;
use crate::common::*;
use crate::reload::{alias_policy, aliased_proxy, post_reload, reload, save_by_rename};
use crate::routing::{
    assert_totals, chat, leave_after, records_of, route_of, routed_proxy_with, verdicts,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Rules of these tests, beside the main routing tests' own.
const GAPS: &str = r#"
rules:
  - name: gaps-judged
    priority: 45
    match: {model: tollgate/gaps-judged, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {finish: true, refusal: ["(?i)help with that"], json: true, length: {min_chars: 12}}

  - name: gaps-own-refusals
    priority: 45
    match: {model: tollgate/gaps-own-refusals, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {refusal: ["(?i)^as a language model"]}

  - name: gaps-claude-tools
    priority: 45
    match: {model: tollgate/gaps-claude-tools, endpoint: /v1/messages}
    cascade:
      steps:
        - {provider: anthropic, model: claude-haiku-4-5}
        - {provider: anthropic, model: claude-sonnet-4-5}
      judges: {tool_args: true}

  - name: gaps-two-calls
    priority: 45
    match: {model: tollgate/gaps-two-calls, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: o3-mini}
        - {provider: openai, model: gpt-4o}
      judges: {finish: true}
      max_attempts: 2

  - name: gaps-graded-two-calls
    priority: 45
    match: {model: tollgate/gaps-graded-two-calls, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {llm: {provider: openai, model: gpt-4o-mini, prompt: "Reply PASS or FAIL.", accept: "^PASS$"}}
      max_attempts: 2

  - name: gaps-deadline
    priority: 45
    match: {model: tollgate/gaps-deadline, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: o3-mini}
        - {provider: openai, model: gpt-4o}
      judges: {finish: true}
      deadline_ms: 1000

  - name: gaps-graded-deadline
    priority: 45
    match: {model: tollgate/gaps-graded-deadline, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {llm: {provider: anthropic, model: claude-haiku-4-5, prompt: "Grade it.", accept: "(?s).+"}}
      deadline_ms: 1500

  - name: gaps-bounded
    priority: 45
    match: {model: tollgate/gaps-bounded, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      retries: {per_target: 3, backoff_ms: 10, max_attempts: 2}

  - name: gaps-small-windows
    priority: 45
    match: {model: tollgate/gaps-small-windows, endpoint: /v1/chat/completions}
    route:
      targets:
        - {provider: openai, model: o3-mini}
        - {provider: down, model: o3-mini}

  - name: gaps-claude-failover
    priority: 45
    match: {model: tollgate/gaps-claude-failover, endpoint: /v1/messages}
    route:
      targets:
        - {provider: anthropic, model: claude-haiku-4-5}
        - {provider: anthropic, model: claude-sonnet-4-5}

  - name: gaps-responses
    priority: 45
    match: {model: tollgate/gaps-responses, endpoint: /v1/responses}
    cascade:
      steps:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: openai, model: gpt-4o}
      judges: {finish: true}

  - name: gaps-prod-allow-list
    priority: 35
    match: {env: prod, model: gpt-4o, endpoint: /v1/chat/completions}
    rewrite: {model: gpt-4o-mini}
"#;

/// The simulated provider and a routed proxy with the rules above.
async fn gaps_sim() -> (Upstream, Proxy) {
    let up = start_sim().await;
    let proxy = routed_proxy_with(up.addr, &[("policies/gaps.yaml", GAPS.as_bytes())]).await;
    (up, proxy)
}

/// A chat request with the simulated provider's `faults` (none when empty).
async fn faulted(proxy: &Proxy, body: &Value, faults: &str) -> reqwest::Response {
    let headers = [("x-sim-fault", faults)];
    openai(proxy, "/v1/chat/completions", &headers, body).await
}

/// The JSON payloads of an SSE body, `[DONE]` left out.
fn sse_json(text: &str) -> Vec<Value> {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// Checks that `text` is a whole answer of `format` ("openai" or "anthropic") as the client
/// asked for it (a stream or one body), from `model`; returns its payloads.
fn assert_well_formed(text: &str, format: &str, stream: bool, model: &str) -> Vec<Value> {
    if !stream {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["model"], model, "{text}");
        return vec![v];
    }
    let events = sse_json(text);
    match format {
        "openai" => {
            assert_eq!(sse_data(text).last().map(String::as_str), Some("[DONE]"));
            assert!(events.iter().all(|c| c["model"] == model), "{text}");
            let finish = events
                .iter()
                .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
                .count();
            assert_eq!(finish, 1, "one finish_reason: {text}");
        }
        _ => {
            assert_eq!(events[0]["type"], "message_start", "{text}");
            assert_eq!(events[0]["message"]["model"], model, "{text}");
            assert_eq!(events.last().unwrap()["type"], "message_stop", "{text}");
        }
    }
    events
}

#[tokio::test]
async fn more_judges_escalate_streamed_and_not() {
    let (_up, proxy) = gaps_sim().await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"},
        "people": {"type": "integer"}}, "required": ["city", "people"], "additionalProperties": false});
    let structured = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "place", "strict": true, "schema": schema}}});
    let none = json!({});
    // (alias, fault, extra headers, extra body, the cheap step's verdict)
    let cases = [
        ("gaps-judged", "", None, &none, "accepted"),
        (
            "gaps-judged",
            "content-filter@gpt-4o-mini",
            None,
            &none,
            "rejected:finish",
        ),
        // The rule's own pattern catches this refusal's text.
        (
            "gaps-judged",
            "refuse@gpt-4o-mini",
            None,
            &none,
            "rejected:refusal",
        ),
        ("gaps-judged", "", None, &structured, "accepted"),
        (
            "gaps-judged",
            "invalid-json=schema@gpt-4o-mini",
            None,
            &structured,
            "rejected:json",
        ),
        (
            "gaps-judged",
            "invalid-json@gpt-4o-mini",
            None,
            &structured,
            "rejected:json",
        ),
        // One token of answer: "the", shorter than the 12 characters asked for.
        (
            "gaps-judged",
            "",
            Some(("x-sim-output-tokens", "1")),
            &none,
            "rejected:length",
        ),
        // Patterns replace the built-in ones: an ordinary refusal text passes these...
        (
            "gaps-own-refusals",
            "refuse@gpt-4o-mini",
            None,
            &none,
            "accepted",
        ),
        // ...but a structured-output refusal (`message.refusal`) is one whatever its text.
        (
            "gaps-own-refusals",
            "refuse@gpt-4o-mini",
            None,
            &structured,
            "rejected:refusal",
        ),
    ];
    for (alias, fault, header, extra, verdict) in cases {
        for stream in [false, true] {
            let what = format!("{alias} {fault} {header:?} {extra} stream={stream}");
            let mut body = chat(&format!("tollgate/{alias}"));
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body["stream"] = json!(stream);
            let mut headers = vec![("x-sim-fault", fault)];
            headers.extend(header);
            let resp = openai(&proxy, "/v1/chat/completions", &headers, &body).await;
            assert_eq!(resp.status(), 200, "{what}");
            let route = route_of(&resp);
            let id = request_id(&resp);
            let text = resp.text().await.unwrap();
            let served = if verdict == "accepted" {
                assert_eq!(route, "openai/gpt-4o-mini=accepted", "{what}");
                "gpt-4o-mini"
            } else {
                assert_eq!(
                    route,
                    format!("openai/gpt-4o-mini={verdict}, openai/gpt-4o=served"),
                    "{what}"
                );
                "gpt-4o"
            };
            let events = assert_well_formed(&text, "openai", stream, served);
            if extra == &structured && verdict != "rejected:refusal" {
                // Whatever answered, the client got JSON of its schema.
                let content: String = if stream {
                    events
                        .iter()
                        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                        .collect()
                } else {
                    events[0]["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap()
                        .to_string()
                };
                let v: Value = serde_json::from_str(&content)
                    .unwrap_or_else(|e| panic!("{what}: {e}: {content}"));
                assert!(v["city"].is_string() && v["people"].is_i64(), "{what}: {v}");
            }
            let (r, attempts) = records_of(&proxy, &id).await;
            assert_eq!(r.model, served, "{what}");
            assert_eq!(
                u32::from(r.escalations),
                u32::from(verdict != "accepted"),
                "{what}"
            );
            if let Some(judge) = verdict.strip_prefix("rejected:") {
                assert_eq!(
                    verdicts(&attempts)[0],
                    ("gpt-4o-mini".into(), "rejected".into(), judge.into()),
                    "{what}"
                );
            }
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn an_anthropic_cascade_judges_tool_arguments() {
    let (_up, proxy) = gaps_sim().await;
    let tools = json!([{"name": "lookup", "description": "Find a city.", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    for (fault, want, served) in [
        (
            "",
            "anthropic/claude-haiku-4-5=accepted",
            "claude-haiku-4-5",
        ),
        (
            "bad-tool-args@claude-haiku-4-5",
            "anthropic/claude-haiku-4-5=rejected:tool_args, anthropic/claude-sonnet-4-5=served",
            "claude-sonnet-4-5",
        ),
        (
            "bad-tool-args=syntax@claude-haiku-4-5",
            "anthropic/claude-haiku-4-5=rejected:tool_args, anthropic/claude-sonnet-4-5=served",
            "claude-sonnet-4-5",
        ),
    ] {
        for stream in [false, true] {
            if fault.ends_with("syntax@claude-haiku-4-5") && !stream {
                // A whole Anthropic answer's `input` is always an object.
                continue;
            }
            let body = json!({"model": "tollgate/gaps-claude-tools", "max_tokens": 200,
                "stream": stream, "tools": tools, "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "Where is the sea?"}]});
            let resp = anthropic(&proxy, "/v1/messages", &[("x-sim-fault", fault)], &body).await;
            assert_eq!(resp.status(), 200, "{fault}");
            assert_eq!(route_of(&resp), want, "{fault} stream={stream}");
            let id = request_id(&resp);
            let text = resp.text().await.unwrap();
            let events = assert_well_formed(&text, "anthropic", stream, served);
            let input: Value = if stream {
                let json: String = events
                    .iter()
                    .filter_map(|e| e["delta"]["partial_json"].as_str())
                    .collect();
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
            } else {
                events[0]["content"][0]["input"].clone()
            };
            assert!(input["city"].is_string(), "the served call fits: {input}");
            let (r, attempts) = records_of(&proxy, &id).await;
            assert_eq!(r.model, served);
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn a_replayed_stream_carries_usage_only_when_asked() {
    let (_up, proxy) = gaps_sim().await;
    for (fault, route) in [
        ("", "openai/gpt-4o-mini=accepted"),
        (
            "truncate@gpt-4o-mini",
            "openai/gpt-4o-mini=rejected:finish, openai/gpt-4o=served",
        ),
    ] {
        for asks in [false, true] {
            let mut body = chat("tollgate/cheap-first");
            body["stream"] = json!(true);
            if asks {
                body["stream_options"] = json!({"include_usage": true});
            }
            let resp = faulted(&proxy, &body, fault).await;
            assert_eq!(route_of(&resp), route);
            let id = request_id(&resp);
            let chunks = sse_json(&resp.text().await.unwrap());
            let with_usage: Vec<&Value> =
                chunks.iter().filter(|c| c["usage"].is_object()).collect();
            let (r, attempts) = records_of(&proxy, &id).await;
            if !asks {
                assert!(with_usage.is_empty(), "{fault}: {chunks:?}");
                continue;
            }
            // One usage chunk, last, with no choices, counting the answer the client got.
            assert_eq!(with_usage.len(), 1, "{fault}: {chunks:?}");
            let last = chunks.last().unwrap();
            assert_eq!(last["choices"], json!([]), "{fault}");
            let served = attempts.last().unwrap();
            assert_eq!(
                (
                    last["usage"]["prompt_tokens"].as_u64(),
                    last["usage"]["completion_tokens"].as_u64()
                ),
                (Some(served.input_tokens), Some(served.output_tokens)),
                "{fault}"
            );
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn a_cascade_stops_judging_at_its_max_attempts() {
    let (up, proxy) = gaps_sim().await;
    let resp = faulted(
        &proxy,
        &chat("tollgate/gaps-two-calls"),
        "truncate@gpt-4o-mini, truncate@o3-mini",
    )
    .await;
    assert_eq!(resp.status(), 200);
    // The second call is the last allowed: its answer goes out unjudged, cut short as it is.
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=rejected:finish, openai/o3-mini=served"
    );
    let id = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            v["model"].as_str(),
            v["choices"][0]["finish_reason"].as_str()
        ),
        (Some("o3-mini"), Some("length"))
    );
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_eq!((r.attempts, r.escalations), (2, 1));
    assert_totals(&r, &attempts);
    assert_eq!(up.sim.stats().requests, 2, "gpt-4o was never called");
}

#[tokio::test]
async fn an_llm_judges_call_counts_toward_max_attempts() {
    let (up, proxy) = gaps_sim().await;
    let resp = faulted(&proxy, &chat("tollgate/gaps-graded-two-calls"), "").await;
    assert_eq!(resp.status(), 200);
    // Two calls cannot hold a graded answer and a step after it: the first step is the last,
    // and goes out as it comes.
    let route = route_of(&resp);
    assert_eq!(route, "openai/gpt-4o-mini=served");
    let id = request_id(&resp);
    resp.bytes().await.unwrap();
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_totals(&r, &attempts);
    assert_eq!(up.sim.stats().requests, 1, "{route}");

    // With the default bound (a call per step and per grading) the grader decides.
    let resp = faulted(&proxy, &chat("tollgate/graded-strictly"), "").await;
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=rejected:llm, openai/gpt-4o-mini=graded, openai/gpt-4o=served"
    );
    assert_eq!(up.sim.stats().requests, 4);
}

#[tokio::test]
async fn a_cascade_past_its_deadline_serves_the_next_step_unjudged() {
    let (up, proxy) = gaps_sim().await;
    let started = Instant::now();
    // The cheap step's header comes at once, but its 10 tokens take 1.5 s: it is left at
    // the 1 s deadline, and the step after it is the last.
    let mut body = chat("tollgate/gaps-deadline");
    body["stream"] = json!(true);
    let headers = [
        ("x-sim-fault", "truncate@gpt-4o-mini, truncate@o3-mini"),
        ("x-sim-output-tokens", "10"),
        ("x-sim-token-interval-ms", "150"),
    ];
    let resp = openai(&proxy, "/v1/chat/completions", &headers, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=failed, openai/o3-mini=served",
        "after the 1 s deadline the next step is the last"
    );
    let id = request_id(&resp);
    let chunks = sse_json(&resp.text().await.unwrap());
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["length"], "served unjudged, cut short as it is");
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_eq!(r.attempts, 2);
    assert_totals(&r, &attempts);
    assert_eq!(up.sim.stats().requests, 2);

    // In time, the same faults escalate through every step.
    let faults = "truncate@gpt-4o-mini, truncate@o3-mini";
    let resp = faulted(&proxy, &chat("tollgate/gaps-deadline"), faults).await;
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=rejected:finish, openai/o3-mini=rejected:finish, openai/gpt-4o=served"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_step_that_hangs_past_the_deadline_is_left_for_the_next() {
    let (_up, proxy) = gaps_sim().await;
    let started = Instant::now();
    let resp = faulted(&proxy, &chat("tollgate/gaps-deadline"), "hang@gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=failed, openai/o3-mini=served",
        "the cheap step is cut at the 1 s deadline, and the next step is the last"
    );
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    assert_eq!(attempts[0].error.as_deref(), Some("upstream_timeout"));
    assert_totals(&r, &attempts);
}

#[tokio::test]
async fn a_judge_that_hangs_past_the_deadline_rejects() {
    let (_up, proxy) = gaps_sim().await;
    // A first request readies what every request uses, so the cheap step is answered well
    // before the 1.5 s deadline.
    faulted(&proxy, &chat("gpt-4o-mini"), "").await;
    let started = Instant::now();
    let body = chat("tollgate/gaps-graded-deadline");
    let resp = faulted(&proxy, &body, "hang@claude-haiku-4-5").await;
    assert_eq!(resp.status(), 200);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    let route = route_of(&resp);
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    let calls: Vec<(&str, &str, &str, Option<&str>)> = attempts
        .iter()
        .map(|a| {
            (
                a.model.as_str(),
                a.role.as_str(),
                a.verdict.as_str(),
                a.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("gpt-4o-mini", "primary", "rejected", None),
            (
                "claude-haiku-4-5",
                "judge",
                "failed",
                Some("upstream_timeout")
            ),
            ("gpt-4o", "escalation", "served", None),
        ],
        "{route}"
    );
    assert_totals(&r, &attempts);
}

#[tokio::test]
async fn a_route_stops_at_its_max_attempts() {
    let (up, proxy) = gaps_sim().await;
    let resp = faulted(&proxy, &chat("tollgate/gaps-bounded"), "status=503").await;
    // Three retries per target are allowed, but two calls in all: the second is the last,
    // and its error is the client's, in its format.
    assert_eq!(resp.status(), 503);
    let id = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    let (r, attempts) = records_of(&proxy, &id).await;
    let roles: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a.role.as_str(), a.model.as_str()))
        .collect();
    assert_eq!(
        roles,
        [("primary", "gpt-4o-mini"), ("retry", "gpt-4o-mini")]
    );
    assert_eq!((r.attempts, r.status), (2, 503));
    assert_eq!(up.sim.stats().requests, 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_moves_on_without_waiting() {
    let (_up, proxy) = gaps_sim().await;
    let started = Instant::now();
    // `patient` retries a target once, waiting at most 3 s: a 10 s retry-after is not waited.
    let resp = faulted(
        &proxy,
        &chat("tollgate/patient"),
        "status=429@gpt-4o-mini, retry-after=10@gpt-4o-mini",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=failed, openai/gpt-4o=served"
    );
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    let roles: Vec<&str> = attempts.iter().map(|a| a.role.as_str()).collect();
    assert_eq!(roles, ["primary", "fallback"]);
    assert_totals(&r, &attempts);
}

#[tokio::test]
async fn a_prompt_too_long_for_every_target_is_refused_in_the_clients_format() {
    let (up, proxy) = gaps_sim().await;
    let long = json!({"model": "tollgate/gaps-small-windows", "messages": [{"role": "user",
        "content": "Tell me about the sea and its tides. ".repeat(20)}]});
    let resp = openai(&proxy, "/v1/chat/completions", &[], &long).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("context window") && msg.contains("o3-mini (60)"),
        "{v}"
    );
    assert_eq!(up.sim.stats().requests, 0, "nothing went upstream");
}

#[tokio::test]
async fn a_model_an_env_may_not_use_is_replaced_and_priced_against_the_one_asked_for() {
    let (_up, proxy) = gaps_sim().await;
    // The test key is bound to env prod, which may not use gpt-4o.
    let resp = faulted(&proxy, &chat("gpt-4o"), "").await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4o-mini", "the answering model is named");
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_eq!(
        (r.policy.as_str(), r.model.as_str()),
        ("gaps-prod-allow-list", "gpt-4o-mini")
    );
    assert_totals(&r, &attempts);
    let on = |input: f64, output: f64| {
        r.input_tokens as i64 * nanos_per_token(input)
            + r.output_tokens as i64 * nanos_per_token(output)
    };
    assert_eq!(r.cost_usd.unwrap().0, on(2.0, 8.0), "gpt-4o-mini's prices");
    assert_eq!(
        r.counterfactual_cost_usd.unwrap().0,
        on(25.0, 100.0),
        "gpt-4o's prices, the model asked for"
    );
}

#[tokio::test]
async fn attempt_metrics_count_each_call_by_policy_model_role_and_judge() {
    let (_up, proxy) = gaps_sim().await;
    for fault in ["", "", "truncate@gpt-4o-mini", "refuse@gpt-4o-mini"] {
        let resp = faulted(&proxy, &chat("tollgate/cheap-first"), fault).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let records = proxy.records(4).await;
    let m = proxy.metrics().await;
    let attempts = |model, role, verdict, judge| {
        metric(
            &m,
            "tollgate_attempts_total",
            &[
                ("policy", "cheap-first"),
                ("provider", "openai"),
                ("model", model),
                ("role", role),
                ("verdict", verdict),
                ("judge", judge),
            ],
        )
    };
    assert_eq!(
        attempts("gpt-4o-mini", "primary", "accepted", ""),
        Some(2.0)
    );
    assert_eq!(
        attempts("gpt-4o-mini", "primary", "rejected", "finish"),
        Some(1.0)
    );
    assert_eq!(
        attempts("gpt-4o-mini", "primary", "rejected", "refusal"),
        Some(1.0)
    );
    assert_eq!(attempts("gpt-4o", "escalation", "served", ""), Some(2.0));
    // Spend and savings, to the nano-dollar of the ledger's records.
    let usd = |kind| {
        let v = metric(
            &m,
            "tollgate_routing_cost_usd_total",
            &[("policy", "cheap-first"), ("kind", kind)],
        )
        .unwrap();
        (v * 1e9).round() as i64
    };
    let actual: i64 = records.iter().map(|r| r.cost_usd.unwrap().0).sum();
    let counterfactual: i64 = records
        .iter()
        .map(|r| r.counterfactual_cost_usd.unwrap().0)
        .sum();
    assert_eq!(
        (usd("actual"), usd("counterfactual")),
        (actual, counterfactual)
    );
    assert!(counterfactual > actual, "the cheap answers saved");
}

/// A cascade whose second step is `strong`, as a policy file.
fn in_flight_policy(strong: &str) -> String {
    format!(
        "rules:\n  - name: in-flight\n    match: {{model: tollgate/in-flight, endpoint: /v1/chat/completions}}\n    cascade:\n      steps:\n        - {{provider: openai, model: gpt-4o-mini}}\n        - {{provider: openai, model: {strong}}}\n      judges: {{finish: true}}\n"
    )
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_policy_it_started_with() {
    let up = start_sim().await;
    let policy = in_flight_policy("gpt-4o");
    let proxy = routed_proxy_with(up.addr, &[("policies/in-flight.yaml", policy.as_bytes())]).await;
    // The cheap step answers, cut short, after 1.5 s; the rules change meanwhile.
    let slow = {
        let (url, body) = (
            proxy.url("/v1/chat/completions"),
            chat("tollgate/in-flight"),
        );
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(KEY)
                .header(
                    "x-sim-fault",
                    "delay-ms=1500@gpt-4o-mini, truncate@gpt-4o-mini",
                )
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    save_by_rename(
        &proxy.dir.path().join("policies/in-flight.yaml"),
        &in_flight_policy("o3-mini"),
    );
    proxy
        .wait_metric(
            "tollgate_config_reloads_total",
            &[("result", "ok"), ("trigger", "watch")],
            1.0,
        )
        .await;
    let after = faulted(&proxy, &chat("tollgate/in-flight"), "truncate@gpt-4o-mini").await;
    assert_eq!(
        route_of(&after),
        "openai/gpt-4o-mini=rejected:finish, openai/o3-mini=served",
        "new requests get the new rules"
    );
    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        route_of(&resp),
        "openai/gpt-4o-mini=rejected:finish, openai/gpt-4o=served",
        "the request in flight escalates as its rules said when it started"
    );
    let (r, attempts) = records_of(&proxy, &request_id(&resp)).await;
    assert_eq!(
        (r.policy.as_str(), r.model.as_str()),
        ("in-flight", "gpt-4o")
    );
    assert_totals(&r, &attempts);
}

#[test]
fn check_locates_unpriced_targets_and_targets_of_the_wrong_api() {
    let config = "\
providers:
  openai:
    kind: openai_compatible
    base_url: http://127.0.0.1:9
    api_key_env: TEST_OPENAI_KEY
  anthropic:
    kind: anthropic
    base_url: http://127.0.0.1:9
    api_key_env: TEST_ANTHROPIC_KEY
models:
  gpt-4o-mini: { provider: openai }
policies: policies
";
    let rules = "\
rules:
  - name: cheap-first
    match: { model: tollgate/cheap-first, endpoint: /v1/chat/completions }
    cascade:
      steps:
        - { provider: openai, model: my-finetune }
        - { provider: anthropic, model: claude-sonnet-4-5 }
      judges: { finish: true }
";
    let env = [
        ("TEST_OPENAI_KEY", "sk-x"),
        ("TEST_ANTHROPIC_KEY", "sk-ant-x"),
    ];
    let (ok, out) = check_with(config, &[("policies/chat.yaml", rules)], &env);
    assert!(!ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "policies/chat.yaml:6:38: rule \"cheap-first\": target openai/my-finetune has no price; add it to a price file (a plan's cost, savings and budgets need every target's price)",
            "policies/chat.yaml:7:11: rule \"cheap-first\": target anthropic/claude-sonnet-4-5 does not speak the OpenAI API of /v1/chat/completions",
        ],
        "{out}"
    );
}

/// One deny rule per request fact, each naming itself, tried highest priority first; the
/// default rule takes the rest.
const WHICH: &str = r#"
rules:
  - {name: by-project, priority: 90, match: {project: atlas, model: tollgate/which}, deny: by-project}
  - {name: by-env, priority: 89, match: {env: staging, model: tollgate/which}, deny: by-env}
  - {name: by-user, priority: 88, match: {user: zoe, model: tollgate/which}, deny: by-user}
  - {name: by-key, priority: 87, match: {key: search-prod, model: tollgate/which}, deny: by-key}
  - {name: by-tags, priority: 86, match: {tags: {tier: gold}, model: tollgate/which}, deny: by-tags}
  - {name: by-stream, priority: 85, match: {stream: true, model: tollgate/which}, deny: by-stream}
  - {name: by-tools, priority: 84, match: {tools: true, model: tollgate/which}, deny: by-tools}
  - {name: by-json, priority: 83, match: {json: true, model: tollgate/which}, deny: by-json}
  - {name: by-size, priority: 82, match: {input_tokens: {min: 200}, model: tollgate/which}, deny: by-size}
  - {name: by-glob, priority: 81, match: {model: "tollgate/which-*"}, deny: by-glob}
  - {name: the-rest, default: true, deny: the-rest}
"#;

#[tokio::test]
async fn each_request_fact_a_rule_matches_on_picks_its_rule() {
    let up = start_sim().await;
    let config = config_for(up.addr, "policies: policies\n");
    let proxy = Proxy::start_with(&config, &[("policies/which.yaml", WHICH.as_bytes())]).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let schema =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
    let long = "Tell me about the sea and its tides. ".repeat(30);
    // (virtual key, attribution header `x-tollgate-FIELD: VALUE`, body members, the rule)
    let cases = [
        (OPEN_KEY, "", "", json!({}), "the-rest"),
        (OPEN_KEY, "project", "atlas", json!({}), "by-project"),
        (OPEN_KEY, "project", "zeus", json!({}), "the-rest"),
        (OPEN_KEY, "env", "staging", json!({}), "by-env"),
        (OPEN_KEY, "user", "zoe", json!({}), "by-user"),
        (OPEN_KEY, "user", "zed", json!({}), "the-rest"),
        (KEY, "", "", json!({}), "by-key"),
        (
            OPEN_KEY,
            "tags",
            "tier=gold,region=eu",
            json!({}),
            "by-tags",
        ),
        (OPEN_KEY, "tags", "tier=silver", json!({}), "the-rest"),
        (OPEN_KEY, "", "", json!({"stream": true}), "by-stream"),
        (OPEN_KEY, "", "", json!({"stream": false}), "the-rest"),
        (OPEN_KEY, "", "", json!({"tools": tools}), "by-tools"),
        (
            OPEN_KEY,
            "",
            "",
            json!({"response_format": {"type": "json_object"}}),
            "by-json",
        ),
        (
            OPEN_KEY,
            "",
            "",
            json!({"response_format": schema}),
            "by-json",
        ),
        (
            OPEN_KEY,
            "",
            "",
            json!({"response_format": {"type": "text"}}),
            "the-rest",
        ),
        (
            OPEN_KEY,
            "",
            "",
            json!({"messages": [{"role": "user", "content": long}]}),
            "by-size",
        ),
        (
            OPEN_KEY,
            "",
            "",
            json!({"model": "tollgate/which-else"}),
            "by-glob",
        ),
        (
            OPEN_KEY,
            "",
            "",
            json!({"model": "gpt-4o-mini"}),
            "the-rest",
        ),
    ];
    // The rule a request gets, by the reason of the rule that denied it.
    let denied_by = async |key: &str, headers: &[(&str, &str)], extra: &Value| {
        let mut body = chat("tollgate/which");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = openai_as(&proxy, key, "/v1/chat/completions", headers, &body).await;
        assert_eq!(resp.status(), 403, "{headers:?} {extra}");
        let v: Value = resp.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        msg.rsplit(": ").next().unwrap_or_default().to_string()
    };
    for (key, field, value, extra, want) in cases {
        let name = format!("x-tollgate-{field}");
        let headers: Vec<(&str, &str)> = if field.is_empty() {
            vec![]
        } else {
            vec![(name.as_str(), value)]
        };
        assert_eq!(
            denied_by(key, &headers, &extra).await,
            want,
            "{headers:?} {extra}"
        );
    }
    // Both match: the higher priority applies.
    let both = [("x-tollgate-user", "zoe"), ("x-tollgate-project", "atlas")];
    assert_eq!(denied_by(OPEN_KEY, &both, &json!({})).await, "by-project");
    assert_eq!(up.sim.stats().requests, 0);
}

#[tokio::test]
async fn an_anthropic_route_falls_back_before_bytes_and_ends_cleanly_after() {
    let (_up, proxy) = gaps_sim().await;
    let body = |stream: bool| {
        json!({"model": "tollgate/gaps-claude-failover", "max_tokens": 200, "stream": stream,
            "messages": [{"role": "user", "content": "Say something useful."}]})
    };
    // Anthropic's overloaded status, before any byte: the next target answers.
    for stream in [false, true] {
        let faults = [("x-sim-fault", "status=529@claude-haiku-4-5")];
        let resp = anthropic(&proxy, "/v1/messages", &faults, &body(stream)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            route_of(&resp),
            "anthropic/claude-haiku-4-5=failed, anthropic/claude-sonnet-4-5=served"
        );
        let text = resp.text().await.unwrap();
        assert_well_formed(&text, "anthropic", stream, "claude-sonnet-4-5");
    }
    // Cut after the first events reached the client: no fallback, an Anthropic error event.
    let faults = [("x-sim-fault", "reset-after=2@claude-haiku-4-5")];
    let resp = anthropic(&proxy, "/v1/messages", &faults, &body(true)).await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let mut resp = resp;
    let mut received = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        received.extend_from_slice(&c);
    }
    let text = String::from_utf8_lossy(&received);
    let events = sse_json(&text);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{text}");
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(text.contains("event: error"), "{text}");
    let (r, attempts) = records_of(&proxy, &id).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(r.error.as_deref(), Some("upstream_failed"));
    assert_eq!(attempts[0].model, "claude-haiku-4-5");
}

#[tokio::test]
async fn a_responses_api_cascade_replays_and_escalates_streamed_and_not() {
    let (_up, proxy) = gaps_sim().await;
    for (fault, want) in [
        ("", "openai/gpt-4o-mini=accepted"),
        (
            "truncate@gpt-4o-mini",
            "openai/gpt-4o-mini=rejected:finish, openai/gpt-4o=served",
        ),
        (
            "content-filter@gpt-4o-mini",
            "openai/gpt-4o-mini=rejected:finish, openai/gpt-4o=served",
        ),
    ] {
        for stream in [false, true] {
            let body = json!({"model": "tollgate/gaps-responses", "input": "Say something useful.",
                "stream": stream});
            let headers = [("x-sim-fault", fault)];
            let resp = openai(&proxy, "/v1/responses", &headers, &body).await;
            assert_eq!(resp.status(), 200, "{fault}");
            assert_eq!(route_of(&resp), want, "{fault} stream={stream}");
            let id = request_id(&resp);
            let text = resp.text().await.unwrap();
            let served = if want.ends_with("accepted") {
                "gpt-4o-mini"
            } else {
                "gpt-4o"
            };
            let done = if stream {
                let events = sse_json(&text);
                let last = events.last().unwrap().clone();
                assert_eq!(last["type"], "response.completed", "{text}");
                last["response"].clone()
            } else {
                serde_json::from_str(&text).unwrap()
            };
            assert_eq!(
                (done["status"].as_str(), done["model"].as_str()),
                (Some("completed"), Some(served)),
                "{fault} stream={stream}"
            );
            let (r, attempts) = records_of(&proxy, &id).await;
            assert_eq!(r.model, served);
            assert_totals(&r, &attempts);
        }
    }
}

#[tokio::test]
async fn a_probe_that_fails_takes_the_target_out_again_at_once() {
    let (_up, proxy) = gaps_sim().await;
    let failing = "status=503@gpt-4o-mini";
    for _ in 0..2 {
        faulted(&proxy, &chat("tollgate/guarded"), failing).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The cooldown is over: this request probes gpt-4o-mini, which fails once more...
    let probe = faulted(&proxy, &chat("tollgate/guarded"), failing).await;
    assert_eq!(
        route_of(&probe),
        "openai/gpt-4o-mini=failed, openai/gpt-4o=served"
    );
    // ...and that one failure is enough to take it out again.
    let next = faulted(&proxy, &chat("tollgate/guarded"), "").await;
    assert_eq!(route_of(&next), "openai/gpt-4o=served");
    let m = proxy.metrics().await;
    let cooldowns = [("model", "gpt-4o-mini")];
    assert_eq!(
        metric(&m, "tollgate_target_cooldowns_total", &cooldowns),
        Some(2.0)
    );
}

#[tokio::test]
async fn sighup_and_the_admin_call_apply_an_edited_policy() {
    let up = start_sim().await;
    let extra = "reload: { watch: false }\nadmin: { token_env: TEST_ADMIN_TOKEN }\n";
    let proxy = aliased_proxy(&up, extra).await;
    let policy = proxy.dir.path().join("policies/alias.yaml");
    let answered_by = async || {
        let resp = faulted(&proxy, &chat("tollgate/alias"), "").await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["model"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(answered_by().await, "gpt-4o-mini");

    save_by_rename(&policy, &alias_policy("o3-mini", 100));
    assert_eq!(
        answered_by().await,
        "gpt-4o-mini",
        "not watched: no reload yet"
    );
    reload(&proxy, "ok").await;
    assert_eq!(answered_by().await, "o3-mini", "SIGHUP applied the edit");

    save_by_rename(&policy, &alias_policy("gpt-4o-mini", 100));
    let (status, body) = post_reload(&proxy, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &body), (200, &json!({"result": "ok"})));
    assert_eq!(
        answered_by().await,
        "gpt-4o-mini",
        "the admin call applied the edit"
    );
}

#[tokio::test]
async fn an_llm_judge_grades_a_streamed_answer_too() {
    let (_up, proxy) = gaps_sim().await;
    for (alias, route, served) in [
        (
            "tollgate/graded",
            "openai/gpt-4o-mini=accepted, anthropic/claude-haiku-4-5=graded",
            "gpt-4o-mini",
        ),
        (
            "tollgate/graded-strictly",
            "openai/gpt-4o-mini=rejected:llm, openai/gpt-4o-mini=graded, openai/gpt-4o=served",
            "gpt-4o",
        ),
    ] {
        let mut body = chat(alias);
        body["stream"] = json!(true);
        let resp = faulted(&proxy, &body, "").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(route_of(&resp), route);
        let id = request_id(&resp);
        assert_well_formed(&resp.text().await.unwrap(), "openai", true, served);
        let (r, attempts) = records_of(&proxy, &id).await;
        assert_totals(&r, &attempts);
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_a_retry_wait_gets_no_further_call() {
    let (up, proxy) = gaps_sim().await;
    // `patient` waits out a 2 s retry-after before trying gpt-4o-mini again; the client
    // leaves after 500 ms.
    let faults = "status=429@gpt-4o-mini, retry-after=2@gpt-4o-mini";
    let r = leave_after(
        &proxy,
        Duration::from_millis(500),
        "tollgate/patient",
        faults,
    )
    .await;
    assert_eq!(
        (r.status, r.error.as_deref()),
        (499, Some("client_disconnected"))
    );
    assert!(
        r.latency_ms < 1500,
        "recorded when the client left, not after the wait: {} ms",
        r.latency_ms
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(up.sim.stats().requests, 1, "no call after the client left");
}

#[tokio::test]
async fn an_anthropic_denial_names_the_policy_and_its_reason() {
    let (up, proxy) = gaps_sim().await;
    let body = json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let resp = anthropic(&proxy, "/v1/messages", &[], &body).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no-gpt-4o-for-search") && msg.contains("search uses the mini models"),
        "{msg}"
    );
    assert_eq!(up.sim.stats().requests, 0);
}

#[tokio::test]
async fn a_max_tokens_cap_applies_in_every_api() {
    let (addr, seen) = recording_upstream().await;
    let proxy = routed_proxy_with(addr, &[]).await;
    let feature = [("x-tollgate-feature", "summaries")];
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "max_tokens": 1000, "messages": messages}),
            "max_tokens",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 1000}),
            "max_output_tokens",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
            "max_output_tokens",
        ),
    ];
    for (path, body, field) in cases {
        let resp = if path == "/v1/messages" {
            anthropic(&proxy, path, &feature, &body).await
        } else {
            openai(&proxy, path, &feature, &body).await
        };
        resp.bytes().await.unwrap();
        let got: Value =
            serde_json::from_slice(&seen.lock().unwrap().last().unwrap().body).unwrap();
        assert_eq!(got[field], 64, "{path} {body}");
    }
}

#[tokio::test]
async fn every_kind_of_attempt_reaches_clickhouse_exactly() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("routing_gaps").await;
    let up = start_sim().await;
    let policy = "rules:\n  - name: graded\n    match: {model: tollgate/graded, endpoint: /v1/chat/completions}\n    cascade:\n      steps:\n        - {provider: openai, model: gpt-4o-mini}\n        - {provider: openai, model: o3-mini}\n      judges: {finish: true, llm: {provider: anthropic, model: claude-sonnet-4-5, prompt: Grade it., accept: (?s).+}}\n";
    let config = keeping(up.addr, &ch.url, &db, "policies: policies");
    let proxy = Proxy::start_with(&config, &[("policies/graded.yaml", policy.as_bytes())]).await;
    // Accepted and graded; failed with a 503, then served; rejected, then served.
    for fault in ["", "status=503@gpt-4o-mini", "truncate@gpt-4o-mini"] {
        let resp = faulted(&proxy, &chat("tollgate/graded"), fault).await;
        assert_eq!(resp.status(), 200, "{fault}");
        resp.bytes().await.unwrap();
    }
    assert_eq!(wait_rows(&ch, &db, 3).await, (3, 3));
    wait_attempts(&ch, &db, 6).await;
    let dir = tollgate::ledger::Stream::Attempts.dir(&proxy.ledger_dir());
    let ledger: Vec<tollgate::record::AttemptRecord> = tollgate::ledger::read_all(&dir).unwrap();
    let mut want: Vec<Value> = ledger
        .iter()
        .map(|a| {
            json!([
                a.request_id,
                a.attempt,
                a.role.as_str(),
                a.model,
                a.verdict.as_str(),
                a.judge,
                a.status,
                a.error.clone().unwrap_or_default(),
                a.input_tokens,
                a.output_tokens,
                a.cost_usd.unwrap().0
            ])
        })
        .collect();
    want.sort_by_key(|v| v.to_string());
    let roles: std::collections::BTreeSet<&str> = ledger.iter().map(|a| a.role.as_str()).collect();
    assert_eq!(roles, ["escalation", "judge", "primary"].into());
    let mut got: Vec<Value> = ch
        .rows(&format!(
            "SELECT request_id, attempt, role, model, verdict, judge, status, \
             ifNull(error, '') AS error, input_tokens, output_tokens, toInt64(cost_usd * 1000000000) AS cost \
             FROM {db}.attempts"
        ))
        .await
        .iter()
        .map(|r| {
            json!([
                r["request_id"],
                r["attempt"],
                r["role"],
                r["model"],
                r["verdict"],
                r["judge"],
                r["status"],
                r["error"],
                r["input_tokens"],
                r["output_tokens"],
                r["cost"]
            ])
        })
        .collect();
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
}
