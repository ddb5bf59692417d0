//! The judged behaviours over real HTTP: model-scoped faults, truncation, refusals, JSON
//! answers and tool arguments against their schemas, logprobs, retry-after and hangs.

use std::time::Duration;

use serde_json::{Value, json};

use super::schema;
use super::tests::{
    anthropic_request, chat_request, data_lines, post, post_events, post_json, start,
};
use super::text::REFUSAL;
use crate::tokens::Encoding;

const FAULT: &str = "x-sim-fault";

/// Checks `value` against `schema` for the keywords the generator claims to cover; written
/// from the JSON Schema spec, separately from the generator.
fn check(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    let fail = |why: &str| Err(format!("{at}: {why} ({value})"));
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = root.pointer(r.trim_start_matches('#')).ok_or("bad $ref")?;
        check(root, target, value, at)?;
    }
    if s.get("const").is_some_and(|c| c != value) {
        return fail("const");
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return fail("enum");
    }
    for all in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(root, all, value, at)?;
    }
    let passing = |key: &str| {
        s.get(key).and_then(Value::as_array).map(|branches| {
            branches
                .iter()
                .filter(|b| check(root, b, value, at).is_ok())
                .count()
        })
    };
    if passing("anyOf") == Some(0) {
        return fail("anyOf");
    }
    if passing("oneOf").is_some_and(|n| n != 1) {
        return fail("oneOf");
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return fail("type");
    }
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(x) = value.as_f64() {
        let bad = num("minimum").is_some_and(|m| x < m)
            || num("maximum").is_some_and(|m| x > m)
            || num("exclusiveMinimum").is_some_and(|m| x <= m)
            || num("exclusiveMaximum").is_some_and(|m| x >= m);
        if bad {
            return fail("bounds");
        }
    }
    if let Some(text) = value.as_str() {
        let n = text.chars().count() as f64;
        if num("minLength").is_some_and(|m| n < m) || num("maxLength").is_some_and(|m| n > m) {
            return fail("length");
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as f64;
        if num("minItems").is_some_and(|m| n < m) || num("maxItems").is_some_and(|m| n > m) {
            return fail("item count");
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = s.get("properties").and_then(Value::as_object);
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !object.contains_key(name.as_str().unwrap_or_default()) {
                return fail(&format!("missing {name}"));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(p) => check(root, p, v, &format!("{at}/{name}"))?,
                None if s.get("additionalProperties") == Some(&json!(false)) => {
                    return fail(&format!("extra {name}"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn valid(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, schema, value, "")
}

/// A typical extraction schema: nested refs, enums, bounds, nullable and optional fields.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 12},
            "age": {"type": "integer", "minimum": 18, "maximum": 130},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "tier": {"enum": ["gold", "silver"]},
            "kind": {"const": "person"},
            "active": {"type": "boolean"},
            "nickname": {"type": ["string", "null"]},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
            "address": {"$ref": "#/$defs/address"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 3}]},
            "parent": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
            "meta": {"allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
            ]},
        },
        "required": ["name", "age", "score", "tier", "kind", "address", "tags", "meta"],
        "additionalProperties": false,
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"],
                "additionalProperties": false,
            },
        },
    })
}

#[test]
fn generated_instances_are_valid() {
    let schemas = [
        person_schema(),
        json!({"type": "array", "items": {"type": "integer", "exclusiveMinimum": 5}}),
        json!({"type": "string", "maxLength": 2}),
        json!({"type": "integer", "maximum": -3}),
        json!({"type": "null"}),
        json!({"properties": {"x": {}}, "required": ["x", "y"]}),
        json!({"oneOf": [{"type": "number", "minimum": 0.25, "maximum": 0.5}]}),
    ];
    for schema in &schemas {
        for seed in 0..20 {
            let v = schema::instance(schema, seed);
            valid(schema, &v).unwrap_or_else(|e| panic!("{schema}: {e}"));
        }
    }
    // The checker itself rejects what it should.
    let person = person_schema();
    let mut v = schema::instance(&person, 1);
    assert!(valid(&person, &v).is_ok());
    v["age"] = json!(17);
    assert!(valid(&person, &v).is_err());
    v["age"] = json!(20);
    v["address"]["street"] = json!("x");
    assert!(valid(&person, &v).is_err());
}

#[test]
fn violations_break_the_schema_but_not_the_json() {
    let person = person_schema();
    let mut v = schema::instance(&person, 3);
    assert!(schema::violate(&person, &mut v));
    assert!(valid(&person, &v).is_err());
    let optional = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let mut v = schema::instance(&optional, 3);
    assert!(schema::violate(&optional, &mut v));
    assert!(valid(&optional, &v).is_err());
    let anything = json!({"type": "object"});
    let mut v = schema::instance(&anything, 3);
    assert!(!schema::violate(&anything, &mut v));
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn scoped_status_hits_only_its_model() {
    let (_sim, base) = start().await;
    let fault = [(FAULT, "status=429@gpt-4o-mini, retry-after=2@gpt-4o-mini")];
    let cases = [
        ("gpt-4o-mini", false, 429, Some("2")),
        ("gpt-4o", false, 200, None),
        ("gpt-4o", true, 200, None),
    ];
    for (model, stream, status, retry_after) in cases {
        let req = chat_request(model, stream);
        let resp = post(&base, "/v1/chat/completions", &req, &fault).await;
        assert_eq!(resp.status(), status);
        assert_eq!(header(&resp, "retry-after").as_deref(), retry_after);
        if status == 429 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        }
    }

    // Unscoped retry-after goes with a scoped status; Anthropic's model names carry dates.
    let fault = [(FAULT, "status=503@claude-haiku-4-5@20251001, retry-after=7")];
    let mut req = anthropic_request(true);
    req["model"] = json!("claude-haiku-4-5@20251001");
    let resp = post(&base, "/v1/messages", &req, &fault).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("7"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    let resp = post(&base, "/v1/messages", &anthropic_request(true), &fault).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "retry-after"), None);
}

#[tokio::test]
async fn hang_holds_the_header_back_until_the_client_leaves() {
    let (sim, base) = start().await;
    let send = |model: &str, timeout: Duration| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .unwrap()
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", "Bearer sk-test")
            .header(FAULT, "hang@gpt-4o-mini")
            .json(&chat_request(model, false))
            .send()
    };
    let other = send("gpt-4o", Duration::from_secs(30)).await.unwrap();
    assert_eq!(other.status(), 200);
    let err = send("gpt-4o-mini", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.stats().requests, 2);
}

/// The text of a non-streamed chat answer and its completion tokens.
async fn chat_text(base: &str, req: &Value, fault: &str) -> (Value, String) {
    let body: Value = post_json(base, "/v1/chat/completions", req, &[(FAULT, fault)]).await;
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (body, text)
}

/// The chunks of a streamed chat answer and the concatenation of `field` in their deltas.
async fn chat_stream(base: &str, req: &Value, fault: &str, field: &str) -> (Vec<Value>, String) {
    let mut req = req.clone();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let chunks = data_lines(
        &post(base, "/v1/chat/completions", &req, &[(FAULT, fault)])
            .await
            .text()
            .await
            .unwrap(),
    );
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"][field].as_str())
        .collect();
    (chunks, text)
}

fn finish(chunks: &[Value]) -> &Value {
    &chunks[chunks.len() - 3]["choices"][0]["finish_reason"]
}

fn usage(chunks: &[Value]) -> &Value {
    &chunks[chunks.len() - 2]["usage"]
}

#[tokio::test]
async fn truncate_stops_at_the_limit_in_every_api() {
    let (_sim, base) = start().await;
    let fault = "truncate@gpt-4o-mini";
    let enc = Encoding::O200k;
    let mut req = chat_request("gpt-4o-mini", false);
    req["max_tokens"] = json!(5);
    let (body, text) = chat_text(&base, &req, fault).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(enc.count(&text), 5);
    let (chunks, text) = chat_stream(&base, &req, fault, "content").await;
    assert_eq!(finish(&chunks), "length");
    assert_eq!(usage(&chunks)["completion_tokens"], enc.count(&text));
    // Other models and unlimited requests: a natural answer, still long enough to be judged.
    let (body, _) = chat_text(&base, &chat_request("gpt-4o", false), fault).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let (body, _) = chat_text(&base, &chat_request("gpt-4o-mini", false), fault).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let req = json!({"model": "gpt-4o-mini", "input": "Hello there"});
    let body: Value = post_json(&base, "/v1/responses", &req, &[(FAULT, fault)]).await;
    assert_eq!(body["status"], "incomplete");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(body["usage"]["output_tokens"], enc.count(text));
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let events = post_events(&base, "/v1/responses", &streamed, &[(FAULT, fault)]).await;
    let (last, payload) = events.last().unwrap();
    assert_eq!(last, "response.incomplete");
    assert_eq!(payload["response"]["status"], "incomplete");

    let fault = [(FAULT, "truncate@claude-sonnet-4-5")];
    let body = post_json(&base, "/v1/messages", &anthropic_request(false), &fault).await;
    assert_eq!(body["stop_reason"], "max_tokens");
    let events = post_events(&base, "/v1/messages", &anthropic_request(true), &fault).await;
    let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn refusals_in_each_apis_shape() {
    let (_sim, base) = start().await;
    let fault = [(FAULT, "refuse@claude-sonnet-4-5")];
    let enc = Encoding::Cl100k;
    let body: Value = post_json(&base, "/v1/messages", &anthropic_request(false), &fault).await;
    assert_eq!(body["stop_reason"], "refusal");
    assert_eq!(body["content"][0]["text"], REFUSAL);
    assert_eq!(body["usage"]["output_tokens"], enc.count(REFUSAL));
    let events = post_events(&base, "/v1/messages", &anthropic_request(true), &fault).await;
    let text: String = events
        .iter()
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, REFUSAL);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "refusal");
    assert_eq!(delta["usage"]["output_tokens"], enc.count(REFUSAL));
    let mut other = anthropic_request(false);
    other["model"] = json!("claude-haiku-4-5");
    let body: Value = post_json(&base, "/v1/messages", &other, &fault).await;
    assert_eq!(body["stop_reason"], "end_turn");

    // OpenAI chat: plain text for a plain request...
    let enc = Encoding::O200k;
    let req = chat_request("gpt-4o", false);
    let (body, text) = chat_text(&base, &req, "refuse").await;
    assert_eq!(text, REFUSAL);
    assert!(body["choices"][0]["message"]["refusal"].is_null());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], enc.count(REFUSAL));
    // ...and the `refusal` field for structured outputs, streamed as `delta.refusal`.
    let mut req = chat_request("gpt-4o", false);
    req["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "p", "schema": person_schema()}});
    let (body, _) = chat_text(&base, &req, "refuse").await;
    let message = &body["choices"][0]["message"];
    assert!(message["content"].is_null());
    assert_eq!(message["refusal"], REFUSAL);
    let (chunks, refusal) = chat_stream(&base, &req, "refuse", "refusal").await;
    assert_eq!(refusal, REFUSAL);
    assert!(
        chunks[1..chunks.len() - 3]
            .iter()
            .all(|c| c["choices"][0]["delta"].get("content").is_none())
    );
    assert_eq!(usage(&chunks)["completion_tokens"], enc.count(REFUSAL));

    // The Responses API: a `refusal` content part for structured outputs, text otherwise.
    let mut req = json!({
        "model": "gpt-4o",
        "input": "Extract the person.",
        "text": {"format": {"type": "json_schema", "name": "p", "schema": person_schema()}},
    });
    let body = post_json(&base, "/v1/responses", &req, &[(FAULT, "refuse")]).await;
    let part = &body["output"][0]["content"][0];
    assert_eq!(
        (&part["type"], &part["refusal"]),
        (&json!("refusal"), &json!(REFUSAL))
    );
    assert_eq!(body["status"], "completed");
    req["stream"] = json!(true);
    let events = post_events(&base, "/v1/responses", &req, &[(FAULT, "refuse")]).await;
    let streamed: String = events
        .iter()
        .filter(|(name, _)| name == "response.refusal.delta")
        .filter_map(|(_, e)| e["delta"].as_str())
        .collect();
    assert_eq!(streamed, REFUSAL);
    assert!(
        events
            .iter()
            .all(|(name, _)| !name.starts_with("response.output_text"))
    );
    req["text"] = json!({"format": {"type": "text"}});
    req["stream"] = json!(false);
    let body = post_json(&base, "/v1/responses", &req, &[(FAULT, "refuse")]).await;
    assert_eq!(body["output"][0]["content"][0]["text"], REFUSAL);
}

#[tokio::test]
async fn json_answers_follow_the_requested_format() {
    let (_sim, base) = start().await;
    let enc = Encoding::O200k;
    let schema = person_schema();
    let mut req = chat_request("gpt-4o-mini", false);
    req["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": schema}});
    let (body, text) = chat_text(&base, &req, "invalid-json@gpt-4o").await;
    let value: Value = serde_json::from_str(&text).unwrap();
    valid(&schema, &value).unwrap();
    assert_eq!(body["usage"]["completion_tokens"], enc.count(&text));
    let (chunks, streamed) = chat_stream(&base, &req, "", "content").await;
    valid(&schema, &serde_json::from_str(&streamed).unwrap()).unwrap();
    assert_eq!(usage(&chunks)["completion_tokens"], enc.count(&streamed));
    assert_eq!(finish(&chunks), "stop");

    // The scoped fault hits the named model, streamed and not.
    req["model"] = json!("gpt-4o");
    let (body, text) = chat_text(&base, &req, "invalid-json@gpt-4o").await;
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], enc.count(&text));
    let (_, streamed) = chat_stream(&base, &req, "invalid-json@gpt-4o", "content").await;
    assert!(serde_json::from_str::<Value>(&streamed).is_err());

    req["response_format"] = json!({"type": "json_object"});
    let (_, text) = chat_text(&base, &req, "").await;
    assert!(serde_json::from_str::<Value>(&text).unwrap().is_object());
    let (_, text) = chat_text(&base, &req, "invalid-json").await;
    assert!(serde_json::from_str::<Value>(&text).is_err());
    // A truncated JSON answer is cut off, and says so.
    let (body, text) = chat_text(&base, &req, "truncate").await;
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let req = json!({
        "model": "gpt-4o-mini",
        "input": "Extract the person.",
        "text": {"format": {"type": "json_schema", "name": "p", "schema": schema}},
    });
    let body: Value = post_json(&base, "/v1/responses", &req, &[]).await;
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    valid(&schema, &serde_json::from_str(text).unwrap()).unwrap();
    assert_eq!(body["text"]["format"]["type"], "json_schema");
    assert_eq!(body["usage"]["output_tokens"], enc.count(text));
}

/// The arguments of a forced OpenAI tool call, non-streamed and streamed.
async fn openai_tool_args(base: &str, fault: &str) -> Vec<String> {
    let mut req = chat_request("gpt-4o-mini", false);
    req["tools"] = json!([{"type": "function", "function": {
        "name": "save_person", "parameters": person_schema(),
    }}]);
    req["tool_choice"] = json!("required");
    let (body, _) = chat_text(base, &req, fault).await;
    let args = body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap()
        .to_owned();
    let (chunks, _) = chat_stream(base, &req, fault, "content").await;
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    vec![args, streamed]
}

#[tokio::test]
async fn tool_arguments_match_the_schema_unless_told_otherwise() {
    let (_sim, base) = start().await;
    let schema = person_schema();
    for args in openai_tool_args(&base, "bad-tool-args@gpt-4o").await {
        valid(&schema, &serde_json::from_str(&args).unwrap()).unwrap();
    }
    for args in openai_tool_args(&base, "bad-tool-args@gpt-4o-mini").await {
        let parsed: Value = serde_json::from_str(&args).unwrap();
        assert!(valid(&schema, &parsed).is_err(), "{args}");
    }
    for args in openai_tool_args(&base, "bad-tool-args=syntax").await {
        assert!(serde_json::from_str::<Value>(&args).is_err(), "{args}");
    }

    let mut req = anthropic_request(false);
    req["tools"] = json!([{"name": "save_person", "input_schema": schema}]);
    req["tool_choice"] = json!({"type": "any"});
    let input = |body: Value| body["content"][0]["input"].clone();
    let body: Value = post_json(&base, "/v1/messages", &req, &[]).await;
    valid(&schema, &input(body)).unwrap();
    let fault = [(FAULT, "bad-tool-args@claude-sonnet-4-5")];
    let body: Value = post_json(&base, "/v1/messages", &req, &fault).await;
    assert_eq!(body["stop_reason"], "tool_use");
    assert!(valid(&schema, &input(body)).is_err());
    req["stream"] = json!(true);
    let fault = [(FAULT, "bad-tool-args=syntax@claude-sonnet-4-5")];
    let events = post_events(&base, "/v1/messages", &req, &fault).await;
    let partial: String = events
        .iter()
        .filter_map(|(_, e)| e["delta"]["partial_json"].as_str())
        .collect();
    assert!(serde_json::from_str::<Value>(&partial).is_err());
}

/// The mean of `logprobs.content[*].logprob`, and the tokens they cover.
fn logprob_mean(entries: &[&Value]) -> (f64, String) {
    let sum: f64 = entries.iter().map(|e| e["logprob"].as_f64().unwrap()).sum();
    let tokens = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    (sum / entries.len() as f64, tokens)
}

#[tokio::test]
async fn logprobs_have_the_asked_mean_only_when_asked() {
    let (_sim, base) = start().await;
    let fault = "logprob=-3.5@gpt-4o-mini";
    let mut req = chat_request("gpt-4o-mini", false);
    let (body, _) = chat_text(&base, &req, fault).await;
    assert!(body["choices"][0]["logprobs"].is_null());

    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    for (model, mean) in [("gpt-4o-mini", -3.5), ("gpt-4o", -0.1)] {
        req["model"] = json!(model);
        let (body, text) = chat_text(&base, &req, fault).await;
        let content = body["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap();
        let entries: Vec<&Value> = content.iter().collect();
        let (avg, tokens) = logprob_mean(&entries);
        assert!((avg - mean).abs() < 0.05, "{model}: {avg}");
        assert_eq!(tokens, text);
        assert_eq!(content.len() as u64, Encoding::O200k.count(&text));
        for e in content {
            assert_eq!(e["bytes"], json!(e["token"].as_str().unwrap().as_bytes()));
            assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
        }

        let (chunks, text) = chat_stream(&base, &req, fault, "content").await;
        let entries: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
            .flatten()
            .collect();
        let (avg, tokens) = logprob_mean(&entries);
        assert!((avg - mean).abs() < 0.05, "{model} streamed: {avg}");
        assert_eq!(tokens, text);
    }
}
