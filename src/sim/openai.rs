//! OpenAI chat completions, legacy completions and the model list, plus the request helpers
//! the other OpenAI endpoints share.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{Flavor, SimError};
use super::ids;
use super::logprobs::{self, Wanted};
use super::prompt;
use super::stream::Event;
use super::text::{self, Answer, Ask, Content, ForcedTool, Format, Stop, ToolChoice};
use super::{Call, Reply, SimProvider};
use crate::tokens::Encoding;

/// OpenAI caches prompts from this many tokens on, in steps of `CACHE_STEP`.
const CACHE_MIN_TOKENS: u64 = 1024;
const CACHE_STEP: u64 = 128;
/// The legacy completions API's default `max_tokens`.
const LEGACY_DEFAULT_MAX_TOKENS: u64 = 16;

pub(super) async fn chat(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::OpenAi, &headers, &body, build_chat)
        .await
}

pub(super) async fn completions(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::OpenAi, &headers, &body, build_completion)
        .await
}

fn build_chat(call: &Call, req: &Value) -> Result<Reply, SimError> {
    let model = model(req, Flavor::OpenAi)?;
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| SimError::missing(Flavor::OpenAi, "messages"))?;
    if messages.is_empty() {
        return Err(SimError::invalid_param(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        ));
    }
    let enc = Encoding::for_model(model);
    let tools = req.get("tools");
    let input = prompt::chat_tokens(enc, messages, tools);
    let key = ids::stable_hash([
        "chat",
        model,
        &Value::from(messages.clone()).to_string(),
        &tools.map(Value::to_string).unwrap_or_default(),
    ]);
    let forced = text::forced_tool(chat_tool_choice(req), tools, |t| {
        let f = t.get("function")?;
        Some(ForcedTool {
            name: f.get("name")?.as_str()?,
            schema: f.get("parameters"),
        })
    })?;
    // Only a request that is going to be answered warms the cache.
    let cached = cached_tokens(call, key, input);
    let ask = Ask {
        forced,
        limit: u64_field(req, "max_completion_tokens").or_else(|| u64_field(req, "max_tokens")),
        format: Format::of(req.get("response_format")),
    };
    let answer = text::answer(enc, &ask, &call.directives, key);
    let reasoning = text::reasoning_tokens(model, answer.tokens);
    let usage = (!call.directives.no_usage)
        .then(|| chat_usage(input, cached, answer.tokens + reasoning, reasoning));
    // Structured outputs report a refusal in its own field, not as content.
    let refusal_field = answer.stop == Stop::Refusal && matches!(ask.format, Format::JsonSchema(_));
    let text_field = if refusal_field { "refusal" } else { "content" };
    let token_logprobs = Wanted::of(req).map(|wanted| match &answer.content {
        Content::Text(pieces) => {
            let mean = call.directives.logprob.unwrap_or(logprobs::DEFAULT_MEAN);
            let values = logprobs::draw(pieces.len(), mean, key);
            logprobs::entries(pieces, &values, wanted.top)
        }
        Content::Tool(_) => Vec::new(),
    });
    // `{"content": [...], "refusal": null}`, the entries under the field the text is in.
    let logprobs_of = |entries: Option<Vec<Value>>| match entries {
        Some(entries) if !entries.is_empty() => {
            let mut lp = json!({"content": null, "refusal": null});
            lp[text_field] = Value::from(entries);
            lp
        }
        Some(_) => json!({"content": null, "refusal": null}),
        None => Value::Null,
    };

    let envelope = json!({
        "id": ids::completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": ids::now(),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": ids::fingerprint(model),
    });
    let finish = finish_reason(&answer);
    if !streamed(req) {
        let mut body = envelope;
        body["choices"] = json!([{
            "index": 0,
            "message": chat_message(&answer, text_field),
            "logprobs": logprobs_of(token_logprobs),
            "finish_reason": finish,
        }]);
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        return Ok(Reply::Json(body));
    }

    let mut chunk = envelope;
    chunk["object"] = json!("chat.completion.chunk");
    let choice = |delta: Value, logprobs: Value, finish: Option<&str>| {
        json!({
            "index": 0,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        })
    };
    let mut choices = Vec::new();
    match &answer.content {
        Content::Text(pieces) => {
            let mut opening = json!({"role": "assistant", "content": "", "refusal": null});
            if refusal_field {
                opening = json!({"role": "assistant", "content": null, "refusal": ""});
            }
            choices.push((choice(opening, Value::Null, None), false));
            for (i, piece) in pieces.iter().enumerate() {
                let mut delta = json!({});
                delta[text_field] = json!(piece);
                let lp = token_logprobs
                    .as_ref()
                    .map(|entries| logprobs_of(Some(vec![entries[i].clone()])))
                    .unwrap_or(Value::Null);
                choices.push((choice(delta, lp, None), true));
            }
        }
        Content::Tool(tool) => {
            let opening = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": ids::call_id(),
                    "type": "function",
                    "function": {"name": tool.name, "arguments": ""},
                }],
                "refusal": null,
            });
            choices.push((choice(opening, Value::Null, None), false));
            for fragment in tool.fragments() {
                let delta =
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]});
                choices.push((choice(delta, Value::Null, None), true));
            }
        }
    }
    choices.push((choice(json!({}), Value::Null, Some(finish)), false));
    Ok(Reply::Stream(chunk_stream(
        &chunk,
        choices,
        usage,
        include_usage(req),
    )))
}

/// The non-streamed message; `text_field` is `content`, or `refusal` for a structured-output
/// refusal.
fn chat_message(answer: &Answer, text_field: &str) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": null,
        "refusal": null,
        "annotations": [],
    });
    message[text_field] = json!(answer.content.text());
    if let Content::Tool(tool) = &answer.content {
        message["tool_calls"] = json!([{
            "id": ids::call_id(),
            "type": "function",
            "function": {"name": tool.name, "arguments": tool.arguments},
        }]);
    }
    message
}

/// `completion_tokens` includes the hidden reasoning tokens, `prompt_tokens` the cached ones.
fn chat_usage(input: u64, cached: u64, completion: u64, reasoning: u64) -> Value {
    json!({
        "prompt_tokens": input,
        "completion_tokens": completion,
        "total_tokens": input + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

fn chat_tool_choice(req: &Value) -> Option<ToolChoice<'_>> {
    match req.get("tool_choice")? {
        Value::String(s) if s == "required" => Some(ToolChoice::Any),
        choice if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice.pointer("/function/name").and_then(Value::as_str)?;
            Some(ToolChoice::Named(name))
        }
        _ => None,
    }
}

fn build_completion(call: &Call, req: &Value) -> Result<Reply, SimError> {
    let model = model(req, Flavor::OpenAi)?;
    let enc = Encoding::for_model(model);
    let prompt_value = req.get("prompt");
    let input = prompt::completion_prompt_tokens(enc, prompt_value);
    let key = ids::stable_hash([
        "completion",
        model,
        &prompt_value.map(Value::to_string).unwrap_or_default(),
    ]);
    let ask = Ask {
        limit: Some(u64_field(req, "max_tokens").unwrap_or(LEGACY_DEFAULT_MAX_TOKENS)),
        ..Ask::default()
    };
    let answer = text::answer(enc, &ask, &call.directives, key);
    let output = answer.tokens;
    // Without a forced tool the answer is text.
    let pieces = match &answer.content {
        Content::Text(pieces) => pieces.as_slice(),
        Content::Tool(_) => &[],
    };
    let usage = (!call.directives.no_usage).then(|| {
        json!({
            "prompt_tokens": input,
            "completion_tokens": output,
            "total_tokens": input + output,
        })
    });

    let mut envelope = json!({
        "id": ids::completion_id("cmpl"),
        "object": "text_completion",
        "created": ids::now(),
        "model": model,
        "system_fingerprint": ids::fingerprint(model),
    });
    let finish = match answer.stop {
        Stop::Length => "length",
        Stop::ContentFilter => "content_filter",
        Stop::Done | Stop::Refusal => "stop",
    };
    let choice = |text: &str, finish: Option<&str>| {
        json!({
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish,
        })
    };
    if !streamed(req) {
        envelope["choices"] = json!([choice(&pieces.concat(), Some(finish))]);
        if let Some(usage) = usage {
            envelope["usage"] = usage;
        }
        return Ok(Reply::Json(envelope));
    }
    let mut choices: Vec<(Value, bool)> = pieces.iter().map(|p| (choice(p, None), true)).collect();
    choices.push((choice("", Some(finish)), false));
    Ok(Reply::Stream(chunk_stream(
        &envelope,
        choices,
        usage,
        include_usage(req),
    )))
}

/// Frames chunks the OpenAI way: with `stream_options.include_usage` every chunk carries
/// `"usage": null` and a last chunk with `"choices": []` carries the usage; then `[DONE]`.
/// Each choice comes with whether it carries generated content.
fn chunk_stream(
    envelope: &Value,
    choices: Vec<(Value, bool)>,
    usage: Option<Value>,
    include_usage: bool,
) -> Vec<Event> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = envelope.clone();
        chunk["choices"] = choices;
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    };
    let mut events: Vec<Event> = choices
        .into_iter()
        .map(|(choice, content)| {
            let event = Event::data(&chunk(json!([choice]), None));
            if content { event.content() } else { event }
        })
        .collect();
    if let Some(usage) = usage.filter(|_| include_usage) {
        events.push(Event::data(&chunk(json!([]), Some(usage))));
    }
    events.push(Event::done());
    events
}

fn finish_reason(answer: &Answer) -> &'static str {
    match (answer.stop, &answer.content) {
        (Stop::Length, _) => "length",
        (Stop::ContentFilter, _) => "content_filter",
        (_, Content::Tool(_)) => "tool_calls",
        (Stop::Done | Stop::Refusal, Content::Text(_)) => "stop",
    }
}

/// OpenAI's automatic prompt caching: a prompt of at least 1024 tokens seen before is served
/// from cache in 128-token steps. Shared with the Responses API.
pub(crate) fn cached_tokens(call: &Call, key: u64, input: u64) -> u64 {
    if input < CACHE_MIN_TOKENS || !call.sim.seen_before(key) {
        return 0;
    }
    (input / CACHE_STEP * CACHE_STEP).min(input)
}

/// The non-empty `model` field every endpoint requires.
pub(crate) fn model(req: &Value, flavor: Flavor) -> Result<&str, SimError> {
    req.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| SimError::missing(flavor, "model"))
}

pub(crate) fn u64_field(req: &Value, field: &str) -> Option<u64> {
    req.get(field).and_then(Value::as_u64)
}

pub(crate) fn streamed(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

pub(crate) fn model_list() -> Value {
    const MODELS: [(&str, u64, &str); 10] = [
        ("gpt-4o", 1_715_367_049, "system"),
        ("gpt-4o-mini", 1_721_172_741, "system"),
        ("gpt-4.1", 1_744_316_542, "system"),
        ("gpt-4.1-mini", 1_744_318_173, "system"),
        ("gpt-5", 1_754_425_777, "system"),
        ("gpt-5-mini", 1_754_425_928, "system"),
        ("o4-mini", 1_744_225_351, "system"),
        ("gpt-3.5-turbo-instruct", 1_692_901_427, "system"),
        ("text-embedding-3-small", 1_705_948_997, "system"),
        ("text-embedding-3-large", 1_705_953_180, "system"),
    ];
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, created, owner)| {
            json!({"id": id, "object": "model", "created": created, "owned_by": owner})
        })
        .collect();
    json!({"object": "list", "data": data})
}
