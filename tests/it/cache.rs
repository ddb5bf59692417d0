//! The response cache through the proxy: hits never reach the provider and are recorded as
//! savings, answers replay in the shape each client asks for, identical requests in flight
//! share one upstream call, clients can bypass, and the byte bound holds.

use crate::common::*;
use serde_json::{Value, json};

const POLICIES: &str = r#"
rules:
  - name: cached
    match: {feature: cached}
    cache: {scope: team}
  - name: cached-per-key
    match: {feature: per-key}
    cache: {scope: key}
  - name: cached-any
    match: {feature: any}
    cache: {scope: global, nondeterministic: true}
"#;

/// The simulated provider and a proxy caching the features above.
async fn cached_sim(cache: &str) -> (Upstream, Proxy) {
    let up = start_sim().await;
    let extra = format!("policies: policies\ncache: {cache}\n");
    let proxy = Proxy::start_with(
        &config_for(up.addr, &extra),
        &[("policies/cache.yaml", POLICIES.as_bytes())],
    )
    .await;
    (up, proxy)
}

const CACHE_ON: &str = "{enabled: true}";
const CACHED: (&str, &str) = ("x-tollgate-feature", "cached");

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0,
           "messages": [{"role": "user", "content": prompt}]})
}

fn cache_header(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-tollgate-cache")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_repeat_is_a_hit_recorded_as_savings_never_as_spend() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let first = openai(
        &proxy,
        "/v1/chat/completions",
        &[CACHED],
        &chat("Name a bird."),
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first_id = request_id(&first);
    let first_body: Value = first.json().await.unwrap();

    // Member order, whitespace and `user` do not make a request different.
    let repeat = json!({"messages": [{"content": "Name a bird.", "role": "user"}],
                        "temperature": 0, "model": "gpt-4o-mini", "user": "someone-else"});
    let second = openai(&proxy, "/v1/chat/completions", &[CACHED], &repeat).await;
    assert_eq!(second.status(), 200);
    assert_eq!(cache_header(&second).as_deref(), Some("hit"));
    let second_id = request_id(&second);
    assert_ne!(first_id, second_id);
    let second_body: Value = second.json().await.unwrap();
    assert_eq!(second_body, first_body, "a hit replays the answer");
    assert_eq!(
        up.sim.stats().requests,
        1,
        "a hit never reaches the provider"
    );

    let spent = proxy.record_of(2, &first_id).await;
    let hit = proxy.record_of(2, &second_id).await;
    assert!(!spent.cache_hit);
    assert!(spent.input_tokens > 0 && spent.output_tokens > 0);
    let cost = spent.cost_usd.unwrap();
    assert!(cost.0 > 0);
    assert_eq!(spent.saved_cost_usd, Some(tollgate::money::NanoUsd::ZERO));

    assert!(hit.cache_hit);
    assert_eq!((hit.input_tokens, hit.output_tokens), (0, 0));
    assert_eq!(hit.cost_usd, Some(tollgate::money::NanoUsd::ZERO));
    assert_eq!(hit.attempts, 0);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.model, spent.model);
    assert_eq!(hit.team, "search");
    assert_eq!(
        (hit.saved_input_tokens, hit.saved_output_tokens),
        (spent.input_tokens, spent.output_tokens)
    );
    assert_eq!(hit.saved_cost_usd, Some(cost));
}

#[tokio::test]
async fn a_streamed_answer_serves_whole_clients_and_a_whole_one_serves_streams() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    // Streamed first, usage not asked for: the proxy asks on the client's behalf.
    let mut streamed = chat("Name a river.");
    streamed["stream"] = json!(true);
    let first = openai(&proxy, "/v1/chat/completions", &[CACHED], &streamed).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let events = sse_data(&first.text().await.unwrap());
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(!text.is_empty());

    let whole = openai(
        &proxy,
        "/v1/chat/completions",
        &[CACHED],
        &chat("Name a river."),
    )
    .await;
    assert_eq!(cache_header(&whole).as_deref(), Some("hit"));
    assert!(
        whole.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = whole.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], text);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // And streamed again, now with usage asked for: it comes in the last chunk.
    streamed["stream_options"] = json!({"include_usage": true});
    let again = openai(&proxy, "/v1/chat/completions", &[CACHED], &streamed).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));
    assert!(
        again.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_data(&again.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let replayed: String = chunks
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(replayed, text);
    assert_eq!(
        chunks.last().unwrap()["usage"],
        body["usage"],
        "usage replays unchanged"
    );
    assert_eq!(up.sim.stats().requests, 1);
}

#[tokio::test]
async fn anthropic_answers_replay_in_both_shapes() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 200, "temperature": 0,
                     "messages": [{"role": "user", "content": "Name a mountain."}]});
    let first = anthropic(&proxy, "/v1/messages", &[CACHED], &ask).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let whole: Value = first.json().await.unwrap();

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let hit = anthropic(&proxy, "/v1/messages", &[CACHED], &streamed).await;
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));
    let events: Vec<Value> = sse_data(&hit.text().await.unwrap())
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "message_start");
    assert_eq!(events.last().unwrap()["type"], "message_stop");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, whole["content"][0]["text"].as_str().unwrap());
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(
        delta["usage"]["output_tokens"],
        whole["usage"]["output_tokens"]
    );
    assert_eq!(up.sim.stats().requests, 1);
}

#[tokio::test]
async fn responses_and_embeddings_hit_too() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let responses = json!({"model": "gpt-4o-mini", "input": "Name a lake.", "temperature": 0});
    let embeddings = json!({"model": "text-embedding-3-small", "input": ["a lake", "a river"]});
    for (path, body) in [
        ("/v1/responses", &responses),
        ("/v1/embeddings", &embeddings),
    ] {
        let before = up.sim.stats().requests;
        let a = openai(&proxy, path, &[CACHED], body).await;
        assert_eq!(a.status(), 200, "{path}");
        assert_eq!(cache_header(&a).as_deref(), Some("miss"), "{path}");
        let a: Value = a.json().await.unwrap();
        let b = openai(&proxy, path, &[CACHED], body).await;
        assert_eq!(cache_header(&b).as_deref(), Some("hit"), "{path}");
        assert_eq!(b.json::<Value>().await.unwrap(), a, "{path}");
        assert_eq!(up.sim.stats().requests, before + 1, "{path}");
    }
}

#[tokio::test]
async fn clients_can_bypass_and_sampled_requests_go_upstream() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let body = chat("Name a city.");
    openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
    for header in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0, no-store"),
        ("x-tollgate-cache", "bypass"),
    ] {
        let resp = openai(&proxy, "/v1/chat/completions", &[CACHED, header], &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(cache_header(&resp).as_deref(), Some("bypass"), "{header:?}");
    }
    assert_eq!(up.sim.stats().requests, 4, "every bypass went upstream");
    let hit = openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));

    // Sampling at temperature 0.7 is not cached by default: no cache header at all.
    let mut sampled = chat("Name a city.");
    sampled["temperature"] = json!(0.7);
    for _ in 0..2 {
        let resp = openai(&proxy, "/v1/chat/completions", &[CACHED], &sampled).await;
        assert_eq!(cache_header(&resp), None);
    }
    assert_eq!(up.sim.stats().requests, 6);
    // ... unless the rule allows it.
    let any = ("x-tollgate-feature", "any");
    for expected in ["miss", "hit"] {
        let resp = openai(&proxy, "/v1/chat/completions", &[any], &sampled).await;
        assert_eq!(cache_header(&resp).as_deref(), Some(expected));
    }
    assert_eq!(up.sim.stats().requests, 7);
    // Requests no caching rule matches never carry the header.
    let plain = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    assert_eq!(cache_header(&plain), None);
}

#[tokio::test]
async fn only_clean_answers_are_stored() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let body = chat("Name a star.");
    // An error, a stream cut off mid-way, an answer without usage.
    for (fault, stream) in [
        ("status=500", false),
        ("reset-after=2", true),
        ("no-usage", false),
    ] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[CACHED, ("x-sim-fault", fault)],
            &body,
        )
        .await;
        assert_eq!(cache_header(&resp).as_deref(), Some("miss"), "{fault}");
        let _ = resp.bytes().await;
    }
    let clean = openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
    assert_eq!(cache_header(&clean).as_deref(), Some("miss"));
    let hit = openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
    assert_eq!(cache_header(&hit).as_deref(), Some("hit"));
    assert_eq!(up.sim.stats().requests, 4);
}

#[tokio::test]
async fn scopes_keep_keys_and_teams_apart() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let body = chat("Name a tree.");
    let per_key = ("x-tollgate-feature", "per-key");
    let a = openai(&proxy, "/v1/chat/completions", &[per_key], &body).await;
    assert_eq!(cache_header(&a).as_deref(), Some("miss"));
    let b = openai_as(&proxy, OPEN_KEY, "/v1/chat/completions", &[per_key], &body).await;
    assert_eq!(cache_header(&b).as_deref(), Some("miss"), "another key");
    let c = openai_as(&proxy, OPEN_KEY, "/v1/chat/completions", &[per_key], &body).await;
    assert_eq!(cache_header(&c).as_deref(), Some("hit"), "the same key");
    // The team scope: the `open` key has no team, so it shares within its own key...
    let d = openai_as(&proxy, OPEN_KEY, "/v1/chat/completions", &[CACHED], &body).await;
    assert_eq!(cache_header(&d).as_deref(), Some("hit"));
    // ... and team `search` has answers of its own.
    let e = openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
    assert_eq!(cache_header(&e).as_deref(), Some("miss"), "team search");
    assert_eq!(up.sim.stats().requests, 3);
}

#[tokio::test]
async fn identical_requests_in_flight_make_one_upstream_call() {
    let (up, proxy) = cached_sim(CACHE_ON).await;
    let body = chat("Name a planet.");
    // The provider takes 300 ms: all 50 arrive while the first is still in flight.
    let slow = ("x-sim-fault", "delay-ms=300");
    let calls = (0..50).map(|i| {
        let (proxy, body) = (&proxy, &body);
        async move {
            let mut body = body.clone();
            // Half ask for a stream: they are served from the same answer.
            if i % 2 == 1 {
                body["stream"] = json!(true);
            }
            let resp = openai(proxy, "/v1/chat/completions", &[CACHED, slow], &body).await;
            assert_eq!(resp.status(), 200);
            let header = cache_header(&resp).unwrap();
            let text = resp.text().await.unwrap();
            if i % 2 == 1 {
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            } else {
                serde_json::from_str::<Value>(&text).unwrap();
            }
            header
        }
    });
    let headers = futures::future::join_all(calls).await;
    assert_eq!(up.sim.stats().requests, 1);
    assert_eq!(headers.iter().filter(|h| *h == "miss").count(), 1);
    assert_eq!(headers.iter().filter(|h| *h == "hit").count(), 49);
    let records = proxy.records(50).await;
    assert_eq!(records.iter().filter(|r| r.cache_hit).count(), 49);
    assert_eq!(records.iter().filter(|r| r.attempts == 1).count(), 1);
}

#[tokio::test]
async fn the_byte_bound_holds_under_a_flood_of_large_answers() {
    // 256 KiB for answers of about 40 KiB each: at most six fit.
    let (_up, proxy) =
        cached_sim("{enabled: true, max_bytes: 262144, max_entry_bytes: 65536}").await;
    let large = ("x-sim-output-tokens", "8000");
    for i in 0..40 {
        let resp = openai(
            &proxy,
            "/v1/chat/completions",
            &[CACHED, large],
            &chat(&format!("Write at length, part {i}.")),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(cache_header(&resp).as_deref(), Some("miss"));
        let _ = resp.bytes().await;
    }
    let metrics = proxy.metrics().await;
    let bytes = metric(&metrics, "tollgate_cache_bytes", &[]).unwrap();
    let entries = metric(&metrics, "tollgate_cache_entries", &[]).unwrap();
    let evictions = metric(&metrics, "tollgate_cache_evictions_total", &[]).unwrap();
    assert!(bytes <= 262_144.0, "{bytes} bytes held");
    assert!(bytes > 100_000.0, "the cache holds some: {bytes}");
    assert!((2.0..=7.0).contains(&entries), "{entries} entries");
    assert!(evictions >= 30.0, "{evictions} evictions");
    // The newest answer is among those kept.
    let last = openai(
        &proxy,
        "/v1/chat/completions",
        &[CACHED, large],
        &chat("Write at length, part 39."),
    )
    .await;
    assert_eq!(cache_header(&last).as_deref(), Some("hit"));
}

#[tokio::test]
async fn metrics_count_hits_misses_and_savings() {
    let (_up, proxy) = cached_sim(CACHE_ON).await;
    let body = chat("Name a colour.");
    for _ in 0..3 {
        let resp = openai(&proxy, "/v1/chat/completions", &[CACHED], &body).await;
        let _ = resp.bytes().await;
    }
    let records = proxy.records(3).await;
    let spent = records.iter().find(|r| !r.cache_hit).unwrap();
    let saved_usd = spent.cost_usd.unwrap().0 as f64 * 2.0 / 1e9;
    let metrics = proxy
        .wait_metric("tollgate_cache_hits_total", &[], 2.0)
        .await;
    assert_eq!(
        metric(&metrics, "tollgate_cache_misses_total", &[]),
        Some(1.0)
    );
    let counted = metric(&metrics, "tollgate_cache_saved_usd_total", &[]).unwrap();
    assert!(
        (counted - saved_usd).abs() < 1e-12,
        "{counted} vs {saved_usd}"
    );
    assert_eq!(metric(&metrics, "tollgate_cache_entries", &[]), Some(1.0));
}
