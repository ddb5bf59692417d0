//! One upstream exchange: send the request, stream the response back as it arrives,
//! meter it on the way, and settle its usage. Answers held for judging are in `held`.

use super::caching::{self, CACHE_HEADER};
use super::outcome::Outcome;
use super::{RequestCtx, Tollgate, commit, upstream};
use crate::api::{ApiFormat, Endpoint};
use crate::attribution::REQUEST_ID_HEADER;
use crate::config::Provider;
use crate::error::{ProxyError, stream_error_event};
use crate::record::Verdict;
use crate::tokens::Encoding;
use crate::usage::meter::{Meter, settle_counted};
use crate::usage::{Usage, UsageSource, estimate};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};

pub struct Exchange<'a> {
    pub provider: &'a Provider,
    /// The API format spoken to the provider: the client's, except for a judge's call.
    pub format: ApiFormat,
    /// The upstream path and query, when not the client's own (a judge's call).
    pub path: Option<&'a str>,
    pub endpoint: Endpoint,
    pub credential: upstream::Credential<'a>,
    pub body: Bytes,
    pub strip_usage_chunk: bool,
    pub metered: bool,
    /// Time for the provider to answer with a header; its read timeout applies otherwise.
    pub timeout: Option<Duration>,
    /// A cascade's deadline for a call before its last: the header must come, and a held
    /// answer end, by then.
    pub until: Option<Instant>,
}

impl Exchange<'_> {
    /// The time the provider has to answer with a header, deadline included.
    fn header_limit(&self) -> Option<Duration> {
        let left = self
            .until
            .map(|u| u.saturating_duration_since(Instant::now()));
        match (self.timeout, left) {
            (Some(t), Some(l)) => Some(t.min(l)),
            (t, l) => t.or(l),
        }
    }
}

/// Response headers not forwarded: hop-by-hop ones (framing is re-derived) and the
/// upstream's own length when the body is rewritten.
fn is_dropped_response_header(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade"
    )
}

/// An upstream exchange whose response header has arrived.
pub struct Opened {
    pub(super) up: HttpSession,
    pub(super) peer: HttpPeer,
    pub(super) header: ResponseHeader,
}

impl Opened {
    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }

    /// The provider's `retry-after`, in whole seconds.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    pub(super) fn is_sse(&self) -> bool {
        self.header
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }
}

/// Why no response header came.
pub enum Unopened {
    /// The client left while the provider worked; the call was cancelled.
    ClientGone,
    Failed(ProxyError),
}

/// Sends the request and waits for the response header, watching the client meanwhile: a
/// client that leaves cancels the upstream call (dropping it closes the connection).
pub async fn open(
    tg: &Tollgate,
    session: &mut Session,
    ex: &Exchange<'_>,
) -> Result<Opened, Unopened> {
    let provider = ex.provider;
    let addr = provider.upstream().ok_or_else(|| {
        Unopened::Failed(ProxyError::Internal(format!(
            "provider {} has no address yet",
            provider.name
        )))
    })?;
    let peer = upstream::peer(&tg.resolver, provider, addr)
        .await
        .map_err(Unopened::Failed)?;
    let header = upstream::request_header(
        session.req_header(),
        ex.path,
        addr,
        provider,
        ex.format,
        ex.credential,
        ex.body.len(),
    )
    .map_err(Unopened::Failed)?;
    let sending = send(tg, &peer, provider, header, &ex.body);
    let timed = async {
        match ex.header_limit() {
            Some(limit) => tokio::time::timeout(limit, sending)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::UpstreamTimeout {
                        provider: provider.name.clone(),
                        reason: format!("no answer within {} ms", limit.as_millis()),
                    })
                }),
            None => sending.await,
        }
    };
    let up = tokio::select! {
        biased;
        sent = timed => sent.map_err(Unopened::Failed)?,
        _ = session.as_downstream_mut().read_body_or_idle(true) => return Err(Unopened::ClientGone),
    };
    let header = up
        .response_header()
        .cloned()
        .ok_or_else(|| Unopened::Failed(upstream_err(provider, "no response header")))?;
    Ok(Opened { up, peer, header })
}

/// Streams an opened exchange's answer to the client as it arrives, metering it on the
/// way; the record is written before the client sees its end.
pub async fn deliver(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    opened: Opened,
    ex: &Exchange<'_>,
) -> Result<(), Outcome> {
    let Opened {
        mut up,
        peer,
        header: up_resp,
    } = opened;
    ctx.ttfb_ms = Some(ctx.elapsed_ms());
    let status = up_resp.status.as_u16();
    ctx.status = status;
    ctx.upstream_status = status;
    let is_sse = up_resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let meter = Meter::new(
        ex.format,
        ex.endpoint,
        is_sse,
        ex.strip_usage_chunk && is_sse,
    );
    let mut relay = Relay {
        success: (200..300).contains(&status),
        content_length: content_length(&up_resp),
        received: 0,
        error_body: Vec::new(),
        meter,
    };

    let framing = if relay.meter.rewrites() {
        Framing::Chunked
    } else {
        Framing::Upstream
    };
    let resp = client_response_header(&up_resp, ctx, framing, Verdict::Served)
        .map_err(|e| ProxyError::Internal(format!("response header: {e}")))?;
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        drop(up);
        return Err(client_left_before_header(tg, ctx));
    }
    ctx.response_started = true;
    if let Some(tee) = ctx.cache.tee() {
        tee.start(is_sse);
    }

    let end = pump(tg, session, ctx, &mut up, &mut relay, ex).await;
    match &end {
        PumpEnd::Complete => {
            relay.meter.finish_body();
            let rest = relay.meter.take_unforwarded();
            let last = (!rest.is_empty()).then(|| Bytes::from(rest));
            // For bodies whose end only the end of the framing tells (chunked, no usage
            // marker), the record goes in now, before that end is written.
            finish(tg, ctx, &mut relay, ex).await;
            if session.write_response_body(last, true).await.is_err() {
                tracing::debug!(request_id = %ctx.request_id, "client left as the response ended");
            }
            if up.response_done() {
                tg.connector
                    .release_http_session(up, &peer, peer.options.idle_timeout)
                    .await;
            }
        }
        PumpEnd::ClientGone => {
            // Dropping the upstream session closes its connection, so the provider stops
            // generating tokens nobody will read.
            drop(up);
            ctx.mark_end();
            ctx.fail("client_disconnected");
            tg.metrics.client_aborts.inc();
            tracing::debug!(request_id = %ctx.request_id, "client disconnected mid-response");
        }
        PumpEnd::UpstreamFailed(reason) => {
            drop(up);
            ctx.mark_end();
            ctx.fail("upstream_failed");
            tracing::warn!(request_id = %ctx.request_id, reason = %reason, "upstream failed mid-response");
            if is_sse {
                let _ = session
                    .write_response_body(Some(stream_error_event(ctx.format, reason)), false)
                    .await;
            }
        }
    }
    // Aborted exchanges: the connection is closing anyway, so counting here holds no one up.
    finish(tg, ctx, &mut relay, ex).await;
    match end {
        PumpEnd::Complete => Ok(()),
        PumpEnd::ClientGone => Err(Outcome::Abort("client disconnected")),
        PumpEnd::UpstreamFailed(_) => Err(Outcome::Abort("upstream failed mid-response")),
    }
}

/// Sends an answer known whole (held, or cached): the header, then the records (and the
/// answer to the cache when this request leads a flight), then the body, so the call is
/// recorded before the client has all of it.
pub async fn send_whole(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: ResponseHeader,
    body: Bytes,
) -> Result<(), Outcome> {
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Err(client_left_before_header(tg, ctx));
    }
    ctx.response_started = true;
    commit::commit(tg, ctx);
    caching::store(ctx).await;
    if session.write_response_body(Some(body), true).await.is_err() {
        tracing::debug!(request_id = %ctx.request_id, "client left as the answer was sent");
    }
    Ok(())
}

/// Records a client that left before any response header: status 499 (the client closed
/// the request), never a status it did not receive. Usage is not estimated: a provider that
/// had not answered yet is cut off before it produced anything the record could count.
pub fn client_left_before_header(tg: &Tollgate, ctx: &mut RequestCtx) -> Outcome {
    ctx.mark_end();
    ctx.status = CLIENT_CLOSED_REQUEST;
    ctx.fail("client_disconnected");
    tg.metrics.client_aborts.inc();
    tracing::debug!(request_id = %ctx.request_id, "client disconnected before the response header");
    Outcome::Abort("client disconnected before the response header")
}

/// nginx's status for a request whose client closed the connection before the response.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The state of one response as it passes through.
struct Relay {
    success: bool,
    /// The upstream's declared body length, when it declared one.
    content_length: Option<u64>,
    /// Body bytes read from the upstream so far.
    received: u64,
    /// The start of an error response, for the provider's error code.
    error_body: Vec<u8>,
    meter: Meter,
}

/// Error bodies are small; past this their code is not looked for.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

impl Relay {
    /// Whether `chunk`, just read, holds the last bytes the client needs: the stream's end
    /// marker (`[DONE]`, `message_stop`, `response.completed`) or the end of a body of
    /// declared length.
    fn completes(&self) -> bool {
        self.meter.observed.finished || self.content_length.is_some_and(|len| self.received >= len)
    }
}

/// Settles usage and writes the record, once. Called just before the client receives the
/// end of its response, so a process killed after that point has already recorded the call.
async fn finish(tg: &Tollgate, ctx: &mut RequestCtx, relay: &mut Relay, ex: &Exchange<'_>) {
    if ctx.committed {
        return;
    }
    ctx.mark_end();
    relay.meter.finish_body();
    if let Some(err) = relay.meter.observed.upstream_error.take() {
        tracing::debug!(request_id = %ctx.request_id, error = %err, "error event inside the stream");
        ctx.fail("upstream_stream_error");
    }
    if !relay.success {
        let code = provider_error_code(&relay.error_body)
            .unwrap_or_else(|| format!("http_{}", ctx.status));
        ctx.fail(code);
    }
    ctx.served_model = relay.meter.observed.model.clone();
    if ex.metered && relay.success {
        let model = ctx.served_model.as_deref().unwrap_or(&ctx.upstream_model);
        let (usage, source) = settle_usage(
            tg,
            &ctx.request_id,
            &ex.provider.name,
            model,
            &relay.meter,
            ex.endpoint,
            ex.body.clone(),
        )
        .await;
        ctx.usage = usage;
        ctx.usage_source = source;
    }
    commit::commit(tg, ctx);
    caching::store(ctx).await;
}

/// The provider's own error code from an error body: OpenAI's `error.code` (else
/// `error.type`), Anthropic's `error.type`.
pub(super) fn provider_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error")?;
    let code = [&err["code"], &err["type"]]
        .into_iter()
        .find_map(|c| c.as_str().filter(|c| !c.is_empty()))
        .or_else(|| err.as_str())?;
    // The code goes into records and dashboards as a grouping key: keep it a short token.
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn upstream_err(provider: &Provider, reason: impl Into<String>) -> ProxyError {
    ProxyError::Upstream {
        provider: provider.name.clone(),
        reason: reason.into(),
    }
}

/// Connects and sends the request. A pooled connection is retried once on a fresh one only
/// when the request provably never reached the provider: the write failed, or the peer
/// closed the idle connection without a byte of answer. Never after a timeout: a provider
/// that is slow is generating, and a second call would be billed twice.
async fn send(
    tg: &Tollgate,
    peer: &HttpPeer,
    provider: &Provider,
    header: pingora::http::RequestHeader,
    body: &Bytes,
) -> Result<HttpSession, ProxyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut up, reused) = tg
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| upstream_err(provider, describe(&e)))?;
        up.set_read_timeout(Some(provider.read_timeout));
        let written = async {
            up.write_request_header(Box::new(header.clone())).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await
        }
        .await;
        let sent = match written {
            Ok(_) => up.read_response_header().await.map_err(|e| (e, false)),
            Err(e) => Err((e, true)),
        };
        if sent.is_err()
            && let Some(reason) = upstream::refused_certificate(&up)
        {
            return Err(upstream_err(provider, reason));
        }
        match sent {
            Ok(()) => return Ok(up),
            Err((e, _)) if e.etype() == &pingora::ErrorType::ReadTimedout => {
                return Err(ProxyError::UpstreamTimeout {
                    provider: provider.name.clone(),
                    reason: describe(&e),
                });
            }
            Err((e, in_write)) if reused && attempt == 1 && (in_write || closed_unanswered(&e)) => {
                tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on a new one");
            }
            Err((e, _)) => return Err(upstream_err(provider, describe(&e))),
        }
    }
}

/// The peer closed or reset the connection before any byte of response: what an idle
/// keep-alive connection closed by the server looks like.
fn closed_unanswered(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        pingora::ErrorType::ConnectionClosed | pingora::ErrorType::ReadError
    )
}

/// A pingora error without its chain of internal context.
pub(super) fn describe(e: &pingora::Error) -> String {
    match &e.context {
        Some(c) => format!("{} ({})", e.etype().as_str(), c.as_str()),
        None => e.etype().as_str().to_string(),
    }
}

/// How the client's response body is framed.
pub(super) enum Framing {
    /// As the upstream framed it: the bytes pass unchanged.
    Upstream,
    /// Chunked: the body is rewritten as it passes, so its length is not known ahead.
    Chunked,
    /// This many bytes: a whole body known before it is sent.
    Length(usize),
}

pub(super) fn client_response_header(
    up: &ResponseHeader,
    ctx: &RequestCtx,
    framing: Framing,
    verdict: Verdict,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 2))?;
    let reframed = !matches!(framing, Framing::Upstream);
    for (name, value) in up.headers.iter() {
        let n = name.as_str();
        if is_dropped_response_header(n)
            || (reframed && (n == "content-length" || n == "transfer-encoding"))
        {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    match framing {
        Framing::Upstream => {}
        Framing::Chunked => resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?,
        Framing::Length(n) => resp.insert_header(http::header::CONTENT_LENGTH, n.to_string())?,
    }
    resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    if !ctx.policy.is_empty() {
        resp.insert_header(ROUTE_HEADER, ctx.route_header(verdict))?;
    }
    if let Some(status) = ctx.cache.status {
        resp.insert_header(CACHE_HEADER, status.as_str())?;
    }
    if let Some(left) = super::budgeting::remaining(ctx) {
        resp.insert_header(super::budgeting::REMAINING_HEADER, left)?;
    }
    Ok(resp)
}

/// Lists a routed request's calls and their verdicts.
pub const ROUTE_HEADER: &str = "x-tollgate-route";

enum PumpEnd {
    Complete,
    ClientGone,
    UpstreamFailed(String),
}

/// Moves body chunks from the upstream to the client as they arrive, watching the client
/// connection so a disconnect is noticed even while the upstream is silent. The chunk that
/// completes the answer is held until the record is written.
async fn pump(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    relay: &mut Relay,
    ex: &Exchange<'_>,
) -> PumpEnd {
    loop {
        let chunk = tokio::select! {
            biased;
            read = up.read_response_body() => read,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                // A client that already has the whole answer may close at once.
                return if ctx.committed { PumpEnd::Complete } else { PumpEnd::ClientGone };
            }
        };
        match chunk {
            Ok(Some(bytes)) => {
                relay.received += bytes.len() as u64;
                if !relay.success && relay.error_body.len() < MAX_ERROR_BODY {
                    let room = MAX_ERROR_BODY - relay.error_body.len();
                    relay
                        .error_body
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                if relay.success
                    && let Some(tee) = ctx.cache.tee()
                {
                    tee.push(&bytes);
                }
                // Unmetered bodies (pass-through paths) are forwarded without being kept.
                let fed = if ex.metered {
                    relay.meter.feed(&bytes)
                } else {
                    None
                };
                if relay.completes() {
                    finish(tg, ctx, relay, ex).await;
                }
                let out = match fed {
                    Some(rewritten) if rewritten.is_empty() => continue,
                    Some(rewritten) => Bytes::from(rewritten),
                    None => bytes,
                };
                if session.write_response_body(Some(out), false).await.is_err() {
                    return if ctx.committed {
                        PumpEnd::Complete
                    } else {
                        PumpEnd::ClientGone
                    };
                }
            }
            Ok(None) => return PumpEnd::Complete,
            // The answer was complete; what the upstream does after it does not matter.
            Err(_) if ctx.committed => return PumpEnd::Complete,
            Err(e) => return PumpEnd::UpstreamFailed(describe(&e)),
        }
    }
}

/// A response's usage: reported where the provider said, counted locally where not.
pub(super) async fn settle_usage(
    tg: &Tollgate,
    request_id: &str,
    provider: &str,
    model: &str,
    meter: &Meter,
    endpoint: Endpoint,
    body: Bytes,
) -> (Usage, UsageSource) {
    let enc = Encoding::for_model(model);
    let reported = &meter.observed;
    let settled = if reported.input_tokens.is_some() && reported.output_tokens.is_some() {
        settle_counted(reported, || unreachable!("input was reported"), enc)
    } else {
        // Counting is bounded but can take milliseconds: keep it off the async workers.
        let observed = reported.clone();
        crate::tokens::spawn_count(move || {
            settle_counted(
                &observed,
                || {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .map(|v| estimate::input_count(endpoint, &v, enc))
                        .unwrap_or_default()
                },
                enc,
            )
        })
        .await
    };
    if settled.source == UsageSource::Estimated {
        tracing::debug!(
            request_id,
            exact = settled.exact,
            "usage missing; counted locally"
        );
        if !settled.exact {
            tg.metrics
                .usage_approximate
                .with_label_values(&[provider])
                .inc();
        }
    }
    (settled.usage, settled.source)
}
