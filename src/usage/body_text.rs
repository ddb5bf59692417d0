//! The model's text in a non-streamed JSON response, taken as the body's bytes arrive.
//!
//! A complete body is parsed whole ([`super::meter::Meter::finish_body`]); this covers the
//! bodies that never complete (the upstream reset the connection halfway) or are too large
//! to keep, so their output can still be counted from what arrived. It is a small JSON
//! scanner that tracks the path of each value and keeps the strings found at the paths
//! where each format puts the model's output: the same fields the whole-body readers in
//! [`super::openai`] and [`super::anthropic`] take.

use crate::api::{ApiFormat, Endpoint};

/// What to do with a value found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// A string: its decoded contents.
    Text,
    /// Any value: its JSON as sent (Anthropic's tool `input` objects).
    Raw,
}

/// Paths of output values, members separated by dots; `*` is any array element.
type Paths = &'static [(&'static str, Take)];

const OPENAI_CHAT: Paths = &[
    ("choices.*.text", Take::Text),
    ("choices.*.message.content", Take::Text),
    ("choices.*.message.refusal", Take::Text),
    ("choices.*.message.reasoning_content", Take::Text),
    ("choices.*.message.tool_calls.*.function.name", Take::Text),
    (
        "choices.*.message.tool_calls.*.function.arguments",
        Take::Text,
    ),
];

const OPENAI_RESPONSES: Paths = &[
    ("output.*.content.*.text", Take::Text),
    ("output.*.name", Take::Text),
    ("output.*.arguments", Take::Text),
];

const ANTHROPIC: Paths = &[
    ("content.*.text", Take::Text),
    ("content.*.thinking", Take::Text),
    ("content.*.name", Take::Text),
    ("content.*.input", Take::Raw),
];

/// Object keys longer than this match no path, so they are not kept.
const MAX_KEY: usize = 32;

#[derive(Debug)]
enum Frame {
    Object {
        /// The key of the member being read.
        key: Option<Box<str>>,
        expect_key: bool,
    },
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    Skip,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    Unicode { digits: u8, code: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Scalar,
    Str { role: Role, escape: Escape },
}

/// Scanner state carried from one chunk of a body to the next.
#[derive(Debug)]
pub struct BodyText {
    paths: Paths,
    stack: Vec<Frame>,
    state: State,
    key: Vec<u8>,
    /// A `\uD8xx` escape waiting for its low half.
    high_surrogate: Option<u32>,
    /// Depth at which a raw value started, while one is being copied.
    raw_depth: Option<usize>,
    /// Output bytes not yet a whole UTF-8 sequence.
    out: Vec<u8>,
}

impl BodyText {
    /// A scanner for responses of `endpoint`; `None` where responses carry no output text.
    pub fn new(format: ApiFormat, endpoint: Endpoint) -> Option<BodyText> {
        let paths = match (format, endpoint) {
            (ApiFormat::OpenAi, Endpoint::ChatCompletions | Endpoint::Completions) => OPENAI_CHAT,
            (ApiFormat::OpenAi, Endpoint::Responses) => OPENAI_RESPONSES,
            (ApiFormat::Anthropic, Endpoint::Messages) => ANTHROPIC,
            _ => return None,
        };
        Some(BodyText {
            paths,
            stack: Vec::new(),
            state: State::Between,
            key: Vec::new(),
            high_surrogate: None,
            raw_depth: None,
            out: Vec::new(),
        })
    }

    /// Scans one chunk, appending the output text it completes to `text`.
    pub fn feed(&mut self, chunk: &[u8], text: &mut String) {
        for &b in chunk {
            if self.raw_depth.is_some() {
                self.out.push(b);
            }
            match self.state {
                State::Between => self.structural(b),
                State::Scalar => {
                    if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                        self.state = State::Between;
                        self.structural(b);
                    }
                }
                State::Str { role, escape } => self.string_byte(b, role, escape),
            }
        }
        self.flush(text);
    }

    fn structural(&mut self, b: u8) {
        match b {
            b'{' => {
                if self.raw_depth.is_none() && self.wanted() == Some(Take::Raw) {
                    self.raw_depth = Some(self.stack.len());
                    self.out.push(b);
                }
                self.stack.push(Frame::Object {
                    key: None,
                    expect_key: true,
                });
            }
            b'[' => self.stack.push(Frame::Array),
            b'}' | b']' => {
                self.stack.pop();
                if self.raw_depth == Some(self.stack.len()) {
                    self.raw_depth = None;
                }
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = self.stack.last_mut() {
                    *expect_key = true;
                }
            }
            b'"' => {
                let at_key = matches!(
                    self.stack.last(),
                    Some(Frame::Object {
                        expect_key: true,
                        ..
                    })
                );
                let role = if at_key {
                    if let Some(Frame::Object { key, expect_key }) = self.stack.last_mut() {
                        *expect_key = false;
                        *key = None;
                    }
                    self.key.clear();
                    Role::Key
                } else if self.raw_depth.is_none() && self.wanted() == Some(Take::Text) {
                    Role::Keep
                } else {
                    Role::Skip
                };
                self.state = State::Str {
                    role,
                    escape: Escape::None,
                };
            }
            b':' => {}
            _ if b.is_ascii_whitespace() => {}
            _ => self.state = State::Scalar,
        }
    }

    fn string_byte(&mut self, b: u8, role: Role, escape: Escape) {
        let keep = role == Role::Keep;
        let next = match escape {
            Escape::None => match b {
                b'"' => {
                    self.end_string(role);
                    return;
                }
                b'\\' => {
                    if role == Role::Key {
                        // Keys with escapes match no path.
                        self.key.resize(MAX_KEY + 1, 0);
                    }
                    Escape::Backslash
                }
                _ => {
                    match role {
                        Role::Keep => {
                            self.lone_surrogate();
                            self.out.push(b);
                        }
                        Role::Key if self.key.len() <= MAX_KEY => self.key.push(b),
                        _ => {}
                    }
                    Escape::None
                }
            },
            Escape::Backslash if b == b'u' => Escape::Unicode { digits: 0, code: 0 },
            Escape::Backslash => {
                let c = match b {
                    b'n' => '\n',
                    b't' => '\t',
                    b'r' => '\r',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    other => char::from(other),
                };
                if keep {
                    self.push_char(c);
                }
                Escape::None
            }
            Escape::Unicode { digits, code } => {
                let code = (code << 4) | char::from(b).to_digit(16).unwrap_or(0);
                if digits < 3 {
                    Escape::Unicode {
                        digits: digits + 1,
                        code,
                    }
                } else {
                    if keep {
                        self.push_code(code);
                    }
                    Escape::None
                }
            }
        };
        self.state = State::Str { role, escape: next };
    }

    fn end_string(&mut self, role: Role) {
        match role {
            Role::Key => {
                if let Some(Frame::Object { key, .. }) = self.stack.last_mut() {
                    *key = std::str::from_utf8(&self.key)
                        .ok()
                        .filter(|k| k.len() <= MAX_KEY)
                        .map(Box::from);
                }
            }
            Role::Keep => self.lone_surrogate(),
            Role::Skip => {}
        }
        self.state = State::Between;
    }

    fn push_code(&mut self, code: u32) {
        match (self.high_surrogate.take(), code) {
            (None, 0xD800..=0xDBFF) => self.high_surrogate = Some(code),
            (Some(high), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00);
                self.push_char(char::from_u32(c).unwrap_or('\u{FFFD}'));
            }
            (high, code) => {
                if high.is_some() {
                    self.push_char('\u{FFFD}');
                }
                self.push_char(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
        }
    }

    fn lone_surrogate(&mut self) {
        if self.high_surrogate.take().is_some() {
            self.push_char('\u{FFFD}');
        }
    }

    fn push_char(&mut self, c: char) {
        self.lone_surrogate();
        let mut buf = [0; 4];
        self.out
            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }

    /// The path of the value starting now matches an output path.
    fn wanted(&self) -> Option<Take> {
        self.paths.iter().find_map(|&(path, take)| {
            let mut segments = path.split('.');
            let matches = self.stack.iter().all(|frame| {
                let seg = segments.next();
                match frame {
                    Frame::Array => seg == Some("*"),
                    Frame::Object { key, .. } => seg.is_some() && key.as_deref() == seg,
                }
            });
            (matches && segments.next().is_none()).then_some(take)
        })
    }

    /// Moves whole UTF-8 sequences to `text`, keeping a sequence cut by the chunk's end.
    fn flush(&mut self, text: &mut String) {
        let valid = match std::str::from_utf8(&self.out) {
            Ok(s) => {
                text.push_str(s);
                self.out.clear();
                return;
            }
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                text.push_str(&String::from_utf8_lossy(&self.out));
                self.out.clear();
                return;
            }
        };
        text.push_str(std::str::from_utf8(&self.out[..valid]).unwrap_or_default());
        self.out.drain(..valid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::observed::Observed;
    use serde_json::{Value, json};

    /// Text taken from `body` fed in chunks of `size` bytes.
    fn scan(format: ApiFormat, endpoint: Endpoint, body: &[u8], size: usize) -> String {
        let mut t = BodyText::new(format, endpoint).unwrap();
        let mut text = String::new();
        for chunk in body.chunks(size) {
            t.feed(chunk, &mut text);
        }
        text
    }

    /// Text the whole-body readers take from `body`.
    fn parsed(format: ApiFormat, endpoint: Endpoint, body: &Value) -> String {
        let mut obs = Observed::default();
        match format {
            ApiFormat::OpenAi => crate::usage::openai::observe_body(endpoint, body, &mut obs),
            ApiFormat::Anthropic => crate::usage::anthropic::observe_body(body, &mut obs),
        }
        obs.output_text
    }

    /// Bodies as the providers write them (member order matters: the scanner keeps text in
    /// the order it arrives).
    fn bodies() -> Vec<(ApiFormat, Endpoint, &'static str)> {
        vec![
            (
                ApiFormat::OpenAi,
                Endpoint::ChatCompletions,
                r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o",
                "choices":[{"index":0,"message":{"role":"assistant",
                    "content":"Caf\u00e9 \"quoted\" \\ back\nline \ud83d\ude00 东京 😀",
                    "refusal":null,
                    "tool_calls":[{"id":"call_1","type":"function","function":{
                        "name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                    "logprobs":null,"finish_reason":"stop"}],
                "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,
                    "prompt_tokens_details":{"cached_tokens":0}}}"#,
            ),
            (
                ApiFormat::OpenAi,
                Endpoint::Completions,
                r#"{"choices":[{"text":"once upon","index":0},{"text":" a time","index":1}]}"#,
            ),
            (
                ApiFormat::OpenAi,
                Endpoint::Responses,
                r#"{"id":"resp_1","instructions":"not output","model":"o3",
                "tools":[{"type":"function","name":"not_output","parameters":{}}],
                "output":[{"type":"reasoning","summary":[]},
                    {"type":"message","role":"assistant","content":[
                        {"type":"output_text","text":"Hello there","annotations":[]}]},
                    {"type":"function_call","name":"lookup","arguments":"{\"q\":1}",
                        "call_id":"c1"}],
                "usage":{"input_tokens":5,"output_tokens":7}}"#,
            ),
            (
                ApiFormat::Anthropic,
                Endpoint::Messages,
                r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
                "content":[{"type":"thinking","thinking":"hmm","signature":"abc"},
                    {"type":"text","text":"Sure."},
                    {"type":"tool_use","id":"t1","name":"search",
                        "input":{"n":[1,2,{"deep":"x"}],"q":"rust"}}],
                "stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":9}}"#,
            ),
        ]
    }

    #[test]
    fn takes_what_the_whole_body_readers_take() {
        for (format, endpoint, body) in bodies() {
            let bytes = body.as_bytes();
            let expected = parsed(format, endpoint, &serde_json::from_str(body).unwrap());
            assert!(!expected.is_empty());
            for size in [1, 2, 3, 7, 64, bytes.len()] {
                assert_eq!(
                    scan(format, endpoint, bytes, size),
                    expected,
                    "{endpoint:?} in chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn pretty_printed_bodies_and_escaped_unicode() {
        let body = json!({"choices":[{"message":{"content":"naïve 😀 end"}}]});
        let pretty = serde_json::to_string_pretty(&body).unwrap();
        let ascii = pretty
            .replace('ï', "\\u00ef")
            .replace('😀', "\\ud83d\\ude00");
        for text in [pretty, ascii] {
            assert_eq!(
                scan(
                    ApiFormat::OpenAi,
                    Endpoint::ChatCompletions,
                    text.as_bytes(),
                    5
                ),
                "naïve 😀 end"
            );
        }
    }

    #[test]
    fn a_cut_body_yields_what_arrived() {
        let body = json!({"choices":[{"message":{"role":"assistant",
            "content":"The first half arrived but the rest never did"}}]});
        let bytes = body.to_string().into_bytes();
        let cut = bytes.windows(11).position(|w| w == b"arrived but").unwrap() + 11;
        let text = scan(
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            &bytes[..cut],
            9,
        );
        assert_eq!(text, "The first half arrived but");
    }

    #[test]
    fn other_endpoints_have_no_output_text() {
        assert!(BodyText::new(ApiFormat::OpenAi, Endpoint::Embeddings).is_none());
        assert!(BodyText::new(ApiFormat::Anthropic, Endpoint::CountTokens).is_none());
    }
}
