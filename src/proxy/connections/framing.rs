//! Request headers read ahead of pingora, so that a header it would refuse gets Tollgate's
//! answer: a status, a body in the documented error shape, and a count in the metrics.
//! Left to itself, pingora's HTTP/1 layer answers an empty 400 before any hook runs.
//!
//! Pingora's own parser judges the bytes (a scratch session reading them from memory), so
//! exactly the headers it accepts, its lenient request-line escaping included, go through.

use crate::api::{ApiFormat, Endpoint};
use crate::error::wire_error;
use bytes::BytesMut;
use pingora::ErrorType;
use pingora::protocols::Stream;
use pingora::protocols::http::v1::server::HttpSession;
use std::io::Cursor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pingora's cap on a request header (`MAX_HEADER_SIZE` in pingora-core's HTTP/1 code).
pub const MAX_HEADER_BYTES: usize = 1_048_575;
/// Pingora's cap on header fields (`MAX_HEADERS`).
const MAX_HEADER_FIELDS: usize = 256;
/// Longest explanation from pingora quoted back to the client.
const MAX_DETAIL: usize = 200;

/// The metric's `kind` for a pipelined request header pingora refused itself.
pub const PIPELINED: &str = "pipelined";

/// Why a request header was refused; `label` is the metric's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not `METHOD target HTTP/1.x`.
    RequestLine,
    /// A header line that is not `Name: value`.
    Header,
    /// Over pingora's size or field-count cap.
    TooLarge,
    /// Readable, but the framing or target is ambiguous (Content-Length,
    /// Transfer-Encoding, Host).
    Ambiguous,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::RequestLine => "request_line",
            Kind::Header => "header",
            Kind::TooLarge => "too_large",
            Kind::Ambiguous => "ambiguous",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Kind::TooLarge => "431 Request Header Fields Too Large",
            _ => "400 Bad Request",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Kind::RequestLine => "malformed_request_line",
            Kind::Header => "malformed_header",
            Kind::TooLarge => "header_too_large",
            Kind::Ambiguous => "ambiguous_framing",
        }
    }
}

/// A refused header: what was wrong, in words for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
    /// The wire format of the path, when the request line was readable.
    format: ApiFormat,
}

/// What the bytes read so far make of a request header.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// More bytes are needed.
    Partial,
    /// Pingora reads it (or fails it in a way it answers without a 400: left to it).
    Accepted,
    Refused(Refusal),
}

/// Judges `buf` (the start of a request) as pingora would.
pub async fn judge(buf: &[u8]) -> Verdict {
    let mut scratch = HttpSession::new(Box::new(Cursor::new(Vec::<u8>::new())));
    scratch.set_pipelined_prefix(BytesMut::from(buf));
    match scratch.read_request().await {
        Ok(_) => Verdict::Accepted,
        // The scratch stream ended before the header did.
        Err(e) if e.etype == ErrorType::ConnectionClosed => Verdict::Partial,
        Err(e) if e.etype == ErrorType::InvalidHTTPHeader => Verdict::Refused(refusal(&e, buf)),
        Err(_) => Verdict::Accepted,
    }
}

fn refusal(e: &pingora::Error, head: &[u8]) -> Refusal {
    let parse = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<httparse::Error>());
    let (kind, message) = match parse {
        Some(httparse::Error::TooManyHeaders) => (
            Kind::TooLarge,
            format!("the request header has more than {MAX_HEADER_FIELDS} fields"),
        ),
        Some(p @ (httparse::Error::Token | httparse::Error::Version | httparse::Error::Status)) => {
            (
                Kind::RequestLine,
                format!(
                    "the request line could not be read ({p}); expected `METHOD /path HTTP/1.1`"
                ),
            )
        }
        Some(p) => (
            Kind::Header,
            format!("a header line could not be read ({p}); each must be `Name: value`"),
        ),
        None if e.etype == ErrorType::InvalidHTTPHeader && header_too_large(e) => (
            Kind::TooLarge,
            format!("the request header is larger than {MAX_HEADER_BYTES} bytes"),
        ),
        None => {
            let detail = e.context.as_ref().map_or("", |c| c.as_str());
            (
                Kind::Ambiguous,
                format!("the request header is invalid: {}", clip(detail)),
            )
        }
    };
    let format = match kind {
        Kind::RequestLine => ApiFormat::OpenAi,
        _ => path_format(head),
    };
    Refusal {
        kind,
        message,
        format,
    }
}

fn header_too_large(e: &pingora::Error) -> bool {
    e.context
        .as_ref()
        .is_some_and(|c| c.as_str().starts_with("Request header larger than"))
}

/// At most [`MAX_DETAIL`] bytes of `s`, cut at a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_DETAIL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How reading a request header ended.
#[derive(Debug)]
pub enum Head {
    /// The header (and whatever followed it) for pingora to parse.
    Read(BytesMut),
    /// The client closed, or sent nothing for `idle`: nothing to answer.
    Gone,
    Refused(Refusal),
}

/// Reads the next request header, each read within `idle` as pingora's keep-alive reads
/// are. Stops at the first byte past pingora's size cap; the caller bounds the whole.
pub async fn read_head(stream: &mut Stream, idle: Duration) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let room = MAX_HEADER_BYTES + 1 - buf.len();
        let mut limited = (&mut *stream).take(room as u64);
        match tokio::time::timeout(idle, limited.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Gone,
        }
        match judge(&buf).await {
            Verdict::Partial => {}
            Verdict::Accepted => return Head::Read(buf),
            Verdict::Refused(r) => return Head::Refused(r),
        }
    }
}

/// A complete response that closes the connection, with a JSON body.
pub fn closing_response(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The answer to a refused header, in the wire format its path speaks when the request
/// line was readable.
pub fn answer(refusal: &Refusal) -> Vec<u8> {
    let body = wire_error(
        refusal.format,
        ("invalid_request_error", "invalid_request_error"),
        refusal.kind.code(),
        &refusal.message,
    );
    closing_response(refusal.kind.status(), &body)
}

/// The wire format of the request line's path; headers are not trusted here.
fn path_format(head: &[u8]) -> ApiFormat {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    std::str::from_utf8(path)
        .ok()
        .and_then(Endpoint::from_path)
        .map_or(ApiFormat::OpenAi, |e| e.format(&http::HeaderMap::new()))
}

/// Writes `answer`, then reads and drops what the client still sends for a moment before
/// closing, so the close does not reset the connection under the answer.
pub async fn answer_and_close(stream: &mut Stream, answer: &[u8]) {
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 4 * 1024 * 1024;
    if stream.write_all(answer).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let mut dropped = 0;
    let drain = async {
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(n) if n > 0 => dropped += n,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn kind(wire: &[u8]) -> Option<Kind> {
        match judge(wire).await {
            Verdict::Refused(r) => Some(r.kind),
            _ => None,
        }
    }

    #[tokio::test]
    async fn judges_as_pingora_does() {
        let ok = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(judge(ok).await, Verdict::Accepted);
        assert_eq!(judge(&ok[..20]).await, Verdict::Partial);
        // A space in the target: httparse refuses, pingora escapes it and goes on.
        let lenient = b"GET /v1/models?q=a b HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(judge(lenient).await, Verdict::Accepted);
        assert_eq!(kind(b"GARBAGE\r\n\r\n").await, Some(Kind::RequestLine));
        assert_eq!(
            kind(b"GET / HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n").await,
            Some(Kind::Header)
        );
        assert_eq!(
            kind(b"GET / HTTP/1.1\r\nbad\x01name: x\r\n\r\n").await,
            Some(Kind::Header)
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").await,
            Some(Kind::Ambiguous)
        );
        let fields: String = (0..300).map(|i| format!("x-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        assert_eq!(kind(many.as_bytes()).await, Some(Kind::TooLarge));
        let huge = format!("GET / HTTP/1.1\r\nx: {}", "y".repeat(MAX_HEADER_BYTES));
        assert_eq!(kind(huge.as_bytes()).await, Some(Kind::TooLarge));
    }

    #[test]
    fn answers_in_the_paths_format() {
        let refused = |head: &[u8]| Refusal {
            kind: Kind::Header,
            message: "m".into(),
            format: path_format(head),
        };
        let anthropic = answer(&refused(b"POST /v1/messages?beta=1 HTTP/1.1\r\nbad"));
        assert!(anthropic.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        let body = anthropic.split(|&b| b == b'\n').next_back().unwrap();
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "error");
        let openai = answer(&refused(b"POST /v1/chat/completions HTTP/1.1\r\nbad"));
        let body = openai.split(|&b| b == b'\n').next_back().unwrap();
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_header");
    }
}
