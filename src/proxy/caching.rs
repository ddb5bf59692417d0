//! The response cache in a request's path, between planning and attempts: a hit is a
//! delivery without an upstream attempt; a miss leads its flight, and its answer is stored
//! when it ended cleanly. Identical requests arriving meanwhile wait for that answer.
//!
//! Answers are stored whole (a streamed one as the body it would have had unstreamed) and
//! replayed in the shape each client asks for, so a stream can serve a non-streaming client
//! and the other way round.

use super::admit::Admitted;
use super::attempts::prepare;
use super::outcome::Outcome;
use super::plan::Plan;
use super::relay::{client_left_before_header, send_whole};
use super::{RequestCtx, Tollgate};
use crate::api::Endpoint;
use crate::attribution::REQUEST_ID_HEADER;
use crate::cache::{CacheKey, CachedResponse, Leader, Lookup, is_deterministic};
use crate::convert::{self, ConvertError};
use crate::error::ProxyError;
use crate::money::NanoUsd;
use crate::usage::{Usage, UsageSource};
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

/// Says what the cache did: `hit`, `miss` or `bypass`. Absent when the request is not
/// cacheable (no caching rule, a non-deterministic request, an endpoint not cached).
pub const CACHE_HEADER: &str = "x-tollgate-cache";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What the cache did for one request.
#[derive(Default)]
pub struct CacheCtx {
    /// For the response header; `None` when the request is not cacheable.
    pub status: Option<CacheStatus>,
    /// The answer a hit replayed: the record's savings.
    pub hit: Option<Arc<CachedResponse>>,
    /// The flight this request leads, until its answer is stored or given up.
    lead: Option<Lead>,
    /// The request's totals, set when its records are written: what a hit of its answer
    /// will have saved.
    spent: Option<(Usage, Option<NanoUsd>)>,
}

impl CacheCtx {
    /// Where the delivered answer's upstream bytes go, when this request leads a flight.
    pub fn tee(&mut self) -> Option<&mut Tee> {
        self.lead.as_mut().map(|l| &mut l.tee)
    }

    /// Whether the delivered answer is wanted for the cache.
    pub fn wants_answer(&self) -> bool {
        self.lead.is_some()
    }

    /// Gives up leading this request's flight: its answer will not be stored (it comes
    /// from another plan than the one the key names).
    pub fn give_up(&mut self) {
        if let Some(lead) = self.lead.take() {
            lead.leader.abandon();
        }
    }

    pub fn note_spent(&mut self, usage: Usage, cost: Option<NanoUsd>) {
        self.spent = Some((usage, cost));
    }
}

struct Lead {
    leader: Leader,
    ttl: Option<Duration>,
    endpoint: Endpoint,
    tee: Tee,
}

/// The answer's bytes as the provider sent them, up to the largest entry the cache keeps.
pub struct Tee {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
    event_stream: bool,
}

impl Tee {
    fn new(limit: u64) -> Tee {
        Tee {
            buf: Vec::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            overflowed: false,
            event_stream: false,
        }
    }

    /// The answer starts: a body of the given kind, from its first byte.
    pub fn start(&mut self, event_stream: bool) {
        self.buf.clear();
        self.overflowed = false;
        self.event_stream = event_stream;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.buf.len() + bytes.len() > self.limit {
            // Too large to keep: stop copying rather than hold bytes that will be refused.
            self.overflowed = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes a whole answer at once (a held one).
    pub fn fill(&mut self, bytes: &[u8], event_stream: bool) {
        self.start(event_stream);
        self.push(bytes);
    }
}

/// A hit, ready to be written.
pub struct Hit {
    answer: Arc<CachedResponse>,
    body: Bytes,
    content_type: &'static str,
}

/// Endpoints whose answers are cached: those that answer from the request alone.
fn cacheable_endpoint(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::Embeddings
    )
}

/// `Cache-Control: no-cache` or `no-store`, or `x-tollgate-cache: bypass`: the client wants
/// a fresh answer, and one that is not kept.
fn bypassed(header: &RequestHeader) -> bool {
    let directive = header
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
        });
    directive
        || header
            .headers
            .get(CACHE_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("bypass"))
}

/// Looks the request up when its rule caches. A hit (or the answer of the identical request
/// in flight) comes back to be served; otherwise the request goes upstream, leading a new
/// flight when it is cacheable.
pub async fn consult(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &Admitted,
    plan: &Plan,
) -> Result<Option<Hit>, Outcome> {
    let (Some(cache), Some(rule)) = (&tg.cache, plan.rule.as_deref().and_then(|r| r.cache)) else {
        return Ok(None);
    };
    let Some(target) = plan.targets.first() else {
        return Ok(None);
    };
    if !cacheable_endpoint(req.endpoint)
        || !(rule.nondeterministic || is_deterministic(req.endpoint, &req.body))
    {
        return Ok(None);
    }
    let a = &ctx.attribution;
    let Some(scope) = rule.scope.label(&a.key_name, &a.team) else {
        return Ok(None);
    };
    if bypassed(session.req_header()) {
        ctx.cache.status = Some(CacheStatus::Bypass);
        tg.metrics.cache_bypass(&ctx.policy);
        return Ok(None);
    }
    // The key names the plan's first target and the body as it would be sent there.
    let body = prepare(ctx.format, req, target, plan.max_tokens, false)?.body;
    let Ok(key) = CacheKey::new(
        &ctx.endpoint,
        &target.provider.name,
        &target.model,
        &scope,
        &body,
    ) else {
        return Ok(None);
    };
    loop {
        let answer = match cache.get_or_join(key).await {
            Lookup::Hit(answer) => answer,
            Lookup::Leader(leader) => {
                ctx.cache.status = Some(CacheStatus::Miss);
                ctx.cache.lead = Some(Lead {
                    leader,
                    ttl: rule.ttl,
                    endpoint: req.endpoint,
                    tee: Tee::new(cache.max_entry_bytes()),
                });
                tg.metrics.cache_miss(&ctx.policy);
                return Ok(None);
            }
            Lookup::Follower(follower) => {
                let waited = tokio::select! {
                    biased;
                    answer = follower.wait() => answer,
                    _ = session.as_downstream_mut().read_body_or_idle(true) => {
                        return Err(client_left_before_header(tg, ctx));
                    }
                };
                // The leader gave up (an error, a cut stream): look up again; one of those
                // waiting leads next.
                let Some(answer) = waited else { continue };
                answer
            }
        };
        return match replay_body(&answer, req) {
            Ok((body, content_type)) => {
                ctx.cache.status = Some(CacheStatus::Hit);
                ctx.provider = target.provider.name.clone();
                Ok(Some(Hit {
                    answer,
                    body,
                    content_type,
                }))
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "cached answer could not be replayed; going upstream");
                Ok(None)
            }
        };
    }
}

/// The body a hit sends: the stored answer, or the event stream it would have been.
fn replay_body(
    answer: &CachedResponse,
    req: &Admitted,
) -> Result<(Bytes, &'static str), ConvertError> {
    if req.stream && answer.endpoint != Endpoint::Embeddings {
        let include_usage = req.include_usage == Some(true);
        let stream =
            convert::to_stream(answer.format, answer.endpoint, &answer.body, include_usage)?;
        return Ok((stream.into(), "text/event-stream"));
    }
    Ok((answer.body.clone(), "application/json"))
}

/// Writes a hit: its record (no attempt, tokens and cost 0, the original's as savings)
/// before the body goes out.
pub async fn serve(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    hit: Hit,
) -> Result<(), Outcome> {
    let Hit {
        answer,
        body,
        content_type,
    } = hit;
    ctx.status = answer.status;
    ctx.upstream_model = answer.model.clone();
    ctx.served_model = Some(answer.model.clone());
    ctx.usage_source = UsageSource::None;
    let left = super::budgeting::remaining_now(tg, ctx);
    let resp = hit_header(ctx, &answer, content_type, body.len(), left)
        .map_err(|e| ProxyError::Internal(format!("response header: {e}")))?;
    ctx.cache.hit = Some(answer);
    send_whole(tg, session, ctx, resp, body).await
}

fn hit_header(
    ctx: &RequestCtx,
    answer: &CachedResponse,
    content_type: &str,
    len: usize,
    budget_left: Option<String>,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(answer.status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    resp.insert_header(CACHE_HEADER, CacheStatus::Hit.as_str())?;
    if let Some(left) = budget_left {
        resp.insert_header(super::budgeting::REMAINING_HEADER, left)?;
    }
    Ok(resp)
}

/// After the records are written: stores the answer of a flight this request leads when it
/// ended cleanly (a success, nothing cut off, usage reported), else gives the flight up so
/// a waiting request goes upstream itself.
pub async fn store(ctx: &mut RequestCtx) {
    let Some(lead) = ctx.cache.lead.take() else {
        return;
    };
    let mut lead = lead;
    match answer_to_store(ctx, &mut lead) {
        Ok(answer) => {
            lead.leader.complete(answer, lead.ttl).await;
        }
        Err(why) => {
            tracing::debug!(request_id = %ctx.request_id, why, "answer not cached");
            lead.leader.abandon();
        }
    }
}

fn answer_to_store(ctx: &RequestCtx, lead: &mut Lead) -> Result<CachedResponse, String> {
    if !(200..300).contains(&ctx.status) {
        return Err(format!("status {}", ctx.status));
    }
    if let Some(error) = &ctx.error {
        return Err(error.clone());
    }
    if ctx.usage_source != UsageSource::Reported {
        return Err("usage not reported".into());
    }
    let tee = &mut lead.tee;
    if tee.overflowed {
        return Err("larger than cache.max_entry_bytes".into());
    }
    let mut body = if tee.event_stream {
        convert::to_whole(ctx.format, lead.endpoint, &tee.buf).map_err(|e| e.to_string())?
    } else {
        serde_json::from_slice::<serde::de::IgnoredAny>(&tee.buf)
            .map_err(|e| format!("body is not JSON: {e}"))?;
        std::mem::take(&mut tee.buf)
    };
    // The buffer grew by doubling; an entry lives long, so it keeps only what it uses.
    body.shrink_to_fit();
    let (usage, cost) = ctx.cache.spent.unwrap_or((ctx.usage, None));
    Ok(CachedResponse {
        status: ctx.status,
        body: body.into(),
        format: ctx.format,
        endpoint: lead.endpoint,
        model: ctx
            .served_model
            .clone()
            .unwrap_or_else(|| ctx.upstream_model.clone()),
        usage,
        cost,
    })
}
