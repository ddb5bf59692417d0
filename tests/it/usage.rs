//! The usage endpoints: `GET /tollgate/v1/usage` on the proxy port shows a virtual key its
//! budgets; `GET /budgets` on the admin port shows every budget to the admin token's holder.

use crate::common::*;
use chrono::{DateTime, Datelike, Duration, NaiveTime, Utc};
use serde_json::{Value, json};
use tollgate::money::NanoUsd;

/// Budgets of every kind of scope. `KEY` (team search, project ranking, env prod, owner ana)
/// is held by the first four; `OPEN_KEY` (no bindings) by `everyone` and `open-key`.
/// `search-summaries` needs a feature no key binds; `growth` refuses any request.
const BUDGETS: &str = r#"
admin: { token_env: TEST_ADMIN_TOKEN }
budgets:
  - {name: search-month, scope: {team: search}, period: month, amount_usd: "10", action: block}
  - {name: ranking-day, scope: {project: ranking, env: prod}, period: day, amount_usd: "5", action: alert}
  - {name: ana-week, scope: {user: ana@example.com}, period: week, amount_usd: "3", action: alert}
  - {name: everyone, period: month, amount_usd: "100", action: alert}
  - {name: search-summaries, scope: {team: search, feature: summaries}, period: month, amount_usd: "1", action: block}
  - {name: open-key, scope: {key: open}, period: day, amount_usd: "2", action: alert}
  - {name: growth, scope: {team: growth}, period: month, amount_usd: "0.000001", action: block}
"#;

async fn proxy(up: &Upstream) -> Proxy {
    Proxy::start(&config_for(up.addr, BUDGETS)).await
}

fn chat(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 50,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Makes a chat call with `key` and reads its whole answer: its record is written, and its
/// budgets settled, before the answer's last byte.
async fn call(proxy: &Proxy, key: &str, headers: &[(&str, &str)], prompt: &str) -> u16 {
    let resp = openai_as(proxy, key, "/v1/chat/completions", headers, &chat(prompt)).await;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await.unwrap();
    status
}

/// `GET /tollgate/v1/usage` sent with `request` (its key set by the caller).
async fn usage(request: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn usage_of(proxy: &Proxy, key: &str) -> Value {
    let (status, body) = usage(
        client()
            .get(proxy.url("/tollgate/v1/usage"))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    body
}

fn usd(v: &Value) -> NanoUsd {
    NanoUsd::parse_usd(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap_or_else(|| panic!("not a decimal: {v}"))
}

fn names(budgets: &Value) -> Vec<&str> {
    budgets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect()
}

fn budget<'a>(budgets: &'a Value, name: &str) -> &'a Value {
    budgets
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no budget {name} in {budgets}"))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

/// Checks a budget's money: `spend` as given, nothing reserved, `limit` as configured,
/// `remaining = limit - spend`, and a forecast no lower than the spend.
fn assert_money(b: &Value, spend: NanoUsd, limit: &str) {
    assert_eq!(b["spend"], spend.to_string(), "{b}");
    assert_eq!(usd(&b["reserved"]), NanoUsd::ZERO, "{b}");
    let limit = NanoUsd::parse_usd(limit).unwrap();
    assert_eq!(b["limit"], limit.to_string(), "{b}");
    assert_eq!(usd(&b["remaining"]), NanoUsd(limit.0 - spend.0), "{b}");
    assert!(usd(&b["forecast"]) >= spend, "{b}");
}

/// The period of `period` holding `at`, in UTC (the configs here set no time zone).
fn period_bounds(period: &str, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = at.date_naive();
    let (start, end) = match period {
        "day" => (day, day + Duration::days(1)),
        "week" => {
            let monday = day - Duration::days(day.weekday().num_days_from_monday().into());
            (monday, monday + Duration::days(7))
        }
        _ => {
            let first = day.with_day(1).unwrap();
            (first, (first + Duration::days(32)).with_day(1).unwrap())
        }
    };
    let midnight = |d: chrono::NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
    (midnight(start), midnight(end))
}

fn assert_period(b: &Value, period: &str, as_of: DateTime<Utc>) {
    assert_eq!(b["period"], period, "{b}");
    let (start, end) = period_bounds(period, as_of);
    assert_eq!(time(&b["period_start"]), start, "{b}");
    assert_eq!(time(&b["period_end"]), end, "{b}");
}

/// The summed cost of the records of key `key_name`.
fn cost_of(records: &[tollgate::record::Record], key_name: &str) -> NanoUsd {
    records
        .iter()
        .filter(|r| r.key_name == key_name)
        .map(|r| r.cost_usd.expect("priced"))
        .sum()
}

#[tokio::test]
async fn each_key_sees_the_budgets_holding_it_with_the_spend_its_records_cost() {
    let up = start_sim().await;
    let proxy = proxy(&up).await;
    for prompt in ["Name a bird.", "Name a river.", "Name a mountain range."] {
        assert_eq!(call(&proxy, KEY, &[], prompt).await, 200);
    }
    assert_eq!(call(&proxy, OPEN_KEY, &[], "Name a tree.").await, 200);
    let records = proxy.records(4).await;
    let (search, open) = (cost_of(&records, "search-prod"), cost_of(&records, "open"));
    assert!(search.0 > 0 && open.0 > 0, "{records:#?}");

    let body = usage_of(&proxy, KEY).await;
    assert_eq!(
        body["key"],
        json!({"name": "search-prod", "team": "search", "project": "ranking", "env": "prod",
               "owner": "ana@example.com"})
    );
    let budgets = &body["budgets"];
    // Not `search-summaries`: the key binds no feature. Not `open-key` nor `growth`.
    assert_eq!(
        names(budgets),
        ["search-month", "ranking-day", "ana-week", "everyone"]
    );
    let as_of = time(&body["as_of"]);
    for (name, period, limit, action) in [
        ("search-month", "month", "10", "block"),
        ("ranking-day", "day", "5", "alert"),
        ("ana-week", "week", "3", "alert"),
    ] {
        let b = budget(budgets, name);
        assert_money(b, search, limit);
        assert_period(b, period, as_of);
        assert_eq!(b["action"], action, "{b}");
    }
    // Every key's requests count against `everyone`.
    let everyone = budget(budgets, "everyone");
    assert_money(everyone, search + open, "100");
    assert_period(everyone, "month", as_of);
    assert_eq!(
        budget(budgets, "search-month")["scope"],
        json!({"team": "search"})
    );

    // Attribution headers do not widen what a key sees: they are not read.
    let (status, body) = usage(
        client()
            .get(proxy.url("/tollgate/v1/usage"))
            .header("x-api-key", OPEN_KEY)
            .header("x-tollgate-team", "search"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["key"],
        json!({"name": "open", "team": null, "project": null, "env": null, "owner": null})
    );
    assert_eq!(names(&body["budgets"]), ["everyone", "open-key"]);
    let open_key = budget(&body["budgets"], "open-key");
    assert_money(open_key, open, "2");
    assert_eq!(open_key["scope"], json!({"key": "open"}));
    assert_money(budget(&body["budgets"], "everyone"), search + open, "100");
}

#[tokio::test]
async fn usage_needs_a_virtual_key_and_is_never_recorded_as_a_call() {
    let up = start_sim().await;
    let proxy = proxy(&up).await;
    let url = proxy.url("/tollgate/v1/usage");

    let (status, body) = usage(client().get(&url)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (status, body) = usage(client().get(&url).bearer_auth("tg-not-a-key")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let (status, body) = usage(client().get(&url).header("x-api-key", "tg-not-a-key")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let (status, body) = usage(client().post(&url).bearer_auth(KEY)).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let before = usage_of(&proxy, KEY).await;
    assert_money(
        budget(&before["budgets"], "search-month"),
        NanoUsd::ZERO,
        "10",
    );

    // One call, then usage again: the ledger holds that call's record alone, and the
    // metrics count one request.
    assert_eq!(call(&proxy, KEY, &[], "Name a bird.").await, 200);
    let after = usage_of(&proxy, KEY).await;
    let record = proxy.only_record().await;
    assert_eq!(record.endpoint, "/v1/chat/completions");
    assert_money(
        budget(&after["budgets"], "search-month"),
        record.cost_usd.unwrap(),
        "10",
    );
    let metrics = proxy.metrics().await;
    let requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(requests, 1.0, "{metrics}");
    assert_eq!(up.sim.stats().requests, 1);
}

/// `GET /budgets` on the admin port with `token` as the bearer token, if any.
async fn admin_budgets(proxy: &Proxy, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(proxy.admin_url("/budgets"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn admin_budgets_lists_every_budget_with_its_spend_and_rejections() {
    let up = start_sim().await;
    let proxy = proxy(&up).await;
    assert_eq!(call(&proxy, KEY, &[], "Name a bird.").await, 200);
    assert_eq!(call(&proxy, KEY, &[], "Name a river.").await, 200);
    // `growth` has room for no request: both are refused.
    let growth = [("x-tollgate-team", "growth")];
    assert_eq!(call(&proxy, OPEN_KEY, &growth, "Name a tree.").await, 429);
    assert_eq!(call(&proxy, OPEN_KEY, &growth, "Name a lake.").await, 429);
    let records = proxy.records(4).await;
    let search = cost_of(&records, "search-prod");

    let resp = admin_budgets(&proxy, Some(ADMIN_TOKEN)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let budgets = &body["budgets"];
    assert_eq!(
        names(budgets),
        [
            "search-month",
            "ranking-day",
            "ana-week",
            "everyone",
            "search-summaries",
            "open-key",
            "growth"
        ]
    );
    let as_of = time(&body["as_of"]);
    let search_month = budget(budgets, "search-month");
    assert_money(search_month, search, "10");
    assert_period(search_month, "month", as_of);
    assert_eq!(search_month["scope"], json!({"team": "search"}));
    assert_eq!(search_month["rejections"], 0);
    // Refused requests spend nothing.
    assert_money(budget(budgets, "everyone"), search, "100");
    assert_money(budget(budgets, "search-summaries"), NanoUsd::ZERO, "1");
    assert_eq!(
        budget(budgets, "search-summaries")["scope"],
        json!({"team": "search", "feature": "summaries"})
    );
    let growth = budget(budgets, "growth");
    assert_money(growth, NanoUsd::ZERO, "0.000001");
    assert_eq!(growth["action"], "block");
    assert_eq!(growth["rejections"], 2, "{growth}");
    assert_eq!(body["time_zone"], "UTC");
}

#[tokio::test]
async fn admin_budgets_needs_the_admin_token_and_is_off_without_one() {
    let up = start_sim().await;
    let proxy = proxy(&up).await;
    for token in [None, Some("wrong-token"), Some("")] {
        let resp = admin_budgets(&proxy, token).await;
        assert_eq!(resp.status(), 401, "token {token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("GET /budgets"),
            "{body}"
        );
    }
    // The key of the proxy port opens nothing here.
    assert_eq!(admin_budgets(&proxy, Some(KEY)).await.status(), 401);
    // The other admin endpoints stay open.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let status = client()
            .get(proxy.admin_url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }

    let without = Proxy::start(&config_for(
        up.addr,
        &BUDGETS.replace("admin: { token_env: TEST_ADMIN_TOKEN }", ""),
    ))
    .await;
    let resp = admin_budgets(&without, Some(ADMIN_TOKEN)).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("admin.token_env"),
        "{body}"
    );
}
