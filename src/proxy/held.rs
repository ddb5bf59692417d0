//! Answers held back from the client: read whole and metered for a cascade's judges, then
//! replayed when accepted; and error answers a plan moves on from, read for their code.

use super::ctx::{FinishedAttempt, Started};
use super::judging::without_logprobs;
use super::outcome::Outcome;
use super::relay::{
    Exchange, Framing, MAX_ERROR_BODY, Opened, client_response_header, describe,
    provider_error_code, send_whole, settle_usage,
};
use super::{RequestCtx, Tollgate};
use crate::error::ProxyError;
use crate::policy::Target;
use crate::record::Verdict;
use crate::usage::meter::Meter;
use crate::usage::{Usage, UsageSource};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A whole answer read from the upstream and not yet shown to the client.
pub struct Held {
    header: ResponseHeader,
    /// The body as the client would get it (an injected usage chunk already removed).
    pub body: Vec<u8>,
    /// The body as the provider sent it, kept for the cache when it differs from `body`.
    raw: Option<Vec<u8>>,
    pub is_sse: bool,
    pub usage: Usage,
    pub usage_source: UsageSource,
    pub served_model: Option<String>,
    pub ttfb_ms: u64,
}

impl Held {
    /// Removes the logprobs a judge asked for and the client did not.
    pub fn drop_logprobs(&mut self) {
        self.body = without_logprobs(&self.body, self.is_sse);
        if let Some(raw) = &mut self.raw {
            *raw = without_logprobs(raw, self.is_sse);
        }
    }

    /// The record of the call that produced this answer, which the client did not get.
    pub fn as_attempt(
        &self,
        started: Started,
        target: &Target,
        verdict: Verdict,
        judge: &str,
    ) -> FinishedAttempt {
        FinishedAttempt {
            started,
            provider: target.provider.name.clone(),
            model: target.model.clone(),
            status: self.header.status.as_u16(),
            usage: self.usage,
            usage_source: self.usage_source,
            ttfb_ms: Some(self.ttfb_ms),
            latency_ms: started.at.elapsed().as_millis() as u64,
            error: None,
            verdict,
            judge: judge.to_string(),
        }
    }
}

/// Why an answer could not be held.
pub enum Unheld {
    ClientGone,
    /// The upstream failed, the answer was too large to hold, or it had not ended by the
    /// exchange's deadline; `code` is the attempt's recorded error.
    Failed {
        code: &'static str,
        reason: String,
    },
}

impl Unheld {
    fn failed(reason: String) -> Unheld {
        Unheld::Failed {
            code: "upstream_failed",
            reason,
        }
    }
}

/// Answers larger than this are not held for judging.
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// Reads an opened exchange's whole answer, metered, watching the client meanwhile. The
/// upstream connection goes back to the pool when the answer ended cleanly.
pub async fn hold(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &RequestCtx,
    opened: Opened,
    ex: &Exchange<'_>,
    model: &str,
) -> Result<Held, Unheld> {
    let is_sse = opened.is_sse();
    let Opened {
        mut up,
        peer,
        header,
    } = opened;
    let ttfb_ms = ctx.elapsed_ms();
    let mut meter = Meter::new(
        ex.format,
        ex.endpoint,
        is_sse,
        ex.strip_usage_chunk && is_sse,
    );
    let mut body = Vec::new();
    // The usage chunk the client does not see is what the cache needs to store the answer.
    let mut raw = (ctx.cache.wants_answer() && ex.strip_usage_chunk && is_sse).then(Vec::new);
    let late = async {
        match ex.until {
            Some(until) => tokio::time::sleep_until(until.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(late);
    loop {
        let chunk = tokio::select! {
            biased;
            read = up.read_response_body() => read,
            _ = session.as_downstream_mut().read_body_or_idle(true) => return Err(Unheld::ClientGone),
            _ = &mut late => return Err(Unheld::Failed {
                code: "upstream_timeout",
                reason: "the answer had not ended by the cascade's deadline".into(),
            }),
        };
        match chunk {
            Ok(Some(bytes)) => {
                if let Some(raw) = &mut raw {
                    raw.extend_from_slice(&bytes);
                }
                match meter.feed(&bytes) {
                    Some(out) => body.extend_from_slice(&out),
                    None => body.extend_from_slice(&bytes),
                }
                if body.len() > MAX_HELD_BYTES {
                    return Err(Unheld::failed(format!(
                        "the answer is larger than {MAX_HELD_BYTES} bytes"
                    )));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(Unheld::failed(describe(&e))),
        }
    }
    meter.finish_body();
    body.extend_from_slice(&meter.take_unforwarded());
    if up.response_done() {
        tg.connector
            .release_http_session(up, &peer, peer.options.idle_timeout)
            .await;
    }
    let served_model = meter.observed.model.clone();
    let (usage, usage_source) = settle_usage(
        tg,
        &ctx.request_id,
        &ex.provider.name,
        served_model.as_deref().unwrap_or(model),
        &meter,
        ex.endpoint,
        ex.body.clone(),
    )
    .await;
    Ok(Held {
        header,
        body,
        raw,
        is_sse,
        usage,
        usage_source,
        served_model,
        ttfb_ms,
    })
}

/// Sends a held answer to the client, its record written before the last byte goes out.
pub async fn replay(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    held: Held,
) -> Result<(), Outcome> {
    ctx.ttfb_ms = Some(held.ttfb_ms);
    ctx.status = held.header.status.as_u16();
    ctx.upstream_status = ctx.status;
    ctx.usage = held.usage;
    ctx.usage_source = held.usage_source;
    ctx.served_model = held.served_model;
    ctx.accepted = true;
    let framing = Framing::Length(held.body.len());
    let resp = client_response_header(&held.header, ctx, framing, Verdict::Accepted)
        .map_err(|e| ProxyError::Internal(format!("response header: {e}")))?;
    if let Some(tee) = ctx.cache.tee() {
        tee.fill(held.raw.as_deref().unwrap_or(&held.body), held.is_sse);
    }
    send_whole(tg, session, ctx, resp, Bytes::from(held.body)).await
}

/// Reads (a bounded start of) an error answer the plan moves on from, for its code.
pub async fn discard(tg: &Tollgate, opened: Opened) -> String {
    let status = opened.status();
    let Opened { mut up, peer, .. } = opened;
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match up.read_response_body().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    if up.response_done() {
        tg.connector
            .release_http_session(up, &peer, peer.options.idle_timeout)
            .await;
    }
    provider_error_code(&body).unwrap_or_else(|| format!("http_{status}"))
}
