//! Anthropic Messages API: `POST /v1/messages` (streamed and not) and token counting.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::error::{Flavor, SimError};
use super::ids;
use super::openai::{model, streamed, u64_field};
use super::prompt::{self, AnthropicPrompt};
use super::stream::Event;
use super::text::{self, Answer, Ask, Content, ForcedTool, Stop, ToolChoice};
use super::{Call, Reply, SimProvider};
use crate::tokens::Encoding;

pub(super) async fn messages(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::Anthropic, &headers, &body, build_message)
        .await
}

pub(super) async fn count_tokens(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::Anthropic, &headers, &body, build_count)
        .await
}

/// The prompt of a Messages request, after validating the required fields.
fn parse(req: &Value) -> Result<(&str, AnthropicPrompt), SimError> {
    let model = model(req, Flavor::Anthropic)?;
    if !req.get("messages").is_some_and(Value::is_array) {
        return Err(SimError::missing(Flavor::Anthropic, "messages"));
    }
    let prompt = prompt::anthropic_prompt(Encoding::for_model(model), model, req);
    Ok((model, prompt))
}

/// Counting ignores caching, as the real endpoint does: the total is the whole prompt.
fn build_count(_call: &Call, req: &Value) -> Result<Reply, SimError> {
    let (_, prompt) = parse(req)?;
    Ok(Reply::Json(json!({ "input_tokens": prompt.total })))
}

/// Anthropic's cache accounting: `input_tokens` excludes what was written to or read from it.
#[derive(Debug, Default)]
struct InputUsage {
    uncached: u64,
    cache_creation: u64,
    cache_read: u64,
    long_ttl: bool,
}

impl InputUsage {
    fn of(call: &Call, prompt: &AnthropicPrompt) -> Self {
        let Some(prefix) = &prompt.cacheable else {
            return InputUsage {
                uncached: prompt.total,
                ..InputUsage::default()
            };
        };
        let uncached = prompt.total.saturating_sub(prefix.tokens);
        if call.sim.seen_before(prefix.key) {
            InputUsage {
                uncached,
                cache_read: prefix.tokens,
                ..InputUsage::default()
            }
        } else {
            InputUsage {
                uncached,
                cache_creation: prefix.tokens,
                long_ttl: prefix.long_ttl,
                ..InputUsage::default()
            }
        }
    }

    fn json(&self, output_tokens: u64) -> Value {
        let (short, long) = if self.long_ttl {
            (0, self.cache_creation)
        } else {
            (self.cache_creation, 0)
        };
        json!({
            "input_tokens": self.uncached,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": short,
                "ephemeral_1h_input_tokens": long,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        })
    }
}

fn build_message(call: &Call, req: &Value) -> Result<Reply, SimError> {
    let (model, prompt) = parse(req)?;
    let tools = req.get("tools");
    let forced = text::forced_tool(tool_choice(req), tools, |t| {
        // Server tools (web search, code execution…) have a versioned type; skip them.
        let custom = t
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(|ty| ty == "custom");
        custom.then_some(ForcedTool {
            name: t.get("name")?.as_str()?,
            schema: t.get("input_schema"),
        })
    })?;
    // Only a request that is going to be answered warms the cache.
    let input = InputUsage::of(call, &prompt);
    let seed = ids::stable_hash([
        "messages",
        model,
        &req.get("system").map(Value::to_string).unwrap_or_default(),
        &req.get("messages")
            .map(Value::to_string)
            .unwrap_or_default(),
        &tools.map(Value::to_string).unwrap_or_default(),
    ]);
    let enc = Encoding::for_model(model);
    let ask = Ask {
        forced,
        limit: u64_field(req, "max_tokens"),
        ..Ask::default()
    };
    let answer = text::answer(enc, &ask, &call.directives, seed);
    let with_usage = !call.directives.no_usage;

    let mut message = json!({
        "id": ids::anthropic_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
    });
    let tool_id = ids::anthropic_id("toolu");
    if !streamed(req) {
        message["content"] = json!([content_block(&answer, &tool_id)]);
        message["stop_reason"] = json!(stop_reason(&answer));
        if with_usage {
            message["usage"] = input.json(answer.tokens);
        }
        return Ok(Reply::Json(message));
    }

    // Real streams report one output token up front and the cumulative count at the end.
    if with_usage {
        message["usage"] = input.json(1);
    }
    let mut events = vec![Event::named(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    )];
    let block_start = match &answer.content {
        Content::Text(_) => json!({"type": "text", "text": ""}),
        Content::Tool(tool) => {
            json!({"type": "tool_use", "id": tool_id, "name": tool.name, "input": {}})
        }
    };
    events.push(Event::named(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block_start}),
    ));
    events.push(Event::named("ping", &json!({"type": "ping"})));
    let delta = |delta: Value| {
        Event::named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        )
        .content()
    };
    match &answer.content {
        Content::Text(pieces) => {
            events.extend(
                pieces
                    .iter()
                    .map(|p| delta(json!({"type": "text_delta", "text": p}))),
            );
        }
        Content::Tool(tool) => {
            // The first input_json_delta is empty, as the real API sends it.
            let fragments = std::iter::once("").chain(tool.fragments());
            events.extend(
                fragments.map(|f| delta(json!({"type": "input_json_delta", "partial_json": f}))),
            );
        }
    }
    events.push(Event::named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut message_delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(&answer), "stop_sequence": null},
    });
    if with_usage {
        message_delta["usage"] = json!({ "output_tokens": answer.tokens });
    }
    events.push(Event::named("message_delta", &message_delta));
    events.push(Event::named(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    Ok(Reply::Stream(events))
}

fn content_block(answer: &Answer, tool_id: &str) -> Value {
    match &answer.content {
        Content::Text(pieces) => json!({"type": "text", "text": pieces.concat()}),
        Content::Tool(tool) => {
            let input: Value = serde_json::from_str(&tool.arguments).unwrap_or_else(|_| json!({}));
            json!({"type": "tool_use", "id": tool_id, "name": tool.name, "input": input})
        }
    }
}

fn stop_reason(answer: &Answer) -> &'static str {
    match (answer.stop, &answer.content) {
        (Stop::Length, _) => "max_tokens",
        // Anthropic has no content-filter reason: its safety stops are refusals.
        (Stop::Refusal | Stop::ContentFilter, _) => "refusal",
        (Stop::Done, Content::Tool(_)) => "tool_use",
        (Stop::Done, Content::Text(_)) => "end_turn",
    }
}

fn tool_choice(req: &Value) -> Option<ToolChoice<'_>> {
    let choice = req.get("tool_choice")?;
    match choice.get("type")?.as_str()? {
        "any" => Some(ToolChoice::Any),
        "tool" => Some(ToolChoice::Named(choice.get("name")?.as_str()?)),
        _ => None,
    }
}

pub(crate) fn model_list() -> Value {
    const MODELS: [(&str, &str, &str); 4] = [
        (
            "claude-opus-4-5-20251101",
            "Claude Opus 4.5",
            "2025-11-01T00:00:00Z",
        ),
        (
            "claude-sonnet-4-5-20250929",
            "Claude Sonnet 4.5",
            "2025-09-29T00:00:00Z",
        ),
        (
            "claude-haiku-4-5-20251001",
            "Claude Haiku 4.5",
            "2025-10-01T00:00:00Z",
        ),
        (
            "claude-opus-4-1-20250805",
            "Claude Opus 4.1",
            "2025-08-05T00:00:00Z",
        ),
    ];
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, name, created)| {
            json!({"type": "model", "id": id, "display_name": name, "created_at": created})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": MODELS[0].0,
        "last_id": MODELS[MODELS.len() - 1].0,
    })
}
