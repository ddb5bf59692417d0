//! Usage in Anthropic's Messages format.
//!
//! Anthropic's `input_tokens` excludes cache reads and writes; Tollgate's `input_tokens`
//! counts every prompt token, so the three are added.

use super::observed::Observed;
use super::sse::SseEvent;
use serde_json::Value;

fn observe_usage(usage: &Value, obs: &mut Observed) {
    if !usage.is_object() {
        return;
    }
    // A field absent from a later event keeps the value an earlier event gave.
    if let Some(i) = usage["input_tokens"].as_u64() {
        obs.anthropic_uncached_input = Some(i);
    }
    if let Some(r) = usage["cache_read_input_tokens"].as_u64() {
        obs.cached_input_tokens = r;
    }
    if let Some(w) = usage["cache_creation_input_tokens"].as_u64() {
        obs.cache_write_tokens = w;
    }
    if let Some(i) = obs.anthropic_uncached_input {
        // Saturating: a nonsensical report must not panic or wrap below its parts.
        obs.input_tokens = Some(
            i.saturating_add(obs.cached_input_tokens)
                .saturating_add(obs.cache_write_tokens),
        );
    }
    if let Some(o) = usage["output_tokens"].as_u64() {
        obs.output_tokens = Some(o);
    }
}

fn content_text(block: &Value, out: &mut String) {
    match block["type"].as_str() {
        Some("text") => out.push_str(block["text"].as_str().unwrap_or_default()),
        Some("thinking") => out.push_str(block["thinking"].as_str().unwrap_or_default()),
        Some("tool_use") => {
            out.push_str(block["name"].as_str().unwrap_or_default());
            out.push_str(&block["input"].to_string());
        }
        _ => {}
    }
}

pub fn observe_body(v: &Value, obs: &mut Observed) {
    if let Some(m) = v["model"].as_str() {
        obs.model = Some(m.to_string());
    }
    observe_usage(&v["usage"], obs);
    for block in v["content"].as_array().into_iter().flatten() {
        content_text(block, &mut obs.output_text);
    }
}

pub fn observe_event(ev: &SseEvent, obs: &mut Observed) {
    let Ok(v) = serde_json::from_str::<Value>(ev.data.trim()) else {
        return;
    };
    match v["type"].as_str().unwrap_or_default() {
        "message_start" => {
            let msg = &v["message"];
            if let Some(m) = msg["model"].as_str() {
                obs.model = Some(m.to_string());
            }
            observe_usage(&msg["usage"], obs);
            // message_start's output count is a placeholder; the real one comes last.
            obs.output_tokens = None;
        }
        "content_block_start" => content_text(&v["content_block"], &mut obs.output_text),
        "content_block_delta" => {
            let d = &v["delta"];
            for field in ["text", "partial_json", "thinking"] {
                if let Some(t) = d[field].as_str() {
                    obs.output_text.push_str(t);
                }
            }
        }
        "message_delta" => observe_usage(&v["usage"], obs),
        "message_stop" => obs.finished = true,
        "error" => {
            obs.upstream_error = Some(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("stream error")
                    .to_string(),
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> SseEvent {
        SseEvent {
            raw: vec![],
            event: None,
            data: v.to_string(),
        }
    }

    #[test]
    fn cache_tokens_are_part_of_input_once() {
        let mut obs = Observed::default();
        observe_body(
            &json!({"model":"claude-sonnet-4-5","content":[{"type":"text","text":"ok"}],
                "usage":{"input_tokens":100,"cache_read_input_tokens":800,
                "cache_creation_input_tokens":50,"output_tokens":20}}),
            &mut obs,
        );
        assert_eq!(obs.input_tokens, Some(950));
        assert_eq!(obs.cached_input_tokens, 800);
        assert_eq!(obs.cache_write_tokens, 50);
        assert_eq!(obs.output_tokens, Some(20));
    }

    #[test]
    fn stream_takes_final_cumulative_output() {
        let mut obs = Observed::default();
        observe_event(
            &ev(json!({"type":"message_start","message":{"model":"claude-x",
            "usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}})),
            &mut obs,
        );
        assert_eq!(obs.output_tokens, None);
        observe_event(
            &ev(json!({"type":"content_block_delta","delta":{"type":"text_delta","text":"yo"}})),
            &mut obs,
        );
        observe_event(
            &ev(
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},
            "usage":{"output_tokens":42}}),
            ),
            &mut obs,
        );
        observe_event(&ev(json!({"type":"message_stop"})), &mut obs);
        assert_eq!(obs.input_tokens, Some(15));
        assert_eq!(obs.output_tokens, Some(42));
        assert_eq!(obs.output_text, "yo");
        assert!(obs.finished);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let mut obs = Observed::default();
        observe_body(
            &json!({"usage":{"input_tokens":u64::MAX,"cache_read_input_tokens":3,
                "cache_creation_input_tokens":u64::MAX - 1,"output_tokens":1}}),
            &mut obs,
        );
        assert_eq!(obs.input_tokens, Some(u64::MAX));
        assert_eq!(
            (obs.cached_input_tokens, obs.cache_write_tokens),
            (3, u64::MAX - 1)
        );
    }

    #[test]
    fn later_usage_with_all_fields_is_not_added_twice() {
        let mut obs = Observed::default();
        let usage = json!({"input_tokens":10,"cache_read_input_tokens":5,"cache_creation_input_tokens":2,"output_tokens":7});
        observe_event(
            &ev(json!({"type":"message_start","message":{"usage":usage}})),
            &mut obs,
        );
        observe_event(&ev(json!({"type":"message_delta","usage":usage})), &mut obs);
        assert_eq!(obs.input_tokens, Some(17));
    }
}
