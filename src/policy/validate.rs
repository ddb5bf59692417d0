//! Checks of policy files against the config they run with, turning them into the
//! [`PolicySet`] the proxy runs on. Every problem is collected with its position.

use super::file::{
    CacheRuleFile, CascadeFile, JudgesFile, MatchFile, Refusal, RouteFile, RuleFile, Strings,
    TargetFile,
};
use super::judge::{DEFAULT_REFUSALS, Judges, LlmJudge};
use super::load::{PolicyContext, Read};
use super::{
    Action, Balance, CacheRule, Cascade, Cooldown, Match, ModelPattern, PolicySet, Retries,
    Rewrite, Route, Rule, Source, Target,
};
use crate::api::{ApiFormat, Endpoint};
use crate::cache::CacheScope;
use crate::config::Problem;
use regex::Regex;
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Checks every rule of `files` (in name order) together and builds the set.
pub(super) fn check(files: &[Read], ctx: &PolicyContext<'_>) -> Result<PolicySet, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut names: BTreeMap<&str, Source> = BTreeMap::new();
    let mut rules: Vec<(Arc<Rule>, bool)> = Vec::new();
    let mut default: Option<Arc<Rule>> = None;
    for read in files {
        let mut c = Checker {
            ctx,
            file: &read.path,
            problems: &mut problems,
        };
        for spanned in &read.file.rules {
            let r = &spanned.value;
            let name = &r.name.value;
            let source = c.source(&spanned.referenced);
            if name.is_empty() {
                c.bad(&r.name.referenced, "a rule needs a name".into());
            } else if let Some(first) = names.get(name.as_str()) {
                c.bad(
                    &r.name.referenced,
                    format!("rule name {name:?} is already used at {}", at(first)),
                );
            } else {
                names.insert(name, source.clone());
            }
            let before = c.problems.len();
            let rule = Arc::new(c.rule(r, source));
            if r.default.as_ref().is_some_and(|d| d.value) {
                c.default_rule(r, &rule, default.as_deref());
                default.get_or_insert(rule);
            } else {
                // A rule with problems of its own is left out of the shadowing check: its
                // conditions may read broader than they were written.
                rules.push((rule, c.problems.len() == before));
            }
        }
    }
    problems.extend(shadowed(&rules, default.as_deref()));
    if problems.is_empty() {
        Ok(PolicySet::new(
            rules.into_iter().map(|(r, _)| r).collect(),
            default,
        ))
    } else {
        Err(problems)
    }
}

/// `FILE:LINE` of a rule, as other rules' problems name it.
fn at(s: &Source) -> String {
    format!("{}:{}", s.file.display(), s.line)
}

struct Checker<'a> {
    ctx: &'a PolicyContext<'a>,
    file: &'a Path,
    problems: &'a mut Vec<Problem>,
}

/// The API formats a rule takes requests in.
struct Formats {
    /// Each format, with an endpoint of the rule that speaks it.
    each: Vec<(ApiFormat, &'static str)>,
    /// The rule names no endpoint.
    every_endpoint: bool,
}

impl Checker<'_> {
    fn bad(&mut self, loc: &Location, message: String) {
        self.problems.push(Problem::at(self.file, loc, message));
    }

    fn source(&self, loc: &Location) -> Source {
        Source {
            file: self.file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
        }
    }

    fn rule(&mut self, r: &RuleFile, source: Source) -> Rule {
        let name = &r.name.value;
        let matcher = match &r.matcher {
            Some(m) => self.matcher(name, m),
            None => Match::default(),
        };
        let formats = formats(&matcher.endpoints);
        let actions = [
            r.route.as_ref().map(|s| s.referenced),
            r.cascade.as_ref().map(|s| s.referenced),
            r.deny.as_ref().map(|s| s.referenced),
        ];
        if actions.iter().flatten().count() > 1
            && let Some(last) = actions
                .iter()
                .flatten()
                .max_by_key(|l| (l.line(), l.column()))
        {
            self.bad(
                last,
                format!("rule {name:?}: set one of route, cascade and deny, not several"),
            );
        }
        let action = if let Some(route) = &r.route {
            Action::Route(self.route(name, route, &formats))
        } else if let Some(cascade) = &r.cascade {
            Action::Cascade(self.cascade(name, cascade, &formats))
        } else if let Some(deny) = &r.deny {
            if deny.value.trim().is_empty() {
                self.bad(
                    &deny.referenced,
                    format!("rule {name:?}: deny needs the reason shown to the client"),
                );
            }
            Action::Deny(deny.value.clone())
        } else {
            Action::Pass
        };
        let rewrite = self.rewrite(name, r, &action);
        let cache = r.cache.as_ref().map(|c| self.cache(name, c, &action));
        Rule {
            name: name.clone(),
            priority: r.priority,
            source,
            matcher,
            action,
            rewrite,
            cache,
        }
    }

    fn default_rule(&mut self, r: &RuleFile, rule: &Rule, earlier: Option<&Rule>) {
        if let Some(m) = &r.matcher {
            self.bad(
                &m.referenced,
                format!(
                    "rule {:?}: the default rule has no `match`: it applies when no other rule does",
                    rule.name
                ),
            );
        }
        if let (Some(first), Some(d)) = (earlier, &r.default) {
            self.bad(
                &d.referenced,
                format!(
                    "rule {:?}: only one rule may be the default; rule {:?} ({}) is",
                    rule.name,
                    first.name,
                    at(&first.source)
                ),
            );
        }
    }

    fn matcher(&mut self, name: &str, m: &Spanned<MatchFile>) -> Match {
        let f = &m.value;
        let mut list = |field: &str, v: &Option<Strings>| -> Vec<(String, Location)> {
            let Some(v) = v else { return Vec::new() };
            if v.value.is_empty() {
                self.bad(
                    &v.referenced,
                    format!(
                        "rule {name:?}: `{field}: []` matches no request; omit it to match any"
                    ),
                );
            }
            v.value
                .items(&v.referenced)
                .map(|(s, loc)| (s.to_string(), *loc))
                .collect()
        };
        let plain = |v: Vec<(String, Location)>| v.into_iter().map(|(s, _)| s).collect();
        let teams = plain(list("team", &f.team));
        let projects = plain(list("project", &f.project));
        let envs = plain(list("env", &f.env));
        let features = plain(list("feature", &f.feature));
        let users = plain(list("user", &f.user));
        let keys = plain(list("key", &f.key));
        let endpoints = list("endpoint", &f.endpoint);
        let models = list("model", &f.model);

        for (path, loc) in &endpoints {
            if !Endpoint::KNOWN.iter().any(|(_, p)| p == path) {
                self.bad(
                    loc,
                    format!(
                        "rule {name:?}: unknown endpoint {path:?} (known: {})",
                        Endpoint::KNOWN.map(|(_, p)| p).join(", ")
                    ),
                );
            }
        }
        let models = models
            .iter()
            .filter_map(|(text, loc)| match ModelPattern::new(text) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.bad(
                        loc,
                        format!("rule {name:?}: model pattern {text:?} is not a valid glob: {e}"),
                    );
                    None
                }
            })
            .collect();
        let input_tokens = f.input_tokens.as_ref().map(|r| {
            let (lo, hi) = (r.value.min.unwrap_or(0), r.value.max.unwrap_or(u64::MAX));
            if lo > hi {
                self.bad(
                    &r.referenced,
                    format!("rule {name:?}: input_tokens min {lo} is above max {hi}"),
                );
            }
            (lo, hi)
        });
        let not = f.not.as_ref().map(|n| Box::new(self.matcher(name, n)));
        Match {
            teams,
            projects,
            envs,
            features,
            users,
            keys,
            tags: f.tags.as_ref().map(|t| t.value.clone()).unwrap_or_default(),
            endpoints: endpoints.into_iter().map(|(s, _)| s).collect(),
            models,
            stream: f.stream,
            tools: f.tools,
            json: f.json,
            input_tokens,
            not,
        }
    }

    /// A rule without `match.endpoint` needs targets that all speak one API format; it then
    /// takes that format's requests.
    fn common_format(&mut self, name: &str, loc: &Location, targets: &[Target], formats: &Formats) {
        let spoken = [ApiFormat::OpenAi, ApiFormat::Anthropic]
            .into_iter()
            .any(|f| targets.iter().all(|t| t.provider.kind.speaks(f)));
        if formats.every_endpoint && !targets.is_empty() && !spoken {
            self.bad(
                loc,
                format!(
                    "rule {name:?}: its targets speak no API format in common, so no request could use them all; name the endpoints in `match.endpoint`"
                ),
            );
        }
    }

    fn route(&mut self, name: &str, r: &Spanned<RouteFile>, formats: &Formats) -> Route {
        if r.value.targets.is_empty() {
            self.bad(
                &r.referenced,
                format!("rule {name:?}: a route needs at least one target"),
            );
        }
        let targets = r
            .value
            .targets
            .iter()
            .filter_map(|t| self.target(name, t, Some(formats), true))
            .collect::<Vec<_>>();
        self.common_format(name, &r.referenced, &targets, formats);
        let mut retries = Retries::default();
        if let Some(spanned) = &r.value.retries {
            let f = &spanned.value;
            retries.per_target = f.per_target.unwrap_or(retries.per_target);
            if let Some(max) = &f.max_attempts {
                if max.value == 0 {
                    self.bad(
                        &max.referenced,
                        format!("rule {name:?}: max_attempts must be above 0"),
                    );
                }
                retries.max_attempts = max.value;
            }
            if let Some(ms) = f.backoff_ms {
                retries.backoff = Duration::from_millis(ms);
            }
            if let Some(ms) = f.max_wait_ms {
                retries.max_wait = Duration::from_millis(ms);
            }
        }
        let balance = if r.value.loadbalance {
            Some(Balance {
                sticky: r.value.sticky,
            })
        } else {
            if r.value.sticky {
                self.bad(
                    &r.referenced,
                    format!("rule {name:?}: `sticky` needs `loadbalance: true`"),
                );
            }
            None
        };
        let cooldown = r.value.cooldown.as_ref().map(|c| {
            let failures = c.value.failures.as_ref().map_or(3, |f| f.value);
            let seconds = c.value.seconds.as_ref().map_or(30, |s| s.value);
            if failures == 0 || seconds == 0 {
                self.bad(
                    &c.referenced,
                    format!("rule {name:?}: cooldown failures and seconds must be above 0"),
                );
            }
            Cooldown {
                failures,
                period: Duration::from_secs(seconds),
            }
        });
        Route {
            targets,
            retries,
            balance,
            cooldown,
        }
    }

    fn cascade(&mut self, name: &str, c: &Spanned<CascadeFile>, formats: &Formats) -> Cascade {
        let f = &c.value;
        if f.steps.len() < 2 {
            self.bad(
                &c.referenced,
                format!(
                    "rule {name:?}: a cascade needs at least 2 steps (it has {}); use route for one",
                    f.steps.len()
                ),
            );
        }
        let steps: Vec<Target> = f
            .steps
            .iter()
            .filter_map(|t| self.target(name, t, Some(formats), false))
            .collect();
        self.common_format(name, &c.referenced, &steps, formats);
        let judges = self.judges(name, &f.judges);
        let judged_calls = if judges.llm.is_some() {
            f.steps.len().saturating_sub(1)
        } else {
            0
        };
        let max_attempts = match &f.max_attempts {
            Some(m) if m.value == 0 => {
                self.bad(
                    &m.referenced,
                    format!("rule {name:?}: max_attempts must be above 0"),
                );
                0
            }
            Some(m) => m.value,
            None => u32::try_from(f.steps.len() + judged_calls).unwrap_or(u32::MAX),
        };
        let deadline = f.deadline_ms.as_ref().map(|d| {
            if d.value == 0 {
                self.bad(
                    &d.referenced,
                    format!("rule {name:?}: deadline_ms must be above 0"),
                );
            }
            Duration::from_millis(d.value)
        });
        Cascade {
            steps,
            judges,
            max_attempts,
            deadline,
        }
    }

    fn judges(&mut self, name: &str, j: &Spanned<JudgesFile>) -> Judges {
        let f = &j.value;
        let refusal = match f.refusal.as_ref() {
            None
            | Some(Spanned {
                value: Refusal::On(false),
                ..
            }) => None,
            Some(Spanned {
                value: Refusal::On(true),
                ..
            }) => Some(
                DEFAULT_REFUSALS
                    .iter()
                    .map(|p| Regex::new(p).expect("the built-in refusal patterns compile"))
                    .collect(),
            ),
            Some(Spanned {
                value: Refusal::Patterns(list),
                referenced,
                ..
            }) => {
                if list.is_empty() {
                    self.bad(
                        referenced,
                        format!(
                            "rule {name:?}: `refusal: []` judges nothing; use true for the built-in patterns"
                        ),
                    );
                }
                Some(
                    list.iter()
                        .filter_map(|p| self.regex(name, "refusal pattern", p))
                        .collect(),
                )
            }
        };
        let (min_chars, max_chars) = match &f.length {
            Some(l) => {
                let (lo, hi) = (l.value.min_chars, l.value.max_chars);
                match (lo, hi) {
                    (None, None) => self.bad(
                        &l.referenced,
                        format!("rule {name:?}: length needs min_chars or max_chars"),
                    ),
                    (Some(lo), Some(hi)) if lo > hi => self.bad(
                        &l.referenced,
                        format!("rule {name:?}: length min_chars {lo} is above max_chars {hi}"),
                    ),
                    _ => {}
                }
                (lo, hi)
            }
            None => (None, None),
        };
        let min_mean_logprob = f.logprob.as_ref().map(|l| {
            let m = &l.value.min_mean;
            if !m.value.is_finite() || m.value > 0.0 {
                self.bad(
                    &m.referenced,
                    format!(
                        "rule {name:?}: logprob min_mean must be a number at most 0 (logprobs are never positive), not {}",
                        m.value
                    ),
                );
            }
            m.value
        });
        let llm = f.llm.as_ref().and_then(|l| {
            let lf = &l.value;
            let as_target = TargetFile {
                provider: lf.provider.clone(),
                model: lf.model.clone(),
                timeout_ms: None,
                weight: None,
            };
            let target = self.target(
                name,
                &Spanned::new(as_target, l.referenced, l.defined),
                None,
                false,
            );
            if lf.prompt.value.trim().is_empty() {
                self.bad(
                    &lf.prompt.referenced,
                    format!("rule {name:?}: the llm judge needs a prompt"),
                );
            }
            let accept = match &lf.accept {
                Some(a) => self.regex(name, "accept pattern", a),
                None => {
                    Some(Regex::new(r"(?i)^\s*pass").expect("the default accept pattern compiles"))
                }
            };
            Some(LlmJudge {
                target: target?,
                prompt: lf.prompt.value.clone(),
                accept: accept?,
            })
        });
        let judges = Judges {
            finish: f.finish,
            refusal,
            json: f.json,
            tool_args: f.tool_args,
            min_chars,
            max_chars,
            min_mean_logprob,
            llm,
        };
        let any = f.finish
            || f.refusal
                .as_ref()
                .is_some_and(|r| !matches!(r.value, Refusal::On(false)))
            || f.json
            || f.tool_args
            || f.length.is_some()
            || f.logprob.is_some()
            || f.llm.is_some();
        if !any {
            self.bad(
                &j.referenced,
                format!("rule {name:?}: a cascade needs at least one judge"),
            );
        }
        judges
    }

    fn regex(&mut self, name: &str, what: &str, p: &Spanned<String>) -> Option<Regex> {
        Regex::new(&p.value)
            .map_err(|e| {
                // The regex error spans several lines; its last names the cause.
                let cause = e.to_string();
                let cause = cause.lines().last().unwrap_or_default().trim();
                let cause = cause.strip_prefix("error: ").unwrap_or(cause).to_string();
                self.bad(
                    &p.referenced,
                    format!(
                        "rule {name:?}: {what} {:?} is not a valid regex: {cause}",
                        p.value
                    ),
                );
            })
            .ok()
    }

    /// Resolves a target. `formats` is `None` for a judge's own call, which Tollgate makes
    /// itself; `weighted` for route targets.
    fn target(
        &mut self,
        name: &str,
        t: &Spanned<TargetFile>,
        formats: Option<&Formats>,
        weighted: bool,
    ) -> Option<Target> {
        let f = &t.value;
        let model = &f.model.value;
        let (provider, upstream) = match &f.provider {
            Some(p) => match self.ctx.providers.get(&p.value) {
                Some(provider) => (provider.clone(), model.clone()),
                None => {
                    if !self.ctx.skipped_providers.contains(&p.value) {
                        let known: Vec<&str> =
                            self.ctx.providers.keys().map(String::as_str).collect();
                        self.bad(
                            &p.referenced,
                            format!(
                                "rule {name:?}: provider {:?} is not defined in tollgate.yaml (defined: {})",
                                p.value,
                                known.join(", ")
                            ),
                        );
                    }
                    return None;
                }
            },
            None => match self.ctx.models.route(model) {
                Some(r) => (
                    r.provider.clone(),
                    r.upstream_model.clone().unwrap_or_else(|| model.clone()),
                ),
                None => {
                    if !self.skipped_model(model) {
                        self.bad(
                            &f.model.referenced,
                            format!(
                                "rule {name:?}: model {model:?} names no provider and is not in the `models` table of tollgate.yaml"
                            ),
                        );
                    }
                    return None;
                }
            },
        };
        let target = Target {
            provider,
            model: upstream,
            timeout: f.timeout_ms.as_ref().map(|ms| {
                if ms.value == 0 {
                    self.bad(
                        &ms.referenced,
                        format!("rule {name:?}: timeout_ms must be above 0"),
                    );
                }
                Duration::from_millis(ms.value)
            }),
            weight: f.weight.as_ref().map_or(1, |w| w.value),
        };
        if let Some(w) = &f.weight {
            if !weighted {
                self.bad(
                    &w.referenced,
                    format!("rule {name:?}: weight applies to route targets only"),
                );
            } else if w.value == 0 {
                self.bad(
                    &w.referenced,
                    format!("rule {name:?}: weight must be at least 1"),
                );
            }
        }
        if self
            .ctx
            .prices
            .lookup(&target.model, self.ctx.now)
            .is_none()
        {
            self.bad(
                &f.model.referenced,
                format!(
                    "rule {name:?}: target {} has no price; add it to a price file (a plan's cost, savings and budgets need every target's price)",
                    target.label()
                ),
            );
        }
        // A rule that names no endpoint takes the requests its targets can answer (see
        // `Rule::serves`); the targets' common format is checked once they are all known.
        let each = formats
            .filter(|f| !f.every_endpoint)
            .map_or(&[][..], |f| &f.each[..]);
        for (format, endpoint) in each {
            if !target.provider.kind.speaks(*format) {
                self.bad(
                    &t.referenced,
                    format!(
                        "rule {name:?}: target {} does not speak the {} API of {endpoint}",
                        target.label(),
                        format_name(*format),
                    ),
                );
                break;
            }
        }
        Some(target)
    }

    /// Whether `model` routes through a `models` entry whose provider has problems of its own.
    fn skipped_model(&self, model: &str) -> bool {
        self.ctx
            .skipped_models
            .iter()
            .any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }

    fn cache(&mut self, name: &str, c: &Spanned<CacheRuleFile>, action: &Action) -> CacheRule {
        let f = &c.value;
        if matches!(action, Action::Deny(_)) {
            self.bad(
                &c.referenced,
                format!("rule {name:?}: a deny rule gets no answer, so it caches nothing"),
            );
        }
        let scope = match &f.scope {
            None => CacheScope::Key,
            Some(s) => CacheScope::parse(&s.value).unwrap_or_else(|| {
                self.bad(
                    &s.referenced,
                    format!(
                        "rule {name:?}: unknown cache scope {:?} (expected key, team or global)",
                        s.value
                    ),
                );
                CacheScope::Key
            }),
        };
        let ttl = f.ttl_secs.as_ref().map(|t| {
            if t.value == 0 {
                self.bad(
                    &t.referenced,
                    format!("rule {name:?}: cache ttl_secs must be above 0"),
                );
            }
            Duration::from_secs(t.value)
        });
        CacheRule {
            scope,
            ttl,
            nondeterministic: f.nondeterministic,
        }
    }

    fn rewrite(&mut self, name: &str, r: &RuleFile, action: &Action) -> Rewrite {
        let Some(spanned) = &r.rewrite else {
            return Rewrite::default();
        };
        let f = &spanned.value;
        if matches!(action, Action::Deny(_)) {
            self.bad(
                &spanned.referenced,
                format!(
                    "rule {name:?}: a deny rule sends nothing upstream, so it rewrites nothing"
                ),
            );
        }
        if let Some(m) = f.max_tokens.as_ref().filter(|m| m.value == 0) {
            self.bad(
                &m.referenced,
                format!("rule {name:?}: max_tokens must be above 0"),
            );
        }
        if let Some(m) = &f.model
            && matches!(action, Action::Pass)
            && self.ctx.models.route(&m.value).is_none()
            && !self.skipped_model(&m.value)
        {
            self.bad(
                &m.referenced,
                format!(
                    "rule {name:?}: rewrite model {:?} is not in the `models` table of tollgate.yaml",
                    m.value
                ),
            );
        }
        Rewrite {
            max_tokens: f.max_tokens.as_ref().map(|m| m.value),
            model: f.model.as_ref().map(|m| m.value.clone()),
        }
    }
}

fn format_name(f: ApiFormat) -> &'static str {
    match f {
        ApiFormat::OpenAi => "OpenAI",
        ApiFormat::Anthropic => "Anthropic",
    }
}

/// The formats of a rule's endpoints, one endpoint named for each; every known endpoint's
/// when it names none.
fn formats(endpoints: &[String]) -> Formats {
    let none = http::HeaderMap::new();
    let mut out = Formats {
        each: Vec::new(),
        every_endpoint: endpoints.is_empty(),
    };
    for (endpoint, path) in Endpoint::KNOWN {
        if !(out.every_endpoint || endpoints.iter().any(|e| e == path)) {
            continue;
        }
        let format = endpoint.format(&none);
        if !out.each.iter().any(|(f, _)| *f == format) {
            out.each.push((format, path));
        }
    }
    out
}

/// Rules that can never match: an earlier rule (in the order they are tried) matches every
/// request they do. Conservative: only reported when that is certain from the conditions.
fn shadowed(rules: &[(Arc<Rule>, bool)], default: Option<&Rule>) -> Vec<Problem> {
    let mut ordered: Vec<&Rule> = rules
        .iter()
        .filter(|(_, clean)| *clean)
        .map(|(r, _)| &**r)
        .collect();
    // As `PolicySet::new` orders them: stable, so ties keep file-name and file order.
    ordered.sort_by_key(|r| std::cmp::Reverse(r.priority));
    let mut problems = Vec::new();
    let everything = Match::default();
    let later = ordered
        .iter()
        .enumerate()
        .map(|(i, r)| (&ordered[..i], *r, &r.matcher))
        .chain(default.map(|d| (&ordered[..], d, &everything)));
    for (earlier, rule, matcher) in later {
        if let Some(by) = earlier.iter().find(|e| covers(&e.matcher, matcher)) {
            problems.push(Problem {
                file: rule.source.file.clone(),
                line: rule.source.line,
                column: rule.source.column,
                message: format!(
                    "rule {:?} can never match: rule {:?} ({}) matches every request it does",
                    rule.name,
                    by.name,
                    at(&by.source)
                ),
            });
        }
    }
    problems
}

/// Whether every request `x` matches is matched by `y`, judged field by field.
fn covers(y: &Match, x: &Match) -> bool {
    fn list(y: &[String], x: &[String]) -> bool {
        y.is_empty() || (!x.is_empty() && x.iter().all(|v| y.contains(v)))
    }
    fn flag(y: Option<bool>, x: Option<bool>) -> bool {
        y.is_none() || y == x
    }
    let models = y.models.is_empty()
        || (!x.models.is_empty()
            && x.models
                .iter()
                .all(|xm| y.models.iter().any(|ym| pattern_covers(ym, xm))));
    let tokens = match (y.input_tokens, x.input_tokens) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((ylo, yhi)), Some((xlo, xhi))) => ylo <= xlo && xhi <= yhi,
    };
    // A `not` of `y` could exclude some of `x`'s requests; not worth deciding.
    y.not.is_none()
        && list(&y.teams, &x.teams)
        && list(&y.projects, &x.projects)
        && list(&y.envs, &x.envs)
        && list(&y.features, &x.features)
        && list(&y.users, &x.users)
        && list(&y.keys, &x.keys)
        && list(&y.endpoints, &x.endpoints)
        && y.tags.iter().all(|(k, v)| x.tags.get(k) == Some(v))
        && models
        && flag(y.stream, x.stream)
        && flag(y.tools, x.tools)
        && flag(y.json, x.json)
        && tokens
}

/// Whether pattern `y` matches every model name pattern `x` does.
fn pattern_covers(y: &ModelPattern, x: &ModelPattern) -> bool {
    if y.text == x.text {
        return true;
    }
    if x.is_literal() {
        return y.matches(&x.text);
    }
    // `x` is a glob: every name it matches starts with its text up to the first glob
    // character, so a plain `prefix*` covers it when that text starts with the prefix.
    let x_fixed = &x.text[..x.text.find(['*', '?', '[']).unwrap_or(x.text.len())];
    match y.text.strip_suffix('*') {
        Some(prefix) if !prefix.contains(['*', '?', '[']) => x_fixed.starts_with(prefix),
        _ => false,
    }
}
