//! Token usage: one meaning for every provider.
//!
//! `input_tokens` counts every prompt token, including the parts read from
//! (`cached_input_tokens`) and written to (`cache_write_tokens`) the provider's prompt cache.
//! `reasoning_tokens` is the part of `output_tokens` spent on reasoning. Pricing charges each
//! part at its own rate, so no token is priced twice.

pub mod anthropic;
pub mod body_text;
pub mod estimate;
pub mod images;
pub mod meter;
pub mod observed;
pub mod openai;
#[cfg(test)]
pub(crate) mod proptests;
pub mod sse;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Prompt tokens billed at the plain input rate.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_write_tokens)
    }

    /// Output tokens billed at the plain output rate.
    pub fn non_reasoning_output_tokens(&self) -> u64 {
        self.output_tokens.saturating_sub(self.reasoning_tokens)
    }
}

/// Where a record's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider reported usage.
    #[default]
    Reported,
    /// Usage was missing (or partly missing) and was counted locally with tiktoken.
    Estimated,
    /// No tokens: a failed call, or an endpoint that is not metered.
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}
