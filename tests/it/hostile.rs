//! What a hostile or careless client cannot do: smuggle a request past a framing error,
//! blow up records and metrics with huge names, or be refused over how it spells `Bearer`.

use crate::common::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(proxy: &Proxy) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap()
}

/// Sends `bytes` on a fresh connection and reads until the proxy closes it (or 10 s pass).
async fn exchange(proxy: &Proxy, bytes: &[u8]) -> (String, bool) {
    let mut sock = connect(proxy).await;
    sock.write_all(bytes).await.unwrap();
    let (closed, answer) = closed_within(&mut sock, Duration::from_secs(10)).await;
    (answer, closed)
}

/// A complete, valid chat request, as a smuggler would hide it.
fn hidden_request() -> String {
    let body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "smuggled"}]})
            .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         x-request-id: smuggled\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn after_a_framing_error_the_connection_closes_and_nothing_after_it_runs() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let first = "{\"model\":\"gpt-4o-mini\",";
    let cases = [
        // A chunk-size line longer than the parser buffers.
        (
            "chunk-size line too long",
            format!("{:x}\r\n{first}\r\n{}\r\n", first.len(), "1".repeat(70_000)),
        ),
        (
            "invalid chunk size",
            format!("{:x}\r\n{first}\r\nzz\r\n", first.len()),
        ),
        (
            "no CRLF after the chunk data",
            format!("{:x}\r\n{first}XX5\r\nhello\r\n", first.len()),
        ),
    ];
    for (name, bad_body) in cases {
        let wire = format!("{head}{bad_body}{}", hidden_request());
        let (answer, closed) = exchange(&proxy, wire.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{name}: {answer}"
        );
        assert!(closed, "{name}: the connection stayed open");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{name}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records =
        tollgate::ledger::read_all::<tollgate::record::Record>(&proxy.ledger_dir()).unwrap();
    assert!(
        records.iter().all(|r| r.request_id != "smuggled"),
        "a request hidden in a body ran: {records:?}"
    );
    assert_eq!(upstream.sim.stats().requests, 0);
}

#[tokio::test]
async fn a_huge_model_name_is_refused_and_never_reaches_records_or_metrics() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let before = proxy.metrics().await.len();
    let name = format!("claude-{}", "x".repeat(1024 * 1024));
    for _ in 0..5 {
        let resp = anthropic(
            &proxy,
            "/v1/messages",
            &[],
            &json!({"model": name, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`model` must be at most 256 bytes"),
            "{body}"
        );
    }
    let records = proxy.records(5).await;
    let widest = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap().len())
        .max()
        .unwrap();
    assert!(widest < 4096, "a record of {widest} bytes");
    assert!(proxy.metrics().await.len() < before + 16 * 1024);
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case_with_any_whitespace() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for auth in [
        format!("BEARER {KEY}"),
        format!("Bearer\t{KEY}"),
        format!("bearer   {KEY}"),
    ] {
        let resp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{auth:?}");
    }
    // A key that is not text is wrong, not missing.
    let (answer, _) = exchange(
        &proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\xff\r\n\
          content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("invalid_api_key"), "{answer}");
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    for n in [2, 3, 10, 50] {
        let wire: String = (0..n)
            .map(|i| {
                let body = json!({"model": "gpt-4o-mini", "stream": i % 2 == 1,
                                  "messages": [{"role": "user", "content": format!("p{i}")}]})
                .to_string();
                let close = if i == n - 1 { "connection: close\r\n" } else { "" };
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
                     x-request-id: pipe-{n}-{i}\r\ncontent-type: application/json\r\n{close}\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                )
            })
            .collect();
        let (answer, closed) = exchange(&proxy, wire.as_bytes()).await;
        assert!(closed, "{n} pipelined: the last asked to close");
        let ids: Vec<&str> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("x-tollgate-request-id: "))
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("pipe-{n}-{i}")).collect();
        assert_eq!(ids, want, "{n} pipelined requests: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 200").count(), n);
    }
    let records = proxy.records(2 + 3 + 10 + 50).await;
    assert_eq!(records.len(), 65);
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "tollgate_framing_errors_total", &[]), None);
}

/// A config whose connection limits are small enough to test.
fn with_limits(upstream: std::net::SocketAddr, limits: &str) -> String {
    config_for(upstream, "").replace(
        "  grace_period_secs: 0\n",
        &format!("  grace_period_secs: 0\n{limits}"),
    )
}

/// Reads until the peer closes (true) or `within` passes (false).
async fn closed_within(sock: &mut tokio::net::TcpStream, within: Duration) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (false, String::from_utf8_lossy(&got).into()),
        }
    }
}

async fn served(proxy: &Proxy) -> bool {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    openai(proxy, "/v1/chat/completions", &[], &body)
        .await
        .status()
        == 200
}

#[tokio::test]
async fn a_client_dribbling_its_header_is_cut_off_while_others_are_served() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&with_limits(upstream.addr, "  header_timeout_ms: 1000\n")).await;
    let mut slow = connect(&proxy).await;
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let dribble = async {
        for _ in 0..100 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (_, ok) = tokio::join!(dribble, served(&proxy));
    assert!(ok, "a normal request was not served meanwhile");
    let (closed, _) = closed_within(&mut slow, Duration::from_secs(1)).await;
    assert!(closed, "the slow header was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_client_timeouts_total",
            &[("phase", "header")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_client_dribbling_its_body_gets_408_and_the_connection_closes() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&with_limits(upstream.addr, "  body_timeout_ms: 800\n")).await;
    let mut slow = connect(&proxy).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..12 {
        let _ = slow.write_all(b" ").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (closed, answer) = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(closed);
    let record = proxy.only_record().await;
    assert_eq!(
        (record.status, record.error.as_deref()),
        (408, Some("request_timeout"))
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&with_limits(upstream.addr, "  idle_timeout_secs: 1\n")).await;
    let mut sock = connect(&proxy).await;
    let req = chat_request("/v1/chat/completions", "");
    sock.write_all(req.as_bytes()).await.unwrap();
    let (closed, answer) = closed_within(&mut sock, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "the idle connection stayed open");
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_room_comes_back() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&with_limits(upstream.addr, "  max_connections: 4\n")).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect(&proxy).await);
    }
    // Give the proxy a moment to take each connection in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect(&proxy).await;
    let (closed, answer) = closed_within(&mut extra, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too_many_connections") && closed,
        "{answer}"
    );
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(served(&proxy).await, "no room after the connections closed");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tollgate_connections_refused_total", &[]),
        Some(1.0)
    );
}

/// The answer's JSON body; panics, naming `what`, when there is none.
fn json_body(answer: &str, what: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: no JSON body ({e}): {answer}"))
}

/// Asserts `answer` refuses a request header with `status`, in OpenAI's shape with `code`
/// (or Anthropic's when `code` is `None`), and asks to close.
fn assert_refused(what: &str, answer: &str, status: u16, code: Option<&str>) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{what}: {answer}"
    );
    let body = json_body(answer, what);
    match code {
        Some(code) => {
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
            assert_eq!(
                body["error"]["type"], "invalid_request_error",
                "{what}: {body}"
            );
        }
        None => assert_eq!(body["type"], "error", "{what}: {body}"),
    }
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.len() > 20, "{what}: {body}");
}

#[tokio::test]
async fn an_unreadable_request_header_gets_a_json_error_is_counted_and_the_connection_closes() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let cases = [
        (
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "request_line",
            Some("malformed_request_line"),
        ),
        (
            "header line without a colon (Anthropic path)",
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\
                 no colon here\r\ncontent-length: 2\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "header",
            None,
        ),
        (
            "invalid header name",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
                 bad\x01name: y\r\ncontent-length: 2\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "header",
            Some("malformed_header"),
        ),
        (
            "header block over the limit",
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(1_100_000)
            )
            .into_bytes(),
            431,
            "too_large",
            Some("header_too_large"),
        ),
        (
            "two different content-lengths",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\
              content-length: 3\r\n\r\n{}"
                .to_vec(),
            400,
            "ambiguous",
            Some("ambiguous_framing"),
        ),
    ];
    let mut counts = std::collections::HashMap::new();
    for (what, wire, status, kind, code) in cases {
        let (answer, closed) = exchange(&proxy, &wire).await;
        assert_refused(what, &answer, status, code);
        assert!(closed, "{what}: the connection stayed open");
        let count = counts.entry(kind).or_insert(0.0);
        *count += 1.0;
        proxy
            .wait_metric("tollgate_framing_errors_total", &[("kind", kind)], *count)
            .await;
        assert!(served(&proxy).await, "{what}: not served afterwards");
    }
    assert_eq!(
        upstream.sim.stats().requests,
        5,
        "only the normal requests went up"
    );
}

#[tokio::test]
async fn an_unreadable_header_on_a_kept_alive_connection_is_answered_and_counted() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let mut sock = connect(&proxy).await;
    let good = chat_request("/v1/chat/completions", "");
    sock.write_all(good.as_bytes()).await.unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&first).contains("\"usage\"") {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first answer");
        first.extend_from_slice(&buf[..n]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"));
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n")
        .await
        .unwrap();
    let (closed, answer) = closed_within(&mut sock, Duration::from_secs(5)).await;
    assert_refused("second request", &answer, 400, Some("malformed_header"));
    assert!(closed, "the connection stayed open");
    proxy
        .wait_metric("tollgate_framing_errors_total", &[("kind", "header")], 1.0)
        .await;
}

#[tokio::test]
async fn an_unreadable_header_pipelined_behind_a_request_is_counted() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    // Both in one write: the second header arrives with the first request's body, so
    // pingora holds it and answers it itself.
    let wire = format!(
        "{}POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n",
        chat_request("/v1/chat/completions", "")
    );
    let (answer, closed) = exchange(&proxy, wire.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert!(closed, "the connection stayed open");
    proxy
        .wait_metric(
            "tollgate_framing_errors_total",
            &[("kind", "pipelined")],
            1.0,
        )
        .await;
    let records = proxy.records(1).await;
    assert_eq!(records.len(), 1, "only the readable request is recorded");
}

#[tokio::test]
async fn a_request_line_pingora_escapes_is_still_served() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    // A raw space, quote and angle brackets in the query (escaped by pingora), non-ASCII and
    // `|` (taken as they are).
    for target in [
        "/v1/chat/completions?q=a b\"<c>",
        "/v1/chat/completions?q=\u{e9}|x",
    ] {
        let wire = chat_request(target, "connection: close\r\n");
        let (answer, closed) = exchange(&proxy, wire.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        assert!(closed);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "tollgate_framing_errors_total", &[]), None);
}

/// A valid chat request to `target` on the wire, with `extra` header lines.
fn chat_request(target: &str, extra: &str) -> String {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    format!(
        "POST {target} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n{extra}\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}
