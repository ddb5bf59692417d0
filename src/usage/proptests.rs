//! Property tests: the SSE parser, usage in every wire format and the meter, over generated
//! responses cut into arbitrary chunks.
//!
//! Each property runs proptest's default case count (256, or `PROPTEST_CASES`);
//! `scripts/proptest-long.sh` runs them for a million cases in all.

use super::meter::{Meter, settle, settle_counted};
use super::sse::{SseBuffer, SseEvent};
use super::{Usage, UsageSource};
use crate::api::{ApiFormat, Endpoint};
use crate::tokens::{Count, Encoding};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------------------

/// Where a byte string is cut into the chunks that reach the proxy.
#[derive(Debug, Clone)]
enum Cuts {
    /// At these positions (repeats give empty chunks).
    At(Vec<Index>),
    /// Every `n` bytes: with small `n`, inside every UTF-8 sequence and every CRLF.
    Every(usize),
}

fn cuts() -> impl Strategy<Value = Cuts> {
    prop_oneof![
        4 => prop::collection::vec(any::<Index>(), 0..12).prop_map(Cuts::At),
        1 => (1usize..5).prop_map(Cuts::Every),
    ]
}

fn chunks<'a>(bytes: &'a [u8], cuts: &Cuts) -> Vec<&'a [u8]> {
    match cuts {
        Cuts::At(at) => {
            let mut at: Vec<usize> = at.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut out = Vec::with_capacity(at.len() + 1);
            let mut from = 0;
            for cut in at {
                out.push(&bytes[from..cut]);
                from = cut;
            }
            out.push(&bytes[from..]);
            out
        }
        Cuts::Every(n) => bytes.chunks(*n).collect(),
    }
}

/// Token counts: mostly plausible, sometimes anywhere in `u64`.
fn tokens() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..100_000, 1 => any::<u64>()]
}

/// A string and one of the many JSON texts that decode to it.
#[derive(Debug, Clone)]
pub(crate) struct JStr {
    pub text: String,
    pub json: String,
}

/// Text a model might produce: multi-byte UTF-8, control characters, quotes and
/// backslashes, and pieces that look like the framing around them.
fn model_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => any::<char>().prop_map(String::from),
        3 => "[a-z ]{1,6}",
        2 => prop::sample::select(vec!["é", "😀", "日本", "\u{2028}", "\u{7f}", "\0"])
            .prop_map(String::from),
        2 => prop::sample::select(vec!["\"", "\\", "/", "\n", "\r\n", "\t", "\r", "\u{8}", "\u{c}"])
            .prop_map(String::from),
        1 => prop::sample::select(vec![
            ",\"usage\":null",
            "\"usage\":{\"prompt_tokens\":1}",
            "\n\ndata: [DONE]\n\n",
            "data: {\"choices\":[]}",
            "\\u0022",
        ])
        .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

/// `text` as a JSON string, each character escaped in one of the ways JSON allows.
pub(crate) fn jstr() -> impl Strategy<Value = JStr> {
    (model_text(), any::<u64>()).prop_map(|(text, seed)| JStr {
        json: encode_str(&text, seed),
        text,
    })
}

/// A JSON string literal for `text`; `seed` picks each character's spelling.
fn encode_str(text: &str, seed: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        let style = seed.rotate_left(i as u32 * 3) % 4;
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' if style == 1 => Some("\\/"),
            _ => None,
        };
        let must_escape = c < ' ' || c == '"' || c == '\\';
        match (short, style) {
            (Some(s), 0 | 1) => out.push_str(s),
            _ if must_escape || style == 3 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if i % 2 == 0 {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `json` with whitespace from `ws` after each structural character outside strings.
fn spread_whitespace(json: &str, ws: &[u8]) -> String {
    const SPACES: [&str; 5] = ["", " ", "\n  ", "\t", "\r\n"];
    if ws.is_empty() {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() * 2);
    let (mut in_str, mut escaped, mut n) = (false, false, 0);
    for c in json.chars() {
        out.push(c);
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if matches!(c, '{' | '[' | ',' | ':') {
            out.push_str(SPACES[usize::from(ws[n % ws.len()]) % SPACES.len()]);
            n += 1;
        }
    }
    out
}

fn sse(event: Option<&str>, data: &str, eol: &str) -> String {
    match event {
        Some(name) => format!("event: {name}{eol}data: {data}{eol}{eol}"),
        None => format!("data: {data}{eol}{eol}"),
    }
}

// ---------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Lf,
    CrLf,
    Cr,
}

impl Eol {
    fn text(self) -> &'static str {
        match self {
            Eol::Lf => "\n",
            Eol::CrLf => "\r\n",
            Eol::Cr => "\r",
        }
    }
}

fn eol() -> impl Strategy<Value = Eol> {
    prop_oneof![Just(Eol::Lf), Just(Eol::CrLf), Just(Eol::Cr)]
}

#[derive(Debug, Clone)]
enum Line {
    /// `data:` with or without the optional space before the value.
    Data {
        value: String,
        space: bool,
    },
    /// `data` alone: a data line with an empty value.
    BareData,
    Event {
        name: String,
        space: bool,
    },
    Comment(String),
    /// A field the parser ignores.
    Other(&'static str, String),
}

impl Line {
    fn text(&self) -> String {
        let sp = |space: bool| if space { " " } else { "" };
        match self {
            Line::Data { value, space } => format!("data:{}{value}", sp(*space)),
            Line::BareData => "data".into(),
            Line::Event { name, space } => format!("event:{}{name}", sp(*space)),
            Line::Comment(text) => format!(":{text}"),
            Line::Other(field, value) => format!("{field}: {value}"),
        }
    }
}

/// A field value as the parser reads it: one leading space is the separator's.
fn field_value(raw: &str, space: bool) -> &str {
    if space {
        raw
    } else {
        raw.strip_prefix(' ').unwrap_or(raw)
    }
}

fn field_text() -> impl Strategy<Value = String> {
    prop_oneof!["[^\r\n]{0,12}", "[ :a-z{}\"é😀]{0,12}"]
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        4 => (field_text(), any::<bool>()).prop_map(|(value, space)| Line::Data { value, space }),
        1 => Just(Line::BareData),
        2 => (field_text(), any::<bool>()).prop_map(|(name, space)| Line::Event { name, space }),
        1 => field_text().prop_map(Line::Comment),
        1 => (prop::sample::select(vec!["id", "retry", "dat", "events", "Data"]), field_text())
            .prop_map(|(f, v)| Line::Other(f, v)),
    ]
}

#[derive(Debug, Clone)]
struct Event {
    lines: Vec<(Line, Eol)>,
    /// The blank line that ends the event.
    blank: Eol,
}

fn event() -> impl Strategy<Value = Event> {
    (prop::collection::vec((line(), eol()), 1..5), eol()).prop_map(|(lines, mut blank)| {
        // `\r` then `\n` is one line break, not a line end and a blank line.
        if lines.last().is_some_and(|(_, e)| *e == Eol::Cr) && blank == Eol::Lf {
            blank = Eol::CrLf;
        }
        Event { lines, blank }
    })
}

impl Event {
    fn bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (line, eol) in &self.lines {
            out.push_str(&line.text());
            out.push_str(eol.text());
        }
        out.push_str(self.blank.text());
        out.into_bytes()
    }

    /// The event as the parser must read it.
    fn parsed(&self) -> SseEvent {
        let mut event = None;
        let mut data: Option<String> = None;
        for (line, _) in &self.lines {
            let value = match line {
                Line::Data { value, space } => field_value(value, *space),
                Line::BareData => "",
                Line::Event { name, space } => {
                    event = Some(field_value(name, *space).to_string());
                    continue;
                }
                Line::Comment(_) | Line::Other(..) => continue,
            };
            match data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
        SseEvent {
            raw: self.bytes(),
            event,
            data: data.unwrap_or_default(),
        }
    }
}

fn parse_chunks(parts: &[&[u8]]) -> (Vec<SseEvent>, Vec<u8>) {
    let mut buf = SseBuffer::default();
    let mut out = Vec::new();
    for part in parts {
        buf.push(part, &mut out);
    }
    let pending = buf.pending();
    let rest = buf.take_rest();
    assert_eq!(rest.len(), pending);
    assert_eq!(buf.pending(), 0);
    (out, rest)
}

fn sse_noise() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => any::<u8>(),
        2 => Just(b'\n'),
        2 => Just(b'\r'),
        1 => Just(b':'),
        1 => prop::sample::select(b"data event: ".to_vec()),
        1 => prop::sample::select("é😀".as_bytes().to_vec()),
    ];
    prop::collection::vec(byte, 0..256)
}

proptest! {
    /// Any events, with any line ends, cut anywhere (inside a UTF-8 sequence, between the
    /// `\r` and `\n` of a CRLF), come out whole and as they were sent. An event whose blank
    /// line is a final lone `\r` waits: a `\n` may still follow and belong to it.
    #[test]
    fn sse_events_survive_any_chunking(events in prop::collection::vec(event(), 0..8), cuts in cuts()) {
        let stream: Vec<u8> = events.iter().flat_map(Event::bytes).collect();
        let mut want: Vec<SseEvent> = events.iter().map(Event::parsed).collect();
        let want_rest = match events.last() {
            Some(last) if last.blank == Eol::Cr => want.pop().unwrap().raw,
            _ => Vec::new(),
        };
        let (got, rest) = parse_chunks(&chunks(&stream, &cuts));
        prop_assert_eq!(got, want);
        prop_assert_eq!(rest, want_rest);
    }

    /// Any bytes at all: no panic, no byte lost or added, and the chunking changes nothing.
    #[test]
    fn sse_any_bytes_are_kept_whatever_the_chunking(bytes in sse_noise(), cuts in cuts()) {
        let (whole, whole_rest) = parse_chunks(&[&bytes]);
        let (got, rest) = parse_chunks(&chunks(&bytes, &cuts));
        let mut joined: Vec<u8> = got.iter().flat_map(|e| e.raw.clone()).collect();
        joined.extend_from_slice(&rest);
        prop_assert_eq!(joined, bytes);
        prop_assert_eq!(got, whole);
        prop_assert_eq!(rest, whole_rest);
    }
}

// ---------------------------------------------------------------------------------------
// Generated responses, and what metering them must give
// ---------------------------------------------------------------------------------------

/// A response as the upstream sends it, and what the meter must make of it.
#[derive(Debug, Clone)]
struct Case {
    format: ApiFormat,
    endpoint: Endpoint,
    stream: bool,
    /// Tollgate asked for usage on the client's behalf: the meter rewrites the stream.
    strip: bool,
    upstream: String,
    /// What the client must receive when the meter rewrites.
    client: String,
    model: Option<String>,
    text: String,
    /// `None` when the response reports no usage (then it is estimated).
    usage: Option<Usage>,
    /// Whether the text taken from a non-streamed body as it arrives is `text`: it is not
    /// where a value is taken as sent (Anthropic's tool input) and the body is spaced out.
    text_as_it_arrives: bool,
}

impl Case {
    /// A stream the meter forwards as it comes.
    fn passed_through(
        format: ApiFormat,
        endpoint: Endpoint,
        stream: String,
        model: String,
        text: String,
        usage: Usage,
    ) -> Case {
        Case {
            format,
            endpoint,
            stream: true,
            strip: false,
            client: stream.clone(),
            upstream: stream,
            model: Some(model),
            text,
            usage: Some(usage),
            text_as_it_arrives: true,
        }
    }
}

/// What an upstream reports, in any format. OpenAI's `input` counts every prompt token;
/// Anthropic's excludes the cache reads (`cached`) and writes (`cache_write`).
#[derive(Debug, Clone)]
struct Reported {
    input: u64,
    output: u64,
    cached: Option<u64>,
    cache_write: Option<u64>,
    reasoning: Option<u64>,
}

fn reported() -> impl Strategy<Value = Reported> {
    let part = || proptest::option::of(tokens());
    (tokens(), tokens(), part(), part(), part()).prop_map(
        |(input, output, cached, cache_write, reasoning)| Reported {
            input,
            output,
            cached,
            cache_write,
            reasoning,
        },
    )
}

impl Reported {
    /// Settled usage: as reported, parts clamped to the whole they belong to.
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input,
            output_tokens: self.output,
            cached_input_tokens: self.cached.unwrap_or(0).min(self.input),
            cache_write_tokens: 0,
            reasoning_tokens: self.reasoning.unwrap_or(0).min(self.output),
        }
    }

    fn total(&self) -> u128 {
        u128::from(self.input) + u128::from(self.output)
    }

    /// Chat/Completions/Embeddings `usage`.
    fn chat_json(&self) -> String {
        let mut s = format!(
            r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}"#,
            self.input,
            self.output,
            self.total()
        );
        if let Some(c) = self.cached {
            s += &format!(r#","prompt_tokens_details":{{"cached_tokens":{c},"audio_tokens":0}}"#);
        }
        if let Some(r) = self.reasoning {
            s += &format!(
                r#","completion_tokens_details":{{"reasoning_tokens":{r},"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#
            );
        }
        s + "}"
    }

    /// Responses API `usage`.
    fn responses_json(&self) -> String {
        format!(
            r#"{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":{}}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":{}}},"total_tokens":{}}}"#,
            self.input,
            self.cached.unwrap_or(0),
            self.output,
            self.reasoning.unwrap_or(0),
            self.total()
        )
    }
}

fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["gpt-4o-2024-08-06", "o3", "claude-sonnet-4-5", "m"])
            .prop_map(String::from),
        "[a-zA-Z0-9._:/-]{1,24}",
    ]
}

/// One piece of a streamed OpenAI chat answer.
#[derive(Debug, Clone)]
enum ChatDelta {
    Content(JStr),
    Refusal(JStr),
    Reasoning(JStr),
    /// A tool call's first delta carries its name; later ones only arguments.
    Tool {
        index: u8,
        name: Option<JStr>,
        arguments: JStr,
    },
    /// A keep-alive comment some compatible servers send.
    Comment,
}

fn chat_delta() -> impl Strategy<Value = ChatDelta> {
    prop_oneof![
        4 => jstr().prop_map(ChatDelta::Content),
        1 => jstr().prop_map(ChatDelta::Refusal),
        1 => jstr().prop_map(ChatDelta::Reasoning),
        2 => (0u8..3, proptest::option::of(jstr()), jstr())
            .prop_map(|(index, name, arguments)| ChatDelta::Tool { index, name, arguments }),
        1 => Just(ChatDelta::Comment),
    ]
}

impl ChatDelta {
    /// The delta's JSON, and the text it adds.
    fn delta(&self) -> Option<(String, String)> {
        Some(match self {
            ChatDelta::Content(s) => (format!(r#"{{"content":{}}}"#, s.json), s.text.clone()),
            ChatDelta::Refusal(s) => (format!(r#"{{"refusal":{}}}"#, s.json), s.text.clone()),
            ChatDelta::Reasoning(s) => (
                format!(r#"{{"reasoning_content":{}}}"#, s.json),
                s.text.clone(),
            ),
            ChatDelta::Tool {
                index,
                name,
                arguments,
            } => {
                let (head, name_text) = match name {
                    Some(n) => (
                        format!(r#""id":"call_{index}","type":"function","#),
                        n.clone(),
                    ),
                    None => (
                        String::new(),
                        JStr {
                            text: String::new(),
                            json: String::new(),
                        },
                    ),
                };
                let name_json = if name.is_some() {
                    format!(r#""name":{},"#, name_text.json)
                } else {
                    String::new()
                };
                (
                    format!(
                        r#"{{"tool_calls":[{{"index":{index},{head}"function":{{{name_json}"arguments":{}}}}}]}}"#,
                        arguments.json
                    ),
                    name_text.text + &arguments.text,
                )
            }
            ChatDelta::Comment => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsageAsk {
    /// Tollgate asked for usage; the client did not, so the meter strips it.
    ForTheClient,
    /// The client asked for usage itself: it passes through.
    ByTheClient,
    /// Nobody asked (a provider with `stream_usage: false`): usage is estimated.
    Nobody,
}

fn chat_stream() -> impl Strategy<Value = Case> {
    (
        model_name(),
        prop::collection::vec(chat_delta(), 0..8),
        reported(),
        prop_oneof![Just(UsageAsk::ForTheClient), Just(UsageAsk::ByTheClient), Just(UsageAsk::Nobody)],
        any::<bool>(),
        prop_oneof![Just("\n"), Just("\r\n")],
        any::<bool>(),
    )
        .prop_map(|(model, deltas, reported, ask, legacy, eol, obfuscation)| {
            let endpoint = if legacy { Endpoint::Completions } else { Endpoint::ChatCompletions };
            let mut text = String::new();
            // The stream with usage members on, and the same stream as the client gets it.
            let (mut upstream, mut client) = (String::new(), String::new());
            let model_json = serde_json::to_string(&model).unwrap();
            let push = |upstream: &mut String, client: &mut String, choice: Option<String>, usage: bool| {
                let (object, choices) = match choice {
                    Some(c) => ("chat.completion.chunk", format!("[{c}]")),
                    None => ("chat.completion.chunk", "[]".to_string()),
                };
                let head = format!(
                    r#"{{"id":"chatcmpl-1","object":"{object}","created":1,"model":{model_json},"choices":{choices}"#
                );
                let tail = if obfuscation { r#","obfuscation":"x1"}"# } else { "}" };
                client.push_str(&sse(None, &format!("{head}{tail}"), eol));
                let member = if usage { r#","usage":null"# } else { "" };
                upstream.push_str(&sse(None, &format!("{head}{member}{tail}"), eol));
            };
            let usage_on = ask != UsageAsk::Nobody;
            if !legacy {
                push(&mut upstream, &mut client, Some(r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}"#.into()), usage_on);
            }
            for d in &deltas {
                let Some((delta, added)) = d.delta() else {
                    let comment = format!(": keep-alive{eol}{eol}");
                    upstream.push_str(&comment);
                    client.push_str(&comment);
                    continue;
                };
                // The legacy endpoint streams plain text.
                let choice = match (legacy, d) {
                    (true, ChatDelta::Content(s)) => {
                        format!(r#"{{"text":{},"index":0,"logprobs":null,"finish_reason":null}}"#, s.json)
                    }
                    (true, _) => continue,
                    (false, _) => format!(r#"{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}"#),
                };
                text.push_str(&added);
                push(&mut upstream, &mut client, Some(choice), usage_on);
            }
            push(&mut upstream, &mut client, Some(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}"#.into()), usage_on);
            if usage_on {
                let chunk = format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":{model_json},"choices":[],"usage":{}}}"#,
                    reported.chat_json()
                );
                upstream.push_str(&sse(None, &chunk, eol));
            }
            let done = sse(None, "[DONE]", eol);
            upstream.push_str(&done);
            client.push_str(&done);
            Case {
                format: ApiFormat::OpenAi,
                endpoint,
                stream: true,
                strip: ask == UsageAsk::ForTheClient,
                upstream,
                client,
                model: Some(model),
                text,
                usage: usage_on.then(|| reported.usage()),
                text_as_it_arrives: true,
            }
        })
}

/// Feeds `case` to a meter in `cuts`, and checks what it forwards, observes and settles.
fn check(case: &Case, cuts: &Cuts) -> Result<(), TestCaseError> {
    let mut meter = Meter::new(case.format, case.endpoint, case.stream, case.strip);
    prop_assert_eq!(meter.rewrites(), case.stream && case.strip);
    let mut forwarded = Vec::new();
    for chunk in chunks(case.upstream.as_bytes(), cuts) {
        match meter.feed(chunk) {
            Some(bytes) => forwarded.extend(bytes),
            None => {
                prop_assert!(!meter.rewrites());
                forwarded.extend_from_slice(chunk);
            }
        }
    }
    if !case.stream && case.text_as_it_arrives {
        // A body cut after any chunk is counted from the text that arrived.
        let mut arrived = 0;
        for chunk in chunks(case.upstream.as_bytes(), cuts) {
            arrived += chunk.len();
            let mut cut = Meter::new(case.format, case.endpoint, false, false);
            cut.feed(&case.upstream.as_bytes()[..arrived]);
            cut.finish_body();
            prop_assert!(case.text.starts_with(&cut.observed.output_text));
        }
    }
    meter.finish_body();
    forwarded.extend(meter.take_unforwarded());
    let client = if meter.rewrites() {
        &case.client
    } else {
        &case.upstream
    };
    prop_assert_eq!(String::from_utf8_lossy(&forwarded), client.as_str());

    let o = &meter.observed;
    prop_assert_eq!(&o.output_text, &case.text);
    prop_assert_eq!(o.output_text_bytes, case.text.len());
    prop_assert_eq!(&o.model, &case.model);
    prop_assert!(o.finished);
    prop_assert_eq!(&o.upstream_error, &None);

    const ESTIMATED_INPUT: u64 = 7;
    let s = settle_counted(
        o,
        || Count {
            tokens: ESTIMATED_INPUT,
            exact: true,
        },
        Encoding::O200k,
    );
    let u = s.usage;
    match case.usage {
        Some(want) => {
            prop_assert_eq!(u, want);
            prop_assert_eq!(s.source, UsageSource::Reported);
        }
        None => {
            prop_assert_eq!(s.source, UsageSource::Estimated);
            prop_assert_eq!(u.input_tokens, ESTIMATED_INPUT);
            prop_assert_eq!(u.output_tokens, Encoding::O200k.count(&case.text));
        }
    }
    prop_assert!(s.exact);
    prop_assert!(u.cached_input_tokens <= u.input_tokens);
    prop_assert!(u.cache_write_tokens <= u.input_tokens);
    prop_assert!(u.reasoning_tokens <= u.output_tokens);
    // `settle` is `settle_counted` without the exactness.
    let (plain, source) = settle(o, || ESTIMATED_INPUT, Encoding::O200k);
    prop_assert_eq!((plain, source), (u, s.source));
    Ok(())
}

proptest! {
    /// OpenAI chat and completion streams: usage as reported, the text as streamed, and
    /// when Tollgate asked for usage on the client's behalf, the client gets the stream
    /// without the usage chunk and without the `"usage":null` members, byte for byte.
    #[test]
    fn openai_streams_are_metered_and_stripped_exactly(case in chat_stream(), cuts in cuts()) {
        check(&case, &cuts)?;
    }
}

/// One piece of a streamed Responses answer: the event type and the text it adds.
fn responses_delta() -> impl Strategy<Value = (&'static str, JStr)> {
    (
        prop::sample::select(vec![
            "response.output_text.delta",
            "response.refusal.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_text.delta",
        ]),
        jstr(),
    )
}

fn responses_stream() -> impl Strategy<Value = Case> {
    (
        model_name(),
        prop::collection::vec(responses_delta(), 0..8),
        reported(),
        any::<bool>(),
    )
        .prop_map(|(model, deltas, reported, incomplete)| {
            let model_json = serde_json::to_string(&model).unwrap();
            let mut out = String::new();
            let mut text = String::new();
            let mut event = |kind: &str, body: String| {
                out.push_str(&sse(
                    Some(kind),
                    &format!(r#"{{"type":"{kind}","sequence_number":0{body}}}"#),
                    "\n",
                ));
            };
            let response = |status: &str, usage: &str| {
                format!(
                    r#","response":{{"id":"resp_1","object":"response","created_at":1,"status":"{status}","model":{model_json},"output":[],"usage":{usage}}}"#
                )
            };
            event("response.created", response("in_progress", "null"));
            event("response.in_progress", response("in_progress", "null"));
            for (kind, delta) in &deltas {
                event(
                    kind,
                    format!(r#","item_id":"item_1","output_index":0,"content_index":0,"delta":{}"#, delta.json),
                );
                text.push_str(&delta.text);
                // The whole text again, which must not be counted twice.
                let done = kind.replace(".delta", ".done");
                event(&done, format!(r#","item_id":"item_1","output_index":0,"text":{}"#, delta.json));
            }
            let (kind, status) = if incomplete {
                ("response.incomplete", "incomplete")
            } else {
                ("response.completed", "completed")
            };
            event(kind, response(status, &reported.responses_json()));
            Case::passed_through(ApiFormat::OpenAi, Endpoint::Responses, out, model, text, reported.usage())
        })
}

impl Reported {
    /// Tollgate's usage from Anthropic's report: every prompt token in `input_tokens`, the
    /// cache parts within it.
    fn anthropic_usage(&self) -> Usage {
        let read = self.cached.unwrap_or(0);
        let write = self.cache_write.unwrap_or(0);
        let input = self.input.saturating_add(read).saturating_add(write);
        Usage {
            input_tokens: input,
            output_tokens: self.output,
            cached_input_tokens: read.min(input),
            cache_write_tokens: write.min(input),
            reasoning_tokens: 0,
        }
    }

    /// Anthropic's `usage` object with `output` as its output count.
    fn anthropic_json(&self, output: u64) -> String {
        let mut s = format!(r#"{{"input_tokens":{}"#, self.input);
        if let Some(w) = self.cache_write {
            s += &format!(r#","cache_creation_input_tokens":{w}"#);
        }
        if let Some(r) = self.cached {
            s += &format!(r#","cache_read_input_tokens":{r}"#);
        }
        s + &format!(r#","output_tokens":{output}}}"#)
    }
}

#[derive(Debug, Clone)]
enum Block {
    Text(Vec<JStr>),
    Thinking(Vec<JStr>),
    ToolUse { name: JStr, input: Vec<JStr> },
}

fn block() -> impl Strategy<Value = Block> {
    let deltas = || prop::collection::vec(jstr(), 0..4);
    prop_oneof![
        3 => deltas().prop_map(Block::Text),
        1 => deltas().prop_map(Block::Thinking),
        1 => (jstr(), deltas()).prop_map(|(name, input)| Block::ToolUse { name, input }),
    ]
}

fn anthropic_stream() -> impl Strategy<Value = Case> {
    (
        model_name(),
        prop::collection::vec(block(), 0..4),
        reported(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(model, blocks, report, restated, pings)| {
            let model_json = serde_json::to_string(&model).unwrap();
            let mut out = String::new();
            let mut text = String::new();
            let event = |out: &mut String, kind: &str, body: String| {
                out.push_str(&sse(Some(kind), &format!(r#"{{"type":"{kind}"{body}}}"#), "\n"));
            };
            event(
                &mut out,
                "message_start",
                format!(
                    r#","message":{{"id":"msg_1","type":"message","role":"assistant","model":{model_json},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{}}}"#,
                    // The output count here is a placeholder.
                    report.anthropic_json(1)
                ),
            );
            for (i, b) in blocks.iter().enumerate() {
                let (start, deltas, field, kind) = match b {
                    Block::Text(d) => (r#"{"type":"text","text":""}"#.to_string(), d, "text", "text_delta"),
                    Block::Thinking(d) => (
                        r#"{"type":"thinking","thinking":"","signature":""}"#.to_string(),
                        d,
                        "thinking",
                        "thinking_delta",
                    ),
                    Block::ToolUse { name, input } => {
                        // The empty input the block starts with counts as text too.
                        text.push_str(&name.text);
                        text.push_str("{}");
                        (
                            format!(r#"{{"type":"tool_use","id":"toolu_1","name":{},"input":{{}}}}"#, name.json),
                            input,
                            "partial_json",
                            "input_json_delta",
                        )
                    }
                };
                event(&mut out, "content_block_start", format!(r#","index":{i},"content_block":{start}"#));
                if pings {
                    out.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
                }
                for d in deltas {
                    text.push_str(&d.text);
                    event(
                        &mut out,
                        "content_block_delta",
                        format!(r#","index":{i},"delta":{{"type":"{kind}","{field}":{}}}"#, d.json),
                    );
                }
                if matches!(b, Block::Thinking(_)) {
                    event(
                        &mut out,
                        "content_block_delta",
                        format!(r#","index":{i},"delta":{{"type":"signature_delta","signature":"c2ln"}}"#),
                    );
                }
                event(&mut out, "content_block_stop", format!(r#","index":{i}"#));
            }
            // The final usage may restate the input counts (it is cumulative).
            let usage = if restated {
                report.anthropic_json(report.output)
            } else {
                format!(r#"{{"output_tokens":{}}}"#, report.output)
            };
            event(
                &mut out,
                "message_delta",
                format!(r#","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{usage}"#),
            );
            event(&mut out, "message_stop", String::new());
            Case::passed_through(ApiFormat::Anthropic, Endpoint::Messages, out, model, text, report.anthropic_usage())
        })
}

proptest! {
    /// Responses streams: usage from the final event, the text from the deltas only.
    #[test]
    fn responses_streams_are_metered_exactly(case in responses_stream(), cuts in cuts()) {
        check(&case, &cuts)?;
    }

    /// Anthropic streams: input counts every prompt token once (uncached, cache reads,
    /// cache writes), output is the final count, the text is every block's.
    #[test]
    fn anthropic_streams_are_metered_exactly(case in anthropic_stream(), cuts in cuts()) {
        check(&case, &cuts)?;
    }
}

/// A small JSON value (a tool's input), without floats, whose text is how serde writes it.
fn tool_input() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        model_text().prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    prop::collection::vec(("[a-z_]{1,6}", value), 0..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

#[derive(Debug, Clone)]
struct ChatChoice {
    content: Option<JStr>,
    refusal: Option<JStr>,
    tool_calls: Vec<(JStr, JStr)>,
}

fn chat_choice() -> impl Strategy<Value = ChatChoice> {
    (
        proptest::option::of(jstr()),
        proptest::option::of(jstr()),
        prop::collection::vec((jstr(), jstr()), 0..3),
    )
        .prop_map(|(content, refusal, tool_calls)| ChatChoice {
            content,
            refusal,
            tool_calls,
        })
}

fn json_or_null(s: &Option<JStr>) -> &str {
    s.as_ref().map_or("null", |s| s.json.as_str())
}

/// A non-streamed body of each kind, with its text and usage.
#[derive(Debug, Clone)]
enum Body {
    Chat(Vec<ChatChoice>),
    Completion(Vec<JStr>),
    Embeddings,
    Responses {
        message: Vec<JStr>,
        calls: Vec<(JStr, JStr)>,
        summary: JStr,
    },
    Anthropic {
        blocks: Vec<(u8, JStr, Value)>,
        report: Reported,
    },
}

fn body() -> impl Strategy<Value = Body> {
    let texts = || prop::collection::vec(jstr(), 0..3);
    prop_oneof![
        prop::collection::vec(chat_choice(), 0..3).prop_map(Body::Chat),
        texts().prop_map(Body::Completion),
        Just(Body::Embeddings),
        (
            texts(),
            prop::collection::vec((jstr(), jstr()), 0..3),
            jstr()
        )
            .prop_map(|(message, calls, summary)| Body::Responses {
                message,
                calls,
                summary
            }),
        (
            prop::collection::vec((0u8..3, jstr(), tool_input()), 0..4),
            reported()
        )
            .prop_map(|(blocks, report)| Body::Anthropic { blocks, report }),
    ]
}

fn whole_body() -> impl Strategy<Value = Case> {
    (
        model_name(),
        body(),
        reported(),
        prop_oneof![Just(Vec::new()), prop::collection::vec(0u8..5, 1..6)],
    )
        .prop_map(|(model, body, reported, ws)| {
            let m = serde_json::to_string(&model).unwrap();
            let mut text = String::new();
            let mut usage = reported.usage();
            let mut raw_values = false;
            let (format, endpoint, json) = match &body {
                Body::Chat(choices) => {
                    let mut cs = Vec::new();
                    for (i, c) in choices.iter().enumerate() {
                        let mut calls = Vec::new();
                        for (name, args) in &c.tool_calls {
                            calls.push(format!(
                                r#"{{"id":"call_1","type":"function","function":{{"name":{},"arguments":{}}}}}"#,
                                name.json, args.json
                            ));
                        }
                        for part in [&c.content, &c.refusal].into_iter().flatten() {
                            text.push_str(&part.text);
                        }
                        for (name, args) in &c.tool_calls {
                            text.push_str(&name.text);
                            text.push_str(&args.text);
                        }
                        let calls = if calls.is_empty() {
                            String::new()
                        } else {
                            format!(r#","tool_calls":[{}]"#, calls.join(","))
                        };
                        cs.push(format!(
                            r#"{{"index":{i},"message":{{"role":"assistant","content":{},"refusal":{}{calls},"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}"#,
                            json_or_null(&c.content),
                            json_or_null(&c.refusal)
                        ));
                    }
                    (ApiFormat::OpenAi, Endpoint::ChatCompletions, format!(
                        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":{m},"choices":[{}],"usage":{},"system_fingerprint":"fp_1"}}"#,
                        cs.join(","), reported.chat_json()
                    ))
                }
                Body::Completion(texts) => {
                    let cs: Vec<String> = texts.iter().enumerate().map(|(i, t)| {
                        text.push_str(&t.text);
                        format!(r#"{{"text":{},"index":{i},"logprobs":null,"finish_reason":"stop"}}"#, t.json)
                    }).collect();
                    (ApiFormat::OpenAi, Endpoint::Completions, format!(
                        r#"{{"id":"cmpl-1","object":"text_completion","created":1,"model":{m},"choices":[{}],"usage":{}}}"#,
                        cs.join(","), reported.chat_json()
                    ))
                }
                Body::Embeddings => {
                    // Embeddings report no completion tokens: a true zero.
                    usage = Usage { input_tokens: reported.input, ..Usage::default() };
                    (ApiFormat::OpenAi, Endpoint::Embeddings, format!(
                        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.0023,-0.0094,1e-7]}}],"model":{m},"usage":{{"prompt_tokens":{},"total_tokens":{}}}}}"#,
                        reported.input, reported.input
                    ))
                }
                Body::Responses { message, calls, summary } => {
                    let mut items = vec![format!(
                        r#"{{"type":"reasoning","id":"rs_1","summary":[{{"type":"summary_text","text":{}}}]}}"#,
                        summary.json
                    )];
                    let parts: Vec<String> = message.iter().map(|t| {
                        text.push_str(&t.text);
                        format!(r#"{{"type":"output_text","text":{},"annotations":[]}}"#, t.json)
                    }).collect();
                    items.push(format!(
                        r#"{{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{}]}}"#,
                        parts.join(",")
                    ));
                    for (name, args) in calls {
                        text.push_str(&name.text);
                        text.push_str(&args.text);
                        items.push(format!(
                            r#"{{"type":"function_call","id":"fc_1","call_id":"call_1","name":{},"arguments":{},"status":"completed"}}"#,
                            name.json, args.json
                        ));
                    }
                    (ApiFormat::OpenAi, Endpoint::Responses, format!(
                        r#"{{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":{m},"output":[{}],"usage":{}}}"#,
                        items.join(","), reported.responses_json()
                    ))
                }
                Body::Anthropic { blocks, report } => {
                    usage = report.anthropic_usage();
                    let bs: Vec<String> = blocks.iter().map(|(kind, s, input)| match kind {
                        0 => {
                            text.push_str(&s.text);
                            format!(r#"{{"type":"text","text":{}}}"#, s.json)
                        }
                        1 => {
                            text.push_str(&s.text);
                            format!(r#"{{"type":"thinking","thinking":{},"signature":"c2ln"}}"#, s.json)
                        }
                        _ => {
                            raw_values = true;
                            let input = input.to_string();
                            text.push_str(&s.text);
                            text.push_str(&input);
                            format!(r#"{{"type":"tool_use","id":"toolu_1","name":{},"input":{input}}}"#, s.json)
                        }
                    }).collect();
                    (ApiFormat::Anthropic, Endpoint::Messages, format!(
                        r#"{{"id":"msg_1","type":"message","role":"assistant","model":{m},"content":[{}],"stop_reason":"end_turn","stop_sequence":null,"usage":{}}}"#,
                        bs.join(","), report.anthropic_json(report.output)
                    ))
                }
            };
            let upstream = spread_whitespace(&json, &ws);
            Case {
                format,
                endpoint,
                stream: false,
                strip: false,
                client: upstream.clone(),
                upstream,
                model: Some(model),
                text,
                usage: Some(usage),
                text_as_it_arrives: ws.is_empty() || !raw_values,
            }
        })
}

proptest! {
    /// Non-streamed bodies of every kind, spaced out or not, cut anywhere: the text taken as
    /// the body arrives only grows towards the final text, and the whole body gives the
    /// reported usage.
    #[test]
    fn whole_bodies_are_metered_exactly(case in whole_body(), cuts in cuts()) {
        check(&case, &cuts)?;
    }
}

// ---------------------------------------------------------------------------------------
// Anything at all
// ---------------------------------------------------------------------------------------

/// JSON built from the names the readers look for, with values of every type and size.
fn lookalike_json() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "type",
        "model",
        "choices",
        "delta",
        "message",
        "content",
        "text",
        "usage",
        "index",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "completion_tokens_details",
        "reasoning_tokens",
        "input_tokens_details",
        "output_tokens_details",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "response",
        "output",
        "error",
        "content_block",
        "partial_json",
        "thinking",
        "refusal",
        "input",
    ];
    const WORDS: &[&str] = &[
        "message_start",
        "message_delta",
        "content_block_start",
        "content_block_delta",
        "message_stop",
        "error",
        "response.completed",
        "response.failed",
        "response.output_text.delta",
        "response.created",
        "text",
        "tool_use",
        "thinking",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(Value::from),
        model_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn lookalike_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => (lookalike_json(), prop::sample::select(vec!["\n\n", "\r\n\r\n", "\n"]))
            .prop_map(|(v, end)| format!("data: {v}{end}").into_bytes()),
        1 => lookalike_json().prop_map(|v| v.to_string().into_bytes()),
        1 => Just(b"data: [DONE]\n\n".to_vec()),
        1 => Just(b",\"usage\":null".to_vec()),
        1 => sse_noise(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn any_endpoint() -> impl Strategy<Value = (ApiFormat, Endpoint)> {
    prop::sample::select(vec![
        (ApiFormat::OpenAi, Endpoint::ChatCompletions),
        (ApiFormat::OpenAi, Endpoint::Completions),
        (ApiFormat::OpenAi, Endpoint::Embeddings),
        (ApiFormat::OpenAi, Endpoint::Responses),
        (ApiFormat::Anthropic, Endpoint::Messages),
        (ApiFormat::OpenAi, Endpoint::Other),
    ])
}

proptest! {
    /// Whatever an upstream sends, in any chunks, the meter does not panic, forwards no
    /// more than it got, and settles to counts whose parts fit in their wholes.
    #[test]
    fn a_meter_survives_any_bytes(
        bytes in lookalike_bytes(),
        cuts in cuts(),
        (format, endpoint) in any_endpoint(),
        stream in any::<bool>(),
        strip in any::<bool>(),
        estimate in tokens(),
    ) {
        let mut meter = Meter::new(format, endpoint, stream, strip);
        let mut forwarded = 0;
        for chunk in chunks(&bytes, &cuts) {
            match meter.feed(chunk) {
                Some(out) => forwarded += out.len(),
                None => {
                    prop_assert!(!meter.rewrites());
                    forwarded += chunk.len();
                }
            }
        }
        meter.finish_body();
        forwarded += meter.take_unforwarded().len();
        prop_assert!(forwarded <= bytes.len());
        let o = &meter.observed;
        prop_assert!(o.output_text_bytes >= o.output_text.len());
        let s = settle_counted(o, || Count { tokens: estimate, exact: true }, Encoding::O200k);
        let u = s.usage;
        prop_assert!(u.cached_input_tokens <= u.input_tokens);
        prop_assert!(u.cache_write_tokens <= u.input_tokens);
        prop_assert!(u.reasoning_tokens <= u.output_tokens);
        prop_assert_eq!(s.source == UsageSource::Reported, o.input_tokens.is_some() && o.output_tokens.is_some());
    }
}
