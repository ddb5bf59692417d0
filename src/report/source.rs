//! The records the spend reports read, from the local ledger or from ClickHouse: the same
//! types either way, so every figure is computed once, in Rust, from both stores.

use crate::config::Validated;
use crate::ledger::{Stream, read_all};
use crate::record::{AttemptRecord, OutcomeRecord, Record};
use crate::sink::clickhouse::{ChError, ClickHouse};
use chrono::{DateTime, Duration, Utc};
use std::path::{Path, PathBuf};

/// Where the records were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Ledger,
    ClickHouse,
}

impl Store {
    /// As a page names it: "from the ledger", "from ClickHouse".
    pub fn name(self) -> &'static str {
        match self {
            Store::Ledger => "the ledger",
            Store::ClickHouse => "ClickHouse",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the ledger under {}: {source}", dir.display())]
    Ledger {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    ClickHouse(#[from] ChError),
}

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

    /// The records of the `since` up to `now`, attempts included: from ClickHouse when the
    /// config ships there (unless `ledger_only`), else from the ledger under its data dir,
    /// read on a blocking thread.
    pub async fn read(
        cfg: &Validated,
        now: DateTime<Utc>,
        since: Duration,
        ledger_only: bool,
    ) -> Result<(Records, Store), ReadError> {
        if let Some(settings) = cfg.clickhouse.as_ref().filter(|_| !ledger_only) {
            let ch = ClickHouse::new(settings)?;
            let records = Records::from_clickhouse(&ch, since.num_seconds(), true).await?;
            return Ok((records, Store::ClickHouse));
        }
        let data_dir = cfg.data_dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            Records::from_ledger(&data_dir.join("ledger"), now - since, true)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        read.map(|r| (r, Store::Ledger))
            .map_err(|source| ReadError::Ledger {
                dir: cfg.data_dir.clone(),
                source,
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
