//! Follows one upstream response, streamed or not, and works out its usage.

use super::body_text::BodyText;
use super::observed::Observed;
use super::{Usage, UsageSource, anthropic, openai, sse::SseBuffer, sse::SseEvent};
use crate::api::{ApiFormat, Endpoint};
use crate::tokens::{Count, Encoding, Tally};

/// Output text kept for estimation is capped; past it the estimate is scaled by bytes.
const MAX_OUTPUT_TEXT: usize = 4 * 1024 * 1024;
/// Non-streamed bodies kept for parsing are capped; larger ones are estimated.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Tracks a response as its bytes pass through the proxy.
#[derive(Debug)]
pub struct Meter {
    format: ApiFormat,
    endpoint: Endpoint,
    stream: bool,
    /// Drop the usage-only chunk that Tollgate asked for on the client's behalf.
    strip_usage_chunk: bool,
    sse: SseBuffer,
    body: Vec<u8>,
    body_overflow: bool,
    /// Finds the output text of a non-streamed body that never parses whole (cut short, or
    /// too big to keep).
    body_text: Option<BodyText>,
    events: Vec<SseEvent>,
    pub observed: Observed,
}

impl Meter {
    pub fn new(
        format: ApiFormat,
        endpoint: Endpoint,
        stream: bool,
        strip_usage_chunk: bool,
    ) -> Meter {
        Meter {
            format,
            endpoint,
            stream,
            strip_usage_chunk,
            sse: SseBuffer::default(),
            body: Vec::new(),
            body_overflow: false,
            body_text: if stream {
                None
            } else {
                BodyText::new(format, endpoint)
            },
            events: Vec::new(),
            observed: Observed::default(),
        }
    }

    /// Whether forwarded bytes must be rewritten (whole events only) rather than passed as
    /// they come.
    pub fn rewrites(&self) -> bool {
        self.stream && self.strip_usage_chunk
    }

    /// Feeds one chunk of the upstream body. When [`Meter::rewrites`] is true, returns the
    /// bytes to forward instead of the chunk; otherwise returns `None` (forward as is).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        if !self.stream {
            if !self.body_overflow && self.body.len() + chunk.len() <= MAX_BODY {
                self.body.extend_from_slice(chunk);
            } else {
                if !self.body_overflow {
                    // Too big to keep for one parse at the end: take its text as it passes.
                    self.body_overflow = true;
                    let kept = std::mem::take(&mut self.body);
                    self.scan_text(&kept);
                }
                self.scan_text(chunk);
            }
            return None;
        }
        let text_before = self.observed.output_text.len();
        self.sse.push(chunk, &mut self.events);
        let mut forward = self.rewrites().then(Vec::new);
        for ev in std::mem::take(&mut self.events) {
            let usage_only = self.observe_event(&ev);
            if let Some(out) = forward.as_mut()
                && !usage_only
            {
                let (before, after) = split_null_usage(&ev.raw);
                out.extend_from_slice(before);
                out.extend_from_slice(after);
            }
        }
        self.cap_output_text(text_before);
        forward
    }

    /// Bytes held back by a rewriting stream when the body ends.
    pub fn take_unforwarded(&mut self) -> Vec<u8> {
        if self.rewrites() {
            self.sse.take_rest()
        } else {
            Vec::new()
        }
    }

    fn observe_event(&mut self, ev: &SseEvent) -> bool {
        match self.format {
            ApiFormat::OpenAi => openai::observe_event(self.endpoint, ev, &mut self.observed),
            ApiFormat::Anthropic => {
                anthropic::observe_event(ev, &mut self.observed);
                false
            }
        }
    }

    /// Adds the output text found in `bytes` of a non-streamed body.
    fn scan_text(&mut self, bytes: &[u8]) {
        let before = self.observed.output_text.len();
        if let Some(scanner) = self.body_text.as_mut() {
            scanner.feed(bytes, &mut self.observed.output_text);
            self.cap_output_text(before);
        }
    }

    /// Counts the output text added since it was `before` bytes long, and keeps it under
    /// the cap.
    fn cap_output_text(&mut self, before: usize) {
        let o = &mut self.observed;
        o.output_text_bytes += o.output_text.len().saturating_sub(before);
        if o.output_text.len() > MAX_OUTPUT_TEXT {
            let mut cut = MAX_OUTPUT_TEXT;
            while !o.output_text.is_char_boundary(cut) {
                cut -= 1;
            }
            o.output_text.truncate(cut);
        }
    }

    /// Call when the upstream body ended, cleanly or not: parses a non-streamed body whole,
    /// or takes the text of what arrived of one cut short.
    pub fn finish_body(&mut self) {
        if self.stream || self.body_overflow || self.body.is_empty() {
            return;
        }
        let Some(v) = metered_members(&self.body) else {
            // A body cut short: its text is taken from what arrived, once, here rather than
            // chunk by chunk on every answer that completes.
            let arrived = std::mem::take(&mut self.body);
            self.scan_text(&arrived);
            return;
        };
        match self.format {
            ApiFormat::OpenAi => openai::observe_body(self.endpoint, &v, &mut self.observed),
            ApiFormat::Anthropic => anthropic::observe_body(&v, &mut self.observed),
        }
        self.observed.finished = true;
        self.cap_output_text(0);
        self.body = Vec::new();
    }
}

/// The top-level members of a whole body that metering reads, in every format. The parser
/// skips the others (embedding vectors, logprobs, ids) without building them.
#[derive(serde::Deserialize)]
struct Metered {
    #[serde(default)]
    model: serde_json::Value,
    #[serde(default)]
    usage: serde_json::Value,
    #[serde(default)]
    choices: serde_json::Value,
    #[serde(default)]
    output: serde_json::Value,
    #[serde(default)]
    content: serde_json::Value,
}

/// `body` parsed as far as metering reads it: an object holding only [`Metered`]'s members,
/// or the whole value when the body is no object or repeats one of them (the full parse
/// keeps the last); `None` when it is no JSON.
fn metered_members(body: &[u8]) -> Option<serde_json::Value> {
    let object = body.trim_ascii_start().starts_with(b"{");
    if let Some(m) = object
        .then(|| serde_json::from_slice::<Metered>(body).ok())
        .flatten()
    {
        let members = [
            ("model", m.model),
            ("usage", m.usage),
            ("choices", m.choices),
            ("output", m.output),
            ("content", m.content),
        ];
        return Some(serde_json::Value::Object(
            members
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ));
    }
    serde_json::from_slice(body).ok()
}

/// The `"usage":null` member that `include_usage` adds to every chunk, as OpenAI writes it.
const NULL_USAGE: &[u8] = b",\"usage\":null";

/// The event around its `"usage":null` member (the whole event and nothing, when it has
/// none). The member can only be a key: inside a JSON string its quotes would be escaped.
fn split_null_usage(raw: &[u8]) -> (&[u8], &[u8]) {
    match raw.windows(NULL_USAGE.len()).position(|w| w == NULL_USAGE) {
        Some(i) => (&raw[..i], &raw[i + NULL_USAGE.len()..]),
        None => (raw, &[]),
    }
}

/// A call's final usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub usage: Usage,
    pub source: UsageSource,
    /// False when a locally counted part was extrapolated, cut or guessed (a huge text, a
    /// tokenizer failure, an image of unknown size), beyond the usual estimation error.
    pub exact: bool,
}

/// Final usage: reported parts as reported, missing parts estimated.
#[cfg(test)]
pub fn settle(
    observed: &Observed,
    estimate_input: impl FnOnce() -> u64,
    encoding: Encoding,
) -> (Usage, UsageSource) {
    let s = settle_counted(
        observed,
        || Count {
            tokens: estimate_input(),
            exact: true,
        },
        encoding,
    );
    (s.usage, s.source)
}

/// [`settle`], with the input estimate's own exactness (see
/// [`crate::usage::estimate::input_count`]) carried into the result.
pub fn settle_counted(
    observed: &Observed,
    estimate_input: impl FnOnce() -> Count,
    encoding: Encoding,
) -> Settled {
    let mut source = UsageSource::Reported;
    let mut exact = true;
    let input = observed.input_tokens.unwrap_or_else(|| {
        source = UsageSource::Estimated;
        let n = estimate_input();
        exact &= n.exact;
        n.tokens
    });
    let output = observed.output_tokens.unwrap_or_else(|| {
        source = UsageSource::Estimated;
        let n = output_count(observed, encoding);
        exact &= n.exact;
        n.tokens
    });
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: observed.cached_input_tokens.min(input),
        cache_write_tokens: observed.cache_write_tokens.min(input),
        reasoning_tokens: observed.reasoning_tokens.min(output),
    };
    Settled {
        usage,
        source,
        exact,
    }
}

/// Tokens of the output text seen, scaled up when more passed than was kept.
fn output_count(observed: &Observed, encoding: Encoding) -> Count {
    let mut tally = Tally::new(encoding);
    tally.add_text(&observed.output_text);
    let counted = tally.count();
    let kept = observed.output_text.len();
    if observed.output_text_bytes <= kept || kept == 0 {
        return counted;
    }
    let scaled = u128::from(counted.tokens) * observed.output_text_bytes as u128 / kept as u128;
    Count {
        tokens: u64::try_from(scaled).unwrap_or(u64::MAX),
        exact: false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_bodies_are_read_as_a_full_parse_reads_them() {
        let bodies: [&[u8]; 6] = [
            br#"{"id":"x","model":"m","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3}}"#,
            br#"{"data":[{"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#,
            br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":9}}"#,
            br#"  ["not", "an", "object"]"#,
            br#"{"model":null,"content":[{"type":"text","text":"a"}]}"#,
            br#"{"model":"m","usage":"#,
        ];
        for body in bodies {
            let full = serde_json::from_slice::<serde_json::Value>(body).ok();
            let read = super::metered_members(body);
            for member in ["model", "usage", "choices", "output", "content"] {
                assert_eq!(
                    read.as_ref().map(|v| &v[member]),
                    full.as_ref().map(|v| &v[member]),
                    "{member} of {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    use super::*;
    use crate::tokens::Encoding;

    #[test]
    fn strips_only_the_usage_chunk_when_asked() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hello there\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, true);
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(7) {
            out.extend(m.feed(chunk).unwrap());
        }
        out.extend(m.take_unforwarded());
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("prompt_tokens"));
        assert!(
            !out.contains("usage"),
            "the client did not ask for usage: {out}"
        );
        assert!(out.contains("hello there") && out.ends_with("data: [DONE]\n\n"));
        let (u, src) = settle(&m.observed, || unreachable!(), Encoding::O200k);
        assert_eq!(
            (u.input_tokens, u.output_tokens, src),
            (9, 2, UsageSource::Reported)
        );
    }

    #[test]
    fn estimates_missing_output_from_streamed_text() {
        let mut m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, false);
        assert!(
            m.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello world\"}}]}\n\n")
                .is_none()
        );
        let (u, src) = settle(&m.observed, || 7, Encoding::O200k);
        assert_eq!(
            (u.input_tokens, u.output_tokens, src),
            (7, 2, UsageSource::Estimated)
        );
    }

    fn chat_body(content: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": "chatcmpl-1", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 99}}))
        .unwrap()
    }

    #[test]
    fn a_cut_non_streamed_answer_counts_what_arrived() {
        let content = "The capital of France is Paris, a city on the Seine. ".repeat(20);
        let body = chat_body(&content);
        let mut m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, false, false);
        // The upstream resets halfway: the body never parses whole.
        for chunk in body[..body.len() / 2].chunks(100) {
            assert!(m.feed(chunk).is_none());
        }
        m.finish_body();
        let arrived = &m.observed.output_text;
        assert!(content.starts_with(arrived.as_str()) && arrived.len() > 400);
        let s = settle_counted(
            &m.observed,
            || Count {
                tokens: 7,
                exact: true,
            },
            Encoding::O200k,
        );
        assert_eq!(s.source, UsageSource::Estimated);
        assert_eq!(s.usage.output_tokens, Encoding::O200k.count(arrived));
        assert!(s.usage.output_tokens > 80, "{s:?}");
    }

    #[test]
    fn a_complete_non_streamed_answer_is_read_once() {
        let body = chat_body("hello world");
        let mut m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, false, false);
        for chunk in body.chunks(7) {
            m.feed(chunk);
        }
        m.finish_body();
        assert_eq!(m.observed.output_text, "hello world");
        assert_eq!(m.observed.output_text_bytes, 11);
        let (u, src) = settle(&m.observed, || unreachable!(), Encoding::O200k);
        assert_eq!(
            (u.input_tokens, u.output_tokens, src),
            (11, 99, UsageSource::Reported)
        );
    }

    #[test]
    fn output_past_the_kept_text_is_scaled_and_flagged() {
        let mut m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, false);
        let event = format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"delta": {"content": "word ".repeat(10_000)}}]})
        );
        let events = 2 * MAX_OUTPUT_TEXT / 50_000;
        for _ in 0..events {
            m.feed(event.as_bytes());
        }
        assert_eq!(m.observed.output_text_bytes, events * 50_000);
        assert!(m.observed.output_text.len() <= MAX_OUTPUT_TEXT);
        let s = settle_counted(
            &m.observed,
            || Count {
                tokens: 1,
                exact: true,
            },
            Encoding::O200k,
        );
        // "word " is one token, so about a token per 5 bytes.
        let expected = (events * 10_000) as u64;
        assert!(
            s.usage.output_tokens.abs_diff(expected) <= expected / 1000,
            "{s:?}"
        );
        assert!(!s.exact);
    }

    #[test]
    fn an_inexact_input_estimate_flags_the_result() {
        let m = Meter::new(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, false);
        let s = settle_counted(
            &m.observed,
            || Count {
                tokens: 5,
                exact: false,
            },
            Encoding::O200k,
        );
        assert_eq!((s.usage.input_tokens, s.exact), (5, false));
    }
}
