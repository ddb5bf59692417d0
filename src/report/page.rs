//! The spend page's figures (`tollgate report --format html`, the admin port's `/`): what a
//! window's records add up to, computed here and drawn by [`super::html`]. Every amount is
//! an integer sum of nano-USD.

use super::outcomes::{self, OutcomeReport};
use super::source::Records;
use super::{Dim, Row};
use crate::budget::forecast::{self, DailySpend};
use crate::budget::period;
use crate::config::{Period, Spend};
use crate::money::NanoUsd;
use crate::record::{Record, Verdict};
use crate::usage::UsageSource;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;

/// The dimensions the page breaks spend down by, in its order.
pub const BREAKDOWNS: [Dim; 7] = [
    Dim::Team,
    Dim::Project,
    Dim::Env,
    Dim::Model,
    Dim::Provider,
    Dim::User,
    Dim::Feature,
];

/// The dimensions cost per outcome is shown by.
pub const OUTCOME_BREAKDOWNS: [Dim; 3] = [Dim::Team, Dim::Feature, Dim::Model];

/// Workflows listed, most expensive first.
pub const TOP_WORKFLOWS: usize = 10;

/// Groups a breakdown lists before it sums the rest into one row.
pub const TOP_GROUPS: usize = 12;

/// Spend by one dimension.
#[derive(Debug, Clone)]
pub struct Breakdown {
    pub dim: Dim,
    /// The [`TOP_GROUPS`] most expensive groups.
    pub rows: Vec<Row>,
    /// How many groups are not listed, and their sum.
    pub others: Option<(usize, Row)>,
    pub total: Row,
}

impl Breakdown {
    fn of<'a>(dim: Dim, records: impl IntoIterator<Item = &'a Record>) -> Breakdown {
        let mut rows = super::aggregate(records, &[dim]);
        let total = rows.pop().expect("aggregate ends with the total");
        let others = (rows.len() > TOP_GROUPS).then(|| {
            let rest = rows.split_off(TOP_GROUPS);
            let n = rest.len();
            let sum = super::with_total(rest)
                .pop()
                .expect("with_total ends with the total");
            (n, sum)
        });
        Breakdown {
            dim,
            rows,
            others,
            total,
        }
    }
}

/// One local day of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub cost: NanoUsd,
    /// Input plus output tokens.
    pub tokens: u64,
    pub requests: u64,
}

/// The current month's projected spend, from the rate of the last `alerts.forecast_days`
/// days (as budget alerts project it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    pub month: NaiveDate,
    pub month_to_date: NanoUsd,
    pub projected: NanoUsd,
}

/// What routing, the response cache and cascades did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Levers {
    /// Requests a routing rule planned that were not cache hits.
    pub routed: u64,
    /// Counterfactual minus actual cost over the routed requests priced both ways.
    pub routing_saved: NanoUsd,
    pub cache_hits: u64,
    pub cache_saved: NanoUsd,
    /// Cascade steps whose answer was rejected, and the requests that had any.
    pub escalations: u64,
    pub escalated_requests: u64,
}

/// What failed attempts and rejected cascade steps cost: spend that bought no answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waste {
    pub key: String,
    pub attempts: u64,
    pub tokens: u64,
    pub cost: NanoUsd,
}

/// How much of the spend rests on estimates or has no price.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    /// Requests whose usage was estimated (the provider reported none), and their cost.
    pub estimated_requests: u64,
    pub estimated_cost: NanoUsd,
    /// Requests whose model has no price: not in any cost on the page.
    pub unpriced_requests: u64,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct SpendPage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Days are local days of the budgets' time zone.
    pub time_zone: Tz,
    /// Where the records came from, as the page says it: `the ledger`, `ClickHouse`.
    pub source: String,
    /// The grand total of the window.
    pub total: Row,
    pub days: Vec<Day>,
    /// `None` when the window starts after the month's first day.
    pub forecast: Option<Forecast>,
    /// One per [`BREAKDOWNS`] entry.
    pub breakdowns: Vec<Breakdown>,
    /// The [`TOP_WORKFLOWS`] most expensive workflows (requests with no workflow id left out).
    pub workflows: Vec<Row>,
    pub levers: Levers,
    pub outcomes: OutcomeReport,
    /// Per [`OUTCOME_BREAKDOWNS`] entry: each group's outcome report, by the group's cost.
    pub outcomes_by: Vec<(Dim, Vec<(String, OutcomeReport)>)>,
    /// Wasted attempts by team, most expensive first; then their total.
    pub waste: Vec<Waste>,
    pub pricing: Pricing,
}

impl SpendPage {
    /// The figures of `records`, read for the window from `from` to `now`.
    pub fn build(
        records: &Records,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
        spend: &Spend,
        source: &str,
    ) -> SpendPage {
        let requests = &records.requests;
        let total = super::aggregate(requests, &[])
            .pop()
            .expect("aggregate ends with the total");
        let tz = spend.time_zone;
        let days = days(requests, from, now, tz);
        let breakdowns = BREAKDOWNS
            .iter()
            .map(|&d| Breakdown::of(d, requests))
            .collect();
        let mut workflows = super::aggregate(
            requests.iter().filter(|r| !r.workflow_id.is_empty()),
            &[Dim::Workflow],
        );
        workflows.pop();
        workflows.truncate(TOP_WORKFLOWS);
        let outcomes_by = OUTCOME_BREAKDOWNS
            .iter()
            .map(|&d| {
                let mut groups: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
                for r in requests {
                    groups.entry(d.of(r)).or_default().push(r);
                }
                let mut reports: Vec<(String, OutcomeReport, NanoUsd)> = groups
                    .into_iter()
                    .map(|(k, rs)| {
                        let cost = rs.iter().filter_map(|r| r.cost_usd).sum();
                        (
                            k.to_string(),
                            outcomes::aggregate(rs, &records.outcomes),
                            cost,
                        )
                    })
                    .collect();
                reports.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
                (d, reports.into_iter().map(|(k, o, _)| (k, o)).collect())
            })
            .collect();
        SpendPage {
            from,
            to: now,
            time_zone: tz,
            source: source.to_string(),
            forecast: forecast_of(&days, from, now, spend),
            days,
            breakdowns,
            workflows,
            levers: levers(records, &total),
            outcomes: outcomes::aggregate(requests, &records.outcomes),
            outcomes_by,
            waste: waste(records),
            pricing: pricing(records),
            total,
        }
    }

    /// No request in the window.
    pub fn is_empty(&self) -> bool {
        self.total.requests == 0
    }
}

/// Every local day from `from`'s to `now`'s, with the spend of each (0 when none).
fn days(requests: &[Record], from: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> Vec<Day> {
    let first = from.with_timezone(&tz).date_naive();
    let last = now.with_timezone(&tz).date_naive();
    let mut by_day: BTreeMap<NaiveDate, Day> = first
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|date| {
            (
                date,
                Day {
                    date,
                    cost: NanoUsd::ZERO,
                    tokens: 0,
                    requests: 0,
                },
            )
        })
        .collect();
    for r in requests {
        // A record from a clock running ahead lands on a day of its own.
        let date = r.ts.with_timezone(&tz).date_naive();
        let day = by_day.entry(date).or_insert(Day {
            date,
            cost: NanoUsd::ZERO,
            tokens: 0,
            requests: 0,
        });
        day.cost += r.cost_usd.unwrap_or(NanoUsd::ZERO);
        day.tokens += r.input_tokens + r.output_tokens;
        day.requests += 1;
    }
    by_day.into_values().collect()
}

/// The month-end projection, when the window holds the whole month so far.
fn forecast_of(
    days: &[Day],
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    spend: &Spend,
) -> Option<Forecast> {
    let (start, end) = period::bounds(Period::Month, spend.time_zone, now);
    if from > start {
        return None;
    }
    let month = start.with_timezone(&spend.time_zone).date_naive();
    let today = now.with_timezone(&spend.time_zone).date_naive();
    let month_to_date = days
        .iter()
        .filter(|d| d.date >= month && d.date <= today)
        .map(|d| d.cost)
        .sum();
    // The rate is that of the last `forecast_days` days, as budget alerts read it.
    let daily = DailySpend::from_days(days.iter().map(|d| (d.date, d.cost)).collect());
    Some(Forecast {
        month,
        month_to_date,
        projected: forecast::project(&daily, month_to_date, end, now, spend),
    })
}

fn levers(records: &Records, total: &Row) -> Levers {
    let mut levers = Levers {
        routing_saved: total.saved,
        cache_hits: total.cache_hits,
        cache_saved: total.cache_saved,
        ..Levers::default()
    };
    for r in &records.requests {
        levers.routed += u64::from(!r.policy.is_empty() && !r.cache_hit);
        levers.escalations += u64::from(r.escalations);
        levers.escalated_requests += u64::from(r.escalations > 0);
    }
    levers
}

/// Failed and judge-rejected attempts by team, most expensive first, then their total.
fn waste(records: &Records) -> Vec<Waste> {
    let mut by_team: BTreeMap<&str, Waste> = BTreeMap::new();
    for a in &records.attempts {
        if !matches!(a.verdict, Verdict::Failed | Verdict::Rejected) {
            continue;
        }
        let w = by_team.entry(&a.team).or_insert_with(|| Waste {
            key: a.team.clone(),
            ..Waste::default()
        });
        w.attempts += 1;
        w.tokens += a.input_tokens + a.output_tokens;
        w.cost += a.cost_usd.unwrap_or(NanoUsd::ZERO);
    }
    let mut rows: Vec<Waste> = by_team.into_values().collect();
    rows.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.key.cmp(&b.key)));
    let total = rows.iter().fold(
        Waste {
            key: "TOTAL".into(),
            ..Waste::default()
        },
        |mut t, w| {
            t.attempts += w.attempts;
            t.tokens += w.tokens;
            t.cost += w.cost;
            t
        },
    );
    rows.push(total);
    rows
}

fn pricing(records: &Records) -> Pricing {
    let mut p = Pricing::default();
    for r in &records.requests {
        if r.usage_source == UsageSource::Estimated {
            p.estimated_requests += 1;
            p.estimated_cost += r.cost_usd.unwrap_or(NanoUsd::ZERO);
        }
        p.unpriced_requests += u64::from(r.cost_usd.is_none());
    }
    p
}
