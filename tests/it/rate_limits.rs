//! Rate limits through the proxy: requests and tokens per minute, per key, team or user, in
//! a scope; refusals in the client's wire format with `retry-after`, recorded and counted;
//! and counters shared by two proxy processes through a real redis-server, which serve on
//! when it dies.
//!
//! Limits are small and every refusal comes within a second of the first request, so a
//! counter's refill (one request every 60 s / rpm) never changes what a test sees.

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::{Value, json};

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
}

fn message(prompt: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": prompt}]})
}

/// A proxy in front of the simulator with `limits` (YAML list items) and `extra` config.
async fn limited(up: &Upstream, limits: &str, extra: &str) -> Proxy {
    Proxy::start(&config_for(
        up.addr,
        &format!("rate_limits:\n{limits}\n{extra}"),
    ))
    .await
}

/// Sends a chat request as `key` with `headers`; its status.
async fn status_as(proxy: &Proxy, key: &str, headers: &[(&str, &str)]) -> u16 {
    let resp = openai_as(proxy, key, "/v1/chat/completions", headers, &chat("Hi.")).await;
    resp.status().as_u16()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The message of an error body, in either wire format.
fn error_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn the_request_past_a_keys_rpm_gets_a_429_in_its_wire_format_and_other_keys_go_on() {
    let up = start_sim().await;
    let proxy = limited(&up, "  - {name: per-key, per: key, rpm: 3}", "").await;
    for i in 0..3 {
        let resp = openai(&proxy, "/v1/chat/completions", &[], &chat("Hi.")).await;
        assert_eq!(resp.status(), 200, "request {i}");
    }

    let resp = openai(&proxy, "/v1/chat/completions", &[], &chat("Hi.")).await;
    assert_eq!(resp.status(), 429);
    // One request drains every 20 s: the wait is that, less the moments already past.
    let wait = retry_after(&resp);
    assert!((19..=20).contains(&wait), "retry-after {wait}");
    let openai_id = request_id(&resp);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limited");
    let text = error_message(&v);
    assert!(text.contains("`per-key`"), "{text}");
    assert!(
        text.contains("3 requests per minute for key search-prod"),
        "{text}"
    );

    // The same key's Anthropic calls share the counter, and get Anthropic's shape.
    let resp = anthropic(&proxy, "/v1/messages", &[], &message("Hi.")).await;
    assert_eq!(resp.status(), 429);
    assert!((19..=20).contains(&retry_after(&resp)));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(error_message(&v).contains("`per-key`"));

    // Another key has a counter of its own.
    for i in 0..3 {
        assert_eq!(
            status_as(&proxy, OPEN_KEY, &[]).await,
            200,
            "open key, request {i}"
        );
    }
    assert_eq!(status_as(&proxy, OPEN_KEY, &[]).await, 429);
    assert_eq!(
        up.sim.stats().requests,
        6,
        "refused requests never reach the provider"
    );

    // A refusal is recorded like the proxy's other refusals, and counted by limit.
    let r = proxy.record_of(9, &openai_id).await;
    assert_eq!((r.status, r.error.as_deref()), (429, Some("rate_limited")));
    assert_eq!(
        (r.key_name.as_str(), r.team.as_str()),
        ("search-prod", "search")
    );
    assert_eq!((r.input_tokens, r.output_tokens, r.attempts), (0, 0, 0));
    assert_eq!(r.cost_usd.unwrap().0, 0);
    let records = proxy.records(9).await;
    let refused = records.iter().filter(|r| r.status == 429).count();
    assert_eq!((records.len(), refused), (9, 3));
    proxy
        .wait_metric("tollgate_rate_limited_total", &[("limit", "per-key")], 3.0)
        .await;
}

#[tokio::test]
async fn tokens_used_after_admission_count_against_the_next_requests() {
    let up = start_sim().await;
    let proxy = limited(&up, "  - {name: tokens, per: key, tpm: 1000}", "").await;
    // Its prompt fits easily; its answer is 2,000 tokens, twice the minute's limit.
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "2000")],
        &chat("Write at length."),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let first = proxy.record_of(1, &request_id(&resp)).await;
    let used = first.input_tokens + first.output_tokens;
    assert!(used > 2000, "{first:?}");

    // The next small request waits for `used` to drain to under 1000 at 1000 a minute,
    // and for room for its own few tokens.
    let resp = openai(&proxy, "/v1/chat/completions", &[], &chat("Hi.")).await;
    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    let least = (used - 1000) * 60 / 1000;
    assert!(
        (least..=least + 3).contains(&wait),
        "retry-after {wait}, {used} tokens used"
    );
    let v: Value = resp.json().await.unwrap();
    let text = error_message(&v);
    assert!(text.contains("1000 tokens per minute"), "{text}");
    // Other keys are not held back.
    assert_eq!(status_as(&proxy, OPEN_KEY, &[]).await, 200);
}

#[tokio::test]
async fn teams_and_users_each_have_their_own_counter() {
    let up = start_sim().await;
    let limits = "  - {name: per-team, per: team, rpm: 2}\n  - {name: per-user, per: user, rpm: 1, scope: {team: growth}}";
    let proxy = limited(&up, limits, "").await;
    let team = |t| ("x-tollgate-team", t);
    assert_eq!(status_as(&proxy, OPEN_KEY, &[team("a")]).await, 200);
    assert_eq!(status_as(&proxy, OPEN_KEY, &[team("a")]).await, 200);
    let resp = openai_as(
        &proxy,
        OPEN_KEY,
        "/v1/chat/completions",
        &[team("a")],
        &chat("Hi."),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert!(error_message(&v).contains("2 requests per minute for team a"));
    assert_eq!(status_as(&proxy, OPEN_KEY, &[team("b")]).await, 200);

    // In team growth, each user gets one request a minute (and the team two in all).
    let alice = [team("growth"), ("x-tollgate-user", "alice")];
    let bob = [team("growth"), ("x-tollgate-user", "bob")];
    assert_eq!(status_as(&proxy, OPEN_KEY, &alice).await, 200);
    let resp = openai_as(
        &proxy,
        OPEN_KEY,
        "/v1/chat/completions",
        &alice,
        &chat("Hi."),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    let text = error_message(&v);
    assert!(
        text.contains("`per-user`") && text.contains("user alice"),
        "{text}"
    );
    // Alice's refused request did not count against the team: Bob still gets the second.
    assert_eq!(status_as(&proxy, OPEN_KEY, &bob).await, 200);
    let carol = [team("growth"), ("x-tollgate-user", "carol")];
    assert_eq!(status_as(&proxy, OPEN_KEY, &carol).await, 429);
    proxy
        .wait_metric("tollgate_rate_limited_total", &[("limit", "per-team")], 2.0)
        .await;
    proxy
        .wait_metric("tollgate_rate_limited_total", &[("limit", "per-user")], 1.0)
        .await;
}

#[tokio::test]
async fn only_requests_in_a_limits_scope_are_counted() {
    let up = start_sim().await;
    let proxy = limited(
        &up,
        "  - {name: search-keys, per: key, rpm: 1, scope: {team: search}}",
        "",
    )
    .await;
    // KEY is bound to team search.
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 429);
    // Out of scope, nothing is counted.
    let other = [("x-tollgate-team", "other")];
    for i in 0..4 {
        assert_eq!(
            status_as(&proxy, OPEN_KEY, &other).await,
            200,
            "request {i}"
        );
    }
    // In scope by its header, the open key gets a counter of its own.
    let search = [("x-tollgate-team", "search")];
    assert_eq!(status_as(&proxy, OPEN_KEY, &search).await, 200);
    assert_eq!(status_as(&proxy, OPEN_KEY, &search).await, 429);
}

/// The config of a proxy whose limits live in `redis`.
fn shared_config(up: &Upstream, redis: &RedisServer, rpm: u64) -> String {
    let extra = format!(
        "replicas:\n  rate_limits: redis\n  redis: {{url: \"{}\", key_prefix: \"test:\", timeout_ms: 250}}",
        redis.url()
    );
    config_for(
        up.addr,
        &format!("rate_limits:\n  - {{name: shared, per: key, rpm: {rpm}}}\n{extra}"),
    )
}

#[tokio::test]
async fn two_proxies_sharing_redis_admit_the_limit_between_them() {
    let up = start_sim().await;
    let redis = RedisServer::start();
    let a = Proxy::start(&shared_config(&up, &redis, 6)).await;
    let b = Proxy::start(&shared_config(&up, &redis, 6)).await;

    // 20 requests at once, half to each proxy.
    let sends = (0..20).map(|i| {
        let proxy = if i % 2 == 0 { &a } else { &b };
        status_as(proxy, KEY, &[])
    });
    let statuses = futures::future::join_all(sends).await;
    let accepted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((accepted, refused), (6, 14), "{statuses:?}");
    assert_eq!(up.sim.stats().requests, 6);
    // Each proxy saw both kinds: the counter is one.
    for (proxy, name) in [(&a, "a"), (&b, "b")] {
        let m = proxy.metrics().await;
        assert_eq!(
            metric(&m, "tollgate_rate_limit_redis_errors_total", &[]),
            Some(0.0),
            "{name}: {m}"
        );
    }
    let refused_a = metric(&a.metrics().await, "tollgate_rate_limited_total", &[]).unwrap_or(0.0);
    let refused_b = metric(&b.metrics().await, "tollgate_rate_limited_total", &[]).unwrap_or(0.0);
    assert_eq!(refused_a + refused_b, 14.0);
    assert!(
        refused_a > 0.0 && refused_b > 0.0,
        "{refused_a} {refused_b}"
    );
}

#[tokio::test]
async fn when_redis_dies_requests_are_served_and_limited_locally() {
    let up = start_sim().await;
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(&shared_config(&up, &redis, 3)).await;
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);

    redis.kill();
    let started = std::time::Instant::now();
    // A key that has not been seen: its local counter starts empty and holds to the limit.
    for i in 0..3 {
        assert_eq!(status_as(&proxy, OPEN_KEY, &[]).await, 200, "request {i}");
    }
    assert_eq!(status_as(&proxy, OPEN_KEY, &[]).await, 429);
    // The key charged in Redis before the outage keeps its count here too.
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 429);
    // Each Redis call gives up within its timeout (250 ms), with some slack.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let m = proxy.metrics().await;
    let errors = metric(&m, "tollgate_rate_limit_redis_errors_total", &[]).unwrap();
    assert!(errors >= 7.0, "{errors} errors: {m}");
    let log = proxy.log();
    assert_eq!(
        log.matches("redis rate-limit counters unavailable").count(),
        1,
        "failures are logged at most once per 10 s:\n{log}"
    );
}

#[tokio::test]
async fn a_reload_keeps_the_counts_of_the_limits_it_keeps() {
    let up = start_sim().await;
    let proxy = limited(
        &up,
        "  - {name: per-key, per: key, rpm: 2}",
        "reload: {watch: false}",
    )
    .await;
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 429);

    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = |text: String, n: f64| {
        std::fs::write(&path, text).unwrap();
        proxy.signal(libc::SIGHUP);
        proxy.wait_metric(
            "tollgate_config_reloads_total",
            &[("result", "ok"), ("trigger", "signal")],
            n,
        )
    };
    // Raised to 3: the two counted stay counted, so one more fits.
    reload(original.replace("rpm: 2", "rpm: 3"), 1.0).await;
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 429);
    // Under another name it is another limit, counted from nothing.
    reload(original.replace("name: per-key", "name: renamed"), 2.0).await;
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 200);
    assert_eq!(status_as(&proxy, KEY, &[]).await, 429);
}

#[tokio::test]
async fn tokens_settled_on_one_proxy_hold_back_the_other() {
    let up = start_sim().await;
    let redis = RedisServer::start();
    let config = shared_config(&up, &redis, 100).replace("rpm: 100", "tpm: 1000");
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    let resp = openai(
        &a,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "2000")],
        &chat("Write at length."),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // The settlement goes to Redis after the record: wait for it to land, in the counter
    // shared by both (its level is in tokens × 60,000,000).
    let key = "test:rl:key:tpm:6:shared:search-prod";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let reply = redis.command(&format!("HGET {key} level"));
        let level: f64 = reply
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(0.0);
        if level > 1000.0 * 60e6 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{key}: {reply:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let resp = openai(&b, "/v1/chat/completions", &[], &chat("Hi.")).await;
    assert_eq!(resp.status(), 429);
    assert!(retry_after(&resp) > 60, "{:?}", resp.headers());
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "tollgate_rate_limit_redis_errors_total", &[]),
        Some(0.0)
    );
}
