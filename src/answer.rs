//! What a response says: its text, how it ended, its tool calls and token logprobs, read
//! from a whole response body (JSON or a server-sent event stream) in any supported wire
//! format. Judges read held cascade answers through this.

use crate::api::{ApiFormat, Endpoint};
use crate::usage::sse::{SseBuffer, SseEvent};
use serde_json::Value;

/// How an answer ended, in one vocabulary for every format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Finish {
    /// A natural end (`stop`, `end_turn`, `stop_sequence`, a completed response).
    Stop,
    /// Cut at the output limit (`length`, `max_tokens`, `max_output_tokens`).
    Length,
    /// Withheld by the provider's filter (`content_filter`).
    ContentFilter,
    /// The model declined (Anthropic `refusal`, OpenAI `message.refusal`).
    Refusal,
    /// It asked for tools to be called.
    ToolCalls,
    Other(String),
    /// The body never said.
    #[default]
    Unknown,
}

impl Finish {
    fn from_reason(reason: &str) -> Finish {
        match reason {
            "stop" | "end_turn" | "stop_sequence" | "completed" => Finish::Stop,
            "length" | "max_tokens" | "max_output_tokens" | "model_context_window_exceeded" => {
                Finish::Length
            }
            "content_filter" => Finish::ContentFilter,
            "refusal" => Finish::Refusal,
            "tool_calls" | "tool_use" | "function_call" => Finish::ToolCalls,
            other => Finish::Other(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as the model wrote them (JSON text, possibly invalid).
    pub arguments: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub text: String,
    /// The provider's refusal message, when it sent one apart from the text.
    pub refusal: Option<String>,
    pub finish: Finish,
    pub tool_calls: Vec<ToolCall>,
    /// One logprob per output token, when the provider sent them.
    pub logprobs: Vec<f64>,
}

impl Answer {
    /// Reads `body`, a whole response of `endpoint` in `format`; `sse` when it is an event
    /// stream. Only the first choice is read.
    pub fn read(format: ApiFormat, endpoint: Endpoint, sse: bool, body: &[u8]) -> Answer {
        let mut a = Answer::default();
        if !sse {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                a.read_whole(format, endpoint, &v);
            }
            return a;
        }
        let mut events: Vec<SseEvent> = Vec::new();
        SseBuffer::default().push(body, &mut events);
        for ev in events {
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                a.read_event(format, endpoint, &v);
            }
        }
        a
    }

    fn read_whole(&mut self, format: ApiFormat, endpoint: Endpoint, v: &Value) {
        match (format, endpoint) {
            (ApiFormat::Anthropic, _) => {
                for block in v["content"].as_array().into_iter().flatten() {
                    self.read_anthropic_block(block);
                }
                self.set_finish(&v["stop_reason"]);
            }
            (_, Endpoint::Responses) => self.read_response_object(v),
            // Whole or streamed, a legacy completion choice has the same shape.
            (_, Endpoint::Completions) => self.read_completion_choice(&v["choices"][0]),
            _ => {
                let choice = &v["choices"][0];
                let msg = &choice["message"];
                self.push_text(&msg["content"]);
                if let Some(r) = msg["refusal"].as_str() {
                    self.refusal = Some(r.to_string());
                }
                for call in msg["tool_calls"].as_array().into_iter().flatten() {
                    self.tool_calls.push(ToolCall {
                        name: str_of(&call["function"]["name"]),
                        arguments: str_of(&call["function"]["arguments"]),
                    });
                }
                self.push_logprobs(&choice["logprobs"]);
                self.set_finish(&choice["finish_reason"]);
            }
        }
        if self.refusal.is_some() && self.finish == Finish::Stop {
            self.finish = Finish::Refusal;
        }
    }

    fn read_event(&mut self, format: ApiFormat, endpoint: Endpoint, v: &Value) {
        match (format, endpoint) {
            (ApiFormat::Anthropic, _) => match v["type"].as_str() {
                Some("content_block_start") => self.read_anthropic_block(&v["content_block"]),
                Some("content_block_delta") => {
                    let d = &v["delta"];
                    self.push_text(&d["text"]);
                    if let (Some(p), Some(call)) =
                        (d["partial_json"].as_str(), self.tool_calls.last_mut())
                    {
                        call.arguments.push_str(p);
                    }
                }
                Some("message_delta") => self.set_finish(&v["delta"]["stop_reason"]),
                _ => {}
            },
            (_, Endpoint::Responses) => {
                // The final event carries the whole response.
                if matches!(
                    v["type"].as_str(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                ) {
                    *self = Answer::default();
                    self.read_response_object(&v["response"]);
                }
            }
            // Whole or streamed, a legacy completion choice has the same shape.
            (_, Endpoint::Completions) => self.read_completion_choice(&v["choices"][0]),
            _ => {
                let choice = &v["choices"][0];
                let d = &choice["delta"];
                self.push_text(&d["content"]);
                if let Some(r) = d["refusal"].as_str() {
                    self.refusal.get_or_insert_default().push_str(r);
                }
                for call in d["tool_calls"].as_array().into_iter().flatten() {
                    let i = call["index"].as_u64().unwrap_or(0) as usize;
                    if self.tool_calls.len() <= i {
                        self.tool_calls.resize(i + 1, ToolCall::default());
                    }
                    let f = &call["function"];
                    if let Some(name) = f["name"].as_str() {
                        self.tool_calls[i].name.push_str(name);
                    }
                    if let Some(args) = f["arguments"].as_str() {
                        self.tool_calls[i].arguments.push_str(args);
                    }
                }
                self.push_logprobs(&choice["logprobs"]);
                self.set_finish(&choice["finish_reason"]);
                if self.refusal.is_some() && self.finish == Finish::Stop {
                    self.finish = Finish::Refusal;
                }
            }
        }
    }

    fn read_completion_choice(&mut self, choice: &Value) {
        self.push_text(&choice["text"]);
        self.set_finish(&choice["finish_reason"]);
    }

    fn read_anthropic_block(&mut self, block: &Value) {
        match block["type"].as_str() {
            Some("text") => self.push_text(&block["text"]),
            Some("tool_use") => {
                // Whole bodies carry `input` as an object; streams start it empty and send
                // the JSON text in deltas.
                let input = &block["input"];
                let arguments = match input.as_object() {
                    Some(o) if !o.is_empty() => input.to_string(),
                    _ => String::new(),
                };
                self.tool_calls.push(ToolCall {
                    name: str_of(&block["name"]),
                    arguments,
                });
            }
            _ => {}
        }
    }

    fn read_response_object(&mut self, r: &Value) {
        for item in r["output"].as_array().into_iter().flatten() {
            match item["type"].as_str() {
                Some("message") => {
                    for part in item["content"].as_array().into_iter().flatten() {
                        match part["type"].as_str() {
                            Some("output_text") => self.push_text(&part["text"]),
                            Some("refusal") => self.refusal = Some(str_of(&part["refusal"])),
                            _ => {}
                        }
                    }
                }
                Some("function_call") => self.tool_calls.push(ToolCall {
                    name: str_of(&item["name"]),
                    arguments: str_of(&item["arguments"]),
                }),
                _ => {}
            }
        }
        self.finish = match r["status"].as_str() {
            Some("incomplete") => match r["incomplete_details"]["reason"].as_str() {
                Some("content_filter") => Finish::ContentFilter,
                _ => Finish::Length,
            },
            _ if self.refusal.is_some() => Finish::Refusal,
            _ if !self.tool_calls.is_empty() => Finish::ToolCalls,
            Some(s) => Finish::from_reason(s),
            None => Finish::Unknown,
        };
    }

    fn push_text(&mut self, v: &Value) {
        if let Some(t) = v.as_str() {
            self.text.push_str(t);
        }
    }

    fn push_logprobs(&mut self, v: &Value) {
        for t in v["content"].as_array().into_iter().flatten() {
            if let Some(lp) = t["logprob"].as_f64() {
                self.logprobs.push(lp);
            }
        }
    }

    fn set_finish(&mut self, v: &Value) {
        if let Some(reason) = v.as_str() {
            self.finish = Finish::from_reason(reason);
        }
    }

    /// The mean token logprob, when logprobs were sent.
    pub fn mean_logprob(&self) -> Option<f64> {
        (!self.logprobs.is_empty())
            .then(|| self.logprobs.iter().sum::<f64>() / self.logprobs.len() as f64)
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: ApiFormat, endpoint: Endpoint, sse: bool, body: &str) -> Answer {
        Answer::read(format, endpoint, sse, body.as_bytes())
    }

    #[test]
    fn openai_chat_whole_and_streamed_say_the_same() {
        let whole = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"{\"a\":1}",
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":2}"}}]},
            "logprobs":{"content":[{"token":"a","logprob":-0.5},{"token":"b","logprob":-1.5}]},
            "finish_reason":"length"}]}"#;
        let streamed = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"{\\\"a\"}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\":1}\",\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\"}}]},\"logprobs\":{\"content\":[{\"logprob\":-0.5}]}}]}\n\n\
            data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":2}\"}}]},\"logprobs\":{\"content\":[{\"logprob\":-1.5}]},\"finish_reason\":\"length\"}]}\n\n\
            data: [DONE]\n\n";
        let a = read(ApiFormat::OpenAi, Endpoint::ChatCompletions, false, whole);
        let b = read(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, streamed);
        assert_eq!(a.text, r#"{"a":1}"#);
        assert_eq!(a.finish, Finish::Length);
        assert_eq!(
            a.tool_calls,
            [ToolCall {
                name: "f".into(),
                arguments: r#"{"x":2}"#.into()
            }]
        );
        assert_eq!(a.mean_logprob(), Some(-1.0));
        assert_eq!(a, b);
    }

    #[test]
    fn anthropic_whole_and_streamed_say_the_same() {
        let whole = r#"{"type":"message","content":[{"type":"text","text":"Hi there"},
            {"type":"tool_use","id":"t","name":"f","input":{"x":2}}],"stop_reason":"max_tokens"}"#;
        let streamed = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":2}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"}}\n\n",
        );
        let a = read(ApiFormat::Anthropic, Endpoint::Messages, false, whole);
        let b = read(ApiFormat::Anthropic, Endpoint::Messages, true, streamed);
        assert_eq!(a.text, "Hi there");
        assert_eq!(a.finish, Finish::Length);
        assert_eq!(a.tool_calls[0].arguments, r#"{"x":2}"#);
        assert_eq!(a, b);
    }

    #[test]
    fn responses_incomplete_is_a_length_finish() {
        let body = r#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},
            "output":[{"type":"message","content":[{"type":"output_text","text":"partial"}]}]}"#;
        let a = read(ApiFormat::OpenAi, Endpoint::Responses, false, body);
        assert_eq!((a.text.as_str(), a.finish), ("partial", Finish::Length));
        let refused = r#"{"status":"completed","output":[{"type":"message","content":[{"type":"refusal","refusal":"no"}]}]}"#;
        assert_eq!(
            read(ApiFormat::OpenAi, Endpoint::Responses, false, refused).finish,
            Finish::Refusal
        );
    }
}
