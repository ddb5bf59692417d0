//! What one request carries from hook to hook.

use crate::api::ApiFormat;
use crate::attribution::Attribution;
use crate::usage::{Usage, UsageSource};
use chrono::{DateTime, Utc};
use std::time::Instant;

pub struct RequestCtx {
    pub started: Instant,
    pub ts: DateTime<Utc>,
    pub request_id: String,
    pub format: ApiFormat,
    pub endpoint: String,
    pub attribution: Attribution,
    pub provider: String,
    pub requested_model: String,
    pub upstream_model: String,
    pub stream: bool,
    /// Status the client received (0 until a response was written).
    pub status: u16,
    /// The response header has gone out; errors can no longer be answered.
    pub response_started: bool,
    pub ttfb_ms: Option<u64>,
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// Provider-reported model, when it names one.
    pub served_model: Option<String>,
    pub error: Option<String>,
    /// Whether this request is recorded (paths outside `/v1/` are not).
    pub recorded: bool,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            ts: Utc::now(),
            request_id: String::new(),
            format: ApiFormat::OpenAi,
            endpoint: String::new(),
            attribution: Attribution::default(),
            provider: String::new(),
            requested_model: String::new(),
            upstream_model: String::new(),
            stream: false,
            status: 0,
            response_started: false,
            ttfb_ms: None,
            usage: Usage::default(),
            usage_source: UsageSource::None,
            served_model: None,
            error: None,
            recorded: false,
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
