//! Budgets through the proxy: reservations that hold under concurrency, settled to the real
//! cost, refusals in the client's wire format, downgrades, and spend that survives a restart.

use crate::common::*;
use serde_json::{Value, json};
use tollgate::api::Endpoint;
use tollgate::money::NanoUsd;
use tollgate::tokens::Encoding;

/// Output tokens every test request allows: at $8/M, 800,000 nano-USD of its reservation.
const MAX_TOKENS: u64 = 100;

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS,
           "messages": [{"role": "user", "content": prompt}]})
}

/// What the proxy reserves for `body`: its input tokens at $2/M and `MAX_TOKENS` at $8/M.
fn reservation(body: &Value) -> NanoUsd {
    let input = tollgate::usage::estimate::input_count(
        Endpoint::ChatCompletions,
        body,
        Encoding::for_model("gpt-4o-mini"),
    )
    .tokens;
    NanoUsd(input as i64 * nanos_per_token(2.0) + MAX_TOKENS as i64 * nanos_per_token(8.0))
}

/// A proxy in front of the simulator with `budgets` (YAML list items) for team `search`.
async fn with_budgets(up: &Upstream, budgets: &str, extra: &str) -> Proxy {
    let config = config_for(up.addr, &format!("budgets:\n{budgets}\n{extra}"));
    Proxy::start_with(&config, &[("policies/cheap.yaml", CHEAP.as_bytes())]).await
}

const CHEAP: &str = r#"
rules:
  - name: cheap
    priority: 0
    match: {model: never-matched}
    route:
      targets: [{provider: openai, model: gpt-4o-mini}]
"#;

fn remaining(resp: &reqwest::Response) -> Option<NanoUsd> {
    resp.headers()
        .get("x-tollgate-budget-remaining-usd")
        .map(|v| NanoUsd::parse_usd(v.to_str().unwrap()).unwrap())
}

fn block(amount: NanoUsd) -> String {
    format!(
        "  - {{name: search-month, scope: {{team: search}}, period: month, amount_usd: \"{amount}\", action: block}}"
    )
}

#[tokio::test]
async fn two_hundred_concurrent_requests_against_room_for_ten_serve_ten() {
    let up = start_sim().await;
    let body = chat("Summarize the quarterly report.");
    let each = reservation(&body);
    // Room for 10 reservations and half of an 11th.
    let amount = NanoUsd(each.0 * 21 / 2);
    let proxy = with_budgets(&up, &block(amount), "").await;
    // The provider answers after 1 s: all 200 are in flight together.
    let slow = ("x-sim-fault", "delay-ms=1000");
    let calls = (0..200).map(|_| {
        let (proxy, body) = (&proxy, &body);
        async move {
            let resp = openai(proxy, "/v1/chat/completions", &[slow], body).await;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body)
        }
    });
    let results = futures::future::join_all(calls).await;
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(served, 10);
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(refused.len(), 190);
    let err = &refused[0]["error"];
    assert_eq!(err["code"], "budget_exceeded");
    assert_eq!(err["type"], "insufficient_quota");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("search-month"), "{message}");
    assert!(message.contains(&amount.to_string()), "{message}");
    assert!(message.contains("resets at"), "{message}");
    assert_eq!(up.sim.stats().requests, 10);
    // Every request has a record; the refusals say why.
    let records = proxy.records(200).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.error.as_deref() == Some("budget_exceeded"))
            .count(),
        190
    );
}

#[tokio::test]
async fn reservations_settle_to_the_real_cost_and_failures_release_them() {
    let up = start_sim().await;
    let body = chat("Name a bird.");
    let amount = NanoUsd(reservation(&body).0 * 100);
    let proxy = with_budgets(&up, &block(amount), "").await;

    let first = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(remaining(&first), Some(amount), "nothing spent before it");
    let _ = first.bytes().await;
    let spent = proxy.only_record().await.cost_usd.unwrap();
    assert!(spent.0 > 0 && spent < reservation(&body));

    // A provider error costs nothing: its reservation is released.
    let failed = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-fault", "status=500")],
        &body,
    )
    .await;
    assert_eq!(failed.status(), 500);
    let _ = failed.bytes().await;
    let third = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    assert_eq!(
        remaining(&third),
        Some(NanoUsd(amount.0 - spent.0)),
        "the first request's real cost, nothing for the failure"
    );
    let _ = third.bytes().await;

    // A client that leaves mid-stream: settled to what the provider produced.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[
            ("x-sim-token-interval-ms", "50"),
            ("x-sim-output-tokens", "60"),
        ],
        &streamed,
    )
    .await;
    let mut resp = resp;
    let _ = resp.chunk().await.unwrap();
    drop(resp);

    let records = proxy.records(4).await;
    let total: i64 = records.iter().filter_map(|r| r.cost_usd).map(|c| c.0).sum();
    let metrics = proxy
        .wait_metric(
            "tollgate_budget_spend_usd",
            &[("budget", "search-month")],
            total as f64 / 1e9,
        )
        .await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_budget_reserved_usd",
            &[("budget", "search-month")]
        ),
        Some(0.0),
        "nothing stays reserved"
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_budget_limit_usd",
            &[("budget", "search-month")]
        ),
        Some(amount.0 as f64 / 1e9)
    );
}

#[tokio::test]
async fn a_spent_budget_refuses_in_the_anthropic_format_too_and_other_teams_pass() {
    let up = start_sim().await;
    let tiny = NanoUsd(1000);
    let proxy = with_budgets(&up, &block(tiny), "").await;
    let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 50,
                     "messages": [{"role": "user", "content": "Hi"}]});
    let resp = anthropic(&proxy, "/v1/messages", &[], &ask).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("search-month")
    );
    // The open key has no team: no budget holds it.
    let other = openai_as(&proxy, OPEN_KEY, "/v1/chat/completions", &[], &chat("Hi")).await;
    assert_eq!(other.status(), 200);
    assert_eq!(remaining(&other), None);
    assert_eq!(up.sim.stats().requests, 1);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_budget_rejections_total",
            &[("budget", "search-month")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_downgrading_budget_routes_by_its_rule_once_spent() {
    let up = start_sim().await;
    let body = json!({"model": "o3-mini", "max_tokens": MAX_TOKENS,
                      "messages": [{"role": "user", "content": "Plan a trip."}]});
    // Room for one o3-mini reservation (100 output tokens at $4/M: $0.0004, plus input),
    // not for a second once the first spent its 50 output tokens ($0.0002).
    let budget = "  - {name: search-month, scope: {team: search}, period: month, amount_usd: \"0.0005\", action: downgrade, downgrade_to: cheap}";
    let proxy = with_budgets(&up, budget, "policies: policies").await;
    let fifty = ("x-sim-output-tokens", "50");
    let first = openai(&proxy, "/v1/chat/completions", &[fifty], &body).await;
    assert_eq!(first.status(), 200);
    let _ = first.bytes().await;
    let second = openai(&proxy, "/v1/chat/completions", &[fifty], &body).await;
    assert_eq!(second.status(), 200, "downgraded, not refused");
    let answer: Value = second.json().await.unwrap();
    assert_eq!(answer["model"], "gpt-4o-mini");
    let records = proxy.records(2).await;
    assert_eq!(records[0].model, "o3-mini");
    assert_eq!(
        (records[1].model.as_str(), records[1].policy.as_str()),
        ("gpt-4o-mini", "cheap")
    );
}

#[tokio::test]
async fn spend_survives_a_restart() {
    let up = start_sim().await;
    let body = chat("Name a river.");
    let amount = NanoUsd(reservation(&body).0 * 100);
    let mut proxy = with_budgets(&up, &block(amount), "").await;
    let spent = three_calls(&proxy, &body).await;
    proxy.restart().await;
    let resp = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    assert_eq!(remaining(&resp), Some(NanoUsd(amount.0 - spent)));
}

/// Three calls of `body`, one after another; what they cost in all (nano-USD).
async fn three_calls(proxy: &Proxy, body: &Value) -> i64 {
    for _ in 0..3 {
        let resp = openai(proxy, "/v1/chat/completions", &[], body).await;
        let _ = resp.bytes().await;
    }
    proxy
        .records(3)
        .await
        .iter()
        .map(|r| r.cost_usd.unwrap().0)
        .sum()
}

/// Two proxies sharing budgets through one ClickHouse database.
async fn replicas(up: &Upstream, budgets: &str, test: &str) -> (Proxy, Proxy) {
    let ch = crate::common::clickhouse::ClickHouse::shared().await;
    let db = ch.fresh_database(test).await;
    let extra = format!(
        "budgets:\n{budgets}\nreplicas: {{budgets: clickhouse, refresh_ms: 100}}\n{}",
        crate::common::clickhouse::telemetry(&ch.url, &db, "")
    );
    let config = config_for(up.addr, &extra);
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    (a, b)
}

/// `n` requests at once, spread over `proxies` in turn; their statuses.
async fn burst(proxies: &[&Proxy], n: usize, headers: &[(&str, &str)], body: &Value) -> Vec<u16> {
    let calls = (0..n).map(|i| async move {
        let proxy = proxies[i % proxies.len()];
        let resp = openai(proxy, "/v1/chat/completions", headers, body).await;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        status
    });
    futures::future::join_all(calls).await
}

/// A request whose real cost is its reservation: the provider writes all `MAX_TOKENS`.
async fn full_cost(proxy: &Proxy, body: &Value) -> u16 {
    let all = MAX_TOKENS.to_string();
    let resp = openai(
        proxy,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", all.as_str())],
        body,
    )
    .await;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    status
}

#[tokio::test]
async fn replicas_sharing_through_clickhouse_hold_one_budget() {
    let up = start_sim().await;
    let body = chat("Write a haiku.");
    let each = reservation(&body);
    // Room for 6 calls at their full cost, not for a 7th.
    let amount = NanoUsd(each.0 * 13 / 2);
    let (a, b) = replicas(&up, &block(amount), "budgets::replicas sequential").await;
    // Alternating, with time for each record to reach ClickHouse and the other replica.
    let mut served = 0;
    for i in 0..12 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        if full_cost(proxy, &body).await == 200 {
            served += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(served, 6, "each replica alone would have served 6");
    assert_eq!(up.sim.stats().requests, 6);
    // Spend survives and is shared: a replica that starts now sees it all.
    let spent: i64 = a
        .records(3)
        .await
        .iter()
        .chain(b.records(3).await.iter())
        .filter_map(|r| r.cost_usd)
        .map(|c| c.0)
        .sum();
    assert!(spent <= amount.0, "{spent} spent of {}", amount.0);
}

#[tokio::test]
async fn a_burst_on_two_replicas_overshoots_by_at_most_one_replicas_room() {
    let up = start_sim().await;
    let body = chat("Write a limerick.");
    let each = reservation(&body);
    // Room for 5.
    let amount = NanoUsd(each.0 * 11 / 2);
    let (a, b) = replicas(&up, &block(amount), "budgets::replicas burst").await;
    let slow = ("x-sim-fault", "delay-ms=300");
    let all = MAX_TOKENS.to_string();
    let full = ("x-sim-output-tokens", all.as_str());
    // Both replicas get 10 at once: neither sees the other's in time. Each holds its own
    // reservations, so together they serve at most twice the room (the documented bound).
    let statuses = burst(&[&a, &b], 20, &[slow, full], &body).await;
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=10).contains(&served), "{served} served");
    // Once both have read each other's spend back, neither serves more.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(full_cost(&a, &body).await, 429);
    assert_eq!(full_cost(&b, &body).await, 429);
}

#[tokio::test]
async fn thresholds_send_signed_alerts_once_even_across_a_restart() {
    use hmac::{Hmac, Mac};
    let up = start_sim().await;
    let (hook, seen) = recording_upstream().await;
    let body = chat("Name a cloud.");
    // Full-cost calls: two reach 50%, four 100%.
    let amount = NanoUsd(reservation(&body).0 * 4);
    let budgets = format!(
        "  - {{name: search-month, scope: {{team: search}}, period: month, amount_usd: \"{amount}\", alert_at: [50, 100], action: alert}}"
    );
    let alerts = format!(
        "alerts:\n  webhooks:\n    - {{name: finops, format: json, url: \"http://{hook}/hook\", secret_env: TEST_ADMIN_TOKEN}}"
    );
    let mut proxy = with_budgets(&up, &budgets, &alerts).await;
    let thresholds = |seen: &std::sync::Mutex<Vec<Received>>| -> Vec<(u64, Value)> {
        let seen = seen.lock().unwrap();
        let mut out: Vec<(u64, Value)> = seen
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|v| v["kind"] == "threshold")
            .map(|v| (v["percent"].as_u64().unwrap(), v))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    };
    for _ in 0..5 {
        assert_eq!(
            full_cost(&proxy, &body).await,
            200,
            "an alert budget keeps serving"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while thresholds(&seen).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "alerts never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sent = thresholds(&seen);
    assert_eq!(
        sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![50, 100]
    );
    let hundred = &sent[1].1;
    assert_eq!(hundred["budget"], "search-month");
    assert_eq!(hundred["limit_usd"], amount.to_string());
    assert!(NanoUsd::parse_usd(hundred["spend_usd"].as_str().unwrap()).unwrap() >= amount);
    // Each is signed: HMAC-SHA256 of "<timestamp>.<body>" with the configured secret.
    for r in seen.lock().unwrap().iter() {
        let ts = r.headers["x-tollgate-timestamp"].to_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(ADMIN_TOKEN.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&r.body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(r.headers["x-tollgate-signature"].to_str().unwrap(), want);
    }
    // A restart remembers what was sent: more spend past 100% sends nothing new.
    proxy.restart().await;
    for _ in 0..2 {
        assert_eq!(full_cost(&proxy, &body).await, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(thresholds(&seen).len(), 2);
}

#[tokio::test]
async fn replicas_sharing_through_redis_hold_one_budget_exactly() {
    let mut redis = crate::common::redis::RedisServer::start();
    let up = start_sim().await;
    let body = chat("Write a sonnet.");
    let each = reservation(&body);
    // Room for 5.
    let amount = NanoUsd(each.0 * 11 / 2);
    let extra = format!(
        "budgets:\n{}\nreplicas: {{budgets: redis, redis: {{url: \"{}\", timeout_ms: 200}}}}\n",
        block(amount),
        redis.url()
    );
    let config = config_for(up.addr, &extra);
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    let slow = ("x-sim-fault", "delay-ms=300");
    let statuses = burst(&[&a, &b], 20, &[slow], &body).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "one budget across both replicas: {statuses:?}"
    );
    // What was spent is in Redis, settled to the real costs: the next call on either
    // replica sees the same remaining amount.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let spent: i64 = a
        .records(10)
        .await
        .iter()
        .chain(b.records(10).await.iter())
        .filter_map(|r| r.cost_usd)
        .map(|c| c.0)
        .sum();
    let resp = openai(&b, "/v1/chat/completions", &[], &body).await;
    assert_eq!(remaining(&resp), Some(NanoUsd(amount.0 - spent)));
    let _ = resp.bytes().await;

    // Redis down: requests are still decided, by each replica's own accounts.
    redis.kill();
    let resp = openai(&a, "/v1/chat/completions", &[], &body).await;
    assert!(
        [200, 429].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
}

#[tokio::test]
async fn a_budget_added_by_a_reload_starts_from_the_recorded_spend() {
    let up = start_sim().await;
    let body = chat("Name a moon.");
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let spent = three_calls(&proxy, &body).await;
    let amount = NanoUsd(reservation(&body).0 * 100);
    let config = config_for(up.addr, &format!("budgets:\n{}", block(amount)));
    std::fs::write(
        proxy.config_path(),
        format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndata_dir: data\n{config}"),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric(
            "tollgate_budget_spend_usd",
            &[("budget", "search-month")],
            spent as f64 / 1e9,
        )
        .await;
    let resp = openai(&proxy, "/v1/chat/completions", &[], &body).await;
    assert_eq!(remaining(&resp), Some(NanoUsd(amount.0 - spent)));
}

#[tokio::test]
async fn a_cache_hit_spends_nothing_and_is_served_past_a_spent_budget() {
    let up = start_sim().await;
    let mut body = chat("Name a comet.");
    body["temperature"] = json!(0);
    // Room for exactly one call at its full cost.
    let amount = reservation(&body);
    let rules =
        "rules:\n  - name: cached\n    match: {feature: cached}\n    cache: {scope: team}\n";
    let config = config_for(
        up.addr,
        &format!(
            "budgets:\n{}\npolicies: policies\ncache: {{enabled: true}}",
            block(amount)
        ),
    );
    let proxy = Proxy::start_with(&config, &[("policies/cache.yaml", rules.as_bytes())]).await;
    let cached = ("x-tollgate-feature", "cached");
    let all = MAX_TOKENS.to_string();
    let full = ("x-sim-output-tokens", all.as_str());
    let first = openai(&proxy, "/v1/chat/completions", &[cached, full], &body).await;
    assert_eq!(first.status(), 200);
    let _ = first.bytes().await;
    let spent = proxy.only_record().await.cost_usd.unwrap();
    // The budget has no room for another call, but a hit costs nothing.
    let hit = openai(&proxy, "/v1/chat/completions", &[cached, full], &body).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-tollgate-cache"], "hit");
    assert_eq!(remaining(&hit), Some(NanoUsd(amount.0 - spent.0)));
    let _ = hit.bytes().await;
    let mut other = body.clone();
    other["messages"][0]["content"] = json!("Name a star.");
    let refused = openai(&proxy, "/v1/chat/completions", &[cached, full], &other).await;
    assert_eq!(refused.status(), 429);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_budget_spend_usd",
            &[("budget", "search-month")]
        ),
        Some(spent.0 as f64 / 1e9),
        "the hit added nothing"
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_budget_reserved_usd",
            &[("budget", "search-month")]
        ),
        Some(0.0)
    );
}

/// `gpt-4o-mini` at the test rates, with the output cap a price file can give a model.
const CAPPED_PRICES: &str = r#"
version: 1
models:
  gpt-4o-mini:
    max_output_tokens: 1000
    prices:
      - {effective_from: 2024-01-01, input: 2, output: 8, cached_input: 1}
"#;

#[tokio::test]
async fn a_request_without_max_tokens_reserves_the_models_output_cap() {
    let up = start_sim().await;
    let body = json!({"model": "gpt-4o-mini",
                      "messages": [{"role": "user", "content": "Describe a lighthouse."}]});
    let input = tollgate::usage::estimate::input_count(
        Endpoint::ChatCompletions,
        &body,
        Encoding::for_model("gpt-4o-mini"),
    )
    .tokens;
    let each = NanoUsd(input as i64 * nanos_per_token(2.0) + 1000 * nanos_per_token(8.0));
    // Room for one and a half reservations of the cap; the 4,096-token default would not
    // fit even once.
    let amount = NanoUsd(each.0 * 3 / 2);
    let prices = "prices: [prices.yaml]";
    let config = config_for(up.addr, &format!("budgets:\n{}", block(amount)));
    assert!(config.contains(prices));
    let config = config.replace(prices, "prices: [prices.yaml, capped-prices.yaml]");
    let proxy =
        Proxy::start_with(&config, &[("capped-prices.yaml", CAPPED_PRICES.as_bytes())]).await;

    let path = "/v1/chat/completions";
    let first = openai(&proxy, path, &[("x-sim-fault", "delay-ms=500")], &body);
    let second = async {
        // Sent once the first one's reservation is held.
        let reserved = [("budget", "search-month")];
        proxy
            .wait_metric(
                "tollgate_budget_reserved_usd",
                &reserved,
                each.0 as f64 / 1e9,
            )
            .await;
        openai(&proxy, path, &[], &body).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status(), 200);
    assert_eq!(remaining(&first), Some(amount), "nothing spent before it");
    let _ = first.bytes().await;
    assert_eq!(second.status(), 429);
    let refusal: Value = second.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "budget_exceeded");

    // Settled to its real cost, the first leaves room for another.
    let records = proxy.records(2).await;
    let spent = records
        .iter()
        .find(|r| r.error.is_none())
        .and_then(|r| r.cost_usd)
        .unwrap();
    assert!(spent.0 > 0 && spent < each, "{spent}");
    let third = openai(&proxy, path, &[], &body).await;
    assert_eq!(third.status(), 200);
    assert_eq!(remaining(&third), Some(NanoUsd(amount.0 - spent.0)));
}
