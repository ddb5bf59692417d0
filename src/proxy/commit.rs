//! Writing a request's records: one per upstream call and one for the request, which
//! carries their totals. Priced with the request's own config snapshot, counted in the
//! metrics, and appended to the ledger before the client sees the end of its response.

use super::ctx::FinishedAttempt;
use super::{RequestCtx, Tollgate};
use crate::api::MAX_NAME_LEN;
use crate::attribution::bounded;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::money::NanoUsd;
use crate::record::{AttemptRecord, Record, Verdict};
use crate::usage::{Usage, UsageSource};
use std::sync::Arc;

/// Where records go: the ledger, and the metrics counted from them.
pub struct Recorder {
    pub ledger: Arc<Ledger>,
    pub metrics: Metrics,
}

/// Appends the request's records once, then settles its rate limits and budgets; later
/// calls do nothing.
pub fn commit(tg: &Tollgate, ctx: &mut RequestCtx) {
    if let Some((usage, cost)) = write(&tg.recorder, ctx) {
        super::limiting::settle(tg, ctx, &usage);
        // After the append: budgets shared through ClickHouse tell shipped spend by ledger
        // line.
        super::budgeting::settle(tg, ctx, cost);
    }
}

/// Appends the request's records once, returning its usage and cost totals; `None` when
/// it is not recorded or already was.
pub fn write(rec: &Recorder, ctx: &mut RequestCtx) -> Option<(Usage, Option<NanoUsd>)> {
    if !ctx.recorded || ctx.committed {
        return None;
    }
    ctx.committed = true;
    ctx.mark_end();
    let answering = answering_attempt(ctx);
    let model = answering
        .as_ref()
        .map_or_else(|| ctx.upstream_model.clone(), |a| a.model.clone());
    // In the order the calls were made: a held answer's judge is called after it.
    let mut calls: Vec<&FinishedAttempt> = ctx.attempts.iter().chain(&answering).collect();
    calls.sort_by_key(|c| c.started.at);

    let mut attempts = Vec::with_capacity(calls.len());
    let (mut usage, mut cost, mut source) = (Usage::default(), Some(NanoUsd::ZERO), None);
    for (i, call) in calls.iter().enumerate() {
        // The answering call's model is the one the provider named; when the price book
        // does not know that name, the name it was sent under prices it.
        let fallback =
            (i + 1 == calls.len() && answering.is_some()).then_some(ctx.upstream_model.as_str());
        let call_cost = price(ctx, call, fallback);
        usage.input_tokens += call.usage.input_tokens;
        usage.output_tokens += call.usage.output_tokens;
        usage.cached_input_tokens += call.usage.cached_input_tokens;
        usage.cache_write_tokens += call.usage.cache_write_tokens;
        usage.reasoning_tokens += call.usage.reasoning_tokens;
        cost = cost.zip(call_cost).map(|(a, b)| a + b);
        source = Some(worse(source, call.usage_source));
        attempts.push(attempt_record(ctx, i, call, call_cost));
    }
    ctx.cache.note_spent(usage, cost);
    // A hit spent nothing and saved what the request it replays spent.
    let hit = ctx.cache.hit.as_deref();
    // What the answer would have cost on the model the request would have gone to; a hit
    // was not routed, so routing saved nothing on it.
    let counterfactual = if hit.is_some() {
        Some(NanoUsd::ZERO)
    } else {
        answering.as_ref().and_then(|a| {
            if a.usage_source == UsageSource::None {
                return Some(NanoUsd::ZERO);
            }
            ctx.config
                .prices
                .lookup(&ctx.counterfactual_model, ctx.ts)
                .map(|p| p.cost(&a.usage))
        })
    };
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
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_input_tokens: usage.cached_input_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        usage_source: source.unwrap_or(UsageSource::None),
        cost_usd: cost,
        latency_ms: ctx.latency_ms.unwrap_or_default(),
        ttfb_ms: ctx.ttfb_ms,
        error: ctx.error.clone(),
        policy: std::mem::take(&mut ctx.policy),
        attempts: attempts.len() as u16,
        escalations: attempts
            .iter()
            .filter(|a| a.verdict == Verdict::Rejected)
            .count() as u16,
        counterfactual_cost_usd: counterfactual,
        cache_hit: hit.is_some(),
        saved_input_tokens: hit.map_or(0, |h| h.usage.input_tokens),
        saved_output_tokens: hit.map_or(0, |h| h.usage.output_tokens),
        saved_cost_usd: hit.map_or(Some(NanoUsd::ZERO), |h| h.cost),
    };
    rec.metrics.observe(&record, &attempts);
    // A failed append is counted and logged by the ledger; the client is still answered.
    let _ = rec.ledger.append(&record, &attempts);
    Some((usage, cost))
}

/// The call whose answer (or failure) the client got, from the context's fields.
fn answering_attempt(ctx: &RequestCtx) -> Option<FinishedAttempt> {
    let started = ctx.current?;
    // The provider names the model it served; bound it like a client-sent name.
    let model = ctx
        .served_model
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| bounded(m, MAX_NAME_LEN))
        .unwrap_or_else(|| ctx.upstream_model.clone());
    let verdict = if ctx.error.as_deref() == Some("client_disconnected") {
        Verdict::Aborted
    } else if ctx.upstream_status == 0 {
        Verdict::Failed
    } else if ctx.accepted {
        Verdict::Accepted
    } else {
        Verdict::Served
    };
    Some(FinishedAttempt {
        started,
        provider: ctx.provider.clone(),
        model,
        status: ctx.upstream_status,
        usage: ctx.usage,
        usage_source: ctx.usage_source,
        ttfb_ms: ctx.ttfb_ms,
        latency_ms: started.at.elapsed().as_millis() as u64,
        error: ctx.error.clone(),
        verdict,
        judge: String::new(),
    })
}

fn attempt_record(
    ctx: &RequestCtx,
    i: usize,
    call: &FinishedAttempt,
    cost: Option<NanoUsd>,
) -> AttemptRecord {
    let a = &ctx.attribution;
    AttemptRecord {
        ts: call.started.ts,
        request_id: ctx.request_id.clone(),
        attempt: i as u16 + 1,
        role: call.started.role,
        policy: ctx.policy.clone(),
        team: a.team.clone(),
        project: a.project.clone(),
        env: a.env.clone(),
        user: a.user.clone(),
        feature: a.feature.clone(),
        key_name: a.key_name.clone(),
        endpoint: ctx.endpoint.clone(),
        provider: call.provider.clone(),
        model: call.model.clone(),
        stream: ctx.stream,
        status: call.status,
        input_tokens: call.usage.input_tokens,
        output_tokens: call.usage.output_tokens,
        cached_input_tokens: call.usage.cached_input_tokens,
        cache_write_tokens: call.usage.cache_write_tokens,
        reasoning_tokens: call.usage.reasoning_tokens,
        usage_source: call.usage_source,
        cost_usd: cost,
        latency_ms: call.latency_ms,
        ttfb_ms: call.ttfb_ms,
        error: call.error.clone(),
        verdict: call.verdict,
        judge: call.judge.clone(),
    }
}

/// A call with no tokens costs nothing; one with tokens but no price has unknown cost.
fn price(ctx: &RequestCtx, call: &FinishedAttempt, fallback: Option<&str>) -> Option<NanoUsd> {
    if call.usage_source == UsageSource::None {
        return Some(NanoUsd::ZERO);
    }
    let prices = &ctx.config.prices;
    prices
        .lookup(&call.model, ctx.ts)
        .or_else(|| fallback.and_then(|m| prices.lookup(m, ctx.ts)))
        .map(|p| p.cost(&call.usage))
}

/// The least exact of two usage sources: a total is only as good as its weakest part.
fn worse(acc: Option<UsageSource>, next: UsageSource) -> UsageSource {
    match (acc, next) {
        (Some(UsageSource::Estimated), _) | (_, UsageSource::Estimated) => UsageSource::Estimated,
        (Some(UsageSource::Reported), _) | (_, UsageSource::Reported) => UsageSource::Reported,
        _ => UsageSource::None,
    }
}
