//! The per-call work of a proxied request, through the crate's public API: splitting a
//! stream into events, metering streamed and whole answers, writing the ledger line, and
//! counting a prompt's tokens. `cargo bench --bench hot_path` (about a minute).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use tollgate::api::{ApiFormat, Endpoint};
use tollgate::money::NanoUsd;
use tollgate::record::Record;
use tollgate::tokens::Encoding;
use tollgate::usage::UsageSource;
use tollgate::usage::meter::Meter;
use tollgate::usage::observed::Observed;
use tollgate::usage::sse::SseBuffer;

const EVENTS: usize = 100;

/// A streamed chat completion as OpenAI sends it: content deltas, then a usage chunk.
fn openai_stream() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..EVENTS - 2 {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\
             \"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\
             \"system_fingerprint\":\"fp_f9f4fb6dbf\",\"choices\":[{{\"index\":0,\"delta\":\
             {{\"content\":\" word{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str(
        "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":\
         {\"prompt_tokens\":1117,\"completion_tokens\":98,\"total_tokens\":1215,\
         \"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\
         \"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0}}}\n\n\
         data: [DONE]\n\n",
    );
    s.into_bytes()
}

/// Feeds `body` in network-sized pieces that do not align with events.
fn chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.chunks(1400)
}

/// What metering one answer observes, fed as it would arrive.
fn metered(format: ApiFormat, endpoint: Endpoint, stream: bool, body: &[u8]) -> Observed {
    let mut meter = Meter::new(format, endpoint, stream, stream);
    for chunk in chunks(body) {
        black_box(meter.feed(chunk));
    }
    meter.finish_body();
    std::mem::take(&mut meter.observed)
}

fn sse(c: &mut Criterion) {
    let body = openai_stream();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("split_events", |b| {
        b.iter(|| {
            let mut buf = SseBuffer::default();
            let mut out = Vec::with_capacity(EVENTS);
            for chunk in chunks(&body) {
                buf.push(chunk, &mut out);
            }
            assert_eq!(out.len(), EVENTS);
            black_box(out)
        })
    });
    // A whole answer in one read, as a fast upstream or a held answer hands it over.
    g.bench_function("split_events_one_read", |b| {
        b.iter(|| {
            let mut buf = SseBuffer::default();
            let mut out = Vec::with_capacity(EVENTS);
            buf.push(&body, &mut out);
            assert_eq!(out.len(), EVENTS);
            black_box(out)
        })
    });
    g.bench_function("meter_openai_stream", |b| {
        b.iter(|| {
            let seen = metered(ApiFormat::OpenAi, Endpoint::ChatCompletions, true, &body);
            assert_eq!(seen.input_tokens, Some(1117));
            black_box(seen)
        })
    });
    g.finish();
}

fn meter_body(c: &mut Criterion) {
    let answer = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let openai = serde_json::json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 1117, "completion_tokens": 181, "total_tokens": 1298,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035"
    });
    let anthropic = serde_json::json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 93, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1024, "output_tokens": 181,
            "service_tier": "standard"
        }
    });
    let mut g = c.benchmark_group("meter_body");
    for (name, format, endpoint, body) in [
        (
            "openai_chat",
            ApiFormat::OpenAi,
            Endpoint::ChatCompletions,
            openai,
        ),
        (
            "anthropic_messages",
            ApiFormat::Anthropic,
            Endpoint::Messages,
            anthropic,
        ),
    ] {
        let body = serde_json::to_vec(&body).expect("json");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let seen = metered(format, endpoint, false, &body);
                assert_eq!(seen.output_tokens, Some(181));
                black_box(seen)
            })
        });
    }
    g.finish();
}

fn record(c: &mut Criterion) {
    let record = Record {
        ts: chrono::Utc::now(),
        request_id: "0193a5b2-7c4e-7f3a-9d1e-2b3c4d5e6f70".into(),
        team: "search".into(),
        project: "ranking".into(),
        env: "prod".into(),
        user: "u-1842".into(),
        feature: "summaries".into(),
        workflow_id: "wf-20261130-0042".into(),
        tags: [("tier".to_string(), "gold".to_string())].into(),
        key_name: "search-prod".into(),
        provider: "openai".into(),
        endpoint: "/v1/chat/completions".into(),
        requested_model: "gpt-4o".into(),
        model: "gpt-4o-2024-08-06".into(),
        stream: true,
        status: 200,
        input_tokens: 1117,
        output_tokens: 181,
        cached_input_tokens: 1024,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        usage_source: UsageSource::Reported,
        cost_usd: Some(NanoUsd(2_042_500)),
        latency_ms: 812,
        ttfb_ms: Some(240),
        error: None,
        policy: "cheap-first".into(),
        attempts: 1,
        escalations: 0,
        counterfactual_cost_usd: Some(NanoUsd(2_042_500)),
        cache_hit: false,
        saved_input_tokens: 0,
        saved_output_tokens: 0,
        saved_cost_usd: None,
    };
    c.bench_function("record/ledger_line", |b| {
        b.iter(|| {
            // As the ledger writes a record: JSON and a newline, into one buffer.
            let mut line = Vec::with_capacity(512);
            serde_json::to_writer(&mut line, black_box(&record)).expect("serializes");
            line.push(b'\n');
            black_box(line)
        })
    });
}

fn tokens(c: &mut Criterion) {
    let prompt: String = "You are a careful assistant. Summarize the report below in three bullet \
                          points, citing figures exactly.\n\nQ3 revenue rose 12% to $4.2M; churn \
                          fell from 3.1% to 2.4%. "
        .repeat(6)
        .chars()
        .take(1024)
        .collect();
    let mut g = c.benchmark_group("tokens_1kb_prompt");
    g.throughput(Throughput::Bytes(prompt.len() as u64));
    for (name, enc) in [("o200k", Encoding::O200k), ("cl100k", Encoding::Cl100k)] {
        let bpe = enc.bpe();
        assert_eq!(
            enc.count(&prompt),
            bpe.encode_ordinary(&prompt).len() as u64
        );
        g.bench_function(format!("{name}/count"), |b| {
            b.iter(|| enc.count(black_box(&prompt)))
        });
        g.bench_function(format!("{name}/tiktoken_rs"), |b| {
            b.iter(|| bpe.encode_ordinary(black_box(&prompt)).len())
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = sse, meter_body, record, tokens
}
criterion_main!(benches);
