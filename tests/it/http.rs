//! HTTP/1.1 details clients rely on: `Expect: 100-continue` (curl sends it for bodies over
//! 1 MiB) and keep-alive across requests.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Reads one response (status line, headers, Content-Length body) from `r`.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn expect_100_continue_then_keep_alive() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let port = proxy.port;
    let big = "word ".repeat(300_000);
    let body =
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
            .to_string();

    let (first, second) = tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        // The proxy invites the body before the client sends it.
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, 100);
        w.write_all(body.as_bytes()).unwrap();
        let first = read_response(&mut r);
        // The same connection serves another request.
        let small = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{small}",
            small.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        (first, read_response(&mut r))
    })
    .await
    .unwrap();

    assert_eq!(first.0, 200, "{}", String::from_utf8_lossy(&first.2));
    let v: serde_json::Value = serde_json::from_slice(&first.2).unwrap();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 300_000);
    assert_eq!(second.0, 200);
    assert_eq!(proxy.records(2).await.len(), 2);
}

#[tokio::test]
async fn malformed_requests_get_400s_and_never_break_the_proxy() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("array", b"[1,2,3]".to_vec()),
        (
            "model not a string",
            br#"{"model": 42, "messages": []}"#.to_vec(),
        ),
        (
            "stream not a bool",
            br#"{"model": "gpt-4o-mini", "stream": "yes"}"#.to_vec(),
        ),
        ("invalid utf-8", b"{\"model\": \"gpt-\xff\xfe\"}".to_vec()),
        (
            "truncated",
            br#"{"model": "gpt-4o-mini", "messages": [{"role": "us"#.to_vec(),
        ),
        ("missing model", br#"{"messages": []}"#.to_vec()),
    ];
    for (name, body) in &bodies {
        for path in ["/v1/chat/completions", "/v1/messages"] {
            let resp = client()
                .post(proxy.url(path))
                .bearer_auth(KEY)
                .header("x-api-key", KEY)
                .header("x-tollgate-tags", "a=".repeat(10_000))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{name} on {path}");
            let v: serde_json::Value = resp.json().await.unwrap();
            assert!(v["error"]["message"].is_string(), "{name} on {path}: {v}");
            if path == "/v1/messages" {
                assert_eq!(v["type"], "error");
            }
        }
    }
    assert_eq!(
        up.sim.stats().requests,
        0,
        "nothing malformed reached the provider"
    );
    // Deeply nested JSON is valid: it is routed, and the provider's own error comes back.
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(format!(r#"{{"model": "gpt-4o-mini", "x": {deep}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let ok = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(!proxy.log().contains("panicked"));
}

#[tokio::test]
async fn an_oversized_chunked_body_gets_a_413_the_client_can_read() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "max_body_bytes: 1048576")).await;
    // 3 MiB in 64 KiB chunks, with no Content-Length: the limit is found while reading.
    let chunks = (0..48).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
    let resp = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("the 413 is readable, not a broken pipe");
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(up.sim.stats().requests, 0);
}
