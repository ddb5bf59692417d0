//! OpenAI chat completions and legacy completions: `data:` chunks, an optional usage-only
//! chunk with empty `choices`, then `data: [DONE]`.

use super::{ConvertError, Parsed, items, write_data};
use serde_json::{Map, Value, json};

const CHAT: &str = "chat completion";
const COMPLETION: &str = "text completion";

/// The chunk envelope: every top-level member but `choices` and `usage`, with the chunk's
/// `object` name.
fn envelope(whole: &Value, object: &str) -> Map<String, Value> {
    let mut env = whole.as_object().cloned().unwrap_or_default();
    env.remove("choices");
    env.remove("usage");
    env.insert("object".into(), json!(object));
    env
}

/// Writes chunks the OpenAI way: with `include_usage` every chunk carries `"usage": null`
/// and a last chunk with `"choices": []` carries the usage (when the body had one).
struct Chunks<'a> {
    out: &'a mut Vec<u8>,
    envelope: Map<String, Value>,
    include_usage: bool,
}

impl Chunks<'_> {
    fn push(&mut self, choices: Value, usage: Value) {
        let mut chunk = self.envelope.clone();
        chunk.insert("choices".into(), choices);
        if self.include_usage {
            chunk.insert("usage".into(), usage);
        }
        write_data(self.out, &Value::Object(chunk));
    }

    fn choice(&mut self, choice: Value) {
        self.push(json!([choice]), Value::Null);
    }

    fn finish(mut self, usage: Option<&Value>) {
        if let Some(usage) = usage.filter(|u| u.is_object() && self.include_usage) {
            self.push(json!([]), usage.clone());
        }
        self.out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// The body's choices, and the writer of chunks named `object`.
fn start<'a>(
    whole: &Value,
    what: &'static str,
    object: &str,
    include_usage: bool,
    out: &'a mut Vec<u8>,
) -> Result<(Vec<Value>, Chunks<'a>), ConvertError> {
    let Some(Value::Array(choices)) = whole.get("choices") else {
        return Err(ConvertError::shape(what, "no `choices` array"));
    };
    let chunks = Chunks {
        out,
        envelope: envelope(whole, object),
        include_usage,
    };
    Ok((choices.clone(), chunks))
}

pub(super) fn chat_to_stream(
    whole: &Value,
    include_usage: bool,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (choices, mut chunks) = start(whole, CHAT, "chat.completion.chunk", include_usage, out)?;
    for (n, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(n));
        let delta_choice = |delta: Value, logprobs: Value, finish: Value| json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish});
        let msg = &choice["message"];
        let content = msg.get("content").and_then(Value::as_str);
        let refusal = msg.get("refusal").and_then(Value::as_str);
        // The opening delta names the role; `content` is "" when text follows, as OpenAI
        // sends it, and null for a refusal or a bare tool call.
        let mut opening = json!({
            "role": msg.get("role").cloned().unwrap_or(json!("assistant")),
            "content": if content.is_some() { json!("") } else { Value::Null },
            "refusal": if refusal.is_some() && content.is_none() { json!("") } else { Value::Null },
        });
        for key in ["annotations", "audio"] {
            // Empty annotations are not streamed.
            if let Some(v) = msg.get(key).filter(|v| !v.is_null() && v != &&json!([])) {
                opening[key] = v.clone();
            }
        }
        chunks.choice(delta_choice(opening, Value::Null, Value::Null));
        // Logprobs ride with the text they describe, or with the last chunk when there is
        // no text.
        let mut logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        for (key, text) in [("content", content), ("refusal", refusal)] {
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                let lp = std::mem::take(&mut logprobs);
                chunks.choice(delta_choice(json!({ key: text }), lp, Value::Null));
            }
        }
        for (i, call) in items(msg, "tool_calls").iter().enumerate() {
            let mut head = call.clone();
            head["index"] = json!(i);
            head["function"]["arguments"] = json!("");
            chunks.choice(delta_choice(
                json!({"tool_calls": [head]}),
                Value::Null,
                Value::Null,
            ));
            let args = call["function"]["arguments"].as_str().unwrap_or_default();
            if !args.is_empty() {
                let delta = json!({"tool_calls": [{"index": i, "function": {"arguments": args}}]});
                chunks.choice(delta_choice(delta, Value::Null, Value::Null));
            }
        }
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        chunks.choice(delta_choice(json!({}), logprobs, finish));
    }
    chunks.finish(whole.get("usage"));
    Ok(())
}

pub(super) fn completion_to_stream(
    whole: &Value,
    include_usage: bool,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (choices, mut chunks) = start(whole, COMPLETION, "text_completion", include_usage, out)?;
    for (n, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(n));
        let text = choice
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        chunks.choice(
            json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": null}),
        );
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        chunks
            .choice(json!({"text": "", "index": index, "logprobs": null, "finish_reason": finish}));
    }
    chunks.finish(whole.get("usage"));
    Ok(())
}

/// What the chunks of a stream say once joined: the first chunk's envelope, the last usage,
/// and each choice (by index) in the order first seen.
struct Joined {
    envelope: Map<String, Value>,
    usage: Option<Value>,
    choices: Vec<(Value, Vec<Value>)>,
}

/// Groups the chunk choices of a stream by their index. The stream must end in `[DONE]`.
fn join(events: &[Parsed], what: &'static str) -> Result<Joined, ConvertError> {
    let mut joined = Joined {
        envelope: Map::new(),
        usage: None,
        choices: Vec::new(),
    };
    let mut done = false;
    for ev in events {
        let Some(chunk) = &ev.data else {
            done = true;
            continue;
        };
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(ConvertError::shape(what, format!("stream reported {err}")));
        }
        if joined.envelope.is_empty() {
            joined.envelope = chunk.as_object().cloned().unwrap_or_default();
            joined.envelope.remove("choices");
            joined.envelope.remove("usage");
            // Random padding real streams carry per chunk; it says nothing.
            joined.envelope.remove("obfuscation");
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            joined.usage = Some(u.clone());
        }
        for choice in items(chunk, "choices") {
            let index = choice.get("index").cloned().unwrap_or(json!(0));
            match joined.choices.iter_mut().find(|(i, _)| *i == index) {
                Some((_, parts)) => parts.push(choice.clone()),
                None => joined.choices.push((index, vec![choice.clone()])),
            }
        }
    }
    if !done || joined.envelope.is_empty() {
        return Err(ConvertError::Incomplete);
    }
    Ok(joined)
}

impl Joined {
    fn into_whole(self, object: &str, choices: Vec<Value>) -> Value {
        let mut whole = self.envelope;
        whole.insert("object".into(), json!(object));
        whole.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            whole.insert("usage".into(), usage);
        }
        Value::Object(whole)
    }
}

/// The last non-null `finish_reason` of a choice's chunks.
fn finish_of(parts: &[Value]) -> Value {
    parts
        .iter()
        .rev()
        .find_map(|p| p.get("finish_reason").filter(|f| !f.is_null()).cloned())
        .unwrap_or(Value::Null)
}

/// Appends `more`'s text to `acc`, or starts it when `acc` is still null.
fn append(acc: &mut Value, more: Option<&str>) {
    if let Some(more) = more {
        match acc {
            Value::String(s) => s.push_str(more),
            _ => *acc = json!(more),
        }
    }
}

/// Joins the arrays under each member of per-chunk logprobs objects; null when no chunk had
/// one.
fn join_logprobs(parts: &[Value]) -> Value {
    let mut joined: Option<Map<String, Value>> = None;
    for lp in parts.iter().filter_map(|p| p.get("logprobs")?.as_object()) {
        let acc = joined.get_or_insert_with(Map::new);
        for (key, value) in lp {
            match (acc.get_mut(key), value) {
                (Some(Value::Array(a)), Value::Array(b)) => a.extend(b.iter().cloned()),
                (Some(_), Value::Null) => {}
                _ => {
                    acc.insert(key.clone(), value.clone());
                }
            }
        }
    }
    joined.map_or(Value::Null, Value::Object)
}

pub(super) fn chat_to_whole(events: &[Parsed]) -> Result<Value, ConvertError> {
    let joined = join(events, CHAT)?;
    let mut choices = Vec::new();
    for (index, parts) in &joined.choices {
        let mut role = json!("assistant");
        let (mut content, mut refusal) = (Value::Null, Value::Null);
        let mut extra = Map::new();
        let mut calls: Vec<Value> = Vec::new();
        for part in parts {
            let d = &part["delta"];
            if let Some(r) = d.get("role").filter(|r| !r.is_null()) {
                role = r.clone();
            }
            append(&mut content, d.get("content").and_then(Value::as_str));
            append(&mut refusal, d.get("refusal").and_then(Value::as_str));
            for key in ["annotations", "audio"] {
                if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                    extra.insert(key.into(), v.clone());
                }
            }
            for call in items(d, "tool_calls") {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, json!({"function": {"arguments": ""}}));
                }
                let acc = &mut calls[i];
                for key in ["id", "type"] {
                    if let Some(v) = call.get(key).filter(|v| !v.is_null()) {
                        acc[key] = v.clone();
                    }
                }
                let f = &call["function"];
                if let Some(name) = f.get("name").and_then(Value::as_str) {
                    acc["function"]["name"] = json!(name);
                }
                append(
                    &mut acc["function"]["arguments"],
                    f.get("arguments").and_then(Value::as_str),
                );
            }
        }
        let mut message = json!({"role": role, "content": content, "refusal": refusal});
        message
            .as_object_mut()
            .expect("built as an object")
            .extend(extra);
        if message.get("annotations").is_none() {
            message["annotations"] = json!([]);
        }
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": join_logprobs(parts),
            "finish_reason": finish_of(parts),
        }));
    }
    Ok(joined.into_whole("chat.completion", choices))
}

pub(super) fn completion_to_whole(events: &[Parsed]) -> Result<Value, ConvertError> {
    let joined = join(events, COMPLETION)?;
    let mut choices = Vec::new();
    for (index, parts) in &joined.choices {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        choices.push(json!({
            "text": text,
            "index": index,
            "logprobs": join_logprobs(parts),
            "finish_reason": finish_of(parts),
        }));
    }
    Ok(joined.into_whole("text_completion", choices))
}
