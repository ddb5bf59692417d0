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
