//! Budget forecasts end to end: a week of spend is in the ledger before the proxy starts,
//! one request follows, and a JSON webhook receives the forecast of the budget that spend
//! will pass, checked against the projection README documents (the period's spend so far
//! plus the daily rate of the last `alerts.forecast_days` days over the time left),
//! computed here from the same history.

use crate::common::*;
use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use std::time::Instant;
use tollgate::money::NanoUsd;
use tollgate::record::Record;

/// One request of the history: 1M input tokens at $2/M and 250k output tokens at $8/M.
const PER_REQUEST: NanoUsd = NanoUsd(4_000_000_000);
/// Hours (local) of each day's requests: the team spends $12 a day.
const HOURS: [u32; 3] = [9, 13, 17];
/// Days of history before today; the forecast's window is the last 7 local days, today
/// included (`alerts.forecast_days`, 7 by default).
const HISTORY_DAYS: i64 = 7;
const WINDOW_DAYS: i64 = 7;

/// The fixed-offset zone (`Etc/GMT±N`) whose day began most recently, so that a daily
/// budget there has most of its period ahead whatever the date and hour the test runs at.
/// (A week or month budget cannot do that: late in its period a week of steady spend is
/// already past half of any amount it is projected to pass.)
fn zone_whose_day_just_began(now: DateTime<Utc>) -> Tz {
    (-12..=14)
        .map(|hours: i32| {
            // `Etc/GMT-3` is three hours ahead of UTC.
            let name = match hours {
                0 => "Etc/GMT".to_string(),
                h if h > 0 => format!("Etc/GMT-{h}"),
                h => format!("Etc/GMT+{}", -h),
            };
            name.parse::<Tz>().unwrap()
        })
        .min_by_key(|tz| now.with_timezone(tz).num_seconds_from_midnight())
        .unwrap()
}

fn local(tz: Tz, day: NaiveDate, hour: u32) -> DateTime<Utc> {
    let t = day.and_hms_opt(hour, 0, 0).unwrap();
    tz.from_local_datetime(&t)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// A request of team search at `ts` as the ledger holds it.
fn spent_at(ts: DateTime<Utc>, request_id: String) -> Record {
    serde_json::from_value(json!({
        "ts": ts.to_rfc3339_opts(SecondsFormat::Millis, true), "request_id": request_id,
        "team": "search", "project": "ranking", "env": "prod", "user": "ana@example.com",
        "feature": "", "workflow_id": "", "tags": {}, "key_name": "search-prod",
        "provider": "openai", "endpoint": "/v1/chat/completions",
        "requested_model": "gpt-4o-mini", "model": "gpt-4o-mini", "stream": false,
        "status": 200, "input_tokens": 1_000_000, "output_tokens": 250_000,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "usage_source": "reported", "cost_usd": PER_REQUEST.to_string(),
        "latency_ms": 900, "ttfb_ms": 300, "error": null
    }))
    .unwrap()
}

/// `HISTORY_DAYS` local days before `today` of steady spend.
fn history(tz: Tz, today: NaiveDate) -> Vec<Record> {
    (1..=HISTORY_DAYS)
        .flat_map(|back| {
            let day = today - Duration::days(back);
            HOURS.map(|h| spent_at(local(tz, day, h), format!("history-{day}-{h}")))
        })
        .collect()
}

/// A proxy with `config` that finds `records` in its ledger when it starts.
async fn start_with_ledger(config: &str, records: &[Record]) -> Proxy {
    let files = ledger_files(records);
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    Proxy::start_with(config, &files).await
}

/// `records` in ledger files, written by the ledger itself, at their place under a
/// proxy's directory (`data_dir: data`).
fn ledger_files(records: &[Record]) -> Vec<(String, Vec<u8>)> {
    let scratch = tempfile::tempdir().unwrap();
    let ledger = tollgate::ledger::Ledger::open(
        scratch.path(),
        &tollgate::config::LedgerConfig::default(),
        tollgate::metrics::Metrics::new(),
    )
    .unwrap();
    for r in records {
        ledger.append(r, &[]).unwrap();
    }
    ledger.close();
    tollgate::ledger::list_segments(ledger.dir())
        .unwrap()
        .into_iter()
        .map(|(_, path)| {
            let name = path.file_name().unwrap().to_str().unwrap();
            (format!("data/ledger/{name}"), std::fs::read(&path).unwrap())
        })
        .collect()
}

/// A daily budget's trajectory, for the projection as documented.
struct Trajectory {
    /// The period's spend so far.
    spent: NanoUsd,
    /// Spend in the forecast's window, and where the window starts.
    recent: NanoUsd,
    window_from: DateTime<Utc>,
    /// The period's end.
    end: DateTime<Utc>,
    tz: Tz,
}

impl Trajectory {
    /// Spend at the period's end: spend so far plus the window's rate (its spend over its
    /// length so far) over the time left, in whole seconds.
    fn projected(&self, now: DateTime<Utc>) -> NanoUsd {
        let left = (self.end - now).num_seconds();
        let window = (now - self.window_from).num_seconds();
        let more = i128::from(self.recent.0) * i128::from(left) / i128::from(window);
        NanoUsd(self.spent.0 + i64::try_from(more).unwrap())
    }

    /// The local day the spend reaches `amount` at the window's rate.
    fn reaches(&self, amount: NanoUsd, now: DateTime<Utc>) -> NaiveDate {
        let window = (now - self.window_from).num_seconds();
        let need = i128::from(amount.0 - self.spent.0);
        let secs = need * i128::from(window) / i128::from(self.recent.0);
        let at = now + Duration::seconds(i64::try_from(secs).unwrap());
        at.with_timezone(&self.tz).date_naive()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn usd(metrics: &str, name: &str, budget: &str) -> NanoUsd {
    let value = metric(metrics, name, &[("budget", budget)]).expect(name);
    NanoUsd::from_f64_usd(value).unwrap()
}

/// Two daily budgets of team search, a week of its spend ($12 a day) in the ledger, one
/// request: the budget of $6 is sent one forecast (it will be passed today), the budget of
/// $24 none (it will not be); neither is near a threshold.
#[tokio::test]
async fn a_week_of_spend_forecasts_the_budget_it_will_pass_and_not_the_one_it_will_not() {
    let up = start_sim().await;
    let (hook, seen) = recording_upstream().await;
    let tz = zone_whose_day_just_began(Utc::now());
    let today = Utc::now().with_timezone(&tz).date_naive();
    let past = history(tz, today);
    let daily = PER_REQUEST.0 * HOURS.len() as i64;
    let (tight, roomy) = (NanoUsd(daily / 2), NanoUsd(daily * 2));
    let budget = |name: &str, amount: NanoUsd| {
        format!(
            "  - {{name: {name}, scope: {{team: search}}, period: day, amount_usd: \"{amount}\", alert_at: [50, 80, 100], action: alert}}\n"
        )
    };
    let extra = format!(
        "time_zone: \"{tz}\"\nbudgets:\n{}{}alerts:\n  webhooks:\n    - {{name: finops, format: json, url: \"http://{hook}/hook\", secret_env: TEST_ADMIN_TOKEN}}",
        budget("search-tight", tight),
        budget("search-roomy", roomy),
    );
    let proxy = start_with_ledger(&config_for(up.addr, &extra), &past).await;

    let before = Utc::now();
    let resp = openai(
        &proxy,
        "/v1/chat/completions",
        &[],
        &json!({"model": "gpt-4o-mini", "max_tokens": 20,
                "messages": [{"role": "user", "content": "Rank these results."}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let _ = resp.bytes().await;
    let after = Utc::now();
    assert_eq!(after.with_timezone(&tz).date_naive(), today);

    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no alert:\n{}", proxy.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Every alert of one request is queued at once: any other would be in by now.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let alerts: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(alerts.len(), 1, "one forecast, no threshold: {alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "forecast");
    assert_eq!(alert["budget"], "search-tight");
    assert_eq!(alert["percent"], Value::Null);

    // The trajectory: today's spend is the request's; the window holds the 6 days of
    // history since today-6 and today.
    let cost = proxy.record_of(past.len() + 1, &id).await.cost_usd.unwrap();
    let window_day = today - Duration::days(WINDOW_DAYS - 1);
    let in_window: NanoUsd = past
        .iter()
        .filter(|r| r.ts.with_timezone(&tz).date_naive() >= window_day)
        .filter_map(|r| r.cost_usd)
        .sum();
    let (start, end) = (local(tz, today, 0), local(tz, today + Duration::days(1), 0));
    let trajectory = Trajectory {
        spent: cost,
        recent: in_window + cost,
        window_from: local(tz, window_day, 0),
        end,
        tz,
    };
    assert_eq!(alert["spend_usd"], cost.to_string());
    assert_eq!(alert["limit_usd"], tight.to_string());
    assert!(cost.0 * 2 < tight.0, "spend is below 50%: no threshold");
    // Projected at settlement, between the request's start and its end.
    let projected = NanoUsd::parse_usd(alert["projected_usd"].as_str().unwrap()).unwrap();
    let (low, high) = (trajectory.projected(after), trajectory.projected(before));
    assert!(
        low <= projected && projected <= high,
        "{projected} not in [{low}, {high}]"
    );
    assert!(projected > tight);
    let on = alert["limit_reached_on"].as_str().unwrap();
    let (earliest, latest) = (
        trajectory.reaches(tight, before),
        trajectory.reaches(tight, after),
    );
    assert!(
        [earliest.to_string(), latest.to_string()].contains(&on.to_string()),
        "{on} is not {earliest} or {latest}"
    );
    assert_eq!(alert["period"], "day");
    assert_eq!(alert["period_start"], rfc3339(start));
    assert_eq!(alert["resets_at"], rfc3339(end));
    assert_eq!(alert["scope"], json!({"team": "search"}));

    // The roomy budget's projection is the same trajectory, under its amount.
    let scraped_from = Utc::now();
    let metrics = proxy.metrics().await;
    let scraped_to = Utc::now();
    let forecast = usd(&metrics, "tollgate_budget_forecast_usd", "search-roomy");
    assert!(
        trajectory.projected(scraped_to) <= forecast
            && forecast <= trajectory.projected(scraped_from),
        "{forecast}"
    );
    assert!(forecast < roomy);
    assert_eq!(
        usd(&metrics, "tollgate_budget_spend_usd", "search-roomy"),
        cost
    );
}

/// A record dated tomorrow (written by a clock running ahead), and no other spend this
/// week: the budget's forecast is still made, for the metrics and for requests that cost
/// nothing.
#[tokio::test]
async fn spend_dated_in_the_future_breaks_neither_metrics_nor_requests() {
    let up = start_sim().await;
    let ahead = spent_at(Utc::now() + Duration::days(1), "clock-ahead".into());
    let extra = "budgets:\n  - {name: search-month, scope: {team: search}, period: month, amount_usd: \"100\", action: alert}";
    let proxy = start_with_ledger(&config_for(up.addr, extra), &[ahead]).await;
    // No spend in the window, so no rate: the projection is the spend so far.
    let metrics = proxy.metrics().await;
    assert_eq!(
        usd(&metrics, "tollgate_budget_forecast_usd", "search-month"),
        usd(&metrics, "tollgate_budget_spend_usd", "search-month")
    );
    // A provider error costs nothing, so today still has no spend when it settles.
    let failed = openai(
        &proxy,
        "/v1/chat/completions",
        &[("x-sim-fault", "status=500")],
        &json!({"model": "gpt-4o-mini", "max_tokens": 5,
                "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(failed.status(), 500);
    let _ = failed.bytes().await;
    proxy.records(2).await;
    proxy.metrics().await;
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}
