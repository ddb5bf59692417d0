//! The simulated provider's answers, fetched over a real socket, replayed in the other shape:
//! what a client reads from the replay (text, finish, tool calls, logprobs) and what the
//! meter counts (every usage part, the model) must equal what the original said.

use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{ConvertError, to_stream, to_whole};
use crate::answer::Answer;
use crate::api::{ApiFormat, Endpoint};
use crate::sim::{SimOptions, SimProvider};
use crate::usage::meter::Meter;

async fn start() -> String {
    let sim = SimProvider::new(SimOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sim.serve(listener, std::future::pending()));
    base
}

/// One request to replay, streamed and not.
struct Case {
    name: &'static str,
    endpoint: Endpoint,
    request: Value,
    fault: Option<&'static str>,
}

impl Case {
    fn format(&self) -> ApiFormat {
        self.endpoint.format(&http::HeaderMap::new())
    }

    fn path(&self) -> &'static str {
        match self.endpoint {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
            other => panic!("{other:?} does not stream"),
        }
    }

    /// The body of the request, streamed or not; OpenAI streams are asked for usage.
    async fn fetch(&self, base: &str, stream: bool) -> Vec<u8> {
        let mut req = self.request.clone();
        req["stream"] = json!(stream);
        if stream
            && matches!(
                self.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            )
        {
            req["stream_options"] = json!({"include_usage": true});
        }
        let mut post = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{base}{}", self.path()))
            .header("authorization", "Bearer sk-test")
            .header("anthropic-version", "2023-06-01")
            .json(&req);
        if let Some(fault) = self.fault {
            post = post.header("x-sim-fault", fault);
        }
        let resp = post.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", self.name);
        resp.bytes().await.unwrap().to_vec()
    }
}

const WEATHER: &str = r#"{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string"}},"required":["city","unit"]}"#;
const PERSON: &str =
    r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#;

fn cases() -> Vec<Case> {
    let weather: Value = serde_json::from_str(WEATHER).unwrap();
    let person: Value = serde_json::from_str(PERSON).unwrap();
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello to the world."},
    ]);
    let chat = |model: &str| json!({"model": model, "messages": messages});
    let mut chat_tool = chat("gpt-4o");
    chat_tool["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]);
    chat_tool["tool_choice"] = json!("required");
    let mut chat_logprobs = chat("gpt-4o");
    chat_logprobs["logprobs"] = json!(true);
    chat_logprobs["top_logprobs"] = json!(2);
    let mut chat_schema = chat("gpt-4o");
    chat_schema["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "p", "schema": person}});
    let responses =
        |model: &str| json!({"model": model, "instructions": "Be brief.", "input": "Hello there"});
    let mut responses_tool = responses("gpt-4o");
    responses_tool["tools"] =
        json!([{"type": "function", "name": "get_weather", "parameters": weather}]);
    responses_tool["tool_choice"] = json!("required");
    let mut responses_schema = responses("gpt-4o");
    responses_schema["text"] =
        json!({"format": {"type": "json_schema", "name": "p", "schema": person}});
    let claude = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 200,
        "system": [{"type": "text", "text": "You are terse. ".repeat(300),
            "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hello to the world."}],
    });
    let mut claude_tool = claude.clone();
    claude_tool["tools"] = json!([{"name": "get_weather", "input_schema": weather}]);
    claude_tool["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let completion =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello", "max_tokens": 40});

    let case = |name, endpoint, request: &Value, fault| Case {
        name,
        endpoint,
        request: request.clone(),
        fault,
    };
    use Endpoint::*;
    vec![
        case("chat", ChatCompletions, &chat("gpt-4o-mini"), None),
        case("chat reasoning", ChatCompletions, &chat("o4-mini"), None),
        case("chat tool", ChatCompletions, &chat_tool, None),
        case("chat logprobs", ChatCompletions, &chat_logprobs, None),
        case(
            "chat refusal",
            ChatCompletions,
            &chat_schema,
            Some("refuse"),
        ),
        case(
            "chat truncated",
            ChatCompletions,
            &chat("gpt-4o"),
            Some("truncate"),
        ),
        case("completion", Completions, &completion, None),
        case(
            "completion truncated",
            Completions,
            &completion,
            Some("truncate"),
        ),
        case("responses", Responses, &responses("gpt-4o"), None),
        case(
            "responses reasoning",
            Responses,
            &responses("o4-mini"),
            None,
        ),
        case("responses tool", Responses, &responses_tool, None),
        case(
            "responses refusal",
            Responses,
            &responses_schema,
            Some("refuse"),
        ),
        case(
            "responses incomplete",
            Responses,
            &responses("gpt-4o"),
            Some("truncate"),
        ),
        case("messages", Messages, &claude, None),
        case("messages tool", Messages, &claude_tool, None),
        case("messages refusal", Messages, &claude, Some("refuse")),
        case("messages truncated", Messages, &claude, Some("truncate")),
    ]
}

/// What the meter takes from a body: every usage part and the model.
fn metered(
    format: ApiFormat,
    endpoint: Endpoint,
    stream: bool,
    body: &[u8],
) -> (Option<u64>, Option<u64>, u64, u64, u64, Option<String>) {
    let mut m = Meter::new(format, endpoint, stream, false);
    m.feed(body);
    m.finish_body();
    let o = m.observed;
    (
        o.input_tokens,
        o.output_tokens,
        o.cached_input_tokens,
        o.cache_write_tokens,
        o.reasoning_tokens,
        o.model,
    )
}

/// The replay says what the original said, to a reader and to the meter; `sse` tells
/// whether each is an event stream.
fn assert_same(case: &Case, original: (&[u8], bool), replay: (&[u8], bool)) {
    let (format, endpoint) = (case.format(), case.endpoint);
    let said = Answer::read(format, endpoint, original.1, original.0);
    let replayed = Answer::read(format, endpoint, replay.1, replay.0);
    assert!(
        !said.text.is_empty() || !said.tool_calls.is_empty() || said.refusal.is_some(),
        "{}: the original says something",
        case.name
    );
    assert_eq!(replayed, said, "{}", case.name);
    let counted = metered(format, endpoint, original.1, original.0);
    assert!(
        counted.0.is_some() && counted.1.is_some(),
        "{}: usage reported",
        case.name
    );
    assert_eq!(
        metered(format, endpoint, replay.1, replay.0),
        counted,
        "{}",
        case.name
    );
}

#[tokio::test]
async fn whole_answers_replay_as_streams() {
    let base = start().await;
    for case in cases() {
        let whole = case.fetch(&base, false).await;
        let stream = to_stream(case.format(), case.endpoint, &whole, true).unwrap();
        assert_same(&case, (&whole, false), (&stream, true));
        // And back: the same body, field for field.
        let back = to_whole(case.format(), case.endpoint, &stream).unwrap();
        let (whole, back): (Value, Value) = (
            serde_json::from_slice(&whole).unwrap(),
            serde_json::from_slice(&back).unwrap(),
        );
        assert_eq!(back, whole, "{}", case.name);
    }
}

#[tokio::test]
async fn streamed_answers_replay_whole() {
    let base = start().await;
    for case in cases() {
        let stream = case.fetch(&base, true).await;
        let whole = to_whole(case.format(), case.endpoint, &stream).unwrap();
        assert_same(&case, (&stream, true), (&whole, false));
        // Streamed again, it still says the same.
        let again = to_stream(case.format(), case.endpoint, &whole, true).unwrap();
        assert_same(&case, (&stream, true), (&again, true));
    }
}

#[tokio::test]
async fn a_stream_cut_off_is_refused() {
    let base = start().await;
    for case in cases() {
        let stream = case.fetch(&base, true).await;
        let cut = &stream[..stream.len() * 2 / 3];
        assert!(
            matches!(
                to_whole(case.format(), case.endpoint, cut),
                Err(ConvertError::Incomplete)
            ),
            "{}",
            case.name
        );
    }
}
