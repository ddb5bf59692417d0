use super::render;
use crate::config::Spend;
use crate::money::NanoUsd;
use crate::record::Record;
use crate::report::page::SpendPage;
use crate::report::source::Records;
use chrono::{DateTime, Duration, TimeZone, Utc};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
}

/// A priced request of `team` an hour before [`now`].
fn request(team: &str, model: &str, cost: Option<i64>) -> Record {
    let mut r: Record = serde_json::from_value(serde_json::json!({
        "ts": "2026-11-20T11:00:00.000Z", "request_id": format!("{team}-{model}"),
        "team": team, "project": "web", "env": "prod", "user": "u", "feature": "chat",
        "workflow_id": "", "tags": {}, "key_name": "k", "provider": "openai",
        "endpoint": "/v1/chat/completions", "requested_model": model, "model": model,
        "stream": false, "status": 200, "input_tokens": 10, "output_tokens": 5,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "usage_source": "reported", "cost_usd": null, "latency_ms": 3, "ttfb_ms": 2,
        "error": null
    }))
    .unwrap();
    r.cost_usd = cost.map(NanoUsd);
    r
}

fn page(requests: Vec<Record>) -> String {
    let records = Records {
        requests,
        ..Records::default()
    };
    let page = SpendPage::build(
        &records,
        now() - Duration::days(30),
        now(),
        &Spend::default(),
        "the ledger",
    );
    render(&page)
}

/// The text between `marker` and the next `<`.
fn text_after<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"))
        + marker.len();
    let rest = &html[at..];
    &rest[..rest.find('<').unwrap()]
}

#[test]
fn user_strings_are_escaped_and_the_page_fetches_nothing() {
    let html = page(vec![
        request("<script>alert(1)</script>", "m\"onload=\"x", Some(5)),
        request("ok", "<img src=x>", Some(7)),
    ]);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("\"onload"), "{html}");
    assert!(
        html.contains("data-key=\"&lt;script&gt;alert(1)&lt;/script&gt;\">"),
        "{html}"
    );
    assert!(
        html.contains(">&lt;script&gt;alert(1)&lt;/script&gt;</span></td>"),
        "{html}"
    );
    assert!(html.contains("&lt;img src=x&gt;"), "{html}");
    // Nothing to load: no address, no script, and a policy that forbids fetching anyway.
    assert!(!html.contains("http:") && !html.contains("https:") && !html.contains("//"));
    assert!(html.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
}

#[test]
fn money_is_summed_as_integers_and_shown_exactly() {
    // 0.1 + 0.2 in floating point is 0.30000000000000004; in nano-USD it is exact.
    let html = page(vec![
        request("a", "m1", Some(100_000_000)),
        request("a", "m2", Some(200_000_000)),
        request("b", "m1", Some(1)),
        request("b", "unpriced", None),
    ]);
    assert_eq!(
        text_after(&html, "id=\"period-total\" data-total-usd=\"0.300000001\">"),
        "$0.300000001"
    );
    assert!(
        html.contains("<tr data-key=\"a\"><td class=\"key\"><span title=\"a\">a</span></td>"),
        "{html}"
    );
    let by_team = &html[html.find("id=\"by-team\"").unwrap()..];
    assert_eq!(text_after(by_team, "data-usd=\"0.300000000\">"), "$0.30");
    assert_eq!(
        text_after(by_team, "data-usd=\"0.000000001\">"),
        "$0.000000001"
    );
    assert_eq!(
        text_after(by_team, "data-total-usd=\"0.300000001\">"),
        "$0.300000001"
    );
    assert_eq!(
        text_after(&html, "id=\"unpriced-requests\" data-requests=\"1\">"),
        "1"
    );
    // Every day of the window has a column; the records' day holds the spend.
    assert_eq!(html.matches("<rect class=\"col\"").count(), 2 * 31);
    assert!(html.contains(
        "data-date=\"2026-11-20\" data-usd=\"0.300000001\" data-tokens=\"60\" data-requests=\"4\""
    ));
}

#[test]
fn a_window_with_no_requests_says_there_is_no_data() {
    let html = page(Vec::new());
    assert!(html.contains("id=\"no-data\""), "{html}");
    assert!(html.contains("no spend to show"), "{html}");
    assert!(!html.contains("<svg"), "{html}");
    assert!(!html.contains("id=\"trajectory\""), "{html}");
}

#[test]
fn the_forecast_needs_the_window_to_start_by_the_first_of_the_month() {
    let records = Records {
        requests: vec![request("a", "m", Some(1_000_000_000))],
        ..Records::default()
    };
    let build = |days| {
        render(&SpendPage::build(
            &records,
            now() - Duration::days(days),
            now(),
            &Spend::default(),
            "the ledger",
        ))
    };
    let html = build(30);
    assert_eq!(
        text_after(&html, "id=\"month-to-date\" data-usd=\"1.000000000\">"),
        "$1.00"
    );
    assert!(html.contains("id=\"forecast\""), "{html}");
    let html = build(7);
    assert!(html.contains("id=\"no-forecast\""), "{html}");
    assert!(!html.contains("id=\"forecast\""), "{html}");
}
