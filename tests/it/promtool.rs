//! The Prometheus alerting rules of `deploy/prometheus/`: valid and passing their unit tests
//! under promtool (installed by `scripts/promtool.sh install`; a missing promtool fails
//! these tests, never skips them), each alert shown firing by some unit test, and every
//! metric they name exported by the real proxy with the labels they group by and print.

use crate::common::*;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RULES: &str = "deploy/prometheus/tollgate-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tollgate-alerts.test.yml";

/// Labels Prometheus adds to every scraped series, so no exported metric carries them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TestFile {
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
struct RuleTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
}

#[derive(Deserialize)]
struct AlertCase {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde::de::IgnoredAny>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn rules() -> Vec<Rule> {
    let file: RuleFile = serde_saphyr::from_str(&read(RULES)).unwrap();
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Runs promtool from the repository root; its output when it fails.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not run ({e}): install it with `scripts/promtool.sh install` \
                 (as root; Debian's prometheus package)"
            )
        });
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_alerting_rules_and_passes_their_unit_tests() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
}

#[test]
fn promtool_unit_tests_show_every_alert_firing() {
    let tests: TestFile = serde_saphyr::from_str(&read(RULE_TESTS)).unwrap();
    let fired: BTreeSet<String> = tests
        .tests
        .into_iter()
        .flat_map(|t| t.alert_rule_test)
        .filter(|case| !case.exp_alerts.is_empty())
        .map(|case| case.alertname)
        .collect();
    let never: Vec<String> = rules()
        .into_iter()
        .map(|r| r.alert)
        .filter(|name| !fired.contains(name))
        .collect();
    assert!(
        never.is_empty(),
        "no unit test shows these firing: {never:?}"
    );
}

/// Each metric's label names, over all its series in a `/metrics` text.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let label = Regex::new(r#"(\w+)=""#).unwrap();
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let names = label.captures_iter(labels).map(|c| c[1].to_string());
        families.entry(name.to_string()).or_default().extend(names);
    }
    families
}

/// What one rule needs of the proxy: the metrics its expression and annotations name, and
/// the labels it matches on, groups by or prints (all of which its metrics carry).
fn needs(rule: &Rule) -> (BTreeSet<String>, BTreeSet<String>) {
    let metric = Regex::new(r"\btollgate_[a-z0-9_]+").unwrap();
    let matchers = Regex::new(r"\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r"(\w+)\s*(?:=~|!~|!=|=)").unwrap();
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let printed = Regex::new(r"\$labels\.(\w+)").unwrap();
    let templates = rule.annotations.values().map(String::as_str);
    let text: Vec<&str> = std::iter::once(rule.expr.as_str())
        .chain(templates)
        .collect();
    let text = text.join("\n");
    let metrics = metric
        .find_iter(&text)
        .map(|m| m.as_str().to_string())
        .collect();
    let mut labels = BTreeSet::new();
    for m in matchers.captures_iter(&rule.expr) {
        labels.extend(matcher.captures_iter(&m[1]).map(|c| c[1].to_string()));
    }
    for g in grouping.captures_iter(&rule.expr) {
        labels.extend(g[1].split(',').map(|l| l.trim().to_string()));
    }
    labels.extend(printed.captures_iter(&text).map(|c| c[1].to_string()));
    labels.retain(|l| !l.is_empty() && !TARGET_LABELS.contains(&l.as_str()));
    (metrics, labels)
}

/// A proxy with every feature the rules watch: two budgets (one blocking the key `KEY`'s
/// team, one only alerting for the open key, its alerts sent to a webhook that answers
/// 404), a rate limit of one request a minute on the open key, the response cache with a
/// Redis tier and records shipped to ClickHouse, both on ports where nothing listens.
async fn proxy_with_everything(up: &Upstream) -> Proxy {
    let nowhere = free_port();
    let extra = format!(
        r#"
budgets:
  - {{name: search-month, scope: {{team: search}}, period: month, amount_usd: "0.000001", action: block}}
  - {{name: open-day, scope: {{key: open}}, period: day, amount_usd: "0.000001", action: alert}}
alerts:
  webhooks:
    - {{name: ops, format: slack, url: "http://{upstream}/no-such-hook"}}
rate_limits:
  - {{name: open-rpm, per: key, rpm: 1, scope: {{key: open}}}}
cache: {{enabled: true, redis: {{url: "redis://127.0.0.1:{nowhere}", timeout_ms: 200}}}}
telemetry:
  clickhouse: {{url: "http://127.0.0.1:{nowhere}", batch_period_ms: 50}}
"#,
        upstream = up.addr
    );
    Proxy::start(&config_for(up.addr, &extra)).await
}

async fn error_code(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body["error"]["code"].clone())
}

#[tokio::test]
async fn every_metric_the_alerting_rules_watch_is_exported_with_their_labels() {
    let rules = rules();
    let up = start_sim().await;
    let proxy = proxy_with_everything(&up).await;
    let ask = json!({"model": "gpt-4o-mini", "max_tokens": 20,
                     "messages": [{"role": "user", "content": "Hi"}]});
    // The events behind the metrics that have no series before them: a refusal by the
    // blocking budget, a served request past the alerting budget (its alerts fail to
    // deliver), and a refusal by the rate limit.
    let path = "/v1/chat/completions";
    let refused = openai(&proxy, path, &[], &ask).await;
    assert_eq!(error_code(refused).await, (429, json!("budget_exceeded")));
    let served = openai_as(&proxy, OPEN_KEY, path, &[], &ask).await;
    assert_eq!(served.status(), 200);
    let _ = served.bytes().await;
    let limited = openai_as(&proxy, OPEN_KEY, path, &[], &ask).await;
    assert_eq!(error_code(limited).await, (429, json!("rate_limited")));

    // Every metric the file names, prose and comments included.
    let named: BTreeSet<String> = Regex::new(r"\btollgate_[a-z0-9_]+")
        .unwrap()
        .find_iter(&read(RULES))
        .map(|m| m.as_str().to_string())
        .collect();
    let mut wanted: BTreeMap<String, BTreeSet<String>> =
        named.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
    for rule in &rules {
        let (metrics, labels) = needs(rule);
        assert!(
            !metrics.is_empty(),
            "{} watches no tollgate metric",
            rule.alert
        );
        for m in metrics {
            wanted.entry(m).or_default().extend(labels.iter().cloned());
        }
    }

    // Alert delivery and the sink's first tries are asynchronous: wait for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proxy.metrics().await;
        let families = exported(&text);
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|(name, labels)| match families.get(name) {
                None => Some(format!("{name} (not exported)")),
                Some(has) => {
                    let lacking: Vec<&String> = labels.difference(has).collect();
                    (!lacking.is_empty()).then(|| format!("{name} (without {lacking:?})"))
                }
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rules watch what the proxy does not export: {missing:?}\n{text}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
