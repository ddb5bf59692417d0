//! The records the spend reports read, from the local ledger or from ClickHouse: the same
//! types either way, so every figure is computed once, in Rust, from both stores.

use crate::ledger::{Stream, read_all};
use crate::record::{AttemptRecord, OutcomeRecord, Record};
use crate::sink::clickhouse::{ChError, ClickHouse};
use chrono::{DateTime, Utc};
use std::path::Path;

/// A window's request records (and, when asked for, its attempt records), with the outcome
/// reports that may label them: outcomes of any age join the window's requests.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub requests: Vec<Record>,
    pub attempts: Vec<AttemptRecord>,
    pub outcomes: Vec<OutcomeRecord>,
}

impl Records {
    /// Reads the ledger at `dir`: requests (and attempts when `attempts`) from `from` on, and
    /// every outcome. A ledger no attempt or outcome was ever written to has no directory
    /// for them: that reads as none.
    pub fn from_ledger(
        dir: &Path,
        from: DateTime<Utc>,
        attempts: bool,
    ) -> std::io::Result<Records> {
        fn stream<T: serde::de::DeserializeOwned>(
            dir: &Path,
            s: Stream,
        ) -> std::io::Result<Vec<T>> {
            match read_all(&s.dir(dir)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                other => other,
            }
        }
        let mut requests: Vec<Record> = read_all(&Stream::Requests.dir(dir))?;
        requests.retain(|r| r.ts >= from);
        let mut attempt_records: Vec<AttemptRecord> = if attempts {
            stream(dir, Stream::Attempts)?
        } else {
            Vec::new()
        };
        attempt_records.retain(|a| a.ts >= from);
        Ok(Records {
            requests,
            attempts: attempt_records,
            outcomes: stream(dir, Stream::Outcomes)?,
        })
    }

    /// Reads ClickHouse: requests (and attempts when `attempts`) of the last `since_secs`
    /// seconds, and the latest outcome report per (team, target) as ClickHouse picks it.
    pub async fn from_clickhouse(
        ch: &ClickHouse,
        since_secs: i64,
        attempts: bool,
    ) -> Result<Records, ChError> {
        let window = |table: &str| {
            ch.query(&format!(
                "SELECT * FROM {table} WHERE ts >= now64(3) - toIntervalSecond({{since_secs:Int64}})"
            ))
            .param("since_secs", since_secs)
        };
        let requests: Vec<Record> = ch.fetch_records(window("requests")).await?;
        let attempt_records: Vec<AttemptRecord> = if attempts {
            ch.fetch_records(window("attempts")).await?
        } else {
            Vec::new()
        };
        let outcomes: Vec<OutcomeRecord> = ch
            .fetch_records(ch.query(
                "SELECT ts, id, team, key_name, request_id, workflow_id, outcome, value, tags \
                 FROM outcomes ORDER BY team, request_id, workflow_id, ts DESC, id DESC \
                 LIMIT 1 BY team, request_id, workflow_id",
            ))
            .await?;
        Ok(Records {
            requests,
            attempts: attempt_records,
            outcomes,
        })
    }
}
