//! The OpenAI Responses API (`POST /v1/responses`), streamed and not.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{Flavor, SimError};
use super::ids;
use super::openai::{cached_tokens, model, streamed, u64_field};
use super::prompt;
use super::stream::Event;
use super::text::{self, Answer, Ask, Content, ForcedTool, Format, Stop, ToolChoice};
use super::{Call, Reply, SimProvider};
use crate::tokens::Encoding;

pub(super) async fn responses(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::OpenAi, &headers, &body, build).await
}

fn build(call: &Call, req: &Value) -> Result<Reply, SimError> {
    let model = model(req, Flavor::OpenAi)?;
    let input = req
        .get("input")
        .filter(|v| !v.is_null())
        .ok_or_else(|| SimError::missing(Flavor::OpenAi, "input"))?;
    let enc = Encoding::for_model(model);
    let input_tokens = prompt::responses_tokens(enc, req);
    let key = ids::stable_hash([
        "responses",
        model,
        req.get("instructions")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        &input.to_string(),
        &req.get("tools").map(Value::to_string).unwrap_or_default(),
    ]);
    let forced = text::forced_tool(tool_choice(req), req.get("tools"), |t| {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return None;
        }
        Some(ForcedTool {
            name: t.get("name")?.as_str()?,
            schema: t.get("parameters"),
        })
    })?;
    let cached = cached_tokens(call, key, input_tokens);
    let ask = Ask {
        forced,
        limit: u64_field(req, "max_output_tokens"),
        format: Format::of(req.pointer("/text/format")),
    };
    let answer = text::answer(enc, &ask, &call.directives, key);
    let reasoning = text::reasoning_tokens(model, answer.tokens);
    let output_tokens = answer.tokens + reasoning;
    let usage = (!call.directives.no_usage).then(|| {
        json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        })
    });

    let shell = Shell {
        id: ids::response_object_id("resp"),
        created_at: ids::now(),
        model,
        req,
    };
    // Structured outputs report a refusal as a content part of its own.
    let refusal = answer.stop == Stop::Refusal && matches!(ask.format, Format::JsonSchema(_));
    let items = Items::new(&answer, reasoning > 0, refusal);
    let status = if answer.stop.incomplete_reason().is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let mut finished = shell.object(status, items.finished(), usage);
    if let Some(reason) = answer.stop.incomplete_reason() {
        finished["incomplete_details"] = json!({ "reason": reason });
    }
    if streamed(req) {
        Ok(Reply::Stream(stream_events(&shell, &items, finished)))
    } else {
        Ok(Reply::Json(finished))
    }
}

fn tool_choice(req: &Value) -> Option<ToolChoice<'_>> {
    match req.get("tool_choice")? {
        Value::String(s) if s == "required" => Some(ToolChoice::Any),
        choice if choice.get("type").and_then(Value::as_str) == Some("function") => {
            Some(ToolChoice::Named(choice.get("name")?.as_str()?))
        }
        _ => None,
    }
}

/// The parts of the response object that do not change while it is generated.
struct Shell<'a> {
    id: String,
    created_at: u64,
    model: &'a str,
    req: &'a Value,
}

impl Shell<'_> {
    /// The response object; request parameters are echoed back as OpenAI does.
    fn object(&self, status: &str, output: Vec<Value>, usage: Option<Value>) -> Value {
        let echo = |field: &str, default: Value| self.req.get(field).cloned().unwrap_or(default);
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
            "previous_response_id": echo("previous_response_id", Value::Null),
            "reasoning": {
                "effort": self.req.pointer("/reasoning/effort").cloned().unwrap_or(Value::Null),
                "summary": null,
            },
            "service_tier": "default",
            "store": echo("store", json!(true)),
            "temperature": echo("temperature", json!(1.0)),
            "text": {
                "format": self.req.pointer("/text/format").cloned()
                    .unwrap_or_else(|| json!({"type": "text"})),
                "verbosity": "medium",
            },
            "tool_choice": echo("tool_choice", json!("auto")),
            "tools": echo("tools", json!([])),
            "top_logprobs": 0,
            "top_p": echo("top_p", json!(1.0)),
            "truncation": echo("truncation", json!("disabled")),
            "user": null,
            "metadata": echo("metadata", json!({})),
        });
        // In progress the usage is null; when the `no-usage` fault asks, it is left out.
        match usage {
            Some(usage) => object["usage"] = usage,
            None if status == "in_progress" => object["usage"] = Value::Null,
            None => {}
        }
        object
    }
}

/// The output items of one reply: an optional reasoning item, then a message or a call.
struct Items<'a> {
    answer: &'a Answer,
    /// The text goes in a `refusal` content part rather than `output_text`.
    refusal: bool,
    reasoning_id: Option<String>,
    item_id: String,
    call_id: String,
}

impl<'a> Items<'a> {
    fn new(answer: &'a Answer, reasoning: bool, refusal: bool) -> Self {
        let prefix = match answer.content {
            Content::Text(_) => "msg",
            Content::Tool(_) => "fc",
        };
        Items {
            answer,
            refusal,
            reasoning_id: reasoning.then(|| ids::response_object_id("rs")),
            item_id: ids::response_object_id(prefix),
            call_id: ids::call_id(),
        }
    }

    fn reasoning_item(&self) -> Option<Value> {
        let id = self.reasoning_id.as_ref()?;
        Some(json!({"id": id, "type": "reasoning", "summary": []}))
    }

    /// Index of the message or call in `output`.
    fn main_index(&self) -> usize {
        usize::from(self.reasoning_id.is_some())
    }

    /// The message or call item as it looks at `status`, with `text` / `arguments` so far.
    fn main_item(&self, status: &str, so_far: &str) -> Value {
        match &self.answer.content {
            Content::Text(_) => {
                let content = if status == "in_progress" {
                    json!([])
                } else {
                    json!([self.part(so_far)])
                };
                json!({
                    "id": self.item_id,
                    "type": "message",
                    "status": status,
                    "content": content,
                    "role": "assistant",
                })
            }
            Content::Tool(tool) => json!({
                "id": self.item_id,
                "type": "function_call",
                "status": status,
                "arguments": so_far,
                "call_id": self.call_id,
                "name": tool.name,
            }),
        }
    }

    /// The content part holding `text`.
    fn part(&self, text: &str) -> Value {
        if self.refusal {
            json!({"type": "refusal", "refusal": text})
        } else {
            output_text(text)
        }
    }

    fn finished(&self) -> Vec<Value> {
        let (status, full) = match &self.answer.content {
            Content::Text(pieces) if self.answer.stop.incomplete_reason().is_some() => {
                ("incomplete", pieces.concat())
            }
            Content::Text(pieces) => ("completed", pieces.concat()),
            Content::Tool(tool) if self.answer.stop.incomplete_reason().is_some() => {
                ("incomplete", tool.arguments.clone())
            }
            Content::Tool(tool) => ("completed", tool.arguments.clone()),
        };
        self.reasoning_item()
            .into_iter()
            .chain([self.main_item(status, &full)])
            .collect()
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

/// Numbers events as they are added, as every Responses stream event carries `sequence_number`.
struct Sequence(Vec<Event>);

impl Sequence {
    fn push(&mut self, name: &str, mut payload: Value, content: bool) {
        payload["type"] = json!(name);
        payload["sequence_number"] = json!(self.0.len());
        let event = Event::named(name, &payload);
        self.0.push(if content { event.content() } else { event });
    }
}

fn stream_events(shell: &Shell<'_>, items: &Items<'_>, finished: Value) -> Vec<Event> {
    let mut seq = Sequence(Vec::new());
    let started = shell.object("in_progress", Vec::new(), None);
    seq.push("response.created", json!({"response": started}), false);
    seq.push("response.in_progress", json!({"response": started}), false);

    if let Some(item) = items.reasoning_item() {
        let done = json!({"output_index": 0, "item": item});
        seq.push("response.output_item.added", done.clone(), false);
        seq.push("response.output_item.done", done, false);
    }
    let index = items.main_index();
    let id = &items.item_id;
    seq.push(
        "response.output_item.added",
        json!({"output_index": index, "item": items.main_item("in_progress", "")}),
        false,
    );
    match &items.answer.content {
        Content::Text(pieces) => {
            let part = |text: &str| {
                json!({
                    "item_id": id,
                    "output_index": index,
                    "content_index": 0,
                    "part": items.part(text),
                })
            };
            seq.push("response.content_part.added", part(""), false);
            let (kind, field) = if items.refusal {
                ("refusal", "refusal")
            } else {
                ("output_text", "text")
            };
            for piece in pieces {
                let mut delta = json!({
                    "item_id": id, "output_index": index, "content_index": 0, "delta": piece,
                });
                if !items.refusal {
                    delta["logprobs"] = json!([]);
                }
                seq.push(&format!("response.{kind}.delta"), delta, true);
            }
            let text = pieces.concat();
            let mut done = json!({
                "item_id": id, "output_index": index, "content_index": 0, field: text,
            });
            if !items.refusal {
                done["logprobs"] = json!([]);
            }
            seq.push(&format!("response.{kind}.done"), done, false);
            seq.push("response.content_part.done", part(&text), false);
        }
        Content::Tool(tool) => {
            for fragment in tool.fragments() {
                let delta = json!({"item_id": id, "output_index": index, "delta": fragment});
                seq.push("response.function_call_arguments.delta", delta, true);
            }
            let done = json!({
                "item_id": id, "output_index": index,
                "name": tool.name, "arguments": tool.arguments,
            });
            seq.push("response.function_call_arguments.done", done, false);
        }
    }
    let final_item = finished
        .get("output")
        .and_then(|o| o.get(index))
        .cloned()
        .unwrap_or(Value::Null);
    seq.push(
        "response.output_item.done",
        json!({"output_index": index, "item": final_item}),
        false,
    );
    let last = if items.answer.stop.incomplete_reason().is_some() {
        "response.incomplete"
    } else {
        "response.completed"
    };
    seq.push(last, json!({ "response": finished }), false);
    seq.0
}
