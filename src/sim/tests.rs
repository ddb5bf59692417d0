//! End-to-end tests over real HTTP on 127.0.0.1.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{SimOptions, SimProvider};
use crate::tokens::Encoding;

pub(super) async fn start() -> (SimProvider, String) {
    let sim = SimProvider::new(SimOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.clone().serve(listener, std::future::pending()));
    (sim, base)
}

pub(super) async fn post(
    base: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    send_raw(base, path, body.to_string(), headers).await
}

/// The JSON body of a POST.
pub(super) async fn post_json(
    base: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Value {
    post(base, path, body, headers).await.json().await.unwrap()
}

/// The events of a streamed POST with named events (Anthropic, Responses).
pub(super) async fn post_events(
    base: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Vec<(String, Value)> {
    named_events(&post(base, path, body, headers).await.text().await.unwrap())
}

async fn send_raw(
    base: &str,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// The JSON payloads of an OpenAI-style stream, `[DONE]` kept as a string.
pub(super) fn data_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::from(d)))
        .collect()
}

/// `(event name, payload)` pairs of a named-event stream.
pub(super) fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines();
            let name = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_owned();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(data).unwrap()["type"],
                name.as_str()
            );
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

pub(super) fn chat_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello to the world."}]},
        ],
    })
}

fn chat_prompt_tokens(enc: Encoding) -> u64 {
    3 + enc.count("You are a helpful assistant.") + 3 + enc.count("Say hello to the world.") + 3
}

#[tokio::test]
async fn chat_usage_matches_the_tokenizer() {
    let (sim, base) = start().await;
    let resp = post(
        &base,
        "/v1/chat/completions",
        &chat_request("gpt-4o-mini", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(
        body["system_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("fp_")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], chat_prompt_tokens(Encoding::O200k));
    assert_eq!(usage["completion_tokens"], Encoding::O200k.count(content));
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let resp = post(
        &base,
        "/v1/chat/completions",
        &chat_request("gpt-3.5-turbo", false),
        &[("x-sim-output-tokens", "5")],
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens"],
        chat_prompt_tokens(Encoding::Cl100k)
    );
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(Encoding::Cl100k.count(content), 5);
    assert_eq!(sim.stats().requests, 2);
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_a_usage_chunk() {
    let (sim, base) = start().await;
    let mut req = chat_request("gpt-4o", true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = post(
        &base,
        "/v1/chat/completions",
        &req,
        &[("x-sim-output-tokens", "6")],
    )
    .await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = data_lines(&resp.text().await.unwrap());
    let (done, rest) = chunks.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let (usage_chunk, content_chunks) = rest.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        chat_prompt_tokens(Encoding::O200k)
    );
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 6);
    assert!(
        content_chunks
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert!(
        content_chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        content_chunks[0]["choices"][0]["delta"]["role"],
        "assistant"
    );
    let text: String = content_chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(Encoding::O200k.count(&text), 6);
    // One piece per token.
    assert_eq!(content_chunks.len(), 1 + 6 + 1);
    assert_eq!(
        content_chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(sim.stats().streams_completed, 1);
}

#[tokio::test]
async fn chat_stream_without_include_usage_sends_no_usage() {
    let (_sim, base) = start().await;
    let resp = post(
        &base,
        "/v1/chat/completions",
        &chat_request("gpt-4o", true),
        &[],
    )
    .await;
    let chunks = data_lines(&resp.text().await.unwrap());
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"].as_array().unwrap().len() == 1)
    );
}

pub(super) fn anthropic_request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hello there"}],
    })
}

#[tokio::test]
async fn anthropic_stream_follows_the_event_sequence() {
    let (_sim, base) = start().await;
    let resp = post(
        &base,
        "/v1/messages",
        &anthropic_request(true),
        &[("x-sim-output-tokens", "7")],
    )
    .await;
    assert!(
        resp.headers()["request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let events = named_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 7]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let enc = Encoding::Cl100k;
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_01"));
    assert_eq!(start["usage"]["output_tokens"], 1);
    let input = enc.count("You are terse.") + 3 + enc.count("Hello there") + 3;
    assert_eq!(start["usage"]["input_tokens"], input);
    let text: String = events
        .iter()
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(enc.count(&text), 7);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 7);

    let count: Value = post(
        &base,
        "/v1/messages/count_tokens",
        &anthropic_request(false),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(count, json!({"input_tokens": input}));
}

#[tokio::test]
async fn anthropic_cache_is_written_then_read() {
    let (_sim, base) = start().await;
    let system = "Follow the house style guide carefully. ".repeat(40);
    let req = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Hello there"}],
    });
    let enc = Encoding::Cl100k;
    let prefix = enc.count(&system);
    let rest = 3 + enc.count("Hello there") + 3;

    let first: Value = post(&base, "/v1/messages", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    let u = &first["usage"];
    assert_eq!(u["cache_creation_input_tokens"], prefix);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], prefix);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["input_tokens"], rest);

    let second: Value = post(&base, "/v1/messages", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    let u = &second["usage"];
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], prefix);
    assert_eq!(u["input_tokens"], rest);
    assert_eq!(
        first["content"], second["content"],
        "same prompt, same answer"
    );

    let plain: Value = post(&base, "/v1/messages", &anthropic_request(false), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(plain["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(plain["type"], "message");
    assert_eq!(plain["content"][0]["type"], "text");
}

#[tokio::test]
async fn openai_reports_cached_tokens_for_a_repeated_long_prompt() {
    let (_sim, base) = start().await;
    let long = "Summarise the following report in one line. ".repeat(150);
    let req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": long}]});
    let input = 3 + Encoding::O200k.count(&long) + 3;
    assert!(input >= 1024);

    let cached = |body: &Value| body["usage"]["prompt_tokens_details"]["cached_tokens"].clone();
    let first: Value = post(&base, "/v1/chat/completions", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cached(&first), 0);
    assert_eq!(first["usage"]["prompt_tokens"], input);
    let second: Value = post(&base, "/v1/chat/completions", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cached(&second), input / 128 * 128);
    assert_eq!(second["usage"]["prompt_tokens"], input);

    let short = chat_request("gpt-4o", false);
    post(&base, "/v1/chat/completions", &short, &[]).await;
    let again: Value = post(&base, "/v1/chat/completions", &short, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cached(&again), 0);
}

const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string"}}}"#;

#[tokio::test]
async fn openai_forced_tool_calls_have_the_right_shape() {
    let (_sim, base) = start().await;
    let schema: Value = serde_json::from_str(WEATHER_SCHEMA).unwrap();
    let mut req = chat_request("gpt-4o", false);
    req["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]);
    req["tool_choice"] = json!("required");

    let body: Value = post(&base, "/v1/chat/completions", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args = call["function"]["arguments"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(args).unwrap();
    assert!(parsed["city"].is_string() && parsed["unit"].is_string());
    let enc = Encoding::O200k;
    assert_eq!(
        body["usage"]["completion_tokens"],
        enc.count(args) + enc.count("get_weather")
    );

    req["stream"] = json!(true);
    req["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let resp = post(&base, "/v1/chat/completions", &req, &[]).await;
    let chunks = data_lines(&resp.text().await.unwrap());
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(first["id"].is_string());
    let fragments: Vec<&str> = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert!(fragments.len() > 2, "arguments arrive in several fragments");
    assert_eq!(
        serde_json::from_str::<Value>(&fragments.concat()).unwrap(),
        parsed
    );
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );

    req["tool_choice"] = json!({"type": "function", "function": {"name": "nope"}});
    let resp = post(&base, "/v1/chat/completions", &req, &[]).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn anthropic_forced_tool_use_has_the_right_shape() {
    let (_sim, base) = start().await;
    let schema: Value = serde_json::from_str(WEATHER_SCHEMA).unwrap();
    let mut req = anthropic_request(false);
    req["tools"] =
        json!([{"name": "get_weather", "description": "Weather", "input_schema": schema}]);
    req["tool_choice"] = json!({"type": "tool", "name": "get_weather"});

    let body: Value = post(&base, "/v1/messages", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["stop_reason"], "tool_use");
    let block = &body["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_01"));
    assert_eq!(block["name"], "get_weather");
    assert!(block["input"]["city"].is_string());
    let enc = Encoding::Cl100k;
    let expected = enc.count(&block["input"].to_string()) + enc.count("get_weather");
    assert_eq!(body["usage"]["output_tokens"], expected);

    req["stream"] = json!(true);
    req["tool_choice"] = json!({"type": "any"});
    let events = named_events(
        &post(&base, "/v1/messages", &req, &[])
            .await
            .text()
            .await
            .unwrap(),
    );
    let start = &events[1].1["content_block"];
    assert_eq!(start["type"], "tool_use");
    assert_eq!(start["input"], json!({}));
    let partial: String = events
        .iter()
        .filter(|(_, e)| e["delta"]["type"] == "input_json_delta")
        .map(|(_, e)| e["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).unwrap(),
        block["input"]
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], expected);
}

#[tokio::test]
async fn reset_fault_breaks_the_body() {
    let (sim, base) = start().await;
    let mut req = chat_request("gpt-4o", true);
    let resp = post(
        &base,
        "/v1/chat/completions",
        &req,
        &[("x-sim-fault", "reset-after=2")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut received = Vec::new();
    let error = loop {
        match body.next().await {
            Some(Ok(bytes)) => received.extend_from_slice(&bytes),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(error.is_some(), "the client must see a broken body");
    let received = String::from_utf8(received).unwrap();
    let contents = data_lines(&received)
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(contents, 2);
    assert!(!received.contains("[DONE]"));

    req["stream"] = json!(false);
    let resp = post(
        &base,
        "/v1/chat/completions",
        &req,
        &[("x-sim-fault", "reset-after=0")],
    )
    .await;
    assert!(resp.bytes().await.is_err());
    let stats = sim.stats();
    assert_eq!((stats.streams_completed, stats.streams_cancelled), (0, 0));
}

#[tokio::test]
async fn dropping_a_slow_stream_counts_as_cancelled() {
    let (sim, base) = start().await;
    let headers = [
        ("x-sim-token-interval-ms", "20"),
        ("x-sim-output-tokens", "200"),
    ];
    let resp = post(&base, "/v1/messages", &anthropic_request(true), &headers).await;
    let mut body = resp.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    drop(body);

    for _ in 0..100 {
        if sim.stats().streams_cancelled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sim.stats();
    assert_eq!((stats.streams_cancelled, stats.streams_completed), (1, 0));
}

#[tokio::test]
async fn errors_use_each_apis_format() {
    let (_sim, base) = start().await;
    let resp = send_raw(&base, "/v1/chat/completions", "{not json".into(), &[]).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());

    let resp = send_raw(&base, "/v1/messages", "{not json".into(), &[]).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let resp = post(&base, "/v1/chat/completions", &json!({"messages": []}), &[]).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
    let resp = post(
        &base,
        "/v1/messages",
        &json!({"model": "claude-sonnet-4-5"}),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 400);

    let resp = post(
        &base,
        "/v1/chat/completions",
        &chat_request("gpt-4o", false),
        &[("x-sim-fault", "status=503")],
    )
    .await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body.get("usage").is_none());
    let resp = post(
        &base,
        "/v1/messages",
        &anthropic_request(false),
        &[("x-sim-fault", "status=529")],
    )
    .await;
    assert_eq!(resp.status(), 529);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");

    let unauthenticated = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = unauthenticated
        .post(format!("{base}/v1/messages"))
        .json(&anthropic_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn no_usage_fault_omits_usage_everywhere() {
    let (_sim, base) = start().await;
    let fault = [("x-sim-fault", "no-usage")];
    let body: Value = post(
        &base,
        "/v1/chat/completions",
        &chat_request("gpt-4o", false),
        &fault,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(body.get("usage").is_none());

    let mut req = chat_request("gpt-4o", true);
    req["stream_options"] = json!({"include_usage": true});
    let chunks = data_lines(
        &post(&base, "/v1/chat/completions", &req, &fault)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(chunks.iter().all(|c| c["usage"].is_null()));
    assert!(chunks.iter().all(|c| c["choices"] != json!([])));

    let events = named_events(
        &post(&base, "/v1/messages", &anthropic_request(true), &fault)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(
        events
            .iter()
            .all(|(_, e)| e.get("usage").is_none() && e["message"].get("usage").is_none())
    );
    assert_eq!(events.last().unwrap().0, "message_stop");
}

#[tokio::test]
async fn responses_api_reports_reasoning_and_streams_events() {
    let (_sim, base) = start().await;
    let req = json!({"model": "o4-mini", "instructions": "Be brief.", "input": "Hello there"});
    let body: Value = post(
        &base,
        "/v1/responses",
        &req,
        &[("x-sim-output-tokens", "10")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output"][0]["type"], "reasoning");
    let message = &body["output"][1];
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["type"], "output_text");
    let enc = Encoding::O200k;
    let usage = &body["usage"];
    assert_eq!(
        usage["input_tokens"],
        3 + enc.count("Be brief.") + 3 + enc.count("Hello there") + 3
    );
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 5);
    assert_eq!(usage["output_tokens"], 15);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);

    let req =
        json!({"model": "gpt-4.1", "input": [{"role": "user", "content": "Hi"}], "stream": true});
    let text = post(
        &base,
        "/v1/responses",
        &req,
        &[("x-sim-output-tokens", "4")],
    )
    .await
    .text()
    .await
    .unwrap();
    let events = named_events(&text);
    assert_eq!(events[0].0, "response.created");
    assert!(events[0].1["response"]["usage"].is_null());
    let (last, completed) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(completed["response"]["usage"]["output_tokens"], 4);
    assert_eq!(
        completed["response"]["usage"]["input_tokens"],
        3 + enc.count("Hi") + 3
    );
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(enc.count(&deltas), 4);
    let sequence: Vec<u64> = events
        .iter()
        .map(|(_, e)| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn embeddings_support_float_and_base64() {
    let (_sim, base) = start().await;
    let req = json!({"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]});
    let floats: Value = post(&base, "/v1/embeddings", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["data"].as_array().unwrap().len(), 2);
    let enc = Encoding::Cl100k;
    let tokens = enc.count("alpha beta") + enc.count("gamma");
    assert_eq!(
        floats["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );
    let vector: Vec<f32> = serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(vector.len(), 8);

    let mut req = req;
    req["encoding_format"] = json!("base64");
    let encoded: Value = post(&base, "/v1/embeddings", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(
        encoded["data"][0]["embedding"],
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes)
    );
}

#[tokio::test]
async fn legacy_completions_and_model_lists() {
    let (_sim, base) = start().await;
    let req = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"});
    let body: Value = post(&base, "/v1/completions", &req, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        body["usage"]["prompt_tokens"],
        Encoding::Cl100k.count("Once upon a time")
    );
    // The legacy API's default max_tokens is 16.
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 16);

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let openai: Value = client
        .get(format!("{base}/v1/models"))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "model");
    let anthropic: Value = client
        .get(format!("{base}/v1/models"))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["data"][0]["type"], "model");
    assert_eq!(anthropic["has_more"], false);
}
