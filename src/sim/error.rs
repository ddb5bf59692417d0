//! Error bodies in each provider's own wire format.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which provider's conventions a response follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Anthropic,
}

#[derive(Debug)]
pub(crate) struct SimError {
    status: StatusCode,
    message: String,
    /// OpenAI's `param`: the request field at fault.
    param: Option<String>,
    /// OpenAI's machine-readable `code`.
    code: Option<&'static str>,
    /// Seconds for a `retry-after` header.
    retry_after: Option<u64>,
}

impl SimError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        SimError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// An invalid value for a named request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        SimError {
            param: Some(param.to_owned()),
            code: Some("invalid_value"),
            ..Self::invalid(message)
        }
    }

    pub fn missing(flavor: Flavor, field: &str) -> Self {
        match flavor {
            Flavor::OpenAi => SimError {
                param: Some(field.to_owned()),
                code: Some("missing_required_parameter"),
                ..Self::invalid(format!("Missing required parameter: '{field}'."))
            },
            Flavor::Anthropic => Self::invalid(format!("{field}: Field required")),
        }
    }

    pub fn bad_json(flavor: Flavor, e: &serde_json::Error) -> Self {
        match flavor {
            Flavor::OpenAi => Self::invalid(format!(
                "We could not parse the JSON body of your request. (HINT: This likely means you \
                 aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
                 but what was sent was not valid JSON. Error: {e})"
            )),
            Flavor::Anthropic => Self::invalid(format!("There was an error parsing the body: {e}")),
        }
    }

    pub fn not_an_object(flavor: Flavor) -> Self {
        match flavor {
            Flavor::OpenAi => Self::invalid("The request body must be a JSON object."),
            Flavor::Anthropic => Self::invalid("Input should be a valid dictionary"),
        }
    }

    pub fn unauthenticated(flavor: Flavor) -> Self {
        let message = match flavor {
            Flavor::OpenAi => {
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            }
            Flavor::Anthropic => "x-api-key header is required",
        };
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A status requested with `x-sim-fault: status=N`, and `retry-after=N` if given.
    pub fn injected(status: StatusCode, retry_after: Option<u64>) -> Self {
        let code = match status.as_u16() {
            429 => Some("rate_limit_exceeded"),
            401 => Some("invalid_api_key"),
            _ => None,
        };
        SimError {
            code,
            retry_after,
            ..Self::new(
                status,
                format!("Simulated upstream failure (HTTP {}).", status.as_u16()),
            )
        }
    }

    pub fn render(&self, flavor: Flavor, request_id: &str) -> Response {
        let body = match flavor {
            Flavor::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": openai_type(self.status),
                    "param": self.param,
                    "code": self.code,
                }
            }),
            Flavor::Anthropic => {
                let mut body = json!({
                    "type": "error",
                    "error": { "type": anthropic_type(self.status), "message": self.message },
                });
                if !request_id.is_empty() {
                    body["request_id"] = Value::from(request_id);
                }
                body
            }
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "requests",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}
