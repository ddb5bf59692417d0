//! Usage in OpenAI's formats: Chat Completions, legacy Completions, Embeddings, Responses.

use super::observed::Observed;
use super::sse::SseEvent;
use crate::api::Endpoint;
use serde_json::Value;

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Chat/Completions/Embeddings `usage` object.
fn observe_usage(usage: &Value, obs: &mut Observed) {
    if !usage.is_object() {
        return;
    }
    obs.input_tokens = u(&usage["prompt_tokens"]).or(obs.input_tokens);
    // Embeddings report no completion tokens: that is a true zero.
    obs.output_tokens = u(&usage["completion_tokens"]).or(Some(0));
    obs.cached_input_tokens = u(&usage["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0);
    obs.reasoning_tokens = u(&usage["completion_tokens_details"]["reasoning_tokens"]).unwrap_or(0);
}

/// Responses API `usage` object.
fn observe_responses_usage(usage: &Value, obs: &mut Observed) {
    if !usage.is_object() {
        return;
    }
    obs.input_tokens = u(&usage["input_tokens"]).or(obs.input_tokens);
    obs.output_tokens = u(&usage["output_tokens"]).or(obs.output_tokens);
    obs.cached_input_tokens = u(&usage["input_tokens_details"]["cached_tokens"]).unwrap_or(0);
    obs.reasoning_tokens = u(&usage["output_tokens_details"]["reasoning_tokens"]).unwrap_or(0);
}

fn observe_model(v: &Value, obs: &mut Observed) {
    if let Some(m) = v["model"].as_str()
        && obs.model.as_deref() != Some(m)
    {
        obs.model = Some(m.to_string());
    }
}

/// A complete (non-streamed) response body.
pub fn observe_body(endpoint: Endpoint, v: &Value, obs: &mut Observed) {
    observe_model(v, obs);
    match endpoint {
        Endpoint::Responses => {
            observe_responses_usage(&v["usage"], obs);
            for item in v["output"].as_array().into_iter().flatten() {
                responses_item_text(item, &mut obs.output_text);
            }
        }
        _ => {
            observe_usage(&v["usage"], obs);
            for choice in v["choices"].as_array().into_iter().flatten() {
                if let Some(t) = choice["text"].as_str() {
                    obs.output_text.push_str(t);
                }
                message_text(&choice["message"], &mut obs.output_text);
            }
        }
    }
}

/// Text of a chat message or stream delta that the model produced.
fn message_text(m: &Value, out: &mut String) {
    for field in ["content", "refusal", "reasoning_content"] {
        if let Some(t) = m[field].as_str() {
            out.push_str(t);
        }
    }
    for call in m["tool_calls"].as_array().into_iter().flatten() {
        for field in ["name", "arguments"] {
            if let Some(t) = call["function"][field].as_str() {
                out.push_str(t);
            }
        }
    }
}

fn responses_item_text(item: &Value, out: &mut String) {
    for part in item["content"].as_array().into_iter().flatten() {
        if let Some(t) = part["text"].as_str() {
            out.push_str(t);
        }
    }
    for field in ["name", "arguments"] {
        if let Some(t) = item[field].as_str() {
            out.push_str(t);
        }
    }
}

/// One streamed event. Returns true when the event exists only to carry usage (the chunk
/// with empty `choices` that `include_usage` adds).
pub fn observe_event(endpoint: Endpoint, ev: &SseEvent, obs: &mut Observed) -> bool {
    let data = ev.data.trim();
    if data == "[DONE]" {
        obs.finished = true;
        return false;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return false;
    };
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        obs.upstream_error = Some(
            err["message"]
                .as_str()
                .unwrap_or("stream error")
                .to_string(),
        );
        return false;
    }
    match endpoint {
        Endpoint::Responses => {
            observe_responses_event(&v, obs);
            false
        }
        _ => {
            observe_model(&v, obs);
            let choices = v["choices"].as_array();
            for choice in choices.into_iter().flatten() {
                if let Some(t) = choice["text"].as_str() {
                    obs.output_text.push_str(t);
                }
                message_text(&choice["delta"], &mut obs.output_text);
            }
            let has_usage = v["usage"].is_object();
            observe_usage(&v["usage"], obs);
            has_usage && choices.is_none_or(|c| c.is_empty())
        }
    }
}

fn observe_responses_event(v: &Value, obs: &mut Observed) {
    let kind = v["type"].as_str().unwrap_or_default();
    match kind {
        "response.output_text.delta"
        | "response.refusal.delta"
        | "response.function_call_arguments.delta"
        | "response.reasoning_summary_text.delta"
        | "response.reasoning_text.delta" => {
            if let Some(t) = v["delta"].as_str() {
                obs.output_text.push_str(t);
            }
        }
        "response.created" | "response.in_progress" => observe_model(&v["response"], obs),
        "response.completed" | "response.incomplete" | "response.failed" => {
            observe_model(&v["response"], obs);
            observe_responses_usage(&v["response"]["usage"], obs);
            obs.finished = true;
            if kind == "response.failed" {
                obs.upstream_error = Some(
                    v["response"]["error"]["message"]
                        .as_str()
                        .unwrap_or("response failed")
                        .to_string(),
                );
            }
        }
        "error" => {
            obs.upstream_error = Some(v["message"].as_str().unwrap_or("stream error").to_string());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            raw: vec![],
            event: None,
            data: data.into(),
        }
    }

    #[test]
    fn reads_chat_usage_with_details() {
        let mut obs = Observed::default();
        let body = json!({"model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"hi"}}],
            "usage":{"prompt_tokens":2000,"completion_tokens":300,
            "prompt_tokens_details":{"cached_tokens":1024},
            "completion_tokens_details":{"reasoning_tokens":200}}});
        observe_body(Endpoint::ChatCompletions, &body, &mut obs);
        assert_eq!(obs.input_tokens, Some(2000));
        assert_eq!(obs.output_tokens, Some(300));
        assert_eq!(obs.cached_input_tokens, 1024);
        assert_eq!(obs.reasoning_tokens, 200);
        assert_eq!(obs.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(obs.output_text, "hi");
    }

    #[test]
    fn flags_only_the_usage_chunk() {
        let mut obs = Observed::default();
        let content =
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}"#;
        let usage =
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        assert!(!observe_event(
            Endpoint::ChatCompletions,
            &ev(content),
            &mut obs
        ));
        assert!(observe_event(
            Endpoint::ChatCompletions,
            &ev(usage),
            &mut obs
        ));
        assert!(!observe_event(
            Endpoint::ChatCompletions,
            &ev("[DONE]"),
            &mut obs
        ));
        assert_eq!((obs.input_tokens, obs.output_tokens), (Some(5), Some(1)));
        assert!(obs.finished);
    }

    #[test]
    fn reads_responses_completed() {
        let mut obs = Observed::default();
        let done = json!({"type":"response.completed","response":{"model":"o3","usage":{
            "input_tokens":10,"input_tokens_details":{"cached_tokens":0},
            "output_tokens":50,"output_tokens_details":{"reasoning_tokens":40}}}});
        observe_event(Endpoint::Responses, &ev(&done.to_string()), &mut obs);
        assert_eq!(
            (obs.input_tokens, obs.output_tokens, obs.reasoning_tokens),
            (Some(10), Some(50), 40)
        );
    }
}
