//! OpenAI-format calls through the proxy: what the client sees, and what the ledger holds.

use crate::common::*;
use serde_json::{Value, json};
use tollgate::usage::UsageSource;

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": prompt}
    ]})
}

/// Cost at the test prices for gpt-4o-mini: $2/M input, $1/M cached input, $8/M output.
fn mini_cost(input: u64, cached: u64, output: u64) -> String {
    let n = (input - cached) as i64 * nanos_per_token(2.0)
        + cached as i64 * nanos_per_token(1.0)
        + output as i64 * nanos_per_token(8.0);
    cost_str(n)
}

#[tokio::test]
async fn non_streaming_chat_is_passed_through_and_metered_exactly() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-output-tokens", "12"),
            ("x-tollgate-feature", "summarize"),
            ("x-tollgate-user", "u-42"),
            ("x-tollgate-tags", "tier=gold,region=eu"),
            ("x-request-id", "req-abc-123"),
        ],
        &chat("Summarize the plot of Hamlet."),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tollgate-request-id"], "req-abc-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    let usage = &body["usage"];
    let input = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["completion_tokens"], 12);

    let r = proxy.only_record().await;
    assert_eq!(r.request_id, "req-abc-123");
    assert_eq!(
        (r.team.as_str(), r.project.as_str(), r.env.as_str()),
        ("search", "ranking", "prod")
    );
    assert_eq!(r.user, "u-42");
    assert_eq!(r.feature, "summarize");
    assert_eq!(r.tags.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(r.key_name, "search-prod");
    assert_eq!(r.provider, "openai");
    assert_eq!(r.endpoint, "/v1/chat/completions");
    assert_eq!(r.requested_model, "gpt-4o-mini");
    assert!(!r.stream);
    assert_eq!(r.status, 200);
    assert_eq!((r.input_tokens, r.output_tokens), (input, 12));
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(r.cost_usd.unwrap().to_string(), mini_cost(input, 0, 12));
    assert!(r.ttfb_ms.is_some() && r.error.is_none());
}

#[tokio::test]
async fn stream_with_include_usage_shows_the_usage_chunk_and_meters_it() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let mut body = chat("Count to five.");
    body["stream"] = true.into();
    body["stream_options"] = json!({"include_usage": true});
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "9")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let input = usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 9);

    let r = proxy.only_record().await;
    assert!(r.stream);
    assert_eq!((r.input_tokens, r.output_tokens), (input, 9));
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(r.cost_usd.unwrap().to_string(), mini_cost(input, 0, 9));
}

#[tokio::test]
async fn stream_without_include_usage_is_metered_but_the_client_sees_no_usage() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let prompt = chat("Name three rivers.");

    // The same prompt unstreamed tells the test what the provider counts.
    let plain: Value = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "7")],
        &prompt,
    )
    .await
    .json()
    .await
    .unwrap();
    let input = plain["usage"]["prompt_tokens"].as_u64().unwrap();

    let mut body = prompt.clone();
    body["stream"] = true.into();
    let text = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "7")],
        &body,
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut content = String::new();
    for data in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(
            v["choices"].as_array().is_some_and(|c| !c.is_empty()),
            "client received a chunk it did not ask for: {data}"
        );
        assert!(
            v.get("usage").is_none(),
            "usage leaked to the client: {data}"
        );
        content.push_str(
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    assert!(!content.is_empty());

    let records = proxy.records(2).await;
    let r = records.iter().find(|r| r.stream).unwrap();
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!((r.input_tokens, r.output_tokens), (input, 7));
    assert_eq!(r.cost_usd.unwrap().to_string(), mini_cost(input, 0, 7));
}

#[tokio::test]
async fn client_abort_mid_stream_cancels_upstream_and_records_an_estimate() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let mut body = chat("Write a long story.");
    body["stream"] = true.into();
    let mut resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-output-tokens", "400"),
            ("x-sim-token-interval-ms", "10"),
        ],
        &body,
    )
    .await;
    let mut received = String::new();
    while sse_data(&received).len() < 5 {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);

    let r = proxy.only_record().await;
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert_eq!(r.error.as_deref(), Some("client_disconnected"));
    assert!(
        r.input_tokens > 10,
        "input estimated from the request: {}",
        r.input_tokens
    );
    // The first event only carries the role; each later one carries one token.
    assert!(
        r.output_tokens >= 4 && r.output_tokens < 400,
        "output estimated from streamed text: {}",
        r.output_tokens
    );
    assert!(r.cost_usd.unwrap().0 > 0, "a streamed call is never $0");
    // The provider saw its stream cancelled rather than run to the end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while up.sim.stats().streams_cancelled == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream stream was not cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(up.sim.stats().streams_completed, 0);
}

#[tokio::test]
async fn upstream_reset_mid_stream_is_an_error_for_the_client_and_estimated() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let mut body = chat("Tell me about the sea.");
    body["stream"] = true.into();
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-output-tokens", "50"),
            ("x-sim-fault", "reset-after=6"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let mut received = Vec::new();
    let ended_with_error = loop {
        match resp.chunk().await {
            Ok(Some(c)) => received.extend_from_slice(&c),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&received);
    assert!(
        ended_with_error,
        "the client must not see a clean end of stream: {text}"
    );
    assert!(!text.contains("[DONE]"));
    assert!(
        text.contains("event: error"),
        "an error event tells SDKs what happened: {text}"
    );

    let r = proxy.only_record().await;
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert!(
        r.error.as_deref().unwrap().starts_with("upstream_failed"),
        "{:?}",
        r.error
    );
    assert!(
        r.output_tokens >= 6 && r.output_tokens < 50,
        "{}",
        r.output_tokens
    );
    assert!(r.cost_usd.unwrap().0 > 0);
}

#[tokio::test]
async fn two_mib_prompt_is_forwarded_whole_and_counted() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let big = "lorem ipsum dolor sit amet ".repeat(2 * 1024 * 1024 / 27 + 1);
    assert!(big.len() >= 2 * 1024 * 1024);
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "3")],
        &chat(&big),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let input = body["usage"]["prompt_tokens"].as_u64().unwrap();
    // The upstream counted the whole prompt: it got every byte.
    let expected = tollgate::tokens::Encoding::O200k.count(&big);
    assert!(
        input >= expected,
        "upstream saw {input} tokens, prompt alone is {expected}"
    );
    let r = proxy.only_record().await;
    assert_eq!(r.input_tokens, input);
    assert_eq!(r.cost_usd.unwrap().to_string(), mini_cost(input, 0, 3));
}

#[tokio::test]
async fn tool_calls_stream_through_and_are_metered() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Where is order 42?"}],
        "tools": [{"type": "function", "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}
        }}],
        "tool_choice": "required"
    });
    let text = openai(&proxy, "/v1/chat/completions", &[], &body)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text);
    let mut args = String::new();
    let mut name = None;
    let mut finish = None;
    for data in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(call) = v["choices"][0]["delta"]["tool_calls"][0].as_object() {
            if let Some(n) = call["function"]["name"].as_str() {
                name = Some(n.to_string());
            }
            args.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(name.as_deref(), Some("lookup_order"));
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let parsed: Value = serde_json::from_str(&args).expect("tool arguments are complete JSON");
    assert!(parsed.get("order_id").is_some());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let r = proxy.only_record().await;
    assert_eq!(
        r.input_tokens,
        usage["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        r.output_tokens,
        usage["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(r.output_tokens > 0);
    assert_eq!(r.usage_source, UsageSource::Reported);
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_each_priced_once() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    // A long shared prefix so the provider's prompt cache applies on the second call.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let body = json!({"model": "o3-mini", "messages": [{"role": "user", "content": long}]});
    for _ in 0..2 {
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[("x-sim-output-tokens", "20")],
            &body,
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    let records = proxy.records(2).await;
    let second = &records[1];
    assert!(
        second.cached_input_tokens > 0,
        "second call reads the cache: {second:?}"
    );
    assert!(second.reasoning_tokens > 0 && second.reasoning_tokens < second.output_tokens);
    // o3-mini test prices: $1/M input, $0.5/M cached, $4/M output, $5/M reasoning.
    let expected = (second.input_tokens - second.cached_input_tokens) as i64 * nanos_per_token(1.0)
        + second.cached_input_tokens as i64 * nanos_per_token(0.5)
        + (second.output_tokens - second.reasoning_tokens) as i64 * nanos_per_token(4.0)
        + second.reasoning_tokens as i64 * nanos_per_token(5.0);
    assert_eq!(second.cost_usd.unwrap().to_string(), cost_str(expected));
}

#[tokio::test]
async fn embeddings_and_renamed_models_are_metered() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let emb: Value = openai(
        &proxy,
        "/v1/embeddings",
        &[],
        &json!({"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    let chat_resp: Value = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "4")],
        &json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        chat_resp["model"].as_str().unwrap(),
        "gpt-4o-mini",
        "upstream got the real name"
    );
    let records = proxy.records(2).await;
    let e = records
        .iter()
        .find(|r| r.endpoint == "/v1/embeddings")
        .unwrap();
    assert_eq!(
        e.input_tokens,
        emb["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(e.output_tokens, 0);
    let c = records
        .iter()
        .find(|r| r.requested_model == "cheap")
        .unwrap();
    assert_eq!(c.model, "gpt-4o-mini");
    assert_eq!(
        c.cost_usd.unwrap().to_string(),
        mini_cost(c.input_tokens, 0, 4)
    );
}

#[tokio::test]
async fn responses_api_streamed_usage_comes_from_response_completed() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let text = openai(
        &proxy,
        "/v1/responses",
        &[("x-sim-output-tokens", "6")],
        &json!({"model": "gpt-4o-mini", "input": "Say hello", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let completed = sse_data(&text)
        .into_iter()
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .find(|v| v["type"] == "response.completed")
        .expect("response.completed event");
    let r = proxy.only_record().await;
    assert_eq!(
        r.input_tokens,
        completed["response"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(r.output_tokens, 6);
    assert_eq!(r.usage_source, UsageSource::Reported);
}

#[tokio::test]
async fn stream_usage_off_leaves_the_body_alone_and_estimates() {
    let up = start_sim().await;
    let cfg = config_for(up.addr, "").replace(
        "    kind: openai_compatible\n",
        "    kind: openai_compatible\n    stream_usage: false\n",
    );
    let proxy = Proxy::start(&cfg).await;
    let mut body = chat("List five colours.");
    body["stream"] = true.into();
    let text = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "12")],
        &body,
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    let r = proxy.only_record().await;
    assert_eq!(
        r.usage_source,
        UsageSource::Estimated,
        "no usage was asked for"
    );
    // Each simulated word is one token, so the estimate from the streamed text is exact.
    assert_eq!(r.output_tokens, 12);
    assert!(r.input_tokens > 0 && r.cost_usd.unwrap().0 > 0);
}

#[tokio::test]
async fn a_rewritten_body_keeps_every_byte_but_the_edited_member() {
    let (upstream, received) = recording_upstream().await;
    let proxy = Proxy::start(&config_for(upstream, "")).await;
    // `cheap` is renamed to gpt-4o-mini upstream; nothing else may change: not the number
    // too big for a u64, the float with more digits than an f64, the escapes, the order.
    let sent = concat!(
        "{\"seed\": 12345678901234567890123, \"temperature\":0.1000000000000000055511151231257827,",
        "\n  \"model\" : \"cheap\",\"messages\":[{\"role\":\"user\",",
        "\"content\":\"caf\\u00e9 \\ud83d\\ude00 \\\"quoted\\\"\"}], \"z\":1, \"a\":2}"
    );
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = received.lock().unwrap().pop().unwrap().body;
    let got = String::from_utf8(got.to_vec()).unwrap();
    assert_eq!(got, sent.replace("\"cheap\"", "\"gpt-4o-mini\""));
}
