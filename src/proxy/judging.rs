//! The LLM judge's grading call, and what a judged answer sheds before the client sees it.

use super::admit::Admitted;
use super::attempts::moved_on;
use super::ctx::Started;
use super::held::{self, Unheld};
use super::outcome::Outcome;
use super::relay::{self, Exchange, Unopened, client_left_before_header};
use super::{RequestCtx, Tollgate};
use crate::answer::Answer;
use crate::api::{ApiFormat, Endpoint};
use crate::policy::judge::{LlmJudge, Rejection};
use crate::record::{Role, Verdict};
use crate::usage::sse::SseBuffer;
use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::{Value, json};
use std::time::Instant;

/// Asks the LLM judge to grade `answer`; its call is an attempt of the request. A judge
/// that cannot be reached, answers with an error, or has not answered by the cascade's
/// deadline (`until`), rejects: quality is what it guards.
pub(super) async fn grade(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &Admitted,
    llm: &LlmJudge,
    answer: &Answer,
    until: Option<Instant>,
) -> Result<Result<(), Rejection>, Outcome> {
    let target = &llm.target;
    let format = if target.provider.kind.speaks(ctx.format) {
        ctx.format
    } else if ctx.format == ApiFormat::OpenAi {
        ApiFormat::Anthropic
    } else {
        ApiFormat::OpenAi
    };
    let question = grading_input(&req.body);
    let content = format!("Request:\n{question}\n\nAnswer:\n{}", answer.text);
    let (path, endpoint, body) = match format {
        ApiFormat::OpenAi => (
            "/v1/chat/completions",
            Endpoint::ChatCompletions,
            json!({"model": target.model, "max_tokens": JUDGE_MAX_TOKENS, "messages": [
                {"role": "system", "content": llm.prompt},
                {"role": "user", "content": content}]}),
        ),
        ApiFormat::Anthropic => (
            "/v1/messages",
            Endpoint::Messages,
            json!({"model": target.model, "max_tokens": JUDGE_MAX_TOKENS, "system": llm.prompt,
                "messages": [{"role": "user", "content": content}]}),
        ),
    };
    let ex = Exchange {
        provider: &target.provider,
        format,
        path: Some(path),
        endpoint,
        credential: req.credential(&target.provider)?,
        body: Bytes::from(body.to_string()),
        strip_usage_chunk: false,
        metered: true,
        timeout: target.timeout,
        until,
    };
    let started = Started::now(Role::Judge);
    let rejected = |reason: String| Rejection {
        judge: "llm",
        reason,
    };
    let opened = match relay::open(tg, session, &ex).await {
        Ok(opened) => opened,
        Err(Unopened::ClientGone) => return Err(client_left_before_header(tg, ctx)),
        Err(Unopened::Failed(err)) => {
            moved_on(ctx, started, target, 0, err.label().to_string());
            return Ok(Err(rejected(format!(
                "the judge could not be reached: {err}"
            ))));
        }
    };
    let status = opened.status();
    if !(200..300).contains(&status) {
        let code = held::discard(tg, opened).await;
        moved_on(ctx, started, target, status, code.clone());
        return Ok(Err(rejected(format!(
            "the judge answered {status} ({code})"
        ))));
    }
    let held = match held::hold(tg, session, ctx, opened, &ex, &target.model).await {
        Ok(held) => held,
        Err(Unheld::ClientGone) => return Err(client_left_before_header(tg, ctx)),
        Err(Unheld::Failed { code, reason }) => {
            moved_on(ctx, started, target, status, code.into());
            return Ok(Err(rejected(format!(
                "the judge's answer failed: {reason}"
            ))));
        }
    };
    let grade = Answer::read(format, endpoint, false, &held.body);
    ctx.attempts
        .push(held.as_attempt(started, target, Verdict::Graded, ""));
    Ok(if llm.accept.is_match(grade.text.trim()) {
        Ok(())
    } else {
        let said: String = grade.text.chars().take(200).collect();
        Err(rejected(format!("the judge answered {said:?}")))
    })
}

/// Output tokens the judge may spend on its verdict.
pub(super) const JUDGE_MAX_TOKENS: u64 = 64;
/// The request's part shown to the judge, at most.
const JUDGE_INPUT_CHARS: usize = 8_000;

/// What the client asked, for the judge: its messages (or input, or prompt) as JSON, cut to
/// a bounded length.
fn grading_input(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let asked = ["messages", "input", "prompt"]
        .into_iter()
        .map(|k| &v[k])
        .find(|x| !x.is_null())
        .map(Value::to_string)
        .unwrap_or_default();
    asked.chars().take(JUDGE_INPUT_CHARS).collect()
}

/// An OpenAI chat answer with its choices' logprobs removed (`null`, as when none were
/// asked for), whole or streamed.
pub(super) fn without_logprobs(body: &[u8], sse: bool) -> Vec<u8> {
    let clear = |v: &mut Value| {
        for choice in v["choices"].as_array_mut().into_iter().flatten() {
            if let Some(c) = choice.as_object_mut()
                && c.contains_key("logprobs")
            {
                c.insert("logprobs".into(), Value::Null);
            }
        }
    };
    if !sse {
        return match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                clear(&mut v);
                v.to_string().into_bytes()
            }
            Err(_) => body.to_vec(),
        };
    }
    let mut out = Vec::with_capacity(body.len());
    let mut events = Vec::new();
    SseBuffer::default().push(body, &mut events);
    for ev in events {
        match serde_json::from_str::<Value>(&ev.data) {
            Ok(mut v) => {
                clear(&mut v);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(v.to_string().as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            Err(_) => out.extend_from_slice(&ev.raw),
        }
    }
    out
}
