//! Input token counting for every endpoint.
//!
//! The figures approximate the providers' own accounting (per-message overheads, a fixed cost
//! per image) but are exact and deterministic for a given request, which is what tests need.

use serde_json::Value;

use super::ids::StableHash;
use crate::tokens::Encoding;

/// Role and separator tokens each chat message costs, as in OpenAI's published recipe.
pub(crate) const MESSAGE_OVERHEAD: u64 = 3;
/// Tokens that prime the assistant's reply.
pub(crate) const REPLY_PRIMING: u64 = 3;
/// A flat cost per image part (OpenAI's low-detail price); the base64 is never tokenized.
pub(crate) const IMAGE_TOKENS: u64 = 85;

/// A `content` field: a plain string, or an array of typed parts (OpenAI) or blocks (Anthropic).
pub(crate) fn content_tokens(enc: Encoding, content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => enc.count(s),
        Some(Value::Array(parts)) => parts.iter().map(|p| part_tokens(enc, p)).sum(),
        _ => 0,
    }
}

fn part_tokens(enc: Encoding, part: &Value) -> u64 {
    let text = |field: &str| {
        part.get(field)
            .and_then(Value::as_str)
            .map_or(0, |t| enc.count(t))
    };
    match part.get("type").and_then(Value::as_str).unwrap_or_default() {
        "image_url" | "input_image" | "image" => IMAGE_TOKENS,
        "tool_use" => text("name") + json_tokens(enc, part.get("input")),
        "tool_result" => content_tokens(enc, part.get("content")),
        "thinking" => text("thinking"),
        _ => text("text"),
    }
}

/// Structured values (tool definitions, tool inputs) are counted as their compact JSON.
pub(crate) fn json_tokens(enc: Encoding, value: Option<&Value>) -> u64 {
    value.map_or(0, |v| enc.count(&v.to_string()))
}

/// OpenAI chat: every message's content and tool calls plus overheads, and the tool list.
pub(crate) fn chat_tokens(enc: Encoding, messages: &[Value], tools: Option<&Value>) -> u64 {
    let messages: u64 = messages
        .iter()
        .map(|m| {
            let calls = m.get("tool_calls").and_then(Value::as_array);
            let call_tokens: u64 = calls
                .into_iter()
                .flatten()
                .map(|c| function_tokens(enc, c.get("function").unwrap_or(c)))
                .sum();
            MESSAGE_OVERHEAD + content_tokens(enc, m.get("content")) + call_tokens
        })
        .sum();
    messages + REPLY_PRIMING + json_tokens(enc, tools)
}

/// A function call's `name` and `arguments` string.
fn function_tokens(enc: Encoding, call: &Value) -> u64 {
    ["name", "arguments"]
        .iter()
        .filter_map(|f| call.get(f).and_then(Value::as_str))
        .map(|s| enc.count(s))
        .sum()
}

/// Legacy completions: a prompt string, a list of them, or pre-tokenized prompts.
pub(crate) fn completion_prompt_tokens(enc: Encoding, prompt: Option<&Value>) -> u64 {
    match prompt {
        Some(Value::String(s)) => enc.count(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => enc.count(s),
                Value::Array(ids) => ids.len() as u64,
                // A flat array of token ids: each element is one token.
                _ => 1,
            })
            .sum(),
        _ => 0,
    }
}

/// Responses API: `instructions`, the `input` string or items, and the tool list.
pub(crate) fn responses_tokens(enc: Encoding, req: &Value) -> u64 {
    let instructions = req
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, |i| MESSAGE_OVERHEAD + enc.count(i));
    let input = match req.get("input") {
        Some(Value::String(s)) => MESSAGE_OVERHEAD + enc.count(s),
        Some(Value::Array(items)) => items.iter().map(|item| item_tokens(enc, item)).sum(),
        _ => 0,
    };
    instructions + input + REPLY_PRIMING + json_tokens(enc, req.get("tools"))
}

fn item_tokens(enc: Encoding, item: &Value) -> u64 {
    match item.get("type").and_then(Value::as_str).unwrap_or_default() {
        "function_call" => function_tokens(enc, item),
        "function_call_output" => content_tokens(enc, item.get("output")),
        "reasoning" => 0,
        _ => MESSAGE_OVERHEAD + content_tokens(enc, item.get("content")),
    }
}

/// An Anthropic prompt's size and its cacheable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnthropicPrompt {
    pub total: u64,
    pub cacheable: Option<CachePrefix>,
}

/// Everything up to and including the last block marked with `cache_control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachePrefix {
    pub tokens: u64,
    /// Identifies the prefix content, for "seen before".
    pub key: u64,
    /// Written with `"ttl": "1h"` rather than the default five minutes.
    pub long_ttl: bool,
}

/// Walks the prompt in Anthropic's cache order: tools, then system, then messages.
pub(crate) fn anthropic_prompt(enc: Encoding, model: &str, req: &Value) -> AnthropicPrompt {
    let mut walk = PrefixWalk::new(model);
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk.block(enc.count(&tool.to_string()), tool);
    }
    match req.get("system") {
        Some(Value::String(s)) => walk.plain(enc.count(s), s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                walk.block(part_tokens(enc, b), b);
            }
        }
        _ => {}
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        walk.plain(MESSAGE_OVERHEAD, role);
        match m.get("content") {
            Some(Value::String(s)) => walk.plain(enc.count(s), s),
            Some(Value::Array(blocks)) => {
                for b in blocks {
                    walk.block(part_tokens(enc, b), b);
                }
            }
            _ => {}
        }
    }
    walk.plain(REPLY_PRIMING, "");
    AnthropicPrompt {
        total: walk.total,
        cacheable: walk.prefix,
    }
}

struct PrefixWalk {
    total: u64,
    hash: StableHash,
    prefix: Option<CachePrefix>,
}

impl PrefixWalk {
    fn new(model: &str) -> Self {
        let mut hash = StableHash::new();
        hash.write_str(model);
        PrefixWalk {
            total: 0,
            hash,
            prefix: None,
        }
    }

    fn plain(&mut self, tokens: u64, text: &str) {
        self.total += tokens;
        self.hash.write_str(text);
    }

    fn block(&mut self, tokens: u64, block: &Value) {
        self.plain(tokens, &block.to_string());
        if let Some(cc) = block.get("cache_control").filter(|cc| cc.is_object()) {
            self.prefix = Some(CachePrefix {
                tokens: self.total,
                key: self.hash.finish(),
                long_ttl: cc.get("ttl").and_then(Value::as_str) == Some("1h"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_counts_text_parts_images_and_overheads() {
        let enc = Encoding::O200k;
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ]);
        let expected = 3 + enc.count("Be brief.") + 3 + enc.count("What is this?") + 85 + 3;
        let messages = messages.as_array().unwrap();
        assert_eq!(chat_tokens(enc, messages, None), expected);
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(
            chat_tokens(enc, messages, Some(&tools)),
            expected + enc.count(&tools.to_string())
        );
    }

    #[test]
    fn anthropic_prefix_ends_at_last_cache_control() {
        let enc = Encoding::Cl100k;
        let req = json!({
            "system": [
                {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [{"role": "user", "content": "hi"}],
        });
        let p = anthropic_prompt(enc, "claude", &req);
        let prefix = p.cacheable.unwrap();
        assert_eq!(prefix.tokens, enc.count("You are terse."));
        assert_eq!(p.total, prefix.tokens + 3 + enc.count("hi") + 3);
        assert!(!prefix.long_ttl);
        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(anthropic_prompt(enc, "claude", &plain).cacheable, None);
    }
}
