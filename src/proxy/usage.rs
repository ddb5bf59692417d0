//! `GET /tollgate/v1/usage`: a virtual key's identity and the budgets that hold its
//! requests, answered on the proxy port before admission. It is not an LLM call: no record,
//! no rate limit, nothing counted in the call metrics.
//!
//! A budget holds the key's requests when its scope matches the attribution a request with
//! this key and no `x-tollgate-*` headers gets: the key's name, its bound team, project and
//! env, and its owner as user. Headers are not read here: a key that binds no team could
//! otherwise name any team and read that team's budgets.

use super::outcome::Outcome;
use super::{RequestCtx, Tollgate};
use crate::api::ApiFormat;
use crate::attribution::{Attribution, REQUEST_ID_HEADER};
use crate::auth::{Presented, VirtualKey, presented_key};
use crate::budget::view::{self, BudgetView};
use crate::error::{ProxyError, wire_error};
use bytes::Bytes;
use chrono::Utc;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

pub const PATH: &str = "/tollgate/v1/usage";

/// Whether the request is for this endpoint (a trailing slash and a query are ignored).
pub fn is_usage(session: &Session) -> bool {
    session.req_header().uri.path().trim_end_matches('/') == PATH
}

#[derive(Serialize)]
struct Usage<'a> {
    key: KeyView<'a>,
    /// When the budgets' state was read.
    as_of: String,
    budgets: Vec<BudgetView<'a>>,
}

/// The key's bindings; `null` where it binds nothing.
#[derive(Serialize)]
struct KeyView<'a> {
    name: &'a str,
    team: Option<&'a str>,
    project: Option<&'a str>,
    env: Option<&'a str>,
    owner: Option<&'a str>,
}

impl<'a> KeyView<'a> {
    fn of(k: &'a VirtualKey) -> KeyView<'a> {
        KeyView {
            name: &k.name,
            team: k.team.as_deref(),
            project: k.project.as_deref(),
            env: k.env.as_deref(),
            owner: k.owner.as_deref(),
        }
    }
}

/// Answers the request: 200 with the key's budgets, 401 without a known virtual key (a
/// provider key brought by a client has no budgets of its own to show), 405 for a method
/// other than GET.
pub async fn answer(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), Outcome> {
    if session.req_header().method != http::Method::GET {
        return refuse_method(session, ctx, PATH, "GET").await;
    }
    let cfg = ctx.config.clone();
    let key = match presented_key(&session.req_header().headers) {
        None => return Err(ProxyError::MissingKey.into()),
        Some(Presented::Unreadable) => return Err(ProxyError::UnknownKey.into()),
        Some(Presented::Key(k)) => cfg.keys.find(k).ok_or(ProxyError::UnknownKey)?,
    };
    let who = Attribution::resolve(&http::HeaderMap::new(), Some(key), &cfg.attribution);
    let now = Utc::now();
    let usage = Usage {
        key: KeyView::of(key),
        as_of: view::rfc3339(now),
        budgets: view::views(&tg.budgets, &cfg.spend, now, |b| b.scope.matches(&who)),
    };
    let body = serde_json::to_vec(&usage)
        .map_err(|e| ProxyError::Internal(format!("encoding the usage answer: {e}")))?;
    reply(session, ctx, 200, Bytes::from(body), "GET").await
}

/// 405 for a method other than `allow` on Tollgate's own endpoint `path`.
pub(super) async fn refuse_method(
    session: &mut Session,
    ctx: &mut RequestCtx,
    path: &str,
    allow: &'static str,
) -> Result<(), Outcome> {
    let body = wire_error(
        ApiFormat::OpenAi,
        ("invalid_request_error", "invalid_request_error"),
        "method_not_allowed",
        &format!("{path} answers {allow} only"),
    );
    reply(session, ctx, 405, body, allow).await
}

/// Writes an answer of Tollgate's own endpoints (never stored by a cache); `allow` is the
/// method a 405 names.
pub(super) async fn reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
    allow: &'static str,
) -> Result<(), Outcome> {
    let header = || -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(5))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header(REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        // Spend changes with every call: no cache may answer for the proxy.
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if status == 405 {
            resp.insert_header(http::header::ALLOW, allow)?;
        }
        Ok(resp)
    };
    let resp = header().map_err(|e| ProxyError::Internal(e.to_string()))?;
    ctx.status = status;
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Err(Outcome::Abort("client disconnected"));
    }
    ctx.response_started = true;
    if session.write_response_body(Some(body), true).await.is_err() {
        return Err(Outcome::Abort("client disconnected"));
    }
    Ok(())
}
