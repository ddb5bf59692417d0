//! Routing policies: rules, read from `policies/*.yaml`, that turn a request into a plan of
//! upstream attempts (a route with fallbacks, or a judged cascade), deny it, or rewrite
//! what its cost depends on.
//!
//! This module holds the checked rule set the proxy runs on and the matching of a request
//! against it. Files are read by [`load`] and checked by [`validate`]; judging a held answer
//! lives in [`judge`].

pub mod file;
pub mod judge;
pub mod load;
mod validate;

use crate::api::ApiFormat;
use crate::attribution::Attribution;
use crate::config::Provider;
use globset::GlobMatcher;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use judge::Judges;

/// Every rule of a policy directory, in the order they are tried.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// Highest priority first; ties in file-name order, then in file order.
    rules: Vec<Arc<Rule>>,
    /// The rule that applies when no other matches.
    default: Option<Arc<Rule>>,
    /// Whether a rule matches on input tokens (asked on every request: known once).
    counts_input: bool,
}

impl PolicySet {
    pub fn new(mut rules: Vec<Arc<Rule>>, default: Option<Arc<Rule>>) -> PolicySet {
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let counts_input = rules
            .iter()
            .chain(&default)
            .any(|r| r.matcher.input_tokens.is_some());
        PolicySet {
            rules,
            default,
            counts_input,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default.is_none()
    }

    pub fn len(&self) -> usize {
        self.rules.len() + usize::from(self.default.is_some())
    }

    /// The rules in the order they are tried, the default last.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().chain(&self.default)
    }

    /// Whether a rule matches on the request's input tokens, which must then be counted
    /// before [`PolicySet::find`].
    pub fn matches_input_tokens(&self) -> bool {
        self.counts_input
    }

    /// The first rule that matches the request and can serve its API format.
    pub fn find(&self, facts: &Facts<'_>) -> Option<&Arc<Rule>> {
        self.rules()
            .find(|r| r.serves(facts.format) && r.matcher.matches(facts))
    }
}

/// Where a rule was written, for diagnostics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub priority: i64,
    pub source: Source,
    pub matcher: Match,
    pub action: Action,
    pub rewrite: Rewrite,
    /// Serve repeated requests from the response cache; off when `None`.
    pub cache: Option<CacheRule>,
}

impl Rule {
    /// Whether the rule's targets can answer a request in `format`: a rule applies only to
    /// requests its targets speak (checking refuses rules whose targets share no format).
    pub fn serves(&self, format: ApiFormat) -> bool {
        let targets = match &self.action {
            Action::Route(r) => &r.targets,
            Action::Cascade(c) => &c.steps,
            Action::Pass | Action::Deny(_) => return true,
        };
        targets.iter().all(|t| t.provider.kind.speaks(format))
    }
}

/// What a request must look like for a rule to apply. Every condition set must hold; a
/// list holds when any of its values does; an empty list or `None` holds always.
#[derive(Debug, Default)]
pub struct Match {
    pub teams: Vec<String>,
    pub projects: Vec<String>,
    pub envs: Vec<String>,
    pub features: Vec<String>,
    pub users: Vec<String>,
    pub keys: Vec<String>,
    /// Every tag listed must be present with this value.
    pub tags: BTreeMap<String, String>,
    pub endpoints: Vec<String>,
    /// The model the client asked for, exact or glob.
    pub models: Vec<ModelPattern>,
    pub stream: Option<bool>,
    pub tools: Option<bool>,
    /// JSON mode or a JSON schema was asked for.
    pub json: Option<bool>,
    /// Estimated input tokens, inclusive bounds.
    pub input_tokens: Option<(u64, u64)>,
    /// Holds when this does not.
    pub not: Option<Box<Match>>,
}

/// A model name, exact or with glob characters (`*`, `?`, `[...]`).
#[derive(Debug, Clone)]
pub struct ModelPattern {
    pub text: String,
    glob: Option<GlobMatcher>,
}

impl ModelPattern {
    pub fn new(text: &str) -> Result<ModelPattern, globset::Error> {
        let glob = if text.contains(['*', '?', '[']) {
            Some(globset::Glob::new(text)?.compile_matcher())
        } else {
            None
        };
        Ok(ModelPattern {
            text: text.to_string(),
            glob,
        })
    }

    pub fn is_literal(&self) -> bool {
        self.glob.is_none()
    }

    pub fn matches(&self, model: &str) -> bool {
        match &self.glob {
            Some(g) => g.is_match(model),
            None => self.text == model,
        }
    }
}

/// What is known of a request when its rule is chosen.
pub struct Facts<'a> {
    pub format: ApiFormat,
    pub attribution: &'a Attribution,
    pub endpoint: &'a str,
    pub model: &'a str,
    pub stream: bool,
    pub tools: bool,
    pub json: bool,
    /// Counted on first use only: most rules never look at it.
    pub input_tokens: &'a dyn Fn() -> u64,
}

impl Match {
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        let a = f.attribution;
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let flag = |want: Option<bool>, have: bool| want.is_none_or(|w| w == have);
        any(&self.teams, &a.team)
            && any(&self.projects, &a.project)
            && any(&self.envs, &a.env)
            && any(&self.features, &a.feature)
            && any(&self.users, &a.user)
            && any(&self.keys, &a.key_name)
            && any(&self.endpoints, f.endpoint)
            && self
                .tags
                .iter()
                .all(|(k, v)| a.tags.get(k).is_some_and(|t| t == v))
            && (self.models.is_empty() || self.models.iter().any(|m| m.matches(f.model)))
            && flag(self.stream, f.stream)
            && flag(self.tools, f.tools)
            && flag(self.json, f.json)
            && self.input_tokens.is_none_or(|(lo, hi)| {
                let n = (f.input_tokens)();
                lo <= n && n <= hi
            })
            && self.not.as_ref().is_none_or(|n| !n.matches(f))
    }
}

/// What a matching rule does.
#[derive(Debug)]
pub enum Action {
    /// Route as the `models` table says; only the rule's rewrites apply.
    Pass,
    Route(Route),
    Cascade(Cascade),
    /// Refuse, with this reason.
    Deny(String),
}

/// One upstream choice: a provider and the model name it is sent.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
    /// Overall time for this target to answer (connect to last byte of the header);
    /// the provider's read timeout applies when unset.
    pub timeout: Option<Duration>,
    /// Share of first picks when the route balances load.
    pub weight: u32,
}

impl Target {
    /// `provider/model`, as shown in `x-tollgate-route` and logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider.name, self.model)
    }
}

/// Targets tried in order until one answers; each failure (connection, timeout, 429, 5xx)
/// moves on, but never once a byte reached the client.
#[derive(Debug)]
pub struct Route {
    pub targets: Vec<Target>,
    pub retries: Retries,
    /// Pick the first target by weight rather than in order.
    pub balance: Option<Balance>,
    pub cooldown: Option<Cooldown>,
}

#[derive(Debug, Clone, Copy)]
pub struct Balance {
    /// The same user (else virtual key) always gets the same first pick.
    pub sticky: bool,
}

/// When a failing target is taken out of rotation, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Cooldown {
    /// Failed calls in a row that take it out.
    pub failures: u32,
    pub period: Duration,
}

/// How often a failing target is tried again before the next one.
#[derive(Debug, Clone)]
pub struct Retries {
    /// Extra tries of one target.
    pub per_target: u32,
    /// Upstream calls of the whole plan, at most.
    pub max_attempts: u32,
    /// First pause between tries of a target; doubled each time.
    pub backoff: Duration,
    /// A `retry-after` longer than this moves on to the next target instead of waiting.
    pub max_wait: Duration,
}

impl Default for Retries {
    fn default() -> Retries {
        Retries {
            per_target: 0,
            max_attempts: 8,
            backoff: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Models tried cheapest first; each answer but the last is held and judged, and only an
/// accepted one reaches the client.
#[derive(Debug)]
pub struct Cascade {
    pub steps: Vec<Target>,
    pub judges: Judges,
    /// Upstream calls of the whole plan, at most (judges' own calls included).
    pub max_attempts: u32,
    /// Time for the whole cascade: a step before the last that has not answered by then is
    /// left, and once it passes the next step is the last.
    pub deadline: Option<Duration>,
}

/// How a rule's requests use the response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    /// Who shares an entry.
    pub scope: crate::cache::CacheScope,
    /// How long an answer is kept; the config's `cache.ttl_secs` when `None`.
    pub ttl: Option<Duration>,
    /// Whether answers to non-deterministic requests (see [`crate::cache::is_deterministic`])
    /// are cached too.
    pub nondeterministic: bool,
}

/// Edits of the request that its cost depends on.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Lower `max_tokens` (and its aliases) to this, or set it when absent.
    pub max_tokens: Option<u64>,
    /// Send this model instead of the one asked for.
    pub model: Option<String>,
}

impl Rewrite {
    pub fn is_empty(&self) -> bool {
        self.max_tokens.is_none() && self.model.is_none()
    }
}
