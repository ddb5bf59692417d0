//! Rate limits: requests (RPM) and tokens (TPM) per minute, counted separately for every
//! virtual key, team or user a limit names.
//!
//! Each counter is a GCRA bucket, kept as a level: a request adds its cost and the level
//! drains at the limit's rate, `limit` units a minute. A request is admitted when its cost
//! fits under the limit (a cost larger than the whole limit needs an empty bucket, or it
//! would never fit), so a quiet counter admits a burst of `limit` at once and then one unit
//! every `60 s / limit`. A refused request adds nothing, and waiting until its cost fits
//! (the `retry-after` it is told) admits it.
//!
//! A request is charged to all its counters or to none. Tokens are charged at admission from
//! the request's estimated input, then settled with its real usage when it is recorded: the
//! difference is added (output tokens, spent after admission, count against the next
//! requests) or given back.
//!
//! Counters live in this process, or in Redis when replicas share them ([`redis`]); a Redis
//! call that fails or is slow falls back to the local counters for that request. Counters
//! belong to the limiter, not to a config: a reload that keeps a limit's name keeps its
//! counts, and applies its new rates to them.

pub mod redis;

use self::redis::SharedCounters;
use crate::config::{LimitPer, RedisSettings};
use arc_swap::ArcSwapOption;
use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, Opts};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Microseconds in a minute. Levels are kept in units × this, so a counter of `limit` a
/// minute drains `limit` every microsecond: integer arithmetic, exact.
const MINUTE_US: u128 = 60_000_000;

/// Counters kept before idle ones (drained to empty) are first swept out.
const MIN_SWEEP: usize = 1024;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Kind {
    /// The config field that sets its limit.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "rpm",
            Kind::Tokens => "tpm",
        }
    }

    /// The unit, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
        }
    }
}

pub fn per_str(per: LimitPer) -> &'static str {
    match per {
        LimitPer::Key => "key",
        LimitPer::Team => "team",
        LimitPer::User => "user",
    }
}

/// One limit a request falls under, and whose counter of it the request is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub limit: String,
    pub per: LimitPer,
    /// The key name, team or user the counter belongs to (empty when the request has none:
    /// such requests share one counter).
    pub value: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// One counter of a charge: its limit a minute, and the request's cost on it.
struct Counter<'a> {
    charge: &'a Charge,
    kind: Kind,
    max: u64,
    cost: u64,
}

/// The counters of `charges` for a request of `tokens` (estimated) tokens.
fn counters(charges: &[Charge], tokens: u64) -> impl Iterator<Item = Counter<'_>> {
    charges.iter().flat_map(move |charge| {
        let requests = charge.rpm.map(|max| Counter {
            charge,
            kind: Kind::Requests,
            max,
            cost: 1,
        });
        let tokens = charge.tpm.map(|max| Counter {
            charge,
            kind: Kind::Tokens,
            max,
            cost: tokens,
        });
        requests.into_iter().chain(tokens)
    })
}

/// A request over a limit: the counter that refused it, and how long until it would fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub limit: String,
    pub per: LimitPer,
    pub value: String,
    pub kind: Kind,
    /// The limit a minute.
    pub max: u64,
    pub retry_after: Duration,
}

impl Refusal {
    fn new(c: &Counter<'_>, wait_us: u64) -> Refusal {
        Refusal {
            limit: c.charge.limit.clone(),
            per: c.charge.per,
            value: c.charge.value.clone(),
            kind: c.kind,
            max: c.max,
            retry_after: Duration::from_micros(wait_us),
        }
    }

    /// Whole seconds for `retry-after`, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }
}

/// What an admitted request was charged, to be settled when it is recorded.
#[must_use = "settle the grant with the request's real usage"]
#[derive(Debug)]
pub struct Grant {
    charges: Vec<Charge>,
    /// The estimated input tokens charged to the token counters.
    tokens: u64,
    /// The Redis counters charged too, when replicas share them and Redis answered.
    shared: Option<Arc<SharedCounters>>,
}

/// The counters of every rate limit, in this process and (when shared) in Redis.
pub struct RateLimiter {
    epoch: Instant,
    local: Mutex<Local>,
    /// Made for the Redis settings of the first request that shares counters, and again
    /// when a reload changes them.
    shared: ArcSwapOption<SharedCounters>,
    /// Requests refused, by limit name (names come from the config: bounded).
    rate_limited: IntCounterVec,
    /// Redis calls that failed or timed out, each answered by the local counters.
    redis_errors: IntCounter,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            epoch: Instant::now(),
            local: Mutex::default(),
            shared: ArcSwapOption::empty(),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "tollgate_rate_limited_total",
                    "Requests refused with a 429 by a rate limit, by limit name",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            redis_errors: IntCounter::new(
                "tollgate_rate_limit_redis_errors_total",
                "Rate-limit Redis calls that failed or timed out; their requests were counted locally",
            )
            .expect("valid metric"),
        }
    }

    /// The limiter's metrics, for the registry.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.rate_limited.clone()),
            Box::new(self.redis_errors.clone()),
        ]
    }

    /// Charges a request of `tokens` estimated input tokens to the counters of `charges`,
    /// all of them or none: in Redis when `redis` is given (and answers), else here.
    pub async fn acquire(
        &self,
        charges: Vec<Charge>,
        tokens: u64,
        redis: Option<&RedisSettings>,
    ) -> Result<Grant, Refusal> {
        self.charge(charges, tokens, redis).await.inspect_err(|r| {
            self.rate_limited.with_label_values(&[&r.limit]).inc();
        })
    }

    async fn charge(
        &self,
        charges: Vec<Charge>,
        tokens: u64,
        redis: Option<&RedisSettings>,
    ) -> Result<Grant, Refusal> {
        if let Some(settings) = redis {
            let shared = self.shared(settings);
            if let Some(verdict) = shared.take(&charges, tokens).await {
                // The local counters follow, so a Redis outage starts from this process's
                // own recent traffic rather than from nothing.
                if verdict.is_ok() {
                    let now = self.now();
                    self.local().add(now, &charges, tokens);
                }
                return verdict.map(|()| Grant {
                    charges,
                    tokens,
                    shared: Some(shared),
                });
            }
        }
        let now = self.now();
        self.local().take(now, &charges, tokens)?;
        Ok(Grant {
            charges,
            tokens,
            shared: None,
        })
    }

    /// Settles a grant with the tokens the request really used (input and output): the
    /// difference from the estimate is added to its token counters, or given back.
    pub fn settle(&self, grant: Grant, used_tokens: u64) {
        let delta = i128::from(used_tokens) - i128::from(grant.tokens);
        if delta == 0 || grant.charges.iter().all(|c| c.tpm.is_none()) {
            return;
        }
        let now = self.now();
        self.local().adjust(now, &grant.charges, delta);
        if let Some(shared) = grant.shared
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let delta = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
            runtime.spawn(async move { shared.adjust(&grant.charges, delta).await });
        }
    }

    fn shared(&self, settings: &RedisSettings) -> Arc<SharedCounters> {
        if let Some(shared) = self.shared.load_full()
            && shared.is_for(settings)
        {
            return shared;
        }
        let shared = Arc::new(SharedCounters::new(settings, self.redis_errors.clone()));
        self.shared.store(Some(shared.clone()));
        shared
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A counter's level, in units × [`MINUTE_US`], as of `at` (µs on the limiter's clock).
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    level: u128,
    at: u64,
    /// When the level will have drained to zero at the rate it was last charged with.
    empty_at: u64,
}

impl Bucket {
    fn level(&self, now: u64, max: u64) -> u128 {
        let drained = u128::from(now.saturating_sub(self.at)) * u128::from(max);
        self.level.saturating_sub(drained)
    }

    /// Microseconds until `cost` fits under `max`; 0 when it fits now.
    fn wait(&self, now: u64, max: u64, cost: u64) -> u64 {
        let cap = u128::from(max) * MINUTE_US;
        let need = self.level(now, max) + u128::from(cost.min(max)) * MINUTE_US;
        let over = need.saturating_sub(cap);
        u64::try_from(over.div_ceil(u128::from(max))).unwrap_or(u64::MAX)
    }

    /// Adds `delta` units (negative: gives them back, down to empty).
    fn add(&mut self, now: u64, max: u64, delta: i128) {
        let now = now.max(self.at);
        let level = i128::try_from(self.level(now, max)).unwrap_or(i128::MAX);
        let level = level.saturating_add(delta.saturating_mul(MINUTE_US as i128));
        self.level = u128::try_from(level).unwrap_or(0);
        self.at = now;
        let drain = u64::try_from(self.level.div_ceil(u128::from(max))).unwrap_or(u64::MAX);
        self.empty_at = now.saturating_add(drain);
    }
}

/// The two counters of one limit for one key, team or user.
#[derive(Debug, Default)]
struct Pair {
    requests: Bucket,
    tokens: Bucket,
}

impl Pair {
    fn get(&self, kind: Kind) -> &Bucket {
        match kind {
            Kind::Requests => &self.requests,
            Kind::Tokens => &self.tokens,
        }
    }

    fn get_mut(&mut self, kind: Kind) -> &mut Bucket {
        match kind {
            Kind::Requests => &mut self.requests,
            Kind::Tokens => &mut self.tokens,
        }
    }

    fn idle(&self, now: u64) -> bool {
        self.requests.empty_at <= now && self.tokens.empty_at <= now
    }
}

/// The counters of one limit, by key name, team or user.
#[derive(Debug)]
struct LimitCounters {
    per: LimitPer,
    values: HashMap<String, Pair>,
}

/// This process's counters, by limit name. An idle counter is the same as none, so idle
/// ones are swept out whenever the count doubles: memory stays bounded by the keys, teams
/// and users active within a minute, however many header values clients send.
#[derive(Debug, Default)]
struct Local {
    limits: HashMap<String, LimitCounters>,
    entries: usize,
    sweep_at: usize,
}

impl Local {
    fn bucket(&self, c: &Counter<'_>) -> Option<&Bucket> {
        let limit = self.limits.get(&c.charge.limit)?;
        let pair = limit.values.get(&c.charge.value);
        pair.filter(|_| limit.per == c.charge.per)
            .map(|p| p.get(c.kind))
    }

    fn bucket_mut(&mut self, c: &Counter<'_>) -> &mut Bucket {
        let charge = c.charge;
        let limit = self
            .limits
            .entry(charge.limit.clone())
            .or_insert_with(|| LimitCounters {
                per: charge.per,
                values: HashMap::new(),
            });
        if limit.per != charge.per {
            // The limit now counts something else: its old counters mean nothing.
            self.entries -= limit.values.len();
            limit.values.clear();
            limit.per = charge.per;
        }
        if !limit.values.contains_key(&charge.value) {
            self.entries += 1;
        }
        limit
            .values
            .entry(charge.value.clone())
            .or_default()
            .get_mut(c.kind)
    }

    /// Charges every counter if each cost fits, else none; the refusal names the counter
    /// that would have to wait longest.
    fn take(&mut self, now: u64, charges: &[Charge], tokens: u64) -> Result<(), Refusal> {
        let mut worst: Option<(u64, Counter<'_>)> = None;
        for c in counters(charges, tokens) {
            let wait = self.bucket(&c).map_or(0, |b| b.wait(now, c.max, c.cost));
            if wait > 0 && worst.as_ref().is_none_or(|(w, _)| wait > *w) {
                worst = Some((wait, c));
            }
        }
        if let Some((wait, c)) = worst {
            return Err(Refusal::new(&c, wait));
        }
        self.add(now, charges, tokens);
        Ok(())
    }

    /// Charges every counter without checking: one request, `tokens` on the token counters.
    fn add(&mut self, now: u64, charges: &[Charge], tokens: u64) {
        for c in counters(charges, tokens) {
            self.bucket_mut(&c).add(now, c.max, i128::from(c.cost));
        }
        if self.entries > self.sweep_at {
            self.sweep(now);
        }
    }

    /// Adds `delta` tokens to the token counters of `charges`.
    fn adjust(&mut self, now: u64, charges: &[Charge], delta: i128) {
        for c in counters(charges, 0).filter(|c| c.kind == Kind::Tokens) {
            self.bucket_mut(&c).add(now, c.max, delta);
        }
    }

    fn sweep(&mut self, now: u64) {
        for limit in self.limits.values_mut() {
            limit.values.retain(|_, pair| !pair.idle(now));
        }
        self.limits.retain(|_, limit| !limit.values.is_empty());
        self.entries = self.limits.values().map(|l| l.values.len()).sum();
        self.sweep_at = (self.entries * 2).max(MIN_SWEEP);
    }
}

#[cfg(test)]
mod tests;
