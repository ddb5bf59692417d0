//! What the simulated model writes: text whose token count is known in advance, and tool calls.

use serde_json::{Map, Value};

use super::error::SimError;
use super::faults::Directives;
use super::ids::mix;
use crate::tokens::Encoding;

/// Common words that are a single token in both o200k and cl100k, with or without a leading
/// space, so a reply of N words (space-separated) is exactly N tokens in either encoding.
const WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "as", "with",
    "they", "at", "be", "this", "from", "have", "or", "by", "one", "not", "but", "what", "all",
    "when", "we", "there", "can", "your", "which", "said", "if", "will", "each", "about", "how",
    "up", "out", "them", "then", "many", "some", "so", "would", "other", "into", "more", "two",
    "like", "see", "time", "could", "make", "first", "people", "water", "long", "little", "very",
    "after", "just",
];

/// Output length when neither a header nor a small max-tokens limit decides it.
const NATURAL_MIN: u64 = 8;
const NATURAL_MAX: u64 = 64;

/// Streamed tool-call arguments are cut into pieces of at most this many characters.
const FRAGMENT_CHARS: usize = 8;

/// The reply to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub content: Content,
    /// Visible output tokens, reasoning excluded.
    pub tokens: u64,
    /// Stopped by the request's max-tokens limit rather than naturally.
    pub truncated: bool,
}

#[derive(Debug)]
pub(crate) enum Content {
    /// One piece per token, the way they are streamed.
    Text(Vec<String>),
    Tool(ToolCall),
}

#[derive(Debug)]
pub(crate) struct ToolCall {
    pub name: String,
    /// A compact JSON object, as providers return it.
    pub arguments: String,
}

/// A tool the request forces the model to call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForcedTool<'a> {
    pub name: &'a str,
    /// The tool's JSON-schema for its arguments, if it declared one.
    pub schema: Option<&'a Value>,
}

/// How a request's `tool_choice` forces a call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ToolChoice<'a> {
    /// OpenAI `"required"`, Anthropic `{"type":"any"}`: the first tool.
    Any,
    /// A specific tool by name.
    Named(&'a str),
}

/// Resolves a forced tool choice against the request's tool list; `describe` reads a tool
/// definition in the endpoint's own shape and skips tools that are not callable functions.
pub(crate) fn forced_tool<'a>(
    choice: Option<ToolChoice<'a>>,
    tools: Option<&'a Value>,
    describe: impl Fn(&'a Value) -> Option<ForcedTool<'a>>,
) -> Result<Option<ForcedTool<'a>>, SimError> {
    let Some(choice) = choice else {
        return Ok(None);
    };
    let mut candidates = tools
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(describe);
    let found = match choice {
        ToolChoice::Any => candidates.next(),
        ToolChoice::Named(name) => candidates.find(|t| t.name == name),
    };
    match (found, choice) {
        (Some(tool), _) => Ok(Some(tool)),
        (None, ToolChoice::Any) => Err(SimError::invalid_param(
            "tool_choice",
            "Invalid value for 'tool_choice': a tool can only be required when 'tools' are \
             specified.",
        )),
        (None, ToolChoice::Named(name)) => Err(SimError::invalid_param(
            "tool_choice",
            format!("Invalid value for 'tool_choice': tool '{name}' not found in 'tools'."),
        )),
    }
}

/// Decides the reply. `seed` is a hash of the prompt, so the same prompt gets the same reply.
pub(crate) fn answer(
    enc: Encoding,
    forced: Option<ForcedTool<'_>>,
    limit: Option<u64>,
    directives: &Directives,
    seed: u64,
) -> Answer {
    if let Some(tool) = forced {
        let call = tool_call(tool, seed);
        return Answer {
            tokens: enc.count(&call.arguments) + enc.count(&call.name),
            content: Content::Tool(call),
            truncated: false,
        };
    }
    let (pieces, truncated) = prose(limit, directives, seed);
    Answer {
        tokens: pieces.len() as u64,
        content: Content::Text(pieces),
        truncated,
    }
}

/// A text reply, one piece per token, and whether the max-tokens `limit` cut it short.
/// Its length is the `x-sim-output-tokens` header if given, else 8..=64 picked by `seed`.
pub(crate) fn prose(limit: Option<u64>, directives: &Directives, seed: u64) -> (Vec<String>, bool) {
    let tokens = directives.output_tokens.unwrap_or_else(|| {
        let natural = NATURAL_MIN + seed % (NATURAL_MAX - NATURAL_MIN + 1);
        limit.map_or(natural, |max| natural.min(max))
    });
    let truncated = limit.is_some_and(|max| tokens >= max);
    (words(tokens, seed), truncated)
}

/// `n` words, each one token; all but the first carry a leading space.
fn words(n: u64, seed: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let word = pick(seed, i);
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

fn pick(seed: u64, i: u64) -> &'static str {
    // The modulo keeps the index below WORDS.len(), so the cast cannot truncate.
    WORDS[(mix(seed ^ mix(i)) % WORDS.len() as u64) as usize]
}

/// Arguments name every property of the schema, each with a one-word string value.
fn tool_call(tool: ForcedTool<'_>, seed: u64) -> ToolCall {
    let properties = tool
        .schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let arguments: Map<String, Value> = properties
        .into_iter()
        .flat_map(|props| props.keys())
        .enumerate()
        .map(|(i, key)| (key.clone(), Value::from(pick(seed, i as u64))))
        .collect();
    ToolCall {
        name: tool.name.to_owned(),
        arguments: Value::Object(arguments).to_string(),
    }
}

impl Content {
    pub fn text(&self) -> Option<String> {
        match self {
            Content::Text(pieces) => Some(pieces.concat()),
            Content::Tool(_) => None,
        }
    }
}

impl ToolCall {
    /// The arguments split into several pieces, as providers stream them.
    pub fn fragments(&self) -> Vec<&str> {
        let args = self.arguments.as_str();
        let mut cuts: Vec<usize> = args
            .char_indices()
            .map(|(i, _)| i)
            .step_by(FRAGMENT_CHARS)
            .collect();
        cuts.push(args.len());
        cuts.windows(2).map(|w| &args[w[0]..w[1]]).collect()
    }
}

/// Hidden reasoning tokens billed on top of the visible output by reasoning models.
pub(crate) fn reasoning_tokens(model: &str, visible: u64) -> u64 {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let reasoning =
        ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p)) || m.contains("reasoning");
    if reasoning { (visible / 2).max(1) } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENCODINGS: [Encoding; 2] = [Encoding::O200k, Encoding::Cl100k];

    #[test]
    fn every_word_is_one_token() {
        for enc in ENCODINGS {
            for w in WORDS {
                assert_eq!(enc.count(w), 1, "{w:?} in {enc:?}");
                assert_eq!(enc.count(&format!(" {w}")), 1, "' {w}' in {enc:?}");
            }
        }
    }

    #[test]
    fn text_has_exactly_the_planned_tokens() {
        for seed in 0..50u64 {
            let a = answer(Encoding::O200k, None, None, &Directives::default(), seed);
            assert!((NATURAL_MIN..=NATURAL_MAX).contains(&a.tokens));
            let text = a.content.text().unwrap();
            for enc in ENCODINGS {
                assert_eq!(enc.count(&text), a.tokens, "{text:?}");
            }
        }
    }

    #[test]
    fn limit_and_header_decide_length() {
        let d = Directives::default();
        let a = answer(Encoding::Cl100k, None, Some(3), &d, 7);
        assert_eq!((a.tokens, a.truncated), (3, true));
        let d = Directives {
            output_tokens: Some(100),
            ..Directives::default()
        };
        let a = answer(Encoding::Cl100k, None, None, &d, 7);
        assert_eq!((a.tokens, a.truncated), (100, false));
    }

    #[test]
    fn tool_arguments_follow_the_schema() {
        let schema = json!({"type": "object", "properties": {"city": {}, "unit": {}}});
        let tool = ForcedTool {
            name: "get_weather",
            schema: Some(&schema),
        };
        let a = answer(Encoding::O200k, Some(tool), None, &Directives::default(), 1);
        let Content::Tool(call) = &a.content else {
            panic!("expected a tool call")
        };
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert!(args["city"].is_string() && args["unit"].is_string());
        assert!(call.fragments().len() > 2);
        assert_eq!(call.fragments().concat(), call.arguments);
        let expected =
            Encoding::O200k.count(&call.arguments) + Encoding::O200k.count("get_weather");
        assert_eq!(a.tokens, expected);
    }

    #[test]
    fn reasoning_models_bill_hidden_tokens() {
        assert_eq!(reasoning_tokens("o3-mini", 10), 5);
        assert_eq!(reasoning_tokens("openai/gpt-5", 1), 1);
        assert_eq!(reasoning_tokens("my-reasoning-model", 0), 1);
        assert_eq!(reasoning_tokens("gpt-4o", 10), 0);
    }
}
