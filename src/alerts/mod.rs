//! Budget alerts: webhooks told once when a budget's spend reaches one of its thresholds,
//! or is projected to reach its limit before the period ends.
//!
//! [`Alerter::fire`] never blocks: it checks the alert against those already accepted and
//! hands it to a delivery thread of its own. An alert is sent once per budget period and
//! kind ([`AlertKey`]): the [`journal`] under the state directory makes that hold across
//! restarts (and resumes deliveries a crash cut short), [`claim`]s in Redis across replicas.
//! [`message`] says what the webhooks receive, [`deliver`] how it is retried.

pub mod claim;
pub mod deliver;
pub mod journal;
pub mod message;

pub use deliver::Retry;
pub use message::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

use crate::config::{Alerting, Period, RedisSettings, Webhook};
use crate::metrics::AlertMetrics;
use crate::money::NanoUsd;
use arc_swap::ArcSwap;
use chrono::{DateTime, NaiveDate, Utc};
use claim::{Claim, Claims};
use journal::{Entry, Journal, Pending};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// One thing a budget has to say. (Its serialized form is the state file's; webhooks get
/// [`message`]'s.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub budget: String,
    pub kind: AlertKind,
    #[serde(with = "period_name")]
    pub period: Period,
    /// The start of the budget period the alert is about.
    pub period_start: DateTime<Utc>,
    /// The end of that period, when its spend starts again from zero.
    pub resets_at: DateTime<Utc>,
    /// Spend in the period so far.
    pub spend: NanoUsd,
    /// The budget's amount.
    pub limit: NanoUsd,
    /// The budget's scope fields (`Scope::fields`), as `(name, value)`.
    pub scope: Vec<(String, String)>,
    /// When the budget noticed.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AlertKind {
    /// Spend reached `percent` of the limit.
    Threshold { percent: u32 },
    /// Spend is projected to be `projected` by the period's end, reaching the limit on `on`.
    Forecast { projected: NanoUsd, on: NaiveDate },
}

impl AlertKind {
    /// `threshold` or `forecast`.
    pub fn name(&self) -> &'static str {
        match self {
            AlertKind::Threshold { .. } => "threshold",
            AlertKind::Forecast { .. } => "forecast",
        }
    }
}

/// What makes two alerts the same: one is sent per budget, period and threshold, and one
/// forecast per budget and period (however its projection moves).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub budget: String,
    pub period_start: DateTime<Utc>,
    /// `threshold:80` or `forecast`.
    pub kind: String,
}

impl fmt::Display for AlertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.budget,
            self.period_start.timestamp(),
            self.kind
        )
    }
}

impl Alert {
    pub fn key(&self) -> AlertKey {
        let kind = match self.kind {
            AlertKind::Threshold { percent } => format!("threshold:{percent}"),
            AlertKind::Forecast { .. } => "forecast".to_string(),
        };
        AlertKey {
            budget: self.budget.clone(),
            period_start: self.period_start,
            kind,
        }
    }
}

/// Tuning that tests and embedders may change; [`Default`] is what `serve` runs with.
#[derive(Debug, Clone)]
pub struct AlerterOptions {
    /// Alerts waiting or being delivered, at most; past it new ones are dropped and counted.
    pub queue: usize,
    pub retry: Retry,
}

impl Default for AlerterOptions {
    fn default() -> Self {
        AlerterOptions {
            queue: 1024,
            retry: Retry::default(),
        }
    }
}

/// Sends budget alerts to the configured webhooks; cheap to clone. Deliveries run on a
/// thread of its own, which ends once every clone is dropped and its deliveries are done.
#[derive(Clone)]
pub struct Alerter {
    tx: mpsc::UnboundedSender<Work>,
    shared: Arc<Shared>,
}

struct Shared {
    seen: Mutex<Seen>,
    /// Alerts queued or being delivered.
    outstanding: AtomicUsize,
    idle: Notify,
    capacity: usize,
    webhooks: ArcSwap<Vec<Webhook>>,
    metrics: AlertMetrics,
    last_drop_log: Mutex<Option<Instant>>,
}

/// Alerts accepted (queued, being sent, sent, or given up), with the end of their period.
struct Seen {
    keys: HashMap<AlertKey, DateTime<Utc>>,
    /// Size at which keys of periods long over are next dropped.
    prune_at: usize,
}

impl Seen {
    const PRUNE_MIN: usize = 1024;

    fn prune(&mut self) {
        if self.keys.len() >= self.prune_at {
            let now = Utc::now();
            self.keys
                .retain(|_, resets_at| *resets_at + journal::KEEP_AFTER_RESET > now);
            self.prune_at = (self.keys.len() * 2).max(Self::PRUNE_MIN);
        }
    }
}

enum Work {
    New(Alert),
    Resume(Pending),
}

/// Shortest time between two logged drops; those in between are counted only.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Alerter {
    /// An alerter for `cfg`'s webhooks that keeps its state file in `state_dir` (created if
    /// missing) and, given `redis`, shares its claims with other replicas. Alerts that a
    /// previous run accepted but did not deliver are sent again at once.
    pub fn new(
        cfg: &Alerting,
        state_dir: &Path,
        redis: Option<&RedisSettings>,
        metrics: AlertMetrics,
    ) -> io::Result<Alerter> {
        Self::with_options(cfg, state_dir, redis, metrics, AlerterOptions::default())
    }

    pub fn with_options(
        cfg: &Alerting,
        state_dir: &Path,
        redis: Option<&RedisSettings>,
        metrics: AlertMetrics,
        options: AlerterOptions,
    ) -> io::Result<Alerter> {
        let (journal, recovered) = Journal::open(state_dir, Utc::now())?;
        if recovered.skipped_lines > 0 {
            tracing::warn!(path = %journal.path().display(), lines = recovered.skipped_lines, "alert state file had unreadable lines (a write cut short); skipped them");
        }
        let claims = redis.map(Claims::new).transpose()?;
        let client = reqwest::Client::builder()
            .connect_timeout(options.retry.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(io::Error::other)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen {
                keys: recovered.keys,
                prune_at: Seen::PRUNE_MIN,
            }),
            outstanding: AtomicUsize::new(recovered.pending.len()),
            idle: Notify::new(),
            capacity: options.queue.max(1),
            webhooks: ArcSwap::from_pointee(cfg.webhooks.clone()),
            metrics,
            last_drop_log: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        for p in recovered.pending {
            tracing::info!(budget = %p.alert.budget, alert_id = %p.id, "resuming an alert a previous run did not finish delivering");
            let _ = tx.send(Work::Resume(p));
        }
        let worker = Worker {
            shared: shared.clone(),
            journal: Arc::new(journal),
            claims: claims.map(Arc::new),
            client,
            retry: options.retry,
        };
        std::thread::Builder::new()
            .name("tollgate-alerts".into())
            .spawn(move || runtime.block_on(worker.run(rx)))?;
        Ok(Alerter { tx, shared })
    }

    /// Queues `alert` for every webhook unless one with the same [`AlertKey`] was accepted
    /// before (in this run or a previous one). Returns at once; with no webhook configured
    /// it does nothing.
    pub fn fire(&self, alert: Alert) {
        let s = &self.shared;
        if s.webhooks.load().is_empty() {
            return;
        }
        let (key, resets_at) = (alert.key(), alert.resets_at);
        let mut seen = s.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.keys.contains_key(&key) {
            return;
        }
        seen.prune();
        let queued = s.outstanding.fetch_add(1, Ordering::AcqRel);
        if queued >= s.capacity || self.tx.send(Work::New(alert)).is_err() {
            drop(seen);
            s.finished();
            s.dropped(&key, queued);
            return;
        }
        seen.keys.insert(key, resets_at);
    }

    /// Waits until every queued alert is delivered or given up, for at most `deadline`;
    /// true when none is left.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.outstanding.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return self.shared.outstanding.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Takes the webhooks of a reloaded config. Alerts already queued go to those of the
    /// new list that have the names they were queued for.
    pub fn reconfigure(&self, cfg: &Alerting) {
        self.shared.webhooks.store(Arc::new(cfg.webhooks.clone()));
    }

    /// Alerts queued or being delivered now.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }
}

impl Shared {
    fn finished(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn dropped(&self, key: &AlertKey, queued: usize) {
        self.metrics.dropped.inc();
        let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(budget = %key.budget, kind = %key.kind, queued, "alert queue full; alert dropped (it is accepted again when fired again)");
        }
    }
}

/// The delivery thread's side.
struct Worker {
    shared: Arc<Shared>,
    journal: Arc<Journal>,
    claims: Option<Arc<Claims>>,
    client: reqwest::Client,
    retry: Retry,
}

impl Worker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Work>) {
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                work = rx.recv() => match work {
                    Some(work) => {
                        let this = this.clone();
                        tasks.spawn(async move {
                            this.handle(work).await;
                            this.shared.finished();
                        });
                    }
                    None => break,
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "alert delivery task failed");
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn handle(&self, work: Work) {
        let pending = match work {
            Work::Resume(p) => p,
            Work::New(alert) => {
                let webhooks: Vec<String> = self
                    .shared
                    .webhooks
                    .load()
                    .iter()
                    .map(|w| w.name.clone())
                    .collect();
                let p = Pending {
                    id: uuid::Uuid::now_v7().to_string(),
                    alert,
                    webhooks,
                };
                self.record(Entry::Queued {
                    id: p.id.clone(),
                    alert: p.alert.clone(),
                    webhooks: p.webhooks.clone(),
                })
                .await;
                p
            }
        };
        let Pending {
            id,
            alert,
            webhooks,
        } = pending;
        if let Some(claims) = &self.claims {
            let keep = alert.resets_at + journal::KEEP_AFTER_RESET - Utc::now();
            let ttl = keep
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(60));
            if claims.claim(&alert.key(), &id, ttl).await == Claim::Elsewhere {
                tracing::debug!(budget = %alert.budget, alert_id = %id, "another replica sends this alert");
                self.record(Entry::ClaimedElsewhere { id }).await;
                return;
            }
        }
        let hooks = self.shared.webhooks.load_full();
        let sends = webhooks.iter().map(|name| {
            let (id, alert) = (&id, &alert);
            let hook = hooks.iter().find(|h| &h.name == name);
            async move {
                let Some(hook) = hook else {
                    tracing::info!(webhook = %name, alert_id = %id, "webhook no longer configured; alert not sent to it");
                    return;
                };
                let webhook = hook.name.clone();
                let id = id.clone();
                if deliver::deliver(&self.client, hook, &id, alert, &self.retry).await {
                    self.shared.metrics.sent.with_label_values(&[&webhook]).inc();
                    self.record(Entry::Sent { id, webhook }).await;
                } else {
                    self.shared.metrics.failed.with_label_values(&[&webhook]).inc();
                    self.record(Entry::GivenUp { id, webhook }).await;
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Writes `entry` durably. A failure is logged and delivery goes on: the alert is
    /// still worth sending, only its state may be lost.
    async fn record(&self, entry: Entry) {
        let journal = self.journal.clone();
        let written = tokio::task::spawn_blocking(move || journal.append(&entry)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %self.journal.path().display(), error = %e, "alert state not written")
            }
            Err(e) => tracing::error!(error = %e, "alert state not written"),
        }
    }
}

/// A [`Period`] by its config name.
mod period_name {
    use crate::config::Period;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Period, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        let name = String::deserialize(d)?;
        [Period::Day, Period::Week, Period::Month]
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown period {name:?}")))
    }
}
