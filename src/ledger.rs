//! The local ledger: records appended as JSON Lines to segment files under
//! `DATA_DIR/ledger/`, written and fsynced in batches by one writer thread.
//!
//! Submitting never blocks a request: the queue is bounded and a full queue drops the
//! record and counts it (`tollgate_records_dropped_total`). Segments are named by a
//! sequence number that only grows; a restart opens a new segment rather than appending
//! to one whose last line may be torn.

use crate::config::LedgerConfig;
use crate::metrics::Metrics;
use crate::record::Record;
use arc_swap::ArcSwapOption;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SEGMENT_SUFFIX: &str = ".jsonl";
/// Names this ledger, so delivery tokens of a wiped and recreated ledger never collide
/// with old ones.
const ID_FILE: &str = "LEDGER_ID";
/// How often the writer re-measures the ledger's disk use.
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

enum Msg {
    Record(Box<Record>),
    /// Write and fsync everything queued before this message, then answer.
    Flush(SyncSender<()>),
}

/// Handle used by the proxy to append records.
pub struct Ledger {
    /// Emptied on close; an atomic swap keeps submission lock-free.
    tx: ArcSwapOption<SyncSender<Msg>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
    dir: PathBuf,
    id: String,
    /// Records written to disk by this process.
    written: Arc<AtomicU64>,
}

impl Ledger {
    /// Creates the directory and starts the writer thread.
    pub fn open(data_dir: &Path, cfg: &LedgerConfig, metrics: Metrics) -> io::Result<Ledger> {
        let dir = data_dir.join("ledger");
        std::fs::create_dir_all(&dir)?;
        let id = ledger_id(&dir)?;
        let written = Arc::new(AtomicU64::new(0));
        let next_seq = list_segments(&dir)?.last().map_or(1, |(seq, _)| seq + 1);
        let (tx, rx) = sync_channel(cfg.queue_capacity);
        let writer = Writer {
            dir: dir.clone(),
            seq: next_seq,
            max_bytes: cfg.segment_max_bytes,
            max_age: Duration::from_secs(cfg.segment_max_age_secs),
            flush_interval: Duration::from_millis(cfg.flush_interval_ms.max(1)),
            current: None,
            max_disk_bytes: cfg.max_disk_bytes,
            disk_bytes: dir_bytes(&dir),
            disk_checked: Instant::now(),
            metrics: metrics.clone(),
            written: written.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || writer.run(rx))?;
        Ok(Ledger {
            tx: ArcSwapOption::from_pointee(tx),
            writer: Mutex::new(Some(handle)),
            metrics,
            dir,
            id,
            written,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counter of records this process has written to disk.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// Queues a record; never blocks.
    pub fn submit(&self, record: Record) {
        let sent = match self.tx.load().as_deref() {
            Some(tx) => match tx.try_send(Msg::Record(Box::new(record))) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            self.metrics.records_dropped.inc();
        }
    }

    /// Waits until every record submitted so far is on disk.
    pub fn flush(&self) {
        if let Some(tx) = self.tx.load_full() {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Writes what is queued, fsyncs, and stops the writer. Later submissions are dropped
    /// and counted.
    pub fn close(&self) {
        // The writer stops once the last sender is gone; in-flight `submit`s hold clones
        // of the Arc only for the duration of one try_send.
        let _: Option<Arc<SyncSender<Msg>>> = self.tx.swap(None);
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    /// Whether the writer thread is running.
    pub fn is_alive(&self) -> bool {
        self.writer
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|h| !h.is_finished()))
            .unwrap_or(false)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
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

/// Reads every complete record of every segment in `dir`, skipping a torn last line.
pub fn read_all(dir: &Path) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for (_, path) in list_segments(dir)? {
        let text = std::fs::read(&path)?;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "skipping unreadable ledger line")
                }
            }
        }
    }
    Ok(out)
}

struct Segment {
    file: BufWriter<File>,
    bytes: u64,
    opened: Instant,
}

struct Writer {
    dir: PathBuf,
    seq: u64,
    max_bytes: u64,
    max_age: Duration,
    flush_interval: Duration,
    current: Option<Segment>,
    max_disk_bytes: u64,
    disk_bytes: u64,
    disk_checked: Instant,
    metrics: Metrics,
    written: Arc<AtomicU64>,
}

/// Bytes used by the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Writer {
    /// Group commit: the writer wakes once per flush interval, writes everything queued and
    /// fsyncs once. It does not block on the queue, so submitting a record never has to
    /// wake a thread: under load a wake-up or a sync per handful of records would cost
    /// more than the requests themselves.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut next_sync = Instant::now() + self.flush_interval;
        loop {
            std::thread::sleep(next_sync.saturating_duration_since(Instant::now()));
            next_sync = Instant::now() + self.flush_interval;
            let mut waiting = Vec::new();
            let mut dirty = false;
            let disconnected = loop {
                match rx.try_recv() {
                    Ok(Msg::Record(r)) => {
                        self.write(&r);
                        dirty = true;
                    }
                    Ok(Msg::Flush(done)) => waiting.push(done),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if dirty {
                self.sync();
            }
            for done in waiting {
                let _ = done.send(());
            }
            if disconnected {
                return;
            }
            self.rotate_if_old();
        }
    }

    fn write(&mut self, r: &Record) {
        let mut line = match serde_json::to_vec(r) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "record could not be serialized");
                return;
            }
        };
        line.push(b'\n');
        if !self.has_room_for(line.len() as u64) {
            self.metrics.records_dropped.inc();
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.bytes + line.len() as u64 > self.max_bytes)
        {
            self.close_segment();
        }
        let seg = match self.segment() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot open ledger segment");
                return;
            }
        };
        match seg.file.write_all(&line) {
            Ok(()) => {
                seg.bytes += line.len() as u64;
                self.disk_bytes += line.len() as u64;
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.records_dropped.inc();
                tracing::error!(error = %e, "ledger write failed; record dropped");
            }
        }
    }

    /// Whether the ledger may grow by `n` bytes. Shipped segments are deleted by the sink, so
    /// disk use is re-measured now and then rather than only added up.
    fn has_room_for(&mut self, n: u64) -> bool {
        if self.disk_checked.elapsed() >= DISK_CHECK_EVERY {
            self.disk_bytes = dir_bytes(&self.dir);
            self.disk_checked = Instant::now();
            self.metrics.ledger_disk_bytes.set(self.disk_bytes as i64);
        }
        if self.disk_bytes + n <= self.max_disk_bytes {
            return true;
        }
        if self.metrics.records_dropped.get() % 1000 == 0 {
            tracing::error!(
                dir = %self.dir.display(),
                used = self.disk_bytes,
                limit = self.max_disk_bytes,
                "ledger disk limit reached: records are being dropped"
            );
        }
        false
    }

    fn segment(&mut self) -> io::Result<&mut Segment> {
        if self.current.is_none() {
            let path = self.dir.join(segment_file_name(self.seq));
            self.seq += 1;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            // Make the new file's name durable too.
            File::open(&self.dir).and_then(|d| d.sync_all()).ok();
            self.current = Some(Segment {
                file: BufWriter::with_capacity(256 * 1024, file),
                bytes: 0,
                opened: Instant::now(),
            });
        }
        Ok(self.current.as_mut().expect("segment was just opened"))
    }

    fn sync(&mut self) {
        if let Some(seg) = self.current.as_mut() {
            let res = seg
                .file
                .flush()
                .and_then(|()| seg.file.get_ref().sync_data());
            if let Err(e) = res {
                tracing::error!(error = %e, "ledger fsync failed");
            }
        }
    }

    fn rotate_if_old(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.opened.elapsed() >= self.max_age)
        {
            self.close_segment();
        }
    }

    fn close_segment(&mut self) {
        self.sync();
        self.current = None;
    }
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
        }
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
            ledger.submit(record(i));
        }
        ledger.flush();
        let got = read_all(ledger.dir()).unwrap();
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
        again.submit(record(99));
        again.close();
        assert_eq!(
            list_segments(&tmp.path().join("ledger")).unwrap().len(),
            before + 1
        );
        assert_eq!(read_all(&tmp.path().join("ledger")).unwrap().len(), 51);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let ledger = Ledger::open(tmp.path(), &LedgerConfig::default(), metrics.clone()).unwrap();
        ledger.close();
        ledger.submit(record(1));
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
            ledger.submit(record(i));
        }
        ledger.close();
        assert_eq!(read_all(&tmp.path().join("ledger")).unwrap().len(), 3);
        assert_eq!(metrics.records_dropped.get(), 7);
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
        assert_eq!(read_all(tmp.path()).unwrap().len(), 1);
    }
}
