//! Judges: the checks a held cascade answer must pass before it is released.

use super::Target;
use crate::answer::{Answer, Finish};
use regex::Regex;
use serde_json::Value;

/// The checks of a cascade, each off unless configured.
#[derive(Debug, Default)]
pub struct Judges {
    /// The answer was not cut short: OpenAI `finish_reason` not `length` or
    /// `content_filter`; Anthropic `stop_reason` not `max_tokens` or `refusal`.
    pub finish: bool,
    /// Patterns that mark a refusal; `None` when the judge is off.
    pub refusal: Option<Vec<Regex>>,
    /// When JSON was asked for, the answer parses (and fits the schema when one was given).
    pub json: bool,
    /// Tool-call arguments parse and fit the tool's parameter schema.
    pub tool_args: bool,
    /// Length of the answer's text, in characters.
    pub min_chars: Option<usize>,
    pub max_chars: Option<usize>,
    /// Mean token logprob at least this; Tollgate asks for logprobs when set.
    pub min_mean_logprob: Option<f64>,
    /// A grading call to another model.
    pub llm: Option<LlmJudge>,
}

/// A model asked to grade the answer.
#[derive(Debug)]
pub struct LlmJudge {
    pub target: Target,
    /// The grading instructions; the request and the answer are appended.
    pub prompt: String,
    /// The grader's reply must match this for the answer to pass.
    pub accept: Regex,
}

/// The refusal openings used when a rule turns the refusal judge on without patterns.
pub const DEFAULT_REFUSALS: &[&str] = &[
    r"(?i)^\s*(i'm|i am) sorry,? but i (can't|cannot|won't)",
    r"(?i)^\s*i (can't|cannot|won't) (help|assist) with",
    r"(?i)^\s*(sorry|unfortunately),? i (can't|cannot)",
    r"(?i)^\s*as an ai\b",
];

/// What the request asked of the answer, read from its body when a cascade judges.
#[derive(Debug, Default)]
pub struct Ask {
    pub json: JsonAsk,
    /// Each tool's name and parameter schema.
    pub tools: Vec<(String, Value)>,
    /// Logprobs were asked for (by the client, or for the logprob judge).
    pub logprobs: bool,
}

#[derive(Debug, Default)]
pub enum JsonAsk {
    #[default]
    None,
    /// JSON mode: any JSON object.
    Object,
    /// Structured output against this schema.
    Schema(Value),
}

impl Ask {
    /// Reads JSON mode, a JSON schema and the tools from a request body of any format:
    /// OpenAI `response_format` (chat) or `text.format` (responses), OpenAI `tools[].function`
    /// or `tools[]` (responses), Anthropic `tools[].input_schema`.
    pub fn from_body(body: &Value) -> Ask {
        let format = body
            .get("response_format")
            .or_else(|| body.get("text").and_then(|t| t.get("format")));
        let json = match format.and_then(|f| f["type"].as_str()) {
            Some("json_object") => JsonAsk::Object,
            Some("json_schema") => {
                let f = format.expect("the type was read from it");
                let schema = f["json_schema"]["schema"].clone();
                let schema = if schema.is_null() {
                    f["schema"].clone()
                } else {
                    schema
                };
                JsonAsk::Schema(schema)
            }
            _ => JsonAsk::None,
        };
        let tools = body["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let f = t.get("function").unwrap_or(t);
                let name = f["name"].as_str()?.to_string();
                let schema = [&f["parameters"], &t["input_schema"]]
                    .into_iter()
                    .find(|s| !s.is_null())
                    .cloned()
                    .unwrap_or(Value::Bool(true));
                Some((name, schema))
            })
            .collect();
        Ask {
            json,
            tools,
            logprobs: false,
        }
    }
}

/// Why a judge rejected an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The judge's name, as recorded: `finish`, `refusal`, `json`, `tool_args`, `length`,
    /// `logprob`, `llm`.
    pub judge: &'static str,
    pub reason: String,
}

impl Rejection {
    fn by(judge: &'static str, reason: impl Into<String>) -> Rejection {
        Rejection {
            judge,
            reason: reason.into(),
        }
    }
}

impl Judges {
    /// Runs the local judges (all but the LLM judge, which is a call of its own) in a fixed
    /// order; the first that rejects decides.
    pub fn check(&self, answer: &Answer, ask: &Ask) -> Result<(), Rejection> {
        if self.finish {
            match &answer.finish {
                Finish::Length => {
                    return Err(Rejection::by(
                        "finish",
                        "the answer was cut at its length limit",
                    ));
                }
                Finish::ContentFilter => {
                    return Err(Rejection::by(
                        "finish",
                        "the answer was withheld by a content filter",
                    ));
                }
                Finish::Refusal => return Err(Rejection::by("finish", "the model refused")),
                _ => {}
            }
        }
        if let Some(patterns) = &self.refusal {
            if answer.refusal.is_some() {
                return Err(Rejection::by("refusal", "the model refused"));
            }
            if let Some(p) = patterns.iter().find(|p| p.is_match(&answer.text)) {
                return Err(Rejection::by(
                    "refusal",
                    format!("the answer matches refusal pattern {}", p.as_str()),
                ));
            }
        }
        if self.json {
            check_json(answer, &ask.json)?;
        }
        if self.tool_args {
            check_tool_args(answer, &ask.tools)?;
        }
        let chars = answer.text.chars().count();
        if let Some(min) = self.min_chars
            && chars < min
            && answer.tool_calls.is_empty()
        {
            return Err(Rejection::by(
                "length",
                format!("{chars} characters, fewer than {min}"),
            ));
        }
        if let Some(max) = self.max_chars
            && chars > max
        {
            return Err(Rejection::by(
                "length",
                format!("{chars} characters, more than {max}"),
            ));
        }
        if let Some(min) = self.min_mean_logprob {
            match answer.mean_logprob() {
                Some(mean) if mean < min => {
                    return Err(Rejection::by(
                        "logprob",
                        format!("mean token logprob {mean:.3} is below {min}"),
                    ));
                }
                Some(_) => {}
                // Only OpenAI chat has logprobs; elsewhere the judge has nothing to weigh.
                None if ask.logprobs => {
                    return Err(Rejection::by("logprob", "the answer carries no logprobs"));
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn check_json(answer: &Answer, ask: &JsonAsk) -> Result<(), Rejection> {
    if matches!(ask, JsonAsk::None) {
        return Ok(());
    }
    let value: Value = serde_json::from_str(&answer.text)
        .map_err(|e| Rejection::by("json", format!("the answer is not valid JSON: {e}")))?;
    match ask {
        JsonAsk::Object if !value.is_object() => Err(Rejection::by(
            "json",
            "the answer is JSON but not an object",
        )),
        JsonAsk::Schema(schema) => fits(schema, &value)
            .map_err(|e| Rejection::by("json", format!("the answer does not fit the schema: {e}"))),
        _ => Ok(()),
    }
}

fn check_tool_args(answer: &Answer, tools: &[(String, Value)]) -> Result<(), Rejection> {
    for call in &answer.tool_calls {
        let args: Value = serde_json::from_str(&call.arguments).map_err(|e| {
            Rejection::by(
                "tool_args",
                format!("arguments of {} are not valid JSON: {e}", call.name),
            )
        })?;
        let Some((_, schema)) = tools.iter().find(|(name, _)| *name == call.name) else {
            return Err(Rejection::by(
                "tool_args",
                format!("{} is not a tool the request offered", call.name),
            ));
        };
        fits(schema, &args).map_err(|e| {
            Rejection::by(
                "tool_args",
                format!("arguments of {} do not fit its schema: {e}", call.name),
            )
        })?;
    }
    Ok(())
}

/// Validates `value` against `schema`; the first error when it does not fit. A schema that
/// does not compile is the request's problem, not the answer's: it passes.
fn fits(schema: &Value, value: &Value) -> Result<(), String> {
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return Ok(());
    };
    match validator.iter_errors(value).next() {
        Some(e) => Err(format!("{} at {}", e, e.instance_path())),
        None => Ok(()),
    }
}
