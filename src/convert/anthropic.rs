//! Anthropic Messages: `message_start` (input usage), a start/delta/stop run per content
//! block, `message_delta` (stop reason, output usage), `message_stop`.

use super::{ConvertError, Parsed, write_named};
use serde_json::{Map, Value, json};

const WHAT: &str = "Anthropic message";
/// Blocks whose `input` streams as `input_json_delta` text.
const TOOL_BLOCKS: [&str; 3] = ["tool_use", "server_tool_use", "mcp_tool_use"];

pub(super) fn to_stream(whole: &Value, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    let Some(content) = whole.get("content").and_then(Value::as_array) else {
        return Err(ConvertError::shape(WHAT, "no `content` array"));
    };
    let usage = whole.get("usage").filter(|u| u.is_object());
    let mut start = whole.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    if let Some(usage) = usage {
        // Real streams count one output token up front and the total at the end.
        let total = usage["output_tokens"].as_u64().unwrap_or(0);
        start["usage"]["output_tokens"] = json!(total.min(1));
    }
    let mut event = |name: &str, mut payload: Value| {
        payload["type"] = json!(name);
        write_named(out, name, &payload);
    };
    event("message_start", json!({"message": start}));
    for (index, block) in content.iter().enumerate() {
        let kind = block["type"].as_str().unwrap_or_default();
        let mut opening = block.clone();
        let mut deltas = Vec::new();
        match kind {
            "text" => {
                opening["text"] = json!("");
                deltas.push(json!({"type": "text_delta", "text": block["text"]}));
                if let Some(citations) = block.get("citations").and_then(Value::as_array) {
                    opening["citations"] = json!([]);
                    deltas.extend(
                        citations
                            .iter()
                            .map(|c| json!({"type": "citations_delta", "citation": c})),
                    );
                }
            }
            "thinking" => {
                opening["thinking"] = json!("");
                opening["signature"] = json!("");
                deltas.push(json!({"type": "thinking_delta", "thinking": block["thinking"]}));
                deltas.push(json!({"type": "signature_delta", "signature": block["signature"]}));
            }
            k if TOOL_BLOCKS.contains(&k) => {
                opening["input"] = json!({});
                // An empty input streams as one empty fragment, as Anthropic sends it.
                let input = match block.get("input") {
                    Some(Value::Object(o)) if o.is_empty() => String::new(),
                    Some(input) => input.to_string(),
                    None => String::new(),
                };
                deltas.push(json!({"type": "input_json_delta", "partial_json": input}));
            }
            // Redacted thinking, tool results and the like arrive whole.
            _ => {}
        }
        event(
            "content_block_start",
            json!({"index": index, "content_block": opening}),
        );
        for delta in deltas {
            event(
                "content_block_delta",
                json!({"index": index, "delta": delta}),
            );
        }
        event("content_block_stop", json!({ "index": index }));
    }
    let mut message_delta = json!({"delta": {
        "stop_reason": whole.get("stop_reason").cloned().unwrap_or(Value::Null),
        "stop_sequence": whole.get("stop_sequence").cloned().unwrap_or(Value::Null),
    }});
    if let Some(usage) = usage {
        let mut output = json!({"output_tokens": usage["output_tokens"]});
        if let Some(server) = usage.get("server_tool_use") {
            output["server_tool_use"] = server.clone();
        }
        message_delta["usage"] = output;
    }
    event("message_delta", message_delta);
    event("message_stop", json!({}));
    Ok(())
}

/// A content block being rebuilt from its deltas.
struct Block {
    block: Value,
    /// `input_json_delta` text of a tool block.
    json: Option<String>,
}

pub(super) fn to_whole(events: &[Parsed]) -> Result<Value, ConvertError> {
    let mut message: Option<Value> = None;
    let mut blocks: Vec<(u64, Block)> = Vec::new();
    let mut stopped = false;
    for (kind, v) in events.iter().filter_map(Parsed::typed) {
        let index = v["index"].as_u64().unwrap_or(0);
        let block = blocks.iter_mut().find(|(i, _)| *i == index).map(|(_, b)| b);
        match kind {
            "message_start" => message = Some(v["message"].clone()),
            "content_block_start" => {
                let block = v["content_block"].clone();
                let tool = TOOL_BLOCKS.contains(&block["type"].as_str().unwrap_or_default());
                let json = tool.then(String::new);
                blocks.push((index, Block { block, json }));
            }
            "content_block_delta" => {
                let Some(b) = block else {
                    return Err(ConvertError::shape(
                        WHAT,
                        "a delta for a block never started",
                    ));
                };
                apply_delta(b, &v["delta"]);
            }
            "message_delta" => {
                let Some(m) = message.as_mut() else {
                    return Err(ConvertError::shape(WHAT, "no message_start"));
                };
                for key in ["stop_reason", "stop_sequence"] {
                    if let Some(value) = v["delta"].get(key) {
                        m[key] = value.clone();
                    }
                }
                // Counts given at the end replace those given at the start.
                if let Some(usage) = v.get("usage").and_then(Value::as_object) {
                    if !m["usage"].is_object() {
                        m["usage"] = json!({});
                    }
                    for (key, value) in usage.iter().filter(|(_, v)| !v.is_null()) {
                        m["usage"][key] = value.clone();
                    }
                }
            }
            "message_stop" => stopped = true,
            "error" => {
                return Err(ConvertError::shape(WHAT, format!("stream reported {v}")));
            }
            _ => {}
        }
    }
    let (Some(mut message), true) = (message, stopped) else {
        return Err(ConvertError::Incomplete);
    };
    blocks.sort_by_key(|(i, _)| *i);
    let mut content = Vec::new();
    for (_, b) in blocks {
        content.push(finish_block(b)?);
    }
    message["content"] = Value::Array(content);
    Ok(message)
}

fn apply_delta(b: &mut Block, delta: &Value) {
    let append = |target: &mut Value, text: &Value| {
        let mut joined = target.as_str().unwrap_or_default().to_owned();
        joined.push_str(text.as_str().unwrap_or_default());
        *target = json!(joined);
    };
    match delta["type"].as_str().unwrap_or_default() {
        "text_delta" => append(&mut b.block["text"], &delta["text"]),
        "thinking_delta" => append(&mut b.block["thinking"], &delta["thinking"]),
        "signature_delta" => append(&mut b.block["signature"], &delta["signature"]),
        "input_json_delta" => {
            let json = b.json.get_or_insert_default();
            json.push_str(delta["partial_json"].as_str().unwrap_or_default());
        }
        "citations_delta" => {
            if !b.block["citations"].is_array() {
                b.block["citations"] = json!([]);
            }
            if let Some(list) = b.block["citations"].as_array_mut() {
                list.push(delta["citation"].clone());
            }
        }
        _ => {}
    }
}

/// A tool block's input is the JSON its deltas spelled out; text that does not parse is an
/// error rather than an input quietly emptied.
fn finish_block(b: Block) -> Result<Value, ConvertError> {
    let mut block = b.block;
    if let Some(json) = b.json.filter(|j| !j.trim().is_empty()) {
        let input: Map<String, Value> = serde_json::from_str(&json).map_err(|e| {
            ConvertError::shape(WHAT, format!("tool input is not a JSON object: {e}"))
        })?;
        block["input"] = Value::Object(input);
    }
    Ok(block)
}
