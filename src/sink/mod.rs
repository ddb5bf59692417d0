//! Delivery of ledger records to ClickHouse, exactly once.
//!
//! Each ledger stream (requests, attempts, outcomes) is shipped to its table by a shipper of its own,
//! with its own cursor and deduplication tokens. The sink follows the ledger on disk, not an in-memory queue: a record counts as accepted
//! once it is in the ledger, and the sink only moves its durable cursor past records that
//! ClickHouse acknowledged. Each batch is one byte range of one segment; its range is saved
//! before it is sent and its deduplication token is derived from it, so a batch replayed
//! after any crash is identical and ClickHouse stores it once.
//!
//! The sink runs on its own thread rather than as a pingora background service: on shutdown
//! it must drain after the ledger's last write, which happens after pingora's runtimes stop.

pub mod clickhouse;
mod cursor;
mod segments;

use crate::config::ClickHouseSettings;
use crate::ledger::{self, Ledger, Stream};
use crate::metrics::{SinkMetrics, TableSinkMetrics};
use clickhouse::{ChError, ClickHouse};
use cursor::{Cursor, CursorFile};
use segments::Batch;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct SinkConfig {
    pub settings: ClickHouseSettings,
    /// Cursor files and dead letters live here.
    pub state_dir: PathBuf,
    /// Seconds a shipped segment is kept before it is deleted.
    pub shipped_retention: Duration,
}

/// What one shipper ships: a ledger stream, to its table.
/// Where the requests stream's records not yet in ClickHouse begin (segment, byte offset):
/// a batch sent but not acknowledged counts as not shipped. Read before the sink starts.
pub fn unshipped_requests_start(state_dir: &Path) -> std::io::Result<(u64, u64)> {
    let cursor = cursor::CursorFile::new(state_dir.join(REQUESTS_CURSOR)).load()?;
    Ok(match cursor.pending {
        Some(p) => (p.segment, p.start),
        None => (cursor.segment, cursor.offset),
    })
}

/// The requests stream's cursor file keeps the name it had before attempts were shipped,
/// so an older cursor carries on.
const REQUESTS_CURSOR: &str = "clickhouse.cursor";

struct StreamSpec {
    stream: Stream,
    /// The stream's segment directory.
    dir: PathBuf,
    ledger_id: String,
    cursor_file: PathBuf,
    /// Prefix of this stream's dead-letter file names.
    dead_letter_prefix: String,
}

impl StreamSpec {
    fn new(stream: Stream, ledger: &Ledger, state_dir: &Path) -> StreamSpec {
        let (cursor, dead_letter_prefix) = match stream {
            Stream::Requests => (REQUESTS_CURSOR.to_string(), String::new()),
            other => (
                format!("clickhouse-{}.cursor", other.table()),
                format!("{}-", other.table()),
            ),
        };
        StreamSpec {
            stream,
            dir: stream.dir(ledger.dir()),
            ledger_id: ledger.id().to_string(),
            cursor_file: state_dir.join(cursor),
            dead_letter_prefix,
        }
    }

    /// The deduplication token of a batch: the ledger, the stream and the byte range.
    fn token(&self, range: cursor::Range) -> String {
        let stream = match self.stream {
            Stream::Requests => String::new(),
            other => format!("{}:", other.table()),
        };
        format!(
            "{}:{stream}{}:{}-{}",
            self.ledger_id, range.segment, range.start, range.end
        )
    }
}

/// A running sink.
pub struct Sink {
    stop: watch::Sender<Option<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Progress,
}

/// How far the requests stream is shipped, in lines: those left by earlier runs first
/// (`backlog_at_start` of them), then this process's in the order written.
#[derive(Clone)]
pub struct Progress {
    pub backlog_at_start: u64,
    /// Lines in ClickHouse (or dead-lettered) so far.
    pub shipped: Arc<AtomicU64>,
}

impl Sink {
    /// Loads the cursor (a bad one stops the server from starting, rather than silently
    /// never shipping) and starts shipping on a thread of its own.
    pub fn start(cfg: SinkConfig, metrics: SinkMetrics, ledger: &Ledger) -> std::io::Result<Sink> {
        let (stop, stop_rx) = watch::channel(None);
        let cfg = Arc::new(cfg);
        let ch = ClickHouse::new(&cfg.settings).map_err(std::io::Error::other)?;
        let mut shippers = Stream::ALL
            .into_iter()
            .map(|stream| {
                Shipper::new(
                    cfg.clone(),
                    StreamSpec::new(stream, ledger, &cfg.state_dir),
                    ch.clone(),
                    metrics.table(stream.table()),
                    ledger.written(stream),
                    stop_rx.clone(),
                )
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let requests = Progress {
            backlog_at_start: shippers[0].backlog_at_start,
            shipped: shippers[0].shipped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tollgate-sink".into())
            .spawn(move || {
                rt.block_on(async move {
                    if shippers[0].migrate().await {
                        futures::future::join_all(shippers.iter_mut().map(Shipper::run)).await;
                    }
                })
            })?;
        Ok(Sink {
            stop,
            thread: Some(thread),
            requests,
        })
    }

    /// The requests stream's shipping progress.
    pub fn requests_progress(&self) -> Progress {
        self.requests.clone()
    }

    /// Ships what the ledger holds until it is drained or `deadline` passes, then stops.
    /// Whatever is left stays in the ledger for the next start.
    pub fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(Some(Instant::now() + deadline));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.send(Some(Instant::now()));
            let _ = t.join();
        }
    }
}

struct Shipper {
    cfg: Arc<SinkConfig>,
    spec: StreamSpec,
    ch: ClickHouse,
    cursor: Cursor,
    file: CursorFile,
    metrics: TableSinkMetrics,
    written: Arc<AtomicU64>,
    /// Lag accounting: backlog found at start plus what this process wrote since.
    backlog_at_start: u64,
    settled: u64,
    /// `settled`, for readers on other threads.
    shipped: Arc<AtomicU64>,
    stop: watch::Receiver<Option<Instant>>,
    /// Segments below this one were left by an earlier run: the ledger never appends to
    /// them again (it opens a new segment after the last one it finds).
    first_live_segment: u64,
    read_ahead: Option<ReadAhead>,
    backoff: Duration,
    last_ship: Instant,
}

/// The batch after the one in flight, read (and checked line by line) on a blocking thread
/// while ClickHouse stores that one.
struct ReadAhead {
    segment: u64,
    offset: u64,
    batch: tokio::task::JoinHandle<std::io::Result<Option<Batch>>>,
}

impl Shipper {
    fn new(
        cfg: Arc<SinkConfig>,
        spec: StreamSpec,
        ch: ClickHouse,
        metrics: TableSinkMetrics,
        written: Arc<AtomicU64>,
        stop: watch::Receiver<Option<Instant>>,
    ) -> std::io::Result<Shipper> {
        let file = CursorFile::new(spec.cursor_file.clone());
        let cursor = file.load()?;
        let backlog_at_start = segments::count_backlog(
            &spec.dir,
            cursor.pending.map_or(cursor.segment, |p| p.segment),
            cursor.pending.map_or(cursor.offset, |p| p.start),
        )
        .unwrap_or(0);
        // The ledger is open, but the proxy does not serve yet: every segment here is old.
        let first_live_segment = ledger::list_segments(&spec.dir)?
            .last()
            .map_or(0, |(seq, _)| seq + 1);
        Ok(Shipper {
            cfg,
            spec,
            ch,
            cursor,
            file,
            metrics,
            written,
            backlog_at_start,
            settled: 0,
            shipped: Arc::default(),
            stop,
            first_live_segment,
            read_ahead: None,
            backoff: Duration::from_millis(100),
            last_ship: Instant::now(),
        })
    }

    fn stopping(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    fn update_lag(&self) {
        let total = self.backlog_at_start + self.written.load(Ordering::Relaxed);
        self.metrics
            .lag
            .set(total.saturating_sub(self.settled) as i64);
    }

    /// Waits `d`, or less when shutdown is requested.
    async fn pause(&mut self, d: Duration) {
        if self.stopping().is_some() {
            return;
        }
        let _ = tokio::time::timeout(d, self.stop.changed()).await;
    }

    fn past_deadline(&self) -> bool {
        self.stopping()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Applies the schema migrations (when configured to), retrying until they apply or
    /// the sink is stopped; false when stopped first.
    async fn migrate(&mut self) -> bool {
        if !self.cfg.settings.migrate_on_start {
            return true;
        }
        loop {
            if self.past_deadline() {
                return false;
            }
            match clickhouse::migrate::migrate(&self.ch, &self.cfg.settings, None).await {
                Ok(_) => return true,
                Err(e) => self.failed("migration", &e).await,
            }
        }
    }

    async fn run(&mut self) {
        loop {
            if self.past_deadline() {
                tracing::info!(
                    table = self.spec.stream.table(),
                    "ClickHouse sink stopped at its deadline; the rest stays in the ledger"
                );
                return;
            }
            self.update_lag();
            let batch = match self.next_batch().await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    if self.stopping().is_some() {
                        return; // drained
                    }
                    self.pause(self.cfg.settings.batch_period).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.spec.dir.display(), "reading the ledger failed");
                    self.pause(MAX_BACKOFF).await;
                    continue;
                }
            };
            // Wait for a fuller batch unless it is full, old enough, cannot grow, or we are
            // draining.
            let fresh = self.cursor.pending.is_none()
                && batch.line_count() < self.cfg.settings.batch_max_rows
                && self.last_ship.elapsed() < self.cfg.settings.batch_period
                && self.stopping().is_none()
                && self.may_grow(&batch);
            if fresh {
                let wait = self.cfg.settings.batch_period - self.last_ship.elapsed();
                self.pause(wait).await;
                continue;
            }
            self.ship(batch).await;
        }
    }

    /// The pending batch if there is one, else the next complete lines after the cursor,
    /// moving on to the next segment when the current one is finished.
    async fn next_batch(&mut self) -> std::io::Result<Option<Batch>> {
        let dir = self.spec.dir.clone();
        if let Some(range) = self.cursor.pending {
            match segments::read_range(self.spec.stream, &dir, range) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // The segment was removed or cut short by hand: nothing left to replay.
                    tracing::error!(
                        segment = range.segment,
                        "pending batch is gone from the ledger; skipping it"
                    );
                    self.cursor = Cursor {
                        segment: range.segment,
                        offset: range.end,
                        pending: None,
                    };
                    self.file.save(&self.cursor)?;
                }
                other => return other.map(Some),
            }
        }
        loop {
            let segs = ledger::list_segments(&dir)?;
            // Start at the first segment that still exists at or after the cursor.
            match segs.iter().find(|(seq, _)| *seq >= self.cursor.segment) {
                Some((seq, _)) if *seq != self.cursor.segment => {
                    self.cursor = Cursor {
                        segment: *seq,
                        offset: 0,
                        pending: None,
                    };
                }
                None => return Ok(None),
                _ => {}
            }
            if let Some(b) = self
                .read_batch(self.cursor.segment, self.cursor.offset)
                .await?
            {
                return Ok(Some(b));
            }
            // No complete line left here. The writer never returns to a segment once a
            // later one exists, so that one is finished (a torn last line is skipped).
            let Some((next, _)) = segs.iter().find(|(seq, _)| *seq > self.cursor.segment) else {
                return Ok(None);
            };
            self.cursor = Cursor {
                segment: *next,
                offset: 0,
                pending: None,
            };
            self.file.save(&self.cursor)?;
            self.remove_shipped_segments(&segs);
        }
    }

    /// Complete lines at (`segment`, `offset`): the read-ahead's when it was for them and
    /// found some (lines written since it ran go in the next batch), else read now.
    async fn read_batch(&mut self, segment: u64, offset: u64) -> std::io::Result<Option<Batch>> {
        if let Some(ahead) = self.read_ahead.take()
            && (ahead.segment, ahead.offset) == (segment, offset)
            && let Ok(Ok(Some(batch))) = ahead.batch.await
        {
            return Ok(Some(batch));
        }
        let max_rows = self.cfg.settings.batch_max_rows;
        segments::read_from(self.spec.stream, &self.spec.dir, segment, offset, max_rows)
    }

    /// Starts reading the batch at (`segment`, `offset`).
    fn start_read_ahead(&mut self, segment: u64, offset: u64) {
        let (stream, dir) = (self.spec.stream, self.spec.dir.clone());
        let max_rows = self.cfg.settings.batch_max_rows;
        let batch = tokio::task::spawn_blocking(move || {
            segments::read_from(stream, &dir, segment, offset, max_rows)
        });
        self.read_ahead = Some(ReadAhead {
            segment,
            offset,
            batch,
        });
    }

    /// Whether records may still be appended to the batch's segment soon: this process's
    /// ledger writes it (the last segment, not one left by an earlier run) and wrote it
    /// within the batch period. A backlog, or a finished segment, ships at once instead of
    /// waiting a batch period per batch.
    fn may_grow(&self, batch: &Batch) -> bool {
        let segment = batch.range.segment;
        if segment < self.first_live_segment {
            return false;
        }
        let is_last = ledger::list_segments(&self.spec.dir)
            .map(|segs| segs.last().is_none_or(|(seq, _)| *seq == segment))
            .unwrap_or(true);
        let path = segments::segment_path(&self.spec.dir, segment);
        is_last && !older_than(&path, self.cfg.settings.batch_period)
    }

    async fn ship(&mut self, batch: Batch) {
        let range = batch.range;
        if self.cursor.pending != Some(range) {
            self.cursor.pending = Some(range);
            if let Err(e) = self.file.save(&self.cursor) {
                tracing::error!(error = %e, "cannot save the sink cursor");
                self.pause(MAX_BACKOFF).await;
                return;
            }
        }
        if !batch.bad_lines.is_empty() {
            self.dead_letter(range, &batch.bad_lines.concat(), "not a Tollgate record");
        }
        if batch.row_count > 0 {
            let token = self.spec.token(range);
            self.start_read_ahead(range.segment, range.end);
            let started = Instant::now();
            let res = self
                .ch
                .insert_json_rows(self.spec.stream.table(), batch.rows.clone(), &token)
                .await;
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(()) => self.metrics.shipped.inc_by(batch.row_count as u64),
                Err(e) if e.is_bad_data() => self.dead_letter(range, &batch.rows, &e.to_string()),
                Err(e) => {
                    self.failed("insert", &e).await;
                    return;
                }
            }
        }
        self.settled += batch.line_count() as u64;
        self.shipped.store(self.settled, Ordering::Release);
        self.cursor = Cursor {
            segment: range.segment,
            offset: range.end,
            pending: None,
        };
        if let Err(e) = self.file.save(&self.cursor) {
            // The batch will be replayed with the same token: harmless.
            tracing::error!(error = %e, "cannot save the sink cursor");
        }
        self.backoff = Duration::from_millis(100);
        self.last_ship = Instant::now();
        self.update_lag();
    }

    async fn failed(&mut self, what: &str, e: &ChError) {
        self.metrics.errors.inc();
        tracing::warn!(error = %e, table = self.spec.stream.table(), retry_in_ms = self.backoff.as_millis() as u64, "ClickHouse {what} failed");
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if let Some(deadline) = self.stopping() {
            // Draining: retry until the deadline, but never sleep past it.
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.min(left)).await;
        } else {
            self.pause(wait).await;
        }
    }

    /// Sets rejected rows aside, with the reason next to them.
    fn dead_letter(&self, range: cursor::Range, rows: &[u8], reason: &str) {
        let dir = self.cfg.state_dir.join("dead-letter");
        let name = format!(
            "{}{:012}-{}-{}",
            self.spec.dead_letter_prefix, range.segment, range.start, range.end
        );
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(format!("{name}.jsonl")), rows))
            .and_then(|()| std::fs::write(dir.join(format!("{name}.error.txt")), reason));
        let count = rows.iter().filter(|b| **b == b'\n').count() as u64;
        self.metrics.dead_letter.inc_by(count);
        match written {
            Ok(()) => {
                tracing::error!(file = %dir.join(&name).display(), rows = count, reason, "rows set aside")
            }
            Err(e) => {
                tracing::error!(error = %e, rows = count, reason, "rows rejected and could not be set aside")
            }
        }
    }

    /// Deletes segments before the cursor once they are older than the retention.
    fn remove_shipped_segments(&self, segs: &[(u64, PathBuf)]) {
        for (seq, path) in segs.iter().filter(|(seq, _)| *seq < self.cursor.segment) {
            if older_than(path, self.cfg.shipped_retention) {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::debug!(segment = seq, "removed shipped ledger segment"),
                    Err(e) => {
                        tracing::warn!(error = %e, segment = seq, "cannot remove shipped segment")
                    }
                }
            }
        }
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    age.is_zero()
        || std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= age)
            .unwrap_or(false)
}
