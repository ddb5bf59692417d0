//! Anthropic Messages calls through the proxy.

use crate::common::*;
use serde_json::{Value, json};
use tollgate::usage::UsageSource;

/// claude-sonnet-4-5 at the test prices: $3/M input, $0.30/M cache read, $3.75/M cache
/// write, $15/M output.
fn sonnet_cost(input: u64, read: u64, write: u64, output: u64) -> String {
    let n = (input - read - write) as i64 * nanos_per_token(3.0)
        + read as i64 * nanos_per_token(0.3)
        + write as i64 * nanos_per_token(3.75)
        + output as i64 * nanos_per_token(15.0);
    cost_str(n)
}

fn messages(system_text: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "stream": stream,
        "system": [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "What does the handbook say about leave?"}]
    })
}

#[tokio::test]
async fn prompt_cache_writes_then_reads_are_metered_and_priced_once() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let handbook = "Employees accrue leave monthly. ".repeat(400);
    let mut usages = Vec::new();
    for _ in 0..2 {
        let resp = anthropic(
            &proxy,
            "/v1/messages",
            &[("x-sim-output-tokens", "15")],
            &messages(&handbook, false),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "message");
        usages.push(body["usage"].clone());
    }
    assert!(usages[0]["cache_creation_input_tokens"].as_u64().unwrap() > 0);
    assert!(usages[1]["cache_read_input_tokens"].as_u64().unwrap() > 0);

    let records = proxy.records(2).await;
    for (r, u) in records.iter().zip(&usages) {
        let uncached = u["input_tokens"].as_u64().unwrap();
        let read = u["cache_read_input_tokens"].as_u64().unwrap();
        let write = u["cache_creation_input_tokens"].as_u64().unwrap();
        // Tollgate's input counts every prompt token once.
        assert_eq!(r.input_tokens, uncached + read + write);
        assert_eq!(r.cached_input_tokens, read);
        assert_eq!(r.cache_write_tokens, write);
        assert_eq!(r.output_tokens, 15);
        assert_eq!(r.provider, "anthropic");
        assert_eq!(
            r.cost_usd.unwrap().to_string(),
            sonnet_cost(r.input_tokens, read, write, 15)
        );
    }
}

#[tokio::test]
async fn streamed_messages_take_usage_from_start_and_final_delta() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let text = anthropic(
        &proxy,
        "/v1/messages",
        &[("x-sim-output-tokens", "11")],
        &messages("Short system prompt.", true),
    )
    .await
    .text()
    .await
    .unwrap();
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "message_start");
    assert_eq!(events.last().unwrap()["type"], "message_stop");
    let start = &events[0]["message"]["usage"];
    let r = proxy.only_record().await;
    let input = start["input_tokens"].as_u64().unwrap()
        + start["cache_read_input_tokens"].as_u64().unwrap_or(0)
        + start["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    assert!(r.stream);
    assert_eq!(r.input_tokens, input);
    assert_eq!(r.output_tokens, 11);
    assert_eq!(r.usage_source, UsageSource::Reported);
}

#[tokio::test]
async fn two_mib_message_is_forwarded_whole() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let big = "contract clause ".repeat(2 * 1024 * 1024 / 16 + 1);
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
        "messages": [{"role": "user", "content": big}]});
    let resp = anthropic(&proxy, "/v1/messages", &[], &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let input = v["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input >= tollgate::tokens::Encoding::Cl100k.count(&big));
    assert_eq!(proxy.only_record().await.input_tokens, input);
}

#[tokio::test]
async fn upstream_failure_before_usage_costs_nothing() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let resp = anthropic(
        &proxy,
        "/v1/messages",
        &[("x-sim-fault", "status=529")],
        &messages("x", false),
    )
    .await;
    assert_eq!(resp.status(), 529);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["type"], "error",
        "the provider's error reaches the client as it was sent"
    );
    let r = proxy.only_record().await;
    assert_eq!(r.status, 529);
    assert_eq!((r.input_tokens, r.output_tokens), (0, 0));
    assert_eq!(r.cost_usd.unwrap().0, 0);
}

#[tokio::test]
async fn count_tokens_passes_through_unmetered() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let resp = anthropic(
        &proxy,
        "/v1/messages/count_tokens",
        &[],
        &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    let r = proxy.only_record().await;
    assert_eq!((r.input_tokens, r.output_tokens), (0, 0));
    assert_eq!(r.usage_source, UsageSource::None);
}
