//! Rate-limit counters shared by replicas, in Redis. A request's check and charge are one
//! Lua script, atomic across all its counters and timed by Redis's clock, so replicas agree
//! on every counter whatever their own clocks say.
//!
//! Redis is never a dependency: a call that fails or gets no answer within `timeout` is
//! counted (`tollgate_rate_limit_redis_errors_total`), logged at most once per
//! [`LOG_EVERY`], and the request is counted by the local counters instead.

use super::{Charge, Counter, Kind, Refusal, counters, per_str};
use crate::cache::redis::LOG_EVERY;
use crate::config::RedisSettings;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, ServerErrorKind};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// KEYS are counters, each a hash `{level, at}`. ARGV[1] is `take` (charge every counter if
/// each cost fits, else none) or `add` (charge regardless; costs may be negative), then a
/// pair a counter: its limit a minute and the cost. Levels are in units × 60e6 and drain
/// `limit` every microsecond, as in the local counters (here in doubles, exact below 2^53).
/// Answers `{0, 0}`, or `{i, wait}`: counter i refused, and the microseconds until it fits.
const SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local minute = 60000000
local levels = {}
local worst, worst_wait = 0, 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1]) or 0
  local at = tonumber(state[2]) or now
  level = math.max(0, level - math.max(0, now - at) * limit)
  levels[i] = level
  if ARGV[1] == 'take' then
    local over = level + (math.min(cost, limit) - limit) * minute
    if over > 0 then
      local wait = math.ceil(over / limit)
      if wait > worst_wait then
        worst, worst_wait = i, wait
      end
    end
  end
end
if worst > 0 then
  return {worst, worst_wait}
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local level = math.max(0, levels[i] + tonumber(ARGV[2 * i + 1]) * minute)
  redis.call('HSET', key, 'level', level, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(level / limit / 1000) + 1000)
end
return {0, 0}
";

/// The script's SHA-1, as EVALSHA names it.
fn script_sha() -> String {
    use pingora::tls::hash::{MessageDigest, hash};
    let digest = hash(MessageDigest::sha1(), SCRIPT.as_bytes()).expect("SHA-1 is available");
    hex::encode(digest)
}

/// Why a Redis call gave no usable answer.
#[derive(Debug, thiserror::Error)]
enum SharedError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no connection could be set up")]
    Unusable,
    #[error("unexpected answer {0:?}")]
    Reply(Vec<i64>),
}

/// The shared counters of one Redis.
pub struct SharedCounters {
    settings: RedisSettings,
    client: redis::Client,
    /// Made on first use, inside the runtime that then drives its reconnections.
    conn: OnceLock<Option<ConnectionManager>>,
    /// The script's SHA-1, for EVALSHA.
    sha: String,
    errors: IntCounter,
    last_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SharedCounters {
    /// Counters in the Redis of checked settings (the URL was parsed when checked).
    pub fn new(settings: &RedisSettings, errors: IntCounter) -> SharedCounters {
        let client = redis::Client::open(settings.url.as_str()).expect("the redis URL was checked");
        SharedCounters {
            settings: settings.clone(),
            client,
            conn: OnceLock::new(),
            sha: script_sha(),
            errors,
            last_log: Mutex::new(None),
        }
    }

    pub fn is_for(&self, settings: &RedisSettings) -> bool {
        self.settings == *settings
    }

    /// Charges every counter of `charges` if each cost fits, else none. `None` when Redis
    /// gave no answer (counted and logged): the caller counts locally instead.
    pub async fn take(&self, charges: &[Charge], tokens: u64) -> Option<Result<(), Refusal>> {
        let counters: Vec<Counter<'_>> = counters(charges, tokens).collect();
        let calls = counters.iter().map(|c| {
            (
                self.key(c),
                c.max,
                i64::try_from(c.cost).unwrap_or(i64::MAX),
            )
        });
        let reply = self.run("take", calls.collect()).await;
        match reply.and_then(|r| match r[..] {
            [0, _] => Ok(Ok(())),
            [i, wait] if i > 0 && wait > 0 && (i as usize) <= counters.len() => {
                Ok(Err(Refusal::new(&counters[i as usize - 1], wait as u64)))
            }
            _ => Err(SharedError::Reply(r)),
        }) {
            Ok(verdict) => Some(verdict),
            Err(e) => {
                self.failed("take", &e);
                None
            }
        }
    }

    /// Adds `delta` tokens (negative: gives them back) to the token counters of `charges`.
    pub async fn adjust(&self, charges: &[Charge], delta: i64) {
        let calls = counters(charges, 0)
            .filter(|c| c.kind == Kind::Tokens)
            .map(|c| (self.key(&c), c.max, delta))
            .collect();
        if let Err(e) = self.run("add", calls).await {
            self.failed("adjust", &e);
        }
    }

    /// Runs the script on `(key, limit, cost)` counters: EVALSHA, and EVAL when Redis does
    /// not have it yet (after a restart, or on first use). Both within one timeout.
    async fn run(
        &self,
        mode: &str,
        calls: Vec<(String, u64, i64)>,
    ) -> Result<Vec<i64>, SharedError> {
        let mut conn = self.conn()?;
        let call = |cmd: &str, script: &str| {
            let mut c = redis::cmd(cmd);
            c.arg(script).arg(calls.len());
            for (key, _, _) in &calls {
                c.arg(key);
            }
            c.arg(mode);
            for (_, max, cost) in &calls {
                c.arg(max).arg(cost);
            }
            c
        };
        let both = async {
            match call("EVALSHA", &self.sha).query_async(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call("EVAL", SCRIPT).query_async(&mut conn).await
                }
                reply => reply,
            }
        };
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, both).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(SharedError::Timeout(timeout)),
        }
    }

    /// A counter's key. The limit's name goes with its length, so no name and value can be
    /// read as another pair.
    fn key(&self, c: &Counter<'_>) -> String {
        let charge = c.charge;
        format!(
            "{}rl:{}:{}:{}:{}:{}",
            self.settings.key_prefix,
            per_str(charge.per),
            c.kind.as_str(),
            charge.limit.len(),
            charge.limit,
            charge.value
        )
    }

    fn conn(&self) -> Result<ConnectionManager, SharedError> {
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
        conn.clone().ok_or(SharedError::Unusable)
    }

    fn failed(&self, op: &str, e: &SharedError) {
        self.errors.inc();
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let errors = self.errors.get();
            tracing::warn!(op, error = %e, errors, "redis rate-limit counters unavailable; counting locally");
        }
    }
}
