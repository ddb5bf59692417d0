//! The proxy: one pingora `ProxyHttp` whose hooks live one per file.
//!
//! `request_filter` does the work, in steps of a module each: `admit` (key, attribution,
//! the whole body: pingora's retry buffer holds only 64 KiB), `limiting` (the request
//! charged to the rate limits in its scope, or refused), `plan` (the matching policy
//! rule turns the request into ordered targets), `caching` (a hit is delivered at once; a
//! miss leads the flight whose answer is stored), `budgeting` (the largest possible cost
//! reserved against the budgets in scope), `attempts` (upstream calls through
//! pingora's connector, with fallbacks, retries, a target `health` breaker and judged
//! cascade steps), and delivery: `relay` streams an answer through as it arrives, `held`
//! keeps one whole for the judges (`judging` makes the LLM judge's call) and replays it when
//! accepted; metering as bytes pass. The records are written before the client sees the end of its response
//! (`commit`); `logging` records what ended otherwise.
//! `fail_to_proxy` only stays quiet when a response was already under way.

mod admit;
mod attempts;
mod body;
mod budgeting;
mod caching;
mod commit;
pub mod connections;
mod ctx;
mod fail_to_proxy;
mod health;
mod held;
mod judging;
mod limiting;
mod logging;
mod outcome;
pub(crate) mod outcomes;
mod plan;
mod relay;
mod request_filter;
mod rewrite;
mod upstream;
mod usage;

pub use ctx::RequestCtx;

use crate::budget::Budgets;
use crate::cache::ResponseCache;
use crate::config::Validated;
use crate::ledger::Ledger;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// State shared by every request.
pub struct Tollgate {
    /// Swapped whole on reload; a request keeps the config it started with.
    pub config: Arc<ArcSwap<Validated>>,
    pub ledger: Arc<Ledger>,
    pub metrics: Metrics,
    /// What writes a request's records, shared with every request context so a request the
    /// shutdown cuts off is still recorded when its context is dropped.
    recorder: Arc<commit::Recorder>,
    /// The response cache, when `cache.enabled` at start (its bounds apply at restart).
    pub cache: Option<Arc<ResponseCache>>,
    pub budgets: Arc<Budgets>,
    /// Sends the alerts budgets cross, when webhooks are configured.
    pub alerts: Option<crate::alerts::Alerter>,
    /// Rate-limit counters: kept across reloads, by limit name.
    pub limits: Arc<RateLimiter>,
    connector: Connector,
    resolver: upstream::Resolver,
    health: health::Health,
}

impl Tollgate {
    pub fn new(
        config: Arc<ArcSwap<Validated>>,
        ledger: Arc<Ledger>,
        metrics: Metrics,
        cache: Option<Arc<ResponseCache>>,
        budgets: Arc<Budgets>,
        limits: Arc<RateLimiter>,
    ) -> Tollgate {
        Tollgate {
            config,
            recorder: Arc::new(commit::Recorder {
                ledger: ledger.clone(),
                metrics: metrics.clone(),
            }),
            ledger,
            metrics,
            cache,
            budgets,
            alerts: None,
            limits,
            connector: Connector::new(None),
            resolver: upstream::Resolver::default(),
            health: health::Health::default(),
        }
    }

    /// Sends budget alerts through `alerter`.
    pub fn with_alerts(mut self, alerter: crate::alerts::Alerter) -> Tollgate {
        self.alerts = Some(alerter);
        self
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.config.load_full()).recorded_by(self.recorder.clone())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        request_filter::run(self, session, ctx).await
    }

    /// Never reached: `request_filter` answers every request itself.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "requests are answered in request_filter",
        ))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        fail_to_proxy::run(self, session, e, ctx).await
    }

    /// Called on every request of a guarded connection (see `connections`), right after its
    /// header was read: the header deadline stops here.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        conn_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        connections::header_read(conn_ctx);
    }

    /// Failures Tollgate explained are already logged (upstream failures at warn, client
    /// aborts at debug); pingora's own line would repeat them at error level.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        ctx.error.is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        logging::run(self, session, e, ctx).await
    }
}
