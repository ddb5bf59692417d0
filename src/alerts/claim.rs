//! Claims in Redis, so that of several replicas firing the same alert one sends it.
//!
//! A claim is `SET <prefix>alert:<budget>:<period start>:<kind> <alert id> NX PX <ttl>`,
//! kept until past the period's end. The replica whose id is stored sends; one that finds
//! another id does not. A replica that restarts finds its own id and goes on. Redis is a
//! convenience here too: when it does not answer, the alert is sent anyway, since a repeat
//! is better than silence.

use super::AlertKey;
use crate::config::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica sends the alert.
    Ours,
    /// Another replica claimed it first.
    Elsewhere,
    /// Redis did not answer; the alert is sent.
    Unknown,
}

pub struct Claims {
    client: redis::Client,
    /// Made on first use, inside the runtime that then drives its reconnections.
    conn: OnceLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
}

impl Claims {
    pub fn new(settings: &RedisSettings) -> io::Result<Claims> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Claims {
            client,
            conn: OnceLock::new(),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
        })
    }

    pub fn key(&self, key: &AlertKey) -> String {
        format!("{}alert:{key}", self.prefix)
    }

    /// Claims `key` for the alert `id` until `ttl` from now.
    pub async fn claim(&self, key: &AlertKey, id: &str, ttl: Duration) -> Claim {
        let k = self.key(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let result = async {
            let mut conn = self.conn()?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&k)
                .arg(id)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await?;
            if set.is_some() {
                return Ok(Claim::Ours);
            }
            let holder: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(if holder.as_deref() == Some(id) {
                Claim::Ours
            } else {
                Claim::Elsewhere
            })
        };
        match tokio::time::timeout(self.timeout, result).await {
            Ok(Ok(claim)) => claim,
            Ok(Err(e)) => {
                tracing::warn!(budget = %key.budget, error = %e, "redis did not take the alert's claim; sending it without");
                Claim::Unknown
            }
            Err(_) => {
                tracing::warn!(budget = %key.budget, timeout = ?self.timeout, "redis did not answer the alert's claim in time; sending it without");
                Claim::Unknown
            }
        }
    }

    fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let conn = self.conn.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(self.timeout);
            ConnectionManager::new_lazy_with_config(self.client.clone(), config).ok()
        });
        conn.clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no connection could be set up"))
        })
    }
}
