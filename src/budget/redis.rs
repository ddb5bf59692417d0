//! Budgets shared exactly through Redis (`replicas.budgets: redis`): each budget period's
//! spend and open reservations are counters in Redis, checked and changed by one Lua script
//! per call, so replicas never both take the last room.
//!
//! A budget period is a hash `{spent, reserved}` (nano-USD), seeded with the spend read at
//! start when Redis has none (so a Redis that lost its data starts from the records, not from
//! zero); each reservation is also kept by id with an expiry, so one whose replica died is
//! released when it expires instead of holding room forever.
//!
//! A Redis that fails or does not answer within its timeout is counted, logged at most every
//! [`crate::cache::redis::LOG_EVERY`], and the request is checked against this process's own
//! accounts instead.

use crate::config::RedisSettings;
use crate::redis_script::{Script, ScriptError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// ARGV: mode (`reserve` or `settle`), now (ms), reservation id, amount (cost reserved, or
/// cost spent), reservation lifetime (ms); then per KEY: limit (-1: never refuses), seed
/// (spend known before), expiry (unix ms). Answers `{0, spent1, reserved1, ...}`, or
/// `{i, spent_i, reserved_i}` when budget i refused the reservation.
const SCRIPT: &str = r"
local mode, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local amount, life = tonumber(ARGV[4]), tonumber(ARGV[5])
local function arg(i, k) return ARGV[5 + (i - 1) * 3 + k] end
for i, key in ipairs(KEYS) do
  redis.call('HSETNX', key, 'spent', arg(i, 2))
  redis.call('HSETNX', key, 'reserved', 0)
  local res, amt = key .. ':res', key .. ':amt'
  local stale = redis.call('ZRANGEBYSCORE', res, '-inf', now)
  for _, sid in ipairs(stale) do
    local a = tonumber(redis.call('HGET', amt, sid) or '0')
    redis.call('HINCRBY', key, 'reserved', -a)
    redis.call('HDEL', amt, sid)
  end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', res, '-inf', now) end
end
if mode == 'reserve' then
  for i, key in ipairs(KEYS) do
    local limit = tonumber(arg(i, 1))
    local spent = tonumber(redis.call('HGET', key, 'spent'))
    local reserved = tonumber(redis.call('HGET', key, 'reserved'))
    if limit >= 0 and spent + reserved + amount > limit then
      return {i, spent, reserved}
    end
  end
end
local out = {0}
for i, key in ipairs(KEYS) do
  local res, amt = key .. ':res', key .. ':amt'
  if mode == 'reserve' then
    redis.call('HINCRBY', key, 'reserved', amount)
    redis.call('ZADD', res, now + life, id)
    redis.call('HSET', amt, id, amount)
  else
    local a = redis.call('HGET', amt, id)
    if a then
      redis.call('HINCRBY', key, 'reserved', -tonumber(a))
      redis.call('HDEL', amt, id)
      redis.call('ZREM', res, id)
    end
    redis.call('HINCRBY', key, 'spent', amount)
  end
  local expire = arg(i, 3)
  redis.call('PEXPIREAT', key, expire)
  redis.call('PEXPIREAT', res, expire)
  redis.call('PEXPIREAT', amt, expire)
  table.insert(out, tonumber(redis.call('HGET', key, 'spent')))
  table.insert(out, tonumber(redis.call('HGET', key, 'reserved')))
end
return out
";

/// One budget period in a call: its key, its limit (`None`: never refuses), the spend known
/// before, and when Redis may forget it.
pub struct Period {
    pub key: String,
    pub limit: Option<i64>,
    pub seed: i64,
    pub expire_at_ms: i64,
}

/// What Redis answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Spent and reserved of each period, after the call.
    Done(Vec<(i64, i64)>),
    /// The period at this index refused: its spent and reserved.
    Refused(usize, i64, i64),
}

pub struct RedisBudgets {
    script: Script,
    errors: AtomicU64,
}

impl RedisBudgets {
    pub fn new(settings: &RedisSettings) -> RedisBudgets {
        RedisBudgets {
            script: Script::new(settings, SCRIPT),
            errors: AtomicU64::new(0),
        }
    }

    pub fn is_for(&self, settings: &RedisSettings) -> bool {
        self.script.settings() == settings
    }

    /// The key of a budget's period. The name goes with its length, so no name can be read
    /// as another name and start.
    pub fn key(&self, budget: &str, start_unix: i64) -> String {
        format!(
            "{}budget:{}:{budget}:{start_unix}",
            self.script.settings().key_prefix,
            budget.len()
        )
    }

    /// Calls that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Reserves `cost` in every period, or in none when one refuses; `None` when Redis gave
    /// no answer (counted and logged).
    pub async fn reserve(
        &self,
        periods: &[Period],
        id: &str,
        cost: i64,
        life: Duration,
    ) -> Option<Answer> {
        self.call("reserve", periods, id, cost, life).await
    }

    /// Replaces reservation `id` with the `actual` cost in every period.
    pub async fn settle(&self, periods: &[Period], id: &str, actual: i64) -> Option<Answer> {
        self.call("settle", periods, id, actual, Duration::ZERO)
            .await
    }

    async fn call(
        &self,
        mode: &str,
        periods: &[Period],
        id: &str,
        amount: i64,
        life: Duration,
    ) -> Option<Answer> {
        let now = chrono::Utc::now().timestamp_millis();
        let keys: Vec<String> = periods.iter().map(|p| p.key.clone()).collect();
        let reply = self
            .script
            .run(&keys, |c| {
                c.arg(mode)
                    .arg(now)
                    .arg(id)
                    .arg(amount)
                    .arg(life.as_millis() as i64);
                for p in periods {
                    c.arg(p.limit.unwrap_or(-1)).arg(p.seed).arg(p.expire_at_ms);
                }
            })
            .await
            .and_then(|reply| match reply[..] {
                [i, spent, reserved] if i > 0 && (i as usize) <= periods.len() => {
                    Ok(Answer::Refused(i as usize - 1, spent, reserved))
                }
                [0, ref rest @ ..] if rest.len() == periods.len() * 2 => {
                    Ok(Answer::Done(rest.chunks(2).map(|c| (c[0], c[1])).collect()))
                }
                _ => Err(ScriptError::Reply(reply)),
            });
        match reply {
            Ok(answer) => Some(answer),
            Err(e) => {
                let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if self.script.log_now() {
                    tracing::warn!(op = mode, error = %e, errors, "redis budget counters unavailable; this process's accounts decide");
                }
                None
            }
        }
    }
}
