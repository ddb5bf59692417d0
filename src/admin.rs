//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ledger: Arc<Ledger>,
}

pub fn router(metrics: Metrics, ledger: Arc<Ledger>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { metrics, ledger })
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Ready while records can be written.
async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ledger.is_alive() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "ledger writer stopped\n")
    }
}

/// Runs an axum router on a listener bound before the server started, until shutdown.
pub struct AxumService {
    listener: Mutex<Option<std::net::TcpListener>>,
    router: Router,
    name: &'static str,
}

impl AxumService {
    pub fn new(name: &'static str, listener: std::net::TcpListener, router: Router) -> AxumService {
        AxumService {
            listener: Mutex::new(Some(listener)),
            router,
            name,
        }
    }
}

#[async_trait]
impl BackgroundService for AxumService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = self.name, error = %e, "cannot start listener");
                return;
            }
        };
        let served = axum::serve(listener, self.router.clone())
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(service = self.name, error = %e, "listener failed");
        }
    }
}
