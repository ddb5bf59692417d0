//! The policy file format (`policies/*.yaml`), as written; checked by `validate`.
//!
//! Every value a check may complain about is [`Spanned`], so its problem names the line and
//! column it was written at.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::fmt;

/// One policy file: a list of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rules: Vec<Spanned<RuleFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique across the whole policy directory; shown in records, logs and headers.
    pub name: Spanned<String>,
    /// Higher is tried first; ties go in file-name order, then in file order.
    #[serde(default)]
    pub priority: i64,
    /// The rule that applies when no other matches: at most one in the set, without `match`.
    #[serde(default)]
    pub default: Option<Spanned<bool>>,
    /// When the rule applies; omitted, it applies to every request.
    #[serde(default, rename = "match")]
    pub matcher: Option<Spanned<MatchFile>>,
    /// Send the request to these targets, in order, until one answers.
    #[serde(default)]
    pub route: Option<Spanned<RouteFile>>,
    /// Try models cheapest first, judging each answer but the last.
    #[serde(default)]
    pub cascade: Option<Spanned<CascadeFile>>,
    /// Refuse the request with this reason.
    #[serde(default)]
    pub deny: Option<Spanned<String>>,
    /// Edit the request before it is sent (with any action but `deny`).
    #[serde(default)]
    pub rewrite: Option<Spanned<RewriteFile>>,
    /// Serve repeated requests from the response cache (`cache.enabled` in tollgate.yaml).
    #[serde(default)]
    pub cache: Option<Spanned<CacheRuleFile>>,
}

/// Which of a rule's requests share cached answers, and for how long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRuleFile {
    /// Who shares an entry: `key` (the same virtual key), `team` or `global`; `key` when
    /// omitted.
    #[serde(default)]
    pub scope: Option<Spanned<String>>,
    /// How long an answer is kept; the config's `cache.ttl_secs` when omitted.
    #[serde(default)]
    pub ttl_secs: Option<Spanned<u64>>,
    /// Cache answers to requests that do not pin sampling (temperature above 0 without a
    /// seed, or several choices) too: repeats then get the first answer again.
    #[serde(default)]
    pub nondeterministic: bool,
}

/// Conditions on a request; all must hold. A list holds when any of its values does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Attribution of the request (its virtual key or `x-tollgate-*` headers).
    #[serde(default)]
    pub team: Option<Strings>,
    #[serde(default)]
    pub project: Option<Strings>,
    #[serde(default)]
    pub env: Option<Strings>,
    #[serde(default)]
    pub feature: Option<Strings>,
    #[serde(default)]
    pub user: Option<Strings>,
    /// Name of the virtual key.
    #[serde(default)]
    pub key: Option<Strings>,
    /// Every tag listed is present with this value.
    #[serde(default)]
    pub tags: Option<Spanned<BTreeMap<String, String>>>,
    /// Request path, one of Tollgate's known endpoints (`/v1/chat/completions`, ...).
    #[serde(default)]
    pub endpoint: Option<Strings>,
    /// The model asked for: exact, or a glob (`gpt-4o*`).
    #[serde(default)]
    pub model: Option<Strings>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// The request offers tools.
    #[serde(default)]
    pub tools: Option<bool>,
    /// JSON mode or a JSON schema was asked for.
    #[serde(default)]
    pub json: Option<bool>,
    /// Estimated input tokens, inclusive bounds.
    #[serde(default)]
    pub input_tokens: Option<Spanned<TokenRange>>,
    /// A nested match that must not hold.
    #[serde(default)]
    pub not: Option<Box<Spanned<MatchFile>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRange {
    /// 0 when omitted.
    #[serde(default)]
    pub min: Option<u64>,
    /// Unbounded when omitted.
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Tried in order; with `loadbalance`, `weight` spreads first picks among them.
    pub targets: Vec<Spanned<TargetFile>>,
    #[serde(default)]
    pub retries: Option<Spanned<RetriesFile>>,
    /// Pick the first target by weight (the others follow in order as fallbacks).
    #[serde(default)]
    pub loadbalance: bool,
    /// With `loadbalance`: the same user (else the same virtual key) always gets the same
    /// first pick, for A/B splits.
    #[serde(default)]
    pub sticky: bool,
    /// Take a failing target out of rotation, and probe it back.
    #[serde(default)]
    pub cooldown: Option<Spanned<CooldownFile>>,
}

/// A target that fails `failures` calls in a row is tried last for `seconds`; then one
/// request probes it, and its success puts it back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CooldownFile {
    /// 3 when omitted.
    #[serde(default)]
    pub failures: Option<Spanned<u32>>,
    /// 30 when omitted.
    #[serde(default)]
    pub seconds: Option<Spanned<u64>>,
}

/// A provider and the model it is sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// A provider of `tollgate.yaml`; omitted, the `models` table names it (and may rename
    /// the model sent upstream).
    #[serde(default)]
    pub provider: Option<Spanned<String>>,
    pub model: Spanned<String>,
    /// Time for this target to answer; the provider's `read_timeout_ms` when omitted.
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u64>>,
    /// Share of first picks (route targets only), at least 1; 1 when omitted.
    #[serde(default)]
    pub weight: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    /// Extra tries of one target before the next; 0 when omitted.
    #[serde(default)]
    pub per_target: Option<u32>,
    /// Upstream calls of the whole route, at most; 8 when omitted.
    #[serde(default)]
    pub max_attempts: Option<Spanned<u32>>,
    /// First pause between tries of a target, doubled each time; 200 when omitted.
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// A `retry-after` longer than this moves on instead of waiting; 5000 when omitted.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeFile {
    /// Cheapest first; at least two.
    pub steps: Vec<Spanned<TargetFile>>,
    /// What an answer must pass to be released; at least one judge.
    pub judges: Spanned<JudgesFile>,
    /// Upstream calls of the whole cascade, judges' included; by default one per step plus
    /// one per LLM judging.
    #[serde(default)]
    pub max_attempts: Option<Spanned<u32>>,
    /// Time for the whole cascade: a step before the last that has not answered by then is
    /// left, and once it passes the next step is the last.
    #[serde(default)]
    pub deadline_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgesFile {
    /// The answer was not cut short (length, content filter, refusal stop).
    #[serde(default)]
    pub finish: bool,
    /// `true` for the built-in refusal openings, or a list of regexes.
    #[serde(default)]
    pub refusal: Option<Spanned<Refusal>>,
    /// When JSON was asked for, the answer parses and fits its schema.
    #[serde(default)]
    pub json: bool,
    /// Tool-call arguments parse and fit the tool's parameters.
    #[serde(default)]
    pub tool_args: bool,
    /// Characters of answer text.
    #[serde(default)]
    pub length: Option<Spanned<LengthFile>>,
    /// Mean token logprob of the answer.
    #[serde(default)]
    pub logprob: Option<Spanned<LogprobFile>>,
    /// A grading call to another model.
    #[serde(default)]
    pub llm: Option<Spanned<LlmJudgeFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthFile {
    #[serde(default)]
    pub min_chars: Option<usize>,
    #[serde(default)]
    pub max_chars: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogprobFile {
    /// At most 0: logprobs are never positive.
    pub min_mean: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmJudgeFile {
    /// As in a target: omitted, the `models` table names it.
    #[serde(default)]
    pub provider: Option<Spanned<String>>,
    pub model: Spanned<String>,
    /// Grading instructions; the request and the answer are appended.
    pub prompt: Spanned<String>,
    /// Regex the grader's reply must match for the answer to pass; `(?i)^\s*pass` when
    /// omitted.
    #[serde(default)]
    pub accept: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    /// Lower the request's `max_tokens` to this, or set it when absent; above 0.
    #[serde(default)]
    pub max_tokens: Option<Spanned<u64>>,
    /// Send this model instead of the one asked for.
    #[serde(default)]
    pub model: Option<Spanned<String>>,
}

/// `refusal: true` (built-in patterns), `false` (off), or a list of regexes.
#[derive(Debug)]
pub enum Refusal {
    On(bool),
    Patterns(Vec<Spanned<String>>),
}

/// A string or a list of strings, with positions.
pub type Strings = Spanned<OneOrMany>;

/// Strings written alone or as a list.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl OneOrMany {
    /// Each value with its position; a value written alone has the position of the field.
    pub fn items<'a>(
        &'a self,
        field: &'a Location,
    ) -> Box<dyn Iterator<Item = (&'a str, &'a Location)> + 'a> {
        match self {
            OneOrMany::One(v) => Box::new(std::iter::once((v.as_str(), field))),
            OneOrMany::Many(vs) => Box::new(vs.iter().map(|s| (s.value.as_str(), &s.referenced))),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, OneOrMany::Many(v) if v.is_empty())
    }
}

// Hand-written rather than `#[serde(untagged)]`: untagged enums buffer their input, which
// loses the positions of the list's items.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                // YAML reads `no`, `y` or `1` as a boolean or number, not as a name.
                f.write_str("a string or a list of strings (quote names such as \"no\" or \"1\")")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Refusal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Refusal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or a list of regexes")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Refusal::On(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Refusal::Patterns(out))
            }
        }
        d.deserialize_any(V)
    }
}
