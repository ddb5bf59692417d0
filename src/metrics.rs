//! Prometheus metrics, served on the admin listener.
//!
//! Cost is counted in integer nano-USD and turned into USD only when scraped, so the
//! exported total is exact rather than a running sum of floats.

use crate::api::Endpoint;
use crate::cache::{CacheStats, RedisTier};
use crate::money::NANOS_PER_USD;
use crate::record::{AttemptRecord, Record};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Label value standing for every attribution past the series cap.
pub const OVERFLOW: &str = "__overflow__";
/// Distinct (team, project, env, model) label sets exported before new ones are pooled.
pub const MAX_ATTRIBUTION_SERIES: usize = 10_000;
/// Bytes of label values those sets may hold in all; long values fill it sooner, so a few
/// huge names cannot bloat `/metrics` where many short ones would not.
pub const MAX_ATTRIBUTION_BYTES: usize = 2 * 1024 * 1024;

/// Distinct outcome labels exported before new ones are pooled under [`OVERFLOW`].
pub const MAX_OUTCOME_LABELS: usize = 100;

/// Remembers which attribution label sets have series, up to a count and a byte cap.
struct SeriesCap {
    seen: Mutex<Admitted>,
    max: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Admitted {
    sets: HashSet<u64>,
    bytes: usize,
}

impl SeriesCap {
    fn admit(&self, r: &Record) -> bool {
        let mut h = std::hash::DefaultHasher::new();
        (&r.team, &r.project, &r.env, &r.model).hash(&mut h);
        let key = h.finish();
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if seen.sets.contains(&key) {
            return true;
        }
        let bytes = r.team.len() + r.project.len() + r.env.len() + r.model.len();
        if seen.sets.len() >= self.max || seen.bytes + bytes > self.max_bytes {
            return false;
        }
        seen.sets.insert(key);
        seen.bytes += bytes;
        true
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    series: Arc<SeriesCap>,
    pub requests: IntCounterVec,
    pub tokens: IntCounterVec,
    cost_nanos: IntCounterVec,
    pub duration: HistogramVec,
    pub ttfb: HistogramVec,
    pub unpriced: IntCounterVec,
    pub records_dropped: IntCounter,
    /// Clients that left before the end of their response: normal traffic, so counted
    /// rather than logged.
    pub client_aborts: IntCounter,
    /// Open client connections, those refused past the cap, and clients too slow to send
    /// a request (`phase`: header, body).
    pub client_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub client_timeouts: IntCounterVec,
    /// Requests whose header could not be read (`kind`: request_line, header, too_large,
    /// ambiguous, pipelined), answered before any route runs; see `proxy::framing`.
    pub framing_errors: IntCounterVec,
    /// Outcomes reported (`POST /tollgate/v1/outcomes`), by the key's team and label.
    outcomes: IntCounterVec,
    /// Outcome labels with a series of their own: clients choose them, so they are capped.
    outcome_labels: Arc<Mutex<HashSet<String>>>,
    pub estimated: IntCounterVec,
    /// Local counts that were extrapolated or guessed in part (huge or odd inputs, images
    /// of unknown size).
    pub usage_approximate: IntCounterVec,
    pub ledger_disk_bytes: IntGauge,
    /// Upstream calls of requests a routing rule planned, and what became of them.
    pub attempts: IntCounterVec,
    /// Targets taken out of rotation by a route's cooldown.
    pub cooldowns: IntCounterVec,
    /// Cost of routed requests, by policy: `actual`, and `counterfactual` (on the model
    /// they would otherwise have gone to). Savings are their difference, which a cascade
    /// that escalates often can make negative.
    routed_cost_nanos: IntCounterVec,
    /// Requests answered from the response cache, and what they saved (the replayed
    /// request's known cost), by attribution and policy.
    cache_hits: IntCounterVec,
    cache_saved_nanos: IntCounterVec,
    /// Cacheable requests that went upstream, and requests a caching rule matched that
    /// skipped the cache, by policy; counted by the proxy (a record cannot tell).
    cache_misses: IntCounterVec,
    cache_bypasses: IntCounterVec,
    /// The cache whose own counters are read at scrape time; none until [`Metrics::watch_cache`].
    cache_watch: CacheWatch,
    pub sink: SinkMetrics,
    pub config_reloads: IntCounterVec,
    pub alerts: AlertMetrics,
}

/// Budget alerts delivered and given up, by webhook name; alerts dropped on a full queue.
#[derive(Clone)]
pub struct AlertMetrics {
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub dropped: IntCounter,
}

/// Delivery of ledger records to ClickHouse, by table.
#[derive(Clone)]
pub struct SinkMetrics {
    pub shipped: IntCounterVec,
    pub lag: IntGaugeVec,
    pub errors: IntCounterVec,
    pub dead_letter: IntCounterVec,
    pub batch_seconds: HistogramVec,
}

/// The sink metrics of one table.
#[derive(Clone)]
pub struct TableSinkMetrics {
    pub shipped: IntCounter,
    pub lag: IntGauge,
    pub errors: IntCounter,
    pub dead_letter: IntCounter,
    pub batch_seconds: Histogram,
}

impl SinkMetrics {
    pub fn table(&self, table: &str) -> TableSinkMetrics {
        TableSinkMetrics {
            shipped: self.shipped.with_label_values(&[table]),
            lag: self.lag.with_label_values(&[table]),
            errors: self.errors.with_label_values(&[table]),
            dead_letter: self.dead_letter.with_label_values(&[table]),
            batch_seconds: self.batch_seconds.with_label_values(&[table]),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Self::with_series_cap(MAX_ATTRIBUTION_SERIES)
    }

    pub fn with_series_cap(max: usize) -> Metrics {
        Self::with_series_caps(max, MAX_ATTRIBUTION_BYTES)
    }

    pub fn with_series_caps(max: usize, max_bytes: usize) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Client requests, by outcome status",
            ),
            &["team", "project", "env", "model", "provider", "status"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("tollgate_tokens_total", "Tokens metered, by kind"),
            &["team", "project", "env", "model", "kind"],
        )
        .expect("valid metric");
        let cost_nanos = IntCounterVec::new(
            Opts::new("tollgate_cost_usd_total", "Spend in USD"),
            &["team", "project", "env", "model"],
        )
        .expect("valid metric");
        let attempts = IntCounterVec::new(
            Opts::new(
                "tollgate_attempts_total",
                "Upstream calls of routed requests, by policy, target, role and verdict; judge names the judge that rejected an answer",
            ),
            &["policy", "provider", "model", "role", "verdict", "judge"],
        )
        .expect("valid metric");
        let cooldowns = IntCounterVec::new(
            Opts::new(
                "tollgate_target_cooldowns_total",
                "Times a route's target was taken out of rotation after failing calls in a row",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let routed_cost_nanos = IntCounterVec::new(
            Opts::new(
                "tollgate_routing_cost_usd_total",
                "Cost of routed requests by policy: actual, and counterfactual (on the model they would otherwise have gone to)",
            ),
            &["policy", "kind"],
        )
        .expect("valid metric");
        let cache_hits = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_hits_total",
                "Requests answered from the response cache, with no upstream call",
            ),
            &["team", "project", "env", "model", "policy"],
        )
        .expect("valid metric");
        let cache_saved_nanos = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_saved_usd_total",
                "Cost of the requests whose answers cache hits replayed, where it was known",
            ),
            &["team", "project", "env", "model", "policy"],
        )
        .expect("valid metric");
        let cache_misses = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_misses_total",
                "Cacheable requests the response cache could not answer, which went upstream",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let cache_bypasses = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_bypasses_total",
                "Requests a caching rule matched that skipped the response cache",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let cache_watch = CacheWatch::default();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request arrival to the last byte sent to the client",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_ttfb_seconds",
                "Time from request arrival to the upstream's response header",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let unpriced = IntCounterVec::new(
            Opts::new(
                "tollgate_unpriced_requests_total",
                "Requests recorded with unknown cost because the model has no price",
            ),
            &["model"],
        )
        .expect("valid metric");
        let records_dropped = IntCounter::new(
            "tollgate_records_dropped_total",
            "Records lost because the ledger was closed, full or failing",
        )
        .expect("valid metric");
        let client_connections =
            IntGauge::new("tollgate_client_connections", "Client connections open now")
                .expect("valid metric");
        let connections_refused = IntCounter::new(
            "tollgate_connections_refused_total",
            "Client connections refused with a 503 because server.max_connections were open",
        )
        .expect("valid metric");
        let client_timeouts = IntCounterVec::new(
            Opts::new(
                "tollgate_client_timeouts_total",
                "Connections closed because the client was too slow to send its request",
            ),
            &["phase"],
        )
        .expect("valid metric");
        let framing_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_framing_errors_total",
                "Requests refused because their request line or header could not be read",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let outcomes = IntCounterVec::new(
            Opts::new(
                "tollgate_outcomes_total",
                "Outcomes reported for requests or workflows, by the reporting key's team",
            ),
            &["team", "outcome"],
        )
        .expect("valid metric");
        let client_aborts = IntCounter::new(
            "tollgate_client_aborts_total",
            "Requests whose client disconnected before the end of the response",
        )
        .expect("valid metric");
        let estimated = IntCounterVec::new(
            Opts::new(
                "tollgate_usage_estimated_total",
                "Requests whose usage was counted locally because the provider reported none",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let usage_approximate = IntCounterVec::new(
            Opts::new(
                "tollgate_usage_approximate_total",
                "Local counts that were extrapolated or guessed in part rather than exact",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let ledger_disk_bytes = IntGauge::new(
            "tollgate_ledger_disk_bytes",
            "Bytes used by ledger segments",
        )
        .expect("valid metric");
        let sink = SinkMetrics {
            shipped: IntCounterVec::new(
                Opts::new(
                    "tollgate_sink_shipped_total",
                    "Records acknowledged by ClickHouse, by table",
                ),
                &["table"],
            )
            .expect("valid metric"),
            lag: IntGaugeVec::new(
                Opts::new(
                    "tollgate_sink_lag_records",
                    "Records in the ledger not yet shipped, by table",
                ),
                &["table"],
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new(
                    "tollgate_sink_errors_total",
                    "Failed ClickHouse inserts and migrations (retried), by table",
                ),
                &["table"],
            )
            .expect("valid metric"),
            dead_letter: IntCounterVec::new(
                Opts::new(
                    "tollgate_sink_dead_letter_total",
                    "Records ClickHouse rejected as bad data, set aside under DATA_DIR/sink/dead-letter",
                ),
                &["table"],
            )
            .expect("valid metric"),
            batch_seconds: HistogramVec::new(
                HistogramOpts::new("tollgate_sink_batch_seconds", "Time to insert one batch")
                    .buckets(DURATION_BUCKETS.to_vec()),
                &["table"],
            )
            .expect("valid metric"),
        };
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reloads, by result (ok, refused) and trigger (signal, watch, admin)",
            ),
            &["result", "trigger"],
        )
        .expect("valid metric");
        let alerts = AlertMetrics {
            sent: IntCounterVec::new(
                Opts::new(
                    "tollgate_alerts_sent_total",
                    "Budget alerts a webhook accepted, by webhook name",
                ),
                &["webhook"],
            )
            .expect("valid metric"),
            failed: IntCounterVec::new(
                Opts::new(
                    "tollgate_alerts_failed_total",
                    "Budget alerts given up after their retries, by webhook name",
                ),
                &["webhook"],
            )
            .expect("valid metric"),
            dropped: IntCounter::new(
                "tollgate_alerts_dropped_total",
                "Budget alerts dropped because the delivery queue was full",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(config_reloads.clone()) as Box<dyn Collector>,
            Box::new(alerts.sent.clone()),
            Box::new(alerts.failed.clone()),
            Box::new(alerts.dropped.clone()),
            Box::new(ledger_disk_bytes.clone()),
            Box::new(sink.shipped.clone()),
            Box::new(sink.lag.clone()),
            Box::new(sink.errors.clone()),
            Box::new(sink.dead_letter.clone()),
            Box::new(sink.batch_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn Collector>,
            Box::new(tokens.clone()),
            Box::new(UsdCollector(cost_nanos.clone())),
            Box::new(attempts.clone()),
            Box::new(cooldowns.clone()),
            Box::new(UsdCollector(routed_cost_nanos.clone())),
            Box::new(cache_hits.clone()),
            Box::new(UsdCollector(cache_saved_nanos.clone())),
            Box::new(cache_misses.clone()),
            Box::new(cache_bypasses.clone()),
            Box::new(CacheCollector::new(cache_watch.clone())),
            Box::new(duration.clone()),
            Box::new(ttfb.clone()),
            Box::new(unpriced.clone()),
            Box::new(records_dropped.clone()),
            Box::new(client_aborts.clone()),
            Box::new(client_connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(client_timeouts.clone()),
            Box::new(framing_errors.clone()),
            Box::new(outcomes.clone()),
            Box::new(estimated.clone()),
            Box::new(usage_approximate.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            series: Arc::new(SeriesCap {
                seen: Mutex::default(),
                max,
                max_bytes,
            }),
            requests,
            tokens,
            cost_nanos,
            duration,
            ttfb,
            unpriced,
            records_dropped,
            client_aborts,
            client_connections,
            connections_refused,
            client_timeouts,
            framing_errors,
            outcomes,
            outcome_labels: Arc::default(),
            estimated,
            usage_approximate,
            ledger_disk_bytes,
            attempts,
            cooldowns,
            routed_cost_nanos,
            cache_hits,
            cache_saved_nanos,
            cache_misses,
            cache_bypasses,
            cache_watch,
            sink,
            config_reloads,
            alerts,
        }
    }

    /// Counts a cacheable request the response cache could not answer.
    pub fn cache_miss(&self, policy: &str) {
        self.cache_misses.with_label_values(&[policy]).inc();
    }

    /// Counts a request a caching rule matched that skipped the cache (neither looked up
    /// nor stored).
    pub fn cache_bypass(&self, policy: &str) {
        self.cache_bypasses.with_label_values(&[policy]).inc();
    }

    /// Exports the response cache's own counters (entries, bytes, evictions, and the Redis
    /// tier's calls when there is one), read when scraped. A later call replaces the cache
    /// watched, so a reload that builds a new cache can hand it over.
    pub fn watch_cache(&self, stats: Arc<CacheStats>, redis: Option<RedisTier>) {
        if let Ok(mut watched) = self.cache_watch.0.lock() {
            *watched = Some(Watched { stats, redis });
        }
    }

    /// Adds a collector read when scraped (for state kept elsewhere, such as budgets).
    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "metrics collector not registered");
        }
    }

    /// Counts one reported outcome. `team` is the key's (from the config); labels past
    /// [`MAX_OUTCOME_LABELS`] share one series.
    pub fn observe_outcome(&self, team: &str, outcome: &str) {
        let admitted = self.outcome_labels.lock().is_ok_and(|mut labels| {
            labels.contains(outcome)
                || (labels.len() < MAX_OUTCOME_LABELS && labels.insert(outcome.to_string()))
        });
        let outcome = if admitted { outcome } else { OVERFLOW };
        self.outcomes.with_label_values(&[team, outcome]).inc();
    }

    /// Counts one finished request and its upstream calls.
    pub fn observe(&self, r: &Record, attempts: &[AttemptRecord]) {
        if !r.policy.is_empty() {
            self.observe_routing(r, attempts);
        }
        let status = r.status.to_string();
        // Attribution can come from request headers: cap the series it may create.
        let (team, project, env, model) = if self.series.admit(r) {
            (
                r.team.as_str(),
                r.project.as_str(),
                r.env.as_str(),
                r.model.as_str(),
            )
        } else {
            (OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW)
        };
        self.requests
            .with_label_values(&[team, project, env, model, &r.provider, &status])
            .inc();
        for (kind, n) in [
            ("input", r.input_tokens),
            ("output", r.output_tokens),
            ("cached_input", r.cached_input_tokens),
            ("cache_write", r.cache_write_tokens),
            ("reasoning", r.reasoning_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[team, project, env, model, kind])
                    .inc_by(n);
            }
        }
        match r.cost_usd {
            Some(c) if c.0 > 0 => self
                .cost_nanos
                .with_label_values(&[team, project, env, model])
                .inc_by(c.0 as u64),
            Some(_) => {}
            None => self.unpriced.with_label_values(&[model]).inc(),
        }
        if r.cache_hit {
            let labels = [team, project, env, model, r.policy.as_str()];
            self.cache_hits.with_label_values(&labels).inc();
            if let Some(saved) = r.saved_cost_usd.filter(|s| s.0 > 0) {
                self.cache_saved_nanos
                    .with_label_values(&labels)
                    .inc_by(saved.0 as u64);
            }
        }
        if r.usage_source == crate::usage::UsageSource::Estimated {
            self.estimated.with_label_values(&[&r.provider]).inc();
        }
        // Pass-through paths can carry ids (`/v1/files/file-…`): one label for all of them.
        let endpoint = match Endpoint::from_path(&r.endpoint) {
            Some(Endpoint::Other) | None => "other",
            Some(_) => r.endpoint.as_str(),
        };
        self.duration
            .with_label_values(&[&r.provider, endpoint])
            .observe(r.latency_ms as f64 / 1000.0);
        if let Some(t) = r.ttfb_ms {
            self.ttfb
                .with_label_values(&[&r.provider])
                .observe(t as f64 / 1000.0);
        }
    }

    fn observe_routing(&self, r: &Record, attempts: &[AttemptRecord]) {
        for a in attempts {
            self.attempts
                .with_label_values(&[
                    &r.policy,
                    &a.provider,
                    &a.model,
                    a.role.as_str(),
                    a.verdict.as_str(),
                    &a.judge,
                ])
                .inc();
        }
        // Only requests priced both ways, so the two totals compare like with like; a hit
        // made no routed call (its saving is the cache's).
        if let (false, Some(would), Some(did)) =
            (r.cache_hit, r.counterfactual_cost_usd, r.cost_usd)
        {
            for (kind, nanos) in [("actual", did), ("counterfactual", would)] {
                self.routed_cost_nanos
                    .with_label_values(&[&r.policy, kind])
                    .inc_by(nanos.0.max(0) as u64);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Exposes a nano-USD integer counter as a USD counter.
struct UsdCollector(IntCounterVec);

impl Collector for UsdCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        for f in &mut families {
            for m in f.mut_metric().iter_mut() {
                let mut counter = (**m.get_counter()).clone();
                counter.set_value(counter.value() / NANOS_PER_USD as f64);
                m.set_counter(counter);
            }
        }
        families
    }
}

/// One sample of a gauge or a counter, for collectors that read state when scraped.
pub fn sample(kind: MetricType, value: f64) -> Metric {
    let mut metric = Metric::default();
    if kind == MetricType::GAUGE {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    } else {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    }
    metric
}

/// The cache [`Metrics::watch_cache`] was given, shared by every clone of the metrics.
#[derive(Clone, Default)]
struct CacheWatch(Arc<Mutex<Option<Watched>>>);

struct Watched {
    stats: Arc<CacheStats>,
    redis: Option<RedisTier>,
}

/// A series read from the watched cache: `None` when it has no such part (no Redis tier).
type ReadStat = fn(&Watched) -> Option<u64>;

const CACHE_SERIES: [(&str, &str, MetricType, ReadStat); 9] = [
    (
        "tollgate_cache_entries",
        "Answers held by the in-process response cache",
        MetricType::GAUGE,
        |w| Some(CacheStats::get(&w.stats.entries)),
    ),
    (
        "tollgate_cache_bytes",
        "Bytes of the answers held by the in-process response cache",
        MetricType::GAUGE,
        |w| Some(CacheStats::get(&w.stats.bytes)),
    ),
    (
        "tollgate_cache_evictions_total",
        "Answers removed from the in-process cache to keep its bounds, or expired",
        MetricType::COUNTER,
        |w| Some(CacheStats::get(&w.stats.evictions)),
    ),
    (
        "tollgate_cache_coalesced_total",
        "Requests that waited for an identical one already in flight instead of calling upstream",
        MetricType::COUNTER,
        |w| Some(CacheStats::get(&w.stats.coalesced)),
    ),
    (
        "tollgate_cache_too_large_total",
        "Answers not stored for exceeding cache.max_entry_bytes",
        MetricType::COUNTER,
        |w| Some(CacheStats::get(&w.stats.too_large)),
    ),
    (
        "tollgate_cache_redis_hits_total",
        "Lookups the Redis tier answered",
        MetricType::COUNTER,
        |w| w.redis.as_ref().map(|r| CacheStats::get(&r.stats().hits)),
    ),
    (
        "tollgate_cache_redis_misses_total",
        "Lookups the Redis tier did not answer, failures included",
        MetricType::COUNTER,
        |w| w.redis.as_ref().map(|r| CacheStats::get(&r.stats().misses)),
    ),
    (
        "tollgate_cache_redis_sets_total",
        "Answers stored in the Redis tier",
        MetricType::COUNTER,
        |w| w.redis.as_ref().map(|r| CacheStats::get(&r.stats().sets)),
    ),
    (
        "tollgate_cache_redis_errors_total",
        "Redis calls that failed or values that did not decode; each served as a miss or dropped",
        MetricType::COUNTER,
        |w| w.redis.as_ref().map(|r| CacheStats::get(&r.stats().errors)),
    ),
];

/// Reads the watched cache's counters when scraped; exports nothing until one is watched.
struct CacheCollector {
    watch: CacheWatch,
    descs: Vec<Desc>,
}

impl CacheCollector {
    fn new(watch: CacheWatch) -> CacheCollector {
        let descs = CACHE_SERIES
            .iter()
            .map(|(name, help, ..)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec![],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        CacheCollector { watch, descs }
    }
}

impl Collector for CacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(watched) = self.watch.0.lock() else {
            return Vec::new();
        };
        let Some(w) = watched.as_ref() else {
            return Vec::new();
        };
        CACHE_SERIES
            .iter()
            .zip(&self.descs)
            .filter_map(|((_, _, kind, read), desc)| {
                let metric = sample(*kind, read(w)? as f64);
                let mut family = MetricFamily::default();
                family.set_name(desc.fq_name.clone());
                family.set_help(desc.help.clone());
                family.set_field_type(*kind);
                family.set_metric(vec![metric]);
                Some(family)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::NanoUsd;
    use std::sync::atomic::Ordering;

    fn record(team: &str, endpoint: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "ts": "2026-11-27T10:00:00.000Z", "request_id": "r", "team": team, "project": "p",
            "env": "prod", "user": "", "feature": "", "workflow_id": "", "tags": {}, "key_name": "",
            "provider": "openai", "endpoint": endpoint, "requested_model": "m", "model": "m",
            "stream": false, "status": 200, "input_tokens": 3, "output_tokens": 1,
            "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
            "usage_source": "reported", "cost_usd": "0.000000010", "latency_ms": 1, "ttfb_ms": 1,
            "error": null
        }))
        .unwrap()
    }

    #[test]
    fn header_supplied_labels_cannot_grow_series_without_bound() {
        let m = Metrics::with_series_cap(2);
        for team in ["a", "b", "c", "d", "a"] {
            m.observe(&record(team, "/v1/files/file-123"), &[]);
        }
        let text = m.render();
        assert!(text.contains(r#"team="a""#) && text.contains(r#"team="b""#));
        assert!(!text.contains(r#"team="c""#) && !text.contains(r#"team="d""#));
        assert!(text.contains(&format!(r#"tollgate_requests_total{{env="{OVERFLOW}",model="{OVERFLOW}",project="{OVERFLOW}",provider="openai",status="200",team="{OVERFLOW}"}} 2"#)), "{text}");
        assert!(text.contains(r#"endpoint="other""#) && !text.contains("file-123"));
    }

    /// The value the text format gives `series` (its name and every label, sorted).
    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    fn hit(team: &str, saved_nanos: Option<i64>) -> Record {
        let mut r = record(team, "/v1/chat/completions");
        (r.input_tokens, r.output_tokens, r.cost_usd) = (0, 0, Some(NanoUsd(0)));
        r.cache_hit = true;
        r.policy = "faq".into();
        r.saved_input_tokens = 3;
        r.saved_output_tokens = 1;
        r.saved_cost_usd = saved_nanos.map(NanoUsd);
        r
    }

    #[test]
    fn cache_hits_and_their_savings_are_counted_exactly_by_attribution_and_policy() {
        let m = Metrics::with_series_cap(1);
        // 0.1 + 0.2 in nano-USD: exact, where a float sum would not be.
        m.observe(&hit("a", Some(100_000_000)), &[]);
        m.observe(&hit("a", Some(200_000_000)), &[]);
        m.observe(&hit("a", None), &[]);
        let mut routed = hit("a", Some(500));
        routed.counterfactual_cost_usd = Some(NanoUsd(700));
        m.observe(&routed, &[]);
        m.observe(&hit("b", Some(1_000_000_000)), &[]);
        m.observe(&record("a", "/v1/chat/completions"), &[]);
        m.cache_miss("faq");
        m.cache_miss("faq");
        m.cache_bypass("faq");
        let text = m.render();
        let a = r#"{env="prod",model="m",policy="faq",project="p",team="a"}"#;
        let pooled = format!(
            r#"{{env="{OVERFLOW}",model="{OVERFLOW}",policy="faq",project="{OVERFLOW}",team="{OVERFLOW}"}}"#
        );
        for (series, want) in [
            (format!("tollgate_cache_hits_total{a}"), "4"),
            (format!("tollgate_cache_saved_usd_total{a}"), "0.3000005"),
            (format!("tollgate_cache_hits_total{pooled}"), "1"),
            (format!("tollgate_cache_saved_usd_total{pooled}"), "1"),
            (r#"tollgate_cache_misses_total{policy="faq"}"#.into(), "2"),
            (r#"tollgate_cache_bypasses_total{policy="faq"}"#.into(), "1"),
            // Hits add no spend: only the one request that was not a hit cost anything.
            (
                r#"tollgate_cost_usd_total{env="prod",model="m",project="p",team="a"}"#.into(),
                "0.00000001",
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
        }
        assert!(
            !text.contains("tollgate_routing_cost_usd_total{"),
            "a hit is no routing saving: {text}"
        );
        assert!(
            !text.contains("tollgate_cache_entries"),
            "no cache watched yet"
        );
    }

    #[test]
    fn the_watched_cache_is_read_when_scraped() {
        let m = Metrics::new();
        let stats = Arc::new(CacheStats::default());
        stats.entries.store(3, Ordering::Relaxed);
        stats.bytes.store(4096, Ordering::Relaxed);
        stats.evictions.store(2, Ordering::Relaxed);
        m.clone().watch_cache(stats.clone(), None);
        let text = m.render();
        assert_eq!(sample(&text, "tollgate_cache_entries"), Some("3"));
        assert_eq!(sample(&text, "tollgate_cache_bytes"), Some("4096"));
        assert_eq!(sample(&text, "tollgate_cache_evictions_total"), Some("2"));
        assert!(
            text.contains("# TYPE tollgate_cache_entries gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tollgate_cache_evictions_total counter"),
            "{text}"
        );
        assert!(
            !text.contains("tollgate_cache_redis"),
            "no Redis tier: {text}"
        );

        stats.entries.store(1, Ordering::Relaxed);
        stats.coalesced.store(5, Ordering::Relaxed);
        let text = m.render();
        assert_eq!(sample(&text, "tollgate_cache_entries"), Some("1"));
        assert_eq!(sample(&text, "tollgate_cache_coalesced_total"), Some("5"));

        // A new cache (a reload) replaces the one watched; its Redis tier is read too.
        let redis = RedisTier::new(&crate::config::RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            key_prefix: "tg:".into(),
            timeout: std::time::Duration::from_millis(10),
        });
        redis.stats().errors.store(7, Ordering::Relaxed);
        redis.stats().hits.store(4, Ordering::Relaxed);
        m.watch_cache(Arc::new(CacheStats::default()), Some(redis));
        let text = m.render();
        assert_eq!(sample(&text, "tollgate_cache_entries"), Some("0"));
        assert_eq!(
            sample(&text, "tollgate_cache_redis_errors_total"),
            Some("7")
        );
        assert_eq!(sample(&text, "tollgate_cache_redis_hits_total"), Some("4"));
        assert_eq!(sample(&text, "tollgate_cache_redis_sets_total"), Some("0"));
    }

    #[test]
    fn outcome_labels_past_the_cap_share_one_series() {
        let m = Metrics::new();
        for i in 0..MAX_OUTCOME_LABELS + 5 {
            m.observe_outcome("search", &format!("label-{i}"));
        }
        m.observe_outcome("search", "label-0");
        let text = m.render();
        let series = |outcome: &str| {
            sample(
                &text,
                &format!("tollgate_outcomes_total{{outcome=\"{outcome}\",team=\"search\"}}"),
            )
        };
        assert_eq!(series("label-0"), Some("2"));
        assert_eq!(
            series(&format!("label-{}", MAX_OUTCOME_LABELS - 1)),
            Some("1")
        );
        assert_eq!(series(&format!("label-{MAX_OUTCOME_LABELS}")), None);
        assert_eq!(series(OVERFLOW), Some("5"));
    }

    #[test]
    fn long_label_values_fill_the_byte_cap() {
        let m = Metrics::with_series_caps(100, 1000);
        let long = "x".repeat(600);
        m.observe(&record(&long, "/v1/chat/completions"), &[]);
        m.observe(&record(&format!("{long}y"), "/v1/chat/completions"), &[]);
        m.observe(&record("short", "/v1/chat/completions"), &[]);
        let text = m.render();
        assert!(text.contains(&format!(r#"team="{long}""#)));
        assert!(!text.contains(&format!(r#"team="{long}y""#)));
        assert!(
            text.contains(r#"team="short""#),
            "room is left for short values"
        );
    }
}
