//! Spend shared by replicas through ClickHouse (`replicas.budgets: clickhouse`): every
//! `replicas.refresh_ms` each budget's period spend is read back from the `requests` table
//! (every replica's shipped records), and this process's records not shipped yet are added
//! on top; its open reservations stay as they are.
//!
//! "Not shipped yet" is told by line counts: the sink ships the requests stream in order,
//! the backlog left by earlier runs first. A record settled after its ledger line is written
//! takes that line's number (or a larger one), so it is counted locally until the sink has
//! shipped past it, and from ClickHouse after: it may be counted twice for one refresh,
//! never missed.

use super::{Budgets, startup};
use crate::config::{Sharing, Validated};
use crate::money::NanoUsd;
use crate::sink::Progress;
use crate::sink::clickhouse::ClickHouse;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// This process's settled spend, by ledger line, until the sink has shipped it.
pub(super) struct Unshipped {
    written: Arc<AtomicU64>,
    progress: Progress,
    entries: VecDeque<Entry>,
}

struct Entry {
    line: u64,
    budget: String,
    start: DateTime<Utc>,
    cost: NanoUsd,
}

impl Unshipped {
    pub(super) fn new(written: Arc<AtomicU64>, progress: Progress) -> Unshipped {
        Unshipped {
            written,
            progress,
            entries: VecDeque::new(),
        }
    }

    /// Notes spend recorded just now (its ledger line already written).
    pub(super) fn push(&mut self, budget: &str, start: DateTime<Utc>, cost: NanoUsd) {
        let line = self.progress.backlog_at_start + self.written.load(Ordering::Acquire);
        self.entries.push_back(Entry {
            line,
            budget: budget.to_string(),
            start,
            cost,
        });
    }

    /// Notes spend of the backlog left by an earlier run: shipped before any new line.
    pub(super) fn push_backlog(&mut self, budget: &str, start: DateTime<Utc>, cost: NanoUsd) {
        self.entries.push_back(Entry {
            line: self.progress.backlog_at_start,
            budget: budget.to_string(),
            start,
            cost,
        });
    }

    /// Lines shipped so far: read before ClickHouse is asked.
    pub(super) fn shipped(&self) -> u64 {
        self.progress.shipped.load(Ordering::Acquire)
    }

    /// Forgets what was shipped by `shipped` lines, and sums what is left for a budget.
    pub(super) fn left(&mut self, shipped: u64, budget: &str, start: DateTime<Utc>) -> NanoUsd {
        while self.entries.front().is_some_and(|e| e.line <= shipped) {
            self.entries.pop_front();
        }
        self.entries
            .iter()
            .filter(|e| e.budget == budget && e.start == start)
            .map(|e| e.cost)
            .sum()
    }
}

/// Reads every budget's spend back from ClickHouse once.
pub async fn refresh(budgets: &Budgets, cfg: &Validated, ch: &ClickHouse) -> Result<(), String> {
    let Some(shipped) = budgets.shipped_lines() else {
        return Ok(());
    };
    let now = Utc::now();
    for b in &cfg.spend.budgets {
        let (start, _) = super::period::bounds(b.period, cfg.spend.time_zone, now);
        let days = startup::clickhouse_days(ch, b, &cfg.spend, start).await?;
        let base = days.iter().map(|(_, cost)| *cost).sum();
        budgets.rebase(&cfg.spend, b, start, base, shipped, now);
    }
    Ok(())
}

/// Runs [`refresh`] every `replicas.refresh_ms` while budgets are shared through ClickHouse.
pub struct RefreshService {
    pub budgets: Arc<Budgets>,
    pub config: Arc<ArcSwap<Validated>>,
    pub ch: ClickHouse,
}

/// Shortest time between two logged refresh failures.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[async_trait]
impl BackgroundService for RefreshService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut logged: Option<Instant> = None;
        loop {
            let cfg = self.config.load_full();
            if cfg.spend.budget_sharing == Sharing::ClickHouse
                && let Err(e) = refresh(&self.budgets, &cfg, &self.ch).await
                && logged.is_none_or(|t| t.elapsed() >= LOG_EVERY)
            {
                tracing::warn!(error = %e, "budget spend not refreshed from ClickHouse");
                logged = Some(Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.spend.refresh) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
