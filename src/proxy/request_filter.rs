//! `request_filter`: admit the request, plan its route, make its attempts and deliver the
//! answer. Every request is answered here; nothing falls through to pingora's own upstream
//! path.

use super::caching::CACHE_HEADER;
use super::outcome::Outcome;
use super::relay::ROUTE_HEADER;
use super::{
    RequestCtx, Tollgate, admit, attempts, budgeting, caching, commit, limiting, outcomes, plan,
    usage,
};
use crate::api::ApiFormat;
use crate::attribution::REQUEST_ID_HEADER;
use crate::error::ProxyError;
use crate::record::Verdict;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

pub async fn run(tg: &Tollgate, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    // Pipelined requests (sent before the previous answer was read) are answered in order
    // (RFC 9112 §9.3.2) rather than dropped with the connection.
    if let ServerSession::H1(h1) = session.as_downstream_mut() {
        h1.set_pipelining_enabled(true);
    }
    ctx.request_id = request_id(session);
    match handle(tg, session, ctx).await {
        Ok(()) => Ok(true),
        Err(Outcome::Reply(err)) => {
            ctx.status = err.status();
            ctx.fail(err.label());
            if err.status() >= 500 {
                tracing::warn!(request_id = %ctx.request_id, error = %err, "request failed");
            } else {
                tracing::debug!(request_id = %ctx.request_id, error = %err, "request refused");
            }
            commit::commit(tg, ctx);
            write_error(session, ctx, &err).await?;
            Ok(true)
        }
        Err(Outcome::Abort(reason)) => {
            // A response is under way or the client is gone: closing is all that is left.
            Err(Error::explain(ErrorType::ConnectionClosed, reason))
        }
    }
}

/// The client's `x-request-id` when it is sane, else a fresh UUIDv7.
fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Admission, planning, the cache, budgets, attempts; delivery and the record happen inside
/// the attempts, or at once for a cache hit.
async fn handle(tg: &Tollgate, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Outcome> {
    if usage::is_usage(session) {
        // A key's own budgets: no LLM call, so nothing below applies.
        return usage::answer(tg, session, ctx).await;
    }
    if outcomes::is_outcomes(session) {
        // Business results reported for earlier requests: not an LLM call either.
        return outcomes::answer(tg, session, ctx).await;
    }
    let req = admit::admit(tg, session, ctx).await?;
    limiting::check(tg, ctx, &req).await?;
    let cfg = ctx.config.clone();
    if cfg.policies.matches_input_tokens() {
        // Counted here, where it can wait off the async worker; planning is synchronous.
        req.counted_input_tokens().await;
    }
    let plan = plan::make(&cfg, ctx, &req)?;
    ctx.policy = plan.policy_name().to_string();
    ctx.counterfactual_model = plan.counterfactual_model.clone();
    if let Some(hit) = caching::consult(tg, session, ctx, &req, &plan).await? {
        // A hit spends nothing: it is served whatever the budgets say.
        return caching::serve(tg, session, ctx, hit).await;
    }
    let plan = budgeting::reserve(tg, ctx, &req, plan).await?;
    attempts::run(tg, session, ctx, &req, plan).await
}

/// Writes an error response in the client's wire format.
pub async fn write_error(session: &mut Session, ctx: &RequestCtx, err: &ProxyError) -> Result<()> {
    let body = err.body(ctx.format);
    let mut resp = ResponseHeader::build(err.status(), Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    if ctx.format == ApiFormat::Anthropic {
        resp.insert_header("request-id", ctx.request_id.as_str())?;
    }
    if !ctx.policy.is_empty() {
        resp.insert_header(ROUTE_HEADER, ctx.route_header(Verdict::Failed))?;
    }
    if let Some(status) = ctx.cache.status {
        resp.insert_header(CACHE_HEADER, status.as_str())?;
    }
    if let Some(secs) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
