//! Counting a request's prompt tokens locally, for when the provider reports none.
//!
//! Follows the providers' published accounting closely enough for cost: per-message
//! overhead, tool definitions counted (they are billed), images at a fixed per-image
//! cost rather than tokenized as base64 text.

use crate::api::Endpoint;
use crate::tokens::Encoding;
use serde_json::Value;

/// OpenAI: tokens added around each chat message, and to prime the reply.
const PER_MESSAGE: u64 = 3;
const PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;
/// OpenAI image at `detail: low`, and a typical 1024×1024 image at high/auto detail.
const OPENAI_IMAGE_LOW: u64 = 85;
const OPENAI_IMAGE_HIGH: u64 = 765;
/// Anthropic: about (width × height) / 750, capped near 1,600 for a full-size image.
const ANTHROPIC_IMAGE: u64 = 1_600;

/// Estimated input tokens of a request body.
pub fn input_tokens(endpoint: Endpoint, body: &Value, enc: Encoding) -> u64 {
    let mut n = Counter { enc, total: 0 };
    match endpoint {
        Endpoint::ChatCompletions => {
            for m in body["messages"].as_array().into_iter().flatten() {
                n.total += PER_MESSAGE;
                n.openai_content(&m["content"]);
                n.text(m["role"].as_str());
                if let Some(name) = m["name"].as_str() {
                    n.total += PER_NAME;
                    n.text(Some(name));
                }
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    n.text(call["function"]["name"].as_str());
                    n.text(call["function"]["arguments"].as_str());
                }
            }
            n.json(&body["tools"]);
            n.json(&body["functions"]);
            n.json(&body["response_format"]["json_schema"]);
            n.total += REPLY_PRIMING;
        }
        Endpoint::Completions => n.strings_or_ids(&body["prompt"]),
        Endpoint::Embeddings => n.strings_or_ids(&body["input"]),
        Endpoint::Responses => {
            n.text(body["instructions"].as_str());
            match &body["input"] {
                Value::String(s) => n.text(Some(s)),
                Value::Array(items) => {
                    for item in items {
                        n.total += PER_MESSAGE;
                        n.openai_content(&item["content"]);
                        n.text(item["output"].as_str());
                        n.text(item["arguments"].as_str());
                    }
                }
                _ => {}
            }
            n.json(&body["tools"]);
            n.total += REPLY_PRIMING;
        }
        Endpoint::Messages | Endpoint::CountTokens => {
            n.anthropic_content(&body["system"]);
            for m in body["messages"].as_array().into_iter().flatten() {
                n.total += PER_MESSAGE;
                n.anthropic_content(&m["content"]);
            }
            n.json(&body["tools"]);
            n.total += REPLY_PRIMING;
        }
        Endpoint::Other => {}
    }
    n.total
}

struct Counter {
    enc: Encoding,
    total: u64,
}

impl Counter {
    fn text(&mut self, s: Option<&str>) {
        if let Some(s) = s {
            self.total += self.enc.count(s);
        }
    }

    fn json(&mut self, v: &Value) {
        if !v.is_null() {
            self.total += self.enc.count(&v.to_string());
        }
    }

    fn strings_or_ids(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.text(Some(s)),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Number(_) => self.total += 1,
                        other => self.strings_or_ids(other),
                    }
                }
            }
            _ => {}
        }
    }

    /// OpenAI content: a string, or parts (`text`, `input_text`, `image_url`, `input_image`,
    /// `input_audio`, `file`).
    fn openai_content(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.text(Some(s)),
            Value::Array(parts) => {
                for p in parts {
                    match p["type"].as_str() {
                        Some("image_url") | Some("input_image") => {
                            let detail = p["image_url"]["detail"].as_str().or(p["detail"].as_str());
                            self.total += if detail == Some("low") {
                                OPENAI_IMAGE_LOW
                            } else {
                                OPENAI_IMAGE_HIGH
                            };
                        }
                        // Audio and files are billed by their own meters; not text.
                        Some("input_audio") | Some("file") | Some("input_file") => {}
                        _ => self.text(p["text"].as_str()),
                    }
                }
            }
            _ => {}
        }
    }

    /// Anthropic content: a string, or blocks (`text`, `image`, `document`, `tool_use`,
    /// `tool_result`).
    fn anthropic_content(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.text(Some(s)),
            Value::Array(blocks) => {
                for b in blocks {
                    match b["type"].as_str() {
                        Some("image") => self.total += ANTHROPIC_IMAGE,
                        Some("tool_use") => {
                            self.text(b["name"].as_str());
                            self.json(&b["input"]);
                        }
                        Some("tool_result") => self.anthropic_content(&b["content"]),
                        Some("document") => self.text(
                            b["source"]["data"]
                                .as_str()
                                .filter(|_| b["source"]["type"].as_str() == Some("text")),
                        ),
                        _ => self.text(b["text"].as_str()),
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_are_not_tokenized_as_text() {
        let big = "A".repeat(200_000);
        let body = json!({"messages":[{"role":"user","content":[
            {"type":"text","text":"what is this"},
            {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{big}")}}]}]});
        let n = input_tokens(Endpoint::ChatCompletions, &body, Encoding::O200k);
        assert!(n > OPENAI_IMAGE_HIGH && n < OPENAI_IMAGE_HIGH + 30, "{n}");
    }

    #[test]
    fn tool_definitions_are_counted() {
        let msgs = json!([{"role":"user","content":"hi"}]);
        let without = input_tokens(
            Endpoint::ChatCompletions,
            &json!({"messages": msgs}),
            Encoding::O200k,
        );
        let tools = json!([{"type":"function","function":{"name":"lookup_order",
            "description":"Find an order by id and return its full shipping history",
            "parameters":{"type":"object","properties":{"order_id":{"type":"string"}}}}}]);
        let with = input_tokens(
            Endpoint::ChatCompletions,
            &json!({"messages": msgs, "tools": tools}),
            Encoding::O200k,
        );
        assert!(with > without + 20, "{with} vs {without}");
    }

    #[test]
    fn anthropic_system_and_blocks() {
        let body = json!({"system":[{"type":"text","text":"be brief"}],
            "messages":[{"role":"user","content":[{"type":"text","text":"hello world"},
                {"type":"image","source":{"type":"base64","data":"AAAA"}}]}]});
        let n = input_tokens(Endpoint::Messages, &body, Encoding::Cl100k);
        assert_eq!(n, 2 + 2 + PER_MESSAGE + ANTHROPIC_IMAGE + REPLY_PRIMING);
    }
}
