//! The record types: one [`Record`] per client request and one [`AttemptRecord`] per
//! upstream call it made, and one [`OutcomeRecord`] per reported business result, appended to the ledger, shipped to ClickHouse (`requests`,
//! `attempts`, `outcomes`) and read by the dashboards. Field names are the same everywhere.

use crate::money::NanoUsd;
use crate::usage::UsageSource;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the request arrived (UTC, millisecond precision).
    #[serde(with = "ts_millis")]
    pub ts: DateTime<Utc>,
    pub request_id: String,
    pub team: String,
    pub project: String,
    pub env: String,
    pub user: String,
    pub feature: String,
    pub workflow_id: String,
    pub tags: BTreeMap<String, String>,
    /// Name of the virtual key used (never the key itself); empty for pass-through keys.
    pub key_name: String,
    pub provider: String,
    /// API path the client called, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Model named by the client.
    pub requested_model: String,
    /// Model that served the call (as the provider reported it, else as sent upstream).
    pub model: String,
    pub stream: bool,
    /// HTTP status returned to the client.
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub usage_source: UsageSource,
    /// Exact decimal USD; `None` when the model has no price (never recorded as 0).
    pub cost_usd: Option<NanoUsd>,
    pub latency_ms: u64,
    /// Time to the upstream's first response byte; `None` when the upstream never answered.
    pub ttfb_ms: Option<u64>,
    /// Why the call failed or ended early; `None` on success.
    pub error: Option<String>,
    /// The routing rule that planned the request; empty when none matched.
    #[serde(default)]
    pub policy: String,
    /// Upstream calls made: retries, fallbacks, cascade steps and judges included. The
    /// token and cost fields above are summed over them.
    #[serde(default)]
    pub attempts: u16,
    /// Cascade steps whose answer was rejected.
    #[serde(default)]
    pub escalations: u16,
    /// What the answer would have cost on the model the client asked for: the answering
    /// attempt's tokens at that model's prices. `None` when that model has no price.
    #[serde(default)]
    pub counterfactual_cost_usd: Option<NanoUsd>,
    /// Answered from the response cache: no upstream call, so tokens and cost are 0 and
    /// what the hit saved is in the `saved_*` fields.
    #[serde(default)]
    pub cache_hit: bool,
    /// A hit's savings: the tokens and cost of the request whose answer it replayed (all
    /// its attempts). 0 for requests that were not hits.
    #[serde(default)]
    pub saved_input_tokens: u64,
    #[serde(default)]
    pub saved_output_tokens: u64,
    /// `None` when the replayed request's cost was unknown (an unpriced model).
    #[serde(default)]
    pub saved_cost_usd: Option<NanoUsd>,
}

/// One upstream call made for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the call started.
    #[serde(with = "ts_millis")]
    pub ts: DateTime<Utc>,
    pub request_id: String,
    /// 1-based, in the order the calls were made.
    pub attempt: u16,
    pub role: Role,
    pub policy: String,
    pub team: String,
    pub project: String,
    pub env: String,
    pub user: String,
    pub feature: String,
    pub key_name: String,
    pub endpoint: String,
    pub provider: String,
    pub model: String,
    pub stream: bool,
    /// The upstream's status; 0 when it never answered.
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub usage_source: UsageSource,
    pub cost_usd: Option<NanoUsd>,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub error: Option<String>,
    pub verdict: Verdict,
    /// The judge that rejected the answer; empty otherwise.
    pub judge: String,
}

/// A business result reported for a request or a workflow (`POST /tollgate/v1/outcomes`).
/// Exactly one of `request_id` and `workflow_id` is set; the other is empty. It joins only
/// requests of `team`, the reporting key's team. A target may be reported more than once:
/// the latest report (greatest `ts`, then `id`) wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// When the report arrived.
    #[serde(with = "ts_millis")]
    pub ts: DateTime<Utc>,
    /// Unique per report (UUIDv7): orders two reports of the same millisecond.
    pub id: String,
    pub team: String,
    /// Name of the virtual key that reported it.
    pub key_name: String,
    pub request_id: String,
    pub workflow_id: String,
    /// `success`, `failure`, or a custom label.
    pub outcome: String,
    pub value: Option<f64>,
    pub tags: BTreeMap<String, String>,
}

/// Why a call was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The first call of a plan.
    Primary,
    /// The same target again, after a retryable failure.
    Retry,
    /// The next target of a route, after the previous one failed.
    Fallback,
    /// A later step of a cascade, after the previous answer was rejected or failed.
    Escalation,
    /// A grading call made by an LLM judge.
    Judge,
}

/// What became of a call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its answer went to the client.
    Served,
    /// A held answer the judges accepted (and the client received).
    Accepted,
    /// A held answer a judge rejected; the request escalated.
    Rejected,
    /// The call failed (connection, timeout, error status); the plan moved on.
    Failed,
    /// The client left or the plan's deadline passed while the call ran.
    Aborted,
    /// A judge's own call: its answer graded another attempt.
    Graded,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Retry => "retry",
            Role::Fallback => "fallback",
            Role::Escalation => "escalation",
            Role::Judge => "judge",
        }
    }
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Served => "served",
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Failed => "failed",
            Verdict::Aborted => "aborted",
            Verdict::Graded => "graded",
        }
    }
}

/// RFC 3339 with milliseconds and a `Z` suffix: `2026-11-27T10:00:00.123Z`.
mod ts_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}
