//! The Grafana dashboards of `dashboards/`, proven without Grafana: a known dataset goes into
//! the real ClickHouse (the hourly rollup filled by its materialized view), every panel's SQL
//! is expanded the way the ClickHouse plugin expands it, run, and its numbers compared with
//! the same figures computed here from the dataset; once with every variable on "All" and
//! once with a team and two models picked. The JSON itself is checked for what Grafana needs.

use crate::common::clickhouse::ClickHouse;
use crate::common::grafana::{self, CLICKHOUSE, Selection};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DAY: i64 = 86_400;
/// 2026-10-01 00:00:00 UTC: the dataset's first day.
const START: i64 = 1_790_812_800;
/// The dashboards' time range: 2026-11-01 00:00 to 2026-11-20 12:00 UTC. No request falls in
/// the hour after `TO`, so the hourly rollup and the raw rows cover the same requests.
const FROM: i64 = START + 31 * DAY;
const TO: i64 = FROM + 19 * DAY + 12 * 3600;
/// Days of data: October, November up to the 21st (the last day lies past the range).
const DAYS: i64 = 52;

/// One request of the dataset.
#[derive(Clone, Debug)]
struct Req {
    ts: i64,
    team: &'static str,
    project: &'static str,
    env: &'static str,
    model: &'static str,
    provider: &'static str,
    user: &'static str,
    feature: &'static str,
    workflow_id: String,
    usage_source: &'static str,
    /// nano-USD; `None` for the unpriced model.
    cost: Option<i64>,
    input_tokens: u64,
    output_tokens: u64,
    status: u16,
    /// The routing policy that handled it, `""` for none.
    policy: &'static str,
    /// What the answer would have cost on the requested model (nano-USD).
    counterfactual: Option<i64>,
    /// Answered from the response cache (no upstream call, no cost), saving `saved`.
    cache_hit: bool,
    saved: Option<i64>,
    /// Upstream calls of a routed request, in order.
    attempts: Vec<Attempt>,
}

/// One upstream call of a routed request.
#[derive(Clone, Debug)]
struct Attempt {
    role: &'static str,
    model: &'static str,
    provider: &'static str,
    verdict: &'static str,
    judge: &'static str,
    cost: i64,
    input_tokens: u64,
    output_tokens: u64,
}

/// Six kinds of request a day: two teams, three models (one without a price), estimated
/// usage, failures and workflows, with costs that vary by day.
fn dataset() -> Vec<Req> {
    let mut out = Vec::new();
    for d in 0..DAYS {
        for k in 0..6i64 {
            // Billing's extraction runs every other day only: some days have no spend.
            if k == 2 && d % 2 == 1 {
                continue;
            }
            let (team, project, env, model, provider, user, feature) = match k {
                0 => (
                    "search",
                    "ranking",
                    "prod",
                    "gpt-4o-mini",
                    "openai",
                    "alice",
                    "rank",
                ),
                1 => (
                    "search",
                    "ranking",
                    "prod",
                    "claude-x",
                    "anthropic",
                    "bob",
                    "summarize",
                ),
                2 => (
                    "billing",
                    "invoices",
                    "prod",
                    "gpt-4o-mini",
                    "openai",
                    "carol",
                    "extract",
                ),
                3 => (
                    "billing",
                    "invoices",
                    "staging",
                    "local-llm",
                    "local",
                    "carol",
                    "extract",
                ),
                4 => (
                    "search",
                    "ranking",
                    "staging",
                    "claude-x",
                    "anthropic",
                    "alice",
                    "rank",
                ),
                _ => (
                    "billing",
                    "invoices",
                    "prod",
                    "claude-x",
                    "anthropic",
                    "dave",
                    "chat",
                ),
            };
            let workflow_id = match k {
                0 => format!("wf-s{}", d % 4),
                2 => format!("wf-b{}", d % 3),
                _ => String::new(),
            };
            let price = (k + 1) * 1_000_000 * (1 + d % 7) + 123 * k;
            let (input, output) = ((100 * (k + 1) + d) as u64, (10 * (k + 1) + d) as u64);
            // Billing's chat is answered from the cache every other day.
            let cache_hit = k == 5 && d % 2 == 0;
            let call = |role, model, provider, verdict, judge, cost| Attempt {
                role,
                model,
                provider,
                verdict,
                judge,
                cost,
                input_tokens: input,
                output_tokens: output,
            };
            let attempts = match k {
                // The cascade tries the cheap model first; judges reject it two days in
                // three (`length` on even days, `quality` on odd ones), escalating.
                1 if d % 3 == 0 => vec![call(
                    "primary",
                    "gpt-4o-mini",
                    "openai",
                    "accepted",
                    "",
                    price,
                )],
                1 => vec![
                    call(
                        "primary",
                        "gpt-4o-mini",
                        "openai",
                        "rejected",
                        if d % 2 == 0 { "length" } else { "quality" },
                        price / 4,
                    ),
                    call(
                        "escalation",
                        "claude-x",
                        "anthropic",
                        "served",
                        "",
                        price - price / 4,
                    ),
                ],
                // The failing requests made one failed call that spent tokens.
                4 => vec![call(
                    "primary",
                    "claude-x",
                    "anthropic",
                    "failed",
                    "",
                    price,
                )],
                _ => Vec::new(),
            };
            out.push(Req {
                ts: START + d * DAY + ((k * 3 + d) % 12) * 3600 + k * 7 * 60,
                team,
                project,
                env,
                model,
                provider,
                user,
                feature,
                workflow_id,
                usage_source: match k {
                    1 => "estimated",
                    3 => "none",
                    _ => "reported",
                },
                cost: (k != 3).then_some(if cache_hit { 0 } else { price }),
                input_tokens: if cache_hit { 0 } else { input },
                output_tokens: if cache_hit { 0 } else { output },
                status: if k == 4 { 500 } else { 200 },
                policy: match k {
                    0 => "cheap-first",
                    1 => "cascade",
                    _ => "",
                },
                // The cheap-first policy serves at a third of the requested model's price;
                // every fifth day the requested model has no price.
                counterfactual: (k == 0 && d % 5 != 0).then_some(price * 3),
                cache_hit,
                saved: (cache_hit && d % 4 != 0).then_some(price),
                attempts,
            });
        }
    }
    out
}

/// One outcome report.
struct Report {
    ts: i64,
    id: String,
    team: &'static str,
    request_id: String,
    workflow_id: String,
    outcome: &'static str,
}

/// Outcome reports on the dataset: search's workflows (one re-reported from failure to
/// success, one the other way), some of their requests failing on their own, every other
/// day's summaries by request, billing's first workflows (one reported long ago), and
/// reports by billing's key on search requests, which label nothing.
fn outcomes(reqs: &[Req]) -> Vec<Report> {
    let report = |ts, team, request_id: String, workflow_id: &str, outcome| Report {
        ts,
        id: format!("{ts}-{request_id}-{workflow_id}"),
        team,
        request_id,
        workflow_id: workflow_id.to_string(),
        outcome,
    };
    let mut out = vec![
        report(FROM + DAY, "search", String::new(), "wf-s0", "success"),
        report(FROM + DAY, "search", String::new(), "wf-s1", "success"),
        report(FROM + DAY, "search", String::new(), "wf-s2", "failure"),
        report(FROM + 2 * DAY, "search", String::new(), "wf-s2", "success"),
        report(FROM + DAY, "search", String::new(), "wf-s3", "success"),
        report(FROM + 2 * DAY, "search", String::new(), "wf-s3", "failure"),
        report(FROM + DAY, "billing", String::new(), "wf-b0", "success"),
        // Reports of any age count, like the report's.
        report(START, "billing", String::new(), "wf-b1", "success"),
    ];
    for (i, r) in reqs.iter().enumerate() {
        if r.feature == "summarize" && (r.ts / DAY) % 2 == 0 {
            out.push(report(
                r.ts + 3600,
                "search",
                format!("req-{i}"),
                "",
                "success",
            ));
        }
        // A request's own outcome overrides its workflow's.
        if !r.workflow_id.is_empty() && r.team == "search" && (r.ts / DAY) % 6 == 1 {
            out.push(report(
                r.ts + 3600,
                "search",
                format!("req-{i}"),
                "",
                "failure",
            ));
        }
        if r.feature == "rank" && r.env == "prod" && (r.ts / DAY) % 3 == 0 {
            out.push(report(
                r.ts + 3600,
                "billing",
                format!("req-{i}"),
                "",
                "success",
            ));
        }
    }
    out
}

fn usd(nano: i64) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

fn datetime(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A fresh database with Tollgate's schema (every migration, as `tollgate migrate` applies
/// them) and the dataset in `requests`; a client whose queries default to it and answer
/// Decimals and 64-bit integers as exact strings.
async fn database(test: &str, reqs: &[Req]) -> ClickHouse {
    let ch = ClickHouse::shared().await;
    let db = ch.fresh_database(test).await;
    let settings = tollgate::config::ClickHouseSettings {
        url: ch.url.clone(),
        database: db.clone(),
        user: "default".into(),
        password: None,
        ca_pem: None,
        batch_max_rows: 1,
        batch_period: Duration::from_secs(1),
        timeout: Duration::from_secs(60),
        ttl_days: None,
        rollup_ttl_days: None,
        cluster: None,
        migrate_on_start: false,
    };
    for (_, sql) in tollgate::sink::clickhouse::migrate::plan(&settings, None) {
        ch.exec(&sql).await;
    }
    let rows: Vec<String> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            serde_json::json!({
                "ts": format!("{}.000", datetime(r.ts)),
                "request_id": format!("req-{i}"),
                "team": r.team, "project": r.project, "env": r.env,
                "user": r.user, "feature": r.feature, "workflow_id": r.workflow_id,
                "provider": r.provider, "endpoint": "chat", "requested_model": r.model,
                "model": r.model, "status": r.status,
                "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                "usage_source": r.usage_source,
                "cost_usd": r.cost.map(usd),
                "latency_ms": 100,
                "error": (r.status >= 400).then_some("upstream 500"),
                "policy": r.policy,
                "attempts": r.attempts.len().max(1),
                "counterfactual_cost_usd": r.counterfactual.map(usd),
                "cache_hit": r.cache_hit,
                "saved_cost_usd": r.saved.map(usd),
            })
            .to_string()
        })
        .collect();
    insert(&ch, &format!("{db}.requests"), &rows).await;
    let attempts: Vec<String> = reqs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.attempts.iter().enumerate().map(move |(n, a)| {
                serde_json::json!({
                    "ts": format!("{}.000", datetime(r.ts)),
                    "request_id": format!("req-{i}"),
                    "attempt": n + 1,
                    "role": a.role, "provider": a.provider, "model": a.model,
                    "status": if a.verdict == "failed" { 500 } else { 200 },
                    "input_tokens": a.input_tokens, "output_tokens": a.output_tokens,
                    "cost_usd": usd(a.cost),
                    "latency_ms": 50,
                    "policy": r.policy, "verdict": a.verdict, "judge": a.judge,
                    "team": r.team, "project": r.project, "env": r.env,
                    "user": r.user, "feature": r.feature,
                })
                .to_string()
            })
        })
        .collect();
    insert(&ch, &format!("{db}.attempts"), &attempts).await;
    let outcomes: Vec<String> = outcomes(reqs)
        .iter()
        .map(|o| {
            serde_json::json!({
                "ts": format!("{}.000", datetime(o.ts)),
                "id": o.id, "team": o.team, "request_id": o.request_id,
                "workflow_id": o.workflow_id, "outcome": o.outcome, "key_name": "reporter",
            })
            .to_string()
        })
        .collect();
    insert(&ch, &format!("{db}.outcomes"), &outcomes).await;
    ClickHouse::new(format!(
        "{}/?database={db}&output_format_json_quote_decimals=1",
        ch.url
    ))
}

/// Inserts JSON rows (Decimals written as numbers, read exactly) into `table`.
async fn insert(ch: &ClickHouse, table: &str, rows: &[String]) {
    ch.exec(&format!(
        "INSERT INTO {table} SETTINGS input_format_json_read_numbers_as_strings = 1 \
         FORMAT JSONEachRow\n{}",
        rows.join("\n")
    ))
    .await;
}

/// A number ClickHouse answered, as a string (Decimal, 64-bit integer) or a JSON number.
fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|e| panic!("{s}: {e}")),
        Value::Number(n) => n.as_f64().unwrap(),
        other => panic!("not a number: {other}"),
    }
}

/// An exact Decimal(38, 9) answered as a string, in nano-USD.
fn nano(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("Decimal not as a string: {v}"));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    let sign = if int.starts_with('-') { -1 } else { 1 };
    int.parse::<i64>().unwrap() * 1_000_000_000 + sign * frac.parse::<i64>().unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// A dashboard's variables' values from their own queries, and the two selections every
/// panel is run under: everything on "All"; team `search` with two models picked (one it
/// never used); env `staging` alone.
async fn selections(ch: &ClickHouse, dashboard: &Value) -> Vec<Selection> {
    let mut all = BTreeMap::new();
    for (name, var) in grafana::variables(dashboard) {
        if var["type"] == "query" && var["datasource"]["type"] == CLICKHOUSE {
            let none = Selection {
                from: FROM,
                to: TO,
                interval_s: 3600,
                picked: BTreeMap::new(),
                all: BTreeMap::new(),
            };
            let sql = grafana::expand(var["query"].as_str().unwrap(), &none);
            let values: Vec<String> = ch
                .rows(&sql)
                .await
                .iter()
                .map(|r| r[&name].as_str().unwrap().to_string())
                .collect();
            all.insert(name, values);
        }
    }
    let pick = |picks: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        picks
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    let mut picks = [
        BTreeMap::new(),
        pick(&[("team", &["search"]), ("model", &["claude-x", "local-llm"])]),
        pick(&[("env", &["staging"])]),
    ];
    // A variable without "All" keeps its saved selection.
    for (name, var) in grafana::variables(dashboard) {
        if var["type"] == "query" && var["includeAll"] == false {
            let current: Vec<String> = serde_json::from_value(var["current"]["value"].clone())
                .unwrap_or_else(|e| panic!("${name}: current value: {e}"));
            for p in &mut picks {
                p.insert(name.clone(), current.clone());
            }
        }
    }
    for picked in &picks {
        for (var, values) in picked {
            for v in values {
                assert!(
                    all[var].contains(v),
                    "${var} does not offer {v}: {:?}",
                    all[var]
                );
            }
        }
    }
    picks
        .into_iter()
        .map(|picked| Selection {
            from: FROM,
            to: TO,
            interval_s: 3600,
            picked,
            all: all.clone(),
        })
        .collect()
}

/// The dataset's requests a selection shows: in the time range (or from `since` on) and
/// matching every picked variable.
fn shown<'a>(reqs: &'a [Req], sel: &Selection, since: i64) -> Vec<&'a Req> {
    let ok = |var: &str, v: &str| sel.picked.get(var).is_none_or(|p| p.iter().any(|x| x == v));
    reqs.iter()
        .filter(|r| r.ts >= since && r.ts <= TO)
        .filter(|r| {
            ok("team", r.team)
                && ok("project", r.project)
                && ok("env", r.env)
                && ok("model", r.model)
        })
        .collect()
}

/// The attempts a selection shows: of requests in the time range, matching team, project
/// and env, on a picked model (the attempt's own).
fn shown_attempts<'a>(reqs: &'a [Req], sel: &Selection) -> Vec<&'a Attempt> {
    let ok = |var: &str, v: &str| sel.picked.get(var).is_none_or(|p| p.iter().any(|x| x == v));
    reqs.iter()
        .filter(|r| r.ts >= FROM && r.ts <= TO)
        .filter(|r| ok("team", r.team) && ok("project", r.project) && ok("env", r.env))
        .flat_map(|r| &r.attempts)
        .filter(|a| ok("model", a.model))
        .collect()
}

/// Sum of priced cost, request count and unpriced count per key.
fn by<'a>(reqs: &[&'a Req], key: impl Fn(&'a Req) -> String) -> BTreeMap<String, (i64, u64, u64)> {
    let mut out = BTreeMap::<String, (i64, u64, u64)>::new();
    for r in reqs {
        let e = out.entry(key(r)).or_default();
        e.0 += r.cost.unwrap_or(0);
        e.1 += 1;
        e.2 += u64::from(r.cost.is_none());
    }
    out
}

fn day_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(DAY)
}

/// Loads the dataset into a fresh database and runs every panel of `file` under each
/// selection; `check` gets the panel's title, its rows, the selection, the whole dataset and
/// the requests the selection shows in the time range. It asserts the rows of the panels it
/// knows by title and returns false for a title it does not know, which fails the test.
async fn prove(file: &str, check: impl Fn(&str, &[Value], &Selection, &[Req], &[&Req]) -> bool) {
    let reqs = dataset();
    let ch = &database(
        &format!("dashboards_{}", file.trim_end_matches(".json")),
        &reqs,
    )
    .await;
    let dashboard = grafana::load(file);
    let mut answered = BTreeSet::new();
    for sel in selections(ch, &dashboard).await {
        for panel in grafana::panels(&dashboard) {
            let title = panel["title"].as_str().unwrap();
            for target in panel["targets"].as_array().unwrap() {
                let sql = grafana::expand(target["rawSql"].as_str().unwrap(), &sel);
                let rows = ch.rows(&sql).await;
                if !rows.is_empty() {
                    answered.insert(title);
                }
                assert!(
                    check(title, &rows, &sel, &reqs, &shown(&reqs, &sel, FROM)),
                    "{file}: panel {title:?} has no check"
                );
            }
        }
    }
    // A check of no rows proves little: each panel shows data under some selection.
    for panel in grafana::panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            answered.contains(title),
            "{file}: panel {title:?} never had rows"
        );
    }
}

#[tokio::test]
async fn trajectory_panels_show_the_datasets_daily_spend_trend_and_month_to_date() {
    prove("trajectory.json", |title, rows, sel, reqs, inrange| {
        let per_day = |rs: &[&Req]| {
            let mut m = BTreeMap::<i64, (i64, u64, u64)>::new();
            for r in rs {
                let e = m.entry(day_of(r.ts)).or_default();
                e.0 += r.cost.unwrap_or(0);
                e.1 += r.input_tokens;
                e.2 += r.output_tokens;
            }
            m
        };
        match title {
            "Daily spend" | "Daily tokens" => {
                let want = per_day(inrange);
                let got: BTreeSet<String> = rows
                    .iter()
                    .map(|r| r["time"].as_str().unwrap().to_string())
                    .collect();
                let days: BTreeSet<String> = want.keys().map(|d| datetime(*d)).collect();
                assert_eq!(got, days, "{title}: days");
                for r in rows {
                    let day = want
                        .iter()
                        .find(|(d, _)| datetime(**d) == r["time"])
                        .unwrap()
                        .1;
                    if title == "Daily spend" {
                        assert_eq!(nano(&r["spend_usd"]), day.0, "{title} {}", r["time"]);
                    } else {
                        assert_eq!(num(&r["input_tokens"]), day.1 as f64);
                        assert_eq!(num(&r["output_tokens"]), day.2 as f64);
                    }
                }
                true
            }
            "Spend trend: 7- and 30-day moving daily average" => {
                let all = per_day(&shown(reqs, sel, FROM - 29 * DAY));
                let trailing = |day: i64, n: i64| {
                    all.range(day - (n - 1) * DAY..=day)
                        .map(|(_, v)| v.0)
                        .sum::<i64>() as f64
                        / n as f64
                        / 1e9
                };
                let days: Vec<i64> = all.keys().copied().filter(|d| *d >= FROM).collect();
                assert_eq!(
                    rows.len(),
                    days.len(),
                    "{title}: one row per day with spend"
                );
                for (r, day) in rows.iter().zip(days) {
                    assert_eq!(r["time"], datetime(day));
                    assert_eq!(nano(&r["spend_usd"]), all[&day].0);
                    close(num(&r["trend_7d_usd"]), trailing(day, 7), "7-day trend");
                    close(num(&r["trend_30d_usd"]), trailing(day, 30), "30-day trend");
                }
                true
            }
            "Month to date" => {
                // The range ends in November, so month to date starts on November 1st.
                let mtd = inrange;
                let [row] = rows else {
                    panic!("{title}: {rows:?}")
                };
                assert_eq!(
                    nano(&row["month_to_date_usd"]),
                    mtd.iter().filter_map(|r| r.cost).sum::<i64>()
                );
                assert_eq!(
                    num(&row["unpriced_requests"]),
                    mtd.iter().filter(|r| r.cost.is_none()).count() as f64
                );
                true
            }
            "Month to date by team" => {
                let want = by(inrange, |r| r.team.to_string());
                assert_eq!(rows.len(), want.len());
                for r in rows {
                    let team = r["team"].as_str().unwrap();
                    assert_eq!(nano(&r["month_to_date_usd"]), want[team].0, "{team}");
                }
                true
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn breakdown_panels_split_the_datasets_spend_by_every_attribution() {
    prove("breakdown.json", |title, rows, _, _, inrange| {
        type Key = fn(&Req) -> String;
        let dim: Option<(&str, Key)> = match title {
            "Spend by team" => Some(("team", |r| r.team.into())),
            "Spend by project" => Some(("project", |r| r.project.into())),
            "Spend by env" => Some(("env", |r| r.env.into())),
            "Spend by model" => Some(("model", |r| r.model.into())),
            "Spend by provider" => Some(("provider", |r| r.provider.into())),
            "Spend by user" => Some(("user", |r| r.user.into())),
            "Spend by feature" => Some(("feature", |r| r.feature.into())),
            _ => None,
        };
        if let Some((col, key)) = dim {
            let want = by(inrange, key);
            let got: BTreeMap<String, (i64, u64, u64)> = rows
                .iter()
                .map(|r| {
                    (
                        r[col].as_str().unwrap().to_string(),
                        (
                            nano(&r["spend_usd"]),
                            num(&r["requests"]) as u64,
                            num(&r["unpriced_requests"]) as u64,
                        ),
                    )
                })
                .collect();
            assert_eq!(got, want, "{title}");
            // Largest spender first.
            let spends: Vec<i64> = rows.iter().map(|r| nano(&r["spend_usd"])).collect();
            assert!(
                spends.windows(2).all(|w| w[0] >= w[1]),
                "{title}: order {spends:?}"
            );
            return true;
        }
        match title {
            "Top workflows" => {
                let with_workflow: Vec<&Req> = inrange
                    .iter()
                    .copied()
                    .filter(|r| !r.workflow_id.is_empty())
                    .collect();
                let want = by(&with_workflow, |r| r.workflow_id.clone());
                let got: BTreeMap<String, (i64, u64, u64)> = rows
                    .iter()
                    .map(|r| {
                        let id = r["workflow_id"].as_str().unwrap().to_string();
                        let unpriced = want.get(&id).map_or(0, |w| w.2);
                        (
                            id,
                            (nano(&r["spend_usd"]), num(&r["requests"]) as u64, unpriced),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{title}");
                true
            }
            "Estimated and unpriced share" => {
                let [row] = rows else {
                    panic!("{title}: {rows:?}")
                };
                let total: i64 = inrange.iter().filter_map(|r| r.cost).sum();
                let estimated: i64 = inrange
                    .iter()
                    .filter(|r| r.usage_source == "estimated")
                    .filter_map(|r| r.cost)
                    .sum();
                let unpriced = inrange.iter().filter(|r| r.cost.is_none()).count();
                close(
                    num(&row["estimated_cost_share"]),
                    estimated as f64 / total as f64,
                    "estimated share",
                );
                close(
                    num(&row["unpriced_request_share"]),
                    unpriced as f64 / inrange.len() as f64,
                    "unpriced share",
                );
                true
            }
            _ => false,
        }
    })
    .await;
}

/// Every dashboard file parses, and holds what Grafana needs to import it and what a user
/// needs to point it at their own data sources.
#[test]
fn every_dashboard_is_well_formed_for_grafana() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "dashboards: {files:?}");
    let reference = regex::Regex::new(r"\$\{?(\w+)").unwrap();
    let mut uids = BTreeSet::new();
    for file in &files {
        let d = grafana::load(file);
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion"
        );
        let vars = grafana::variables(&d);
        // Data sources are picked by the user: every reference goes through a variable of
        // type `datasource` of the same plugin.
        let check_ds = |what: &str, ds: &Value| {
            let name = ds["uid"]
                .as_str()
                .and_then(|u| u.strip_prefix("${"))
                .and_then(|u| u.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{file}: {what}: data source {ds} not a variable"));
            let var = vars
                .get(name)
                .unwrap_or_else(|| panic!("{file}: {what}: no ${name}"));
            assert_eq!(var["type"], "datasource", "{file}: ${name}");
            assert_eq!(var["query"], ds["type"], "{file}: {what}: ${name}'s plugin");
        };
        for (name, var) in &vars {
            if var["type"] == "query" {
                check_ds(&format!("variable {name}"), &var["datasource"]);
            }
        }
        let mut ids = BTreeSet::new();
        let mut placed: Vec<(String, [i64; 4])> = Vec::new();
        for p in grafana::panels(&d) {
            let title = p["title"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: untitled panel"));
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: {title}: no id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            assert!(p["type"].as_str().is_some(), "{file}: {title}: no type");
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap());
            assert!(
                x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{file}: {title}: {g}"
            );
            for (other, [ox, oy, ow, oh]) in &placed {
                let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
                assert!(apart, "{file}: {title} overlaps {other}");
            }
            placed.push((title.to_string(), [x, y, w, h]));
            check_ds(title, &p["datasource"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title}: no query");
            for t in targets {
                check_ds(title, &t["datasource"]);
                if t["datasource"]["type"] == CLICKHOUSE {
                    // The plugin's raw SQL editor, as a table or a time series.
                    assert_eq!(t["editorType"], "sql", "{file}: {title}");
                    let kind = t["queryType"].as_str().unwrap_or_default();
                    assert!(
                        ["table", "timeSeries"].contains(&kind),
                        "{file}: {title}: {kind}"
                    );
                }
                let query = t["rawSql"].as_str().or(t["expr"].as_str()).unwrap();
                for c in reference.captures_iter(query) {
                    let name = &c[1];
                    assert!(
                        name.starts_with("__") || vars.contains_key(name),
                        "{file}: {title}: ${name} is not a variable"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn levers_panels_show_what_routing_judges_and_the_cache_did_in_the_dataset() {
    prove("levers.json", |title, rows, sel, reqs, inrange| {
        let routed: Vec<&Req> = inrange
            .iter()
            .copied()
            .filter(|r| !r.policy.is_empty())
            .collect();
        let saving = |r: &Req| r.counterfactual.zip(r.cost).map_or(0, |(cf, c)| cf - c);
        let graded: Vec<&Attempt> = shown_attempts(reqs, sel)
            .into_iter()
            .filter(|a| a.verdict == "accepted" || a.verdict == "rejected")
            .collect();
        let count = |f: &dyn Fn(&Attempt) -> bool| graded.iter().filter(|a| f(a)).count() as f64;
        match title {
            "Routing savings" => {
                let [row] = rows else {
                    panic!("{title}: {rows:?}")
                };
                assert_eq!(
                    nano(&row["saved_usd"]),
                    routed.iter().map(|r| saving(r)).sum::<i64>()
                );
                assert_eq!(num(&row["routed_requests"]), routed.len() as f64);
                let unvalued = routed.iter().filter(|r| r.counterfactual.is_none()).count();
                assert_eq!(num(&row["routed_without_a_price"]), unvalued as f64);
                true
            }
            "Routing savings by policy" => {
                let mut want = BTreeMap::<String, (i64, i64, u64)>::new();
                for r in &routed {
                    let e = want.entry(r.policy.to_string()).or_default();
                    e.0 += saving(r);
                    e.1 += r.cost.unwrap_or(0);
                    e.2 += 1;
                }
                let got: BTreeMap<String, (i64, i64, u64)> = rows
                    .iter()
                    .map(|r| {
                        let policy = r["policy"].as_str().unwrap().to_string();
                        let v = (
                            nano(&r["saved_usd"]),
                            nano(&r["spend_usd"]),
                            num(&r["routed_requests"]) as u64,
                        );
                        (policy, v)
                    })
                    .collect();
                assert_eq!(got, want, "{title}");
                true
            }
            "Escalation rate by model" => {
                let models: BTreeSet<&str> = graded.iter().map(|a| a.model).collect();
                assert_eq!(rows.len(), models.len(), "{title}: {rows:?}");
                for r in rows {
                    let model = r["model"].as_str().unwrap();
                    let all = count(&|a| a.model == model);
                    let rejected = count(&|a| a.model == model && a.verdict == "rejected");
                    assert_eq!(num(&r["graded_answers"]), all, "{model}");
                    assert_eq!(num(&r["rejected"]), rejected, "{model}");
                    close(num(&r["escalation_rate"]), rejected / all, model);
                }
                true
            }
            "Escalations by judge and model" => {
                let pairs: BTreeSet<(&str, &str)> = graded
                    .iter()
                    .filter(|a| a.verdict == "rejected")
                    .map(|a| (a.judge, a.model))
                    .collect();
                assert_eq!(rows.len(), pairs.len(), "{title}: {rows:?}");
                for r in rows {
                    let (judge, model) =
                        (r["judge"].as_str().unwrap(), r["model"].as_str().unwrap());
                    let rejected =
                        count(&|a| a.judge == judge && a.model == model && a.verdict == "rejected");
                    assert_eq!(num(&r["rejected"]), rejected, "{judge} {model}");
                    close(
                        num(&r["escalation_rate"]),
                        rejected / count(&|a| a.model == model),
                        judge,
                    );
                }
                true
            }
            "Cache hit rate and savings" => {
                let [row] = rows else {
                    panic!("{title}: {rows:?}")
                };
                let hits = inrange.iter().filter(|r| r.cache_hit).count();
                assert_eq!(num(&row["hits"]), hits as f64);
                close(
                    num(&row["hit_rate"]),
                    hits as f64 / inrange.len() as f64,
                    "hit rate",
                );
                assert_eq!(
                    nano(&row["saved_usd"]),
                    inrange.iter().filter_map(|r| r.saved).sum::<i64>()
                );
                true
            }
            "Cache savings by team" => {
                let mut want = BTreeMap::<String, (i64, u64)>::new();
                for r in inrange {
                    let e = want.entry(r.team.to_string()).or_default();
                    e.0 += r.saved.unwrap_or(0);
                    e.1 += u64::from(r.cache_hit);
                }
                let got: BTreeMap<String, (i64, u64)> = rows
                    .iter()
                    .map(|r| {
                        (
                            r["team"].as_str().unwrap().to_string(),
                            (nano(&r["saved_usd"]), num(&r["hits"]) as u64),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{title}");
                true
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn outcome_panels_price_each_success_and_count_the_waste_in_the_dataset() {
    prove("outcomes.json", |title, rows, sel, reqs, inrange| {
        let wanted = &sel.picked["outcome"];
        // The latest report per (team, request id, workflow id), of any age.
        let mut latest = BTreeMap::<(&str, &str, &str), (i64, &str, &str)>::new();
        let reports = outcomes(reqs);
        for o in &reports {
            let e = latest
                .entry((o.team, o.request_id.as_str(), o.workflow_id.as_str()))
                .or_insert((o.ts, o.id.as_str(), o.outcome));
            if (o.ts, o.id.as_str()) > (e.0, e.1) {
                *e = (o.ts, o.id.as_str(), o.outcome);
            }
        }
        let index: BTreeMap<*const Req, usize> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| (r as *const Req, i))
            .collect();
        // A request's outcome: its own latest report, else its workflow's; with the target
        // (request or workflow) it came from.
        let outcome_of = |r: &Req| -> Option<(String, &str)> {
            let id = format!("req-{}", index[&(r as *const Req)]);
            if let Some(o) = latest.get(&(r.team, id.as_str(), "")) {
                return Some((format!("request:{id}"), o.2));
            }
            (!r.workflow_id.is_empty())
                .then(|| latest.get(&(r.team, "", r.workflow_id.as_str())))
                .flatten()
                .map(|o| (format!("workflow:{}", r.workflow_id), o.2))
        };
        type Label = fn(&Req) -> &str;
        let dim: Option<(&str, Label)> = match title {
            "Cost per successful outcome by team" => Some(("team", |r| r.team)),
            "Cost per successful outcome by feature" => Some(("feature", |r| r.feature)),
            "Cost per successful outcome by model" => Some(("model", |r| r.model)),
            _ => None,
        };
        if let Some((col, key)) = dim {
            // Per key: cost and tokens of labeled requests, tokens of successful ones, and
            // the successful targets.
            let mut want = BTreeMap::<String, (i64, u64, u64, BTreeSet<String>)>::new();
            for r in inrange {
                let Some((target, outcome)) = outcome_of(r) else {
                    continue;
                };
                let e = want.entry(key(r).to_string()).or_default();
                let tokens = r.input_tokens + r.output_tokens;
                e.0 += r.cost.unwrap_or(0);
                e.1 += tokens;
                if wanted.iter().any(|w| w == outcome) {
                    e.2 += tokens;
                    e.3.insert(target);
                }
            }
            assert_eq!(rows.len(), want.len(), "{title}: {rows:?}");
            for r in rows {
                let k = r[col].as_str().unwrap();
                let (spend, tokens, success_tokens, successes) = &want[k];
                let n = successes.len() as i64;
                assert_eq!(nano(&r["spend_usd"]), *spend, "{title}: {k}");
                assert_eq!(num(&r["labeled_tokens"]), *tokens as f64, "{title}: {k}");
                assert_eq!(num(&r["successes"]), n as f64, "{title}: {k}");
                if n == 0 {
                    assert!(r["cost_per_success_usd"].is_null(), "{title}: {k}");
                } else {
                    // Whole nano-USD, rounded down, as `tollgate report --by outcome`.
                    assert_eq!(nano(&r["cost_per_success_usd"]), spend / n, "{title}: {k}");
                }
                let yield_ = *success_tokens as f64 / *tokens as f64;
                close(num(&r["token_yield"]), yield_, k);
            }
            return true;
        }
        match title {
            "Retry waste by team and feature" => {
                let ok = |var: &str, v: &str| {
                    sel.picked.get(var).is_none_or(|p| p.iter().any(|x| x == v))
                };
                let mut want = BTreeMap::<(String, String), (u64, u64, i64, i64)>::new();
                for r in reqs.iter().filter(|r| r.ts >= FROM && r.ts <= TO) {
                    if !(ok("team", r.team) && ok("project", r.project) && ok("env", r.env)) {
                        continue;
                    }
                    for a in r.attempts.iter().filter(|a| ok("model", a.model)) {
                        let e = want.entry((r.team.into(), r.feature.into())).or_default();
                        let tokens = a.input_tokens + a.output_tokens;
                        match a.verdict {
                            "failed" => (e.0 += tokens, e.2 += a.cost),
                            "rejected" => (e.1 += tokens, e.2 += a.cost),
                            _ => ((), ()),
                        };
                        e.3 += a.cost;
                    }
                }
                assert_eq!(rows.len(), want.len(), "{title}: {rows:?}");
                for r in rows {
                    let k = (
                        r["team"].as_str().unwrap().to_string(),
                        r["feature"].as_str().unwrap().to_string(),
                    );
                    let (failed, rejected, wasted, total) = want[&k];
                    assert_eq!(num(&r["failed_tokens"]), failed as f64, "{k:?}");
                    assert_eq!(num(&r["rejected_tokens"]), rejected as f64, "{k:?}");
                    assert_eq!(nano(&r["wasted_usd"]), wasted, "{k:?}");
                    close(
                        num(&r["wasted_share"]),
                        wasted as f64 / total as f64,
                        "wasted share",
                    );
                }
                true
            }
            _ => false,
        }
    })
    .await;
}

/// Every PromQL expression of the Prometheus dashboard parses (promtool checks it as a
/// recording rule, Grafana's variables replaced by values they can take) and names only
/// metrics the proxy exports.
#[test]
fn operations_queries_are_valid_promql_on_exported_metrics() {
    let dashboard = grafana::load("operations.json");
    let vars = grafana::variables(&dashboard);
    let reference = regex::Regex::new(r"\$(\w+)").unwrap();
    let mut rules = Vec::new();
    let mut metrics = BTreeSet::new();
    let metric = regex::Regex::new(r"\btollgate_\w+").unwrap();
    for p in grafana::panels(&dashboard) {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            // The values Grafana puts in: range windows, and each variable's "All" (`.*`).
            let promql = reference.replace_all(expr, |c: &regex::Captures| match &c[1] {
                "__rate_interval" => "1m".to_string(),
                "__range" => "6h".to_string(),
                var => {
                    let v = vars.get(var).unwrap_or_else(|| panic!("no ${var}"));
                    v["allValue"].as_str().unwrap().to_string()
                }
            });
            rules.push(serde_json::json!({
                "record": format!("dashboard:panel{}_{}", p["id"], t["refId"].as_str().unwrap()),
                "expr": promql,
            }));
            metrics.extend(metric.find_iter(expr).map(|m| m.as_str().to_string()));
        }
    }
    let file = tempfile::NamedTempFile::with_suffix(".yml").unwrap();
    let yaml = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), yaml.to_string()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool could not run ({e}): install it with `scripts/promtool.sh install`")
        });
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}\n{yaml:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules found", rules.len())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = ["src/metrics.rs", "src/budget/metrics.rs"]
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .concat();
    assert!(metrics.len() >= 10, "{metrics:?}");
    for m in &metrics {
        // A histogram's series carry a suffix its registration does not.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .filter(|b| code.contains(&format!("\"{b}\"")))
            .unwrap_or(m);
        assert!(
            code.contains(&format!("\"{base}\"")),
            "{m} is not a metric the proxy exports"
        );
    }
}
