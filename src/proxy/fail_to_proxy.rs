//! Errors that reach pingora. Errors Tollgate can explain are answered in `request_filter`
//! in the client's wire format; what arrives here is a transport failure.

use super::{RequestCtx, Tollgate, commit};
use crate::error::ProxyError;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

pub async fn run(
    tg: &Tollgate,
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
) -> FailToProxy {
    // A response already under way cannot be replaced: dropping the connection without a
    // clean end of body is how the client learns it was cut short. A client that is gone
    // gets nothing, and its record keeps the status it was given (499).
    if ctx.response_started || e.etype() == &ErrorType::ConnectionClosed {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    }
    let err = ProxyError::Internal(e.etype().as_str().to_string());
    let status = err.status();
    ctx.status = status;
    ctx.fail(err.label());
    commit::commit(tg, ctx);
    let _ = super::request_filter::write_error(session, ctx, &err).await;
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}
