//! The spend page in a real browser: traffic through the proxy and the simulated provider
//! (routed, cascaded, cached, in workflows, with reported outcomes), then the page written
//! by `tollgate report --format html` and the one served on the admin port, each loaded in
//! headless Chromium (`scripts/chromium.sh install`) and read back from the DOM it built.

use crate::common::clickhouse::{ClickHouse, telemetry};
use crate::common::*;
use regex::Regex;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate::money::NanoUsd;
use tollgate::record::{AttemptRecord, Record, Verdict};

const POLICIES: &str = r#"
rules:
  - name: cheap-summaries
    match: {feature: summarize, endpoint: /v1/chat/completions}
    cascade:
      steps:
        - {provider: openai, model: o3-mini}
        - {provider: openai, model: gpt-4o-mini}
      judges: {length: {max_chars: 60}}
  - name: faq-cache
    match: {feature: faq}
    cache: {scope: team, nondeterministic: true}
"#;

/// A team name that would run script if the page did not escape it.
const HOSTILE_TEAM: &str = "<script>alert(1)</script>";

const SECTIONS: [&str; 6] = [
    "trajectory",
    "breakdowns",
    "workflows",
    "levers",
    "outcomes",
    "pricing",
];

/// Sends one chat call; returns its request id once the answer is read.
async fn chat(proxy: &Proxy, key: &str, headers: &[(&str, &str)], prompt: &str) -> String {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 200,
                      "messages": [{"role": "user", "content": prompt}]});
    let resp = openai_as(proxy, key, "/v1/chat/completions", headers, &body).await;
    assert_eq!(resp.status(), 200, "{}", proxy.log());
    let id = request_id(&resp);
    let _ = resp.bytes().await.unwrap();
    id
}

/// The traffic: returns how many requests were sent and the ids reported successful.
async fn send_traffic(proxy: &Proxy) -> (usize, Vec<String>) {
    let mut sent = 0;
    let mut successes = Vec::new();
    // Summaries go through the cascade: short answers pass the cheap step, a long one is
    // rejected and escalates.
    for tokens in ["4", "5", "40"] {
        let headers = [
            ("x-tollgate-feature", "summarize"),
            ("x-sim-output-tokens", tokens),
        ];
        successes.push(chat(proxy, KEY, &headers, &format!("Summarize {tokens}.")).await);
        sent += 1;
    }
    // The same FAQ question twice: the second is a cache hit.
    for _ in 0..2 {
        chat(
            proxy,
            KEY,
            &[("x-tollgate-feature", "faq")],
            "What is a toll?",
        )
        .await;
        sent += 1;
    }
    // A workflow of two calls, reported as a failure below.
    for step in ["plan", "act"] {
        let headers = [
            ("x-tollgate-workflow", "wf-onboard"),
            ("x-tollgate-feature", step),
        ];
        chat(proxy, KEY, &headers, step).await;
        sent += 1;
    }
    // Other teams, named by header on the key that binds none; one of them hostile.
    for (team, model) in [(HOSTILE_TEAM, "gpt-4o-mini"), ("growth", "o3-mini")] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
        let headers = [("x-tollgate-team", team), ("x-tollgate-user", "zoe")];
        let resp = openai_as(proxy, OPEN_KEY, "/v1/chat/completions", &headers, &body).await;
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
        sent += 1;
    }
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let resp = anthropic(
        proxy,
        "/v1/messages",
        &[("x-tollgate-feature", "chat")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    sent += 1;

    let mut reports: Vec<_> = successes
        .iter()
        .map(|id| json!({"request_id": id, "outcome": "success"}))
        .collect();
    reports.push(json!({"workflow_id": "wf-onboard", "outcome": "failure"}));
    let resp = client()
        .post(proxy.url("/tollgate/v1/outcomes"))
        .bearer_auth(KEY)
        .json(&json!({ "outcomes": reports }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    (sent, successes)
}

/// The ledger's attempt records, once the escalated summary's rejected step is among them.
async fn rejected_attempt_on_record(proxy: &Proxy) -> Vec<AttemptRecord> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let attempts: Vec<AttemptRecord> =
            tollgate::ledger::read_all(&proxy.ledger_dir().join("attempts")).unwrap_or_default();
        if attempts.iter().any(|a| a.verdict == Verdict::Rejected) {
            return attempts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rejected attempt recorded: {attempts:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What the page must show, computed from the ledger's records.
struct Expected {
    requests: usize,
    total: NanoUsd,
    by_team: BTreeMap<String, NanoUsd>,
    routing_saved: NanoUsd,
    cache_saved: NanoUsd,
    cache_hits: usize,
    escalations: u64,
    cost_per_success: NanoUsd,
    /// The cost of failed and rejected attempts.
    wasted: NanoUsd,
}

fn expected(records: &[Record], attempts: &[AttemptRecord], successes: &[String]) -> Expected {
    let cost = |r: &Record| r.cost_usd.unwrap_or_default();
    let mut by_team: BTreeMap<String, NanoUsd> = BTreeMap::new();
    for r in records {
        *by_team.entry(r.team.clone()).or_default() += cost(r);
    }
    // Requests with an outcome: the successes by id, and the workflow's by its report.
    let with_outcome: NanoUsd = records
        .iter()
        .filter(|r| successes.contains(&r.request_id) || r.workflow_id == "wf-onboard")
        .map(cost)
        .sum();
    Expected {
        requests: records.len(),
        total: records.iter().map(cost).sum(),
        by_team,
        routing_saved: records
            .iter()
            .filter(|r| !r.policy.is_empty() && !r.cache_hit)
            .filter_map(|r| Some(NanoUsd(r.counterfactual_cost_usd?.0 - r.cost_usd?.0)))
            .sum(),
        cache_saved: records.iter().filter_map(|r| r.saved_cost_usd).sum(),
        cache_hits: records.iter().filter(|r| r.cache_hit).count(),
        escalations: records.iter().map(|r| u64::from(r.escalations)).sum(),
        cost_per_success: NanoUsd(with_outcome.0 / successes.len() as i64),
        wasted: attempts
            .iter()
            .filter(|a| matches!(a.verdict, Verdict::Failed | Verdict::Rejected))
            .filter_map(|a| a.cost_usd)
            .sum(),
    }
}

/// The value of attribute `attr` on the element with `id`.
fn attr_of(dom: &str, id: &str, attr: &str) -> String {
    let re = Regex::new(&format!(r#"<[^>]*\bid="{id}"[^>]*>"#)).unwrap();
    let tag = re
        .find(dom)
        .unwrap_or_else(|| panic!("no element #{id}"))
        .as_str();
    let re = Regex::new(&format!(r#"\b{attr}="([^"]*)""#)).unwrap();
    re.captures(tag)
        .unwrap_or_else(|| panic!("#{id} has no {attr}: {tag}"))[1]
        .to_string()
}

/// The markup of `<section id="…">` up to its end.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section #{id}"));
    let len = dom[start..].find("</section>").unwrap();
    &dom[start..start + len]
}

/// The `data-usd` of each row of table `#table`, by its `data-key`, with the total's.
fn table_usd(dom: &str, table: &str) -> BTreeMap<String, String> {
    let start = dom.find(&format!("id=\"{table}\"")).unwrap();
    let end = start + dom[start..].find("</table>").unwrap();
    let rows =
        Regex::new(r#"<tr(?: data-key="([^"]*)"| class="total")>.*?data-(?:total-)?usd="([^"]*)""#)
            .unwrap();
    rows.captures_iter(&dom[start..end])
        .map(|c| {
            let key = c
                .get(1)
                .map_or("TOTAL".to_string(), |k| unescape(k.as_str()));
            (key, c[2].to_string())
        })
        .collect()
}

/// Attribute text as the DOM serializer escapes it.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Loads `page` in Chromium and checks what it shows against `want`.
fn check_in_browser(page: &Path, want: &Expected) -> String {
    let dom = chromium::dump_dom(page);
    for id in SECTIONS {
        assert!(
            section(&dom, id).contains("<svg"),
            "section #{id} has no chart"
        );
    }
    assert!(
        section(&dom, "trajectory")
            .matches("<rect class=\"col\"")
            .count()
            >= 2 * 31,
        "a column per day of the 30-day range, for spend and for tokens"
    );
    let figures = [
        ("period-total", "data-total-usd", want.total.to_string()),
        (
            "period-requests",
            "data-requests",
            want.requests.to_string(),
        ),
        ("routing-saved", "data-usd", want.routing_saved.to_string()),
        ("cache-saved", "data-usd", want.cache_saved.to_string()),
        ("cache-hits", "data-requests", want.cache_hits.to_string()),
        (
            "escalations",
            "data-escalations",
            want.escalations.to_string(),
        ),
        (
            "cost-per-success",
            "data-usd",
            want.cost_per_success.to_string(),
        ),
    ];
    for (id, attr, value) in figures {
        assert_eq!(attr_of(&dom, id, attr), value, "#{id}");
    }
    let mut by_team: BTreeMap<String, String> = want
        .by_team
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    by_team.insert("TOTAL".into(), want.total.to_string());
    assert_eq!(table_usd(&dom, "by-team"), by_team);
    assert!(
        table_usd(&dom, "by-workflow").contains_key("wf-onboard"),
        "top workflows list the workflow"
    );
    assert_eq!(
        table_usd(&dom, "retry-waste").get("TOTAL"),
        Some(&want.wasted.to_string()),
        "the rejected cascade step is retry waste"
    );
    // The hostile team name is text, not an element; and nothing refers to the network.
    assert!(!dom.contains("<script"), "a script element got in");
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let fetches = Regex::new(r#"\b(?:src|href|action|srcset)\s*="#).unwrap();
    assert!(!fetches.is_match(&dom), "the page refers to a resource");
    assert!(!dom.contains("http:") && !dom.contains("https:"));
    dom
}

/// A proxy in front of `up` with the admin token, the policies above and the cache, and
/// `extra` config. Shipped ledger segments are kept, so with ClickHouse both stores hold
/// every record.
async fn start_proxy(up: &Upstream, extra: &str) -> Proxy {
    let extra = format!(
        "admin: {{ token_env: TEST_ADMIN_TOKEN }}\npolicies: policies\ncache: {{ enabled: true }}\n{extra}"
    );
    let config = config_for(up.addr, &extra).replace(
        "flush_interval_ms: 5",
        "flush_interval_ms: 5\n  shipped_retention_secs: 3600",
    );
    Proxy::start_with(&config, &[("policies/spend.yaml", POLICIES.as_bytes())]).await
}

/// Runs `tollgate report --format html` with `args`; returns the page.
fn report_page(proxy: &Proxy, args: &[&str]) -> String {
    let out = proxy.command(&[&["report", "--format", "html"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every `data-*` value of the page but those of its time range, in document order.
fn figures(page: &str) -> Vec<String> {
    let attr = Regex::new(r#"(?:id="([^"]*)" )?\b(data-[a-z-]+)="([^"]*)""#).unwrap();
    attr.captures_iter(page)
        .filter(|c| !matches!(&c[2], "data-from" | "data-to"))
        // The month-end forecast moves with the second the page was made at.
        .filter(|c| c.get(1).is_none_or(|id| id.as_str() != "forecast"))
        .map(|c| format!("{}={}", &c[2], &c[3]))
        .collect()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn spend_page_from_the_cli_and_the_admin_port_renders_exact_totals_in_a_browser() {
    let up = start_sim().await;
    let proxy = start_proxy(&up, "").await;
    let (sent, successes) = send_traffic(&proxy).await;
    let records = proxy.records(sent).await;
    let attempts = rejected_attempt_on_record(&proxy).await;
    let want = expected(&records, &attempts, &successes);
    assert_eq!(want.requests, sent);
    assert_eq!(want.cache_hits, 1, "{records:#?}");
    assert_eq!(want.escalations, 1, "{records:#?}");
    assert!(want.routing_saved != NanoUsd::ZERO, "{records:#?}");
    assert!(want.wasted > NanoUsd::ZERO, "{attempts:#?}");

    // (a) The file the report command writes.
    let file = proxy.dir.path().join("spend.html");
    let started = std::time::Instant::now();
    let out = proxy.command(&[
        "report",
        "--format",
        "html",
        "--output",
        file.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&file).unwrap();
    eprintln!("report --format html: {} bytes in {took:?}", written.len());
    let file_for_browser = file.clone();
    let want = std::sync::Arc::new(want);
    let w = want.clone();
    tokio::task::spawn_blocking(move || check_in_browser(&file_for_browser, &w))
        .await
        .unwrap();

    // (b) The admin port's page: the token as a query parameter (a browser's way) or a
    // bearer header; nothing without it.
    let page_url = |q: &str| proxy.admin_url(&format!("/{q}"));
    let refused = client().get(page_url("")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = client().get(page_url("?token=nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let bearer = client()
        .get(page_url(""))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let resp = client()
        .get(page_url(&format!("?since=30d&token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let served = resp.text().await.unwrap();
    assert!(
        !proxy.log().contains(ADMIN_TOKEN),
        "the token reached the log"
    );
    let page = proxy.dir.path().join("admin.html");
    std::fs::write(&page, &served).unwrap();
    let png = artifacts().join("spend-page.png");
    let _ = std::fs::remove_file(&png);
    tokio::task::spawn_blocking(move || {
        check_in_browser(&page, &want);
        chromium::screenshot(&page, &png, 2000);
        let shot = std::fs::read(&png).unwrap();
        assert!(
            shot.starts_with(b"\x89PNG\r\n\x1a\n") && shot.len() > 10_000,
            "{} is not a screenshot ({} bytes)",
            png.display(),
            shot.len()
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn spend_page_from_clickhouse_shows_what_the_one_from_the_ledger_shows() {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database("spend_page").await;
    let up = start_sim().await;
    let proxy = start_proxy(&up, &telemetry(&ch.url, &db, "")).await;
    let (sent, _) = send_traffic(&proxy).await;
    proxy.records(sent).await;
    let attempts = rejected_attempt_on_record(&proxy).await;
    for (table, n) in [
        ("requests", sent),
        ("attempts", attempts.len()),
        ("outcomes", 4),
    ] {
        proxy
            .wait_metric("tollgate_sink_shipped_total", &[("table", table)], n as f64)
            .await;
    }
    let from_clickhouse = report_page(&proxy, &[]);
    let from_ledger = report_page(&proxy, &["--ledger"]);
    assert!(from_clickhouse.contains("from ClickHouse"));
    assert!(from_ledger.contains("from the ledger"));
    let figures_ch = figures(&from_clickhouse);
    assert!(
        figures_ch.len() > 100,
        "{} figures: {from_clickhouse}",
        figures_ch.len()
    );
    assert_eq!(figures_ch, figures(&from_ledger));
    // The admin port reads ClickHouse too.
    let served = client()
        .get(proxy.admin_url("/"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(served.contains("from ClickHouse"), "{served}");
    assert_eq!(figures(&served), figures_ch);
}
