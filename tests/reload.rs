//! SIGHUP reloads the config without dropping requests; a bad config is refused.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn sighup_applies_a_valid_config_and_refuses_a_broken_one() {
    let up = start_sim().await;
    let proxy = Proxy::start(&config_for(up.addr, "")).await;
    let body = json!({"model": "fresh-model", "messages": [{"role": "user", "content": "hi"}]});
    let status = |proxy: &Proxy| {
        let body = body.clone();
        let url = proxy.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&proxy).await, 404);

    let path = proxy.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let added = original.replace(
        "models:\n",
        "models:\n  fresh-model: { provider: openai }\n",
    );
    std::fs::write(&path, &added).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric("tollgate_config_reloads_total", &[("result", "ok")], 1.0)
        .await;
    assert_eq!(status(&proxy).await, 200, "the new route is live");

    std::fs::write(
        &path,
        added.replace(
            "models:\n",
            "models:\n  broken: { provider: openai, colour: red }\n",
        ),
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric(
            "tollgate_config_reloads_total",
            &[("result", "refused")],
            1.0,
        )
        .await;
    assert_eq!(status(&proxy).await, 200, "the running config stays");
    assert!(
        proxy.log().contains("colour"),
        "the problem is logged:\n{}",
        proxy.log()
    );
}
