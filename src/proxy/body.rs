//! Reading a whole request body, of any size up to the configured limit.

use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use std::time::Duration;

/// Most bytes of an oversized body read and discarded so the client, still sending, gets
/// to read the 413 instead of a broken pipe. Past this the connection is simply closed.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads the request body. Bodies past `limit` are refused with 413; a body that has not
/// arrived whole within `deadline` gets a 408 and the connection is closed (a client
/// dribbling its body must not hold a connection and a buffer forever).
pub async fn read(
    session: &mut Session,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, ProxyError> {
    match tokio::time::timeout(deadline, read_within(session, limit)).await {
        Ok(body) => body,
        Err(_) => {
            session.set_keepalive(None);
            Err(ProxyError::BodyTimeout {
                ms: deadline.as_millis() as u64,
            })
        }
    }
}

async fn read_within(session: &mut Session, limit: u64) -> Result<Bytes, ProxyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared.is_some_and(|n| n > limit) {
        // A client waiting for 100 Continue sends nothing more: answer straight away.
        if !expects_continue {
            drain(session).await;
        }
        return Err(ProxyError::TooLarge { limit });
    }
    if expects_continue {
        // Answering 100 before the body is read would otherwise make pingora close the
        // connection after the response.
        session.set_close_on_response_before_downstream_finish(false);
        session
            .write_continue_response()
            .await
            .map_err(|e| ProxyError::BadRequest(format!("cannot accept body: {e}")))?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    drain(session).await;
                    return Err(ProxyError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                // After a framing error the rest of the stream is not a request: close the
                // connection after the 400, so no byte past the error is ever parsed as one.
                session.set_keepalive(None);
                return Err(ProxyError::BadRequest(format!(
                    "could not read request body: {e}"
                )));
            }
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of the body, up to [`DRAIN_LIMIT`].
async fn drain(session: &mut Session) {
    let mut drained = 0u64;
    while drained < DRAIN_LIMIT {
        match session.read_request_body().await {
            Ok(Some(chunk)) => drained += chunk.len() as u64,
            Ok(None) | Err(_) => return,
        }
    }
}
