//! SIGHUP reloads the config without dropping requests; a bad config is refused.

mod common;

use common::*;
use serde_json::json;

/// Sends SIGHUP and waits for the reload's first `result` (`ok` or `refused`).
async fn reload(proxy: &Proxy, result: &str) {
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric("tollgate_config_reloads_total", &[("result", result)], 1.0)
        .await;
}

/// Status of a chat request for `fresh-model`, a model the tests add by reloading.
async fn fresh_model_status(proxy: &Proxy) -> u16 {
    let body = json!({"model": "fresh-model", "messages": [{"role": "user", "content": "hi"}]});
    client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_refuses_a_broken_one() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let status = fresh_model_status;
    assert_eq!(status(&proxy).await, 404);

    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let added = original.replace(
        "models:\n",
        "models:\n  fresh-model: { provider: openai }\n",
    );
    std::fs::write(&path, &added).unwrap();
    reload(&proxy, "ok").await;
    assert_eq!(status(&proxy).await, 200, "the new route is live");

    std::fs::write(
        &path,
        added.replace(
            "models:\n",
            "models:\n  broken: { provider: openai, colour: red }\n",
        ),
    )
    .unwrap();
    reload(&proxy, "refused").await;
    assert_eq!(status(&proxy).await, 200, "the running config stays");
    assert!(
        proxy.log().contains("colour"),
        "the problem is logged:\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_reload_with_a_broken_policy_file_is_refused_whole() {
    let up = start_sim().await;
    let policies = tempfile::tempdir().unwrap();
    let rule = |max_tokens: u32| {
        format!(
            "rules:\n  - name: cap\n    match: {{ team: nobody, endpoint: /v1/chat/completions }}\n    rewrite: {{ max_tokens: {max_tokens} }}\n"
        )
    };
    let policy = policies.path().join("caps.yaml");
    std::fs::write(&policy, rule(100)).unwrap();
    let extra = format!("policies: {}\n", policies.path().display());
    let proxy = Proxy::start(&config_for(up.addr, &extra)).await;
    let status = || fresh_model_status(&proxy);
    assert_eq!(status().await, 404);

    // A new route in tollgate.yaml, and a policy file with a problem: neither is taken.
    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replace(
            "models:\n",
            "models:\n  fresh-model: { provider: openai }\n",
        ),
    )
    .unwrap();
    std::fs::write(&policy, rule(0)).unwrap();
    reload(&proxy, "refused").await;
    assert_eq!(status().await, 404, "the running config stays");
    let problem = format!(
        "{}:4:28: rule \"cap\": max_tokens must be above 0",
        policy.display()
    );
    assert!(
        proxy.log().contains(&problem),
        "the problem is logged with its position:\n{}",
        proxy.log()
    );

    // Fixed, the same reload goes through.
    std::fs::write(&policy, rule(100)).unwrap();
    reload(&proxy, "ok").await;
    assert_eq!(status().await, 200, "the new route is live");
}
