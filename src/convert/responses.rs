//! The OpenAI Responses API: named events, each with a `sequence_number`, from
//! `response.created` to a terminal event carrying the whole response object.

use super::{ConvertError, Parsed, items, write_named};
use serde_json::{Value, json};

const WHAT: &str = "Responses API response";
/// Terminal events; each carries the finished response object.
const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Numbers events as they are written, as every Responses stream event carries
/// `sequence_number`.
struct Sequence<'a> {
    out: &'a mut Vec<u8>,
    next: u64,
}

impl Sequence<'_> {
    fn push(&mut self, name: &str, mut payload: Value) {
        payload["type"] = json!(name);
        payload["sequence_number"] = json!(self.next);
        self.next += 1;
        write_named(self.out, name, &payload);
    }
}

pub(super) fn to_stream(whole: &Value, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    let status = whole
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("completed");
    let terminal = match status {
        "completed" => "response.completed",
        "incomplete" => "response.incomplete",
        "failed" => "response.failed",
        other => {
            return Err(ConvertError::shape(
                WHAT,
                format!("status `{other}` is not final"),
            ));
        }
    };
    let Some(output) = whole.get("output").and_then(Value::as_array) else {
        return Err(ConvertError::shape(WHAT, "no `output` array"));
    };
    // The response as it looked when generation started.
    let mut started = whole.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    for key in ["usage", "incomplete_details", "error"] {
        started[key] = Value::Null;
    }
    let mut seq = Sequence { out, next: 0 };
    seq.push("response.created", json!({"response": started}));
    seq.push("response.in_progress", json!({"response": started}));
    for (index, item) in output.iter().enumerate() {
        item_events(&mut seq, index, item);
    }
    seq.push(terminal, json!({"response": whole}));
    Ok(())
}

/// `output_item.added`, the item's content as deltas, then `output_item.done` with the item
/// as it is in the finished response.
fn item_events(seq: &mut Sequence<'_>, index: usize, item: &Value) {
    let id = item.get("id").cloned().unwrap_or(Value::Null);
    let mut opening = item.clone();
    match item["type"].as_str() {
        Some("message") => {
            opening["status"] = json!("in_progress");
            opening["content"] = json!([]);
            seq.push(
                "response.output_item.added",
                json!({"output_index": index, "item": opening}),
            );
            for (c, part) in items(item, "content").iter().enumerate() {
                let at = |mut v: Value| {
                    v["item_id"] = id.clone();
                    v["output_index"] = json!(index);
                    v["content_index"] = json!(c);
                    v
                };
                let (kind, field) = match part["type"].as_str() {
                    Some("refusal") => ("refusal", "refusal"),
                    _ => ("output_text", "text"),
                };
                let text = part.get(field).and_then(Value::as_str).unwrap_or_default();
                let mut empty = part.clone();
                empty[field] = json!("");
                if kind == "output_text" {
                    empty["annotations"] = json!([]);
                    empty["logprobs"] = json!([]);
                }
                seq.push("response.content_part.added", at(json!({"part": empty})));
                let mut delta = at(json!({"delta": text}));
                let mut done = at(json!({ field: text }));
                if kind == "output_text" {
                    let logprobs = part.get("logprobs").cloned().unwrap_or(json!([]));
                    delta["logprobs"] = logprobs.clone();
                    done["logprobs"] = logprobs;
                }
                seq.push(&format!("response.{kind}.delta"), delta);
                seq.push(&format!("response.{kind}.done"), done);
                seq.push("response.content_part.done", at(json!({"part": part})));
            }
        }
        Some("function_call") => {
            opening["status"] = json!("in_progress");
            opening["arguments"] = json!("");
            seq.push(
                "response.output_item.added",
                json!({"output_index": index, "item": opening}),
            );
            let args = item["arguments"].as_str().unwrap_or_default();
            let at = |mut v: Value| {
                v["item_id"] = id.clone();
                v["output_index"] = json!(index);
                v
            };
            seq.push(
                "response.function_call_arguments.delta",
                at(json!({"delta": args})),
            );
            seq.push(
                "response.function_call_arguments.done",
                at(json!({"name": item["name"], "arguments": args})),
            );
        }
        // Reasoning and tool items arrive whole.
        _ => seq.push(
            "response.output_item.added",
            json!({"output_index": index, "item": opening}),
        ),
    }
    seq.push(
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    );
}

pub(super) fn to_whole(events: &[Parsed]) -> Result<Value, ConvertError> {
    // Items as `output_item.done` gave them, for a terminal response that left them out.
    let mut done_items: Vec<(u64, Value)> = Vec::new();
    for (kind, v) in events.iter().filter_map(Parsed::typed) {
        match kind {
            "response.output_item.done" => {
                let index = v["output_index"]
                    .as_u64()
                    .unwrap_or(done_items.len() as u64);
                done_items.push((index, v["item"].clone()));
            }
            "error" => {
                return Err(ConvertError::shape(WHAT, format!("stream reported {v}")));
            }
            k if TERMINAL.contains(&k) => {
                let mut whole = v["response"].clone();
                if !whole.is_object() {
                    return Err(ConvertError::shape(WHAT, format!("`{k}` has no response")));
                }
                if items(&whole, "output").is_empty() && !done_items.is_empty() {
                    done_items.sort_by_key(|(i, _)| *i);
                    whole["output"] = done_items.into_iter().map(|(_, item)| item).collect();
                }
                return Ok(whole);
            }
            _ => {}
        }
    }
    Err(ConvertError::Incomplete)
}
