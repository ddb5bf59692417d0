//! The one record type: built per client request, appended to the ledger, shipped to
//! ClickHouse and read by the dashboards. Field names are the same everywhere.

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
