//! `logging`: the last hook of every request. Requests that ended normally were recorded
//! before their last byte went out; this records the rest (aborts, transport failures).

use super::{RequestCtx, Tollgate, commit};
use pingora::prelude::*;
use pingora::proxy::Session;

pub async fn run(tg: &Tollgate, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    if let Some(e) = e {
        ctx.fail(e.etype().as_str());
    }
    commit::commit(tg, ctx);
}
