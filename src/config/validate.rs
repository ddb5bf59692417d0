//! Checks a [`RawConfig`] and turns it into the [`Validated`] form the proxy runs on.
//! Every problem is collected (not just the first) with the position it refers to.

use super::checked::{
    AdminToken, CacheSettings, ClickHouseSettings, ModelRoute, ModelTable, Provider, ProviderKind,
    RedisSettings, Sources, UpstreamAddr, Validated,
};
use super::problem::{ConfigError, Problem};
use super::{ProviderConfig, RawConfig};
use crate::auth::{KeyStore, VirtualKey};
use crate::policy::PolicySet;
use crate::policy::load::{PolicyContext, load_dir};
use crate::prices::PriceBook;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Validates `raw`, read from `file`; relative paths are taken from `base`.
pub fn validate(
    raw: RawConfig,
    file: &Path,
    base: &Path,
    env: Env<'_>,
) -> Result<Validated, ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |loc: &serde_saphyr::Location, msg: String| {
        problems.push(Problem::at(file, loc, msg));
    };
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let listen = parse_addr(&raw.listen.value).unwrap_or_else(|e| {
        bad(&raw.listen.referenced, format!("listen: {e}"));
        SocketAddr::from(([127, 0, 0, 1], 4000))
    });
    let admin_listen = parse_addr(&raw.admin_listen.value).unwrap_or_else(|e| {
        bad(&raw.admin_listen.referenced, format!("admin_listen: {e}"));
        SocketAddr::from(([127, 0, 0, 1], 9464))
    });

    let mut providers = BTreeMap::new();
    for (name, spanned) in &raw.providers {
        if let Some(p) = provider(name, spanned, &mut bad, &resolve, env) {
            providers.insert(name.clone(), Arc::new(p));
        }
    }

    let mut models = ModelTable::default();
    for (name, m) in &raw.models {
        let Some(provider) = providers.get(&m.value.provider.value) else {
            if !raw.providers.contains_key(&m.value.provider.value) {
                bad(
                    &m.value.provider.referenced,
                    format!(
                        "model {name:?} points at provider {:?}, which is not defined under `providers`",
                        m.value.provider.value
                    ),
                );
            }
            continue;
        };
        let route = ModelRoute {
            provider: provider.clone(),
            upstream_model: m.value.upstream_model.clone(),
        };
        models.insert(name, route);
    }

    let mut keys = Vec::new();
    for k in &raw.keys {
        let kc = &k.value;
        let hash = match (&kc.sha256, &kc.key_env) {
            (Some(h), None) => match crate::auth::parse_sha256_hex(&h.value) {
                Some(h) => Some(h),
                None => {
                    bad(
                        &h.referenced,
                        format!("key {:?}: sha256 must be 64 hex digits", kc.name),
                    );
                    None
                }
            },
            (None, Some(var)) => match env(&var.value) {
                Some(secret) if !secret.is_empty() => Some(crate::auth::sha256(secret.as_bytes())),
                _ => {
                    bad(
                        &var.referenced,
                        format!(
                            "key {:?}: environment variable {} is not set",
                            kc.name, var.value
                        ),
                    );
                    None
                }
            },
            _ => {
                bad(
                    &k.referenced,
                    format!("key {:?}: set exactly one of sha256 and key_env", kc.name),
                );
                None
            }
        };
        if let Some(hash) = hash {
            keys.push(VirtualKey {
                name: kc.name.clone(),
                hash,
                team: kc.team.clone(),
                project: kc.project.clone(),
                env: kc.env.clone(),
                owner: kc.owner.clone(),
            });
        }
    }

    let mut price_problems = Vec::new();
    let mut prices = if raw.builtin_prices {
        PriceBook::builtin()
    } else {
        PriceBook::default()
    };
    for p in &raw.prices {
        match PriceBook::load(&resolve(&p.value)) {
            Ok(book) => prices.merge(book),
            Err(errs) => {
                // Price errors carry their own file and position.
                price_problems.extend(
                    errs.iter()
                        .map(|e| Problem::located_elsewhere(e.to_string())),
                );
            }
        }
    }

    let mut policy_problems = Vec::new();
    let policies = match &raw.policies {
        None => PolicySet::default(),
        Some(dir) if !resolve(&dir.value).is_dir() => {
            bad(
                &dir.referenced,
                format!(
                    "policies: {} is not a directory",
                    resolve(&dir.value).display()
                ),
            );
            PolicySet::default()
        }
        Some(dir) => {
            // Providers and models with problems of their own are reported above; rules
            // naming them are not reported again.
            let skipped_providers: BTreeSet<String> = raw
                .providers
                .keys()
                .filter(|name| !providers.contains_key(*name))
                .cloned()
                .collect();
            let skipped_models = raw
                .models
                .iter()
                .filter(|(_, m)| skipped_providers.contains(&m.value.provider.value))
                .map(|(name, _)| name.clone())
                .collect();
            let context = PolicyContext {
                providers: &providers,
                models: &models,
                prices: &prices,
                now: chrono::Utc::now(),
                skipped_providers,
                skipped_models,
            };
            load_dir(&resolve(&dir.value), context).unwrap_or_else(|e| {
                // Policy problems carry their own files and positions.
                policy_problems = e.0;
                PolicySet::default()
            })
        }
    };

    let admin_token = raw
        .admin
        .token_env
        .as_ref()
        .and_then(|var| match env(&var.value) {
            Some(token) if !token.is_empty() => Some(AdminToken::new(&token)),
            _ => {
                bad(
                    &var.referenced,
                    format!("admin: environment variable {} is not set", var.value),
                );
                None
            }
        });
    let sources = Sources {
        config: file.to_path_buf(),
        prices: raw.prices.iter().map(|p| resolve(&p.value)).collect(),
        policies: raw.policies.as_ref().map(|d| resolve(&d.value)),
    };

    let clickhouse = raw
        .telemetry
        .clickhouse
        .as_ref()
        .and_then(|c| clickhouse_settings(c, &mut bad, &resolve, env));

    let cache = raw
        .cache
        .as_ref()
        .filter(|c| c.value.enabled)
        .and_then(|c| cache_settings(c, &mut bad, env));

    // A rule's cache settings need the cache's bounds; without them they would do nothing.
    let mut cache_problems = Vec::new();
    if raw.cache.as_ref().is_none_or(|c| !c.value.enabled) {
        for rule in policies.rules().filter(|r| r.cache.is_some()) {
            cache_problems.push(Problem {
                file: rule.source.file.clone(),
                line: rule.source.line,
                column: rule.source.column,
                message: format!(
                    "rule {:?} caches answers, but the cache is off: set `cache: {{ enabled: true }}` in {}",
                    rule.name,
                    file.display()
                ),
            });
        }
    }

    if raw.max_body_bytes == 0 {
        problems_push_whole(&mut bad, "max_body_bytes must be above 0".into());
    }
    for (field, value) in [
        ("server.max_connections", raw.server.max_connections as u64),
        ("server.header_timeout_ms", raw.server.header_timeout_ms),
        ("server.body_timeout_ms", raw.server.body_timeout_ms),
        ("server.idle_timeout_secs", raw.server.idle_timeout_secs),
    ] {
        if value == 0 {
            problems_push_whole(&mut bad, format!("{field} must be above 0"));
        }
    }
    let spend = super::validate_spend::spend(&raw, &policies, clickhouse.is_some(), &mut bad, env);
    problems.extend(price_problems);
    problems.extend(policy_problems);
    problems.extend(cache_problems);
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }
    Ok(Validated {
        listen,
        admin_listen,
        data_dir: resolve(&raw.data_dir),
        max_body_bytes: raw.max_body_bytes,
        log: raw.log,
        ledger: raw.ledger,
        attribution: raw.attribution,
        server: raw.server,
        providers,
        models,
        keys: KeyStore::new(keys),
        prices,
        clickhouse,
        policies,
        reload: raw.reload,
        admin_token,
        cache,
        spend,
        sources,
    })
}

fn cache_settings(
    spanned: &Spanned<super::CacheConfig>,
    bad: &mut impl FnMut(&serde_saphyr::Location, String),
    env: Env<'_>,
) -> Option<CacheSettings> {
    let c = &spanned.value;
    let at = &spanned.referenced;
    let mut ok = true;
    for (field, value) in [
        ("max_bytes", c.max_bytes),
        ("max_entries", c.max_entries),
        ("max_entry_bytes", c.max_entry_bytes),
        ("ttl_secs", c.ttl_secs),
    ] {
        if value == 0 {
            bad(at, format!("cache.{field} must be above 0"));
            ok = false;
        }
    }
    if c.max_entry_bytes > c.max_bytes {
        bad(
            at,
            format!(
                "cache.max_entry_bytes ({}) is above cache.max_bytes ({}): no entry that large could be held",
                c.max_entry_bytes, c.max_bytes
            ),
        );
        ok = false;
    }
    // The in-process cache weighs entries in u32.
    if c.max_entry_bytes > u64::from(u32::MAX) {
        bad(
            at,
            format!("cache.max_entry_bytes must be at most {}", u32::MAX),
        );
        ok = false;
    }
    let redis = match &c.redis {
        Some(r) => Some(redis_settings("cache.redis", r, bad, env)?),
        None => None,
    };
    ok.then(|| CacheSettings {
        max_bytes: c.max_bytes,
        max_entries: c.max_entries,
        max_entry_bytes: c.max_entry_bytes,
        ttl: Duration::from_secs(c.ttl_secs),
        redis,
    })
}

pub(super) fn redis_settings(
    what: &str,
    spanned: &Spanned<super::RedisConfig>,
    bad: &mut impl FnMut(&serde_saphyr::Location, String),
    env: Env<'_>,
) -> Option<RedisSettings> {
    let r = &spanned.value;
    let (url, at) = match (&r.url, &r.url_env) {
        (Some(url), None) => (url.value.clone(), &url.referenced),
        (None, Some(var)) => match env(&var.value) {
            Some(url) if !url.is_empty() => (url, &var.referenced),
            _ => {
                bad(
                    &var.referenced,
                    format!("{what}: environment variable {} is not set", var.value),
                );
                return None;
            }
        },
        _ => {
            bad(
                &spanned.referenced,
                format!("{what}: set exactly one of url and url_env"),
            );
            return None;
        }
    };
    // The URL may carry a password: the problem names its scheme only.
    if !url.starts_with("redis://") || redis::Client::open(url.as_str()).is_err() {
        let scheme = url.split("://").next().unwrap_or_default();
        bad(
            at,
            format!(
                "{what}: not a valid redis://host:port URL (scheme {scheme:?}); TLS (rediss://) is not supported"
            ),
        );
        return None;
    }
    if r.timeout_ms == 0 {
        bad(
            &spanned.referenced,
            format!("{what}.timeout_ms must be above 0"),
        );
        return None;
    }
    Some(RedisSettings {
        url,
        key_prefix: r.key_prefix.clone(),
        timeout: Duration::from_millis(r.timeout_ms),
    })
}

fn clickhouse_settings(
    spanned: &Spanned<super::ClickHouseConfig>,
    bad: &mut impl FnMut(&serde_saphyr::Location, String),
    resolve: &impl Fn(&Path) -> PathBuf,
    env: Env<'_>,
) -> Option<ClickHouseSettings> {
    let c = &spanned.value;
    let url = c.url.value.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<http::Uri>().is_err()
    {
        bad(
            &c.url.referenced,
            format!(
                "clickhouse url {:?} must be an http:// or https:// URL",
                c.url.value
            ),
        );
        return None;
    }
    let identifier_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !identifier_ok(&c.database) {
        bad(
            &spanned.referenced,
            format!(
                "clickhouse database {:?} must be letters, digits and _",
                c.database
            ),
        );
        return None;
    }
    if let Some(cluster) = c.cluster.as_deref().filter(|s| !identifier_ok(s)) {
        bad(
            &spanned.referenced,
            format!("clickhouse cluster {cluster:?} must be letters, digits and _"),
        );
        return None;
    }
    let password = match &c.password_env {
        Some(var) => match env(&var.value) {
            Some(v) => Some(v),
            None => {
                bad(
                    &var.referenced,
                    format!("clickhouse: environment variable {} is not set", var.value),
                );
                return None;
            }
        },
        None => None,
    };
    let ca_pem = match &c.ca_file {
        Some(path) => match std::fs::read(resolve(&path.value)) {
            Ok(pem) => Some(pem),
            Err(e) => {
                bad(
                    &path.referenced,
                    format!("clickhouse: cannot read {}: {e}", path.value.display()),
                );
                return None;
            }
        },
        None => None,
    };
    if c.batch_max_rows == 0 {
        bad(
            &spanned.referenced,
            "clickhouse batch_max_rows must be above 0".into(),
        );
        return None;
    }
    Some(ClickHouseSettings {
        url,
        database: c.database.clone(),
        user: c.user.clone(),
        password,
        ca_pem,
        batch_max_rows: c.batch_max_rows,
        batch_period: Duration::from_millis(c.batch_period_ms.max(1)),
        timeout: Duration::from_millis(c.timeout_ms.max(1)),
        ttl_days: c.ttl_days,
        rollup_ttl_days: c.rollup_ttl_days,
        cluster: c.cluster.clone(),
        migrate_on_start: c.migrate_on_start,
    })
}

/// For fields that carry no span: the problem is reported against the file.
fn problems_push_whole(bad: &mut impl FnMut(&serde_saphyr::Location, String), msg: String) {
    bad(&serde_saphyr::Location::UNKNOWN, msg)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an IP:port address ({e})"))
}

fn provider(
    name: &str,
    spanned: &Spanned<ProviderConfig>,
    bad: &mut impl FnMut(&serde_saphyr::Location, String),
    resolve: &impl Fn(&Path) -> PathBuf,
    env: Env<'_>,
) -> Option<Provider> {
    let p = &spanned.value;
    let Some(kind) = ProviderKind::parse(&p.kind.value) else {
        bad(
            &p.kind.referenced,
            format!(
                "provider {name:?}: unknown kind {:?} (expected openai, anthropic, openai_compatible or simulated)",
                p.kind.value
            ),
        );
        return None;
    };
    let upstream = match (&p.base_url, kind.is_in_process()) {
        (Some(url), true) => {
            bad(
                &url.referenced,
                format!("provider {name:?}: a simulated provider has no base_url"),
            );
            None
        }
        (Some(url), false) => match UpstreamAddr::parse(&url.value) {
            Ok(u) => Some(u),
            Err(e) => {
                bad(&url.referenced, format!("provider {name:?}: {e}"));
                return None;
            }
        },
        (None, true) => None,
        (None, false) => match kind.default_base_url() {
            Some(url) => Some(UpstreamAddr::parse(url).ok()?),
            None => {
                bad(
                    &spanned.referenced,
                    format!("provider {name:?}: openai_compatible needs a base_url"),
                );
                return None;
            }
        },
    };
    let api_key = match &p.api_key_env {
        Some(var) => match env(&var.value) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                bad(
                    &var.referenced,
                    format!(
                        "provider {name:?}: environment variable {} is not set",
                        var.value
                    ),
                );
                return None;
            }
        },
        None => None,
    };
    let ca_pem = match &p.ca_file {
        Some(path) => match std::fs::read(resolve(&path.value)) {
            Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => Some(pem),
            Ok(_) => {
                bad(
                    &path.referenced,
                    format!(
                        "provider {name:?}: {} holds no PEM certificate",
                        path.value.display()
                    ),
                );
                return None;
            }
            Err(e) => {
                bad(
                    &path.referenced,
                    format!(
                        "provider {name:?}: cannot read {}: {e}",
                        path.value.display()
                    ),
                );
                return None;
            }
        },
        None => None,
    };
    let cell = OnceLock::new();
    if let Some(u) = upstream {
        let _ = cell.set(u);
    }
    Some(Provider {
        name: name.to_string(),
        kind,
        upstream: cell,
        api_key,
        allow_client_keys: p.allow_client_keys,
        stream_usage: p.stream_usage,
        ca_pem,
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        read_timeout: Duration::from_millis(p.read_timeout_ms),
        simulated: p.simulated.clone(),
    })
}
