//! Rate-limit counters shared by replicas, in Redis. A request's check and charge are one
//! Lua script, atomic across all its counters and timed by Redis's clock, so replicas agree
//! on every counter whatever their own clocks say.
//!
//! Redis is never a dependency: a call that fails or gets no answer within `timeout` is
//! counted (`tollgate_rate_limit_redis_errors_total`), logged at most once per
//! [`crate::cache::redis::LOG_EVERY`], and the request is counted by the local counters instead.

use super::{Charge, Counter, Kind, Refusal, counters, per_str};
use crate::config::RedisSettings;
use crate::redis_script::{Script, ScriptError};
use prometheus::IntCounter;

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

/// The shared counters of one Redis.
pub struct SharedCounters {
    script: Script,
    errors: IntCounter,
}

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("settings", self.script.settings())
            .finish_non_exhaustive()
    }
}

impl SharedCounters {
    /// Counters in the Redis of checked settings (the URL was parsed when checked).
    pub fn new(settings: &RedisSettings, errors: IntCounter) -> SharedCounters {
        SharedCounters {
            script: Script::new(settings, SCRIPT),
            errors,
        }
    }

    pub fn is_for(&self, settings: &RedisSettings) -> bool {
        self.script.settings() == settings
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
            _ => Err(ScriptError::Reply(r)),
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

    /// Runs the script on `(key, limit, cost)` counters.
    async fn run(
        &self,
        mode: &str,
        calls: Vec<(String, u64, i64)>,
    ) -> Result<Vec<i64>, ScriptError> {
        let keys: Vec<String> = calls.iter().map(|(key, ..)| key.clone()).collect();
        self.script
            .run(&keys, |c| {
                c.arg(mode);
                for (_, max, cost) in &calls {
                    c.arg(max).arg(cost);
                }
            })
            .await
    }

    /// A counter's key. The limit's name goes with its length, so no name and value can be
    /// read as another pair.
    fn key(&self, c: &Counter<'_>) -> String {
        let charge = c.charge;
        format!(
            "{}rl:{}:{}:{}:{}:{}",
            self.script.settings().key_prefix,
            per_str(charge.per),
            c.kind.as_str(),
            charge.limit.len(),
            charge.limit,
            charge.value
        )
    }

    fn failed(&self, op: &str, e: &ScriptError) {
        self.errors.inc();
        if self.script.log_now() {
            let errors = self.errors.get();
            tracing::warn!(op, error = %e, errors, "redis rate-limit counters unavailable; counting locally");
        }
    }
}
