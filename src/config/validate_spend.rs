//! Checks of spend control: budgets, rate limits, alerts and replica sharing.

use super::RawConfig;
use super::checked::{
    Alerting, Budget, BudgetAction, LimitPer, Period, RateLimit, Scope, Sharing, Spend, Webhook,
    WebhookFormat,
};
use super::spend::{BudgetConfig, RateLimitConfig, ScopeConfig, WebhookConfig};
use super::validate::{Env, redis_settings};
use crate::policy::PolicySet;
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeSet;
use std::time::Duration;

type Bad<'a> = &'a mut dyn FnMut(&Location, String);

/// The checked spend settings; problems go to `bad`.
pub(super) fn spend(
    raw: &RawConfig,
    policies: &PolicySet,
    has_clickhouse: bool,
    bad: &mut impl FnMut(&Location, String),
    env: Env<'_>,
) -> Spend {
    let bad: Bad<'_> = bad;
    let time_zone = match &raw.time_zone {
        None => chrono_tz::UTC,
        Some(tz) => tz.value.parse().unwrap_or_else(|_| {
            bad(
                &tz.referenced,
                format!(
                    "time_zone: {:?} is not an IANA time zone name (such as Europe/Paris)",
                    tz.value
                ),
            );
            chrono_tz::UTC
        }),
    };
    let mut names = BTreeSet::new();
    let budgets = raw
        .budgets
        .iter()
        .filter_map(|b| {
            if !names.insert(b.value.name.value.clone()) {
                bad(
                    &b.value.name.referenced,
                    format!("budget {:?} is defined twice", b.value.name.value),
                );
            }
            budget(b, policies, bad)
        })
        .collect();
    let mut names = BTreeSet::new();
    let rate_limits = raw
        .rate_limits
        .iter()
        .filter_map(|l| {
            if !names.insert(l.value.name.value.clone()) {
                bad(
                    &l.value.name.referenced,
                    format!("rate limit {:?} is defined twice", l.value.name.value),
                );
            }
            rate_limit(l, bad)
        })
        .collect();
    let mut names = BTreeSet::new();
    let webhooks = raw
        .alerts
        .webhooks
        .iter()
        .filter_map(|w| {
            if !names.insert(w.value.name.value.clone()) {
                bad(
                    &w.value.name.referenced,
                    format!("webhook {:?} is defined twice", w.value.name.value),
                );
            }
            webhook(w, bad, env)
        })
        .collect();
    if raw.alerts.forecast_days == 0 {
        bad(
            &Location::UNKNOWN,
            "alerts.forecast_days must be above 0".into(),
        );
    }

    let r = &raw.replicas;
    let redis = r
        .redis
        .as_ref()
        .and_then(|s| redis_settings("replicas.redis", s, &mut |l, m| bad(l, m), env));
    let budget_sharing = sharing(&r.budgets, "replicas.budgets", true, bad);
    let limit_sharing = sharing(&r.rate_limits, "replicas.rate_limits", false, bad);
    if budget_sharing == Sharing::ClickHouse && !has_clickhouse {
        bad(
            &r.budgets.referenced,
            "replicas.budgets: clickhouse needs telemetry.clickhouse".into(),
        );
    }
    for (sharing, field) in [
        (budget_sharing, &r.budgets),
        (limit_sharing, &r.rate_limits),
    ] {
        if sharing == Sharing::Redis && r.redis.is_none() {
            bad(
                &field.referenced,
                "replicas: redis sharing needs replicas.redis".into(),
            );
        }
    }
    if r.refresh_ms == 0 {
        bad(
            &Location::UNKNOWN,
            "replicas.refresh_ms must be above 0".into(),
        );
    }
    Spend {
        time_zone,
        budgets,
        rate_limits,
        alerts: Alerting {
            webhooks,
            forecast_days: raw.alerts.forecast_days.max(1),
        },
        budget_sharing,
        limit_sharing,
        refresh: Duration::from_millis(r.refresh_ms.max(1)),
        redis,
    }
}

fn scope(s: &ScopeConfig) -> Scope {
    Scope {
        team: s.team.clone(),
        project: s.project.clone(),
        env: s.env.clone(),
        key: s.key.clone(),
        user: s.user.clone(),
        feature: s.feature.clone(),
    }
}

fn budget(spanned: &Spanned<BudgetConfig>, policies: &PolicySet, bad: Bad<'_>) -> Option<Budget> {
    let b = &spanned.value;
    let name = &b.name.value;
    let mut ok = true;
    let period = match b.period.value.as_str() {
        "day" => Period::Day,
        "week" => Period::Week,
        "month" => Period::Month,
        other => {
            bad(
                &b.period.referenced,
                format!("budget {name:?}: period {other:?} is not day, week or month"),
            );
            ok = false;
            Period::Month
        }
    };
    let amount = b.amount_usd.value.0;
    if amount.0 <= 0 {
        bad(
            &b.amount_usd.referenced,
            format!("budget {name:?}: amount_usd must be above 0"),
        );
        ok = false;
    }
    let mut alert_at: Vec<u32> = Vec::new();
    for pct in &b.alert_at {
        if !(1..=1000).contains(&pct.value) {
            bad(
                &pct.referenced,
                format!(
                    "budget {name:?}: alert_at {} is not a percentage from 1 to 1000",
                    pct.value
                ),
            );
            ok = false;
        }
        alert_at.push(pct.value);
    }
    alert_at.sort_unstable();
    alert_at.dedup();
    let action = match (b.action.value.as_str(), &b.downgrade_to) {
        ("alert", None) => BudgetAction::Alert,
        ("block", None) => BudgetAction::Block,
        ("downgrade", Some(rule)) => {
            if !policies.rules().any(|r| r.name == rule.value) {
                bad(
                    &rule.referenced,
                    format!(
                        "budget {name:?}: downgrade_to names rule {:?}, which no policy file defines",
                        rule.value
                    ),
                );
                ok = false;
            }
            BudgetAction::Downgrade(rule.value.clone())
        }
        ("downgrade", None) => {
            bad(
                &b.action.referenced,
                format!("budget {name:?}: action downgrade needs downgrade_to (a rule name)"),
            );
            return None;
        }
        ("alert" | "block", Some(rule)) => {
            bad(
                &rule.referenced,
                format!("budget {name:?}: downgrade_to is only read with action downgrade"),
            );
            return None;
        }
        (other, _) => {
            bad(
                &b.action.referenced,
                format!("budget {name:?}: action {other:?} is not alert, block or downgrade"),
            );
            return None;
        }
    };
    ok.then(|| Budget {
        name: name.clone(),
        scope: scope(&b.scope),
        period,
        amount,
        alert_at,
        action,
    })
}

fn rate_limit(spanned: &Spanned<RateLimitConfig>, bad: Bad<'_>) -> Option<RateLimit> {
    let l = &spanned.value;
    let name = &l.name.value;
    let per = match l.per.value.as_str() {
        "key" => LimitPer::Key,
        "team" => LimitPer::Team,
        "user" => LimitPer::User,
        other => {
            bad(
                &l.per.referenced,
                format!("rate limit {name:?}: per {other:?} is not key, team or user"),
            );
            return None;
        }
    };
    let mut ok = true;
    for (field, value) in [("rpm", &l.rpm), ("tpm", &l.tpm)] {
        if let Some(v) = value
            && v.value == 0
        {
            bad(
                &v.referenced,
                format!("rate limit {name:?}: {field} must be above 0"),
            );
            ok = false;
        }
    }
    if l.rpm.is_none() && l.tpm.is_none() {
        bad(
            &spanned.referenced,
            format!("rate limit {name:?}: set rpm, tpm or both"),
        );
        ok = false;
    }
    ok.then(|| RateLimit {
        name: name.clone(),
        per,
        scope: scope(&l.scope),
        rpm: l.rpm.as_ref().map(|v| v.value),
        tpm: l.tpm.as_ref().map(|v| v.value),
    })
}

fn webhook(spanned: &Spanned<WebhookConfig>, bad: Bad<'_>, env: Env<'_>) -> Option<Webhook> {
    let w = &spanned.value;
    let name = &w.name.value;
    let from_env = |var: &Spanned<String>, bad: Bad<'_>| match env(&var.value) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            bad(
                &var.referenced,
                format!(
                    "webhook {name:?}: environment variable {} is not set",
                    var.value
                ),
            );
            None
        }
    };
    let url = match (&w.url, &w.url_env) {
        (Some(url), None) => Some(url.value.clone()),
        (None, Some(var)) => from_env(var, bad),
        _ => {
            bad(
                &spanned.referenced,
                format!("webhook {name:?}: set exactly one of url and url_env"),
            );
            None
        }
    }?;
    // The URL may carry a token: the problem names its scheme only.
    if reqwest::Url::parse(&url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        let scheme = url.split("://").next().unwrap_or_default();
        bad(
            &spanned.referenced,
            format!("webhook {name:?}: not an http(s) URL (scheme {scheme:?})"),
        );
        return None;
    }
    let format = match (w.format.value.as_str(), &w.secret_env) {
        ("slack", None) => WebhookFormat::Slack,
        ("json", Some(var)) => WebhookFormat::Json {
            secret: from_env(var, bad)?,
        },
        ("json", None) => {
            bad(
                &w.format.referenced,
                format!("webhook {name:?}: format json needs secret_env (the signing secret)"),
            );
            return None;
        }
        ("slack", Some(var)) => {
            bad(
                &var.referenced,
                format!(
                    "webhook {name:?}: slack webhooks are not signed; secret_env is only read with format json"
                ),
            );
            return None;
        }
        (other, _) => {
            bad(
                &w.format.referenced,
                format!("webhook {name:?}: format {other:?} is not slack or json"),
            );
            return None;
        }
    };
    Some(Webhook {
        name: name.clone(),
        url,
        format,
    })
}

fn sharing(value: &Spanned<String>, field: &str, clickhouse: bool, bad: Bad<'_>) -> Sharing {
    match value.value.as_str() {
        "local" => Sharing::Local,
        "redis" => Sharing::Redis,
        "clickhouse" if clickhouse => Sharing::ClickHouse,
        other => {
            let allowed = if clickhouse {
                "local, clickhouse or redis"
            } else {
                "local or redis"
            };
            bad(
                &value.referenced,
                format!("{field}: {other:?} is not {allowed}"),
            );
            Sharing::Local
        }
    }
}
