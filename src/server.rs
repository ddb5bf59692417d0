//! Assembling and running the server: proxy, admin listener, simulated providers, ledger.

pub mod ready;

use crate::admin::{self, AxumService};
use crate::alerts::Alerter;
use crate::budget::Budgets;
use crate::budget::metrics::BudgetCollector;
use crate::budget::shared::RefreshService;
use crate::cache::ResponseCache;
use crate::config::Sharing;
use crate::config::UpstreamAddr;
use crate::config::Validated;
use crate::ledger::Ledger;
use crate::ledger::Stream;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::proxy::Tollgate;
use crate::proxy::connections::{Guarded, Limits};
use crate::reload::{ReloadService, Reloader};
use crate::sim::{SimOptions, SimProvider};
use crate::sink::clickhouse::ClickHouse;
use crate::sink::{Sink, SinkConfig};
use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::server::configuration::ServerConf;
use pingora::server::{ListenFds, RunArgs, RuntimeOpts, Server, ShutdownWatch};
use pingora::services::Service;
use pingora::services::background::background_service;
use pingora::services::listening::Service as ListeningService;
use ready::Ready;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// How long the sink may keep shipping after the proxy stopped; the rest waits in the
/// ledger for the next start.
const SINK_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs until SIGTERM or SIGINT, then lets in-flight requests finish and flushes the ledger.
pub fn serve(cfg: Validated, config_path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new();
    let cache = cfg.cache.as_ref().map(|settings| {
        let cache = Arc::new(ResponseCache::new(settings));
        metrics.watch_cache(cache.stats().clone(), cache.redis().cloned());
        cache
    });
    let ledger = Arc::new(
        Ledger::open(&cfg.data_dir, &cfg.ledger, metrics.clone())
            .with_context(|| format!("opening the ledger under {}", cfg.data_dir.display()))?,
    );

    // Before the sink starts, so records not shipped yet are where its cursor says.
    let budgets = Budgets::new(crate::budget::startup::load(&cfg));

    let sink = match &cfg.clickhouse {
        Some(settings) => Some(
            Sink::start(
                SinkConfig {
                    settings: settings.clone(),
                    state_dir: cfg.data_dir.join("sink"),
                    shipped_retention: Duration::from_secs(cfg.ledger.shipped_retention_secs),
                },
                metrics.sink.clone(),
                &ledger,
            )
            .context("starting the ClickHouse sink")?,
        ),
        None => None,
    };

    let conf = ServerConf {
        threads: cfg.server.threads.max(1),
        grace_period_seconds: Some(cfg.server.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(cfg.server.grace_period_secs.max(1)),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    for provider in cfg.providers.values().filter(|p| p.kind.is_in_process()) {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the simulated provider")?;
        let port = listener.local_addr()?.port();
        provider.set_upstream(UpstreamAddr {
            tls: false,
            host: "127.0.0.1".into(),
            port,
            path_prefix: String::new(),
        });
        let sim = SimProvider::new(SimOptions {
            first_token_delay: Duration::from_millis(provider.simulated.first_token_delay_ms),
            token_interval: Duration::from_millis(provider.simulated.token_interval_ms),
        });
        tracing::info!(provider = %provider.name, port, "simulated provider listening");
        server.add_service(background_service(
            "simulated provider",
            AxumService::new("simulated provider", listener, sim.router()),
        ));
    }

    // Both listeners are bound here, once, so port 0 works and the ports announced on the
    // ready line are the ones serving.
    let proxy_listener = bind(cfg.listen, "proxy")?;
    let admin_listener = bind(cfg.admin_listen, "admin")?;
    let ready = Ready::new([
        ("proxy", proxy_listener.local_addr()?),
        ("admin", admin_listener.local_addr()?),
    ]);
    let shared_config = Arc::new(ArcSwap::new(cfg.clone()));
    if let (Some(sink), Some(settings)) = (&sink, &cfg.clickhouse)
        && cfg.spend.budget_sharing == Sharing::ClickHouse
    {
        budgets.track_shipping(ledger.written(Stream::Requests), sink.requests_progress());
        server.add_service(background_service(
            "budget refresh",
            RefreshService {
                budgets: budgets.clone(),
                config: shared_config.clone(),
                ch: ClickHouse::new(settings).context("ClickHouse client for budgets")?,
            },
        ));
    }
    let reloader = Arc::new(Reloader::new(
        config_path,
        shared_config.clone(),
        metrics.config_reloads.clone(),
    ));
    // A budget a reload adds or changes starts from its recorded spend, not from zero.
    let reloaded = budgets.clone();
    reloader.on_swap(Box::new(move |old, new| {
        let budgets = reloaded.clone();
        crate::budget::startup::load_for_new(old, new, move |known| budgets.adopt(known));
    }));
    server.add_service(background_service(
        "config reload",
        ReloadService(reloader.clone()),
    ));
    server.add_service(background_service(
        "admin",
        AxumService::new(
            "admin",
            admin_listener,
            admin::router(metrics.clone(), ledger.clone(), reloader, budgets.clone()),
        ),
    ));
    metrics.register(Box::new(BudgetCollector::new(
        budgets.clone(),
        shared_config.clone(),
    )));
    let rate_limiter = Arc::new(RateLimiter::new());
    for collector in rate_limiter.collectors() {
        metrics.register(collector);
    }
    let proxy = Tollgate::new(
        shared_config,
        ledger.clone(),
        metrics.clone(),
        cache,
        budgets,
        rate_limiter,
    );
    let proxy = if cfg.spend.alerts.webhooks.is_empty() {
        proxy
    } else {
        let alerter = Alerter::new(
            &cfg.spend.alerts,
            &cfg.data_dir.join("alerts"),
            cfg.spend.redis.as_ref(),
            metrics.alerts.clone(),
        )
        .context("starting budget alerts")?;
        proxy.with_alerts(alerter)
    };
    let limits = Limits {
        max_connections: cfg.server.max_connections,
        header_timeout: Duration::from_millis(cfg.server.header_timeout_ms),
        idle_timeout: Duration::from_secs(cfg.server.idle_timeout_secs),
    };
    let app = Guarded::new(
        pingora::proxy::http_proxy(&server.configuration, proxy),
        limits,
        metrics,
    );
    let service = ListeningService::new("tollgate proxy".to_string(), app);
    server.add_service(PreBound::new(service, proxy_listener)?);

    tracing::info!(%ready, "tollgate serving");
    ready.announce();
    server.run(RunArgs::default());
    // Order matters: every request has finished, so the ledger's last write happens now,
    // and only then can the sink drain it.
    ledger.close();
    tracing::info!("ledger flushed");
    if let Some(sink) = sink {
        sink.shutdown(SINK_DRAIN_DEADLINE);
    }
    tracing::info!("tollgate stopped");
    Ok(())
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("binding the {what} listener on {addr}"))
}

/// A pingora listening service on a socket bound before the server runs. Pingora looks up a
/// service's address in its table of listening fds (the table its zero-downtime upgrades
/// hand over) before binding; finding this socket there, it serves on it instead of binding
/// the address again.
struct PreBound<S> {
    inner: S,
    addr: String,
    fd: Option<OwnedFd>,
}

impl<A: ServerApp + Send + Sync + 'static> PreBound<ListeningService<A>> {
    fn new(mut inner: ListeningService<A>, listener: TcpListener) -> anyhow::Result<Self> {
        // Pingora's accept loop is async: the socket must not block.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        inner.add_tcp(&addr);
        Ok(PreBound {
            inner,
            addr,
            fd: Some(listener.into()),
        })
    }
}

#[async_trait]
impl<S: Service> Service for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // The server always passes its table; without one the fd would be dropped and pingora
        // would bind the same address itself.
        if let (Some(table), Some(fd)) = (&fds, self.fd.take()) {
            table.lock().add(self.addr.clone(), fd.into_raw_fd());
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
