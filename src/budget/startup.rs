//! Spend read when the proxy starts, so budgets survive restarts: each budget's spend per
//! local day since its period's start (or since the forecast window's, if earlier), from
//! ClickHouse when records are shipped there plus the ledger's records not shipped yet, or
//! from the ledger alone.

use super::{Known, period};
use crate::config::{Budget, Spend};
use crate::ledger::{self, Stream};
use crate::money::NanoUsd;
use crate::record::Record;
use crate::sink::clickhouse::ClickHouse;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

/// Where the spend comes from.
pub enum Source<'a> {
    /// Every record is in the ledger.
    Ledger,
    /// Records are shipped to this ClickHouse; the ledger holds those after `unshipped`
    /// (segment, byte offset).
    ClickHouse {
        ch: &'a ClickHouse,
        unshipped: (u64, u64),
    },
}

/// Each budget's known spend at `now`. A ClickHouse that cannot be read leaves the ledger's
/// records only, and says so in the error.
pub async fn known(
    spend: &Spend,
    ledger_dir: &Path,
    source: Source<'_>,
    now: DateTime<Utc>,
) -> (HashMap<String, Known>, Option<String>) {
    let windows: Vec<(&Budget, DateTime<Utc>, DateTime<Utc>)> = spend
        .budgets
        .iter()
        .map(|b| {
            let (start, _) = period::bounds(b.period, spend.time_zone, now);
            let days = i64::from(spend.alerts.forecast_days);
            let from = start.min(now - Duration::days(days));
            (b, start, from)
        })
        .collect();
    let Some(since) = windows.iter().map(|w| w.2).min() else {
        return (HashMap::new(), None);
    };
    let from_segment = match &source {
        Source::Ledger => (0, 0),
        Source::ClickHouse { unshipped, .. } => *unshipped,
    };
    let dir = Stream::Requests.dir(ledger_dir);
    let local = tokio::task::spawn_blocking(move || read_ledger(&dir, from_segment, since))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the ledger for budget spend");
            Vec::new()
        });
    let mut out = HashMap::new();
    let mut problem = None;
    for (b, start, from) in windows {
        let mut days: HashMap<NaiveDate, NanoUsd> = HashMap::new();
        let mut unshipped = NanoUsd::ZERO;
        for r in local
            .iter()
            .filter(|r| r.ts >= from && b.scope.holds_record(r))
        {
            let day = r.ts.with_timezone(&spend.time_zone).date_naive();
            let cost = r.cost_usd.unwrap_or_default();
            *days.entry(day).or_default() += cost;
            if r.ts >= start && r.ts <= now {
                unshipped += cost;
            }
        }
        if let Source::ClickHouse { ch, .. } = &source {
            match clickhouse_days(ch, b, spend, from).await {
                Ok(rows) => {
                    for (day, cost) in rows {
                        *days.entry(day).or_default() += cost;
                    }
                }
                Err(e) => problem = Some(e),
            }
        }
        let first_day = start.with_timezone(&spend.time_zone).date_naive();
        // A record dated past the period (a clock ahead) is not this period's spend.
        let today = now.with_timezone(&spend.time_zone).date_naive();
        let total = days
            .iter()
            .filter(|(d, _)| (first_day..=today).contains(*d))
            .map(|(_, v)| *v)
            .sum();
        out.insert(
            b.name.clone(),
            Known {
                start: Some(start),
                total,
                unshipped,
                days: days.into_iter().collect(),
            },
        );
    }
    (out, problem)
}

/// Request records at or after `since`, from segment `from.0` at byte `from.1` on.
fn read_ledger(dir: &Path, from: (u64, u64), since: DateTime<Utc>) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for (seq, path) in ledger::list_segments(dir)? {
        if seq < from.0 {
            continue;
        }
        let mut file = std::fs::File::open(&path)?;
        if seq == from.0 {
            file.seek(SeekFrom::Start(from.1))?;
        }
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            // A line cut by a crash, or not a record, is skipped as the sink skips it.
            if let Ok(r) = serde_json::from_slice::<Record>(&line)
                && r.ts >= since
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct DayRow {
    day: NaiveDate,
    cost: NanoUsd,
}

/// A budget's spend per local day since `from`, from the `requests` table.
pub(super) async fn clickhouse_days(
    ch: &ClickHouse,
    b: &Budget,
    spend: &Spend,
    from: DateTime<Utc>,
) -> Result<Vec<(NaiveDate, NanoUsd)>, String> {
    let mut sql = String::from(
        "SELECT toDate(ts, {tz:String}) AS day, sum(ifNull(cost_usd, toDecimal128(0, 9))) AS cost \
         FROM requests WHERE ts >= fromUnixTimestamp64Milli({from:Int64})",
    );
    let fields = b.scope.fields();
    for (i, (column, _)) in fields.iter().enumerate() {
        sql.push_str(&format!(" AND `{column}` = {{v{i}:String}}"));
    }
    sql.push_str(" GROUP BY day");
    let mut query = ch
        .query(&sql)
        .param("tz", spend.time_zone.name())
        .param("from", from.timestamp_millis());
    for (i, (_, value)) in fields.iter().enumerate() {
        query = query.param(&format!("v{i}"), *value);
    }
    let rows: Vec<DayRow> = ch
        .fetch_records(query)
        .await
        .map_err(|e| format!("budget {:?}: reading spend from ClickHouse: {e}", b.name))?;
    Ok(rows.into_iter().map(|r| (r.day, r.cost)).collect())
}

/// [`known`] for the config the proxy starts with, before the sink starts (so the ledger's
/// unshipped records stay where the sink's cursor says). Bounded in time: a ClickHouse that
/// does not answer leaves the ledger's records only, with a warning.
pub fn load(cfg: &crate::config::Validated) -> HashMap<String, Known> {
    load_spend(cfg, &cfg.spend)
}

/// After a reload: reads, on a thread of its own, the spend of the budgets `new` adds or
/// changes (name, scope, period or time zone) over `old`, and hands it to `adopt`.
pub fn load_for_new(
    old: &crate::config::Validated,
    new: &Arc<crate::config::Validated>,
    adopt: impl FnOnce(HashMap<String, Known>) + Send + 'static,
) {
    let unchanged = |b: &Budget| {
        old.spend.time_zone == new.spend.time_zone
            && old
                .spend
                .budgets
                .iter()
                .any(|o| o.name == b.name && o.scope == b.scope && o.period == b.period)
    };
    let mut spend = new.spend.clone();
    spend.budgets.retain(|b| !unchanged(b));
    if spend.budgets.is_empty() {
        return;
    }
    let cfg = new.clone();
    let spawned = std::thread::Builder::new()
        .name("tollgate-budget-load".into())
        .spawn(move || adopt(load_spend(&cfg, &spend)));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read the spend of reloaded budgets");
    }
}

fn load_spend(cfg: &crate::config::Validated, spend: &Spend) -> HashMap<String, Known> {
    if spend.budgets.is_empty() {
        return HashMap::new();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read budget spend at start");
            return HashMap::new();
        }
    };
    rt.block_on(async {
        let ch = match &cfg.clickhouse {
            Some(settings) => match ClickHouse::new(settings) {
                Ok(ch) => Some(ch),
                Err(e) => {
                    tracing::warn!(error = %e, "budget spend: ClickHouse client");
                    None
                }
            },
            None => None,
        };
        let source = match &ch {
            Some(ch) => match crate::sink::unshipped_requests_start(&cfg.data_dir.join("sink")) {
                Ok(unshipped) => Source::ClickHouse { ch, unshipped },
                Err(e) => {
                    tracing::warn!(error = %e, "budget spend: reading the sink's cursor");
                    Source::Ledger
                }
            },
            None => Source::Ledger,
        };
        let ledger_dir = cfg.data_dir.join("ledger");
        let reading = known(spend, &ledger_dir, source, Utc::now());
        match tokio::time::timeout(STARTUP_READ_LIMIT, reading).await {
            Ok((known, None)) => known,
            Ok((known, Some(problem))) => {
                tracing::warn!(problem, "budget spend read from the ledger only");
                known
            }
            Err(_) => {
                tracing::warn!(
                    seconds = STARTUP_READ_LIMIT.as_secs(),
                    "budget spend: no answer in time; budgets start from zero"
                );
                HashMap::new()
            }
        }
    })
}

/// How long startup waits for the spend to be read.
const STARTUP_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);
