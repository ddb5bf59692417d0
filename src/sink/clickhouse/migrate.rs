//! Versioned schema migrations, kept as SQL files a DBA can read
//! (`src/sink/clickhouse/migrations/`). Applied versions are recorded in
//! `schema_migrations`. Every statement is idempotent, so two replicas starting at once
//! may both run a migration without harm; the bookkeeping table collapses their rows.

use super::client::{ChError, ClickHouse};
use crate::config::ClickHouseSettings;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "requests",
        sql: include_str!("migrations/0001_requests.sql"),
    },
    Migration {
        version: 2,
        name: "attempts_outcomes",
        sql: include_str!("migrations/0002_attempts_outcomes.sql"),
    },
    Migration {
        version: 3,
        name: "rollups",
        sql: include_str!("migrations/0003_rollups.sql"),
    },
    Migration {
        version: 4,
        name: "routing",
        sql: include_str!("migrations/0004_routing.sql"),
    },
    Migration {
        version: 5,
        name: "cache",
        sql: include_str!("migrations/0005_cache.sql"),
    },
    Migration {
        version: 6,
        name: "outcome_reports",
        sql: include_str!("migrations/0006_outcome_reports.sql"),
    },
];

impl Migration {
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The statements of this migration with placeholders filled in.
    pub fn statements(&self, s: &ClickHouseSettings) -> Vec<String> {
        let p = Placeholders::new(s);
        split(self.sql)
            .into_iter()
            .map(|stmt| p.fill(&stmt))
            .collect()
    }
}

struct Placeholders {
    db: String,
    on_cluster: String,
    replicated: &'static str,
    ttl: String,
    rollup_ttl: String,
}

impl Placeholders {
    fn new(s: &ClickHouseSettings) -> Placeholders {
        Placeholders {
            db: s.database.clone(),
            on_cluster: s
                .cluster
                .as_ref()
                .map(|c| format!("ON CLUSTER {c}"))
                .unwrap_or_default(),
            replicated: if s.cluster.is_some() {
                "Replicated"
            } else {
                ""
            },
            ttl: s
                .ttl_days
                .map(|d| format!("TTL toDateTime(ts) + INTERVAL {d} DAY"))
                .unwrap_or_default(),
            rollup_ttl: s
                .rollup_ttl_days
                .map(|d| format!("TTL hour + INTERVAL {d} DAY"))
                .unwrap_or_default(),
        }
    }

    fn fill(&self, sql: &str) -> String {
        sql.replace("{db}", &self.db)
            .replace("{on_cluster}", &self.on_cluster)
            .replace("{replicated}", self.replicated)
            .replace("{rollup_ttl}", &self.rollup_ttl)
            .replace("{ttl}", &self.ttl)
    }
}

/// Splits a file at semicolons that end a line, dropping pieces that are only comments.
fn split(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            push_statement(&mut out, &current);
            current.clear();
        }
    }
    push_statement(&mut out, &current);
    out
}

fn push_statement(out: &mut Vec<String>, piece: &str) {
    let code: Vec<&str> = piece
        .lines()
        .filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty())
        .collect();
    if !code.is_empty() {
        out.push(
            code.join("\n")
                .trim_end_matches(';')
                .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
                .to_string(),
        );
    }
}

fn bookkeeping(s: &ClickHouseSettings) -> [String; 2] {
    let p = Placeholders::new(s);
    [
        p.fill("CREATE DATABASE IF NOT EXISTS {db} {on_cluster}"),
        p.fill(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations {on_cluster} \
             (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
             ENGINE = {replicated}ReplacingMergeTree ORDER BY version",
        ),
    ]
}

/// A row of `schema_migrations` (`applied_at` is filled in by ClickHouse).
#[derive(::clickhouse::Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
}

/// Versions already applied, with the checksum each was applied with.
pub async fn applied(ch: &ClickHouse) -> Result<BTreeMap<u32, String>, ChError> {
    let rows: Vec<Applied> = ch
        .fetch_all(ch.query(
            "SELECT version, any(name) AS name, any(checksum) AS checksum \
             FROM schema_migrations GROUP BY version",
        ))
        .await?;
    Ok(rows.into_iter().map(|r| (r.version, r.checksum)).collect())
}

/// The SQL `migrate` would run: bookkeeping, then every migration up to `target`.
pub fn plan(
    s: &ClickHouseSettings,
    target: Option<u32>,
) -> Vec<(Option<&'static Migration>, String)> {
    let mut out: Vec<(Option<&Migration>, String)> =
        bookkeeping(s).into_iter().map(|sql| (None, sql)).collect();
    for m in MIGRATIONS
        .iter()
        .filter(|m| target.is_none_or(|t| m.version <= t))
    {
        out.extend(m.statements(s).into_iter().map(|sql| (Some(m), sql)));
    }
    out
}

/// Applies every migration not yet applied, up to `target` (all when `None`). Returns the
/// versions applied now.
pub async fn migrate(
    ch: &ClickHouse,
    s: &ClickHouseSettings,
    target: Option<u32>,
) -> Result<Vec<u32>, ChError> {
    for sql in bookkeeping(s) {
        ch.execute(&sql).await?;
    }
    let done = applied(ch).await?;
    let mut now = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| target.is_none_or(|t| m.version <= t))
    {
        if let Some(sum) = done.get(&m.version) {
            if *sum != m.checksum() {
                tracing::warn!(
                    version = m.version,
                    name = m.name,
                    "applied migration differs from this build's copy"
                );
            }
            continue;
        }
        for sql in m.statements(s) {
            ch.execute(&sql).await?;
        }
        let row = Applied {
            version: m.version,
            name: m.name.to_string(),
            checksum: m.checksum(),
        };
        ch.insert("schema_migrations", &[row]).await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied ClickHouse migration"
        );
        now.push(m.version);
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cluster: Option<&str>) -> ClickHouseSettings {
        ClickHouseSettings {
            url: "http://x".into(),
            database: "tg".into(),
            user: "default".into(),
            password: None,
            ca_pem: None,
            batch_max_rows: 1,
            batch_period: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            ttl_days: Some(90),
            rollup_ttl_days: None,
            cluster: cluster.map(str::to_string),
            migrate_on_start: true,
        }
    }

    #[test]
    fn fills_every_placeholder() {
        for cluster in [None, Some("main")] {
            for (_, sql) in plan(&settings(cluster), None) {
                assert!(!sql.contains('{'), "unfilled: {sql}");
                assert!(!sql.trim_end().ends_with(';'));
            }
        }
        let all: String = plan(&settings(Some("main")), None)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert!(all.contains("ON CLUSTER main") && all.contains("ReplicatedMergeTree"));
        assert!(all.contains("TTL toDateTime(ts) + INTERVAL 90 DAY"));
    }

    #[test]
    fn versions_are_ordered_and_unique() {
        let v: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(v.windows(2).all(|w| w[0] < w[1]));
    }
}
