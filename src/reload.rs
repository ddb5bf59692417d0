//! Config reload on SIGHUP: the new config is loaded and validated off to the side and
//! swapped in whole, so requests in flight finish on the config they started with. A config
//! with problems is refused and the running one stays. Listeners, the data dir, the ledger
//! and the sink are fixed at start; changes to them are reported and wait for a restart.

use crate::config::{self, Validated};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounterVec;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Reloader {
    pub path: PathBuf,
    pub config: Arc<ArcSwap<Validated>>,
    pub reloads: IntCounterVec,
}

impl Reloader {
    /// Loads the file again and swaps it in when it is valid. Returns whether it was.
    pub fn reload(&self) -> bool {
        let current = self.config.load_full();
        match config::load(&self.path) {
            Ok(new) => {
                carry_over(&current, &new);
                for field in fixed_fields_changed(&current, &new) {
                    tracing::warn!(field, "changed in the config file; takes effect on restart");
                }
                self.config.store(Arc::new(new));
                self.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(config = %self.path.display(), "config reloaded");
                true
            }
            Err(e) => {
                self.reloads.with_label_values(&["refused"]).inc();
                for problem in &e.0 {
                    tracing::error!(%problem, "config reload refused; the running config stays");
                }
                false
            }
        }
    }
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
    changed
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; config reload disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    self.reload();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
