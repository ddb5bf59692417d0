//! The shared cache tier against a real redis-server: answers stored with their lifetime,
//! shared between two caches (as between two replicas), and an outage that only ever
//! turns into misses; and two proxy processes sharing hits through it.

use crate::common::redis::RedisServer;
use crate::common::{Proxy, config_for, openai, start_sim};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::api::{ApiFormat, Endpoint};
use tollgate::cache::{CacheKey, CachedResponse, Lookup, RedisTier, ResponseCache};
use tollgate::config::{CacheSettings, RedisSettings};
use tollgate::money::NanoUsd;
use tollgate::usage::Usage;

fn settings(url: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        key_prefix: "test:".into(),
        timeout: Duration::from_millis(250),
    }
}

fn key(i: u32) -> CacheKey {
    let body = format!(r#"{{"model":"gpt-4o-mini","n":{i}}}"#);
    CacheKey::new(
        "/v1/chat/completions",
        "openai",
        "gpt-4o-mini",
        "global",
        body.as_bytes(),
    )
    .unwrap()
}

fn answer(text: &str) -> CachedResponse {
    CachedResponse {
        status: 200,
        body: Bytes::from(format!(
            r#"{{"choices":[{{"message":{{"content":"{text}"}}}}]}}"#
        )),
        format: ApiFormat::OpenAi,
        endpoint: Endpoint::ChatCompletions,
        model: "gpt-4o-mini-2024-07-18".into(),
        usage: Usage {
            input_tokens: 20,
            output_tokens: 7,
            cached_input_tokens: 4,
            ..Usage::default()
        },
        cost: Some(NanoUsd(92_000)),
    }
}

#[tokio::test]
async fn answers_are_stored_with_their_lifetime() {
    let server = RedisServer::start();
    let tier = RedisTier::new(&settings(&server.url()));
    assert!(tier.get(&key(1)).await.is_none());
    assert!(
        tier.set(&key(1), &answer("hello"), Duration::from_millis(1500))
            .await
    );
    let (hit, left) = tier.get(&key(1)).await.unwrap();
    assert_eq!(hit, answer("hello"));
    assert!(Duration::ZERO < left && left <= Duration::from_millis(1500));

    let ttl = server.command(&format!("PTTL test:{}", key(1).hex()));
    let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(0 < ms && ms <= 1500, "PTTL {ttl:?}");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(tier.get(&key(1)).await.is_none(), "expired");
    let s = tier.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((s.hits.load(Relaxed), s.misses.load(Relaxed)), (1, 2));
    assert_eq!((s.sets.load(Relaxed), s.errors.load(Relaxed)), (1, 0));
}

#[tokio::test]
async fn an_outage_is_a_miss_and_the_tier_comes_back() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut server = RedisServer::start();
    let tier = RedisTier::new(&settings(&server.url()));
    assert!(
        tier.set(&key(1), &answer("before"), Duration::from_secs(60))
            .await
    );

    server.kill();
    for i in 0..5 {
        let started = Instant::now();
        assert!(tier.get(&key(1)).await.is_none());
        assert!(
            !tier
                .set(&key(2), &answer("during"), Duration::from_secs(60))
                .await
        );
        // Each call gives up within its timeout (250 ms), with some slack.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "call {i} took {:?}",
            started.elapsed()
        );
    }
    assert!(tier.stats().errors.load(Relaxed) >= 10);

    server.restart();
    // The connection manager reconnects on a call after a failed one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tier
        .set(&key(3), &answer("after"), Duration::from_secs(60))
        .await
    {
        assert!(Instant::now() < deadline, "the tier never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tier.get(&key(3)).await.unwrap().0, answer("after"));
    // The restarted server kept nothing: no persistence.
    assert!(tier.get(&key(1)).await.is_none());
}

#[tokio::test]
async fn a_redis_that_was_never_up_is_a_miss() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let tier = RedisTier::new(&settings(&url));
    assert!(tier.get(&key(1)).await.is_none());
    assert!(
        !tier
            .set(&key(1), &answer("x"), Duration::from_secs(1))
            .await
    );
}

fn cache_settings(url: &str) -> CacheSettings {
    CacheSettings {
        max_bytes: 1 << 20,
        max_entries: 1000,
        max_entry_bytes: 64 << 10,
        ttl: Duration::from_secs(60),
        redis: Some(settings(url)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_share_answers_through_redis() {
    use std::sync::atomic::Ordering::Relaxed;
    let server = RedisServer::start();
    let a = Arc::new(ResponseCache::new(&cache_settings(&server.url())));
    let b = Arc::new(ResponseCache::new(&cache_settings(&server.url())));

    let Lookup::Leader(leader) = a.get_or_join(key(9)).await else {
        panic!("a cold cache leads")
    };
    assert!(leader.complete(answer("shared"), None).await);
    // The shared store runs in the background.
    let redis_a = a.redis().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_a.stats().sets.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "never stored in redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match b.get_or_join(key(9)).await {
        Lookup::Hit(r) => assert_eq!(*r, answer("shared")),
        _ => panic!("the second cache misses what the first stored"),
    }
    // Now held in b's own tier: no second Redis call.
    assert!(b.peek(&key(9)).await.is_some());
    assert_eq!(b.redis().unwrap().stats().hits.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_whose_redis_is_down_still_serves_from_memory() {
    let mut server = RedisServer::start();
    let cache = Arc::new(ResponseCache::new(&cache_settings(&server.url())));
    server.kill();
    let Lookup::Leader(leader) = cache.get_or_join(key(4)).await else {
        panic!("miss")
    };
    assert!(leader.complete(answer("local"), None).await);
    assert!(matches!(cache.get_or_join(key(4)).await, Lookup::Hit(r) if *r == answer("local")));
}

/// Two proxies in front of one provider, caching through one Redis.
async fn proxy_with_redis(upstream: std::net::SocketAddr, redis_url: &str) -> Proxy {
    let extra = format!(
        "policies: policies\ncache: {{enabled: true, redis: {{url: \"{redis_url}\", timeout_ms: 200}}}}\n"
    );
    let rules =
        "rules:\n  - name: cached\n    match: {feature: cached}\n    cache: {scope: team}\n";
    Proxy::start_with(
        &config_for(upstream, &extra),
        &[("policies/cache.yaml", rules.as_bytes())],
    )
    .await
}

async fn ask(proxy: &Proxy, prompt: &str) -> String {
    let body = serde_json::json!({"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": prompt}]});
    let resp = openai(
        proxy,
        "/v1/chat/completions",
        &[("x-tollgate-feature", "cached")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let header = resp.headers()["x-tollgate-cache"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = resp.bytes().await;
    header
}

#[tokio::test]
async fn two_proxies_share_hits_and_survive_a_redis_outage() {
    let mut redis = RedisServer::start();
    let up = start_sim().await;
    let a = proxy_with_redis(up.addr, &redis.url()).await;
    let b = proxy_with_redis(up.addr, &redis.url()).await;

    assert_eq!(ask(&a, "Name a fish.").await, "miss");
    // The answer reaches Redis in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis.command("DBSIZE").contains(":1") {
        assert!(Instant::now() < deadline, "the answer never reached redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ask(&b, "Name a fish.").await,
        "hit",
        "a hit from the other replica"
    );
    assert_eq!(up.sim.stats().requests, 1);
    let hit = b.only_record().await;
    assert!(hit.cache_hit && hit.cost_usd == Some(NanoUsd::ZERO));

    // Redis goes down: requests are still served, and the in-process tier still hits.
    redis.kill();
    assert_eq!(ask(&b, "Name a fish.").await, "hit", "kept in process");
    assert_eq!(ask(&a, "Name a bird.").await, "miss");
    assert_eq!(ask(&a, "Name a bird.").await, "hit");
    assert_eq!(
        ask(&b, "Name a bird.").await,
        "miss",
        "not shared while redis is down"
    );
    assert_eq!(up.sim.stats().requests, 3);
}
