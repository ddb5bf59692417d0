//! What one request carries from hook to hook.

use super::caching::CacheCtx;
use super::commit::{self, Recorder};
use crate::api::ApiFormat;
use crate::attribution::Attribution;
use crate::config::Validated;
use crate::record::{Role, Verdict};
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
    /// The upstream call whose answer the client gets, once it started; its usage, status
    /// and error are the fields of this context.
    pub current: Option<Started>,
    /// The status that call answered with (0 until it answered).
    pub upstream_status: u16,
    /// Calls made before it: failed, retried, or held and rejected.
    pub attempts: Vec<FinishedAttempt>,
    /// Its answer was held and accepted by a cascade's judges before the client got it.
    pub accepted: bool,
    /// The routing rule that planned the request; empty when none matched.
    pub policy: String,
    /// The model the request's savings are measured against (see `plan::Plan`).
    pub counterfactual_model: String,
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
    pub cache: CacheCtx,
    /// The request's budget reservation, when a budget holds it.
    pub budget: Option<crate::budget::Reservation>,
    /// Writes the record if the request is dropped unrecorded (see `Drop`).
    recorder: Option<Arc<Recorder>>,
    /// What rate limits charged the request, settled when it is recorded.
    pub limits: Option<crate::limits::Grant>,
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
            current: None,
            upstream_status: 0,
            attempts: Vec::new(),
            accepted: false,
            policy: String::new(),
            counterfactual_model: String::new(),
            response_started: false,
            ttfb_ms: None,
            latency_ms: None,
            usage: Usage::default(),
            usage_source: UsageSource::None,
            served_model: None,
            error: None,
            recorded: false,
            committed: false,
            cache: CacheCtx::default(),
            budget: None,
            recorder: None,
            limits: None,
        }
    }

    pub fn recorded_by(mut self, recorder: Arc<Recorder>) -> RequestCtx {
        self.recorder = Some(recorder);
        self
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

/// Every request path ends in `commit` or the `logging` hook, which record the request. A
/// request whose task is dropped instead (the shutdown's grace period ended while it ran)
/// is recorded here, with what is known: its usage so far is not (the meter went with the
/// task), and its error says `shutdown`.
impl Drop for RequestCtx {
    fn drop(&mut self) {
        if !self.recorded || self.committed {
            return;
        }
        let Some(recorder) = self.recorder.take() else {
            return;
        };
        self.fail("shutdown");
        if self.status == 0 {
            self.status = 503;
        }
        commit::write(&recorder, self);
    }
}

/// When an upstream call started, and why it was made.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub ts: DateTime<Utc>,
    pub at: Instant,
    pub role: Role,
}

impl Started {
    pub fn now(role: Role) -> Started {
        Started {
            ts: Utc::now(),
            at: Instant::now(),
            role,
        }
    }
}

/// An upstream call whose answer the client did not get.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub started: Started,
    pub provider: String,
    pub model: String,
    pub status: u16,
    pub usage: Usage,
    pub usage_source: UsageSource,
    pub ttfb_ms: Option<u64>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub verdict: Verdict,
    /// The judge that rejected it.
    pub judge: String,
}

impl FinishedAttempt {
    /// A call that failed before it produced anything countable.
    pub fn failed(
        started: Started,
        provider: &str,
        model: &str,
        status: u16,
        error: String,
    ) -> FinishedAttempt {
        FinishedAttempt {
            started,
            provider: provider.to_string(),
            model: model.to_string(),
            status,
            usage: Usage::default(),
            usage_source: UsageSource::None,
            ttfb_ms: None,
            latency_ms: started.at.elapsed().as_millis() as u64,
            error: Some(error),
            verdict: Verdict::Failed,
            judge: String::new(),
        }
    }
}

impl RequestCtx {
    /// `x-tollgate-route`: every call made, in the order they were made, as
    /// `provider/model=verdict` (`:judge` naming the judge that rejected an answer).
    pub fn route_header(&self, answering: Verdict) -> String {
        let mut calls: Vec<(Instant, String)> = self
            .attempts
            .iter()
            .map(|a| {
                let judge = if a.judge.is_empty() {
                    String::new()
                } else {
                    format!(":{}", a.judge)
                };
                (
                    a.started.at,
                    format!("{}/{}={}{judge}", a.provider, a.model, a.verdict.as_str()),
                )
            })
            .collect();
        if let Some(current) = self.current {
            calls.push((
                current.at,
                format!(
                    "{}/{}={}",
                    self.provider,
                    self.upstream_model,
                    answering.as_str()
                ),
            ));
        }
        calls.sort_by_key(|(at, _)| *at);
        calls
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
