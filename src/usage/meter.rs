//! Follows one upstream response, streamed or not, and works out its usage.

use super::{Usage, UsageSource, anthropic, openai, sse::SseBuffer, sse::SseEvent};
use crate::api::{ApiFormat, Endpoint};

/// Output text kept for estimation is capped; past it the estimate is scaled by bytes.
const MAX_OUTPUT_TEXT: usize = 4 * 1024 * 1024;
/// Non-streamed bodies kept for parsing are capped; larger ones are estimated.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What a response has said so far.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// All prompt tokens (Tollgate's meaning), once reported.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Anthropic's own `input_tokens`, which excludes the cache parts.
    pub anthropic_uncached_input: Option<u64>,
    /// Model the provider says served the call.
    pub model: Option<String>,
    /// Text the model produced, for estimating output when usage is missing.
    pub output_text: String,
    /// Bytes of output text seen, including any past the cap.
    pub output_text_bytes: usize,
    /// The stream reached its natural end.
    pub finished: bool,
    /// The upstream reported an error inside a 2xx stream.
    pub upstream_error: Option<String>,
}

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
            if self.body.len() + chunk.len() <= MAX_BODY {
                self.body.extend_from_slice(chunk);
            } else {
                self.body_overflow = true;
            }
            return None;
        }
        self.sse.push(chunk, &mut self.events);
        let mut forward = self.rewrites().then(Vec::new);
        for ev in std::mem::take(&mut self.events) {
            let usage_only = self.observe_event(&ev);
            if let Some(out) = forward.as_mut() {
                if !usage_only {
                    let (before, after) = split_null_usage(&ev.raw);
                    out.extend_from_slice(before);
                    out.extend_from_slice(after);
                }
            }
        }
        self.cap_output_text();
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

    fn cap_output_text(&mut self) {
        let o = &mut self.observed;
        o.output_text_bytes = o.output_text_bytes.max(o.output_text.len());
        if o.output_text.len() > MAX_OUTPUT_TEXT {
            let mut cut = MAX_OUTPUT_TEXT;
            while !o.output_text.is_char_boundary(cut) {
                cut -= 1;
            }
            o.output_text.truncate(cut);
        }
    }

    /// Call when the upstream body ended cleanly: parses a non-streamed body.
    pub fn finish_body(&mut self) {
        if self.stream || self.body_overflow || self.body.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) else {
            return;
        };
        match self.format {
            ApiFormat::OpenAi => openai::observe_body(self.endpoint, &v, &mut self.observed),
            ApiFormat::Anthropic => anthropic::observe_body(&v, &mut self.observed),
        }
        self.observed.finished = true;
        self.cap_output_text();
        self.body = Vec::new();
    }
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

/// Final usage: reported parts as reported, missing parts estimated.
pub fn settle(
    observed: &Observed,
    estimate_input: impl FnOnce() -> u64,
    encoding: crate::tokens::Encoding,
) -> (Usage, UsageSource) {
    let mut source = UsageSource::Reported;
    let input = observed.input_tokens.unwrap_or_else(|| {
        source = UsageSource::Estimated;
        estimate_input()
    });
    let output = observed.output_tokens.unwrap_or_else(|| {
        source = UsageSource::Estimated;
        let counted = encoding.count(&observed.output_text);
        // Scale up when more text passed than was kept.
        let kept = observed.output_text.len().max(1);
        if observed.output_text_bytes > kept {
            counted * observed.output_text_bytes as u64 / kept as u64
        } else {
            counted
        }
    });
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: observed.cached_input_tokens.min(input),
        cache_write_tokens: observed.cache_write_tokens.min(input),
        reasoning_tokens: observed.reasoning_tokens.min(output),
    };
    (usage, source)
}

#[cfg(test)]
mod tests {
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
}
