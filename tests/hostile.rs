//! What a hostile or careless client cannot do: smuggle a request past a framing error,
//! blow up records and metrics with huge names, or be refused over how it spells `Bearer`.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `bytes` on a fresh connection and reads until the proxy closes it (or 5 s pass).
async fn exchange(proxy: &Proxy, bytes: &[u8]) -> (String, bool) {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    sock.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// A complete, valid chat request, as a smuggler would hide it.
fn hidden_request() -> String {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "smuggled"}]})
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
        ("invalid chunk size", format!("{:x}\r\n{first}\r\nzz\r\n", first.len())),
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
    let records = tollgate::ledger::read_all(&proxy.ledger_dir()).unwrap();
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
    for auth in [format!("BEARER {KEY}"), format!("Bearer\t{KEY}"), format!("bearer   {KEY}")] {
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
}
