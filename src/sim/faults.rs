//! Per-request behaviour requested through headers (the proxy forwards unknown headers).
//!
//! - `x-sim-fault`: directives separated by `,` or `;`. Each one applies to every request, or,
//!   written `DIRECTIVE@MODEL`, only to requests whose body names exactly that `model`
//!   (`status=429@gpt-4o-mini`). The model is everything after the first `@`, so names with
//!   `-`, `.`, `/`, `:` or a further `@` (Vertex's `claude-sonnet-4@20250514`) scope fine;
//!   directives themselves never contain `@`. Requests without a body model (`GET /v1/models`,
//!   or a body that is not JSON) see only the unscoped directives. Directives apply in order,
//!   so a later one overrides an earlier one for the same setting.
//!   - `status=N`: reply N (400..=599) with an error body in the API's format.
//!   - `retry-after=N`: with `status`, the error carries a `retry-after: N` header (seconds).
//!   - `no-usage`: omit every usage object.
//!   - `reset-after=K`: send K content events, then abort the connection mid-body.
//!   - `delay-ms=N`: hold the response header back N ms (at most 60 s): a slow provider.
//!   - `hang`: never send the response header; the request is held until the client leaves.
//!   - `truncate`: the answer stops as if it hit the max-tokens limit (`finish_reason:
//!     "length"`, Responses `status: "incomplete"`, Anthropic `stop_reason: "max_tokens"`);
//!     a tool call's arguments and a JSON answer are cut off mid-text.
//!   - `refuse`: the answer is a refusal, "I'm sorry, but I can't help with that."; Anthropic
//!     says `stop_reason: "refusal"`, OpenAI chat with a `json_schema` response format puts it
//!     in `message.refusal` (streamed as `delta.refusal`) with `content: null`, and the
//!     Responses API in a `refusal` content part (`response.refusal.delta`), as OpenAI does
//!     for structured outputs; elsewhere it is the answer's text.
//!   - `content-filter`: the answer is withheld by a content filter: OpenAI `finish_reason:
//!     "content_filter"`, Responses `status: "incomplete"` for reason `content_filter`;
//!     Anthropic, which has no such reason, says `stop_reason: "refusal"`.
//!   - `invalid-json`: when JSON was asked for (`response_format` / Responses `text.format`
//!     of type `json_object` or `json_schema`), the text is JSON with its last character cut;
//!     with `invalid-json=schema` it parses but breaks the requested schema (as
//!     `bad-tool-args` does to arguments).
//!   - `bad-tool-args`: a forced tool call's arguments parse but break the tool's schema (the
//!     first required property is left out, or else a property gets the wrong type); when the
//!     schema cannot be broken that way, or with `bad-tool-args=syntax`, they do not parse
//!     (Anthropic's non-streamed `input` is always an object: there it is then `{}`).
//!   - `logprob=X`: mean token logprob (a float <= 0, default -0.1) reported when an OpenAI
//!     chat request asks for `logprobs`.
//! - `x-sim-output-tokens: N`: generate exactly N visible output tokens (prose answers).
//! - `x-sim-token-interval-ms: N`: pause N ms between streamed events.
//!
//! Malformed values are ignored rather than rejected, so a typo shows up as "no fault".

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

pub(crate) const FAULT: &str = "x-sim-fault";
pub(crate) const OUTPUT_TOKENS: &str = "x-sim-output-tokens";
pub(crate) const TOKEN_INTERVAL: &str = "x-sim-token-interval-ms";

/// Keeps a stray huge header value from making the simulator allocate gigabytes.
const MAX_OUTPUT_TOKENS: u64 = 100_000;
const MAX_INTERVAL_MS: u64 = 60_000;
/// Means below this make every token implausible; it also keeps the arithmetic finite.
const MIN_LOGPROB: f64 = -50.0;

/// The directive separator that scopes a directive to one model.
const SCOPE: char = '@';

/// The headers of one request, before the model its directives may be scoped to is known.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    /// `(model, directive)` in header order; `None` applies to every model.
    rules: Vec<(Option<String>, String)>,
    output_tokens: Option<u64>,
    token_interval: Option<Duration>,
}

impl Faults {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let rules = headers
            .get_all(FAULT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once(SCOPE) {
                Some((directive, model)) => {
                    (Some(model.trim().to_owned()), directive.trim().to_owned())
                }
                None => (None, item.to_owned()),
            })
            .collect();
        Faults {
            rules,
            output_tokens: number(OUTPUT_TOKENS).map(|n| n.min(MAX_OUTPUT_TOKENS)),
            token_interval: number(TOKEN_INTERVAL)
                .map(|ms| Duration::from_millis(ms.min(MAX_INTERVAL_MS))),
        }
    }

    /// The directives that apply to a request for `model`.
    pub fn for_model(&self, model: Option<&str>) -> Directives {
        let mut d = Directives {
            output_tokens: self.output_tokens,
            token_interval: self.token_interval,
            ..Directives::default()
        };
        for (scope, directive) in &self.rules {
            if scope.is_none() || scope.as_deref() == model {
                d.apply(directive);
            }
        }
        d
    }
}

/// How `bad-tool-args` breaks a tool call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadArgs {
    /// Valid JSON that does not match the schema, where the schema allows that.
    Schema,
    /// Not JSON at all.
    Syntax,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Directives {
    pub status: Option<StatusCode>,
    pub retry_after: Option<u64>,
    pub no_usage: bool,
    pub reset_after: Option<usize>,
    pub header_delay: Option<Duration>,
    pub hang: bool,
    pub truncate: bool,
    pub refuse: bool,
    pub content_filter: bool,
    pub invalid_json: bool,
    /// JSON that parses but does not fit the requested schema.
    pub off_schema: bool,
    pub bad_tool_args: Option<BadArgs>,
    pub logprob: Option<f64>,
    pub output_tokens: Option<u64>,
    pub token_interval: Option<Duration>,
}

impl Directives {
    fn apply(&mut self, item: &str) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        match (key.to_ascii_lowercase().as_str(), value) {
            ("status", Some(v)) => {
                // Only error statuses make sense as a fault.
                self.status = v
                    .parse::<u16>()
                    .ok()
                    .filter(|code| (400..=599).contains(code))
                    .and_then(|code| StatusCode::from_u16(code).ok());
            }
            ("retry-after", Some(v)) => self.retry_after = v.parse().ok(),
            ("no-usage", None) => self.no_usage = true,
            ("reset-after", Some(v)) => self.reset_after = v.parse().ok(),
            ("delay-ms", Some(v)) => {
                self.header_delay = v
                    .parse::<u64>()
                    .ok()
                    .map(|ms| Duration::from_millis(ms.min(MAX_INTERVAL_MS)))
            }
            ("hang", None) => self.hang = true,
            ("truncate", None) => self.truncate = true,
            ("refuse", None) => self.refuse = true,
            ("content-filter", None) => self.content_filter = true,
            ("invalid-json", None) => self.invalid_json = true,
            ("invalid-json", Some("schema")) => self.off_schema = true,
            ("bad-tool-args", None) => self.bad_tool_args = Some(BadArgs::Schema),
            ("bad-tool-args", Some("syntax")) => self.bad_tool_args = Some(BadArgs::Syntax),
            ("logprob", Some(v)) => {
                self.logprob = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x <= 0.0)
                    .map(|x| x.max(MIN_LOGPROB));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(pairs: &[(&'static str, &'static str)]) -> Faults {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        Faults::from_headers(&headers)
    }

    fn parse(pairs: &[(&'static str, &'static str)]) -> Directives {
        faults(pairs).for_model(None)
    }

    #[test]
    fn parses_combined_directives() {
        let d = parse(&[
            (FAULT, "no-usage, reset-after=3"),
            (OUTPUT_TOKENS, "12"),
            (TOKEN_INTERVAL, "25"),
        ]);
        assert!(d.no_usage);
        assert_eq!(d.reset_after, Some(3));
        assert_eq!(d.output_tokens, Some(12));
        assert_eq!(d.token_interval, Some(Duration::from_millis(25)));
        assert_eq!(d.status, None);
    }

    #[test]
    fn ignores_malformed_values() {
        let d = parse(&[
            (FAULT, "status=abc; reset-after=-1; bogus"),
            (OUTPUT_TOKENS, "many"),
        ]);
        assert_eq!(d, Directives::default());
        assert_eq!(parse(&[(FAULT, "status=200")]).status, None);
        assert_eq!(
            parse(&[(FAULT, "status=529")]).status.map(|s| s.as_u16()),
            Some(529)
        );
    }

    #[test]
    fn scoped_directives_apply_to_their_model_only() {
        let f = faults(&[(
            FAULT,
            "status=429@gpt-4o-mini, retry-after=2@gpt-4o-mini; truncate, \
             refuse@claude-sonnet-4@20250514, logprob=-3.5@ft:gpt-4o:org:x:1",
        )]);
        let mini = f.for_model(Some("gpt-4o-mini"));
        assert_eq!(mini.status.map(|s| s.as_u16()), Some(429));
        assert_eq!(mini.retry_after, Some(2));
        assert!(mini.truncate && !mini.refuse);
        let other = f.for_model(Some("gpt-4o"));
        assert_eq!((other.status, other.retry_after), (None, None));
        assert!(other.truncate);
        assert!(f.for_model(Some("claude-sonnet-4@20250514")).refuse);
        assert!(!f.for_model(Some("claude-sonnet-4")).refuse);
        assert_eq!(f.for_model(Some("ft:gpt-4o:org:x:1")).logprob, Some(-3.5));
        assert_eq!(f.for_model(None).status, None);
    }

    #[test]
    fn later_directives_override_earlier_ones() {
        let f = faults(&[(FAULT, "status=500, status=503@m"), (FAULT, "logprob=-1")]);
        assert_eq!(f.for_model(Some("m")).status.map(|s| s.as_u16()), Some(503));
        assert_eq!(f.for_model(Some("n")).status.map(|s| s.as_u16()), Some(500));
        assert_eq!(f.for_model(Some("n")).logprob, Some(-1.0));
    }

    #[test]
    fn new_directives_parse() {
        let d = parse(&[(
            FAULT,
            "hang, invalid-json, bad-tool-args=syntax, logprob=0.5, content-filter",
        )]);
        assert!(d.hang && d.invalid_json && d.content_filter && !d.off_schema);
        assert_eq!(d.bad_tool_args, Some(BadArgs::Syntax));
        // Logprobs are never positive.
        assert_eq!(d.logprob, None);
        assert_eq!(
            parse(&[(FAULT, "bad-tool-args")]).bad_tool_args,
            Some(BadArgs::Schema)
        );
        assert_eq!(parse(&[(FAULT, "bad-tool-args=nope")]).bad_tool_args, None);
        let d = parse(&[(FAULT, "invalid-json=schema")]);
        assert!(d.off_schema && !d.invalid_json);
    }
}
