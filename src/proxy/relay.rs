//! One upstream exchange: send the request, stream the response back as it arrives,
//! meter it on the way, and settle its usage.

use super::request_filter::Outcome;
use super::{RequestCtx, Tollgate, upstream};
use crate::api::Endpoint;
use crate::attribution::REQUEST_ID_HEADER;
use crate::config::validate::Provider;
use crate::error::{ProxyError, stream_error_event};
use crate::tokens::Encoding;
use crate::usage::meter::{Meter, settle};
use crate::usage::{UsageSource, estimate};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

pub struct Exchange<'a> {
    pub provider: &'a Provider,
    pub endpoint: Endpoint,
    pub credential: upstream::Credential<'a>,
    pub body: Bytes,
    pub strip_usage_chunk: bool,
    pub metered: bool,
}

/// Response headers not forwarded: hop-by-hop ones (framing is re-derived) and the
/// upstream's own length when the body is rewritten.
fn is_dropped_response_header(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade"
    )
}

pub async fn run(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ex: Exchange<'_>,
) -> Result<(), Outcome> {
    let provider = ex.provider;
    let addr = provider.upstream().ok_or_else(|| {
        ProxyError::Internal(format!("provider {} has no address yet", provider.name))
    })?;
    let peer = upstream::peer(&tg.resolver, provider, addr).await?;
    let header = upstream::request_header(
        session.req_header(),
        addr,
        provider,
        ctx.format,
        ex.credential,
        ex.body.len(),
    )?;

    let mut up = send(tg, &peer, provider, header, &ex.body).await?;
    ctx.ttfb_ms = Some(ctx.elapsed_ms());

    let Some(up_resp) = up.response_header().cloned() else {
        return Err(upstream_err(provider, "no response header").into());
    };
    let status = up_resp.status.as_u16();
    ctx.status = status;
    let success = (200..300).contains(&status);
    let is_sse = up_resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut meter = Meter::new(
        ctx.format,
        ex.endpoint,
        is_sse,
        ex.strip_usage_chunk && is_sse,
    );

    let resp = client_response_header(&up_resp, ctx, meter.rewrites())
        .map_err(|e| ProxyError::Internal(format!("response header: {e}")))?;
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|_| Outcome::Abort("client went away before the response header"))?;
    ctx.response_started = true;

    let end = pump(session, &mut up, &mut meter, ex.metered).await;
    match &end {
        PumpEnd::Complete => {
            meter.finish_body();
            let rest = meter.take_unforwarded();
            let last = (!rest.is_empty()).then(|| Bytes::from(rest));
            if session.write_response_body(last, true).await.is_err() {
                ctx.error = Some("client_disconnected".into());
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
            ctx.error = Some("client_disconnected".into());
        }
        PumpEnd::UpstreamFailed(reason) => {
            drop(up);
            ctx.error = Some(format!("upstream_failed: {reason}"));
            if is_sse {
                let _ = session
                    .write_response_body(Some(stream_error_event(ctx.format, reason)), false)
                    .await;
            }
        }
    }
    if let Some(err) = meter.observed.upstream_error.take() {
        ctx.error.get_or_insert(format!("upstream_error: {err}"));
    }

    ctx.served_model = meter.observed.model.clone();
    if ex.metered && success {
        settle_usage(ctx, &meter, ex.endpoint, ex.body).await;
    }
    match end {
        PumpEnd::Complete => Ok(()),
        PumpEnd::ClientGone => Err(Outcome::Abort("client disconnected")),
        PumpEnd::UpstreamFailed(_) => Err(Outcome::Abort("upstream failed mid-response")),
    }
}

fn upstream_err(provider: &Provider, reason: impl Into<String>) -> ProxyError {
    ProxyError::Upstream {
        provider: provider.name.clone(),
        reason: reason.into(),
    }
}

/// Connects and sends the request; a pooled connection that turns out dead is retried once
/// on a fresh one.
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
        let sent = async {
            up.write_request_header(Box::new(header.clone())).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await
        }
        .await;
        match sent {
            Ok(()) => return Ok(up),
            Err(e) if reused && attempt == 1 => {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on a new one");
            }
            Err(e) if e.etype() == &pingora::ErrorType::ReadTimedout => {
                return Err(ProxyError::UpstreamTimeout {
                    provider: provider.name.clone(),
                    reason: describe(&e),
                });
            }
            Err(e) => return Err(upstream_err(provider, describe(&e))),
        }
    }
}

/// A pingora error without its chain of internal context.
fn describe(e: &pingora::Error) -> String {
    match &e.context {
        Some(c) => format!("{} ({})", e.etype().as_str(), c.as_str()),
        None => e.etype().as_str().to_string(),
    }
}

fn client_response_header(
    up: &ResponseHeader,
    ctx: &RequestCtx,
    rewrites: bool,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 2))?;
    for (name, value) in up.headers.iter() {
        let n = name.as_str();
        if is_dropped_response_header(n)
            || (rewrites && (n == "content-length" || n == "transfer-encoding"))
        {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    if rewrites {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    Ok(resp)
}

enum PumpEnd {
    Complete,
    ClientGone,
    UpstreamFailed(String),
}

/// Moves body chunks from the upstream to the client as they arrive, watching the client
/// connection so a disconnect is noticed even while the upstream is silent.
async fn pump(
    session: &mut Session,
    up: &mut HttpSession,
    meter: &mut Meter,
    metered: bool,
) -> PumpEnd {
    loop {
        let chunk = tokio::select! {
            biased;
            read = up.read_response_body() => read,
            _ = session.as_downstream_mut().read_body_or_idle(true) => return PumpEnd::ClientGone,
        };
        match chunk {
            Ok(Some(bytes)) => {
                // Unmetered bodies (pass-through paths) are forwarded without being kept.
                let fed = if metered { meter.feed(&bytes) } else { None };
                let out = match fed {
                    Some(rewritten) if rewritten.is_empty() => continue,
                    Some(rewritten) => Bytes::from(rewritten),
                    None => bytes,
                };
                if session.write_response_body(Some(out), false).await.is_err() {
                    return PumpEnd::ClientGone;
                }
            }
            Ok(None) => return PumpEnd::Complete,
            Err(e) => return PumpEnd::UpstreamFailed(describe(&e)),
        }
    }
}

/// Fills the context's usage: reported where the provider said, estimated where not.
async fn settle_usage(ctx: &mut RequestCtx, meter: &Meter, endpoint: Endpoint, body: Bytes) {
    let enc = Encoding::for_model(ctx.served_model.as_deref().unwrap_or(&ctx.upstream_model));
    let observed = meter.observed.clone();
    let needs_count = observed.input_tokens.is_none() || observed.output_tokens.is_none();
    let (usage, source) = if needs_count {
        // Counting can take milliseconds on large prompts: keep it off the async workers.
        crate::tokens::spawn_count(move || {
            settle(
                &observed,
                || {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .map(|v| estimate::input_tokens(endpoint, &v, enc))
                        .unwrap_or(0)
                },
                enc,
            )
        })
        .await
    } else {
        settle(&observed, || 0, enc)
    };
    ctx.usage = usage;
    ctx.usage_source = source;
    if source == UsageSource::Estimated {
        tracing::debug!(request_id = %ctx.request_id, "usage missing; estimated locally");
    }
}
