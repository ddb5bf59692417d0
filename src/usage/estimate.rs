//! Counting a request's prompt tokens locally, for when the provider reports none.
//!
//! Follows the providers' published accounting: OpenAI's per-message overhead and its way
//! of rendering function definitions (the "How to count tokens with tiktoken" cookbook,
//! checked there against the API), Anthropic's tool-use system prompt, and images by each
//! model's rule from their size ([`super::images`]). Counting is bounded and never panics
//! (see [`crate::tokens`]); anything guessed or extrapolated flags the count inexact.

use super::images::{self, Rule};
use crate::api::Endpoint;
use crate::tokens::{Count, Encoding, Tally};
use serde_json::Value;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// OpenAI: tokens added around each chat message, and to prime the reply.
const PER_MESSAGE: u64 = 3;
const PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// OpenAI's rendering of function definitions, per the cookbook's `num_tokens_for_tools`:
/// fixed tokens around each function, its properties, each property and enum value, and
/// the whole list. The models the cookbook checked: GPT-4o and GPT-4o mini (o200k), GPT-4
/// and GPT-3.5 Turbo (cl100k); each table is used for the models sharing its encoding.
struct ToolFormat {
    func_init: i64,
    prop_init: i64,
    prop_key: i64,
    enum_init: i64,
    enum_item: i64,
    func_end: i64,
}

const O200K_TOOLS: ToolFormat = ToolFormat {
    func_init: 7,
    prop_init: 3,
    prop_key: 3,
    enum_init: -3,
    enum_item: 3,
    func_end: 12,
};

const CL100K_TOOLS: ToolFormat = ToolFormat {
    func_init: 10,
    ..O200K_TOOLS
};

/// Anthropic's tool-use system prompt, added whenever `tools` is set (Claude 4 and 3.7
/// Sonnet, per Anthropic's tool-use pricing table): `auto`/`none` and `any`/`tool` choices.
const ANTHROPIC_TOOL_PROMPT_AUTO: u64 = 346;
const ANTHROPIC_TOOL_PROMPT_FORCED: u64 = 313;

/// Estimated input tokens of a request body.
#[cfg(test)]
pub fn input_tokens(endpoint: Endpoint, body: &Value, enc: Encoding) -> u64 {
    input_count(endpoint, body, enc).tokens
}

/// Estimated input tokens of a request body, and whether every part was counted by rule.
/// Never panics: should counting fail, the body's size gives a flagged estimate.
pub fn input_count(endpoint: Endpoint, body: &Value, enc: Encoding) -> Count {
    catch_unwind(AssertUnwindSafe(|| count(endpoint, body, enc))).unwrap_or_else(|_| {
        tracing::warn!("counting a request failed; estimated from its size");
        Count {
            tokens: (body.to_string().len() as u64).div_ceil(crate::tokens::BYTES_PER_TOKEN),
            exact: false,
        }
    })
}

fn count(endpoint: Endpoint, body: &Value, enc: Encoding) -> Count {
    let model = body["model"].as_str().unwrap_or_default();
    let mut n = Counter {
        tally: Tally::new(enc),
        image_rule: images::rule_for(
            model,
            match endpoint {
                Endpoint::Messages | Endpoint::CountTokens => images::ANTHROPIC_DEFAULT,
                _ => images::OPENAI_DEFAULT,
            },
        ),
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            for m in body["messages"].as_array().into_iter().flatten() {
                n.tally.add(PER_MESSAGE);
                n.openai_content(&m["content"]);
                n.text(m["role"].as_str());
                if let Some(name) = m["name"].as_str() {
                    n.tally.add(PER_NAME);
                    n.text(Some(name));
                }
                n.text(m["tool_call_id"].as_str());
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    n.text(call["function"]["name"].as_str());
                    n.text(call["function"]["arguments"].as_str());
                }
            }
            n.openai_functions(&body["tools"]);
            n.openai_functions(&body["functions"]);
            n.json(&body["response_format"]["json_schema"]);
            n.tally.add(REPLY_PRIMING);
        }
        Endpoint::Completions => n.strings_or_ids(&body["prompt"]),
        Endpoint::Embeddings => n.strings_or_ids(&body["input"]),
        Endpoint::Responses => {
            n.text(body["instructions"].as_str());
            match &body["input"] {
                Value::String(s) => n.text(Some(s)),
                Value::Array(items) => {
                    for item in items {
                        n.tally.add(PER_MESSAGE);
                        n.openai_content(&item["content"]);
                        n.text(item["call_id"].as_str());
                        n.text(item["name"].as_str());
                        n.text(item["output"].as_str());
                        n.text(item["arguments"].as_str());
                    }
                }
                _ => {}
            }
            n.openai_functions(&body["tools"]);
            n.json(&body["text"]["format"]["schema"]);
            n.tally.add(REPLY_PRIMING);
        }
        Endpoint::Messages | Endpoint::CountTokens => {
            n.anthropic_content(&body["system"]);
            for m in body["messages"].as_array().into_iter().flatten() {
                n.tally.add(PER_MESSAGE);
                n.anthropic_content(&m["content"]);
            }
            if body["tools"].as_array().is_some_and(|t| !t.is_empty()) {
                n.json(&body["tools"]);
                let forced = matches!(body["tool_choice"]["type"].as_str(), Some("any" | "tool"));
                n.tally.add(if forced {
                    ANTHROPIC_TOOL_PROMPT_FORCED
                } else {
                    ANTHROPIC_TOOL_PROMPT_AUTO
                });
            }
            n.tally.add(REPLY_PRIMING);
        }
        Endpoint::Other => {}
    }
    n.tally.count()
}

struct Counter {
    tally: Tally,
    image_rule: Rule,
}

impl Counter {
    fn text(&mut self, s: Option<&str>) {
        if let Some(s) = s {
            self.tally.add_text(s);
        }
    }

    fn json(&mut self, v: &Value) {
        if !v.is_null() {
            self.tally.add_text(&v.to_string());
        }
    }

    fn strings_or_ids(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.text(Some(s)),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Number(_) => self.tally.add(1),
                        other => self.strings_or_ids(other),
                    }
                }
            }
            _ => {}
        }
    }

    /// An image: by its size when the request carries it, else by the default size.
    fn image(&mut self, size: Option<(u32, u32)>, low: bool) {
        match size {
            Some((w, h)) => self.tally.add(self.image_rule.tokens(w, h, low)),
            None => {
                let (w, h) = images::DEFAULT_SIZE;
                self.tally.add_guess(self.image_rule.tokens(w, h, low));
            }
        }
    }

    /// Function tools as OpenAI renders them for the model (see [`ToolFormat`]): Chat's
    /// `tools` (`{"type":"function","function":{..}}`), its legacy `functions`, and the
    /// Responses API's flat `{"type":"function","name":..}`. Other tools (built-in ones)
    /// are counted as their JSON.
    fn openai_functions(&mut self, tools: &Value) {
        let Some(tools) = tools.as_array().filter(|t| !t.is_empty()) else {
            return;
        };
        let format = match self.tally.encoding() {
            Encoding::O200k => &O200K_TOOLS,
            Encoding::Cl100k => &CL100K_TOOLS,
        };
        let mut fixed: i64 = 0;
        for tool in tools {
            let function = if tool["function"].is_object() {
                &tool["function"]
            } else if tool.get("name").is_some() {
                tool
            } else {
                self.json(tool);
                continue;
            };
            fixed += format.func_init;
            let name = function["name"].as_str().unwrap_or_default();
            let desc = strip_period(function["description"].as_str().unwrap_or_default());
            self.tally.add_text(&format!("{name}:{desc}"));
            let props = function["parameters"]["properties"].as_object();
            let Some(props) = props.filter(|p| !p.is_empty()) else {
                continue;
            };
            fixed += format.prop_init;
            for (key, schema) in props {
                fixed += format.prop_key;
                if let Some(values) = schema["enum"].as_array() {
                    fixed += format.enum_init;
                    for v in values {
                        fixed += format.enum_item;
                        match v.as_str() {
                            Some(s) => self.tally.add_text(s),
                            None => self.json(v),
                        }
                    }
                }
                let ty = match &schema["type"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let desc = strip_period(schema["description"].as_str().unwrap_or_default());
                self.tally.add_text(&format!("{key}:{ty}:{desc}"));
                // Nested schemas are beyond the cookbook's rendering; their JSON is the
                // closest measure of what the model is shown.
                self.json(&schema["properties"]);
                self.json(&schema["items"]);
            }
        }
        fixed += format.func_end;
        self.tally.add(fixed.max(0) as u64);
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
                            // Chat: {"image_url":{"url","detail"}}; Responses: {"image_url": "…",
                            // "detail"}.
                            let url = p["image_url"]["url"].as_str().or(p["image_url"].as_str());
                            let detail = p["image_url"]["detail"].as_str().or(p["detail"].as_str());
                            self.image(url.and_then(images::data_url_size), detail == Some("low"));
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
                        Some("image") => {
                            let source = &b["source"];
                            let size = match source["type"].as_str() {
                                Some("base64") => {
                                    source["data"].as_str().and_then(images::base64_size)
                                }
                                _ => None,
                            };
                            self.image(size, false);
                        }
                        Some("tool_use") => {
                            self.text(b["name"].as_str());
                            self.json(&b["input"]);
                        }
                        Some("tool_result") => {
                            self.text(b["tool_use_id"].as_str());
                            self.anthropic_content(&b["content"]);
                        }
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

/// One trailing period dropped, as OpenAI's rendering does.
fn strip_period(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::images::tests::png_data_url;
    use serde_json::json;

    fn count_of(endpoint: Endpoint, body: &Value, enc: Encoding) -> Count {
        input_count(endpoint, body, enc)
    }

    /// The cookbook's function-calling example, with the prompt token counts the API
    /// returned for it: 101 for GPT-4o and GPT-4o mini, 105 for GPT-4 and GPT-3.5 Turbo.
    #[test]
    fn tools_match_openais_worked_example() {
        let tools = json!([{
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {
                            "type": "string",
                            "description": "The city and state, e.g. San Francisco, CA",
                        },
                        "unit": {"type": "string",
                                 "description": "The unit of temperature to return",
                                 "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["location"],
                },
            }
        }]);
        let messages = json!([
            {"role": "system",
             "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"},
        ]);
        for (model, expected) in [
            ("gpt-4o", 101),
            ("gpt-4o-mini", 101),
            ("gpt-4", 105),
            ("gpt-3.5-turbo", 105),
        ] {
            let body = json!({"model": model, "messages": messages, "tools": tools});
            let enc = Encoding::for_model(model);
            let n = count_of(Endpoint::ChatCompletions, &body, enc);
            assert_eq!(
                n,
                Count {
                    tokens: expected,
                    exact: true
                },
                "{model}"
            );
        }
    }

    #[test]
    fn legacy_functions_and_responses_tools_render_alike() {
        let function = json!({"name": "lookup_order",
            "description": "Find an order by id.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}});
        let chat = json!({"model": "gpt-4o", "messages": [],
            "tools": [{"type": "function", "function": function}]});
        let legacy = json!({"model": "gpt-4o", "messages": [], "functions": [function]});
        let mut flat = function.clone();
        flat["type"] = json!("function");
        let responses = json!({"model": "gpt-4o", "input": [], "tools": [flat]});
        let a = input_tokens(Endpoint::ChatCompletions, &chat, Encoding::O200k);
        let b = input_tokens(Endpoint::ChatCompletions, &legacy, Encoding::O200k);
        let c = input_tokens(Endpoint::Responses, &responses, Encoding::O200k);
        assert_eq!((a, b), (c, c));
        // 7 + "lookup_order:Find an order by id" + 3 + 3 + "order_id:string:" + 12 + priming.
        let text = Encoding::O200k.count("lookup_order:Find an order by id")
            + Encoding::O200k.count("order_id:string:");
        assert_eq!(a, 7 + 3 + 3 + 12 + text + REPLY_PRIMING);
    }

    #[test]
    fn tool_call_ids_are_counted() {
        let msgs = |id: &str| {
            json!({"model": "gpt-4o", "messages": [
                {"role": "assistant", "tool_calls": [{"id": id, "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": id, "content": "42"}]})
        };
        let short = input_tokens(Endpoint::ChatCompletions, &msgs("c"), Encoding::O200k);
        let id = "call_Zx81KqPbN2mWvR7sT0yL3dEa";
        let long = input_tokens(Endpoint::ChatCompletions, &msgs(id), Encoding::O200k);
        assert_eq!(
            long - short,
            Encoding::O200k.count(id) - Encoding::O200k.count("c")
        );
    }

    #[test]
    fn images_are_charged_by_model_and_size() {
        let body = |model: &str, url: &str, detail: &str| {
            json!({"model": model, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]})
        };
        let text_only = input_tokens(
            Endpoint::ChatCompletions,
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"}]}]}),
            Encoding::O200k,
        );
        let image = |model: &str, url: &str, detail: &str| {
            let n = count_of(
                Endpoint::ChatCompletions,
                &body(model, url, detail),
                Encoding::O200k,
            );
            (n.tokens - text_only, n.exact)
        };
        let square = png_data_url(1024, 1024);
        // The case: recorded as 765 + text before, billed at about 25,500.
        assert_eq!(image("gpt-4o-mini", &square, "auto"), (25_501, true));
        assert_eq!(image("gpt-4o-mini", &square, "low"), (2833, true));
        assert_eq!(image("gpt-4o", &square, "high"), (765, true));
        assert_eq!(
            image("gpt-4o", &png_data_url(512, 512), "high"),
            (255, true)
        );
        assert_eq!(image("gpt-4.1-mini", &square, "auto"), (1659, true));
        // No size in the request: the default size, flagged.
        let remote = "https://example.com/cat.png";
        assert_eq!(image("gpt-4o-mini", remote, "auto"), (25_501, false));
        assert_eq!(image("gpt-4o", remote, "low"), (85, false));
    }

    #[test]
    fn responses_images_and_call_ids() {
        let body = json!({"model": "gpt-4o", "input": [
            {"role": "user", "content": [
                {"type": "input_image", "image_url": png_data_url(2048, 4096), "detail": "high"}]},
            {"type": "function_call_output", "call_id": "call_abc", "output": "ok"}]});
        let n = count_of(Endpoint::Responses, &body, Encoding::O200k);
        let expected =
            2 * PER_MESSAGE + 1105 + Encoding::O200k.count("call_abc") + 1 + REPLY_PRIMING;
        assert_eq!(
            n,
            Count {
                tokens: expected,
                exact: true
            }
        );
    }

    #[test]
    fn images_are_not_tokenized_as_text() {
        let big = "A".repeat(200_000);
        let body = json!({"model": "gpt-4o", "messages":[{"role":"user","content":[
            {"type":"text","text":"what is this"},
            {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{big}")}}]}]});
        let n = count_of(Endpoint::ChatCompletions, &body, Encoding::O200k);
        assert!(n.tokens > 765 && n.tokens < 765 + 30, "{n:?}");
        assert!(!n.exact, "the data is not a PNG, so its size is a guess");
    }

    #[test]
    fn anthropic_tools_images_and_results() {
        let claude = |content: Value, extra: Value| {
            let mut body = json!({"model": "claude-sonnet-4-5",
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [{"role": "user", "content": content}]});
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            count_of(Endpoint::Messages, &body, Encoding::Cl100k)
        };
        let base = claude(json!([{"type": "text", "text": "hello world"}]), json!({}));
        assert_eq!(
            base,
            Count {
                tokens: 2 + 2 + PER_MESSAGE + REPLY_PRIMING,
                exact: true
            }
        );

        let data = png_data_url(1000, 1000);
        let data = data.split_once(',').unwrap().1;
        let with_image = claude(
            json!([{"type": "text", "text": "hello world"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                    "data": data}}]),
            json!({}),
        );
        assert_eq!(with_image.tokens - base.tokens, 1334);

        let tools = json!({"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
        let with_tools = claude(
            json!([{"type": "text", "text": "hello world"}]),
            tools.clone(),
        );
        let tools_json = Encoding::Cl100k.count(&tools["tools"].to_string());
        assert_eq!(with_tools.tokens - base.tokens, tools_json + 346);
        let mut forced = tools;
        forced["tool_choice"] = json!({"type": "any"});
        let with_forced = claude(json!([{"type": "text", "text": "hello world"}]), forced);
        assert_eq!(with_forced.tokens - base.tokens, tools_json + 313);

        let result = claude(
            json!([{"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                "content": "hello world"}]),
            json!({}),
        );
        assert_eq!(
            result.tokens - base.tokens,
            Encoding::Cl100k.count("toolu_01A09q90qw90lq917835lq9")
        );
    }

    #[test]
    fn a_prompt_of_a_million_spaces_is_counted() {
        let prompt = format!("{}What is the capital of France?", " ".repeat(1_000_000));
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]});
        let n = count_of(Endpoint::ChatCompletions, &body, Encoding::O200k);
        // 999,999 spaces: 7812 tokens of 128 and one of 63; then the question.
        let question = Encoding::O200k.count(" What is the capital of France?");
        let expected = PER_MESSAGE + 1 + 7813 + question + REPLY_PRIMING;
        assert_eq!(
            n,
            Count {
                tokens: expected,
                exact: true
            }
        );
    }
}
