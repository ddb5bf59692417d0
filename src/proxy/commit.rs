//! Writing a request's one record: priced with the request's own config snapshot, counted in
//! the metrics, and appended to the ledger before the client sees the end of its response.

use super::{RequestCtx, Tollgate};
use crate::api::MAX_NAME_LEN;
use crate::attribution::bounded;
use crate::money::NanoUsd;
use crate::record::{AttemptRecord, Record, Role, Verdict};
use crate::usage::UsageSource;

/// Appends the request's record once; later calls do nothing.
pub fn commit(tg: &Tollgate, ctx: &mut RequestCtx) {
    if !ctx.recorded || ctx.committed {
        return;
    }
    ctx.committed = true;
    ctx.mark_end();
    // The provider names the model it served; bound it like a client-sent name.
    let model = ctx
        .served_model
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| bounded(m, MAX_NAME_LEN))
        .unwrap_or_else(|| ctx.upstream_model.clone());
    let cost = price(ctx, &model);
    let attempt = ctx.upstream_call.map(|(ts, started)| AttemptRecord {
        ts,
        request_id: ctx.request_id.clone(),
        attempt: 1,
        role: Role::Primary,
        policy: String::new(),
        team: ctx.attribution.team.clone(),
        project: ctx.attribution.project.clone(),
        env: ctx.attribution.env.clone(),
        user: ctx.attribution.user.clone(),
        feature: ctx.attribution.feature.clone(),
        key_name: ctx.attribution.key_name.clone(),
        endpoint: ctx.endpoint.clone(),
        provider: ctx.provider.clone(),
        model: model.clone(),
        stream: ctx.stream,
        status: ctx.upstream_status,
        input_tokens: ctx.usage.input_tokens,
        output_tokens: ctx.usage.output_tokens,
        cached_input_tokens: ctx.usage.cached_input_tokens,
        cache_write_tokens: ctx.usage.cache_write_tokens,
        reasoning_tokens: ctx.usage.reasoning_tokens,
        usage_source: ctx.usage_source,
        cost_usd: cost,
        latency_ms: started.elapsed().as_millis() as u64,
        ttfb_ms: ctx.ttfb_ms,
        error: ctx.error.clone(),
        verdict: if ctx.error.as_deref() == Some("client_disconnected") {
            Verdict::Aborted
        } else if ctx.upstream_status == 0 {
            Verdict::Failed
        } else {
            Verdict::Served
        },
        judge: String::new(),
    });
    let record = Record {
        ts: ctx.ts,
        request_id: ctx.request_id.clone(),
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
        latency_ms: ctx.latency_ms.unwrap_or_default(),
        ttfb_ms: ctx.ttfb_ms,
        error: ctx.error.clone(),
        policy: String::new(),
        attempts: u16::from(attempt.is_some()),
        escalations: 0,
        counterfactual_cost_usd: cost,
    };
    tg.metrics.observe(&record);
    // A failed append is counted and logged by the ledger; the client is still answered.
    let _ = tg.ledger.append(&record, attempt.as_slice());
}

/// A call with no tokens costs nothing; one with tokens but no price has unknown cost.
fn price(ctx: &RequestCtx, model: &str) -> Option<NanoUsd> {
    if ctx.usage_source == UsageSource::None {
        return Some(NanoUsd::ZERO);
    }
    let prices = &ctx.config.prices;
    prices
        .lookup(model, ctx.ts)
        .or_else(|| prices.lookup(&ctx.upstream_model, ctx.ts))
        .map(|p| p.cost(&ctx.usage))
}
