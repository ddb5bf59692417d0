//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and `POST /reload` for callers
//! holding the admin token.

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reload::{Reloader, Trigger};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ledger: Arc<Ledger>,
    reloader: Arc<Reloader>,
}

pub fn router(metrics: Metrics, ledger: Arc<Ledger>, reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/reload", post(reload))
        .with_state(AdminState {
            metrics,
            ledger,
            reloader,
        })
}

/// Reloads the config like SIGHUP does: 200 when applied, 422 with every problem when
/// refused. Needs `Authorization: Bearer TOKEN` with the token `admin.token_env` names.
async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(authorized) = s
        .reloader
        .current()
        .admin_token
        .as_ref()
        .map(|t| t.matches(bearer(&headers)))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "reload over HTTP is off: set admin.token_env in the config to turn it on",
        );
    };
    if !authorized {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "POST /reload needs Authorization: Bearer with the admin token",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
        return response;
    }
    let reloader = s.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await {
        Ok(Ok(_)) => Json(json!({"result": "ok"})).into_response(),
        Ok(Err(refused)) => {
            let problems: Vec<String> = refused.0.iter().map(ToString::to_string).collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"result": "refused", "problems": problems})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "config reload failed")
        }
    }
}

/// The token of `Authorization: Bearer TOKEN` (scheme in any case); empty when there is none,
/// which no configured token matches.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
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
