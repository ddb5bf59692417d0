//! Budget alerts against real HTTP receivers on loopback: both webhook formats (the JSON one
//! checked against its signature), retries, deduplication within a run, across a restart
//! (and a delivery resumed after one), across two replicas sharing a real redis-server, and
//! receivers that never accept.

use crate::common::Received;
use crate::common::redis::RedisServer;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::alerts::{Alert, AlertKind, Alerter, AlerterOptions, Retry};
use tollgate::config::{Alerting, Period, RedisSettings, Webhook, WebhookFormat};
use tollgate::metrics::Metrics;
use tollgate::money::NanoUsd;

const SECRET: &str = "whsec-test-3f9a";

/// Every test is over well within this.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test finished in time");
}

/// A webhook receiver that keeps what it gets and answers `fail` to the first `failures`
/// requests, 200 after.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(failures: usize, fail: http::StatusCode) -> Receiver {
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let store = seen.clone();
        let app =
            axum::Router::new().fallback(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let (store, count) = (store.clone(), count.clone());
                async move {
                    store.lock().unwrap().push(Received { headers, body });
                    if count.fetch_add(1, Ordering::SeqCst) < failures {
                        (fail, "not now")
                    } else {
                        (http::StatusCode::OK, "ok")
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/T000/B000/secret-path",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, seen }
    }

    async fn accepting() -> Receiver {
        Self::start(0, http::StatusCode::OK).await
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    fn slack(&self, name: &str) -> Webhook {
        Webhook {
            name: name.into(),
            url: self.url.clone(),
            format: WebhookFormat::Slack,
        }
    }

    fn json(&self, name: &str) -> Webhook {
        Webhook {
            name: name.into(),
            url: self.url.clone(),
            format: WebhookFormat::Json {
                secret: SECRET.into(),
            },
        }
    }
}

fn alerting(webhooks: Vec<Webhook>) -> Alerting {
    Alerting {
        webhooks,
        forecast_days: 7,
    }
}

fn fast(attempts: u32) -> AlerterOptions {
    AlerterOptions {
        retry: Retry {
            attempts,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
        },
        ..AlerterOptions::default()
    }
}

/// After a failed try, the next is an hour away.
fn stalled() -> AlerterOptions {
    AlerterOptions {
        retry: Retry {
            first_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
            ..Retry::default()
        },
        ..AlerterOptions::default()
    }
}

fn local(hooks: Vec<Webhook>, dir: &Path, m: &Metrics, options: AlerterOptions) -> Alerter {
    Alerter::with_options(&alerting(hooks), dir, None, m.alerts.clone(), options).unwrap()
}

fn alerter(hooks: Vec<Webhook>, dir: &Path, redis: Option<&RedisSettings>, m: &Metrics) -> Alerter {
    Alerter::with_options(&alerting(hooks), dir, redis, m.alerts.clone(), fast(5)).unwrap()
}

/// The current month, as a monthly budget in UTC sees it.
fn month() -> (DateTime<Utc>, DateTime<Utc>) {
    let now = Utc::now().date_naive();
    let start = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap();
    let end = start.checked_add_months(chrono::Months::new(1)).unwrap();
    (
        start.and_hms_opt(0, 0, 0).unwrap().and_utc(),
        end.and_hms_opt(0, 0, 0).unwrap().and_utc(),
    )
}

fn threshold(budget: &str, percent: u32, spend_nanos: i64) -> Alert {
    let (start, end) = month();
    Alert {
        budget: budget.into(),
        kind: AlertKind::Threshold { percent },
        period: Period::Month,
        period_start: start,
        resets_at: end,
        spend: NanoUsd(spend_nanos),
        limit: NanoUsd(500_000_000_000),
        scope: vec![
            ("team".into(), "search".into()),
            ("env".into(), "prod".into()),
        ],
        at: Utc::now(),
    }
}

fn sent(m: &Metrics, webhook: &str) -> u64 {
    m.alerts.sent.with_label_values(&[webhook]).get()
}

fn failed(m: &Metrics, webhook: &str) -> u64 {
    m.alerts.failed.with_label_values(&[webhook]).get()
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn both_formats_arrive_and_the_json_one_is_signed() {
    bounded(async {
        let (slack, json) = (Receiver::accepting().await, Receiver::accepting().await);
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(
            vec![slack.slack("ops-slack"), json.json("billing")],
            dir.path(),
            None,
            &m,
        );
        a.fire(threshold("search-monthly", 80, 412_345_678_901));
        assert!(a.flush(Duration::from_secs(20)).await);

        let s = slack.bodies();
        assert_eq!(s.len(), 1);
        let text = s[0]["text"].as_str().unwrap();
        for part in [
            "search-monthly",
            "80%",
            "$412.35 of $500.00",
            "monthly",
            "team=search, env=prod",
        ] {
            assert!(text.contains(part), "{part:?} in {text:?}");
        }

        let got = json.seen.lock().unwrap();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r.headers["content-type"], "application/json");
        let ts = r.headers["x-tollgate-timestamp"].to_str().unwrap();
        let age = Utc::now().timestamp() - ts.parse::<i64>().unwrap();
        assert!((0..30).contains(&age), "timestamp {ts} is now");
        let signed = [ts.as_bytes(), b".", &r.body].concat();
        let want = format!("sha256={}", hmac_hex(SECRET, &signed));
        assert_eq!(r.headers["x-tollgate-signature"], want.as_str());
        assert_ne!(
            want,
            format!("sha256={}", hmac_hex("another secret", &signed)),
            "the check can fail"
        );

        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let (start, end) = month();
        assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(v["kind"], "threshold");
        assert_eq!(v["budget"], "search-monthly");
        assert_eq!(v["percent"], 80);
        assert_eq!(v["spend_usd"], "412.345678901");
        assert_eq!(v["limit_usd"], "500.000000000");
        assert_eq!(v["period"], "month");
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert_eq!(v["period_start"], rfc(start));
        assert_eq!(v["resets_at"], rfc(end));
        assert_eq!(
            v["scope"],
            serde_json::json!({"team": "search", "env": "prod"})
        );
        assert_eq!(v["text"], text);

        assert_eq!((sent(&m, "ops-slack"), sent(&m, "billing")), (1, 1));
        let scraped = m.render();
        assert_eq!(
            crate::common::metric(
                &scraped,
                "tollgate_alerts_sent_total",
                &[("webhook", "billing")]
            ),
            Some(1.0),
            "{scraped}"
        );
        assert!(
            !scraped.contains("secret-path"),
            "webhook URLs never reach metrics"
        );
    })
    .await;
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_and_the_alert_once_it_accepts() {
    bounded(async {
        let hook = Receiver::start(2, http::StatusCode::SERVICE_UNAVAILABLE).await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(vec![hook.json("billing")], dir.path(), None, &m);
        a.fire(threshold("b", 50, 250_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);

        let bodies = hook.bodies();
        assert_eq!(bodies.len(), 3, "two 503s, then accepted");
        assert!(
            bodies.iter().all(|b| b["id"] == bodies[0]["id"]),
            "one id on every try"
        );
        assert_eq!((sent(&m, "billing"), failed(&m, "billing")), (1, 0));

        // Accepted once: firing it again sends nothing.
        a.fire(threshold("b", 50, 260_000_000_000));
        assert!(a.flush(Duration::from_secs(5)).await);
        assert_eq!(hook.count(), 3);
    })
    .await;
}

#[tokio::test]
async fn an_alert_fired_twice_is_sent_once() {
    bounded(async {
        let hook = Receiver::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(vec![hook.json("billing")], dir.path(), None, &m);
        let forecast = |projected_usd: i64, day: u32| Alert {
            kind: AlertKind::Forecast {
                projected: NanoUsd(projected_usd * 1_000_000_000),
                on: month().0.date_naive().with_day(day).unwrap(),
            },
            ..threshold("b", 0, 100_000_000_000)
        };
        for _ in 0..3 {
            a.fire(threshold("b", 80, 400_000_000_000));
        }
        a.fire(threshold("b", 100, 500_000_000_000));
        a.fire(threshold("other", 80, 400_000_000_000));
        a.fire(forecast(700, 20));
        a.fire(forecast(800, 18));
        assert!(a.flush(Duration::from_secs(20)).await);

        let mut got: Vec<(String, String)> = hook
            .bodies()
            .iter()
            .map(|b| {
                (
                    b["budget"].to_string(),
                    format!("{}{}", b["percent"], b["projected_usd"]),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (r#""b""#.into(), "100null".into()),
                (r#""b""#.into(), "80null".into()),
                (r#""b""#.into(), r#"null"700.000000000""#.into()),
                (r#""other""#.into(), "80null".into()),
            ]
        );
        assert_eq!(sent(&m, "billing"), 4);
    })
    .await;
}

#[tokio::test]
async fn a_restart_does_not_resend_and_finishes_what_a_crash_cut_short() {
    bounded(async {
        let hook = Receiver::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(vec![hook.slack("ops")], dir.path(), None, &m);
        a.fire(threshold("b", 80, 400_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);
        drop(a);

        let b = alerter(vec![hook.slack("ops")], dir.path(), None, &m);
        b.fire(threshold("b", 80, 410_000_000_000));
        b.fire(threshold("b", 100, 500_000_000_000));
        assert!(b.flush(Duration::from_secs(20)).await);
        let texts: Vec<String> = hook
            .bodies()
            .iter()
            .map(|v| v["text"].to_string())
            .collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains("80%") && texts[1].contains("100%"),
            "{texts:?}"
        );

        // A run that accepted an alert but stopped before its webhook took it: its
        // receiver is down, and the next try is an hour away when the process "dies".
        let down = Receiver::start(usize::MAX, http::StatusCode::BAD_GATEWAY).await;
        let crash_dir = tempfile::tempdir().unwrap();
        let stuck = local(vec![down.json("billing")], crash_dir.path(), &m, stalled());
        stuck.fire(threshold("b", 50, 300_000_000_000));
        while down.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first_id = down.bodies()[0]["id"].clone();

        // The next run sends it on its own, under the same id, and only once.
        let up = Receiver::accepting().await;
        let next = alerter(vec![up.json("billing")], crash_dir.path(), None, &m);
        next.fire(threshold("b", 50, 300_000_000_000));
        assert!(next.flush(Duration::from_secs(20)).await);
        let got = up.bodies();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["id"], first_id);
        assert_eq!(down.count(), 1, "the stopped run never tried again");
    })
    .await;
}

#[tokio::test]
async fn replicas_sharing_redis_send_each_alert_once() {
    bounded(async {
        let server = RedisServer::start();
        let redis = RedisSettings {
            url: server.url(),
            key_prefix: "tg:".into(),
            timeout: Duration::from_secs(2),
        };
        let hook = Receiver::accepting().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (m1, m2) = (Metrics::new(), Metrics::new());
        let r1 = alerter(vec![hook.json("billing")], d1.path(), Some(&redis), &m1);
        let r2 = alerter(vec![hook.json("billing")], d2.path(), Some(&redis), &m2);
        for percent in [50, 80] {
            r1.fire(threshold("shared", percent, 400_000_000_000));
            r2.fire(threshold("shared", percent, 400_000_000_000));
        }
        r2.fire(threshold("only-r2", 50, 300_000_000_000));
        assert!(r1.flush(Duration::from_secs(20)).await);
        assert!(r2.flush(Duration::from_secs(20)).await);

        let mut got: Vec<String> = hook
            .bodies()
            .iter()
            .map(|b| format!("{}/{}", b["budget"].as_str().unwrap(), b["percent"]))
            .collect();
        got.sort();
        assert_eq!(got, ["only-r2/50", "shared/50", "shared/80"]);
        assert_eq!(sent(&m1, "billing") + sent(&m2, "billing"), 3);

        // The claim outlives the period, so a replica that starts later stays quiet too.
        let (start, end) = month();
        let key = format!("tg:alert:shared:{}:threshold:80", start.timestamp());
        let reply = server.command(&format!("PTTL {key}"));
        let ms: i64 = reply.trim().trim_start_matches(':').parse().unwrap();
        assert!(ms > (end - Utc::now()).num_milliseconds(), "PTTL {reply:?}");
        let d3 = tempfile::tempdir().unwrap();
        let r3 = alerter(
            vec![hook.json("billing")],
            d3.path(),
            Some(&redis),
            &Metrics::new(),
        );
        r3.fire(threshold("shared", 80, 450_000_000_000));
        assert!(r3.flush(Duration::from_secs(20)).await);
        assert_eq!(hook.count(), 3);
    })
    .await;
}

#[tokio::test]
async fn alerts_still_go_out_when_redis_is_down() {
    bounded(async {
        let mut server = RedisServer::start();
        let redis = RedisSettings {
            url: server.url(),
            key_prefix: "tg:".into(),
            timeout: Duration::from_millis(250),
        };
        server.kill();
        let hook = Receiver::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(vec![hook.slack("ops")], dir.path(), Some(&redis), &m);
        a.fire(threshold("b", 80, 400_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);
        assert_eq!(hook.count(), 1);
        assert_eq!(sent(&m, "ops"), 1);
    })
    .await;
}

#[tokio::test]
async fn receivers_that_never_accept_are_given_up_and_counted() {
    bounded(async {
        let broken = Receiver::start(usize::MAX, http::StatusCode::INTERNAL_SERVER_ERROR).await;
        let refusing = Receiver::start(usize::MAX, http::StatusCode::FORBIDDEN).await;
        let ok = Receiver::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let hooks = vec![
            broken.json("broken"),
            refusing.slack("refusing"),
            ok.slack("ok"),
        ];
        let a = local(hooks.clone(), dir.path(), &m, fast(3));
        a.fire(threshold("b", 80, 400_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);

        assert_eq!(broken.count(), 3, "a 500 is retried up to the attempts");
        assert_eq!(refusing.count(), 1, "a 403 is not retried");
        assert_eq!(ok.count(), 1);
        assert_eq!((failed(&m, "broken"), sent(&m, "broken")), (1, 0));
        assert_eq!((failed(&m, "refusing"), sent(&m, "refusing")), (1, 0));
        assert_eq!((failed(&m, "ok"), sent(&m, "ok")), (0, 1));
        let scraped = m.render();
        assert_eq!(
            crate::common::metric(
                &scraped,
                "tollgate_alerts_failed_total",
                &[("webhook", "broken")]
            ),
            Some(1.0)
        );
        drop(a);

        // Given up is final: a restart does not try again.
        let b = local(hooks, dir.path(), &m, fast(3));
        assert!(b.flush(Duration::from_secs(5)).await);
        assert_eq!((broken.count(), refusing.count(), ok.count()), (3, 1, 1));
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_a_later_fire_is_taken() {
    bounded(async {
        // The receiver holds the first delivery until the test lets it go.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let app = {
            let (gate, seen) = (gate.clone(), seen.clone());
            axum::Router::new().fallback(move || {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    "ok"
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let hook = Webhook {
            name: "ops".into(),
            url,
            format: WebhookFormat::Slack,
        };
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let options = AlerterOptions {
            queue: 1,
            ..fast(1)
        };
        let a = local(vec![hook], dir.path(), &m, options);
        a.fire(threshold("b", 50, 250_000_000_000));
        a.fire(threshold("b", 80, 400_000_000_000));
        assert_eq!(m.alerts.dropped.get(), 1);
        assert_eq!(a.outstanding(), 1);

        gate.add_permits(10);
        assert!(a.flush(Duration::from_secs(20)).await);
        a.fire(threshold("b", 80, 400_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2,
            "the dropped alert went out when fired again"
        );
        assert_eq!(sent(&m, "ops"), 2);
    })
    .await;
}

#[tokio::test]
async fn flush_gives_up_at_its_deadline() {
    bounded(async {
        let down = Receiver::start(usize::MAX, http::StatusCode::SERVICE_UNAVAILABLE).await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = local(vec![down.slack("ops")], dir.path(), &m, stalled());
        a.fire(threshold("b", 80, 400_000_000_000));
        let started = std::time::Instant::now();
        assert!(!a.flush(Duration::from_millis(300)).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(a.outstanding(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_reload_brings_new_webhooks_to_later_alerts() {
    bounded(async {
        let hook = Receiver::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let a = alerter(vec![], dir.path(), None, &m);
        a.fire(threshold("b", 50, 250_000_000_000));
        assert_eq!(a.outstanding(), 0, "no webhook, nothing queued");

        a.reconfigure(&alerting(vec![hook.slack("ops")]));
        a.fire(threshold("b", 50, 250_000_000_000));
        a.fire(threshold("b", 80, 400_000_000_000));
        assert!(a.flush(Duration::from_secs(20)).await);
        assert_eq!(hook.count(), 2);
        assert_eq!(sent(&m, "ops"), 2);
    })
    .await;
}
