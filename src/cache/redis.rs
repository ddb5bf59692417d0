//! The shared cache tier: answers kept in Redis, so replicas share hits.
//!
//! Opt-in, behind the in-process tier. Redis is a convenience, never a dependency: every
//! failure (refused connection, timeout, a value that does not decode) is counted, logged at
//! most once per [`LOG_EVERY`], and answered as a miss; a store that fails is dropped.
//!
//! A value is `TGC1`, the length of a JSON header (u32, little-endian), the header (what
//! the replay and the record need), then the body bytes as they are.

use super::key::CacheKey;
use super::store::CachedResponse;
use crate::api::{ApiFormat, Endpoint};
use crate::config::RedisSettings;
use crate::money::NanoUsd;
use crate::usage::Usage;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"TGC1";

/// Shortest time between two logged Redis failures; those in between are counted only.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct RedisStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Answers stored.
    pub sets: AtomicU64,
    /// Failed calls and undecodable values; each answered as a miss or dropped.
    pub errors: AtomicU64,
}

/// A handle on the shared tier; cheap to clone.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// Made on first use, inside the runtime that then drives its reconnections.
    conn: OnceLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    stats: RedisStats,
    last_log: Mutex<Option<Instant>>,
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
enum TierError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no connection could be set up")]
    Unusable,
    #[error("stored value does not decode: {0}")]
    Decode(String),
}

impl RedisTier {
    /// A tier for checked settings (the URL parsed when the config was checked).
    pub fn new(settings: &RedisSettings) -> RedisTier {
        let client = redis::Client::open(settings.url.as_str()).expect("the redis URL was checked");
        RedisTier {
            inner: Arc::new(Inner {
                client,
                conn: OnceLock::new(),
                prefix: settings.key_prefix.clone(),
                timeout: settings.timeout,
                stats: RedisStats::default(),
                last_log: Mutex::new(None),
            }),
        }
    }

    pub fn stats(&self) -> &RedisStats {
        &self.inner.stats
    }

    /// The answer stored for `key` and the time it has left, or `None` on a miss or any
    /// failure.
    pub async fn get(&self, key: &CacheKey) -> Option<(CachedResponse, Duration)> {
        let s = &self.inner.stats;
        let k = self.inner.key(key);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&k).cmd("PTTL").arg(&k);
        let result = async {
            let mut conn = self.conn()?;
            self.timed(pipe.query_async(&mut conn)).await
        }
        .await
        .and_then(|(v, ttl): (Option<Vec<u8>>, i64)| {
            // PTTL is negative for a key gone or without expiry; neither is ours to serve.
            let ttl = u64::try_from(ttl).ok().filter(|&ms| ms > 0);
            match (v, ttl) {
                (Some(v), Some(ms)) => Ok(Some((decode(&v)?, Duration::from_millis(ms)))),
                _ => Ok(None),
            }
        });
        match result {
            Ok(Some(hit)) => {
                s.hits.fetch_add(1, Ordering::Relaxed);
                Some(hit)
            }
            Ok(None) => {
                s.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                s.misses.fetch_add(1, Ordering::Relaxed);
                self.failed("get", &e);
                None
            }
        }
    }

    /// Stores an answer for `ttl`; true when Redis took it.
    pub async fn set(&self, key: &CacheKey, response: &CachedResponse, ttl: Duration) -> bool {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.key(key))
            .arg(encode(response))
            .arg("PX")
            .arg(ms);
        let result = async {
            let mut conn = self.conn()?;
            self.timed::<()>(cmd.query_async(&mut conn)).await
        };
        match result.await {
            Ok(()) => {
                self.inner.stats.sets.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed("set", &e);
                false
            }
        }
    }

    /// [`set`](Self::set) without waiting for it.
    pub fn set_in_background(&self, key: CacheKey, response: Arc<CachedResponse>, ttl: Duration) {
        let tier = self.clone();
        tokio::spawn(async move { tier.set(&key, &response, ttl).await });
    }

    /// The connection, made on first use inside the runtime that then drives its
    /// reconnections.
    fn conn(&self) -> Result<ConnectionManager, TierError> {
        let timeout = self.inner.timeout;
        let conn = self.inner.conn.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // A down Redis is retried on the next call, not inside this one.
                .set_number_of_retries(1)
                .set_max_delay(timeout);
            ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config).ok()
        });
        conn.clone().ok_or(TierError::Unusable)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(TierError::Timeout(self.inner.timeout)),
        }
    }

    fn failed(&self, op: &str, e: &TierError) {
        self.inner.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .inner
            .last_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let errors = self.inner.stats.errors.load(Ordering::Relaxed);
            tracing::warn!(op, error = %e, errors, "redis cache tier unavailable; serving without it");
        }
    }
}

impl Inner {
    fn key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.hex())
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    status: u16,
    anthropic: bool,
    endpoint: String,
    model: String,
    usage: Usage,
    cost_nanos: Option<i64>,
}

fn endpoint_path(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Responses => "/v1/responses",
        Endpoint::Messages => "/v1/messages",
        Endpoint::CountTokens => "/v1/messages/count_tokens",
        Endpoint::Other => "/v1/",
    }
}

fn encode(r: &CachedResponse) -> Vec<u8> {
    let header = Header {
        status: r.status,
        anthropic: r.format == ApiFormat::Anthropic,
        endpoint: endpoint_path(r.endpoint).to_string(),
        model: r.model.clone(),
        usage: r.usage,
        cost_nanos: r.cost.map(|c| c.0),
    };
    let header = serde_json::to_vec(&header).expect("a header always serializes");
    let mut out = Vec::with_capacity(8 + header.len() + r.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&r.body);
    out
}

fn decode(v: &[u8]) -> Result<CachedResponse, TierError> {
    let bad = |why: &str| TierError::Decode(why.to_string());
    let rest = v.strip_prefix(MAGIC).ok_or_else(|| bad("unknown format"))?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let (header, body) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
    let h: Header = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let endpoint = Endpoint::from_path(&h.endpoint).ok_or_else(|| bad("unknown endpoint"))?;
    Ok(CachedResponse {
        status: h.status,
        body: Bytes::copy_from_slice(body),
        format: if h.anthropic {
            ApiFormat::Anthropic
        } else {
            ApiFormat::OpenAi
        },
        endpoint,
        model: h.model,
        usage: h.usage,
        cost: h.cost_nanos.map(NanoUsd),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> CachedResponse {
        CachedResponse {
            status: 200,
            body: Bytes::from_static(br#"{"type":"message","content":[]}"#),
            format: ApiFormat::Anthropic,
            endpoint: Endpoint::Messages,
            model: "claude-sonnet-4-5".into(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 2,
                cache_write_tokens: 1,
                reasoning_tokens: 3,
            },
            cost: Some(NanoUsd(123_456)),
        }
    }

    #[test]
    fn values_round_trip() {
        let r = sample();
        assert_eq!(decode(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn damaged_values_are_refused() {
        let v = encode(&sample());
        assert!(decode(&v[..6]).is_err());
        assert!(decode(&v[..20]).is_err());
        assert!(decode(b"XXXX\0\0\0\0").is_err());
        let mut other = v.clone();
        other[0] = b'x';
        assert!(decode(&other).is_err());
    }
}
