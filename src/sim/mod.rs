//! A simulated LLM provider speaking the OpenAI and Anthropic wire formats.
//!
//! It stands in for the real upstream in `tollgate demo`, in the `simulated` provider kind and
//! in integration tests. Everything it reports is deterministic so tests can predict it: input
//! usage comes from the same tiktoken tables the proxy uses, output length from a hash of the
//! prompt (or the `x-sim-output-tokens` header), and every generated word is exactly one token.
//! JSON answers and tool-call arguments are instances of the request's schemas ([`schema`]).
//! Faults (error statuses, missing usage, mid-body resets, hangs, truncated, refused or
//! malformed answers, low logprobs) are requested per call with headers, each optionally
//! scoped to one model, see [`faults`].

mod anthropic;
#[cfg(test)]
mod directive_tests;
mod embeddings;
mod error;
mod faults;
mod ids;
mod logprobs;
mod openai;
mod prompt;
mod responses;
mod schema;
mod stream;
#[cfg(test)]
mod tests;
mod text;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use error::{Flavor, SimError};
use faults::{Directives, Faults};
use stream::{Event, StreamGuard, Timing};

/// Request bodies carry base64 images, so allow far more than axum's 2 MB default.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Bounds the prompt-cache memory of a long-running demo; forgetting is harmless.
const CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Delay before the first byte of a response (default 0).
    pub first_token_delay: Duration,
    /// Delay between streamed tokens/events (default 0).
    pub token_interval: Duration,
}

/// Counters the tests read (also served as JSON at GET /sim/stats).
#[derive(Debug, Default, serde::Serialize, Clone)]
pub struct SimStats {
    pub requests: u64,
    pub streams_completed: u64,
    pub streams_cancelled: u64,
}

/// The simulated provider. Cheap to clone: all state is shared.
#[derive(Clone)]
pub struct SimProvider {
    inner: Arc<Shared>,
}

struct Shared {
    opts: SimOptions,
    counters: Arc<Counters>,
    /// Keys of prompts (OpenAI) and cacheable prefixes (Anthropic) seen so far.
    prompt_cache: Mutex<HashSet<u64>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
}

impl SimProvider {
    pub fn new(opts: SimOptions) -> Self {
        SimProvider {
            inner: Arc::new(Shared {
                opts,
                counters: Arc::default(),
                prompt_cache: Mutex::default(),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai::chat))
            .route("/v1/completions", post(openai::completions))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/v1/responses", post(responses::responses))
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
            .route("/v1/models", get(models))
            .route("/sim/stats", get(stats))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(self.clone())
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.inner.counters;
        SimStats {
            requests: c.requests.load(Ordering::Relaxed),
            streams_completed: c.streams_completed.load(Ordering::Relaxed),
            streams_cancelled: c.streams_cancelled.load(Ordering::Relaxed),
        }
    }

    /// Serve on an already-bound listener until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Records `key` and reports whether it had been seen before.
    fn seen_before(&self, key: u64) -> bool {
        let mut cache = self
            .inner
            .prompt_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.contains(&key) {
            return true;
        }
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key);
        false
    }

    /// Counts the request and gathers its per-request context; `model` selects the
    /// directives scoped to it.
    fn admit(&self, flavor: Flavor, headers: &HeaderMap, model: Option<&str>) -> Call {
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        Call {
            sim: self.clone(),
            flavor,
            directives: Faults::from_headers(headers).for_model(model),
            request_id: ids::request_id(flavor),
        }
    }

    /// Runs one API call end to end: `build` does the token counting, so it runs on the
    /// blocking pool, then the reply is played back with the configured timing and faults.
    async fn handle(
        &self,
        flavor: Flavor,
        headers: &HeaderMap,
        body: &[u8],
        build: fn(&Call, &Value) -> Result<Reply, SimError>,
    ) -> Response {
        let parsed = parse_body(flavor, body);
        let model = parsed
            .as_ref()
            .ok()
            .and_then(|req| req.get("model"))
            .and_then(Value::as_str);
        let call = self.admit(flavor, headers, model);
        call.hang_if_asked().await;
        let req = match call.gate(headers).and(parsed) {
            Ok(req) => req,
            Err(e) => return call.fail(e),
        };
        let (call, outcome) = crate::tokens::spawn_count(move || {
            let outcome = build(&call, &req);
            (call, outcome)
        })
        .await;
        match outcome {
            Ok(reply) => call.respond(reply).await,
            Err(e) => call.fail(e),
        }
    }
}

/// Requests are JSON objects; anything else is a 400 in the API's own format.
fn parse_body(flavor: Flavor, body: &[u8]) -> Result<Value, SimError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(req) if req.is_object() => Ok(req),
        Ok(_) => Err(SimError::not_an_object(flavor)),
        Err(e) => Err(SimError::bad_json(flavor, &e)),
    }
}

/// Accepts any credential; the point is only to catch a caller that sends none.
fn has_credentials(headers: &HeaderMap) -> bool {
    let present = |name: &str| {
        headers
            .get(name)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
    };
    present("authorization") || present("x-api-key")
}

/// What an endpoint answers before timing and faults are applied.
pub(crate) enum Reply {
    Json(Value),
    Stream(Vec<Event>),
}

/// Per-request context handed to the endpoint builders.
pub(crate) struct Call {
    sim: SimProvider,
    flavor: Flavor,
    directives: Directives,
    request_id: String,
}

impl Call {
    /// Rejections decided before the body is read: no credentials, or an injected status.
    fn gate(&self, headers: &HeaderMap) -> Result<(), SimError> {
        if !has_credentials(headers) {
            return Err(SimError::unauthenticated(self.flavor));
        }
        match self.directives.status {
            Some(status) => Err(SimError::injected(status, self.directives.retry_after)),
            None => Ok(()),
        }
    }

    /// `hang`: never answer. Dropping the connection drops this future, ending the request.
    async fn hang_if_asked(&self) {
        if self.directives.hang {
            std::future::pending::<()>().await;
        }
    }

    fn fail(&self, e: SimError) -> Response {
        let response = e.render(self.flavor, &self.request_id);
        self.with_request_id(response)
    }

    fn timing(&self) -> Timing {
        let opts = &self.sim.inner.opts;
        Timing {
            first: opts.first_token_delay,
            interval: self
                .directives
                .token_interval
                .unwrap_or(opts.token_interval),
        }
    }

    async fn respond(self, reply: Reply) -> Response {
        if let Some(delay) = self.directives.header_delay {
            tokio::time::sleep(delay).await;
        }
        let timing = self.timing();
        let reset_after = self.directives.reset_after;
        let response = match reply {
            Reply::Json(value) => {
                let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
                let body = match reset_after {
                    Some(_) => stream::cut_short(bytes, timing),
                    None => {
                        stream::pause(timing.first).await;
                        Body::from(bytes)
                    }
                };
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Reply::Stream(events) => {
                let guard = StreamGuard::new(self.sim.inner.counters.clone());
                let body = stream::playback(events, reset_after, timing, guard);
                (
                    [
                        (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }
        };
        self.with_request_id(response)
    }

    fn with_request_id(&self, mut response: Response) -> Response {
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            let name = match self.flavor {
                Flavor::OpenAi => "x-request-id",
                Flavor::Anthropic => "request-id",
            };
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Both providers serve GET /v1/models; Anthropic clients are told apart by their
/// `anthropic-version` header.
async fn models(State(sim): State<SimProvider>, headers: HeaderMap) -> Response {
    let flavor = if headers.contains_key("anthropic-version") {
        Flavor::Anthropic
    } else {
        Flavor::OpenAi
    };
    let call = sim.admit(flavor, &headers, None);
    call.hang_if_asked().await;
    if let Err(e) = call.gate(&headers) {
        return call.fail(e);
    }
    let list = match flavor {
        Flavor::OpenAi => openai::model_list(),
        Flavor::Anthropic => anthropic::model_list(),
    };
    call.respond(Reply::Json(list)).await
}

/// Not counted in `requests`: reading the counters must not change them.
async fn stats(State(sim): State<SimProvider>) -> axum::Json<SimStats> {
    axum::Json(sim.stats())
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let e = SimError::not_found(format!("Invalid URL ({method} {})", uri.path()));
    e.render(Flavor::OpenAi, "")
}
