//! Client connections: the limits pingora's HTTP/1 layer does not enforce by itself.
//!
//! - A cap on open connections: past it a new connection gets a 503 and is closed, so idle
//!   or slow clients cannot exhaust memory.
//! - A deadline for each whole request header. Pingora's read timeout applies to each read,
//!   so a client sending one byte at a time (slowloris) would keep a connection forever.
//! - An idle timeout between the requests of a keep-alive connection.
//! - Tollgate's answer to a request header pingora would refuse with an empty 400 (see
//!   [`framing`]): the header is read here first and handed to pingora once it parses.
//!
//! The body has its own deadline, enforced where the body is read (`proxy::body`).

use crate::api::ApiFormat;
use crate::error::wire_error;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

mod framing;

/// What a connection may take, from `server.*` in the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Wraps the HTTP application (the proxy) with the connection limits.
pub struct Guarded<A> {
    app: Arc<A>,
    limits: Limits,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl<A> Guarded<A> {
    pub fn new(app: A, limits: Limits, metrics: Metrics) -> Guarded<A> {
        Guarded {
            app: Arc::new(app),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            metrics,
        }
    }
}

/// Set on each request's session; the proxy marks it when the request header has been read
/// (see [`header_read`]), which stops the header deadline.
#[derive(Debug, Default)]
pub struct HeaderClock {
    read: AtomicBool,
}

/// Called with the connection context the request's session was handed: the header is in.
pub fn header_read(conn_ctx: Box<dyn Any + Send + Sync>) {
    if let Ok(clock) = conn_ctx.downcast::<Arc<HeaderClock>>() {
        clock.read.store(true, Ordering::Release);
    }
}

/// The answer to a connection past the cap (the API is not known yet: OpenAI's shape).
fn too_many_connections() -> Vec<u8> {
    let body = wire_error(
        ApiFormat::OpenAi,
        ("server_error", "overloaded_error"),
        "too_many_connections",
        "too many open connections to this gateway; retry shortly",
    );
    framing::closing_response("503 Service Unavailable", &body)
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.connections_refused.inc();
            let _ = stream.write_all(&too_many_connections()).await;
            let _ = stream.shutdown().await;
            return None;
        };
        self.metrics.client_connections.inc();
        self.serve(stream, shutdown).await;
        self.metrics.client_connections.dec();
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A> Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The connection's requests, one after the other, each under its header deadline.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut wait = self.limits.header_timeout;
        loop {
            // Bytes of a pipelined request pingora kept from the last one: it reads those
            // itself, and answers a header it refuses with its own empty 400.
            let pipelined = settings.as_ref().is_some_and(holds_pipelined_bytes);
            let head = if pipelined {
                None
            } else {
                let Some(head) = self.read_head(&mut stream, wait, shutdown).await else {
                    return;
                };
                Some(head)
            };
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            if let (Some(head), ServerSession::H1(h1)) = (head, &mut session) {
                h1.set_pipelined_prefix(head);
            }
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                Some(self.limits.idle_timeout.as_secs().max(1))
            });
            let clock = Arc::new(HeaderClock::default());
            session.set_connection_user_context(Some(Box::new(clock.clone())));
            let reused = tokio::select! {
                reused = self.app.process_new_http(session, shutdown) => reused,
                () = header_deadline(&clock, wait) => {
                    // Dropping the session closes the connection.
                    self.header_timed_out(wait);
                    return;
                }
            };
            let Some(reused) = reused else {
                // Pingora ended a connection whose next request had started arriving without
                // reading that request's header: it refused it (or the client stopped
                // mid-header). Counted, as the refusals answered here are.
                if pipelined && !clock.read.load(Ordering::Acquire) && !*shutdown.borrow() {
                    self.metrics
                        .framing_errors
                        .with_label_values(&[framing::PIPELINED])
                        .inc();
                }
                return;
            };
            (stream, settings) = reused.consume();
            // The next request may first sit idle, then has the usual time for its header.
            wait = self.limits.idle_timeout + self.limits.header_timeout;
        }
    }

    /// The next request's header, read within `wait`; `None` when the connection is done
    /// (closed, timed out, shutting down, or refused and answered here).
    async fn read_head(
        &self,
        stream: &mut Stream,
        wait: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<bytes::BytesMut> {
        let mut stopping = shutdown.clone();
        let head = tokio::select! {
            biased;
            head = framing::read_head(stream, self.limits.idle_timeout) => head,
            () = tokio::time::sleep(wait) => {
                self.header_timed_out(wait);
                return None;
            }
            // Like pingora, stop waiting for requests once the server is shutting down.
            Ok(_) = stopping.wait_for(|stop| *stop) => return None,
        };
        match head {
            framing::Head::Read(head) => Some(head),
            framing::Head::Gone => None,
            framing::Head::Refused(refusal) => {
                self.metrics
                    .framing_errors
                    .with_label_values(&[refusal.kind.label()])
                    .inc();
                tracing::debug!(error = %refusal.message, "request header refused");
                framing::answer_and_close(stream, &framing::answer(&refusal)).await;
                None
            }
        }
    }

    fn header_timed_out(&self, wait: Duration) {
        self.metrics
            .client_timeouts
            .with_label_values(&["header"])
            .inc();
        tracing::debug!(
            ?wait,
            "request header not received in time; connection closed"
        );
    }
}

/// Whether pingora holds bytes of the next request, read with the last one's body. It
/// keeps them private; its `Debug` is the only view, and anything but a plain `None`
/// counts as bytes, so a change there only turns reading ahead off.
fn holds_pipelined_bytes(settings: &HttpPersistentSettings) -> bool {
    !format!("{settings:?}").contains("pipelined_prefix: None")
}

/// Resolves when `wait` has passed without the header being read; never once it was.
async fn header_deadline(clock: &HeaderClock, wait: Duration) {
    tokio::time::sleep(wait).await;
    if clock.read.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}
