//! The provider parsers ([`super::openai`], [`super::anthropic`]) fill an [`Observed`]; the
//! [`super::meter::Meter`] that drives them reads it.

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
