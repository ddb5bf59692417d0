//! What a record says about how a call ended: the provider's error code, the price book the
//! call started with, a client that left early, a hanging provider, and a client that
//! closes right after the end of its stream.

use crate::common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn provider_errors_are_recorded_with_the_providers_own_code() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let msg = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                     "messages": [{"role": "user", "content": "hi"}]});
    for (fault, anthropic_api) in [
        ("status=429", false),
        ("status=500", false),
        ("status=529", true),
        ("status=429", true),
    ] {
        let headers = [("x-sim-fault", fault)];
        let resp = if anthropic_api {
            anthropic(&proxy, "/v1/messages", &headers, &msg).await
        } else {
            openai(&proxy, "/v1/chat/completions", &headers, &chat).await
        };
        assert!(resp.status().is_client_error() || resp.status().is_server_error());
    }
    let records = proxy.records(4).await;
    let got: Vec<(u16, Option<&str>)> = records
        .iter()
        .map(|r| (r.status, r.error.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (429, Some("rate_limit_exceeded")),
            (500, Some("server_error")),
            (529, Some("overloaded_error")),
            (429, Some("rate_limit_error")),
        ]
    );
}

#[tokio::test]
async fn a_reload_during_a_stream_does_not_change_that_streams_price() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "price me"}]});
    let slow = [
        ("x-sim-output-tokens", "20"),
        ("x-sim-token-interval-ms", "40"),
    ];
    let resp = openai(&proxy, "/v1/chat/completions", &slow, &body).await;
    assert_eq!(resp.status(), 200);

    // While the stream runs, every price of gpt-4o-mini goes up tenfold.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dearer = PRICES.replace(
        "input: 2\n        output: 8",
        "input: 20\n        output: 80",
    );
    assert_ne!(dearer, PRICES);
    write(&proxy.dir.path().join("prices.yaml"), &dearer);
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric("tollgate_config_reloads_total", &[("result", "ok")], 1.0)
        .await;
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"));

    // A call that starts after the reload gets the new price.
    let after = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    after.text().await.unwrap();

    let records = proxy.records(2).await;
    let cost = |r: &tollgate::record::Record, input: i64, output: i64| {
        cost_str(
            r.input_tokens as i64 * nanos_per_token(input as f64)
                + r.output_tokens as i64 * nanos_per_token(output as f64),
        )
    };
    assert_eq!(
        records[0].cost_usd.unwrap().to_string(),
        cost(&records[0], 2, 8)
    );
    assert_eq!(
        records[1].cost_usd.unwrap().to_string(),
        cost(&records[1], 20, 80)
    );
}

#[tokio::test]
async fn a_hanging_provider_on_a_warm_connection_is_called_once() {
    let upstream = start_sim().await;
    let config =
        config_for(upstream.addr, "").replace("read_timeout_ms: 10000", "read_timeout_ms: 1000");
    let proxy = Proxy::start(&config).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    // Warm the pool (and the simulator's tokenizer): the next call goes out on a reused
    // connection.
    for _ in 0..2 {
        let warm = openai(&proxy, "/v1/chat/completions", &[], &body).await;
        warm.bytes().await.unwrap();
    }
    let before = upstream.sim.stats().requests;

    let started = Instant::now();
    let hung = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-fault", "delay-ms=5000")],
        &body,
    )
    .await;
    assert_eq!(hung.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "the client waited {:?}: the call was resent after the timeout",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.sim.stats().requests - before, 1);
    let records = proxy.records(3).await;
    assert_eq!(records.len(), 3);
    assert_eq!(
        (records[2].status, records[2].error.as_deref()),
        (504, Some("upstream_timeout"))
    );
}

/// An upstream that reads a request and never answers; the flag turns true when the proxy
/// closes the connection.
async fn silent_upstream() -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    (addr, closed)
}

#[tokio::test]
async fn a_client_leaving_before_the_header_cancels_the_call_and_is_recorded_as_gone() {
    let (upstream, closed) = silent_upstream().await;
    let proxy = Proxy::start(&config_for(upstream, "")).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up");

    // The record shows up as soon as the client is gone, not at the read timeout, and says
    // what the client got: nothing.
    let record = tokio::time::timeout(Duration::from_secs(3), proxy.only_record())
        .await
        .expect("recorded before the read timeout");
    assert_eq!(
        (record.status, record.error.as_deref()),
        (499, Some("client_disconnected"))
    );
    assert!(record.latency_ms < 2000, "latency {}", record.latency_ms);
    // The provider's connection is closed, so it stops working on an answer nobody reads.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !closed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tollgate_client_aborts_total", &[]),
        Some(1.0)
    );
}

/// A raw HTTP/1.1 streaming call that reads until `marker` and closes at once.
async fn stream_and_close_at(proxy: &Proxy, path: &str, body: &Value, marker: &str) -> String {
    let body = body.to_string();
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nx-api-key: {KEY}\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended before {marker}");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_client_that_closes_right_after_the_end_marker_is_recorded_complete() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let chat = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let msg = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                     "messages": [{"role": "user", "content": "hello"}]});
    let n = 15;
    for _ in 0..n {
        stream_and_close_at(&proxy, "/v1/chat/completions", &chat, "[DONE]").await;
        stream_and_close_at(&proxy, "/v1/messages", &msg, "message_stop").await;
    }
    let records = proxy.records(2 * n).await;
    for r in &records {
        assert_eq!(
            (r.status, r.error.as_deref()),
            (200, None),
            "a complete stream recorded as failed: {r:?}"
        );
        assert!(r.output_tokens > 0);
    }
}

#[tokio::test]
async fn stream_options_null_cannot_switch_off_usage_reporting() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": null,
                      "messages": [{"role": "user", "content": "count me"}]});
    let resp = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for usage: {text}"
    );
    let record = proxy.only_record().await;
    assert_eq!(
        record.usage_source,
        tollgate::usage::UsageSource::Reported,
        "priced from an estimate: {record:?}"
    );
}

#[tokio::test]
async fn counting_a_huge_prompt_holds_up_neither_its_client_nor_the_next_request() {
    let upstream = start_sim().await;
    let proxy = Proxy::start(&config_for(upstream.addr, "")).await;
    // 16 MiB of one repeated word, and a provider that reports no usage: the input must be
    // counted locally. An unbounded exact count of this took about 15 s of CPU.
    let word = "a".repeat(16 * 1024 * 1024);
    let huge = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": word}]});
    let small = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    // One connection, reused by both calls.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let first = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-sim-fault", "no-usage")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let first_took = started.elapsed();
    let second = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    second.bytes().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "two calls took {:?}",
        started.elapsed()
    );

    let records = proxy.records(2).await;
    let counted = &records[0];
    assert_eq!(
        counted.usage_source,
        tollgate::usage::UsageSource::Estimated
    );
    // 16 MiB of one letter is a few million tokens whatever the cuts.
    assert!(
        counted.input_tokens > 1_000_000,
        "input estimated at {}",
        counted.input_tokens
    );
    // Past the exact-count budget the rest was extrapolated, and that is counted.
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_usage_approximate_total",
            &[("provider", "openai")]
        ),
        Some(1.0)
    );
    // latency_ms is what the client saw, no more.
    assert!(
        u128::from(counted.latency_ms) <= first_took.as_millis(),
        "recorded {} ms, the client saw {:?}",
        counted.latency_ms,
        first_took
    );
}

#[tokio::test]
async fn a_stream_the_shutdown_cuts_off_is_still_recorded() {
    let up = start_sim().await;
    let mut proxy = Proxy::start(&config_for(up.addr, "")).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "Tell a long story."}]});
    // 300 tokens, 100 ms apart: still streaming when the grace period (0 s) ends.
    let mut resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-output-tokens", "300"),
            ("x-sim-token-interval-ms", "100"),
        ],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(resp.chunk().await.unwrap().is_some());
    let stopping = tokio::task::spawn_blocking(move || {
        let status = proxy.stop();
        (proxy, status)
    });
    // The client sees the stream end early.
    while let Ok(Some(_)) = resp.chunk().await {}
    let (proxy, status) = stopping.await.unwrap();
    assert!(status.success(), "{status:?}");
    let records: Vec<tollgate::record::Record> =
        tollgate::ledger::read_all(&proxy.ledger_dir()).unwrap();
    let record = records
        .iter()
        .find(|r| r.request_id == request_id)
        .unwrap_or_else(|| panic!("no record for the cut stream in {records:?}"));
    assert_eq!(record.error.as_deref(), Some("shutdown"));
    assert_eq!(record.status, 200, "the client had its response header");
}
