//! Spend reports: records grouped by attribution dimensions, rendered as a table, JSON or CSV.

pub mod html;
pub mod outcomes;
pub mod page;
pub mod source;

use crate::money::NanoUsd;
use crate::record::Record;
use crate::sink::clickhouse::{ChError, ClickHouse};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Team,
    Project,
    Env,
    Model,
    Provider,
    User,
    Feature,
    Workflow,
    Key,
    /// The routing rule that planned the request (empty when none did).
    Policy,
}

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Team => "team",
            Dim::Project => "project",
            Dim::Env => "env",
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::User => "user",
            Dim::Feature => "feature",
            Dim::Workflow => "workflow_id",
            Dim::Key => "key_name",
            Dim::Policy => "policy",
        }
    }

    /// The record's value of this dimension.
    pub fn of(self, r: &Record) -> &str {
        match self {
            Dim::Team => &r.team,
            Dim::Project => &r.project,
            Dim::Env => &r.env,
            Dim::Model => &r.model,
            Dim::Provider => &r.provider,
            Dim::User => &r.user,
            Dim::Feature => &r.feature,
            Dim::Workflow => &r.workflow_id,
            Dim::Key => &r.key_name,
            Dim::Policy => &r.policy,
        }
    }
}

impl FromStr for Dim {
    type Err = String;
    fn from_str(s: &str) -> Result<Dim, String> {
        Ok(match s.trim() {
            "team" => Dim::Team,
            "project" => Dim::Project,
            "env" => Dim::Env,
            "model" => Dim::Model,
            "provider" => Dim::Provider,
            "user" => Dim::User,
            "feature" => Dim::Feature,
            "workflow" | "workflow_id" => Dim::Workflow,
            "key" | "key_name" => Dim::Key,
            "policy" => Dim::Policy,
            other => return Err(format!("unknown dimension {other:?}")),
        })
    }
}

/// Totals of one group; also a row of [`clickhouse_sql`]'s result.
#[derive(Debug, Clone, Default, PartialEq, Eq, ::clickhouse::Row, serde::Deserialize)]
pub struct Row {
    pub key: Vec<String>,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub estimated: u64,
    /// Sum of known costs.
    #[serde(rename = "cost_usd", deserialize_with = "nanos_from_decimal")]
    pub cost: NanoUsd,
    /// Requests whose model had no price (not included in `cost`).
    pub unpriced: u64,
    /// What routing saved: counterfactual minus actual cost, over the routed requests
    /// priced both ways that were not cache hits (negative when escalations cost more than
    /// they saved).
    #[serde(rename = "saved_usd", deserialize_with = "nanos_from_decimal")]
    pub saved: NanoUsd,
    /// Requests answered from the response cache (their tokens and cost are 0).
    pub cache_hits: u64,
    /// What the hits saved: the known cost of the requests whose answers they replayed.
    #[serde(rename = "cache_saved_usd", deserialize_with = "nanos_from_decimal")]
    pub cache_saved: NanoUsd,
}

impl Row {
    fn add(&mut self, r: &Record) {
        self.requests += 1;
        self.errors += u64::from(r.error.is_some() || r.status >= 400);
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.cached_input_tokens += r.cached_input_tokens;
        self.cache_write_tokens += r.cache_write_tokens;
        self.reasoning_tokens += r.reasoning_tokens;
        self.estimated += u64::from(r.usage_source == crate::usage::UsageSource::Estimated);
        match r.cost_usd {
            Some(c) => self.cost += c,
            None => self.unpriced += 1,
        }
        // A hit made no routed call: what it saved is counted as the cache's, below.
        if let (false, false, Some(would), Some(did)) = (
            r.policy.is_empty(),
            r.cache_hit,
            r.counterfactual_cost_usd,
            r.cost_usd,
        ) {
            self.saved += NanoUsd(would.0 - did.0);
        }
        self.cache_hits += u64::from(r.cache_hit);
        if let Some(s) = r.saved_cost_usd {
            self.cache_saved += s;
        }
    }
}

/// Groups records by `by`, most expensive first; the last row is the grand total.
pub fn aggregate<'a>(records: impl IntoIterator<Item = &'a Record>, by: &[Dim]) -> Vec<Row> {
    let mut groups: BTreeMap<Vec<String>, Row> = BTreeMap::new();
    for r in records {
        let key: Vec<String> = by.iter().map(|d| d.of(r).to_string()).collect();
        groups
            .entry(key.clone())
            .or_insert_with(|| Row {
                key,
                ..Row::default()
            })
            .add(r);
    }
    with_total(groups.into_values().collect())
}

/// Orders group rows, most expensive first, and appends their total.
pub fn with_total(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.key.cmp(&b.key)));
    let mut total = Row {
        key: vec!["TOTAL".into()],
        ..Row::default()
    };
    for r in &rows {
        total.requests += r.requests;
        total.errors += r.errors;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.cached_input_tokens += r.cached_input_tokens;
        total.cache_write_tokens += r.cache_write_tokens;
        total.reasoning_tokens += r.reasoning_tokens;
        total.estimated += r.estimated;
        total.unpriced += r.unpriced;
        total.cost += r.cost;
        total.saved += r.saved;
        total.cache_hits += r.cache_hits;
        total.cache_saved += r.cache_saved;
    }
    rows.push(total);
    rows
}

/// Parses a look-back such as `90s`, `30m`, `24h`, `7d` or `2w`.
pub fn parse_since(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 24h, 7d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("invalid duration unit in {s:?} (s, m, h, d, w)")),
    };
    Ok(chrono::Duration::seconds(n.saturating_mul(secs)))
}

/// The same report computed by ClickHouse over the `requests` table. Binds `since_secs`
/// (the look-back, in seconds).
pub fn clickhouse_sql(by: &[Dim]) -> String {
    let key: Vec<String> = by
        .iter()
        .map(|d| format!("toString(r.`{}`)", d.name()))
        .collect();
    let group = if by.is_empty() {
        String::new()
    } else {
        let cols: Vec<String> = by.iter().map(|d| format!("r.`{}`", d.name())).collect();
        format!(" GROUP BY {}", cols.join(", "))
    };
    // Source columns are qualified: the output names reuse them.
    format!(
        "SELECT CAST([{key}] AS Array(String)) AS key, count() AS requests, \
         countIf(r.status >= 400 OR r.error IS NOT NULL) AS errors, \
         sum(r.input_tokens) AS input_tokens, sum(r.output_tokens) AS output_tokens, \
         sum(r.cached_input_tokens) AS cached_input_tokens, \
         sum(r.cache_write_tokens) AS cache_write_tokens, \
         sum(r.reasoning_tokens) AS reasoning_tokens, \
         countIf(r.usage_source = 'estimated') AS estimated, \
         sum(ifNull(r.cost_usd, toDecimal128(0, 9))) AS cost_usd, \
         countIf(r.cost_usd IS NULL) AS unpriced, \
         sum(if(r.policy != '' AND NOT r.cache_hit AND r.counterfactual_cost_usd IS NOT NULL AND r.cost_usd IS NOT NULL, \
           assumeNotNull(r.counterfactual_cost_usd) - assumeNotNull(r.cost_usd), toDecimal128(0, 9))) AS saved_usd, \
         countIf(r.cache_hit) AS cache_hits, \
         sum(ifNull(r.saved_cost_usd, toDecimal128(0, 9))) AS cache_saved_usd \
         FROM requests AS r \
         WHERE r.ts >= now64(3) - toIntervalSecond({{since_secs:Int64}}){group}",
        key = key.join(", ")
    )
}

/// The report from ClickHouse, for records of the last `since_secs` seconds.
pub async fn from_clickhouse(
    ch: &ClickHouse,
    by: &[Dim],
    since_secs: i64,
) -> Result<Vec<Row>, ChError> {
    let query = ch
        .query(&clickhouse_sql(by))
        .param("since_secs", since_secs);
    let rows: Vec<Row> = ch.fetch_all(query).await?;
    // The empty aggregate of a query with no GROUP BY has no requests.
    Ok(with_total(
        rows.into_iter().filter(|r| r.requests > 0).collect(),
    ))
}

/// `Decimal(38, 9)` arrives as its integer count of nano-USD.
fn nanos_from_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NanoUsd, D::Error> {
    let nanos = <i128 as serde::Deserialize>::deserialize(d)?;
    i64::try_from(nanos)
        .map(NanoUsd)
        .map_err(|_| serde::de::Error::custom(format!("cost of {nanos} nano-USD is out of range")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("unknown format {other:?} (table, json or csv)")),
        }
    }
}

/// What `report --format` names: a format of the grouped rows, or the HTML spend page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Rows(Format),
    Html,
}

impl FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<ReportFormat, String> {
        match s {
            "html" => Ok(ReportFormat::Html),
            other => other
                .parse()
                .map(ReportFormat::Rows)
                .map_err(|_| format!("unknown format {other:?} (table, json, csv or html)")),
        }
    }
}

const COLUMNS: [&str; 13] = [
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "estimated",
    "unpriced",
    "cost_usd",
    "saved_usd",
    "cache_hits",
    "cache_saved_usd",
];

fn values(r: &Row) -> [String; 13] {
    [
        r.requests.to_string(),
        r.errors.to_string(),
        r.input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cached_input_tokens.to_string(),
        r.cache_write_tokens.to_string(),
        r.reasoning_tokens.to_string(),
        r.estimated.to_string(),
        r.unpriced.to_string(),
        r.cost.to_string(),
        r.saved.to_string(),
        r.cache_hits.to_string(),
        r.cache_saved.to_string(),
    ]
}

pub fn render(rows: &[Row], by: &[Dim], format: Format) -> String {
    let mut header: Vec<String> = by.iter().map(|d| d.name().to_string()).collect();
    if header.is_empty() {
        header.push("all".into());
    }
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = r.key.clone();
            cells.resize(header.len() - COLUMNS.len(), String::new());
            cells.extend(values(r));
            cells
        })
        .collect();
    let key_cols = header.len() - COLUMNS.len();
    match format {
        Format::Csv => render_csv(&header, &body),
        Format::Json => {
            let items: Vec<serde_json::Value> = body
                .iter()
                .map(|cells| {
                    let obj: serde_json::Map<String, serde_json::Value> = header
                        .iter()
                        .zip(cells)
                        .map(|(h, c)| {
                            let v = if COLUMNS.contains(&h.as_str()) && !h.ends_with("_usd") {
                                c.parse::<u64>()
                                    .map(Into::into)
                                    .unwrap_or_else(|_| c.clone().into())
                            } else {
                                c.clone().into()
                            };
                            (h.clone(), v)
                        })
                        .collect();
                    serde_json::Value::Object(obj)
                })
                .collect();
            serde_json::to_string_pretty(&items).unwrap_or_default() + "\n"
        }
        Format::Table => render_table(&header, key_cols, &body),
    }
}

/// CSV with a header line; cells quoted where needed.
pub fn render_csv(header: &[String], body: &[Vec<String>]) -> String {
    let mut out = String::new();
    for line in std::iter::once(header).chain(body.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = line.iter().map(|c| csv_cell(c)).collect();
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

/// An aligned text table: the first `key_cols` columns left-aligned, the rest right-aligned,
/// with rules under the header and above the last row (the total).
pub fn render_table(header: &[String], key_cols: usize, body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for cells in body {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let rule = widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("  ")
        + "\n";
    for (i, line) in std::iter::once(header)
        .chain(body.iter().map(Vec::as_slice))
        .enumerate()
    {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(j, (c, w))| {
                if j < key_cols {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        // Rules under the header and above the total.
        if i == body.len() && i > 0 {
            out.push_str(&rule);
        }
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if i == 0 {
            out.push_str(&rule);
        }
    }
    out
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(team: &str, cost: Option<i64>, input: u64) -> Record {
        let mut r: Record = serde_json::from_value(serde_json::json!({
            "ts": "2026-11-27T10:00:00.000Z", "request_id": "r", "team": team, "project": "p",
            "env": "prod", "user": "", "feature": "", "workflow_id": "", "tags": {}, "key_name": "",
            "provider": "openai", "endpoint": "/v1/chat/completions", "requested_model": "m",
            "model": "m", "stream": false, "status": 200, "input_tokens": input, "output_tokens": 1,
            "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
            "usage_source": "reported", "cost_usd": null, "latency_ms": 1, "ttfb_ms": 1, "error": null
        }))
        .unwrap();
        r.cost_usd = cost.map(NanoUsd);
        r
    }

    #[test]
    fn groups_sums_exactly_and_keeps_unpriced_apart() {
        let records = [
            rec("a", Some(1), 10),
            rec("b", Some(5), 1),
            rec("a", None, 3),
            rec("a", Some(2), 1),
        ];
        let rows = aggregate(&records, &[Dim::Team]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].key, vec!["b"]);
        assert_eq!(rows[1].key, vec!["a"]);
        assert_eq!(
            (
                rows[1].requests,
                rows[1].cost,
                rows[1].unpriced,
                rows[1].input_tokens
            ),
            (3, NanoUsd(3), 1, 14)
        );
        assert_eq!(rows[2].cost, NanoUsd(8));
        let csv = render(&rows, &[Dim::Team], Format::Csv);
        assert!(csv.starts_with("team,requests,"));
        assert!(
            csv.ends_with("\nTOTAL,4,0,15,4,0,0,0,0,1,0.000000008,0.000000000,0,0.000000000\n")
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, &[Dim::Team], Format::Json)).unwrap();
        assert_eq!(json[0]["cost_usd"], "0.000000005");
        assert_eq!(json[0]["requests"], 1);
    }

    /// A hit as the proxy records it: no upstream call, so no tokens and no cost.
    fn hit(team: &str, saved_input: u64, saved_cost: Option<i64>) -> Record {
        let mut r = rec(team, Some(0), 0);
        r.output_tokens = 0;
        r.cache_hit = true;
        r.saved_input_tokens = saved_input;
        r.saved_output_tokens = 1;
        r.saved_cost_usd = saved_cost.map(NanoUsd);
        r
    }

    #[test]
    fn cache_hits_count_their_savings_apart_from_spend_and_routing() {
        let mut routed_hit = hit("a", 10, Some(40));
        routed_hit.policy = "cheap-first".into();
        routed_hit.counterfactual_cost_usd = Some(NanoUsd(90));
        let mut routed = rec("a", Some(30), 10);
        routed.policy = "cheap-first".into();
        routed.counterfactual_cost_usd = Some(NanoUsd(50));
        let mut miss = rec("b", Some(7), 2);
        miss.saved_cost_usd = Some(NanoUsd(0));
        let records = [
            routed,
            routed_hit,
            hit("a", 5, None),
            hit("b", 3, Some(1_000_000_001)),
            miss,
        ];
        let rows = aggregate(&records, &[Dim::Team]);
        let [a, b, total] = rows.as_slice() else {
            panic!("{rows:?}")
        };
        assert_eq!(
            (&a.key[..], &b.key[..]),
            (&["a".to_string()][..], &["b".to_string()][..])
        );
        assert_eq!(
            (
                a.requests,
                a.cache_hits,
                a.cache_saved,
                a.cost,
                a.input_tokens
            ),
            (3, 2, NanoUsd(40), NanoUsd(30), 10),
            "hits add neither tokens nor cost; an unknown saving adds nothing"
        );
        assert_eq!(
            a.saved,
            NanoUsd(20),
            "the routed hit is not a routing saving"
        );
        assert_eq!((b.cache_hits, b.cache_saved), (1, NanoUsd(1_000_000_001)));
        assert_eq!(
            (
                total.requests,
                total.cache_hits,
                total.cache_saved,
                total.unpriced
            ),
            (5, 3, NanoUsd(1_000_000_041), 0)
        );

        let csv = render(&rows, &[Dim::Team], Format::Csv);
        let header = csv.lines().next().unwrap();
        assert!(
            header.ends_with(",cost_usd,saved_usd,cache_hits,cache_saved_usd"),
            "{header}"
        );
        assert!(
            csv.ends_with(",0.000000037,0.000000020,3,1.000000041\n"),
            "{csv}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, &[Dim::Team], Format::Json)).unwrap();
        assert_eq!(json[2]["cache_hits"], 3);
        assert_eq!(json[2]["cache_saved_usd"], "1.000000041");
        let table = render(&rows, &[Dim::Team], Format::Table);
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .ends_with("cache_hits  cache_saved_usd"),
            "{table}"
        );
    }
}
