//! Budgets as the usage endpoints show them: a key holder's on the proxy port
//! (`GET /tollgate/v1/usage`), every budget on the admin port (`GET /budgets`). Money is
//! written as exact decimal strings, never as floats.

use super::{Budgets, Status};
use crate::config::{Budget, BudgetAction, Scope, Spend};
use crate::money::NanoUsd;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// One budget's current period.
#[derive(Debug, Serialize)]
pub struct BudgetView<'a> {
    pub name: &'a str,
    pub period: &'static str,
    pub period_start: String,
    pub period_end: String,
    pub spend: NanoUsd,
    pub reserved: NanoUsd,
    pub limit: NanoUsd,
    /// `limit - spend - reserved`: negative once an `alert` budget is past its amount.
    pub remaining: NanoUsd,
    pub forecast: NanoUsd,
    pub action: &'static str,
    /// The rule a `downgrade` budget plans requests with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgrade_to: Option<&'a str>,
    /// The fields the budget's scope sets, named as in the config.
    pub scope: BTreeMap<&'static str, &'a str>,
    /// Requests the budget refused since this process started (admin view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejections: Option<u64>,
}

/// The budgets of `spend` that `keep` selects, with their state at `now`, in config order.
pub fn views<'a>(
    budgets: &Budgets,
    spend: &'a Spend,
    now: DateTime<Utc>,
    keep: impl Fn(&Budget) -> bool,
) -> Vec<BudgetView<'a>> {
    // `statuses` lists every configured budget, in config order.
    spend
        .budgets
        .iter()
        .zip(budgets.statuses(spend, now))
        .filter(|(b, _)| keep(b))
        .map(|(b, s)| view(b, &s))
        .collect()
}

fn view<'a>(b: &'a Budget, s: &Status) -> BudgetView<'a> {
    let (action, downgrade_to) = match &b.action {
        BudgetAction::Alert => ("alert", None),
        BudgetAction::Block => ("block", None),
        BudgetAction::Downgrade(rule) => ("downgrade", Some(rule.as_str())),
    };
    BudgetView {
        name: &b.name,
        period: b.period.as_str(),
        period_start: rfc3339(s.start),
        period_end: rfc3339(s.end),
        spend: s.spend,
        reserved: s.reserved,
        limit: s.limit,
        remaining: s.remaining(),
        forecast: s.forecast,
        action,
        downgrade_to,
        scope: scope(&b.scope),
        rejections: None,
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The scope's fields under their config names (`key`, where records say `key_name`).
fn scope(s: &Scope) -> BTreeMap<&'static str, &str> {
    s.fields()
        .into_iter()
        .map(|(name, v)| (if name == "key_name" { "key" } else { name }, v))
        .collect()
}
