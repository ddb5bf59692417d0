//! The local ledger: records appended as JSON Lines to segment files under
//! `DATA_DIR/ledger/`, one stream per record type (see [`Stream`]), each with segments of
//! its own so the sink can ship each to its table with its own cursor.
//!
//! A record is written to its segment (one `write` to the operating system's page cache)
//! by the request that makes it, before the client sees the end of its response: once a
//! client has a complete answer its record survives a crash of the process, SIGKILL
//! included. Durability against power loss comes from a syncer thread that fsyncs the
//! current segment once per flush interval, so fsync is batched and nothing on the request
//! path waits for a disk or wakes a thread. Segments are named by a sequence number that only
//! grows; a restart opens a new segment rather than appending to one whose last line may be
//! torn.

use crate::config::LedgerConfig;
use crate::metrics::Metrics;
use crate::record::{AttemptRecord, OutcomeRecord, Record};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SEGMENT_SUFFIX: &str = ".jsonl";
/// Names this ledger, so delivery tokens of a wiped and recreated ledger never collide
/// with old ones.
const ID_FILE: &str = "LEDGER_ID";
/// How often the ledger's disk use is re-measured (the sink deletes shipped segments).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:012}{SEGMENT_SUFFIX}")
}

/// The ledger's id, created on first use.
pub fn ledger_id(dir: &Path) -> io::Result<String> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::now_v7().to_string();
            std::fs::write(&path, &id)?;
            File::open(dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Why a record was not appended; each case is also counted in
/// `tollgate_records_dropped_total`.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the ledger is closed")]
    Closed,
    #[error("the ledger has reached its disk limit of {limit} bytes")]
    DiskFull { limit: u64 },
    #[error("record could not be serialized: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("ledger write failed: {0}")]
    Io(#[from] io::Error),
}

/// The ledger's record streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// One record per client request, at the ledger's root (where ledgers kept them before
    /// attempts were recorded, so an older ledger ships on unchanged).
    Requests,
    /// One record per upstream call, under `attempts/`.
    Attempts,
    /// One record per reported outcome, under `outcomes/`.
    Outcomes,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Requests, Stream::Attempts, Stream::Outcomes];

    /// The ClickHouse table the stream is shipped to.
    pub fn table(self) -> &'static str {
        match self {
            Stream::Requests => "requests",
            Stream::Attempts => "attempts",
            Stream::Outcomes => "outcomes",
        }
    }

    /// The stream's directory inside the ledger directory.
    pub fn dir(self, ledger_dir: &Path) -> PathBuf {
        match self {
            Stream::Requests => ledger_dir.to_path_buf(),
            Stream::Attempts => ledger_dir.join("attempts"),
            Stream::Outcomes => ledger_dir.join("outcomes"),
        }
    }

    /// Whether `line` is a record of this stream (the sink sets other lines aside).
    pub fn is_record(self, line: &[u8]) -> bool {
        match self {
            Stream::Requests => serde_json::from_slice::<Record>(line).is_ok(),
            Stream::Attempts => serde_json::from_slice::<AttemptRecord>(line).is_ok(),
            Stream::Outcomes => serde_json::from_slice::<OutcomeRecord>(line).is_ok(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Handle used by the proxy to append records.
pub struct Ledger {
    requests: Journal,
    attempts: Journal,
    outcomes: Journal,
    dir: PathBuf,
    id: String,
}

impl Ledger {
    /// Creates `DATA_DIR/ledger/` and its streams, each with its syncer thread.
    pub fn open(data_dir: &Path, cfg: &LedgerConfig, metrics: Metrics) -> io::Result<Ledger> {
        let dir = data_dir.join("ledger");
        std::fs::create_dir_all(&dir)?;
        let id = ledger_id(&dir)?;
        let disk = Arc::new(DiskUse::default());
        let journal =
            |stream: Stream| Journal::open(stream, &dir, cfg, metrics.clone(), disk.clone());
        Ok(Ledger {
            requests: journal(Stream::Requests)?,
            attempts: journal(Stream::Attempts)?,
            outcomes: journal(Stream::Outcomes)?,
            dir,
            id,
        })
    }

    /// The ledger directory (the requests stream's).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn journal(&self, stream: Stream) -> &Journal {
        match stream {
            Stream::Requests => &self.requests,
            Stream::Attempts => &self.attempts,
            Stream::Outcomes => &self.outcomes,
        }
    }

    /// Counter of records this process has written to `stream`.
    pub fn written(&self, stream: Stream) -> Arc<AtomicU64> {
        self.journal(stream).written.clone()
    }

    /// Writes a request's record and its attempts' records. The attempts go first: a
    /// request record in the ledger means its attempts are there too. When this returns
    /// `Ok` the records are in the operating system's hands (they survive the process);
    /// they reach the disk at the next fsync, within one flush interval. Records that
    /// cannot be written are counted as dropped, and the first reason returned.
    pub fn append(&self, request: &Record, attempts: &[AttemptRecord]) -> Result<(), AppendError> {
        let attempts = if attempts.is_empty() {
            Ok(())
        } else {
            self.attempts.append(attempts)
        };
        let request = self.requests.append(std::slice::from_ref(request));
        attempts.and(request)
    }

    /// Writes reported outcomes, all in one write.
    pub fn append_outcomes(&self, outcomes: &[OutcomeRecord]) -> Result<(), AppendError> {
        self.outcomes.append(outcomes)
    }

    /// Waits until every record appended so far is fsynced.
    pub fn flush(&self) {
        self.attempts.flush();
        self.requests.flush();
        self.outcomes.flush();
    }

    /// Fsyncs everything and stops the syncers. Later appends are dropped and counted.
    pub fn close(&self) {
        self.attempts.close();
        self.requests.close();
        self.outcomes.close();
    }

    /// Whether records can be appended.
    pub fn is_alive(&self) -> bool {
        self.requests.is_alive() && self.attempts.is_alive() && self.outcomes.is_alive()
    }
}

/// Bytes each stream holds on disk; the disk limit is on their sum.
#[derive(Default)]
struct DiskUse {
    bytes: [AtomicU64; 3],
}

impl DiskUse {
    fn total(&self) -> u64 {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// One stream's segments and the thread that fsyncs them.
struct Journal {
    state: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
    dir: PathBuf,
    /// Records written by this process.
    written: Arc<AtomicU64>,
}

/// What the request path and the syncer share.
struct Shared {
    active: Mutex<Active>,
    /// Wakes the syncer early: on close, or when a flush is asked for.
    wake: Condvar,
}

/// The segment being appended to, and what the syncer still owes the disk.
struct Active {
    dir: PathBuf,
    stream: Stream,
    next_seq: u64,
    max_bytes: u64,
    max_age: Duration,
    max_disk_bytes: u64,
    current: Option<Segment>,
    /// Closed segments not yet fsynced.
    retired: Vec<File>,
    /// Bytes written since the last fsync began.
    dirty: bool,
    disk: Arc<DiskUse>,
    disk_checked: Instant,
    closed: bool,
    /// Flushes asked for and not yet done; the syncer answers them by bumping `synced`.
    flush_requests: u64,
    synced: u64,
}

struct Segment {
    file: File,
    bytes: u64,
    opened: Instant,
}

impl Journal {
    fn open(
        stream: Stream,
        ledger_dir: &Path,
        cfg: &LedgerConfig,
        metrics: Metrics,
        disk: Arc<DiskUse>,
    ) -> io::Result<Journal> {
        let dir = stream.dir(ledger_dir);
        std::fs::create_dir_all(&dir)?;
        let next_seq = list_segments(&dir)?.last().map_or(1, |(seq, _)| seq + 1);
        let own_bytes = segments_bytes(&dir);
        disk.bytes[stream.index()].store(own_bytes, Ordering::Relaxed);
        let state = Arc::new(Shared {
            active: Mutex::new(Active {
                dir: dir.clone(),
                stream,
                next_seq,
                max_bytes: cfg.segment_max_bytes,
                max_age: Duration::from_secs(cfg.segment_max_age_secs),
                max_disk_bytes: cfg.max_disk_bytes,
                current: None,
                retired: Vec::new(),
                dirty: false,
                disk,
                disk_checked: Instant::now(),
                closed: false,
                flush_requests: 0,
                synced: 0,
            }),
            wake: Condvar::new(),
        });
        let interval = Duration::from_millis(cfg.flush_interval_ms.max(1));
        let syncer = {
            let state = state.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("tollgate-ledger-{}", stream.table()))
                .spawn(move || run_syncer(&state, interval, &metrics))?
        };
        Ok(Journal {
            state,
            syncer: Mutex::new(Some(syncer)),
            metrics,
            dir,
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    fn append<T: Serialize>(&self, records: &[T]) -> Result<(), AppendError> {
        let res = self.try_append(records);
        let n = records.len() as u64;
        match &res {
            Ok(()) => {
                self.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.records_dropped.inc_by(n);
                // One line per second at most: a full disk must not also flood the log.
                if should_log_drop() {
                    tracing::error!(error = %e, dir = %self.dir.display(), "ledger record dropped");
                }
            }
        }
        res
    }

    fn try_append<T: Serialize>(&self, records: &[T]) -> Result<(), AppendError> {
        let mut line = Vec::with_capacity(512 * records.len());
        for record in records {
            serde_json::to_writer(&mut line, record)?;
            line.push(b'\n');
        }
        let mut active = self.lock();
        if active.closed {
            return Err(AppendError::Closed);
        }
        active.refresh_disk_bytes(&self.metrics);
        let n = line.len() as u64;
        if active.disk.total() + n > active.max_disk_bytes {
            return Err(AppendError::DiskFull {
                limit: active.max_disk_bytes,
            });
        }
        if active.current.as_ref().is_some_and(|s| {
            s.bytes > 0 && (s.bytes + n > active.max_bytes || s.opened.elapsed() >= active.max_age)
        }) {
            active.retire_current();
        }
        let seg = active.segment()?;
        // One write of whole lines: on O_APPEND a line is never interleaved with another.
        seg.file.write_all(&line)?;
        seg.bytes += n;
        active.disk.bytes[active.stream.index()].fetch_add(n, Ordering::Relaxed);
        active.dirty = true;
        Ok(())
    }

    fn flush(&self) {
        let mut active = self.lock();
        if active.closed {
            return;
        }
        active.flush_requests += 1;
        let wanted = active.flush_requests;
        self.state.wake.notify_all();
        while active.synced < wanted && !active.closed {
            active = self
                .state
                .wake
                .wait(active)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        {
            let mut active = self.lock();
            active.closed = true;
            self.state.wake.notify_all();
        }
        if let Some(handle) = self.syncer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    fn is_alive(&self) -> bool {
        !self.lock().closed
            && self
                .syncer
                .lock()
                .ok()
                .and_then(|w| w.as_ref().map(|h| !h.is_finished()))
                .unwrap_or(false)
    }

    fn lock(&self) -> MutexGuard<'_, Active> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn should_log_drop() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now = STARTED.get_or_init(Instant::now).elapsed().as_secs() + 1;
    LAST.swap(now, Ordering::Relaxed) != now
}

impl Active {
    fn segment(&mut self) -> io::Result<&mut Segment> {
        if self.current.is_none() {
            let path = self.dir.join(segment_file_name(self.next_seq));
            self.next_seq += 1;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            // The new name must survive a power loss too; this happens once per segment.
            File::open(&self.dir).and_then(|d| d.sync_all())?;
            self.current = Some(Segment {
                file,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        Ok(self.current.as_mut().expect("segment was just opened"))
    }

    /// Closes the current segment; its fsync is left to the syncer.
    fn retire_current(&mut self) {
        if let Some(seg) = self.current.take() {
            self.retired.push(seg.file);
        }
    }

    fn refresh_disk_bytes(&mut self, metrics: &Metrics) {
        if self.disk_checked.elapsed() >= DISK_CHECK_EVERY {
            let own = segments_bytes(&self.dir);
            self.disk.bytes[self.stream.index()].store(own, Ordering::Relaxed);
            self.disk_checked = Instant::now();
            metrics.ledger_disk_bytes.set(self.disk.total() as i64);
        }
    }

    /// Takes what must be fsynced: the retired segments and a handle on the current one.
    fn take_sync_work(&mut self) -> Vec<File> {
        let mut files = std::mem::take(&mut self.retired);
        if self.dirty {
            self.dirty = false;
            if let Some(seg) = &self.current {
                match seg.file.try_clone() {
                    Ok(f) => files.push(f),
                    Err(e) => {
                        tracing::error!(error = %e, "ledger segment handle could not be cloned");
                        self.dirty = true;
                    }
                }
            }
        }
        files
    }
}

/// Once per interval (or when woken): fsync what was written, outside the lock, so
/// appends never wait for the disk. Also rotates an idle segment that grew old.
fn run_syncer(state: &Shared, interval: Duration, metrics: &Metrics) {
    let mut next = Instant::now() + interval;
    loop {
        let (work, closed, answering) = {
            let mut active = state.active.lock().unwrap_or_else(|e| e.into_inner());
            while !active.closed && active.flush_requests == active.synced {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                active = state
                    .wake
                    .wait_timeout(active, next - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            next = Instant::now() + interval;
            if active
                .current
                .as_ref()
                .is_some_and(|s| s.opened.elapsed() >= active.max_age)
            {
                active.retire_current();
            }
            if active.closed {
                active.retire_current();
            }
            active.refresh_disk_bytes(metrics);
            (
                active.take_sync_work(),
                active.closed,
                active.flush_requests,
            )
        };
        for file in work {
            if let Err(e) = file.sync_data() {
                tracing::error!(error = %e, "ledger fsync failed");
            }
        }
        let mut active = state.active.lock().unwrap_or_else(|e| e.into_inner());
        active.synced = answering;
        state.wake.notify_all();
        if closed {
            return;
        }
    }
}

/// Bytes used by the segment files in `dir`.
fn segments_bytes(dir: &Path) -> u64 {
    list_segments(dir)
        .map(|segs| {
            segs.iter()
                .filter_map(|(_, path)| std::fs::metadata(path).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Segment files in `dir`, oldest first, with their sequence numbers.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every complete record of every segment in `dir` (a stream's directory), skipping
/// a torn last line.
pub fn read_all<T: DeserializeOwned>(dir: &Path) -> io::Result<Vec<T>> {
    let mut out = Vec::new();
    for (_, path) in list_segments(dir)? {
        let text = std::fs::read(&path)?;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            match serde_json::from_slice::<T>(line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "skipping unreadable ledger line")
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::NanoUsd;
    use crate::usage::UsageSource;

    fn record(i: u64) -> Record {
        Record {
            ts: chrono::Utc::now(),
            request_id: format!("r{i}"),
            team: "t".into(),
            project: String::new(),
            env: String::new(),
            user: String::new(),
            feature: String::new(),
            workflow_id: String::new(),
            tags: Default::default(),
            key_name: String::new(),
            provider: "p".into(),
            endpoint: "/v1/chat/completions".into(),
            requested_model: "m".into(),
            model: "m".into(),
            stream: false,
            status: 200,
            input_tokens: i,
            output_tokens: 1,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            usage_source: UsageSource::Reported,
            cost_usd: Some(NanoUsd(i as i64)),
            latency_ms: 1,
            ttfb_ms: Some(1),
            error: None,
            policy: String::new(),
            attempts: 1,
            escalations: 0,
            counterfactual_cost_usd: None,
            cache_hit: false,
            saved_input_tokens: 0,
            saved_output_tokens: 0,
            saved_cost_usd: None,
        }
    }

    fn attempt(request: &Record, n: u16) -> AttemptRecord {
        AttemptRecord {
            ts: request.ts,
            request_id: request.request_id.clone(),
            attempt: n,
            role: crate::record::Role::Primary,
            policy: String::new(),
            team: request.team.clone(),
            project: String::new(),
            env: String::new(),
            user: String::new(),
            feature: String::new(),
            key_name: String::new(),
            endpoint: request.endpoint.clone(),
            provider: request.provider.clone(),
            model: request.model.clone(),
            stream: false,
            status: 200,
            input_tokens: request.input_tokens,
            output_tokens: 1,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            usage_source: UsageSource::Reported,
            cost_usd: request.cost_usd,
            latency_ms: 1,
            ttfb_ms: Some(1),
            error: None,
            verdict: crate::record::Verdict::Served,
            judge: String::new(),
        }
    }

    #[test]
    fn attempts_go_to_their_own_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let ledger = Ledger::open(tmp.path(), &LedgerConfig::default(), metrics.clone()).unwrap();
        for i in 0..5 {
            let r = record(i);
            let attempts: Vec<_> = (1..=(i as u16 % 3)).map(|n| attempt(&r, n)).collect();
            ledger.append(&r, &attempts).unwrap();
        }
        ledger.close();
        let requests = read_all::<Record>(&Stream::Requests.dir(ledger.dir())).unwrap();
        let attempts = read_all::<AttemptRecord>(&Stream::Attempts.dir(ledger.dir())).unwrap();
        assert_eq!(requests.len(), 5);
        // 0 + 1 + 2 + 0 + 1 attempts.
        assert_eq!(attempts.len(), 4);
        assert_eq!(
            attempts
                .iter()
                .map(|a| (a.request_id.as_str(), a.attempt))
                .collect::<Vec<_>>(),
            [("r1", 1), ("r2", 1), ("r2", 2), ("r4", 1)]
        );
        assert_eq!(ledger.written(Stream::Attempts).load(Ordering::Relaxed), 4);
        assert_eq!(ledger.written(Stream::Requests).load(Ordering::Relaxed), 5);
        assert_eq!(metrics.records_dropped.get(), 0);
    }

    #[test]
    fn writes_rotates_and_reads_back_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LedgerConfig {
            segment_max_bytes: 2000,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(tmp.path(), &cfg, Metrics::new()).unwrap();
        for i in 0..50 {
            ledger.append(&record(i), &[]).ok();
        }
        ledger.flush();
        let got = read_all::<Record>(ledger.dir()).unwrap();
        assert_eq!(got.len(), 50);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, r)| r.input_tokens == i as u64)
        );
        assert!(list_segments(ledger.dir()).unwrap().len() > 1);
        ledger.close();
        // A reopened ledger starts a new segment after the last one.
        let before = list_segments(&tmp.path().join("ledger")).unwrap().len();
        let again = Ledger::open(tmp.path(), &cfg, Metrics::new()).unwrap();
        again.append(&record(99), &[]).unwrap();
        again.close();
        assert_eq!(
            list_segments(&tmp.path().join("ledger")).unwrap().len(),
            before + 1
        );
        assert_eq!(
            read_all::<Record>(&tmp.path().join("ledger"))
                .unwrap()
                .len(),
            51
        );
    }

    #[test]
    fn a_closed_ledger_drops_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let ledger = Ledger::open(tmp.path(), &LedgerConfig::default(), metrics.clone()).unwrap();
        ledger.close();
        assert!(matches!(
            ledger.append(&record(1), &[]),
            Err(AppendError::Closed)
        ));
        assert_eq!(metrics.records_dropped.get(), 1);
    }

    #[test]
    fn the_disk_limit_drops_and_counts_instead_of_growing() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let line = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        let cfg = LedgerConfig {
            max_disk_bytes: line * 3 + 100,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(tmp.path(), &cfg, metrics.clone()).unwrap();
        for i in 0..10 {
            ledger.append(&record(i), &[]).ok();
        }
        ledger.close();
        assert_eq!(
            read_all::<Record>(&tmp.path().join("ledger"))
                .unwrap()
                .len(),
            3
        );
        assert_eq!(metrics.records_dropped.get(), 7);
    }

    #[test]
    fn an_appended_record_is_readable_at_once_without_a_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LedgerConfig {
            flush_interval_ms: 3_600_000,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(tmp.path(), &cfg, Metrics::new()).unwrap();
        ledger.append(&record(7), &[]).unwrap();
        // No flush, no syncer pass: the line is already in the file.
        let got = read_all::<Record>(ledger.dir()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].request_id, "r7");
    }

    #[test]
    fn concurrent_appends_keep_every_line_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LedgerConfig {
            segment_max_bytes: 50_000,
            ..LedgerConfig::default()
        };
        let ledger = Arc::new(Ledger::open(tmp.path(), &cfg, Metrics::new()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        ledger.append(&record(t * 1000 + i), &[]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        ledger.flush();
        let mut ids: Vec<u64> = read_all::<Record>(ledger.dir())
            .unwrap()
            .iter()
            .map(|r| r.input_tokens)
            .collect();
        ids.sort();
        let want: Vec<u64> = (0..8)
            .flat_map(|t| (0..250).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(ids, want);
        assert!(list_segments(ledger.dir()).unwrap().len() > 1);
    }

    #[test]
    fn skips_a_torn_last_line() {
        let tmp = tempfile::tempdir().unwrap();
        let line = serde_json::to_string(&record(1)).unwrap();
        std::fs::write(
            tmp.path().join("000000000001.jsonl"),
            format!("{line}\n{}", &line[..20]),
        )
        .unwrap();
        assert_eq!(read_all::<Record>(tmp.path()).unwrap().len(), 1);
    }
}
