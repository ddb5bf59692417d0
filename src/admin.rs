//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and for callers holding the admin
//! token `POST /reload`, `GET /budgets` and the spend page at `GET /`.

use crate::budget::Budgets;
use crate::budget::view;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::reload::{Reloader, Trigger};
use crate::report::{html, page::SpendPage, source::Records};
use async_trait::async_trait;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ledger: Arc<Ledger>,
    reloader: Arc<Reloader>,
    budgets: Arc<Budgets>,
}

pub fn router(
    metrics: Metrics,
    ledger: Arc<Ledger>,
    reloader: Arc<Reloader>,
    budgets: Arc<Budgets>,
) -> Router {
    Router::new()
        .route("/", get(spend_page))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/reload", post(reload))
        .route("/budgets", get(budgets_handler))
        .with_state(AdminState {
            metrics,
            ledger,
            reloader,
            budgets,
        })
}

/// Reloads the config like SIGHUP does: 200 when applied, 422 with every problem when
/// refused. Needs `Authorization: Bearer TOKEN` with the token `admin.token_env` names.
async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&s, bearer(&headers), "POST /reload", "reload over HTTP") {
        return refused;
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

/// Every configured budget's current period, with the requests each refused since start.
/// Needs the admin token, like `POST /reload`.
async fn budgets_handler(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&s, bearer(&headers), "GET /budgets", "the budgets endpoint") {
        return refused;
    }
    let cfg = s.reloader.current();
    let now = Utc::now();
    let rejections = s.budgets.rejections();
    let mut budgets = view::views(&s.budgets, &cfg.spend, now, |_| true);
    for b in &mut budgets {
        b.rejections = Some(rejections.get(b.name).copied().unwrap_or(0));
    }
    Json(BudgetsAnswer {
        as_of: view::rfc3339(now),
        time_zone: cfg.spend.time_zone.name(),
        budgets,
    })
    .into_response()
}

/// The answer of `GET /budgets`; a struct, so fields keep their order.
#[derive(Serialize)]
struct BudgetsAnswer<'a> {
    as_of: String,
    /// Of the budgets' calendar periods (their bounds are written in UTC).
    time_zone: &'a str,
    budgets: Vec<view::BudgetView<'a>>,
}

/// The spend page (`tollgate report --format html`) of the last `?since=` (30d when not
/// given), from ClickHouse when the config ships there, else from the ledger. Needs the
/// admin token like `/budgets`; a browser, which cannot send the header, may give it as
/// `?token=` instead.
async fn spend_page(
    State(s): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    // A query that does not decode holds no token that could match.
    let Query(query) = query.unwrap_or_default();
    let token = match bearer(&headers) {
        "" => query.token.as_deref().unwrap_or(""),
        header => header,
    };
    if let Some(refused) = refusal(&s, token, "GET / (or GET /?token=TOKEN)", "the spend page") {
        return refused;
    }
    let since = query.since.as_deref().unwrap_or("30d");
    let since = match crate::report::parse_since(since) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("since: {e}")),
    };
    let cfg = s.reloader.current();
    let now = Utc::now();
    let (records, store) = match Records::read(&cfg, now, since, false).await {
        Ok(read) => read,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the records for the spend page");
            return error(
                StatusCode::BAD_GATEWAY,
                "cannot read the records for the spend page; see the log",
            );
        }
    };
    // Aggregating a month of records is CPU work: off the async workers too.
    let built = tokio::task::spawn_blocking(move || {
        html::render(&SpendPage::build(
            &records,
            now - since,
            now,
            &cfg.spend,
            store.name(),
        ))
    })
    .await;
    match built {
        Ok(page) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            page,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "spend page failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "spend page failed")
        }
    }
}

/// The spend page's query: `?token=` for a browser, `?since=` for the range.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    token: Option<String>,
    since: Option<String>,
}

/// The answer to a caller presenting `token` (empty for none) instead of the admin token:
/// 404 when no token is configured (the endpoint is off), 401 for a missing or wrong one;
/// `None` lets the caller through.
fn refusal(s: &AdminState, token: &str, endpoint: &str, what: &str) -> Option<Response> {
    let Some(authorized) = s
        .reloader
        .current()
        .admin_token
        .as_ref()
        .map(|t| t.matches(token))
    else {
        return Some(error(
            StatusCode::NOT_FOUND,
            &format!("{what} is off: set admin.token_env in the config to turn it on"),
        ));
    };
    if !authorized {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            &format!("{endpoint} needs Authorization: Bearer with the admin token"),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
        return Some(response);
    }
    None
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

#[cfg(test)]
mod tests {
    use super::PageQuery;
    use axum::extract::Query;

    fn token(uri: &str) -> Option<String> {
        let Query(q) = Query::<PageQuery>::try_from_uri(&uri.parse().unwrap()).ok()?;
        q.token
    }

    #[test]
    fn query_values_decode_like_a_browser_encodes_them() {
        assert_eq!(token("/?token=a%2Bb+c%3D").as_deref(), Some("a+b c="));
        assert_eq!(token("/?since=7d&token=tg-%41").as_deref(), Some("tg-A"));
        assert_eq!(token("/?token=%C3%A9").as_deref(), Some("é"));
        assert_eq!(token("/?since=7d"), None);
    }
}
