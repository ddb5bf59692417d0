//! `tollgate report --by outcome`: what requests cost per business outcome.
//!
//! Definitions (the same from the ledger and from ClickHouse, computed by [`aggregate`]):
//! - A request's outcome is the latest report (greatest `ts`, then `id`) for its request id
//!   by its own team; when there is none, the latest for its workflow by its own team. A
//!   report joins only requests whose team is the reporting key's team.
//! - Each row is one outcome label: `outcomes` counts its targets (requests or workflows
//!   whose latest report has this label), `requests` the requests they cover, `workflows`
//!   the distinct workflow ids among those requests; tokens (input + output) and the known
//!   cost are those requests' sums. Requests with no outcome are the row with an empty label.
//! - Cost per success: the known cost of every request with an outcome, divided by the
//!   number of targets whose outcome is `success` (rounded down to the nano-USD).
//! - Token yield: tokens of requests whose outcome is `success` divided by tokens of all
//!   requests with an outcome.
//!
//! The window (`--since`) selects requests; outcomes of any age join them.

use crate::money::NanoUsd;
use crate::record::{OutcomeRecord, Record};
use crate::sink::clickhouse::{ChError, ClickHouse};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What `--by` names: attribution dimensions, or `outcome` (a report of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Dim(super::Dim),
    Outcome,
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<By, String> {
        match s.trim() {
            "outcome" => Ok(By::Outcome),
            other => other.parse().map(By::Dim),
        }
    }
}

/// The label of a successful outcome.
pub const SUCCESS: &str = "success";

/// What an outcome is about: a request or a workflow, of a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target<'a> {
    Request(&'a str, &'a str),
    Workflow(&'a str, &'a str),
}

/// One outcome label's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeRow {
    pub outcome: String,
    pub outcomes: u64,
    pub requests: u64,
    pub workflows: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub tokens: u64,
    /// Sum of known costs.
    #[serde(rename = "cost_usd")]
    pub cost: NanoUsd,
    /// Requests whose model had no price (not included in `cost`).
    pub unpriced: u64,
}

/// The rows, most expensive first, and the summary over requests with an outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeReport {
    pub rows: Vec<OutcomeRow>,
    /// Distinct workflow ids among all the requests (one may be in several rows).
    pub workflows: u64,
    pub successes: u64,
    /// `None` without a success.
    #[serde(rename = "cost_per_success_usd")]
    pub cost_per_success: Option<NanoUsd>,
    pub success_tokens: u64,
    pub outcome_tokens: u64,
}

impl OutcomeReport {
    /// Token yield as a decimal with four places; `None` when no request has an outcome.
    pub fn token_yield(&self) -> Option<String> {
        (self.outcome_tokens > 0).then(|| {
            let per_10k = (u128::from(self.success_tokens) * 10_000
                + u128::from(self.outcome_tokens) / 2)
                / u128::from(self.outcome_tokens);
            format!("{}.{:04}", per_10k / 10_000, per_10k % 10_000)
        })
    }
}

/// Joins `requests` with the latest of `outcomes` per target and totals them per label.
pub fn aggregate<'a>(
    requests: impl IntoIterator<Item = &'a Record>,
    outcomes: &[OutcomeRecord],
) -> OutcomeReport {
    let mut latest: BTreeMap<Target, &OutcomeRecord> = BTreeMap::new();
    for o in outcomes {
        let target = if o.request_id.is_empty() {
            Target::Workflow(&o.team, &o.workflow_id)
        } else {
            Target::Request(&o.team, &o.request_id)
        };
        let slot = latest.entry(target).or_insert(o);
        if (o.ts, &o.id) > (slot.ts, &slot.id) {
            *slot = o;
        }
    }
    struct Acc<'b> {
        row: OutcomeRow,
        targets: BTreeSet<Target<'b>>,
        workflows: BTreeSet<&'b str>,
    }
    let mut groups: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut report = OutcomeReport::default();
    let mut outcome_cost = NanoUsd::ZERO;
    let mut success_targets = BTreeSet::new();
    let mut workflows = BTreeSet::new();
    for r in requests {
        let by_request = Target::Request(&r.team, &r.request_id);
        let by_workflow = Target::Workflow(&r.team, &r.workflow_id);
        let found = latest
            .get(&by_request)
            .map(|o| (by_request, *o))
            .or_else(|| {
                (!r.workflow_id.is_empty())
                    .then(|| latest.get(&by_workflow).map(|o| (by_workflow, *o)))
                    .flatten()
            });
        let label = found.map_or("", |(_, o)| o.outcome.as_str());
        let acc = groups.entry(label).or_insert_with(|| Acc {
            row: OutcomeRow {
                outcome: label.to_string(),
                ..OutcomeRow::default()
            },
            targets: BTreeSet::new(),
            workflows: BTreeSet::new(),
        });
        let tokens = r.input_tokens + r.output_tokens;
        acc.row.requests += 1;
        acc.row.input_tokens += r.input_tokens;
        acc.row.output_tokens += r.output_tokens;
        acc.row.tokens += tokens;
        match r.cost_usd {
            Some(c) => acc.row.cost += c,
            None => acc.row.unpriced += 1,
        }
        if !r.workflow_id.is_empty() {
            acc.workflows.insert(&r.workflow_id);
            workflows.insert(&r.workflow_id);
        }
        if let Some((target, o)) = found {
            acc.targets.insert(target);
            report.outcome_tokens += tokens;
            outcome_cost += r.cost_usd.unwrap_or(NanoUsd::ZERO);
            if o.outcome == SUCCESS {
                report.success_tokens += tokens;
                success_targets.insert(target);
            }
        }
    }
    report.rows = groups
        .into_values()
        .map(|acc| OutcomeRow {
            outcomes: acc.targets.len() as u64,
            workflows: acc.workflows.len() as u64,
            ..acc.row
        })
        .collect();
    report
        .rows
        .sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.outcome.cmp(&b.outcome)));
    report.successes = success_targets.len() as u64;
    report.workflows = workflows.len() as u64;
    report.cost_per_success =
        (report.successes > 0).then(|| NanoUsd(outcome_cost.0 / report.successes as i64));
    report
}

/// The report from ClickHouse: requests of the last `since_secs` seconds, and the latest
/// report per (team, target) as ClickHouse picks it.
pub async fn from_clickhouse(ch: &ClickHouse, since_secs: i64) -> Result<OutcomeReport, ChError> {
    let read = super::source::Records::from_clickhouse(ch, since_secs, false).await?;
    Ok(aggregate(&read.requests, &read.outcomes))
}

const COLUMNS: [&str; 9] = [
    "outcome",
    "outcomes",
    "requests",
    "workflows",
    "input_tokens",
    "output_tokens",
    "tokens",
    "cost_usd",
    "unpriced",
];

/// Renders the rows, then (table) the summary lines or (JSON) the summary fields; CSV holds
/// the rows only.
pub fn render(report: &OutcomeReport, format: super::Format) -> String {
    let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let none = || "-".to_string();
    match format {
        super::Format::Json => {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            v["token_yield"] = report.token_yield().into();
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        super::Format::Csv => super::render_csv(&header, &cells(report, "")),
        super::Format::Table => {
            let mut out = super::render_table(&header, 1, &cells(report, "(no outcome)"));
            out.push_str(&format!(
                "\nsuccesses: {}\ncost per success (USD): {}\ntoken yield: {}\n",
                report.successes,
                report.cost_per_success.map_or_else(none, |c| c.to_string()),
                report.token_yield().unwrap_or_else(none),
            ));
            out
        }
    }
}

/// The rows as text, then their total; requests with no outcome are labelled `unlabelled`.
fn cells(report: &OutcomeReport, unlabelled: &str) -> Vec<Vec<String>> {
    let mut total = OutcomeRow {
        outcome: "TOTAL".into(),
        workflows: report.workflows,
        ..OutcomeRow::default()
    };
    for r in &report.rows {
        total.outcomes += r.outcomes;
        total.requests += r.requests;
        total.input_tokens += r.input_tokens;
        total.output_tokens += r.output_tokens;
        total.tokens += r.tokens;
        total.cost += r.cost;
        total.unpriced += r.unpriced;
    }
    report
        .rows
        .iter()
        .chain([&total])
        .map(|r| {
            let label = if r.outcome.is_empty() {
                unlabelled
            } else {
                &r.outcome
            };
            vec![
                label.to_string(),
                r.outcomes.to_string(),
                r.requests.to_string(),
                r.workflows.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.tokens.to_string(),
                r.cost.to_string(),
                r.unpriced.to_string(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn request(id: &str, team: &str, workflow: &str, tokens: u64, cost: i64) -> Record {
        let mut r: Record = serde_json::from_value(serde_json::json!({
            "ts": "2026-11-27T10:00:00.000Z", "request_id": id, "team": team,
            "project": "", "env": "", "user": "", "feature": "", "workflow_id": workflow,
            "tags": {}, "key_name": "", "provider": "openai", "endpoint": "/v1/chat/completions",
            "requested_model": "m", "model": "m", "stream": false, "status": 200,
            "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0,
            "cache_write_tokens": 0, "reasoning_tokens": 0, "usage_source": "reported",
            "cost_usd": null, "latency_ms": 1, "ttfb_ms": null, "error": null
        }))
        .unwrap();
        r.input_tokens = tokens;
        r.cost_usd = Some(NanoUsd(cost));
        r
    }

    fn outcome(team: &str, request: &str, workflow: &str, label: &str, sec: u32) -> OutcomeRecord {
        OutcomeRecord {
            ts: Utc.with_ymd_and_hms(2026, 11, 27, 11, 0, sec).unwrap(),
            id: format!("id-{sec}"),
            team: team.into(),
            key_name: "k".into(),
            request_id: request.into(),
            workflow_id: workflow.into(),
            outcome: label.into(),
            value: None,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn latest_own_team_report_labels_a_request_before_its_workflows() {
        let requests = [
            request("r1", "a", "", 100, 10),
            request("r2", "a", "w", 200, 20),
            request("r3", "a", "w", 300, 30),
            request("r4", "a", "", 400, 40),
        ];
        let outcomes = [
            outcome("a", "r1", "", "failure", 1),
            outcome("a", "r1", "", "success", 2),
            outcome("a", "", "w", "success", 3),
            outcome("a", "r3", "", "failure", 4),
            outcome("b", "r4", "", "success", 5),
        ];
        let report = aggregate(&requests, &outcomes);
        let row = |label: &str| report.rows.iter().find(|r| r.outcome == label).unwrap();
        assert_eq!(
            (
                row("success").outcomes,
                row("success").requests,
                row("success").tokens
            ),
            (2, 2, 300)
        );
        assert_eq!(row("success").workflows, 1);
        assert_eq!((row("failure").requests, row("failure").tokens), (1, 300));
        assert_eq!((row("").requests, row("").cost), (1, NanoUsd(40)));
        assert_eq!(report.successes, 2);
        assert_eq!(report.cost_per_success, Some(NanoUsd(30)));
        assert_eq!(report.token_yield().as_deref(), Some("0.5000"));
        let table = render(&report, super::super::Format::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("outcome"), "{table}");
        let total = lines.iter().find(|l| l.starts_with("TOTAL")).unwrap();
        let cells: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(cells[2..4], ["4", "1"], "requests, workflows: {table}");
        assert_eq!(cells[7], NanoUsd(100).to_string(), "{table}");
        assert!(table.contains("(no outcome)"), "{table}");
        assert!(table.ends_with("token yield: 0.5000\n"), "{table}");
    }
}
