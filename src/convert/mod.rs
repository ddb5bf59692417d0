//! Replaying an answer in the other shape: a whole response body as the event stream the
//! provider would have sent for it, and an event stream as the whole body it would have
//! answered non-streamed, in every format that streams.
//!
//! Ids, model, timestamps and usage are copied from the source, never recomputed, so token
//! counts survive any number of round trips. Text and tool-call arguments are sent in one
//! delta each: clients join deltas, so the split does not matter to them.

mod anthropic;
mod chat;
mod responses;
#[cfg(test)]
mod tests;

use crate::api::{ApiFormat, Endpoint};
use crate::usage::sse::{SseBuffer, SseEvent};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("response body is not JSON: {0}")]
    BadJson(#[from] serde_json::Error),
    #[error("response body is not a {what}: {why}")]
    Shape { what: &'static str, why: String },
    #[error("{0:?} responses are never streamed")]
    Unsupported(Endpoint),
    #[error("the event stream ended before the answer was complete")]
    Incomplete,
}

impl ConvertError {
    fn shape(what: &'static str, why: impl Into<String>) -> ConvertError {
        ConvertError::Shape {
            what,
            why: why.into(),
        }
    }
}

/// A whole (non-streamed) response body → the event stream the provider would have sent for
/// it. `include_usage` is OpenAI's `stream_options.include_usage`: only then does an OpenAI
/// stream carry usage (Anthropic and Responses streams always do).
pub fn to_stream(
    format: ApiFormat,
    endpoint: Endpoint,
    whole: &[u8],
    include_usage: bool,
) -> Result<Vec<u8>, ConvertError> {
    let body: Value = serde_json::from_slice(whole)?;
    if !body.is_object() {
        return Err(ConvertError::shape("response object", "not a JSON object"));
    }
    let mut out = Vec::new();
    match (format, endpoint) {
        (ApiFormat::Anthropic, Endpoint::Messages) => anthropic::to_stream(&body, &mut out)?,
        (ApiFormat::OpenAi, Endpoint::ChatCompletions) => {
            chat::chat_to_stream(&body, include_usage, &mut out)?
        }
        (ApiFormat::OpenAi, Endpoint::Completions) => {
            chat::completion_to_stream(&body, include_usage, &mut out)?
        }
        (ApiFormat::OpenAi, Endpoint::Responses) => responses::to_stream(&body, &mut out)?,
        (_, other) => return Err(ConvertError::Unsupported(other)),
    }
    Ok(out)
}

/// An event stream → the whole response body the provider would have answered non-streamed.
/// A stream cut off before its end is refused rather than completed by guesswork.
pub fn to_whole(
    format: ApiFormat,
    endpoint: Endpoint,
    stream: &[u8],
) -> Result<Vec<u8>, ConvertError> {
    let events = events(stream)?;
    let body = match (format, endpoint) {
        (ApiFormat::Anthropic, Endpoint::Messages) => anthropic::to_whole(&events)?,
        (ApiFormat::OpenAi, Endpoint::ChatCompletions) => chat::chat_to_whole(&events)?,
        (ApiFormat::OpenAi, Endpoint::Completions) => chat::completion_to_whole(&events)?,
        (ApiFormat::OpenAi, Endpoint::Responses) => responses::to_whole(&events)?,
        (_, other) => return Err(ConvertError::Unsupported(other)),
    };
    Ok(serde_json::to_vec(&body)?)
}

/// One parsed event: its `event:` name (when sent) and its JSON payload, or `None` for
/// OpenAI's `[DONE]`.
struct Parsed {
    name: Option<String>,
    data: Option<Value>,
}

impl Parsed {
    /// The payload with its type: the `type` member, else the `event:` name. None for
    /// `[DONE]`.
    fn typed(&self) -> Option<(&str, &Value)> {
        let v = self.data.as_ref()?;
        let kind = v["type"].as_str().or(self.name.as_deref());
        Some((kind.unwrap_or_default(), v))
    }
}

/// The events of a whole stream; comments and empty keep-alives are skipped.
fn events(stream: &[u8]) -> Result<Vec<Parsed>, ConvertError> {
    let mut raw: Vec<SseEvent> = Vec::new();
    let mut buf = SseBuffer::default();
    buf.push(stream, &mut raw);
    // A last event without its closing blank line still counts; one cut mid-way does not.
    let rest = buf.take_rest();
    if !rest.iter().all(u8::is_ascii_whitespace) {
        let mut tail = rest;
        tail.extend_from_slice(b"\n\n");
        buf.push(&tail, &mut raw);
        if raw.last().is_some_and(|ev| {
            let data = ev.data.trim();
            data != "[DONE]" && serde_json::from_str::<serde::de::IgnoredAny>(data).is_err()
        }) {
            return Err(ConvertError::Incomplete);
        }
    }
    let mut out = Vec::new();
    for ev in raw {
        let data = ev.data.trim();
        if data.is_empty() {
            continue;
        }
        let data = if data == "[DONE]" {
            None
        } else {
            Some(serde_json::from_str(data)?)
        };
        out.push(Parsed {
            name: ev.event,
            data,
        });
    }
    Ok(out)
}

/// `data: {json}` — OpenAI chat and legacy completions.
fn write_data(out: &mut Vec<u8>, payload: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// `event: name` + `data: {json}` — Anthropic and the Responses API.
fn write_named(out: &mut Vec<u8>, name: &str, payload: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    write_data(out, payload);
}

/// The items of an array member, none when it is absent or not an array.
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    fn stream_of(format: ApiFormat, endpoint: Endpoint, whole: &Value, usage: bool) -> String {
        let bytes = to_stream(format, endpoint, whole.to_string().as_bytes(), usage).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    fn payloads(stream: &str) -> Vec<(Option<String>, Value)> {
        events(stream.as_bytes())
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.data.unwrap_or_else(|| json!("[DONE]"))))
            .collect()
    }

    fn chat_body() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                 "logprobs": null, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [
                        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                 "logprobs": {"content": null, "refusal": null}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}})
    }

    #[test]
    fn openai_usage_chunk_only_when_asked_and_just_before_done() {
        let whole = chat_body();
        let with = payloads(&stream_of(
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            &whole,
            true,
        ));
        let n = with.len();
        assert_eq!(with[n - 1].1, "[DONE]");
        assert_eq!(with[n - 2].1["choices"], json!([]));
        assert_eq!(with[n - 2].1["usage"], whole["usage"]);
        assert!(
            with[..n - 2]
                .iter()
                .all(|(_, c)| c["usage"].is_null() && c.get("usage").is_some())
        );
        assert!(with.iter().all(|(name, _)| name.is_none()));

        let without = payloads(&stream_of(
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            &whole,
            false,
        ));
        assert!(without.iter().all(|(_, c)| c.get("usage").is_none()));
        assert_eq!(without.len(), n - 1);
        for (_, c) in &without[..n - 2] {
            assert_eq!(
                (&c["id"], &c["created"], &c["model"], &c["object"]),
                (
                    &json!("chatcmpl-1"),
                    &json!(7),
                    &json!("gpt-4o"),
                    &json!("chat.completion.chunk")
                )
            );
        }
    }

    #[test]
    fn several_choices_and_tool_calls_survive_a_round_trip() {
        let whole = chat_body();
        let stream = stream_of(ApiFormat::OpenAi, Endpoint::ChatCompletions, &whole, true);
        let back = to_whole(
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            stream.as_bytes(),
        )
        .unwrap();
        let mut expected = whole;
        for choice in expected["choices"].as_array_mut().unwrap() {
            choice["message"]["annotations"] = json!([]);
        }
        assert_eq!(serde_json::from_slice::<Value>(&back).unwrap(), expected);
    }

    #[test]
    fn responses_events_are_numbered_in_order() {
        let whole = json!({"id": "resp_1", "object": "response", "created_at": 9, "status": "completed",
            "model": "gpt-4o", "output": [
                {"id": "rs_1", "type": "reasoning", "summary": []},
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
                 "name": "f", "arguments": "{\"x\":1}"}],
            "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}});
        let events = payloads(&stream_of(
            ApiFormat::OpenAi,
            Endpoint::Responses,
            &whole,
            false,
        ));
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (name, payload)) in events.iter().enumerate() {
            assert_eq!(payload["sequence_number"], i, "{name:?}");
            assert_eq!(payload["type"], name.as_deref().unwrap());
        }
        assert!(events[0].1["response"]["usage"].is_null());
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[14].1["response"], whole);
    }

    #[test]
    fn anthropic_names_every_event_and_splits_usage() {
        let whole = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "ok"},
                        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 25}});
        let events = payloads(&stream_of(
            ApiFormat::Anthropic,
            Endpoint::Messages,
            &whole,
            false,
        ));
        for (name, payload) in &events {
            assert_eq!(payload["type"], name.as_deref().unwrap());
        }
        let start = &events[0].1["message"];
        assert_eq!(start["usage"]["cache_read_input_tokens"], 90);
        assert_eq!(start["usage"]["output_tokens"], 1);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["usage"], json!({"output_tokens": 25}));
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        let stream = stream_of(ApiFormat::Anthropic, Endpoint::Messages, &whole, false);
        let back = to_whole(ApiFormat::Anthropic, Endpoint::Messages, stream.as_bytes()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&back).unwrap(), whole);
    }

    #[test]
    fn refuses_what_it_cannot_convert() {
        let embeddings = to_stream(ApiFormat::OpenAi, Endpoint::Embeddings, b"{}", false);
        assert!(matches!(
            embeddings,
            Err(ConvertError::Unsupported(Endpoint::Embeddings))
        ));
        let not_json = to_stream(
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            b"{\"id\":",
            false,
        );
        assert!(matches!(not_json, Err(ConvertError::BadJson(_))));
        let no_choices = to_stream(ApiFormat::OpenAi, Endpoint::ChatCompletions, b"{}", false);
        assert!(matches!(no_choices, Err(ConvertError::Shape { .. })));
        let in_progress = to_stream(
            ApiFormat::OpenAi,
            Endpoint::Responses,
            br#"{"status":"in_progress","output":[]}"#,
            false,
        );
        assert!(matches!(in_progress, Err(ConvertError::Shape { .. })));
        // A tool input cut mid-text is not quietly emptied.
        let cut = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[]}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let err = to_whole(ApiFormat::Anthropic, Endpoint::Messages, cut.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("tool input"), "{err}");
        // An error event inside a 200 stream is no answer to replay.
        let failed = "data: {\"error\":{\"message\":\"overloaded\"}}\n\ndata: [DONE]\n\n";
        assert!(
            to_whole(
                ApiFormat::OpenAi,
                Endpoint::ChatCompletions,
                failed.as_bytes()
            )
            .is_err()
        );
    }
}
