//! What the simulated model writes: text whose token count is known in advance, and tool calls.

use serde_json::{Map, Value};

use super::error::SimError;
use super::faults::{BadArgs, Directives};
use super::ids::mix;
use super::schema;
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

/// What the `refuse` directive makes the model say.
pub(crate) const REFUSAL: &str = "I'm sorry, but I can't help with that.";

/// The reply to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub content: Content,
    /// Visible output tokens, reasoning excluded.
    pub tokens: u64,
    pub stop: Stop,
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Naturally (or with a complete tool call).
    Done,
    /// At the max-tokens limit, real or pretended (`truncate`).
    Length,
    /// The model declined; the text is [`REFUSAL`].
    Refusal,
    /// A content filter withheld the rest of the answer (`content-filter`).
    ContentFilter,
}

impl Stop {
    /// Why a Responses API answer is incomplete, when it is.
    pub fn incomplete_reason(self) -> Option<&'static str> {
        match self {
            Stop::Length => Some("max_output_tokens"),
            Stop::ContentFilter => Some("content_filter"),
            Stop::Done | Stop::Refusal => None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Content {
    /// One piece per token, the way they are streamed.
    Text(Vec<String>),
    Tool(ToolCall),
}

/// What the request asks the answer to be.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ask<'a> {
    /// A tool the model must call.
    pub forced: Option<ForcedTool<'a>>,
    /// The request's max-tokens limit.
    pub limit: Option<u64>,
    pub format: Format<'a>,
}

/// The output format an OpenAI request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Format<'a> {
    #[default]
    Text,
    /// `json_object`: any JSON object.
    JsonObject,
    /// `json_schema`: an instance of this schema.
    JsonSchema(&'a Value),
}

impl<'a> Format<'a> {
    /// Reads chat's `response_format` (schema under `json_schema.schema`) or the Responses
    /// API's `text.format` (schema under `schema`).
    pub fn of(format: Option<&'a Value>) -> Self {
        let Some(format) = format else {
            return Format::Text;
        };
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => Format::JsonObject,
            Some("json_schema") => format
                .pointer("/json_schema/schema")
                .or_else(|| format.get("schema"))
                .map_or(Format::JsonObject, Format::JsonSchema),
            _ => Format::Text,
        }
    }
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
pub(crate) fn answer(enc: Encoding, ask: &Ask<'_>, directives: &Directives, seed: u64) -> Answer {
    let mut answer = compose(enc, ask, directives, seed);
    if directives.content_filter && answer.stop != Stop::Refusal {
        answer.stop = Stop::ContentFilter;
    }
    answer
}

fn compose(enc: Encoding, ask: &Ask<'_>, directives: &Directives, seed: u64) -> Answer {
    if directives.refuse {
        return text_answer(enc, REFUSAL, Stop::Refusal);
    }
    if let Some(tool) = ask.forced {
        let call = tool_call(tool, directives, seed);
        return Answer {
            tokens: enc.count(&call.arguments) + enc.count(&call.name),
            content: Content::Tool(call),
            stop: if directives.truncate {
                Stop::Length
            } else {
                Stop::Done
            },
        };
    }
    let schema = match ask.format {
        Format::Text => {
            let (pieces, truncated) = prose(ask.limit, directives, seed);
            return Answer {
                tokens: pieces.len() as u64,
                content: Content::Text(pieces),
                stop: if truncated { Stop::Length } else { Stop::Done },
            };
        }
        Format::JsonObject => None,
        Format::JsonSchema(schema) => Some(schema),
    };
    json_answer(enc, schema, ask.limit, directives, seed)
}

/// A JSON answer: an instance of the schema, or `{"answer": <prose>}` for `json_object`.
fn json_answer(
    enc: Encoding,
    schema: Option<&Value>,
    limit: Option<u64>,
    directives: &Directives,
    seed: u64,
) -> Answer {
    let value = match schema {
        Some(schema) => {
            let mut value = schema::instance(schema, seed);
            if directives.off_schema {
                schema::violate(schema, &mut value);
            }
            value
        }
        None => {
            let plain = Directives::default();
            let (pieces, _) = prose(None, &plain, seed);
            serde_json::json!({ "answer": pieces.concat() })
        }
    };
    let mut text = value.to_string();
    if directives.invalid_json {
        text.pop();
    }
    let mut stop = Stop::Done;
    if directives.truncate {
        text = cut(&text).to_owned();
        stop = Stop::Length;
    }
    let mut answer = text_answer(enc, &text, stop);
    // A JSON answer longer than the limit is cut there, as a real model's would be.
    if let (Content::Text(pieces), Some(max)) = (&mut answer.content, limit)
        && pieces.len() as u64 > max
    {
        pieces.truncate(max as usize);
        answer.tokens = enc.count(&pieces.concat());
        answer.stop = Stop::Length;
    }
    answer
}

/// `text` as an answer, one piece per token.
fn text_answer(enc: Encoding, text: &str, stop: Stop) -> Answer {
    Answer {
        tokens: enc.count(text),
        content: Content::Text(token_pieces(enc, text)),
        stop,
    }
}

/// `text` split at the tokenizer's token boundaries.
fn token_pieces(enc: Encoding, text: &str) -> Vec<String> {
    enc.bpe()
        .split_by_token_ordinary(text)
        .unwrap_or_else(|_| vec![text.to_owned()])
}

/// The first half of `text`, on a character boundary.
fn cut(text: &str) -> &str {
    let half = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(text.chars().count() / 2)
        .unwrap_or(text.len());
    &text[..half]
}

/// A text reply, one piece per token, and whether the max-tokens `limit` cut it short.
/// Its length is the `x-sim-output-tokens` header if given, else 8..=64 picked by `seed`.
/// With `truncate` it runs to the limit (if any) and always counts as cut short.
fn prose(limit: Option<u64>, directives: &Directives, seed: u64) -> (Vec<String>, bool) {
    let tokens = directives.output_tokens.unwrap_or_else(|| {
        let natural = NATURAL_MIN + seed % (NATURAL_MAX - NATURAL_MIN + 1);
        match limit {
            Some(max) if directives.truncate => max,
            Some(max) => natural.min(max),
            None => natural,
        }
    });
    let truncated = directives.truncate || limit.is_some_and(|max| tokens >= max);
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
    word(mix(seed ^ mix(i)))
}

/// The word at `i`, wrapping: consecutive `i` give different words.
pub(crate) fn word(i: u64) -> &'static str {
    // The modulo keeps the index below WORDS.len(), so the cast cannot truncate.
    WORDS[(i % WORDS.len() as u64) as usize]
}

/// Arguments are an instance of the tool's schema, broken if the directives say so.
fn tool_call(tool: ForcedTool<'_>, directives: &Directives, seed: u64) -> ToolCall {
    let any_object = serde_json::json!({"type": "object"});
    let schema = tool.schema.unwrap_or(&any_object);
    let mut args = match schema::instance(schema, seed) {
        args @ Value::Object(_) => args,
        _ => Value::Object(Map::new()),
    };
    let broken = match directives.bad_tool_args {
        Some(BadArgs::Schema) => !schema::violate(schema, &mut args),
        Some(BadArgs::Syntax) => true,
        None => false,
    };
    let mut arguments = args.to_string();
    if broken {
        // Unbalanced: the closing brace is missing.
        arguments.pop();
    }
    if directives.truncate {
        arguments = cut(&arguments).to_owned();
    }
    ToolCall {
        name: tool.name.to_owned(),
        arguments,
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
            let a = answer(
                Encoding::O200k,
                &Ask::default(),
                &Directives::default(),
                seed,
            );
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
        let limited = Ask {
            limit: Some(3),
            ..Ask::default()
        };
        let a = answer(Encoding::Cl100k, &limited, &d, 7);
        assert_eq!((a.tokens, a.stop), (3, Stop::Length));
        let d = Directives {
            output_tokens: Some(100),
            ..Directives::default()
        };
        let a = answer(Encoding::Cl100k, &Ask::default(), &d, 7);
        assert_eq!((a.tokens, a.stop), (100, Stop::Done));
    }

    #[test]
    fn tool_arguments_follow_the_schema() {
        let schema = json!({"type": "object", "properties": {"city": {}, "unit": {}}});
        let tool = ForcedTool {
            name: "get_weather",
            schema: Some(&schema),
        };
        let ask = Ask {
            forced: Some(tool),
            ..Ask::default()
        };
        let a = answer(Encoding::O200k, &ask, &Directives::default(), 1);
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
