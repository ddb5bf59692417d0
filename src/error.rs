//! Errors the proxy answers itself, written in the wire format of the API the client called.

use crate::api::ApiFormat;
use bytes::Bytes;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid API key: no virtual key matches the key presented")]
    UnknownKey,
    #[error("missing API key: send a virtual key as `Authorization: Bearer KEY` or `x-api-key`")]
    MissingKey,
    #[error("the model `{0}` does not exist or is not configured on this gateway")]
    UnknownModel(String),
    #[error("no route for path {0}")]
    NotFound(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("upstream {provider} unreachable: {reason}")]
    Upstream { provider: String, reason: String },
    #[error("upstream {provider} timed out: {reason}")]
    UpstreamTimeout { provider: String, reason: String },
    #[error("denied by routing policy `{policy}`: {reason}")]
    PolicyDenied { policy: String, reason: String },
    #[error(
        "budget `{budget}` is spent: {spend} of {limit} USD used or reserved this period; it resets at {}",
        resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )]
    BudgetExceeded {
        budget: String,
        spend: crate::money::NanoUsd,
        limit: crate::money::NanoUsd,
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    #[error("rate limit `{limit}` reached ({rate}); retry after {retry_after} s")]
    RateLimited {
        limit: String,
        /// What the limit allows, and whose counter refused: `10 requests per minute for
        /// team search`.
        rate: String,
        /// Whole seconds until the request would fit.
        retry_after: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadJson(_) | ProxyError::BadRequest(_) => 400,
            ProxyError::UnknownKey | ProxyError::MissingKey => 401,
            ProxyError::UnknownModel(_) | ProxyError::NotFound(_) => 404,
            ProxyError::TooLarge { .. } => 413,
            ProxyError::PolicyDenied { .. } => 403,
            ProxyError::BudgetExceeded { .. } => 429,
            ProxyError::BodyTimeout { .. } => 408,
            ProxyError::RateLimited { .. } => 429,
            ProxyError::Upstream { .. } => 502,
            ProxyError::UpstreamTimeout { .. } => 504,
            ProxyError::Internal(_) => 500,
        }
    }

    /// OpenAI's `error.type` / Anthropic's `error.type`.
    fn kinds(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::BadJson(_) | ProxyError::BadRequest(_) => {
                ("invalid_request_error", "invalid_request_error")
            }
            ProxyError::UnknownKey | ProxyError::MissingKey => {
                ("invalid_request_error", "authentication_error")
            }
            ProxyError::UnknownModel(_) | ProxyError::NotFound(_) => {
                ("invalid_request_error", "not_found_error")
            }
            ProxyError::TooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ProxyError::PolicyDenied { .. } => ("invalid_request_error", "permission_error"),
            // OpenAI's type for a spent quota; Anthropic has no closer one than its 429's.
            ProxyError::BudgetExceeded { .. } => ("insufficient_quota", "rate_limit_error"),
            ProxyError::BodyTimeout { .. } => ("invalid_request_error", "invalid_request_error"),
            ProxyError::RateLimited { .. } => ("rate_limit_error", "rate_limit_error"),
            ProxyError::Upstream { .. } | ProxyError::UpstreamTimeout { .. } => {
                ("upstream_error", "api_error")
            }
            ProxyError::Internal(_) => ("server_error", "api_error"),
        }
    }

    /// OpenAI's machine-readable `error.code`.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::BadJson(_) => "invalid_json",
            ProxyError::BadRequest(_) => "invalid_request",
            ProxyError::UnknownKey => "invalid_api_key",
            ProxyError::MissingKey => "missing_api_key",
            ProxyError::UnknownModel(_) => "model_not_found",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::TooLarge { .. } => "request_too_large",
            ProxyError::PolicyDenied { .. } => "policy_denied",
            ProxyError::BudgetExceeded { .. } => "budget_exceeded",
            ProxyError::BodyTimeout { .. } => "request_timeout",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Upstream { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    /// Seconds the client should wait before retrying (`retry-after`), when known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Short label for records and metrics.
    pub fn label(&self) -> &'static str {
        self.code()
    }

    pub fn body(&self, format: ApiFormat) -> Bytes {
        wire_error(format, self.kinds(), self.code(), &self.to_string())
    }
}

/// An error body in the client's wire format.
pub fn wire_error(
    format: ApiFormat,
    (openai_type, anthropic_type): (&str, &str),
    code: &str,
    message: &str,
) -> Bytes {
    let v = match format {
        ApiFormat::OpenAi => json!({
            "error": { "message": message, "type": openai_type, "param": null, "code": code }
        }),
        ApiFormat::Anthropic => json!({
            "type": "error",
            "error": { "type": anthropic_type, "message": message }
        }),
    };
    Bytes::from(v.to_string())
}

/// The SSE event that tells a streaming client the upstream failed mid-stream, so the SDK
/// raises instead of seeing a clean end.
pub fn stream_error_event(format: ApiFormat, message: &str) -> Bytes {
    let body = wire_error(
        format,
        ("upstream_error", "api_error"),
        "upstream_stream_error",
        message,
    );
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_formats() {
        let e = ProxyError::UnknownModel("gpt-9".into());
        assert_eq!(e.status(), 404);
        let o: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::OpenAi)).unwrap();
        assert_eq!(o["error"]["code"], "model_not_found");
        assert!(o["error"]["message"].as_str().unwrap().contains("gpt-9"));
        let a: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
    }
}
