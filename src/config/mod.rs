//! Configuration: the `tollgate.yaml` file types. Loading lives in [`load`], checks in
//! `validate`; the proxy only ever sees a [`Validated`] config, whose types are in `checked`.

mod checked;
pub mod load;
pub mod problem;
mod spend;
mod validate;
mod validate_spend;

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use checked::{
    AdminToken, Alerting, Budget, BudgetAction, CacheSettings, ClickHouseSettings, LimitPer,
    ModelRoute, ModelTable, Period, Provider, ProviderKind, RateLimit, RedisSettings, Scope,
    Sharing, Sources, Spend, UpstreamAddr, Validated, Webhook, WebhookFormat,
};
pub use load::load;
pub use problem::{ConfigError, Problem};
pub use spend::{
    AlertsConfig, BudgetConfig, RateLimitConfig, ReplicasConfig, ScopeConfig, WebhookConfig,
};

/// The top level of `tollgate.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Proxy listener.
    #[serde(default = "defaults::listen")]
    pub listen: Spanned<String>,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: Spanned<String>,
    /// Where the ledger and other state live.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Extra price files, applied over the built-in prices (later files win).
    #[serde(default)]
    pub prices: Vec<Spanned<PathBuf>>,
    /// Use the price file shipped with the binary as the base.
    #[serde(default = "defaults::yes")]
    pub builtin_prices: bool,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub attribution: AttributionConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    pub providers: BTreeMap<String, Spanned<ProviderConfig>>,
    /// Model names clients may call, each routed to a provider. A name may end in `*`
    /// to match a prefix (`claude-*`).
    #[serde(default)]
    pub models: BTreeMap<String, Spanned<ModelConfig>>,
    #[serde(default)]
    pub keys: Vec<Spanned<VirtualKeyConfig>>,
    /// Directory of routing policy files (`*.yaml`), relative to this file; none when unset.
    #[serde(default)]
    pub policies: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub reload: ReloadConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Response cache; off unless `enabled`. Policy rules choose which requests use it.
    #[serde(default)]
    pub cache: Option<Spanned<CacheConfig>>,
    /// IANA time zone of budgets' calendar periods (`Europe/Paris`); UTC when unset.
    #[serde(default)]
    pub time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub budgets: Vec<Spanned<BudgetConfig>>,
    #[serde(default)]
    pub rate_limits: Vec<Spanned<RateLimitConfig>>,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub replicas: ReplicasConfig,
}

/// The response cache's bounds, shared by every rule that caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Bytes of cached answers held in process, at most.
    #[serde(default = "defaults::cache_max_bytes")]
    pub max_bytes: u64,
    /// Answers held in process, at most.
    #[serde(default = "defaults::cache_max_entries")]
    pub max_entries: u64,
    /// Larger answers are not cached.
    #[serde(default = "defaults::cache_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// How long an answer is kept, unless its rule says otherwise.
    #[serde(default = "defaults::cache_ttl_secs")]
    pub ttl_secs: u64,
    /// A Redis shared by replicas, consulted after the in-process cache misses.
    #[serde(default)]
    pub redis: Option<Spanned<RedisConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Exactly one of `url` and `url_env` is set.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Environment variable holding the URL (when it carries a password).
    #[serde(default)]
    pub url_env: Option<Spanned<String>>,
    /// Put before every key, so several deployments can share one Redis.
    #[serde(default = "defaults::redis_key_prefix")]
    pub key_prefix: String,
    /// Longest wait for one Redis call; past it the call counts as a miss.
    #[serde(default = "defaults::redis_timeout_ms")]
    pub timeout_ms: u64,
}

/// When the config is read again besides on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when this file, its price files or its policy files change.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true }
    }
}

/// Admin listener endpoints that act on the server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Environment variable holding the bearer token of `POST /reload`; the endpoint is off
    /// when unset.
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `openai`, `anthropic`, `openai_compatible` or `simulated`.
    pub kind: Spanned<String>,
    /// Scheme, host, port and optional path prefix. Not used by `simulated`.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    /// Environment variable holding the provider's API key.
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    /// Let clients that present no virtual key send their own provider key through.
    #[serde(default)]
    pub allow_client_keys: bool,
    /// PEM file of extra CA certificates trusted for this provider's TLS.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest silence while reading the upstream response.
    #[serde(default = "defaults::read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Ask OpenAI-format streams for usage (`stream_options.include_usage`) when the client
    /// did not. Turn off for compatible servers that reject the option; their streams are
    /// then estimated.
    #[serde(default = "defaults::yes")]
    pub stream_usage: bool,
    /// Settings of the in-process simulated provider.
    #[serde(default)]
    pub simulated: SimulatedConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    #[serde(default)]
    pub first_token_delay_ms: u64,
    #[serde(default)]
    pub token_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: Spanned<String>,
    /// Name sent upstream, when it differs from the name clients use.
    #[serde(default)]
    pub upstream_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKeyConfig {
    /// Shown in records and metrics instead of the key.
    pub name: String,
    /// Hex SHA-256 of the key. Exactly one of `sha256` and `key_env` is set.
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
    /// Environment variable holding the key itself.
    #[serde(default)]
    pub key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
}

/// Where records go besides the local ledger.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub clickhouse: Option<Spanned<ClickHouseConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) interface, e.g. `http://127.0.0.1:8123` or `https://host:8443`.
    pub url: Spanned<String>,
    #[serde(default = "defaults::ch_database")]
    pub database: String,
    #[serde(default = "defaults::ch_user")]
    pub user: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    /// PEM bundle trusted for HTTPS, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Most records in one insert.
    #[serde(default = "defaults::ch_batch_max_rows")]
    pub batch_max_rows: usize,
    /// Longest time a record waits for a fuller batch.
    #[serde(default = "defaults::ch_batch_period_ms")]
    pub batch_period_ms: u64,
    /// Request timeout of one insert or query.
    #[serde(default = "defaults::ch_timeout_ms")]
    pub timeout_ms: u64,
    /// Days raw rows (`requests`, `attempts`, `outcomes`) are kept; forever when unset.
    #[serde(default)]
    pub ttl_days: Option<u32>,
    /// Days the hourly rollups are kept; forever when unset.
    #[serde(default)]
    pub rollup_ttl_days: Option<u32>,
    /// Create tables `ON CLUSTER` this cluster with Replicated engines.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Create or migrate the schema when the server starts.
    #[serde(default = "defaults::yes")]
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tollgate=debug`.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Start a new segment past this size.
    #[serde(default = "defaults::segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// Start a new segment past this age.
    #[serde(default = "defaults::segment_max_age_secs")]
    pub segment_max_age_secs: u64,
    /// Longest time between a record's write and its fsync (the power-loss window).
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Disk the ledger may use; past it new records are dropped and counted, not written.
    #[serde(default = "defaults::ledger_max_disk_bytes")]
    pub max_disk_bytes: u64,
    /// With a sink configured: seconds a fully shipped segment is kept before deletion.
    #[serde(default)]
    pub shipped_retention_secs: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            segment_max_bytes: defaults::segment_max_bytes(),
            segment_max_age_secs: defaults::segment_max_age_secs(),
            flush_interval_ms: defaults::flush_interval_ms(),
            max_disk_bytes: defaults::ledger_max_disk_bytes(),
            shipped_retention_secs: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    /// Longest accepted value of an `x-tollgate-*` header; longer values are cut.
    #[serde(default = "defaults::max_header_value_len")]
    pub max_value_len: usize,
    /// Most tags accepted from `x-tollgate-tags`; further tags are ignored.
    #[serde(default = "defaults::max_tags")]
    pub max_tags: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            max_value_len: defaults::max_header_value_len(),
            max_tags: defaults::max_tags(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads of the proxy service.
    #[serde(default = "defaults::threads")]
    pub threads: usize,
    /// Seconds in-flight requests get to finish on shutdown.
    #[serde(default = "defaults::grace_period_secs")]
    pub grace_period_secs: u64,
    /// Open client connections; past this a new connection gets a 503 and is closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a whole request header, from the connection's first byte
    /// wait (or the end of its previous request).
    #[serde(default = "defaults::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a whole request body.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection is kept open for its next request.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: defaults::threads(),
            grace_period_secs: defaults::grace_period_secs(),
            max_connections: defaults::max_connections(),
            header_timeout_ms: defaults::header_timeout_ms(),
            body_timeout_ms: defaults::body_timeout_ms(),
            idle_timeout_secs: defaults::idle_timeout_secs(),
        }
    }
}

mod defaults {
    use std::path::PathBuf;

    use serde_saphyr::{Location, Spanned};

    fn unplaced(s: &str) -> Spanned<String> {
        Spanned::new(s.to_string(), Location::UNKNOWN, Location::UNKNOWN)
    }
    pub fn listen() -> Spanned<String> {
        unplaced("127.0.0.1:4000")
    }
    pub fn admin_listen() -> Spanned<String> {
        unplaced("127.0.0.1:9464")
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("./tollgate-data")
    }
    pub fn max_body_bytes() -> u64 {
        32 * 1024 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn connect_timeout_ms() -> u64 {
        10_000
    }
    pub fn read_timeout_ms() -> u64 {
        600_000
    }
    pub fn segment_max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn segment_max_age_secs() -> u64 {
        3600
    }
    pub fn flush_interval_ms() -> u64 {
        200
    }
    pub fn ledger_max_disk_bytes() -> u64 {
        10 * 1024 * 1024 * 1024
    }
    pub fn ch_database() -> String {
        "tollgate".into()
    }
    pub fn ch_user() -> String {
        "default".into()
    }
    pub fn ch_batch_max_rows() -> usize {
        10_000
    }
    pub fn ch_batch_period_ms() -> u64 {
        1_000
    }
    pub fn ch_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_header_value_len() -> usize {
        128
    }
    pub fn max_tags() -> usize {
        16
    }
    pub fn threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
    pub fn grace_period_secs() -> u64 {
        10
    }
    pub fn max_connections() -> usize {
        4096
    }
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_timeout_ms() -> u64 {
        60_000
    }
    pub fn idle_timeout_secs() -> u64 {
        60
    }
    pub fn cache_max_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub fn cache_max_entries() -> u64 {
        100_000
    }
    pub fn cache_max_entry_bytes() -> u64 {
        4 * 1024 * 1024
    }
    pub fn cache_ttl_secs() -> u64 {
        3600
    }
    pub fn redis_key_prefix() -> String {
        "tollgate:cache:".into()
    }
    pub fn redis_timeout_ms() -> u64 {
        250
    }
}
