//! What one request carries from hook to hook.

use crate::api::ApiFormat;
use crate::attribution::Attribution;
use crate::config::Validated;
use crate::usage::{Usage, UsageSource};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Instant;

pub struct RequestCtx {
    pub started: Instant,
    pub ts: DateTime<Utc>,
    /// The config the request started on: routing and pricing use this one snapshot, even
    /// when a reload swaps the config while the request runs.
    pub config: Arc<Validated>,
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
    /// The upstream call, once one was made: when it started, and the status it answered
    /// with (0 until it answered).
    pub upstream_call: Option<(DateTime<Utc>, Instant)>,
    pub upstream_status: u16,
    /// The response header has gone out; errors can no longer be answered.
    pub response_started: bool,
    pub ttfb_ms: Option<u64>,
    /// When the client's exchange ended (its last byte sent, or the abort noticed).
    pub latency_ms: Option<u64>,
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// Provider-reported model, when it names one.
    pub served_model: Option<String>,
    /// A stable code saying why the call failed or ended early (see README, "Errors").
    pub error: Option<String>,
    /// Whether this request is recorded (paths outside `/v1/` are not).
    pub recorded: bool,
    /// The record is in the ledger; nothing may write a second one.
    pub committed: bool,
}

impl RequestCtx {
    pub fn new(config: Arc<Validated>) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            ts: Utc::now(),
            config,
            request_id: String::new(),
            format: ApiFormat::OpenAi,
            endpoint: String::new(),
            attribution: Attribution::default(),
            provider: String::new(),
            requested_model: String::new(),
            upstream_model: String::new(),
            stream: false,
            status: 0,
            upstream_call: None,
            upstream_status: 0,
            response_started: false,
            ttfb_ms: None,
            latency_ms: None,
            usage: Usage::default(),
            usage_source: UsageSource::None,
            served_model: None,
            error: None,
            recorded: false,
            committed: false,
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Notes the moment the client's exchange ended; the first call wins.
    pub fn mark_end(&mut self) {
        if self.latency_ms.is_none() {
            self.latency_ms = Some(self.elapsed_ms());
        }
    }

    /// Sets the error code unless one is already known (the first cause wins).
    pub fn fail(&mut self, code: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(code.into());
        }
    }
}
