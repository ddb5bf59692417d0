//! Local token counting through the proxy, for calls whose provider reports no usage: what
//! the ledger records for inputs that used to break or skew the count.

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};
use tollgate::record::Record;
use tollgate::tokens::Encoding;
use tollgate::usage::UsageSource;

/// The simulated provider answers but reports no usage.
const SILENT: (&str, &str) = ("x-sim-fault", "no-usage");

async fn silent_call(proxy: &Proxy, body: &Value) -> (String, Record) {
    let resp = openai(proxy, "/v1/chat/completions", &[SILENT], body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let record = proxy.records(1).await.pop().unwrap();
    (text, record)
}

/// A data URL holding the first bytes of a PNG of the given size (signature and IHDR, which
/// is all a reader of its size looks at).
fn png_data_url(width: u32, height: u32) -> String {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&width.to_be_bytes());
    png.extend_from_slice(&height.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    png.resize(2048, 0x42);
    let data = base64::engine::general_purpose::STANDARD.encode(png);
    format!("data:image/png;base64,{data}")
}

#[tokio::test]
async fn a_prompt_with_a_million_leading_spaces_gets_a_record() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let question = "What is the capital of France?";
    let prompt = format!("{}{question}", " ".repeat(1_000_000));
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]});
    let (answer, r) = silent_call(&proxy, &body).await;
    assert!(
        answer.contains("\"content\""),
        "the client got its answer: {answer}"
    );

    assert_eq!(r.usage_source, UsageSource::Estimated);
    // 999,999 spaces are 7,812 tokens of 128 spaces and one of 63; the last space goes with
    // the question. Plus 3 per message, the role, and 3 priming the reply.
    let enc = Encoding::O200k;
    let expected = 3 + enc.count("user") + 7813 + enc.count(&format!(" {question}")) + 3;
    assert_eq!(r.input_tokens, expected);
    assert!(r.output_tokens > 0 && r.cost_usd.unwrap().0 > 0);
}

#[tokio::test]
async fn tool_definitions_are_counted_as_openai_renders_them() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    // OpenAI's cookbook example, for which the API reports 101 prompt tokens on gpt-4o-mini.
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system",
             "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string",
                             "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature to return",
                         "enum": ["celsius", "fahrenheit"]}},
                "required": ["location"]}}}]
    });
    let (_, r) = silent_call(&proxy, &body).await;
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert_eq!(r.input_tokens, 101);
}

#[tokio::test]
async fn images_are_charged_by_model_and_size() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let ask = |image: Option<&str>| {
        let mut content = vec![json!({"type": "text", "text": "What is in this picture?"})];
        if let Some(url) = image {
            content.push(json!({"type": "image_url", "image_url": {"url": url}}));
        }
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
    };
    let image = png_data_url(1024, 1024);
    for body in [ask(None), ask(Some(&image))] {
        let resp = openai(&proxy, "/v1/chat/completions", &[SILENT], &body).await;
        assert_eq!(resp.status(), 200);
    }
    let records = proxy.records(2).await;
    assert!(
        records
            .iter()
            .all(|r| r.usage_source == UsageSource::Estimated)
    );
    // gpt-4o-mini: 2,833 base tokens and 5,667 per 512 px tile; 1024×1024 is scaled to
    // 768×768, four tiles.
    let by_image = records[1].input_tokens - records[0].input_tokens;
    assert_eq!(by_image, 2833 + 4 * 5667);
}

#[tokio::test]
async fn a_non_streamed_answer_cut_off_by_the_upstream_counts_what_arrived() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Tell me a long story."}]});
    let mut resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-output-tokens", "300"),
            ("x-sim-fault", "reset-after=1"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        received.extend_from_slice(&chunk);
    }
    let received = String::from_utf8_lossy(&received);
    assert!(
        serde_json::from_str::<Value>(&received).is_err(),
        "the body was cut: {received}"
    );
    // The answer's text as far as it got: the client saw the same bytes as the proxy.
    let start = received.find("\"content\":\"").expect("content began") + 11;
    let arrived = received[start..].split('"').next().unwrap();
    assert!(arrived.len() > 100, "{arrived}");

    let r = proxy.only_record().await;
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert!(r.error.is_some(), "{r:?}");
    assert_eq!(r.output_tokens, Encoding::O200k.count(arrived));
    assert!(r.cost_usd.unwrap().0 > 0);
}
