//! `request_filter`: authenticate, read and route the request, call the provider, stream
//! the answer back. Every request is answered here; nothing falls through to pingora's
//! own upstream path.

use super::outcome::Outcome;
use super::{RequestCtx, Tollgate, body, commit, relay, rewrite, upstream};
use crate::api::{ApiFormat, Endpoint, MAX_NAME_LEN};
use crate::attribution::{Attribution, REQUEST_ID_HEADER};
use crate::auth::{Presented, presented_key};
use crate::error::ProxyError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;

pub async fn run(tg: &Tollgate, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    // Pipelined requests (sent before the previous answer was read) are answered in order
    // (RFC 9112 §9.3.2) rather than dropped with the connection.
    if let ServerSession::H1(h1) = session.as_downstream_mut() {
        h1.set_pipelining_enabled(true);
    }
    ctx.request_id = request_id(session);
    match handle(tg, session, ctx).await {
        Ok(()) => Ok(true),
        Err(Outcome::Reply(err)) => {
            ctx.status = err.status();
            ctx.fail(err.label());
            if err.status() >= 500 {
                tracing::warn!(request_id = %ctx.request_id, error = %err, "request failed");
            } else {
                tracing::debug!(request_id = %ctx.request_id, error = %err, "request refused");
            }
            commit::commit(tg, ctx);
            write_error(session, ctx, &err).await?;
            Ok(true)
        }
        Err(Outcome::Abort(reason)) => {
            // A response is under way or the client is gone: closing is all that is left.
            Err(Error::explain(ErrorType::ConnectionClosed, reason))
        }
    }
}

/// Longest path accepted; the path is recorded as `endpoint`.
const MAX_PATH_LEN: usize = 2048;

/// The client's `x-request-id` when it is sane, else a fresh UUIDv7.
fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The fields of a request body that routing needs; the rest is validated, not kept.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

async fn handle(tg: &Tollgate, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Outcome> {
    let cfg = ctx.config.clone();
    let path = session.req_header().uri.path().to_string();
    if path.len() > MAX_PATH_LEN {
        return Err(ProxyError::BadRequest(format!(
            "the path is longer than {MAX_PATH_LEN} bytes"
        ))
        .into());
    }
    let endpoint = Endpoint::from_path(&path).ok_or_else(|| ProxyError::NotFound(path.clone()))?;
    ctx.format = endpoint.format(&session.req_header().headers);
    ctx.endpoint = path;
    ctx.recorded = true;

    let presented = match presented_key(&session.req_header().headers) {
        None => return Err(ProxyError::MissingKey.into()),
        Some(Presented::Unreadable) => return Err(ProxyError::UnknownKey.into()),
        Some(Presented::Key(k)) => k.to_string(),
    };
    let vkey = cfg.keys.find(&presented);
    let any_client_keys = cfg.providers.values().any(|p| p.allow_client_keys);
    if vkey.is_none() && !any_client_keys {
        return Err(ProxyError::UnknownKey.into());
    }
    ctx.attribution = Attribution::resolve(&session.req_header().headers, vkey, &cfg.attribution);

    let body_deadline = Duration::from_millis(cfg.server.body_timeout_ms);
    let body = body::read(session, cfg.max_body_bytes, body_deadline)
        .await
        .inspect_err(|e| {
            if matches!(e, ProxyError::BodyTimeout { .. }) {
                tg.metrics
                    .client_timeouts
                    .with_label_values(&["body"])
                    .inc();
            }
        })?;
    let is_post = session.req_header().method == http::Method::POST;
    let (provider, request) = if endpoint.has_model() && is_post {
        let peek: Peek =
            serde_json::from_slice(&body).map_err(|e| ProxyError::BadJson(e.to_string()))?;
        let model = peek
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ProxyError::BadRequest("`model` is required".into()))?;
        if model.len() > MAX_NAME_LEN || model.chars().any(char::is_control) {
            return Err(ProxyError::BadRequest(format!(
                "`model` must be at most {MAX_NAME_LEN} bytes of printable text"
            ))
            .into());
        }
        ctx.requested_model = model.to_string();
        let route = cfg
            .models
            .route(model)
            .ok_or_else(|| ProxyError::UnknownModel(model.to_string()))?;
        if !route.provider.kind.speaks(ctx.format) {
            return Err(ProxyError::BadRequest(format!(
                "model `{model}` is served by provider `{}`, which does not speak the {} API",
                route.provider.name,
                if ctx.format == ApiFormat::Anthropic {
                    "Anthropic Messages"
                } else {
                    "OpenAI"
                }
            ))
            .into());
        }
        ctx.upstream_model = route
            .upstream_model
            .clone()
            .unwrap_or_else(|| model.to_string());
        ctx.stream = peek.stream.unwrap_or(false);
        let include_usage = peek.stream_options.as_ref().and_then(|o| o.include_usage);
        // OpenAI sends stream usage only on request: ask on the client's behalf.
        let inject_usage = ctx.format == ApiFormat::OpenAi
            && ctx.stream
            && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
            && include_usage != Some(true)
            && route.provider.stream_usage;
        let prepared = prepare_body(
            &body,
            rewrite::Edits {
                model: route.upstream_model.as_deref().filter(|m| *m != model),
                include_usage: inject_usage,
            },
        )?;
        (route.provider.clone(), prepared)
    } else {
        let provider = cfg
            .providers
            .values()
            .find(|p| p.kind.speaks(ctx.format))
            .cloned()
            .ok_or_else(|| ProxyError::NotFound(ctx.endpoint.clone()))?;
        (
            provider,
            Prepared {
                body,
                strip_usage_chunk: false,
            },
        )
    };
    ctx.provider = provider.name.clone();

    let credential = match (vkey, &provider.api_key) {
        (Some(_), Some(key)) => upstream::Credential::Provider(key),
        // The simulated provider needs some credential, not a real one.
        (Some(_), None) if !provider.kind.needs_real_credential() => {
            upstream::Credential::Provider("simulated")
        }
        (None, _) if provider.allow_client_keys => upstream::Credential::Client,
        (None, _) => return Err(ProxyError::UnknownKey.into()),
        (Some(_), None) => {
            return Err(ProxyError::Internal(format!(
                "provider {} has no api_key_env and does not allow client keys",
                provider.name
            ))
            .into());
        }
    };

    let metered = endpoint.is_metered() && is_post;
    let exchange = relay::Exchange {
        provider: &provider,
        endpoint,
        credential,
        body: request.body,
        strip_usage_chunk: request.strip_usage_chunk,
        metered,
    };
    relay::run(tg, session, ctx, exchange).await
}

/// The body as it goes upstream.
struct Prepared {
    body: Bytes,
    /// Tollgate turned on `include_usage`; the client must not see the extra chunk.
    strip_usage_chunk: bool,
}

/// Rewrites the body only when needed: a renamed model, or usage to be requested on the
/// client's behalf for an OpenAI stream.
fn prepare_body(body: &Bytes, edits: rewrite::Edits<'_>) -> Result<Prepared, ProxyError> {
    if edits.is_empty() {
        return Ok(Prepared {
            body: body.clone(),
            strip_usage_chunk: false,
        });
    }
    Ok(Prepared {
        body: rewrite::apply(body, edits)?.into(),
        strip_usage_chunk: edits.include_usage,
    })
}

/// Writes an error response in the client's wire format.
pub async fn write_error(session: &mut Session, ctx: &RequestCtx, err: &ProxyError) -> Result<()> {
    let body = err.body(ctx.format);
    let mut resp = ResponseHeader::build(err.status(), Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
    if ctx.format == ApiFormat::Anthropic {
        resp.insert_header("request-id", ctx.request_id.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
