//! One Lua script run against a Redis shared by replicas (rate-limit and budget counters):
//! a lazily made connection that reconnects on its own, EVALSHA with EVAL when Redis does
//! not know the script yet, one timeout over both, and failures counted and logged at most
//! every [`LOG_EVERY`]. Callers fall back to this process's own counters on any failure.

use crate::cache::redis::LOG_EVERY;
use crate::config::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ServerErrorKind};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a script call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no connection could be set up")]
    Unusable,
    #[error("unexpected answer {0:?}")]
    Reply(Vec<i64>),
}

pub struct Script {
    settings: RedisSettings,
    client: redis::Client,
    /// Made on first use, inside the runtime that then drives its reconnections.
    conn: OnceLock<Option<ConnectionManager>>,
    source: &'static str,
    /// The script's SHA-1, as EVALSHA names it.
    sha: String,
    last_log: Mutex<Option<Instant>>,
}

impl Script {
    /// `source` in the Redis of checked settings (the URL was parsed when checked).
    pub fn new(settings: &RedisSettings, source: &'static str) -> Script {
        use pingora::tls::hash::{MessageDigest, hash};
        let digest = hash(MessageDigest::sha1(), source.as_bytes()).expect("SHA-1 is available");
        Script {
            settings: settings.clone(),
            client: redis::Client::open(settings.url.as_str()).expect("the redis URL was checked"),
            conn: OnceLock::new(),
            source,
            sha: hex::encode(digest),
            last_log: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Runs the script with `keys` and the arguments `args` adds, within the timeout.
    pub async fn run(
        &self,
        keys: &[String],
        args: impl Fn(&mut redis::Cmd),
    ) -> Result<Vec<i64>, ScriptError> {
        let mut conn = self.conn()?;
        let call = |cmd: &str, script: &str| {
            let mut c = redis::cmd(cmd);
            c.arg(script).arg(keys.len());
            for key in keys {
                c.arg(key);
            }
            args(&mut c);
            c
        };
        let both = async {
            match call("EVALSHA", &self.sha).query_async(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call("EVAL", self.source).query_async(&mut conn).await
                }
                reply => reply,
            }
        };
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, both).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(ScriptError::Timeout(timeout)),
        }
    }

    fn conn(&self) -> Result<ConnectionManager, ScriptError> {
        let timeout = self.settings.timeout;
        let conn = self.conn.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // A down Redis is retried on the next call, not inside this one.
                .set_number_of_retries(1)
                .set_max_delay(timeout);
            ConnectionManager::new_lazy_with_config(self.client.clone(), config).ok()
        });
        conn.clone().ok_or(ScriptError::Unusable)
    }

    /// Whether a failure should be logged now: the first, then at most every [`LOG_EVERY`].
    pub fn log_now(&self) -> bool {
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}
