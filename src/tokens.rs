//! Local token counting with tiktoken, used when a provider does not report usage.
//!
//! The BPE tables are loaded once per process and shared. Counting large prompts takes
//! milliseconds, so async callers go through [`spawn_count`] to keep the runtime free.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Which BPE table approximates a model's tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    /// o200k for the GPT-4o / o-series / GPT-4.1 / GPT-5 families, cl100k for everything else
    /// (older OpenAI models, and as the closest public table for Anthropic and open models).
    pub fn for_model(model: &str) -> Encoding {
        let m = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_ascii_lowercase();
        let o200k = m.starts_with("gpt-4o")
            || m.starts_with("gpt-4.1")
            || m.starts_with("gpt-4.5")
            || m.starts_with("gpt-5")
            || m.starts_with("chatgpt-4o")
            || m.starts_with("gpt-oss")
            || (m.starts_with('o') && m.as_bytes().get(1).is_some_and(u8::is_ascii_digit));
        if o200k {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    pub fn bpe(self) -> &'static CoreBPE {
        static O200K: OnceLock<CoreBPE> = OnceLock::new();
        static CL100K: OnceLock<CoreBPE> = OnceLock::new();
        match self {
            Encoding::O200k => {
                O200K.get_or_init(|| tiktoken_rs::o200k_base().expect("bundled o200k table loads"))
            }
            Encoding::Cl100k => CL100K
                .get_or_init(|| tiktoken_rs::cl100k_base().expect("bundled cl100k table loads")),
        }
    }

    /// Number of tokens in `text`. Special-token markers are counted as plain text.
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }
}

/// Loads both tables now, so the first request does not pay for it.
pub fn warm_up() {
    Encoding::O200k.bpe();
    Encoding::Cl100k.bpe();
}

/// Runs a counting closure on the blocking pool.
pub async fn spawn_count<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_encoding_by_family() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("openai/gpt-5"), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-3.5-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("claude-sonnet-4-5"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("omni-x"), Encoding::Cl100k);
    }

    #[test]
    fn counts_text() {
        assert_eq!(Encoding::O200k.count(""), 0);
        assert_eq!(Encoding::O200k.count("hello world"), 2);
    }
}
