//! Config reload, on SIGHUP, on a change to the config's files, or on the admin listener's
//! `POST /reload`; all three go through [`Reloader::reload`]. The new config is loaded and
//! validated off to the side and swapped in whole, so requests in flight finish on the config
//! they started with. A config with problems is refused and the running one stays.
//! Listeners, the data dir, the ledger and the sink are fixed at start; changes to them are
//! reported and wait for a restart.

use crate::config::{self, ConfigError, Sources, Validated};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Quiet time after the last file event before reloading: editors save in several steps
/// (temp file, rename), and a deploy may change several files.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What asked for a reload; the `trigger` label of `tollgate_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Watch,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Watch => "watch",
            Trigger::Admin => "admin",
        }
    }
}

/// What a reload that was not refused did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Applied,
    /// A file event, but no file the config is read from changed since the last reload.
    Unchanged,
}

pub struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<Validated>>,
    reloads: IntCounterVec,
    /// Digest of the files as the last reload (or the start) found them. Held while a
    /// reload runs, so reloads from different triggers never interleave.
    last_read: Mutex<[u8; 32]>,
    /// Woken after each applied reload: the files to watch may have changed.
    applied: Notify,
    /// Told of each config swapped in, with the one it replaced.
    on_swap: Mutex<Vec<SwapHook>>,
}

/// Called with the old and the new config after a reload swapped it in.
pub type SwapHook = Box<dyn Fn(&Validated, &Arc<Validated>) + Send + Sync>;

impl Reloader {
    pub fn new(path: &Path, config: Arc<ArcSwap<Validated>>, reloads: IntCounterVec) -> Reloader {
        let last_read = Mutex::new(digest(&config.load().sources));
        Reloader {
            path: path.to_path_buf(),
            config,
            reloads,
            last_read,
            applied: Notify::new(),
            on_swap: Mutex::default(),
        }
    }

    /// Adds `hook`, run after every reload that swaps a config in.
    pub fn on_swap(&self, hook: SwapHook) {
        self.on_swap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// The running config.
    pub fn current(&self) -> Arc<Validated> {
        self.config.load_full()
    }

    /// Loads the files again and swaps the config in when it is valid. A file event whose
    /// files read the same as at the last reload changes nothing and is not counted.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let mut last_read = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.config.load_full();
        // Read before loading: a change made while loading gets a reload of its own.
        let read = digest(&current.sources);
        if trigger == Trigger::Watch && read == *last_read {
            tracing::debug!("config files unchanged; nothing to reload");
            return Ok(Reloaded::Unchanged);
        }
        *last_read = read;
        match config::load(&self.path) {
            Ok(new) => {
                carry_over(&current, &new);
                for field in fixed_fields_changed(&current, &new) {
                    tracing::warn!(field, "changed in the config file; takes effect on restart");
                }
                let new = Arc::new(new);
                self.config.store(new.clone());
                for hook in self
                    .on_swap
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                {
                    hook(&current, &new);
                }
                self.count("ok", trigger);
                tracing::info!(config = %self.path.display(), trigger = trigger.as_str(), "config reloaded");
                self.applied.notify_one();
                Ok(Reloaded::Applied)
            }
            Err(e) => {
                self.count("refused", trigger);
                for problem in &e.0 {
                    tracing::error!(%problem, trigger = trigger.as_str(), "config reload refused; the running config stays");
                }
                Err(e)
            }
        }
    }

    fn count(&self, result: &str, trigger: Trigger) {
        self.reloads
            .with_label_values(&[result, trigger.as_str()])
            .inc();
    }
}

/// A digest of every file `sources` names (a policy directory's policy files included),
/// with their paths: any edit, addition, removal or rename changes it.
fn digest(sources: &Sources) -> [u8; 32] {
    let mut files = vec![sources.config.clone()];
    files.extend(sources.prices.iter().cloned());
    if let Some(dir) = &sources.policies {
        let mut policy_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| Sources::is_policy_file(dir, p))
            .collect();
        policy_files.sort();
        files.extend(policy_files);
    }
    let mut hash = Sha256::new();
    for file in files {
        let path = file.as_os_str().as_encoded_bytes();
        hash.update((path.len() as u64).to_le_bytes());
        hash.update(path);
        match std::fs::read(&file) {
            Ok(bytes) => {
                hash.update([1]);
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(bytes);
            }
            Err(_) => hash.update([0]),
        }
    }
    hash.finalize().into()
}

/// Simulated providers listen on ports chosen at start: keep pointing at them.
fn carry_over(old: &Validated, new: &Validated) {
    for (name, p) in &new.providers {
        if !p.kind.is_in_process() {
            continue;
        }
        match old.providers.get(name).and_then(|o| o.upstream()) {
            Some(addr) => {
                p.set_upstream(addr.clone());
            }
            None => {
                tracing::warn!(provider = %name, "new simulated provider starts with the next restart")
            }
        }
    }
}

fn fixed_fields_changed(old: &Validated, new: &Validated) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.admin_listen != new.admin_listen {
        changed.push("admin_listen");
    }
    if old.data_dir != new.data_dir {
        changed.push("data_dir");
    }
    let connection_limits = |s: &crate::config::ServerConfig| {
        (s.max_connections, s.header_timeout_ms, s.idle_timeout_secs)
    };
    if connection_limits(&old.server) != connection_limits(&new.server) {
        changed.push("server (connection limits)");
    }
    if old.clickhouse.as_ref().map(|c| (&c.url, &c.database))
        != new.clickhouse.as_ref().map(|c| (&c.url, &c.database))
    {
        changed.push("telemetry.clickhouse");
    }
    if old.cache != new.cache {
        changed.push("cache");
    }
    if old.spend.alerts != new.spend.alerts {
        changed.push("alerts");
    }
    changed
}

/// Runs the SIGHUP and file-change triggers until shutdown.
pub struct ReloadService(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = &self.0;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; config reload disabled");
                return;
            }
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut files = match notify::recommended_watcher(move |event| {
            let _ = events_tx.send(event);
        }) {
            Ok(w) => Some(FileWatch::new(w)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; reload on SIGHUP");
                None
            }
        };
        let mut due: Option<Instant> = None;
        loop {
            if let Some(files) = &mut files {
                files.arm(&reloader.current());
            }
            tokio::select! {
                _ = hup.recv() => {
                    let _ = reloader.reload(Trigger::Signal);
                }
                Some(event) = events.recv() => {
                    let Some(files) = &mut files else { continue };
                    match event {
                        Ok(event) if files.concerns(&event, &reloader.current()) => {
                            due = Some(Instant::now() + DEBOUNCE);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "watching the config files"),
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    due = None;
                    let _ = reloader.reload(Trigger::Watch);
                }
                // Another trigger may have named new files to watch.
                _ = reloader.applied.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The directories watched for changes to the config's files. Directories, not files: an
/// editor's or a deploy's save by rename replaces the file, and a watch on it would be lost.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl FileWatch {
    fn new(watcher: notify::RecommendedWatcher) -> FileWatch {
        FileWatch {
            watcher,
            watched: BTreeSet::new(),
        }
    }

    /// Watches what `config` reads from, and stops watching what it no longer does. A
    /// directory that cannot be watched (not there yet) is tried again on the next call.
    fn arm(&mut self, config: &Validated) {
        let wanted = if config.reload.watch {
            directories(&config.sources)
        } else {
            BTreeSet::new()
        };
        for gone in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in wanted
            .difference(&self.watched)
            .cloned()
            .collect::<Vec<_>>()
        {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching for config changes");
                    self.watched.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for config changes")
                }
            }
        }
    }

    /// Whether `event` touches a file `config` is read from. A watched directory that was
    /// itself replaced is watched again on the next [`FileWatch::arm`].
    fn concerns(&mut self, event: &notify::Event, config: &Validated) -> bool {
        let sources = absolute(&config.sources);
        let mut concerns = false;
        for path in &event.paths {
            if self.watched.remove(path) {
                let _ = self.watcher.unwatch(path);
                concerns = true;
            }
            concerns |= *path == sources.config
                || sources.prices.contains(path)
                || sources
                    .policies
                    .as_deref()
                    .is_some_and(|dir| Sources::is_policy_file(dir, path));
        }
        concerns
    }
}

/// The directories holding `sources`' files, and the policies directory with its parent
/// (which sees the directory replaced).
fn directories(sources: &Sources) -> BTreeSet<PathBuf> {
    let sources = absolute(sources);
    let parent = |p: &Path| p.parent().map(Path::to_path_buf);
    let mut dirs: BTreeSet<PathBuf> = std::iter::once(&sources.config)
        .chain(&sources.prices)
        .filter_map(|p| parent(p))
        .collect();
    if let Some(dir) = sources.policies {
        dirs.extend(parent(&dir));
        dirs.insert(dir);
    }
    dirs
}

/// `sources` with absolute paths, as file events name them.
fn absolute(sources: &Sources) -> Sources {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    Sources {
        config: abs(&sources.config),
        prices: sources.prices.iter().map(|p| abs(p)).collect(),
        policies: sources.policies.as_deref().map(abs),
    }
}
