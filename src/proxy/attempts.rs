//! Attempts: a plan's targets tried in order. A call that fails (connection, timeout, 429,
//! 5xx) moves on to a retry or the next target while nothing has reached the client; a
//! cascade holds each answer but the last and releases it only when the judges accept it.
//! The last possible call streams straight through.

use super::admit::Admitted;
use super::ctx::{FinishedAttempt, Started};
use super::held::{self, Unheld};
use super::judging::grade;
use super::outcome::Outcome;
use super::plan::{Mode, Plan};
use super::relay::{self, Exchange, Unopened, client_left_before_header};
use super::rewrite::{self, Cap};
use super::{RequestCtx, Tollgate};
use crate::answer::Answer;
use crate::api::{ApiFormat, Endpoint};
use crate::config::Validated;
use crate::error::ProxyError;
use crate::policy::Target;
use crate::policy::judge::Ask;
use crate::record::{Role, Verdict};
use crate::tokens::Encoding;
use crate::usage::estimate;
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::Value;
use std::time::{Duration, Instant};

pub async fn run(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &Admitted,
    mut plan: Plan,
) -> Result<(), Outcome> {
    fit_context(&ctx.config.clone(), req, &mut plan).await?;
    if let Some(cooldown) = &plan.cooldown {
        tg.health.order(&mut plan.targets, cooldown);
    }
    let cascade = matches!(plan.mode, Mode::Cascade { .. });
    let deadline = match plan.mode {
        Mode::Cascade { deadline } => deadline.map(|d| Instant::now() + d),
        Mode::Route => None,
    };
    let max_calls = plan.retries.max_attempts.max(1);
    // A judged answer may cost a grading call too: a further call is left only if both fit.
    let grading = u32::from(plan.judges().is_some_and(|j| j.llm.is_some()));
    let mut ask: Option<Ask> = None;
    let mut made = 0u32;
    for (i, target) in plan.targets.iter().enumerate() {
        let mut tries = 0u32;
        loop {
            let role = match (made, tries, cascade) {
                (0, _, _) => Role::Primary,
                (_, 1.., _) => Role::Retry,
                (_, _, true) => Role::Escalation,
                (_, _, false) => Role::Fallback,
            };
            made += 1;
            tries += 1;
            let in_time = deadline.is_none_or(|d| Instant::now() < d);
            let calls_left = made + grading < max_calls;
            let retry_left = tries <= plan.retries.per_target && calls_left && in_time;
            let next_left = i + 1 < plan.targets.len() && calls_left && in_time;
            let last_call = !retry_left && !next_left;

            ctx.provider = target.provider.name.clone();
            ctx.upstream_model = target.model.clone();
            let judges = plan.judges().filter(|_| !last_call);
            // The logprob judge needs logprobs; the client gets them only if it asked.
            let add_logprobs = judges.is_some_and(|j| j.min_mean_logprob.is_some())
                && ctx.format == ApiFormat::OpenAi
                && req.endpoint == Endpoint::ChatCompletions
                && !req.logprobs;
            let prepared = prepare(ctx.format, req, target, plan.max_tokens, add_logprobs)?;
            let ex = Exchange {
                provider: &target.provider,
                format: ctx.format,
                path: None,
                endpoint: req.endpoint,
                credential: req.credential(&target.provider)?,
                body: prepared.body,
                strip_usage_chunk: prepared.strip_usage_chunk,
                metered: req.metered,
                timeout: target.timeout,
                // A call before the last must answer by the deadline, so a slow step cannot
                // hold the request past it; the call after it is then the last.
                until: deadline.filter(|_| !last_call),
            };
            let started = Started::now(role);
            ctx.current = Some(started);
            let opened = match relay::open(tg, session, &ex).await {
                Ok(opened) => opened,
                Err(Unopened::ClientGone) => return Err(client_left_before_header(tg, ctx)),
                Err(Unopened::Failed(err)) if last_call => {
                    note_health(tg, &plan, target, false);
                    return Err(err.into());
                }
                Err(Unopened::Failed(err)) => {
                    note_health(tg, &plan, target, false);
                    tracing::debug!(request_id = %ctx.request_id, target = %target.label(), error = %err, "attempt failed; moving on");
                    moved_on(ctx, started, target, 0, err.label().to_string());
                    if retry_left {
                        pause(tg, session, ctx, backoff(&plan, tries)).await?;
                        continue;
                    }
                    break;
                }
            };
            let status = opened.status();
            note_health(tg, &plan, target, !is_retryable(status));
            let wait = opened.retry_after();
            let may_retry = retry_left && wait.is_none_or(|w| w <= plan.retries.max_wait);
            if is_retryable(status) && (may_retry || next_left) {
                let code = held::discard(tg, opened).await;
                tracing::debug!(request_id = %ctx.request_id, target = %target.label(), status, code, "attempt failed; moving on");
                moved_on(ctx, started, target, status, code);
                if may_retry {
                    let d = wait.unwrap_or_default().max(backoff(&plan, tries));
                    pause(tg, session, ctx, d).await?;
                    continue;
                }
                break;
            }
            let (Some(judges), true) = (judges, (200..300).contains(&status)) else {
                // The last call, or an answer no other call would improve (a 400 says the
                // request itself is wrong): the client gets it as it comes.
                return relay::deliver(tg, session, ctx, opened, &ex).await;
            };
            let mut held = match held::hold(tg, session, ctx, opened, &ex, &target.model).await {
                Ok(held) => held,
                Err(Unheld::ClientGone) => return Err(client_left_before_header(tg, ctx)),
                Err(Unheld::Failed { code, reason }) => {
                    tracing::debug!(request_id = %ctx.request_id, target = %target.label(), reason, "held answer failed; escalating");
                    moved_on(ctx, started, target, status, code.into());
                    break;
                }
            };
            let answer = Answer::read(ctx.format, req.endpoint, held.is_sse, &held.body);
            let ask = ask.get_or_insert_with(|| {
                let mut ask = serde_json::from_slice(&req.body)
                    .map(|v| Ask::from_body(&v))
                    .unwrap_or_default();
                ask.logprobs = req.logprobs || add_logprobs;
                ask
            });
            let mut verdict = judges.check(&answer, ask);
            if let (Ok(()), Some(llm)) = (&verdict, &judges.llm) {
                verdict = grade(tg, session, ctx, req, llm, &answer, deadline).await?;
                made += 1;
            }
            match verdict {
                Ok(()) => {
                    if add_logprobs {
                        held.drop_logprobs();
                    }
                    return held::replay(tg, session, ctx, held).await;
                }
                Err(rejection) => {
                    tracing::debug!(request_id = %ctx.request_id, target = %target.label(), judge = rejection.judge, reason = %rejection.reason, "answer rejected; escalating");
                    let rejected =
                        held.as_attempt(started, target, Verdict::Rejected, rejection.judge);
                    ctx.attempts.push(rejected);
                    ctx.current = None;
                    break;
                }
            }
        }
    }
    // Every target has been tried, and the last call always answers or fails above.
    Err(ProxyError::Internal("the routing plan ended without an answer".into()).into())
}

/// Drops the targets whose context window (from the price data) is smaller than the
/// request's input, so a long prompt goes to a model that can take it. The input is counted
/// only when it might not fit: a token is at least one byte of body, and the margin covers
/// images, which cost tokens their bytes do not show.
async fn fit_context(cfg: &Validated, req: &Admitted, plan: &mut Plan) -> Result<(), ProxyError> {
    if plan.targets.len() < 2 {
        return Ok(());
    }
    let windows: Vec<Option<u64>> = plan
        .targets
        .iter()
        .map(|t| cfg.prices.context_window(&t.model))
        .collect();
    let Some(&smallest) = windows.iter().flatten().min() else {
        return Ok(());
    };
    if (req.body.len() as u64) < smallest / 2 {
        return Ok(());
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return Ok(());
    };
    let endpoint = req.endpoint;
    let enc = Encoding::for_model(&plan.targets[0].model);
    let tokens =
        crate::tokens::spawn_count(move || estimate::input_count(endpoint, &body, enc).tokens)
            .await;
    let fits = |w: &Option<u64>| w.is_none_or(|w| tokens <= w);
    if !windows.iter().any(fits) {
        let named: Vec<String> = plan
            .targets
            .iter()
            .zip(&windows)
            .map(|(t, w)| format!("{} ({})", t.model, w.unwrap_or_default()))
            .collect();
        return Err(ProxyError::BadRequest(format!(
            "the request's input of about {tokens} tokens exceeds the context window of every target: {}",
            named.join(", ")
        )));
    }
    let mut keep = windows.iter().map(fits);
    plan.targets.retain(|t| {
        let fit = keep.next().unwrap_or(true);
        if !fit {
            tracing::debug!(target = %t.label(), tokens, "input exceeds the target's context window; skipped");
        }
        fit
    });
    Ok(())
}

/// Feeds a target's result to the cooldown of a route that has one.
fn note_health(tg: &Tollgate, plan: &Plan, target: &Target, ok: bool) {
    if let Some(cooldown) = &plan.cooldown
        && tg.health.record(target, ok, cooldown)
    {
        tracing::info!(target = %target.label(), seconds = cooldown.period.as_secs(), "target failing; out of rotation");
        tg.metrics
            .cooldowns
            .with_label_values(&[&target.provider.name, &target.model])
            .inc();
    }
}

/// Notes a call the plan moved on from.
pub(super) fn moved_on(
    ctx: &mut RequestCtx,
    started: Started,
    target: &Target,
    status: u16,
    code: String,
) {
    ctx.attempts.push(FinishedAttempt::failed(
        started,
        &target.provider.name,
        &target.model,
        status,
        code,
    ));
    ctx.current = None;
}

/// Statuses another call may fix: the provider is busy, limited or broken, not the request.
fn is_retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// The pause before the `tries`-th retry of a target: the plan's backoff, doubled each time.
fn backoff(plan: &Plan, tries: u32) -> Duration {
    let factor = 1u32 << tries.saturating_sub(1).min(10);
    (plan.retries.backoff * factor).min(plan.retries.max_wait)
}

/// Waits `d` before the next call; a client that leaves meanwhile ends the request at once.
async fn pause(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    d: Duration,
) -> Result<(), Outcome> {
    if d.is_zero() {
        return Ok(());
    }
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        _ = session.as_downstream_mut().read_body_or_idle(true) => {
            Err(client_left_before_header(tg, ctx))
        }
    }
}

/// The body as it goes to one target.
pub(super) struct Prepared {
    pub body: Bytes,
    /// Tollgate turned on `include_usage`; the client must not see the extra chunk.
    strip_usage_chunk: bool,
}

/// Rewrites the body only when needed: the target's model name, a cap on output tokens, or
/// usage requested on the client's behalf for an OpenAI stream.
pub(super) fn prepare(
    format: ApiFormat,
    req: &Admitted,
    target: &Target,
    max_tokens: Option<u64>,
    logprobs: bool,
) -> Result<Prepared, ProxyError> {
    let Some(asked) = req.model.as_deref() else {
        return Ok(Prepared {
            body: req.body.clone(),
            strip_usage_chunk: false,
        });
    };
    // OpenAI sends stream usage only on request: ask on the client's behalf.
    let include_usage = format == ApiFormat::OpenAi
        && req.stream
        && matches!(
            req.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        )
        && req.include_usage != Some(true)
        && target.provider.stream_usage;
    let edits = rewrite::Edits {
        model: Some(target.model.as_str()).filter(|m| *m != asked),
        include_usage,
        max_tokens: max_tokens.map(|limit| Cap {
            keys: output_limit_keys(req.endpoint),
            limit,
        }),
        logprobs,
    };
    if edits.is_empty() {
        return Ok(Prepared {
            body: req.body.clone(),
            strip_usage_chunk: false,
        });
    }
    Ok(Prepared {
        body: rewrite::apply(&req.body, edits)?.into(),
        strip_usage_chunk: include_usage,
    })
}

/// The body members that limit output tokens on each endpoint; the first is added when the
/// client set none.
fn output_limit_keys(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
        _ => &["max_tokens"],
    }
}
