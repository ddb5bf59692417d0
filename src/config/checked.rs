//! The config the proxy runs on: types only, produced by [`validate`](super::validate).

use super::{
    AttributionConfig, LedgerConfig, LogConfig, ReloadConfig, ServerConfig, SimulatedConfig,
};
use crate::api::ApiFormat;
use crate::auth::{KeyHash, KeyStore};
use crate::policy::PolicySet;
use crate::prices::PriceBook;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A config that passed every check.
#[derive(Debug)]
pub struct Validated {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: u64,
    pub log: LogConfig,
    pub ledger: LedgerConfig,
    pub attribution: AttributionConfig,
    pub server: ServerConfig,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub models: ModelTable,
    pub keys: KeyStore,
    pub prices: PriceBook,
    pub clickhouse: Option<ClickHouseSettings>,
    /// Routing rules of the `policies` directory; empty when none is configured.
    pub policies: PolicySet,
    pub reload: ReloadConfig,
    /// Bearer token of the admin listener's `POST /reload`; the endpoint is off without one.
    pub admin_token: Option<AdminToken>,
    /// The response cache's bounds; `None` when the cache is off.
    pub cache: Option<CacheSettings>,
    pub spend: Spend,
    /// The files this config was read from.
    pub sources: Sources,
}

/// The files a config is read from: what a reload reads again, and what is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub config: PathBuf,
    /// Extra price files, in the order they apply.
    pub prices: Vec<PathBuf>,
    /// The policies directory, when one is configured.
    pub policies: Option<PathBuf>,
}

impl Sources {
    /// Whether `path` is a policy file of `dir`: read by the loader, so worth a reload.
    pub fn is_policy_file(dir: &Path, path: &Path) -> bool {
        path.parent() == Some(dir) && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
    }
}

/// An admin bearer token, held as its SHA-256 digest and compared in constant time.
pub struct AdminToken(KeyHash);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(crate::auth::sha256(token.as_bytes()))
    }

    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(crate::auth::sha256(presented.as_bytes()).ct_eq(&self.0))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// A checked, enabled `cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub max_entries: u64,
    /// At most `max_bytes` and `u32::MAX`.
    pub max_entry_bytes: u64,
    /// Lifetime of an entry whose rule sets none.
    pub ttl: Duration,
    pub redis: Option<RedisSettings>,
}

/// A checked `cache.redis`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Never printed: it may carry a password.
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A checked `telemetry.clickhouse`.
#[derive(Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    /// Never printed.
    pub password: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub batch_max_rows: usize,
    pub batch_period: Duration,
    pub timeout: Duration,
    pub ttl_days: Option<u32>,
    pub rollup_ttl_days: Option<u32>,
    pub cluster: Option<String>,
    pub migrate_on_start: bool,
}

impl fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    OpenAiCompatible,
    Simulated,
}

impl ProviderKind {
    pub(super) fn parse(s: &str) -> Option<ProviderKind> {
        Some(match s {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            "openai_compatible" => ProviderKind::OpenAiCompatible,
            "simulated" => ProviderKind::Simulated,
            _ => return None,
        })
    }

    /// Whether the provider answers requests in the given client API format.
    pub fn speaks(self, api: ApiFormat) -> bool {
        match self {
            ProviderKind::Simulated => true,
            ProviderKind::Anthropic => api == ApiFormat::Anthropic,
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => api == ApiFormat::OpenAi,
        }
    }

    /// Whether the provider runs inside the proxy on a port chosen at start (`simulated`),
    /// rather than at a configured `base_url`.
    pub fn is_in_process(self) -> bool {
        self == ProviderKind::Simulated
    }

    /// URL used when the config gives no `base_url`; `None` when one must be given, or,
    /// for an in-process provider, cannot be.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::OpenAiCompatible | ProviderKind::Simulated => None,
        }
    }

    /// Whether requests need the provider's real key; the simulated provider accepts any.
    pub fn needs_real_credential(self) -> bool {
        !self.is_in_process()
    }

    /// Whether a request in `format` carries the provider key as Anthropic's `x-api-key`
    /// rather than an OpenAI-style bearer token.
    pub fn sends_anthropic_headers(self, format: ApiFormat) -> bool {
        match self {
            ProviderKind::Anthropic => true,
            ProviderKind::Simulated => format == ApiFormat::Anthropic,
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => false,
        }
    }
}

/// Where a provider is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prefix put before the client's path, without a trailing slash (may be empty).
    pub path_prefix: String,
}

impl UpstreamAddr {
    pub fn parse(url: &str) -> Result<UpstreamAddr, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("URL {url:?} must start with http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        // Clients already send `/v1/...`; a prefix ending in /v1 would double it.
        if path_prefix.ends_with("/v1") {
            return Err(format!(
                "base_url {url:?} should not end in /v1: clients' paths already start with /v1"
            ));
        }
        Ok(UpstreamAddr {
            tls,
            host,
            port,
            path_prefix,
        })
    }
}

/// A provider as the proxy uses it.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Unset only for `simulated` until the server binds its listener. Filled by validate.
    pub(super) upstream: OnceLock<UpstreamAddr>,
    /// The provider's key; never printed.
    pub api_key: Option<String>,
    pub allow_client_keys: bool,
    /// Ask OpenAI-format streams for usage on the client's behalf.
    pub stream_usage: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub simulated: SimulatedConfig,
}

impl Provider {
    pub fn upstream(&self) -> Option<&UpstreamAddr> {
        self.upstream.get()
    }

    /// Points a `simulated` provider at the listener started for it.
    pub fn set_upstream(&self, addr: UpstreamAddr) -> bool {
        self.upstream.set(addr).is_ok()
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("upstream", &self.upstream)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("allow_client_keys", &self.allow_client_keys)
            .finish_non_exhaustive()
    }
}

/// Client model name → provider and upstream model name.
#[derive(Debug, Clone, Default)]
pub struct ModelTable {
    exact: BTreeMap<String, ModelRoute>,
    /// Prefix patterns, longest first.
    prefixes: Vec<(String, ModelRoute)>,
}

#[derive(Debug, Clone)]
pub struct ModelRoute {
    pub provider: Arc<Provider>,
    pub upstream_model: Option<String>,
}

impl ModelTable {
    /// Adds the route of a client model name; a name ending in `*` matches a prefix.
    pub(super) fn insert(&mut self, name: &str, route: ModelRoute) {
        match name.strip_suffix('*') {
            // Longest prefix first; among equal lengths, in insertion order.
            Some(prefix) => {
                let at = self
                    .prefixes
                    .partition_point(|(p, _)| p.len() >= prefix.len());
                self.prefixes.insert(at, (prefix.to_string(), route));
            }
            None => {
                self.exact.insert(name.to_string(), route);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn route(&self, model: &str) -> Option<&ModelRoute> {
        self.exact.get(model).or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| model.starts_with(p.as_str()))
                .map(|(_, r)| r)
        })
    }
}

/// Checked spend control: budgets, rate limits, alerts, and how replicas share them.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    /// The time zone of budgets' calendar periods.
    pub time_zone: chrono_tz::Tz,
    pub budgets: Vec<Budget>,
    pub rate_limits: Vec<RateLimit>,
    pub alerts: Alerting,
    pub budget_sharing: Sharing,
    pub limit_sharing: Sharing,
    /// How often spend is read back from ClickHouse (`Sharing::ClickHouse`).
    pub refresh: Duration,
    /// The Redis of `Sharing::Redis`.
    pub redis: Option<RedisSettings>,
}

impl Default for Spend {
    fn default() -> Self {
        Spend {
            time_zone: chrono_tz::UTC,
            budgets: Vec::new(),
            rate_limits: Vec::new(),
            alerts: Alerting::default(),
            budget_sharing: Sharing::Local,
            limit_sharing: Sharing::Local,
            refresh: Duration::from_secs(5),
            redis: None,
        }
    }
}

/// Which requests a budget or a rate limit counts: every field set must equal the request's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub team: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    pub key: Option<String>,
    pub user: Option<String>,
    pub feature: Option<String>,
}

impl Scope {
    pub fn matches(&self, a: &crate::attribution::Attribution) -> bool {
        self.holds([
            &a.team,
            &a.project,
            &a.env,
            &a.key_name,
            &a.user,
            &a.feature,
        ])
    }

    /// Whether a record's team, project, env, key name, user and feature are in scope.
    pub fn holds_record(&self, r: &crate::record::Record) -> bool {
        self.holds([
            &r.team,
            &r.project,
            &r.env,
            &r.key_name,
            &r.user,
            &r.feature,
        ])
    }

    fn holds(&self, have: [&str; 6]) -> bool {
        let want = [
            &self.team,
            &self.project,
            &self.env,
            &self.key,
            &self.user,
            &self.feature,
        ];
        want.iter()
            .zip(have)
            .all(|(w, h)| w.as_deref().is_none_or(|w| w == h))
    }

    /// The fields set, as `name=value` pairs (for ClickHouse filters and messages).
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("team", &self.team),
            ("project", &self.project),
            ("env", &self.env),
            ("key_name", &self.key),
            ("user", &self.user),
            ("feature", &self.feature),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.as_deref().map(|v| (name, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    /// From Monday.
    Week,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// What a budget does once its period's spend reaches the amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetAction {
    /// Keep serving; the alerts say so.
    Alert,
    /// Refuse requests whose reservation does not fit (429).
    Block,
    /// Plan requests with this policy rule instead of the one that matches them.
    Downgrade(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub scope: Scope,
    pub period: Period,
    pub amount: crate::money::NanoUsd,
    /// Percentages of the amount, ascending, without repeats.
    pub alert_at: Vec<u32>,
    pub action: BudgetAction,
}

/// What each rate-limit counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPer {
    Key,
    Team,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub per: LimitPer,
    pub scope: Scope,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Alerting {
    pub webhooks: Vec<Webhook>,
    pub forecast_days: u32,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub name: String,
    /// Never printed: webhook URLs carry their own credentials.
    pub url: String,
    pub format: WebhookFormat,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &"<redacted>")
            .field("format", &self.format)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum WebhookFormat {
    /// A Slack-compatible incoming webhook (`{"text": ...}`).
    Slack,
    /// The alert as JSON, signed with HMAC-SHA256 of this secret.
    Json { secret: String },
}

impl fmt::Debug for WebhookFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookFormat::Slack => f.write_str("Slack"),
            WebhookFormat::Json { .. } => f.write_str("Json { secret: <redacted> }"),
        }
    }
}

/// How replicas share a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Each process counts its own.
    Local,
    /// Budgets only: spend is read back from ClickHouse.
    ClickHouse,
    /// Exact counters in Redis.
    Redis,
}
