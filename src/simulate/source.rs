//! Reading the traffic of a window: from the ledger, or from ClickHouse's `requests` and
//! `attempts` tables (two queries, typed rows).

use super::{Call, Traffic};
use crate::ledger::{self, Stream};
use crate::money::NanoUsd;
use crate::record::{AttemptRecord, Record};
use crate::sink::clickhouse::{ChError, ClickHouse};
use crate::usage::{Usage, UsageSource};
use chrono::{DateTime, Utc};
use std::path::Path;

/// Requests made since `from` and their calls, from the ledger in `ledger_dir`.
pub fn from_ledger(ledger_dir: &Path, from: DateTime<Utc>) -> std::io::Result<Traffic> {
    let requests = ledger::read_all::<Record>(ledger_dir)?
        .into_iter()
        .filter(|r| r.ts >= from)
        .collect();
    // A ledger written before attempts were recorded has no such stream.
    let attempts_dir = Stream::Attempts.dir(ledger_dir);
    let calls = if attempts_dir.is_dir() {
        ledger::read_all::<AttemptRecord>(&attempts_dir)?
    } else {
        Vec::new()
    };
    Ok(Traffic {
        requests,
        // A call starts no earlier than its request.
        calls: calls
            .into_iter()
            .filter(|a| a.ts >= from)
            .map(Call::from)
            .collect(),
    })
}

/// Requests of the last `since_secs` seconds and their calls, from ClickHouse.
pub async fn from_clickhouse(ch: &ClickHouse, since_secs: i64) -> Result<Traffic, ChError> {
    let requests: Vec<RequestRow> = ch
        .fetch_all(ch.query(REQUESTS_SQL).param("since_secs", since_secs))
        .await?;
    let calls: Vec<CallRow> = ch
        .fetch_all(ch.query(CALLS_SQL).param("since_secs", since_secs))
        .await?;
    Ok(Traffic {
        requests: requests
            .into_iter()
            .map(RequestRow::into_record)
            .collect::<Result<_, _>>()?,
        calls: calls
            .into_iter()
            .map(CallRow::into_call)
            .collect::<Result<_, _>>()?,
    })
}

// Both tables are read over the window `ts >= now64(3) - since_secs`; a call starts no
// earlier than its request.
const REQUESTS_SQL: &str = "SELECT toUnixTimestamp64Milli(ts) AS ts_ms, request_id, team, project, env, `user`, \
     feature, workflow_id, mapKeys(tags) AS tag_keys, mapValues(tags) AS tag_values, key_name, \
     provider, endpoint, requested_model, model, stream, status, input_tokens, output_tokens, \
     cached_input_tokens, cache_write_tokens, reasoning_tokens, \
     usage_source, cost_usd, latency_ms, ttfb_ms, error, \
     policy, attempts, escalations, counterfactual_cost_usd \
     FROM requests WHERE ts >= now64(3) - toIntervalSecond({since_secs:Int64})";

const CALLS_SQL: &str = "SELECT request_id, attempt, role, verdict, \
     feature, model, input_tokens, output_tokens, \
     cached_input_tokens, cache_write_tokens, reasoning_tokens, \
     usage_source \
     FROM attempts WHERE ts >= now64(3) - toIntervalSecond({since_secs:Int64})";

/// A row of `requests`, in the types ClickHouse sends.
#[derive(Debug, ::clickhouse::Row, serde::Deserialize)]
struct RequestRow {
    ts_ms: i64,
    request_id: String,
    team: String,
    project: String,
    env: String,
    user: String,
    feature: String,
    workflow_id: String,
    tag_keys: Vec<String>,
    tag_values: Vec<String>,
    key_name: String,
    provider: String,
    endpoint: String,
    requested_model: String,
    model: String,
    stream: bool,
    status: u16,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    reasoning_tokens: u64,
    usage_source: String,
    /// `Nullable(Decimal(38, 9))`: nano-USD.
    cost_usd: Option<i128>,
    latency_ms: u64,
    ttfb_ms: Option<u64>,
    error: Option<String>,
    policy: String,
    attempts: u16,
    escalations: u16,
    counterfactual_cost_usd: Option<i128>,
}

impl RequestRow {
    fn into_record(self) -> Result<Record, ChError> {
        Ok(Record {
            ts: DateTime::from_timestamp_millis(self.ts_ms)
                .ok_or_else(|| bad(format!("timestamp {} out of range", self.ts_ms)))?,
            usage_source: usage_source(&self.usage_source)?,
            cost_usd: nanos(self.cost_usd)?,
            counterfactual_cost_usd: nanos(self.counterfactual_cost_usd)?,
            tags: self.tag_keys.into_iter().zip(self.tag_values).collect(),
            request_id: self.request_id,
            team: self.team,
            project: self.project,
            env: self.env,
            user: self.user,
            feature: self.feature,
            workflow_id: self.workflow_id,
            key_name: self.key_name,
            provider: self.provider,
            endpoint: self.endpoint,
            requested_model: self.requested_model,
            model: self.model,
            stream: self.stream,
            status: self.status,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            latency_ms: self.latency_ms,
            ttfb_ms: self.ttfb_ms,
            error: self.error,
            policy: self.policy,
            attempts: self.attempts,
            escalations: self.escalations,
        })
    }
}

/// A row of `attempts`, in the types ClickHouse sends.
#[derive(Debug, ::clickhouse::Row, serde::Deserialize)]
struct CallRow {
    request_id: String,
    attempt: u16,
    role: String,
    verdict: String,
    feature: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    reasoning_tokens: u64,
    usage_source: String,
}

impl CallRow {
    fn into_call(self) -> Result<Call, ChError> {
        Ok(Call {
            role: word(&self.role)?,
            verdict: word(&self.verdict)?,
            usage_source: usage_source(&self.usage_source)?,
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.cached_input_tokens,
                cache_write_tokens: self.cache_write_tokens,
                reasoning_tokens: self.reasoning_tokens,
            },
            request_id: self.request_id,
            attempt: self.attempt,
            feature: self.feature,
            model: self.model,
        })
    }
}

/// A snake_case enum value stored as a string (`role`, `verdict`, `usage_source`).
fn word<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, ChError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| bad(format!("{s:?}: {e}")))
}

fn usage_source(s: &str) -> Result<UsageSource, ChError> {
    word(s)
}

fn nanos(v: Option<i128>) -> Result<Option<NanoUsd>, ChError> {
    v.map(|n| {
        i64::try_from(n)
            .map(NanoUsd)
            .map_err(|_| bad(format!("cost of {n} nano-USD is out of range")))
    })
    .transpose()
}

fn bad(message: String) -> ChError {
    ChError::Decode(message)
}
