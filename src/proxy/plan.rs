//! Planning: the matching policy rule turns an admitted request into an ordered list of
//! upstream targets, with the rules for moving from one to the next.

use super::RequestCtx;
use super::admit::Admitted;
use crate::api::ApiFormat;
use crate::attribution::Attribution;
use crate::config::Validated;
use crate::error::ProxyError;
use crate::policy::{Action, Balance, Cooldown, Facts, Judges, Retries, Rule, Target};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// How a request reaches its answer.
pub struct Plan {
    /// The rule that made the plan, if any.
    pub rule: Option<Arc<Rule>>,
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub retries: Retries,
    /// Cap on the request's output tokens set by the rule.
    pub max_tokens: Option<u64>,
    /// Take failing targets out of rotation (see `health`).
    pub cooldown: Option<Cooldown>,
    /// The model the client's request would have gone to without the rule: the one it
    /// asked for when that is a model of the `models` table, else the plan's last target.
    pub counterfactual_model: String,
}

pub enum Mode {
    /// Try targets in order until one answers.
    Route,
    /// Hold and judge each answer but the last.
    Cascade { deadline: Option<Duration> },
}

impl Plan {
    pub fn judges(&self) -> Option<&Judges> {
        match self.rule.as_deref().map(|r| &r.action) {
            Some(Action::Cascade(c)) => Some(&c.judges),
            _ => None,
        }
    }

    pub fn policy_name(&self) -> &str {
        self.rule.as_deref().map_or("", |r| r.name.as_str())
    }
}

/// Chooses the plan for `req`. A denying rule, or a model nothing routes, is an error
/// the client receives.
pub fn make(cfg: &Validated, ctx: &RequestCtx, req: &Admitted) -> Result<Plan, ProxyError> {
    let Some(model) = req.model.as_deref() else {
        // Paths without a model (model lists, files…) go to a provider of their format.
        let provider = cfg
            .providers
            .values()
            .find(|p| p.kind.speaks(ctx.format))
            .cloned()
            .ok_or_else(|| ProxyError::NotFound(ctx.endpoint.clone()))?;
        return Ok(single(Target {
            provider,
            model: String::new(),
            timeout: None,
            weight: 1,
        }));
    };
    let estimate = || req.estimated_input_tokens();
    let facts = Facts {
        format: ctx.format,
        attribution: &ctx.attribution,
        endpoint: &ctx.endpoint,
        model,
        stream: req.stream,
        tools: req.tools,
        json: req.json,
        input_tokens: &estimate,
    };
    let rule = cfg.policies.find(&facts).cloned();
    build(cfg, ctx, model, rule)
}

/// The plan of the rule named `name` for `req`, whatever the request matches: a budget's
/// downgrade. Planned as the request's own rule would be.
pub fn with_rule(
    cfg: &Validated,
    ctx: &RequestCtx,
    req: &Admitted,
    name: &str,
) -> Result<Plan, ProxyError> {
    let rule = cfg.policies.rules().find(|r| r.name == name).cloned();
    match (req.model.as_deref(), rule) {
        (Some(model), Some(rule)) => build(cfg, ctx, model, Some(rule)),
        // A reload removed the rule, or the request names no model: plan as usual.
        _ => make(cfg, ctx, req),
    }
}

fn build(
    cfg: &Validated,
    ctx: &RequestCtx,
    model: &str,
    rule: Option<Arc<Rule>>,
) -> Result<Plan, ProxyError> {
    let routed_model = rule
        .as_deref()
        .and_then(|r| r.rewrite.model.as_deref())
        .unwrap_or(model);
    let from_table = || -> Result<Target, ProxyError> {
        let route = cfg
            .models
            .route(routed_model)
            .ok_or_else(|| ProxyError::UnknownModel(routed_model.to_string()))?;
        if !route.provider.kind.speaks(ctx.format) {
            return Err(ProxyError::BadRequest(format!(
                "model `{routed_model}` is served by provider `{}`, which does not speak the {} API",
                route.provider.name,
                format_name(ctx.format)
            )));
        }
        Ok(Target {
            provider: route.provider.clone(),
            model: route
                .upstream_model
                .clone()
                .unwrap_or_else(|| routed_model.to_string()),
            timeout: None,
            weight: 1,
        })
    };
    let mut plan = match rule.as_deref().map(|r| &r.action) {
        None | Some(Action::Pass) => single(from_table()?),
        Some(Action::Deny(reason)) => {
            return Err(ProxyError::PolicyDenied {
                policy: rule.as_deref().map(|r| r.name.clone()).unwrap_or_default(),
                reason: reason.clone(),
            });
        }
        Some(Action::Route(r)) => Plan {
            targets: match r.balance {
                Some(b) => balanced(&r.targets, b, &ctx.attribution),
                None => r.targets.clone(),
            },
            retries: r.retries.clone(),
            cooldown: r.cooldown,
            ..single_empty()
        },
        Some(Action::Cascade(c)) => Plan {
            targets: c.steps.clone(),
            mode: Mode::Cascade {
                deadline: c.deadline,
            },
            retries: Retries {
                max_attempts: c.max_attempts,
                ..Retries::default()
            },
            ..single_empty()
        },
    };
    // A target that cannot speak the client's format is never tried; checking policies
    // reports it, so this only guards a config changed under a running request.
    plan.targets.retain(|t| t.provider.kind.speaks(ctx.format));
    let Some(last) = plan.targets.last() else {
        return Err(ProxyError::BadRequest(format!(
            "no target of this route speaks the {} API",
            format_name(ctx.format)
        )));
    };
    plan.counterfactual_model = match cfg.models.route(model) {
        Some(route) => route
            .upstream_model
            .clone()
            .unwrap_or_else(|| model.to_string()),
        None => last.model.clone(),
    };
    plan.max_tokens = rule.as_deref().and_then(|r| r.rewrite.max_tokens);
    plan.rule = rule;
    Ok(plan)
}

pub fn format_name(format: ApiFormat) -> &'static str {
    match format {
        ApiFormat::Anthropic => "Anthropic Messages",
        ApiFormat::OpenAi => "OpenAI",
    }
}

fn single(target: Target) -> Plan {
    Plan {
        counterfactual_model: target.model.clone(),
        targets: vec![target],
        ..single_empty()
    }
}

fn single_empty() -> Plan {
    Plan {
        rule: None,
        targets: Vec::new(),
        mode: Mode::Route,
        retries: Retries::default(),
        max_tokens: None,
        cooldown: None,
        counterfactual_model: String::new(),
    }
}

/// The targets with the first pick drawn by weight (the rest follow in order, as
/// fallbacks). Sticky picks hash the user, else the virtual key, so a caller keeps its
/// target across requests.
fn balanced(targets: &[Target], balance: Balance, who: &Attribution) -> Vec<Target> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    let caller = if who.user.is_empty() {
        &who.key_name
    } else {
        &who.user
    };
    let mut point = if balance.sticky && !caller.is_empty() {
        let mut h = std::hash::DefaultHasher::new();
        caller.hash(&mut h);
        h.finish() % total.max(1)
    } else {
        rand::random_range(0..total.max(1))
    };
    let first = targets
        .iter()
        .position(|t| {
            let w = u64::from(t.weight);
            if point < w {
                return true;
            }
            point -= w;
            false
        })
        .unwrap_or(0);
    let mut out = Vec::with_capacity(targets.len());
    out.push(targets[first].clone());
    out.extend(
        targets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, t)| t.clone()),
    );
    out
}
