//! Assembling and running the server: proxy, admin listener, simulated providers, ledger.

use crate::admin::{self, AxumService};
use crate::config::Validated;
use crate::config::validate::{ProviderKind, UpstreamAddr};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::proxy::Tollgate;
use crate::reload::Reloader;
use crate::sim::{SimOptions, SimProvider};
use crate::sink::{Sink, SinkConfig};
use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use std::sync::Arc;
use std::time::Duration;

/// How long the sink may keep shipping after the proxy stopped; the rest waits in the
/// ledger for the next start.
const SINK_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs until SIGTERM or SIGINT, then lets in-flight requests finish and flushes the ledger.
pub fn serve(cfg: Validated, config_path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    crate::tokens::warm_up();
    let metrics = Metrics::new();
    let ledger = Arc::new(
        Ledger::open(&cfg.data_dir, &cfg.ledger, metrics.clone())
            .with_context(|| format!("opening the ledger under {}", cfg.data_dir.display()))?,
    );

    let sink = match &cfg.clickhouse {
        Some(settings) => Some(
            Sink::start(
                SinkConfig {
                    settings: settings.clone(),
                    ledger_dir: ledger.dir().to_path_buf(),
                    ledger_id: ledger.id().to_string(),
                    state_dir: cfg.data_dir.join("sink"),
                    shipped_retention: Duration::from_secs(cfg.ledger.shipped_retention_secs),
                },
                metrics.sink.clone(),
                ledger.written(),
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

    for provider in cfg
        .providers
        .values()
        .filter(|p| p.kind == ProviderKind::Simulated)
    {
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

    let admin_listener = std::net::TcpListener::bind(cfg.admin_listen)
        .with_context(|| format!("binding the admin listener on {}", cfg.admin_listen))?;
    server.add_service(background_service(
        "admin",
        AxumService::new(
            "admin",
            admin_listener,
            admin::router(metrics.clone(), ledger.clone()),
        ),
    ));

    let listen = cfg.listen.to_string();
    let shared_config = Arc::new(ArcSwap::new(cfg.clone()));
    server.add_service(background_service(
        "config reload",
        Reloader {
            path: config_path.to_path_buf(),
            config: shared_config.clone(),
            reloads: metrics.config_reloads.clone(),
        },
    ));
    let proxy = Tollgate::new(shared_config, ledger.clone(), metrics);
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&listen);
    server.add_service(service);

    tracing::info!(listen = %listen, admin = %cfg.admin_listen, "tollgate serving");
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
