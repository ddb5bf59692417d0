//! Rate limits in a request's path, right after admission: the request is charged to its
//! counter of every limit whose scope it is in (the counter of its key, team or user), or
//! refused with a 429 that names the limit and says when to retry. Its tokens are settled
//! with the real usage when its record is written.

use super::admit::Admitted;
use super::{RequestCtx, Tollgate};
use crate::attribution::Attribution;
use crate::config::{LimitPer, RateLimit, Sharing};
use crate::error::ProxyError;
use crate::limits::{Charge, Refusal, per_str};
use crate::usage::Usage;

/// Charges the request to the limits in its scope; a request no limit covers costs a scan
/// of the configured limits and nothing else.
pub async fn check(tg: &Tollgate, ctx: &mut RequestCtx, req: &Admitted) -> Result<(), ProxyError> {
    let spend = &ctx.config.spend;
    if spend.rate_limits.is_empty() {
        return Ok(());
    }
    let a = &ctx.attribution;
    let charges: Vec<Charge> = spend
        .rate_limits
        .iter()
        .filter(|l| l.scope.matches(a))
        .map(|l| charge(l, a))
        .collect();
    if charges.is_empty() {
        return Ok(());
    }
    let tokens = if charges.iter().any(|c| c.tpm.is_some()) {
        req.counted_input_tokens().await
    } else {
        0
    };
    let redis = match spend.limit_sharing {
        Sharing::Redis => spend.redis.as_ref(),
        Sharing::Local | Sharing::ClickHouse => None,
    };
    match tg.limits.acquire(charges, tokens, redis).await {
        Ok(grant) => {
            ctx.limits = Some(grant);
            Ok(())
        }
        Err(refusal) => Err(refused(&refusal)),
    }
}

/// Settles the request's token counters with what it really used, once its totals are known.
pub fn settle(tg: &Tollgate, ctx: &mut RequestCtx, usage: &Usage) {
    if let Some(grant) = ctx.limits.take() {
        tg.limits
            .settle(grant, usage.input_tokens + usage.output_tokens);
    }
}

fn charge(limit: &RateLimit, a: &Attribution) -> Charge {
    let value = match limit.per {
        LimitPer::Key => &a.key_name,
        LimitPer::Team => &a.team,
        LimitPer::User => &a.user,
    };
    Charge {
        limit: limit.name.clone(),
        per: limit.per,
        value: value.clone(),
        rpm: limit.rpm,
        tpm: limit.tpm,
    }
}

fn refused(r: &Refusal) -> ProxyError {
    let per = per_str(r.per);
    let whose = if r.value.is_empty() {
        format!("requests without a {per}")
    } else {
        format!("{per} {}", r.value)
    };
    ProxyError::RateLimited {
        limit: r.limit.clone(),
        rate: format!("{} {} per minute for {whose}", r.max, r.kind.unit()),
        retry_after: r.retry_after_secs(),
    }
}
