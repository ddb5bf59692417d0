//! The config reloads on SIGHUP, on a change to its files and on the admin listener's
//! `POST /reload`, without dropping requests; a bad config is refused and the old one stays.

use crate::common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RELOADS: &str = "tollgate_config_reloads_total";

/// Sends SIGHUP and waits for the reload's first `result` (`ok` or `refused`).
pub(crate) async fn reload(proxy: &Proxy, result: &str) {
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_metric(RELOADS, &[("result", result), ("trigger", "signal")], 1.0)
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

/// A policy file routing `tollgate/alias` to `model`, with `max_tokens` as its cap.
pub(crate) fn alias_policy(model: &str, max_tokens: u32) -> String {
    format!(
        "rules:\n  - name: alias\n    match: {{ model: tollgate/alias, endpoint: /v1/chat/completions }}\n    route:\n      targets:\n        - {{ provider: openai, model: {model} }}\n    rewrite: {{ max_tokens: {max_tokens} }}\n"
    )
}

/// The problem reported for [`alias_policy`] with a cap of 0, saved at `policy`.
fn zero_cap_problem(policy: &Path) -> String {
    format!(
        "{}:7:28: rule \"alias\": max_tokens must be above 0",
        policy.display()
    )
}

/// Saves `text` the way editors and deploys do: a temporary file renamed over `path`.
pub(crate) fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A proxy whose `policies` directory holds `alias.yaml` routing `tollgate/alias` to
/// gpt-4o-mini; `extra` is added to its config.
pub(crate) async fn aliased_proxy(up: &Upstream, extra: &str) -> Proxy {
    let config = config_for(up.addr, &format!("policies: policies\n{extra}"));
    let policy = alias_policy("gpt-4o-mini", 100);
    Proxy::start_with(&config, &[("policies/alias.yaml", policy.as_bytes())]).await
}

async fn chat(proxy: &Proxy, model: &str, request_id: &str) -> reqwest::Response {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    openai(
        proxy,
        "/v1/chat/completions",
        &[("x-request-id", request_id)],
        &body,
    )
    .await
}

pub(crate) async fn post_reload(proxy: &Proxy, token: Option<&str>) -> (u16, Value) {
    let mut request = client().post(proxy.admin_url("/reload"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn an_edited_policy_file_is_picked_up_without_a_signal() {
    let up = start_sim().await;
    let proxy = aliased_proxy(&up, "").await;
    assert_eq!(chat(&proxy, "tollgate/fresh", "before").await.status(), 404);

    let policy = proxy.dir.path().join("policies/alias.yaml");
    let fresh = alias_policy("gpt-4o-mini", 100).replace("tollgate/alias", "tollgate/fresh");
    save_by_rename(&policy, &fresh);
    let saved = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let status = chat(&proxy, "tollgate/fresh", &format!("after-{attempt}"))
            .await
            .status();
        if status == 200 {
            break;
        }
        assert!(
            saved.elapsed() < Duration::from_secs(5),
            "the edited rule never routed (last status {status}):\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, RELOADS, &[("result", "ok"), ("trigger", "watch")]),
        Some(1.0),
        "one reload for one save:\n{m}"
    );
    assert_eq!(
        chat(&proxy, "tollgate/alias", "old-alias").await.status(),
        404
    );
    let records = proxy.records(attempt + 2).await;
    let routed = records
        .iter()
        .find(|r| r.request_id == format!("after-{attempt}"));
    assert_eq!(routed.map(|r| r.policy.as_str()), Some("alias"));

    let (status, body) = post_reload(&proxy, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("reload over HTTP is off"),
        "{body}"
    );
}

#[tokio::test]
async fn an_invalid_policy_edit_is_refused_and_the_old_rules_keep_serving() {
    let up = start_sim().await;
    let proxy = aliased_proxy(&up, "").await;
    let policy = proxy.dir.path().join("policies/alias.yaml");

    save_by_rename(&policy, &alias_policy("o3-mini", 0));
    proxy
        .wait_metric(RELOADS, &[("result", "refused"), ("trigger", "watch")], 1.0)
        .await;
    let problem = zero_cap_problem(&policy);
    assert!(
        proxy.log().contains(&problem),
        "the problem is logged with its position:\n{}",
        proxy.log()
    );
    let response = chat(&proxy, "tollgate/alias", "after-refusal").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let record = proxy.only_record().await;
    assert_eq!(
        (record.policy.as_str(), record.model.as_str()),
        ("alias", "gpt-4o-mini"),
        "the old rule still routes"
    );

    // Saved fixed, it goes through.
    save_by_rename(&policy, &alias_policy("o3-mini", 100));
    proxy
        .wait_metric(RELOADS, &[("result", "ok"), ("trigger", "watch")], 1.0)
        .await;
    chat(&proxy, "tollgate/alias", "after-fix")
        .await
        .text()
        .await
        .unwrap();
    let records = proxy.records(2).await;
    let fixed = records
        .iter()
        .find(|r| r.request_id == "after-fix")
        .unwrap();
    assert_eq!(fixed.model, "o3-mini");
}

#[tokio::test]
async fn a_replaced_policies_directory_is_read_and_watched_again() {
    let up = start_sim().await;
    let proxy = aliased_proxy(&up, "").await;
    let dir = proxy.dir.path();
    // The model the `nth` request of this test, `id`, was routed to.
    let routed_model = |nth: usize, id: &'static str| {
        let proxy = &proxy;
        async move {
            chat(proxy, "tollgate/alias", id)
                .await
                .text()
                .await
                .unwrap();
            let records = proxy.records(nth).await;
            let record = records.into_iter().find(|r| r.request_id == id);
            record.map(|r| r.model)
        }
    };

    // A deploy that builds the new directory aside and swaps it in.
    std::fs::create_dir(dir.join("policies.new")).unwrap();
    write(
        &dir.join("policies.new/alias.yaml"),
        &alias_policy("o3-mini", 100),
    );
    std::fs::rename(dir.join("policies"), dir.join("policies.old")).unwrap();
    std::fs::rename(dir.join("policies.new"), dir.join("policies")).unwrap();
    proxy
        .wait_metric(RELOADS, &[("result", "ok"), ("trigger", "watch")], 1.0)
        .await;
    assert_eq!(routed_model(1, "swapped").await.as_deref(), Some("o3-mini"));

    // The new directory is the one watched now.
    save_by_rename(
        &dir.join("policies/alias.yaml"),
        &alias_policy("gpt-4o-mini", 100),
    );
    proxy
        .wait_metric(RELOADS, &[("result", "ok"), ("trigger", "watch")], 2.0)
        .await;
    assert_eq!(
        routed_model(2, "edited").await.as_deref(),
        Some("gpt-4o-mini")
    );
}

#[tokio::test]
async fn the_admin_reload_needs_the_token_and_reports_problems() {
    let up = start_sim().await;
    let proxy = aliased_proxy(
        &up,
        "reload: { watch: false }\nadmin: { token_env: TEST_ADMIN_TOKEN }\n",
    )
    .await;

    for token in [None, Some("tg-wrong-token"), Some("")] {
        let (status, body) = post_reload(&proxy, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = post_reload(&proxy, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &body), (200, &json!({"result": "ok"})));

    let policy = proxy.dir.path().join("policies/alias.yaml");
    save_by_rename(&policy, &alias_policy("o3-mini", 0));
    let (status, body) = post_reload(&proxy, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["result"], "refused");
    let problem = zero_cap_problem(&policy);
    assert_eq!(body["problems"], json!([problem]));

    // Longer than the watcher's quiet time: a watched save would have reloaded by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = proxy.metrics().await;
    for (result, count) in [("ok", Some(1.0)), ("refused", Some(1.0))] {
        assert_eq!(
            metric(&m, RELOADS, &[("result", result), ("trigger", "admin")]),
            count,
            "{m}"
        );
    }
    assert!(
        !m.contains("trigger=\"watch\""),
        "with reload.watch off, saving a file reloads nothing:\n{m}"
    );
    assert!(
        !proxy.log().contains(ADMIN_TOKEN),
        "the token is never logged"
    );

    let response = chat(&proxy, "tollgate/alias", "after-refusal").await;
    assert_eq!(response.status(), 200, "the running config stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policies_reloaded_under_load_fail_no_request() {
    const CLIENTS: usize = 8;
    const SAVES: u32 = 10;
    let up = start_sim().await;
    let proxy = Arc::new(aliased_proxy(&up, "").await);
    let policy = proxy.dir.path().join("policies/alias.yaml");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (proxy, stop) = (proxy.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("load-{c}-{}", sent.len());
                    let response = chat(&proxy, "tollgate/alias", &id).await;
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    sent.push((id, status, body));
                }
                sent
            })
        })
        .collect();

    // Each save routes the alias to the other model; the next waits for its reload.
    let started = Instant::now();
    for save in 1..=SAVES {
        let model = if save % 2 == 1 {
            "o3-mini"
        } else {
            "gpt-4o-mini"
        };
        save_by_rename(&policy, &alias_policy(model, 100));
        proxy
            .wait_metric(
                RELOADS,
                &[("result", "ok"), ("trigger", "watch")],
                save as f64,
            )
            .await;
    }
    // Requests under the last rules too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    let failed: Vec<_> = sent
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        sent.len()
    );

    let records = proxy.records(sent.len()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = tollgate::ledger::read_all::<tollgate::record::Record>(&proxy.ledger_dir())
        .unwrap_or(records);
    let mut per_id = std::collections::HashMap::new();
    for r in &records {
        *per_id.entry(r.request_id.as_str()).or_insert(0) += 1;
    }
    for (id, _, _) in &sent {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "records of {id}");
    }
    assert_eq!(records.len(), sent.len(), "no record without its request");
    let models: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(
        models,
        ["gpt-4o-mini", "o3-mini"].into(),
        "the alias switched models as the file was saved"
    );
    eprintln!(
        "{} requests from {CLIENTS} clients over {SAVES} reloads in {elapsed:?}",
        sent.len()
    );
}
