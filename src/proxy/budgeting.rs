//! Budgets in a request's path, after planning: the request's largest possible cost is
//! reserved against every budget whose scope holds it. A blocking budget it does not fit
//! refuses it (429); a downgrading one past its amount replans it with that budget's rule.
//! The reservation is settled to the real cost when the record is made (`commit`).

use super::admit::Admitted;
use super::judging::JUDGE_MAX_TOKENS;
use super::plan::{self, Mode, Plan};
use super::{RequestCtx, Tollgate};
use crate::alerts::{Alert, AlertKind};
use crate::budget::{Budgets, Crossing, CrossingKind};
use crate::config::{BudgetAction, Validated};
use crate::error::ProxyError;
use crate::money::NanoUsd;
use crate::usage::Usage;
use chrono::{DateTime, Utc};

/// Names the tightest budget's amount left (USD) when the request was admitted.
pub const REMAINING_HEADER: &str = "x-tollgate-budget-remaining-usd";

/// Output tokens reserved for a request that sets no limit, where nothing else bounds it
/// (neither its rule nor the price book's `max_output_tokens` for the model).
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4096;

/// Reserves the request's cost, or refuses it; returns the plan to carry out (another
/// rule's when a budget downgrades the request).
pub async fn reserve(
    tg: &Tollgate,
    ctx: &mut RequestCtx,
    req: &Admitted,
    plan: Plan,
) -> Result<Plan, ProxyError> {
    let cfg = ctx.config.clone();
    let spend = &cfg.spend;
    if Budgets::in_scope(spend, &ctx.attribution).next().is_none() {
        return Ok(plan);
    }
    let now = Utc::now();
    req.counted_input_tokens().await;
    let mut plan = plan;
    let mut cost = max_cost(&cfg, req, &plan, now);
    if let Some(over) = tg.budgets.downgrade(spend, &ctx.attribution, cost, now)
        && let BudgetAction::Downgrade(rule) = &over.action
    {
        tracing::debug!(request_id = %ctx.request_id, budget = %over.budget, rule, "budget spent; downgrading");
        plan = plan::with_rule(&cfg, ctx, req, rule)?;
        ctx.policy = plan.policy_name().to_string();
        ctx.counterfactual_model = plan.counterfactual_model.clone();
        ctx.cache.give_up();
        cost = max_cost(&cfg, req, &plan, now);
    }
    let shared = match tg.budgets.redis(spend) {
        Some(redis) => {
            tg.budgets
                .reserve_shared(redis, spend, &ctx.attribution, cost, now)
                .await
        }
        None => None,
    };
    // Without an answer from Redis, this process's own accounts decide.
    let reserved = shared.unwrap_or_else(|| tg.budgets.reserve(spend, &ctx.attribution, cost, now));
    match reserved {
        Ok(reservation) => {
            ctx.budget = Some(reservation);
            Ok(plan)
        }
        Err(over) => {
            tg.budgets.rejected(&over.budget);
            Err(ProxyError::BudgetExceeded {
                budget: over.budget,
                spend: over.spend,
                limit: over.limit,
                resets_at: over.resets_at,
            })
        }
    }
}

/// The most the plan can cost: every cascade step (and its LLM judge) may be called; a
/// route ends with one answer, so its dearest target bounds it. Input is the request's
/// counted tokens; output the request's limit or the rule's cap (the smaller of the two),
/// else each target's own `max_output_tokens` from the price book, else
/// [`DEFAULT_OUTPUT_RESERVE`]. A model without a price adds nothing.
fn max_cost(cfg: &Validated, req: &Admitted, plan: &Plan, now: DateTime<Utc>) -> NanoUsd {
    let input = req.estimated_input_tokens();
    let limit = match (req.max_output, plan.max_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let output = |model: &str| {
        limit
            .or_else(|| cfg.prices.max_output_tokens(model))
            .unwrap_or(DEFAULT_OUTPUT_RESERVE)
    };
    let cost = |model: &str, input_tokens: u64, output_tokens: u64| {
        cfg.prices
            .lookup(model, now)
            .map(|p| {
                p.cost(&Usage {
                    input_tokens,
                    output_tokens,
                    ..Usage::default()
                })
            })
            .unwrap_or_default()
    };
    let calls = plan
        .targets
        .iter()
        .map(|t| cost(&t.model, input, output(&t.model)));
    match plan.mode {
        Mode::Route => calls.max().unwrap_or_default(),
        Mode::Cascade { .. } => {
            let steps: NanoUsd = calls.sum();
            // The judge reads its prompt, the request and the step's answer, for every step
            // but the last.
            let judges = plan
                .judges()
                .and_then(|j| j.llm.as_ref())
                .map_or(NanoUsd::ZERO, |llm| {
                    let judged = &plan.targets[..plan.targets.len().saturating_sub(1)];
                    judged
                        .iter()
                        .map(|t| {
                            let read = input + output(&t.model) + llm.prompt.len() as u64;
                            cost(&llm.target.model, read, JUDGE_MAX_TOKENS)
                        })
                        .sum()
                });
            steps + judges
        }
    }
}

/// Settles the request's reservation to what it cost, and sends the alerts this crossed.
pub fn settle(tg: &Tollgate, ctx: &mut RequestCtx, cost: Option<NanoUsd>) {
    let Some(reservation) = ctx.budget.as_mut() else {
        return;
    };
    let crossings = reservation.settle(&ctx.config.spend, cost.unwrap_or_default(), Utc::now());
    for crossing in crossings {
        alert(tg, ctx, crossing);
    }
}

fn alert(tg: &Tollgate, ctx: &RequestCtx, c: Crossing) {
    match c.kind {
        CrossingKind::Threshold(pct) => tracing::warn!(
            budget = %c.budget, percent = pct, spend = %c.spend, limit = %c.limit,
            request_id = %ctx.request_id, "budget threshold reached"
        ),
        CrossingKind::Forecast { projected, on } => tracing::warn!(
            budget = %c.budget, projected = %projected, limit = %c.limit, on = %on,
            "budget forecast to run out before the period ends"
        ),
    }
    let (Some(alerter), Some(budget)) = (
        &tg.alerts,
        ctx.config.spend.budgets.iter().find(|b| b.name == c.budget),
    ) else {
        return;
    };
    alerter.fire(Alert {
        budget: c.budget,
        kind: match c.kind {
            CrossingKind::Threshold(percent) => AlertKind::Threshold { percent },
            CrossingKind::Forecast { projected, on } => AlertKind::Forecast { projected, on },
        },
        period: budget.period,
        period_start: c.start,
        resets_at: c.end,
        spend: c.spend,
        limit: c.limit,
        scope: budget
            .scope
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        at: Utc::now(),
    });
}

/// [`REMAINING_HEADER`] for a request that reserved nothing (a cache hit): what the tightest
/// budget in scope has left now.
pub fn remaining_now(tg: &Tollgate, ctx: &RequestCtx) -> Option<String> {
    let spend = &ctx.config.spend;
    let names: Vec<&str> = Budgets::in_scope(spend, &ctx.attribution)
        .map(|b| b.name.as_str())
        .collect();
    if names.is_empty() {
        return None;
    }
    tg.budgets
        .statuses(spend, Utc::now())
        .iter()
        .filter(|s| names.contains(&s.budget.as_str()))
        .map(|s| s.remaining())
        .min()
        .map(|left| left.to_string())
}

/// The value of [`REMAINING_HEADER`] for this request, when a budget holds it.
pub fn remaining(ctx: &RequestCtx) -> Option<String> {
    let left = ctx.budget.as_ref()?.remaining()?;
    Some(left.to_string())
}
