//! Reading a whole request body, of any size up to the configured limit.

use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

/// Reads the request body. Bodies past `limit` are refused with 413 before more is read.
pub async fn read(session: &mut Session, limit: u64) -> Result<Bytes, ProxyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge { limit });
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
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
                    return Err(ProxyError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ProxyError::BadRequest(format!(
                    "could not read request body: {e}"
                )));
            }
        }
    }
    Ok(buf.freeze())
}
