//! `tollgate.yaml` types of spend control: budgets, rate limits, alerts, and how replicas
//! share their counters. Checked in `validate_spend`.

use crate::money::Usd;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Which requests a budget or a rate limit counts: all of the fields given must match the
/// request's attribution; none given counts every request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    /// A virtual key's name.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub feature: Option<String>,
}

/// A spending limit over a calendar period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Names the budget in errors, headers, metrics and alerts.
    pub name: Spanned<String>,
    #[serde(default)]
    pub scope: ScopeConfig,
    /// `day`, `week` (from Monday) or `month`, in the config's `time_zone`.
    pub period: Spanned<String>,
    pub amount_usd: Spanned<Usd>,
    /// Percentages of the amount at which an alert is sent, once per period each.
    #[serde(default = "defaults::alert_at")]
    pub alert_at: Vec<Spanned<u32>>,
    /// At 100%: `alert` (keep serving), `block` (429 for requests that do not fit), or
    /// `downgrade` (route by the rule named in `downgrade_to`).
    #[serde(default = "defaults::budget_action")]
    pub action: Spanned<String>,
    /// With `action: downgrade`: the name of a policy rule whose plan replaces the request's.
    #[serde(default)]
    pub downgrade_to: Option<Spanned<String>>,
}

/// Requests and tokens per minute, counted separately for every key, team or user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: Spanned<String>,
    /// What each counter belongs to: `key`, `team` or `user`.
    pub per: Spanned<String>,
    /// Only requests in this scope are limited.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<Spanned<u64>>,
    /// Input and output tokens per minute: counted at admission from the request's
    /// estimated input, corrected with the real usage.
    #[serde(default)]
    pub tpm: Option<Spanned<u64>>,
}

/// Where budget alerts go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub webhooks: Vec<Spanned<WebhookConfig>>,
    /// Days of spend the month-end forecast extrapolates from.
    #[serde(default = "defaults::forecast_days")]
    pub forecast_days: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            forecast_days: defaults::forecast_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: Spanned<String>,
    /// `slack` (a Slack-compatible incoming webhook) or `json` (signed with HMAC-SHA256).
    pub format: Spanned<String>,
    /// Exactly one of `url` and `url_env`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub url_env: Option<Spanned<String>>,
    /// With `format: json`: the environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
}

/// How replicas share budgets and rate limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasConfig {
    /// `local` (this process only), `clickhouse` (spend read back from ClickHouse every
    /// `refresh_ms`), or `redis` (exact shared counters).
    #[serde(default = "defaults::local")]
    pub budgets: Spanned<String>,
    /// `local` or `redis`.
    #[serde(default = "defaults::local")]
    pub rate_limits: Spanned<String>,
    #[serde(default = "defaults::refresh_ms")]
    pub refresh_ms: u64,
    #[serde(default)]
    pub redis: Option<Spanned<super::RedisConfig>>,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            budgets: defaults::local(),
            rate_limits: defaults::local(),
            refresh_ms: defaults::refresh_ms(),
            redis: None,
        }
    }
}

mod defaults {
    use serde_saphyr::{Location, Spanned};

    fn unplaced<T>(v: T) -> Spanned<T> {
        Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
    }
    pub fn alert_at() -> Vec<Spanned<u32>> {
        [50, 80, 100].into_iter().map(unplaced).collect()
    }
    pub fn budget_action() -> Spanned<String> {
        unplaced("alert".into())
    }
    pub fn local() -> Spanned<String> {
        unplaced("local".into())
    }
    pub fn refresh_ms() -> u64 {
        5000
    }
    pub fn forecast_days() -> u32 {
        7
    }
}
