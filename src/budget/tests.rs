use super::*;
use crate::config::{Period, Scope};

fn budget(name: &str, amount_usd: i64, action: BudgetAction) -> Budget {
    Budget {
        name: name.into(),
        scope: Scope {
            team: Some("search".into()),
            ..Scope::default()
        },
        period: Period::Month,
        amount: NanoUsd(amount_usd * 1_000_000_000),
        alert_at: vec![50, 80, 100],
        action,
    }
}

fn spend(budgets: Vec<Budget>) -> Spend {
    Spend {
        budgets,
        ..Spend::default()
    }
}

fn search() -> Attribution {
    Attribution {
        team: "search".into(),
        ..Attribution::default()
    }
}

fn usd(n: i64) -> NanoUsd {
    NanoUsd(n * 1_000_000_000)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-15T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn concurrent_reservations_never_take_more_than_the_room() {
    let cfg = Arc::new(spend(vec![budget("b", 10, BudgetAction::Block)]));
    let budgets = Budgets::new(HashMap::new());
    let held = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..200 {
            let (cfg, budgets, held) = (cfg.clone(), budgets.clone(), held.clone());
            s.spawn(move || {
                if let Ok(r) = budgets.reserve(&cfg, &search(), usd(1), now()) {
                    held.lock().unwrap().push(r);
                }
            });
        }
    });
    assert_eq!(held.lock().unwrap().len(), 10);
    let status = &budgets.statuses(&cfg, now())[0];
    assert_eq!((status.spend, status.reserved), (NanoUsd::ZERO, usd(10)));
}

#[test]
fn settling_replaces_the_reservation_with_the_real_cost() {
    let cfg = spend(vec![budget("b", 10, BudgetAction::Block)]);
    let budgets = Budgets::new(HashMap::new());
    let mut r = budgets.reserve(&cfg, &search(), usd(4), now()).unwrap();
    assert_eq!(r.remaining(), Some(usd(10)));
    r.settle(&cfg, usd(1), now());
    let status = &budgets.statuses(&cfg, now())[0];
    assert_eq!((status.spend, status.reserved), (usd(1), NanoUsd::ZERO));
    // Dropped unsettled (a request that ended without a record): released, nothing spent.
    drop(budgets.reserve(&cfg, &search(), usd(4), now()).unwrap());
    let status = &budgets.statuses(&cfg, now())[0];
    assert_eq!((status.spend, status.reserved), (usd(1), NanoUsd::ZERO));
    assert_eq!(status.remaining(), usd(9));
}

#[test]
fn a_request_that_does_not_fit_is_refused_and_out_of_scope_ones_pass() {
    let cfg = spend(vec![budget("b", 10, BudgetAction::Block)]);
    let budgets = Budgets::new(HashMap::new());
    let mut r = budgets.reserve(&cfg, &search(), usd(8), now()).unwrap();
    r.settle(&cfg, usd(8), now());
    let over = budgets
        .reserve(&cfg, &search(), usd(3), now())
        .err()
        .unwrap();
    assert_eq!(
        (over.budget.as_str(), over.spend, over.limit),
        ("b", usd(8), usd(10))
    );
    assert_eq!(over.resets_at.to_rfc3339(), "2026-12-01T00:00:00+00:00");
    let other = Attribution {
        team: "growth".into(),
        ..Attribution::default()
    };
    let r = budgets.reserve(&cfg, &other, usd(3), now()).unwrap();
    assert_eq!(r.remaining(), None, "no budget holds it");
}

#[test]
fn alert_budgets_keep_serving_and_report_each_threshold_once() {
    let cfg = spend(vec![budget("b", 10, BudgetAction::Alert)]);
    let budgets = Budgets::new(HashMap::new());
    let mut kinds = Vec::new();
    for _ in 0..6 {
        let mut r = budgets.reserve(&cfg, &search(), usd(2), now()).unwrap();
        kinds.extend(r.settle(&cfg, usd(2), now()).into_iter().map(|c| c.kind));
    }
    let thresholds: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            CrossingKind::Threshold(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(thresholds, vec![50, 80, 100]);
}

#[test]
fn spend_known_at_start_counts_and_a_new_period_starts_from_zero() {
    let cfg = spend(vec![budget("b", 10, BudgetAction::Block)]);
    let (start, _) = period::bounds(Period::Month, chrono_tz::UTC, now());
    let known = HashMap::from([(
        "b".to_string(),
        Known {
            start: Some(start),
            total: usd(9),
            unshipped: NanoUsd::ZERO,
            days: Vec::new(),
        },
    )]);
    let budgets = Budgets::new(known);
    assert!(budgets.reserve(&cfg, &search(), usd(2), now()).is_err());
    let next_month = now() + chrono::Duration::days(30);
    assert!(budgets.reserve(&cfg, &search(), usd(2), next_month).is_ok());
}

#[test]
fn a_downgrading_budget_is_reported_not_refused() {
    let cfg = spend(vec![budget(
        "b",
        10,
        BudgetAction::Downgrade("cheap".into()),
    )]);
    let budgets = Budgets::new(HashMap::new());
    assert!(budgets.downgrade(&cfg, &search(), usd(5), now()).is_none());
    let mut r = budgets.reserve(&cfg, &search(), usd(9), now()).unwrap();
    r.settle(&cfg, usd(9), now());
    let over = budgets.downgrade(&cfg, &search(), usd(5), now()).unwrap();
    assert_eq!(over.action, BudgetAction::Downgrade("cheap".into()));
    assert!(budgets.reserve(&cfg, &search(), usd(5), now()).is_ok());
}

#[test]
fn a_steady_trajectory_forecasts_the_day_the_budget_runs_out() {
    let mut cfg = spend(vec![budget("b", 100, BudgetAction::Alert)]);
    cfg.alerts.forecast_days = 7;
    // $5 a day for the last week; $40 spent so far this month.
    let days = (1..=7)
        .map(|d| (now().date_naive() - chrono::Duration::days(d), usd(5)))
        .collect();
    let (start, _) = period::bounds(Period::Month, chrono_tz::UTC, now());
    let known = HashMap::from([(
        "b".to_string(),
        Known {
            start: Some(start),
            total: usd(40),
            unshipped: NanoUsd::ZERO,
            days,
        },
    )]);
    let budgets = Budgets::new(known);
    let mut r = budgets
        .reserve(&cfg, &search(), NanoUsd::ZERO, now())
        .unwrap();
    let crossings = r.settle(&cfg, usd(1), now());
    let forecast = crossings
        .iter()
        .find_map(|c| match &c.kind {
            CrossingKind::Forecast { projected, on } => Some((*projected, *on)),
            _ => None,
        })
        .expect("a forecast past the amount");
    // The 7-day window (Nov 9 to now, 6.5 days) holds $31: $4.77/day over the 15.5 days
    // left, on top of $41: about $115.
    assert!(
        forecast.0 > usd(100) && forecast.0 < usd(130),
        "{:?}",
        forecast.0
    );
    // $59 left at $4.77/day: 12.4 days, so November 27.
    assert_eq!(forecast.1.to_string(), "2026-11-27");
    // Once per period.
    let mut r = budgets
        .reserve(&cfg, &search(), NanoUsd::ZERO, now())
        .unwrap();
    assert!(r.settle(&cfg, usd(1), now()).is_empty());
}
