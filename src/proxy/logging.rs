//! `logging`: the last hook of every request. Prices the call, appends its record to the
//! ledger (never waiting on disk) and counts it in the metrics.

use super::{RequestCtx, Tollgate};
use crate::money::NanoUsd;
use crate::record::Record;
use crate::usage::UsageSource;
use pingora::prelude::*;
use pingora::proxy::Session;

pub async fn run(tg: &Tollgate, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    if !ctx.recorded {
        return;
    }
    if ctx.error.is_none() {
        if let Some(e) = e {
            ctx.error = Some(e.etype().as_str().to_string());
        }
    }
    let model = ctx
        .served_model
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| ctx.upstream_model.clone());
    let cost = price(tg, ctx, &model);
    let record = Record {
        ts: ctx.ts,
        request_id: std::mem::take(&mut ctx.request_id),
        team: std::mem::take(&mut ctx.attribution.team),
        project: std::mem::take(&mut ctx.attribution.project),
        env: std::mem::take(&mut ctx.attribution.env),
        user: std::mem::take(&mut ctx.attribution.user),
        feature: std::mem::take(&mut ctx.attribution.feature),
        workflow_id: std::mem::take(&mut ctx.attribution.workflow_id),
        tags: std::mem::take(&mut ctx.attribution.tags),
        key_name: std::mem::take(&mut ctx.attribution.key_name),
        provider: std::mem::take(&mut ctx.provider),
        endpoint: std::mem::take(&mut ctx.endpoint),
        requested_model: std::mem::take(&mut ctx.requested_model),
        model,
        stream: ctx.stream,
        status: ctx.status,
        input_tokens: ctx.usage.input_tokens,
        output_tokens: ctx.usage.output_tokens,
        cached_input_tokens: ctx.usage.cached_input_tokens,
        cache_write_tokens: ctx.usage.cache_write_tokens,
        reasoning_tokens: ctx.usage.reasoning_tokens,
        usage_source: ctx.usage_source,
        cost_usd: cost,
        latency_ms: ctx.elapsed_ms(),
        ttfb_ms: ctx.ttfb_ms,
        error: ctx.error.take(),
    };
    tg.metrics.observe(&record);
    tg.ledger.submit(record);
}

/// A call with no tokens costs nothing; one with tokens but no price has unknown cost.
fn price(tg: &Tollgate, ctx: &RequestCtx, model: &str) -> Option<NanoUsd> {
    if ctx.usage_source == UsageSource::None {
        return Some(NanoUsd::ZERO);
    }
    let cfg = tg.config.load();
    cfg.prices
        .lookup(model, ctx.ts)
        .or_else(|| cfg.prices.lookup(&ctx.upstream_model, ctx.ts))
        .map(|p| p.cost(&ctx.usage))
}
