//! The client-facing APIs: which wire format a path speaks and whether it is metered.

/// Longest model name accepted from a client or recorded from a provider: names reach
/// records and metric labels. Real names, fine-tuned and deployment names included, are far
/// shorter.
pub const MAX_NAME_LEN: usize = 256;

/// Wire format of the API a client called; errors are written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
}

/// The endpoints Tollgate understands. Anything else under `/v1/` passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    /// Anthropic's token counter: routed by model, never metered.
    CountTokens,
    /// Any other `/v1/` path: forwarded and recorded with zero tokens.
    Other,
}

impl Endpoint {
    /// The endpoints with a path of their own, each with it.
    pub const KNOWN: [(Endpoint, &'static str); 6] = [
        (Endpoint::ChatCompletions, "/v1/chat/completions"),
        (Endpoint::Completions, "/v1/completions"),
        (Endpoint::Embeddings, "/v1/embeddings"),
        (Endpoint::Responses, "/v1/responses"),
        (Endpoint::Messages, "/v1/messages"),
        (Endpoint::CountTokens, "/v1/messages/count_tokens"),
    ];

    /// Classifies a request path (query string excluded). `None` for paths outside `/v1/`.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.trim_end_matches('/');
        if let Some((e, _)) = Endpoint::KNOWN.iter().find(|(_, p)| *p == path) {
            return Some(*e);
        }
        path.starts_with("/v1/").then_some(Endpoint::Other)
    }

    pub fn format(self, headers: &http::HeaderMap) -> ApiFormat {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => ApiFormat::Anthropic,
            Endpoint::Other if headers.contains_key("anthropic-version") => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    /// Whether the request body is JSON naming a `model` to route by.
    pub fn has_model(self) -> bool {
        !matches!(self, Endpoint::Other)
    }

    /// Whether responses carry token usage to record.
    pub fn is_metered(self) -> bool {
        !matches!(self, Endpoint::Other | Endpoint::CountTokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/messages/count_tokens"),
            Some(Endpoint::CountTokens)
        );
        assert_eq!(Endpoint::from_path("/v1/models"), Some(Endpoint::Other));
        assert_eq!(Endpoint::from_path("/admin"), None);
        assert!(!Endpoint::CountTokens.is_metered());
        assert!(Endpoint::CountTokens.has_model());
    }
}
