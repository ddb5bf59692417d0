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
