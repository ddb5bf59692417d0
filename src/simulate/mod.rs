//! What-if: recorded traffic replayed through a candidate policy set, priced, and compared
//! with what it cost. Nothing is sent to any provider.
//!
//! Each recorded request is matched against the candidate rules as the proxy would match
//! it, and its answer (the tokens of the attempt whose answer the client got) is priced on
//! the model the matching rule would have used. Cascades are priced as an expectation over
//! their steps, with escalation rates observed from past judged attempts where there are
//! enough of them. [`source`] reads the traffic, [`render`] prints the result.

pub mod odds;
pub mod render;
pub mod source;

use crate::api::Endpoint;
use crate::attribution::Attribution;
use crate::config::{ConfigError, ModelTable, Validated};
use crate::money::NanoUsd;
use crate::policy::load::{PolicyContext, load_dir};
use crate::policy::{Action, Facts, PolicySet, Rule};
use crate::prices::PriceBook;
use crate::record::{AttemptRecord, Record, Role, Verdict};
use crate::report::Dim;
use crate::usage::{Usage, UsageSource};
use odds::Rate;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Judged answers of one (feature, model) needed before their rejection rate is used.
pub const MIN_OBSERVATIONS: u64 = 20;

/// Loads `dir` as a candidate policy set, with the checks `tollgate check` makes against
/// the config's providers, models and prices.
pub fn load_policies(dir: &Path, cfg: &Validated) -> Result<PolicySet, ConfigError> {
    load_dir(
        dir,
        PolicyContext {
            providers: &cfg.providers,
            models: &cfg.models,
            prices: &cfg.prices,
            now: chrono::Utc::now(),
            // A validated config has no providers or models with problems of their own.
            skipped_providers: BTreeSet::new(),
            skipped_models: Vec::new(),
        },
    )
}

/// An upstream call, as far as the simulation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub request_id: String,
    pub attempt: u16,
    pub role: Role,
    pub verdict: Verdict,
    pub feature: String,
    pub model: String,
    pub usage: Usage,
    pub usage_source: UsageSource,
}

impl From<AttemptRecord> for Call {
    fn from(a: AttemptRecord) -> Call {
        Call {
            usage: Usage {
                input_tokens: a.input_tokens,
                output_tokens: a.output_tokens,
                cached_input_tokens: a.cached_input_tokens,
                cache_write_tokens: a.cache_write_tokens,
                reasoning_tokens: a.reasoning_tokens,
            },
            request_id: a.request_id,
            attempt: a.attempt,
            role: a.role,
            verdict: a.verdict,
            feature: a.feature,
            model: a.model,
            usage_source: a.usage_source,
        }
    }
}

/// Recorded traffic of a time window: requests and their upstream calls.
#[derive(Debug, Default)]
pub struct Traffic {
    pub requests: Vec<Record>,
    pub calls: Vec<Call>,
}

/// How the simulation fills in what the records do not say.
#[derive(Debug, Clone)]
pub struct Options {
    pub by: Vec<Dim>,
    /// Escalation rate of a cascade step with too few observations.
    pub assumed_escalation: Rate,
    /// Judged answers needed before an observed rate is used.
    pub min_observations: u64,
}

/// Where a cascade step's escalation rate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateUse {
    pub rate: Rate,
    /// Rejected and judged (rejected + accepted) answers seen.
    pub rejected: u64,
    pub judged: u64,
    /// Whether `rate` is `rejected / judged` (else the assumed rate).
    pub observed: bool,
    /// Requests of the group priced with it.
    pub requests: u64,
}

/// One group's totals. Costs of requests unpriced on either side are left out of both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub key: Vec<String>,
    pub requests: u64,
    /// Requests a candidate rule matched.
    pub matched: u64,
    pub denied: u64,
    /// Requests whose actual or simulated cost is unknown (a model without a price).
    pub unpriced: u64,
    pub actual: NanoUsd,
    pub simulated: NanoUsd,
    /// Escalation rates used, by (feature, model of the cascade step).
    pub rates: BTreeMap<(String, String), RateUse>,
}

impl Row {
    /// Simulated minus actual: negative when the candidate policies save money.
    pub fn difference(&self) -> NanoUsd {
        NanoUsd(self.simulated.0 - self.actual.0)
    }

    fn add(&mut self, other: &Row) {
        self.requests += other.requests;
        self.matched += other.matched;
        self.denied += other.denied;
        self.unpriced += other.unpriced;
        self.actual += other.actual;
        self.simulated += other.simulated;
        for (k, u) in &other.rates {
            self.rates
                .entry(k.clone())
                .and_modify(|t| t.requests += u.requests)
                .or_insert(*u);
        }
    }
}

/// The simulation's result: group rows, most expensive (actually) first, then the total;
/// and what was assumed beyond the rates.
#[derive(Debug)]
pub struct Simulation {
    pub rows: Vec<Row>,
    pub assumptions: Vec<String>,
}

/// What a request's answer was: its tokens, and whether any were counted.
#[derive(Clone, Copy)]
struct Answer {
    usage: Usage,
    source: UsageSource,
}

/// Replays `traffic` through `policies`, pricing with `prices` (at each request's time)
/// and routing model names through `models` as the proxy would.
pub fn simulate(
    traffic: &Traffic,
    policies: &PolicySet,
    models: &ModelTable,
    prices: &PriceBook,
    opts: &Options,
) -> Simulation {
    let answers = answers(&traffic.calls);
    let observed = escalations(&traffic.calls, prices);
    let mut notes = Notes::default();
    let mut groups: BTreeMap<Vec<String>, Row> = BTreeMap::new();
    for r in &traffic.requests {
        let answer = answers
            .get(r.request_id.as_str())
            .copied()
            .unwrap_or_else(|| {
                notes.from_totals += 1;
                Answer {
                    usage: Usage {
                        input_tokens: r.input_tokens,
                        output_tokens: r.output_tokens,
                        cached_input_tokens: r.cached_input_tokens,
                        cache_write_tokens: r.cache_write_tokens,
                        reasoning_tokens: r.reasoning_tokens,
                    },
                    source: r.usage_source,
                }
            });
        let key: Vec<String> = opts.by.iter().map(|d| d.of(r).to_string()).collect();
        let row = groups.entry(key.clone()).or_insert_with(|| Row {
            key,
            ..Row::default()
        });
        row.requests += 1;
        let price = |model: &str| -> Option<NanoUsd> {
            if answer.source == UsageSource::None {
                return Some(NanoUsd::ZERO);
            }
            prices.lookup(model, r.ts).map(|p| p.cost(&answer.usage))
        };
        let rule = find_rule(policies, r, answer.usage.input_tokens);
        // Without a rule the request goes where the `models` table sends it: what it cost,
        // or, when a rule in force planned it, what it would have cost without that rule.
        let unplanned = match (r.policy.is_empty(), r.counterfactual_cost_usd) {
            (false, Some(would)) => Some(would),
            _ => r.cost_usd,
        };
        let simulated = match rule.map(|rule| (rule, &rule.action)) {
            None => unplanned,
            Some((rule, Action::Pass)) => {
                row.matched += 1;
                notes.note_rewrites(rule);
                match rule.rewrite.model.as_deref() {
                    Some(m) => price(&routed(models, m)),
                    None => unplanned,
                }
            }
            Some((rule, Action::Deny(_))) => {
                row.matched += 1;
                row.denied += 1;
                notes.note_rewrites(rule);
                Some(NanoUsd::ZERO)
            }
            Some((rule, Action::Route(route))) => {
                row.matched += 1;
                notes.note_rewrites(rule);
                match route.balance {
                    // Load-balanced: the first pick's cost, weighted over the targets and
                    // rounded to the nano once.
                    Some(_) => {
                        let weighted: Option<Vec<(i128, i128)>> = route
                            .targets
                            .iter()
                            .map(|t| {
                                price(&t.model).map(|c| (i128::from(c.0), i128::from(t.weight)))
                            })
                            .collect();
                        weighted.map(|w| {
                            let total: i128 =
                                w.iter().map(|(_, weight)| weight).sum::<i128>().max(1);
                            let sum: i128 = w.iter().map(|(cost, weight)| cost * weight).sum();
                            NanoUsd(((sum + total / 2) / total) as i64)
                        })
                    }
                    None => route.targets.first().and_then(|t| price(&t.model)),
                }
            }
            Some((rule, Action::Cascade(cascade))) => {
                row.matched += 1;
                notes.note_rewrites(rule);
                if cascade.judges.llm.is_some() {
                    notes.llm_judged.insert(rule.name.clone());
                }
                let costs: Option<Vec<NanoUsd>> =
                    cascade.steps.iter().map(|s| price(&s.model)).collect();
                let rates: Vec<Rate> = cascade
                    .steps
                    .iter()
                    .take(cascade.steps.len().saturating_sub(1))
                    .map(|step| {
                        let model = price_name(prices, &step.model).to_string();
                        let seen = observed
                            .get(&(r.feature.as_str(), model.as_str()))
                            .copied()
                            .unwrap_or_default();
                        let rate = Some(seen)
                            .filter(|s| s.judged >= opts.min_observations)
                            .and_then(|s| Rate::new(s.rejected, s.judged));
                        let used = RateUse {
                            rate: rate.unwrap_or(opts.assumed_escalation),
                            rejected: seen.rejected,
                            judged: seen.judged,
                            observed: rate.is_some(),
                            requests: 0,
                        };
                        row.rates
                            .entry((r.feature.clone(), model))
                            .or_insert(used)
                            .requests += 1;
                        used.rate
                    })
                    .collect();
                costs.map(|c| odds::expected_cost(&c, &rates))
            }
        };
        match (r.cost_usd, simulated) {
            (Some(actual), Some(simulated)) => {
                row.actual += actual;
                row.simulated += simulated;
            }
            _ => row.unpriced += 1,
        }
    }
    let mut rows: Vec<Row> = groups.into_values().collect();
    rows.sort_by(|a, b| b.actual.cmp(&a.actual).then_with(|| a.key.cmp(&b.key)));
    let mut total = Row {
        key: vec!["TOTAL".into()],
        ..Row::default()
    };
    for r in &rows {
        total.add(r);
    }
    rows.push(total);
    Simulation {
        rows,
        assumptions: notes.lines(opts),
    }
}

/// The candidate rule the proxy would pick for `r`; requests without a model (pass-through
/// paths) are never planned by a rule.
fn find_rule<'p>(policies: &'p PolicySet, r: &Record, input_tokens: u64) -> Option<&'p Rule> {
    let endpoint = Endpoint::from_path(&r.endpoint).filter(|e| e.has_model())?;
    if r.requested_model.is_empty() {
        return None;
    }
    let attribution = Attribution {
        key_name: r.key_name.clone(),
        team: r.team.clone(),
        project: r.project.clone(),
        env: r.env.clone(),
        user: r.user.clone(),
        feature: r.feature.clone(),
        workflow_id: r.workflow_id.clone(),
        tags: r.tags.clone(),
    };
    let input_tokens = || input_tokens;
    let facts = Facts {
        // Only pass-through paths look at headers, and those have no model.
        format: endpoint.format(&http::HeaderMap::new()),
        attribution: &attribution,
        endpoint: &r.endpoint,
        model: &r.requested_model,
        stream: r.stream,
        // Not recorded: taken as absent.
        tools: false,
        json: false,
        input_tokens: &input_tokens,
    };
    policies.find(&facts).map(AsRef::as_ref)
}

/// The name a model is sent upstream under, as the `models` table routes it.
fn routed(models: &ModelTable, model: &str) -> String {
    models
        .route(model)
        .and_then(|r| r.upstream_model.clone())
        .unwrap_or_else(|| model.to_string())
}

/// The price book's name for `model`, so a provider's dated snapshot name and the name a
/// policy uses count as one model.
fn price_name<'a>(prices: &'a PriceBook, model: &'a str) -> &'a str {
    prices.resolve_name(model).unwrap_or(model)
}

/// Each request's answering call: its last call that is not a judge's.
fn answers(calls: &[Call]) -> HashMap<&str, Answer> {
    let mut last: HashMap<&str, &Call> = HashMap::new();
    for c in calls.iter().filter(|c| c.role != Role::Judge) {
        last.entry(c.request_id.as_str())
            .and_modify(|l| {
                if c.attempt > l.attempt {
                    *l = c;
                }
            })
            .or_insert(c);
    }
    last.into_iter()
        .map(|(id, c)| {
            (
                id,
                Answer {
                    usage: c.usage,
                    source: c.usage_source,
                },
            )
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    rejected: u64,
    judged: u64,
}

/// Judged answers of cascade steps (primary and escalation calls that were accepted or
/// rejected), by feature and the price book's model name.
fn escalations<'a>(calls: &'a [Call], prices: &'a PriceBook) -> HashMap<(&'a str, &'a str), Seen> {
    let mut seen: HashMap<(&str, &str), Seen> = HashMap::new();
    for c in calls {
        if !matches!(c.role, Role::Primary | Role::Escalation)
            || !matches!(c.verdict, Verdict::Accepted | Verdict::Rejected)
        {
            continue;
        }
        let s = seen
            .entry((c.feature.as_str(), price_name(prices, &c.model)))
            .or_default();
        s.judged += 1;
        s.rejected += u64::from(c.verdict == Verdict::Rejected);
    }
    seen
}

/// What the run had to assume, beyond the per-group rates.
#[derive(Default)]
struct Notes {
    /// Requests without call records, whose totals stood for their answer.
    from_totals: u64,
    /// Matched rules that lower max_tokens.
    max_tokens: BTreeSet<String>,
    /// Matched cascades with an LLM judge.
    llm_judged: BTreeSet<String>,
}

impl Notes {
    fn note_rewrites(&mut self, rule: &Rule) {
        if rule.rewrite.max_tokens.is_some() {
            self.max_tokens.insert(rule.name.clone());
        }
    }

    fn lines(&self, opts: &Options) -> Vec<String> {
        let mut out = vec![
            "tools and json are not recorded: every request is matched as one without tools and without JSON output".to_string(),
            "input_tokens rules are matched on the answering call's input tokens".to_string(),
            "each request's answer (the tokens of the call whose answer the client got) is priced on the model the rule would use, at the prices in force when it was made; a route's first pick always answers (a balanced route's picks weighted as configured)".to_string(),
            "unmatched requests cost what they did, or, when a rule in force planned them, what their answer would have cost on the model they asked for".to_string(),
            format!(
                "a cascade step escalates at the rate its judged answers of the same feature and model were rejected in the window when there are at least {}, else at the assumed {}; expected costs are exact fractions rounded to the nano-USD once per request",
                opts.min_observations, opts.assumed_escalation
            ),
        ];
        if self.from_totals > 0 {
            out.push(format!(
                "{} request(s) have no call records: their totals stand for their answer",
                self.from_totals
            ));
        }
        if !self.max_tokens.is_empty() {
            out.push(format!(
                "max_tokens rewrites are assumed not to change usage (rules: {})",
                join(&self.max_tokens)
            ));
        }
        if !self.llm_judged.is_empty() {
            out.push(format!(
                "LLM judges' own calls are not priced (rules: {})",
                join(&self.llm_judged)
            ));
        }
        out
    }
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().cloned().collect::<Vec<_>>().join(", ")
}
