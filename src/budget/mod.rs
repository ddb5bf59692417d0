//! Budgets: what each budget's current period has spent, what requests in flight may still
//! spend (their reservations), and the decisions made from both.
//!
//! A request reserves its largest possible cost against every budget whose scope holds it
//! before anything is forwarded; a blocking budget refuses a request whose reservation does
//! not fit. When the request's record is made the reservation is settled to the real cost
//! (what a failure or an abort spent, often nothing); a cache hit reserves nothing. All
//! accounts sit behind one lock, held for a few comparisons, so concurrent requests cannot
//! both take the last room. Replicas share spend through ClickHouse ([`shared`]) or exactly
//! through Redis ([`redis`]), where the accounts mirror Redis's counters.

pub mod forecast;
pub mod metrics;
pub mod period;
pub mod redis;
pub mod shared;
pub mod startup;
pub mod view;

use self::redis::RedisBudgets;
use crate::attribution::Attribution;
use crate::config::{Budget, BudgetAction, Sharing, Spend};
use crate::money::NanoUsd;
use chrono::{DateTime, NaiveDate, Utc};
use forecast::DailySpend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One budget's current period.
#[derive(Debug, Clone)]
struct Account {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// Spend of the period known from outside this process's records: read at start, or
    /// read back from shared storage.
    base: NanoUsd,
    /// Spend this process recorded since `base` was read.
    spent: NanoUsd,
    /// Costs reserved by requests in flight.
    reserved: NanoUsd,
    /// Alert thresholds (percent) already passed this period.
    alerted: Vec<u32>,
    forecast_alerted: bool,
    daily: DailySpend,
}

impl Account {
    fn spend(&self) -> NanoUsd {
        self.base + self.spent
    }

    fn committed(&self) -> NanoUsd {
        self.spend() + self.reserved
    }
}

/// Spend known at start for a budget: the period it is for, its total, and its days.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub start: Option<DateTime<Utc>>,
    pub total: NanoUsd,
    /// The part of `total` in ledger records not shipped yet.
    pub unshipped: NanoUsd,
    pub days: Vec<(NaiveDate, NanoUsd)>,
}

/// The budget accounts of this process.
#[derive(Default)]
pub struct Budgets {
    accounts: Mutex<HashMap<String, Account>>,
    /// Spend read at start, by budget name, used when the budget's account is first made.
    known: Mutex<HashMap<String, Known>>,
    /// Requests refused, by budget.
    rejections: Mutex<HashMap<String, u64>>,
    /// This process's spend not shipped yet, when budgets are shared through ClickHouse.
    /// Locked after `accounts` when both are.
    unshipped: Mutex<Option<shared::Unshipped>>,
    /// The counters' Redis, when budgets are shared through it.
    shared_redis: Mutex<Option<Arc<RedisBudgets>>>,
    /// Spend known at start, by budget: what Redis starts a period from when it has none.
    seeds: Mutex<HashMap<String, (DateTime<Utc>, NanoUsd)>>,
}

/// How long a reservation held in Redis outlives a replica that died holding it.
const RESERVATION_LIFE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A budget that a request's reservation would take past its amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub budget: String,
    /// Spent and reserved so far this period.
    pub spend: NanoUsd,
    pub limit: NanoUsd,
    pub resets_at: DateTime<Utc>,
    pub action: BudgetAction,
}

/// A threshold a settled request took a budget past, or a forecast past its amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub budget: String,
    pub kind: CrossingKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub spend: NanoUsd,
    pub limit: NanoUsd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossingKind {
    Threshold(u32),
    /// The period's spend is projected to reach the amount on this day.
    Forecast {
        projected: NanoUsd,
        on: NaiveDate,
    },
}

/// A budget's state, for metrics and the usage endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub budget: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub spend: NanoUsd,
    pub reserved: NanoUsd,
    pub limit: NanoUsd,
    /// Projected spend at the period's end.
    pub forecast: NanoUsd,
}

impl Status {
    pub fn remaining(&self) -> NanoUsd {
        NanoUsd(self.limit.0 - self.spend.0 - self.reserved.0)
    }
}

impl Budgets {
    /// Accounts starting from spend read at start (see [`startup`]).
    pub fn new(known: HashMap<String, Known>) -> Arc<Budgets> {
        let seeds = known
            .iter()
            .filter_map(|(name, k)| Some((name.clone(), (k.start?, k.total))))
            .collect();
        Arc::new(Budgets {
            seeds: Mutex::new(seeds),
            shared_redis: Mutex::default(),
            accounts: Mutex::default(),
            known: Mutex::new(known),
            rejections: Mutex::default(),
            unshipped: Mutex::default(),
        })
    }

    /// Starts telling this process's shipped spend from the rest (see [`shared`]): its
    /// ledger's request lines written so far, the sink's progress, and the spend in the
    /// backlog the sink found at start.
    pub fn track_shipping(
        &self,
        written: Arc<std::sync::atomic::AtomicU64>,
        progress: crate::sink::Progress,
    ) {
        let mut u = shared::Unshipped::new(written, progress);
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (name, k) in known.iter() {
            if let Some(start) = k.start {
                u.push_backlog(name, start, k.unshipped);
            }
        }
        *self.unshipped.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
    }

    fn shipped_lines(&self) -> Option<u64> {
        let u = self.unshipped.lock().unwrap_or_else(|e| e.into_inner());
        u.as_ref().map(shared::Unshipped::shipped)
    }

    /// Takes a budget's period spend read back from shared storage (`base`, which holds
    /// every line shipped by `shipped`), plus this process's spend not shipped yet.
    fn rebase(
        &self,
        spend: &Spend,
        budget: &Budget,
        start: DateTime<Utc>,
        base: NanoUsd,
        shipped: u64,
        now: DateTime<Utc>,
    ) {
        let mut accounts = self.lock();
        let a = self.account(&mut accounts, spend, budget, now);
        if a.start != start {
            return;
        }
        let mut u = self.unshipped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = u.as_mut() {
            a.base = base;
            a.spent = u.left(shipped, &budget.name, start);
        }
    }

    /// Takes spend read for budgets a reload added or changed (see
    /// [`startup::load_for_new`]): kept for their accounts when these are made, or taken
    /// into accounts already made since the reload (their requests may then count twice,
    /// never not at all).
    pub fn adopt(&self, known: HashMap<String, Known>) {
        let mut accounts = self.lock();
        let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (name, k) in known {
            if let Some(start) = k.start {
                seeds.insert(name.clone(), (start, k.total));
            }
            match accounts.get_mut(&name) {
                Some(a) if Some(a.start) == k.start => {
                    a.base = a.base.max(k.total);
                    a.daily = forecast::DailySpend::from_days(k.days);
                }
                Some(_) => {}
                None => {
                    pending.insert(name, k);
                }
            }
        }
    }

    /// Counts a request `budget` refused.
    pub fn rejected(&self, budget: &str) {
        let mut counts = self.rejections.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(budget.to_string()).or_default() += 1;
    }

    /// Requests refused so far, by budget.
    pub fn rejections(&self) -> HashMap<String, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Account>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account of `budget` for the period holding `now`, made (or rolled to a new
    /// period) as needed.
    fn account<'a>(
        &self,
        accounts: &'a mut HashMap<String, Account>,
        spend: &Spend,
        budget: &Budget,
        now: DateTime<Utc>,
    ) -> &'a mut Account {
        let (start, end) = period::bounds(budget.period, spend.time_zone, now);
        let account = accounts.entry(budget.name.clone()).or_insert_with(|| {
            let known = self
                .known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&budget.name)
                .unwrap_or_default();
            let base = if known.start == Some(start) {
                known.total
            } else {
                NanoUsd::ZERO
            };
            Account {
                start,
                end,
                base,
                spent: NanoUsd::ZERO,
                reserved: NanoUsd::ZERO,
                alerted: Vec::new(),
                forecast_alerted: false,
                daily: DailySpend::from_days(known.days),
            }
        });
        if account.start != start {
            // A new period: what was reserved in the old one settles there.
            *account = Account {
                start,
                end,
                base: NanoUsd::ZERO,
                spent: NanoUsd::ZERO,
                reserved: NanoUsd::ZERO,
                alerted: Vec::new(),
                forecast_alerted: false,
                daily: std::mem::take(&mut account.daily),
            };
        }
        account
    }

    /// The budgets of `spend` whose scope holds the request, in config order.
    pub fn in_scope<'a>(spend: &'a Spend, who: &Attribution) -> impl Iterator<Item = &'a Budget> {
        spend.budgets.iter().filter(move |b| b.scope.matches(who))
    }

    /// The first downgrading budget in scope that `cost` would take past its amount.
    pub fn downgrade(
        &self,
        spend: &Spend,
        who: &Attribution,
        cost: NanoUsd,
        now: DateTime<Utc>,
    ) -> Option<Over> {
        let mut accounts = self.lock();
        Self::in_scope(spend, who)
            .filter(|b| matches!(b.action, BudgetAction::Downgrade(_)))
            .find_map(|b| {
                let a = self.account(&mut accounts, spend, b, now);
                (a.committed() + cost > b.amount).then(|| over(b, a))
            })
    }

    /// Reserves `cost` against every budget in scope, or none of them when a blocking
    /// budget would go past its amount. Also returns the tightest budget's remaining
    /// amount before this reservation.
    pub fn reserve(
        self: &Arc<Self>,
        spend: &Spend,
        who: &Attribution,
        cost: NanoUsd,
        now: DateTime<Utc>,
    ) -> Result<Reservation, Over> {
        let mut accounts = self.lock();
        let mut held = Vec::new();
        let mut tightest: Option<NanoUsd> = None;
        for b in Self::in_scope(spend, who) {
            let a = self.account(&mut accounts, spend, b, now);
            if b.action == BudgetAction::Block && a.committed() + cost > b.amount {
                return Err(over(b, a));
            }
            let left = NanoUsd(b.amount.0 - a.committed().0);
            tightest = Some(tightest.map_or(left, |t| t.min(left)));
            held.push((b.name.clone(), a.start));
        }
        for (name, _) in &held {
            if let Some(a) = accounts.get_mut(name) {
                a.reserved += cost;
            }
        }
        Ok(Reservation {
            budgets: self.clone(),
            held,
            cost,
            remaining: tightest,
            settled: false,
            shared: None,
        })
    }

    /// The Redis of budgets shared through it (`replicas.budgets: redis`), made on first use
    /// and again when a reload points elsewhere.
    pub fn redis(&self, spend: &Spend) -> Option<Arc<RedisBudgets>> {
        let settings = spend
            .redis
            .as_ref()
            .filter(|_| spend.budget_sharing == Sharing::Redis)?;
        let mut shared = self.shared_redis.lock().unwrap_or_else(|e| e.into_inner());
        match shared.as_ref() {
            Some(r) if r.is_for(settings) => Some(r.clone()),
            _ => {
                let r = Arc::new(RedisBudgets::new(settings));
                *shared = Some(r.clone());
                Some(r)
            }
        }
    }

    /// Reserves `cost` in Redis for every budget in scope, or refuses; `None` when Redis gave
    /// no answer (the caller reserves locally instead).
    pub async fn reserve_shared(
        self: &Arc<Self>,
        redis: Arc<RedisBudgets>,
        spend: &Spend,
        who: &Attribution,
        cost: NanoUsd,
        now: DateTime<Utc>,
    ) -> Option<Result<Reservation, Over>> {
        let budgets: Vec<&Budget> = Self::in_scope(spend, who).collect();
        let periods: Vec<redis::Period> = budgets
            .iter()
            .map(|b| {
                let (start, end) = period::bounds(b.period, spend.time_zone, now);
                redis::Period {
                    key: redis.key(&b.name, start.timestamp()),
                    limit: (b.action == BudgetAction::Block).then_some(b.amount.0),
                    seed: self.seed(&b.name, start).0,
                    // Kept past the period's end for late settlements and reports.
                    expire_at_ms: (end + chrono::Duration::days(2)).timestamp_millis(),
                }
            })
            .collect();
        let id = uuid::Uuid::now_v7().to_string();
        let answer = redis
            .reserve(&periods, &id, cost.0, RESERVATION_LIFE)
            .await?;
        let mut accounts = self.lock();
        Some(match answer {
            redis::Answer::Refused(i, spent, reserved) => {
                let b = budgets[i];
                let a = self.account(&mut accounts, spend, b, now);
                a.base = NanoUsd(spent);
                a.spent = NanoUsd::ZERO;
                a.reserved = NanoUsd(reserved);
                Err(over(b, a))
            }
            redis::Answer::Done(states) => {
                let mut held = Vec::new();
                let mut tightest: Option<NanoUsd> = None;
                for (b, (spent, reserved)) in budgets.iter().zip(states) {
                    let a = self.account(&mut accounts, spend, b, now);
                    a.base = NanoUsd(spent);
                    a.spent = NanoUsd::ZERO;
                    a.reserved = NanoUsd(reserved);
                    // Left before this request's own reservation.
                    let left = NanoUsd(b.amount.0 - spent - (reserved - cost.0));
                    tightest = Some(tightest.map_or(left, |t| t.min(left)));
                    held.push((b.name.clone(), a.start));
                }
                Ok(Reservation {
                    budgets: self.clone(),
                    held: held.clone(),
                    cost,
                    remaining: tightest,
                    settled: false,
                    shared: Some(SharedHold {
                        redis,
                        periods,
                        held,
                        id,
                    }),
                })
            }
        })
    }

    /// Takes Redis's counts after a settlement into the accounts of the same periods.
    fn take_shared(&self, held: &[(String, DateTime<Utc>)], states: &[(i64, i64)]) {
        let mut accounts = self.lock();
        for ((name, start), (spent, reserved)) in held.iter().zip(states) {
            if let Some(a) = accounts.get_mut(name).filter(|a| a.start == *start) {
                a.base = NanoUsd(*spent);
                a.spent = NanoUsd::ZERO;
                a.reserved = NanoUsd(*reserved);
            }
        }
    }

    /// The spend known at start for a budget's period starting at `start` (Redis's seed).
    fn seed(&self, name: &str, start: DateTime<Utc>) -> NanoUsd {
        let seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        seeds
            .get(name)
            .filter(|(s, _)| *s == start)
            .map_or(NanoUsd::ZERO, |(_, total)| *total)
    }

    /// Every configured budget's state at `now`.
    pub fn statuses(&self, spend: &Spend, now: DateTime<Utc>) -> Vec<Status> {
        let mut accounts = self.lock();
        spend
            .budgets
            .iter()
            .map(|b| {
                let a = self.account(&mut accounts, spend, b, now);
                Status {
                    budget: b.name.clone(),
                    start: a.start,
                    end: a.end,
                    spend: a.spend(),
                    reserved: a.reserved,
                    limit: b.amount,
                    forecast: forecast::project(&a.daily, a.spend(), a.end, now, spend),
                }
            })
            .collect()
    }

    fn settle(
        &self,
        spend: &Spend,
        held: &[(String, DateTime<Utc>)],
        reserved: NanoUsd,
        actual: NanoUsd,
        now: DateTime<Utc>,
    ) -> Vec<Crossing> {
        let mut accounts = self.lock();
        let mut unshipped = self.unshipped.lock().unwrap_or_else(|e| e.into_inner());
        let mut crossings = Vec::new();
        for (name, start) in held {
            let Some(a) = accounts.get_mut(name) else {
                continue;
            };
            if a.start != *start {
                // Reserved in a period that has ended: its spend belongs there.
                continue;
            }
            a.reserved = NanoUsd(a.reserved.0 - reserved.0).max(NanoUsd::ZERO);
            a.spent += actual;
            if let Some(u) = unshipped.as_mut()
                && actual != NanoUsd::ZERO
            {
                u.push(name, *start, actual);
            }
            a.daily.add(now, spend.time_zone, actual);
            // A budget removed by a reload has no thresholds any more.
            if let Some(b) = spend.budgets.iter().find(|b| &b.name == name) {
                crossings.extend(crossed(b, a, now, spend));
            }
        }
        crossings
    }
}

fn over(b: &Budget, a: &Account) -> Over {
    Over {
        budget: b.name.clone(),
        spend: a.committed(),
        limit: b.amount,
        resets_at: a.end,
        action: b.action.clone(),
    }
}

/// The thresholds `a`'s spend has passed and not yet alerted on, and a forecast past the
/// amount; each is marked so it is reported once per period.
fn crossed(b: &Budget, a: &mut Account, now: DateTime<Utc>, spend: &Spend) -> Vec<Crossing> {
    let mut out = Vec::new();
    let total = a.spend();
    let at = |kind| Crossing {
        budget: b.name.clone(),
        kind,
        start: a.start,
        end: a.end,
        spend: total,
        limit: b.amount,
    };
    for &pct in &b.alert_at {
        // spend / amount >= pct / 100, in integers.
        let reached = i128::from(total.0) * 100 >= i128::from(b.amount.0) * i128::from(pct);
        if reached && !a.alerted.contains(&pct) {
            a.alerted.push(pct);
            out.push(at(CrossingKind::Threshold(pct)));
        }
    }
    if !a.forecast_alerted && total < b.amount {
        let projected = forecast::project(&a.daily, total, a.end, now, spend);
        if projected > b.amount
            && let Some(on) = forecast::reaches(&a.daily, total, b.amount, now, a.end, spend)
        {
            a.forecast_alerted = true;
            out.push(at(CrossingKind::Forecast { projected, on }));
        }
    }
    out
}

/// Costs reserved for one request; settled when its record is made, released when it is
/// dropped unsettled.
pub struct Reservation {
    budgets: Arc<Budgets>,
    held: Vec<(String, DateTime<Utc>)>,
    cost: NanoUsd,
    remaining: Option<NanoUsd>,
    settled: bool,
    /// Where the reservation is also held when budgets are shared through Redis.
    shared: Option<SharedHold>,
}

/// A reservation held in Redis: its periods and id.
struct SharedHold {
    redis: Arc<RedisBudgets>,
    periods: Vec<redis::Period>,
    /// The budgets and period starts of `periods`, in the same order.
    held: Vec<(String, DateTime<Utc>)>,
    id: String,
}

impl SharedHold {
    /// Settles in Redis without holding the caller up; the accounts take Redis's answer.
    fn settle(self, budgets: Arc<Budgets>, actual: NanoUsd) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutdown): the reservation expires in Redis by itself.
            return;
        };
        rt.spawn(async move {
            if let Some(redis::Answer::Done(states)) =
                self.redis.settle(&self.periods, &self.id, actual.0).await
            {
                budgets.take_shared(&self.held, &states);
            }
        });
    }
}

impl Reservation {
    /// The tightest budget's amount left before this request, when any budget holds it.
    pub fn remaining(&self) -> Option<NanoUsd> {
        self.remaining
    }

    pub fn cost(&self) -> NanoUsd {
        self.cost
    }

    /// Settles to what the request really cost (0 when unknown: an unpriced model).
    pub fn settle(&mut self, spend: &Spend, actual: NanoUsd, now: DateTime<Utc>) -> Vec<Crossing> {
        if self.settled {
            return Vec::new();
        }
        self.settled = true;
        if let Some(hold) = self.shared.take() {
            hold.settle(self.budgets.clone(), actual);
        }
        self.budgets
            .settle(spend, &self.held, self.cost, actual, now)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            if let Some(hold) = self.shared.take() {
                hold.settle(self.budgets.clone(), NanoUsd::ZERO);
            }
            self.budgets.settle(
                &Spend::default(),
                &self.held,
                self.cost,
                NanoUsd::ZERO,
                Utc::now(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
