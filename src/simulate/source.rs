//! Reading the traffic of a window: from the ledger, or from ClickHouse's `requests` and
//! `attempts` tables (two queries, rows read as the ledger's record types).

use super::{Call, Traffic};
use crate::ledger::{self, Stream};
use crate::record::{AttemptRecord, Record};
use crate::sink::clickhouse::{ChError, ClickHouse};
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

/// Requests of the last `since_secs` seconds and their calls, from ClickHouse: both tables
/// read over the window `ts >= now64(3) - since_secs` (a call starts no earlier than its
/// request), as the record types the ledger holds.
pub async fn from_clickhouse(ch: &ClickHouse, since_secs: i64) -> Result<Traffic, ChError> {
    let window = |table: &str| {
        ch.query(&format!(
            "SELECT * FROM {table} WHERE ts >= now64(3) - toIntervalSecond({{since_secs:Int64}})"
        ))
        .param("since_secs", since_secs)
    };
    let requests: Vec<Record> = ch.fetch_records(window("requests")).await?;
    let calls: Vec<AttemptRecord> = ch.fetch_records(window("attempts")).await?;
    Ok(Traffic {
        requests,
        calls: calls.into_iter().map(Call::from).collect(),
    })
}
