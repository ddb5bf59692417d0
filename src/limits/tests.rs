use super::*;

const SEC: u64 = 1_000_000;

fn charge(limit: &str, value: &str, rpm: Option<u64>, tpm: Option<u64>) -> Charge {
    Charge {
        limit: limit.into(),
        per: LimitPer::Key,
        value: value.into(),
        rpm,
        tpm,
    }
}

fn refused(r: Result<(), Refusal>) -> Refusal {
    r.expect_err("refused")
}

#[test]
fn a_burst_of_rpm_fits_and_the_next_waits_one_interval() {
    let mut local = Local::default();
    let c = [charge("per-key", "a", Some(10), None)];
    for i in 0..10 {
        assert!(local.take(0, &c, 0).is_ok(), "request {i}");
    }
    let r = refused(local.take(0, &c, 0));
    assert_eq!((r.limit.as_str(), r.value.as_str()), ("per-key", "a"));
    assert_eq!((r.kind, r.max), (Kind::Requests, 10));
    // One request drains every 6 s.
    assert_eq!(r.retry_after, Duration::from_secs(6));
    assert_eq!(r.retry_after_secs(), 6);
    // Just before, still refused, with what is left; at 6 s, one more fits, and only one.
    let r = refused(local.take(6 * SEC - 250_000, &c, 0));
    assert_eq!(r.retry_after, Duration::from_millis(250));
    assert_eq!(r.retry_after_secs(), 1, "rounded up to a whole second");
    assert!(local.take(6 * SEC, &c, 0).is_ok());
    assert!(local.take(6 * SEC, &c, 0).is_err());
    // A minute of quiet refills the whole burst.
    for _ in 0..10 {
        assert!(local.take(66 * SEC, &c, 0).is_ok());
    }
    assert!(local.take(66 * SEC, &c, 0).is_err());
}

#[test]
fn each_value_and_each_limit_counts_alone() {
    let mut local = Local::default();
    let a = [charge("l1", "a", Some(1), None)];
    assert!(local.take(0, &a, 0).is_ok());
    assert!(local.take(0, &a, 0).is_err());
    assert!(
        local
            .take(0, &[charge("l1", "b", Some(1), None)], 0)
            .is_ok()
    );
    assert!(
        local
            .take(0, &[charge("l2", "a", Some(1), None)], 0)
            .is_ok()
    );
}

#[test]
fn a_refused_request_charges_none_of_its_counters() {
    let mut local = Local::default();
    let rpm = charge("rpm", "a", Some(5), None);
    let tpm = charge("tpm", "a", None, Some(100));
    assert!(local.take(0, std::slice::from_ref(&tpm), 90).is_ok());
    // The token limit refuses; the request limit must not have counted it.
    let r = refused(local.take(0, &[rpm.clone(), tpm.clone()], 50));
    assert_eq!((r.limit.as_str(), r.kind), ("tpm", Kind::Tokens));
    // 90 + 50 is 40 over 100 a minute: 24 s until it fits.
    assert_eq!(r.retry_after, Duration::from_secs(24));
    for _ in 0..5 {
        assert!(local.take(0, std::slice::from_ref(&rpm), 0).is_ok());
    }
    assert!(local.take(0, &[rpm], 0).is_err());
}

#[test]
fn the_refusal_names_the_counter_that_waits_longest() {
    let mut local = Local::default();
    let both = [charge("both", "a", Some(2), Some(1000))];
    assert!(local.take(0, &both, 1000).is_ok());
    assert!(local.take(0, &both, 0).is_ok());
    // Requests: 30 s to the next; tokens: the full 1000 need 60 s.
    let r = refused(local.take(0, &both, 1000));
    assert_eq!(
        (r.kind, r.retry_after),
        (Kind::Tokens, Duration::from_secs(60))
    );
    let r = refused(local.take(0, &both, 0));
    assert_eq!(
        (r.kind, r.retry_after),
        (Kind::Requests, Duration::from_secs(30))
    );
}

#[test]
fn a_request_larger_than_the_limit_needs_an_empty_counter_and_leaves_debt() {
    let mut local = Local::default();
    let c = [charge("tpm", "a", None, Some(1000))];
    // Alone, it is admitted (it could never fit otherwise)...
    assert!(local.take(0, &c, 3000).is_ok());
    // ...and the 2000 past the limit hold the next request back two more minutes.
    let r = refused(local.take(0, &c, 1));
    assert_eq!(r.retry_after, Duration::from_micros(120 * SEC + 60_000));
    assert!(local.take(120 * SEC, &c, 1).is_err());
    assert!(local.take(120 * SEC + 60_000, &c, 1).is_ok());
    // After a small request, a large one waits for the counter to be empty again.
    let r = refused(local.take(120 * SEC + 60_000, &c, 5000));
    assert_eq!(r.retry_after, Duration::from_secs(60));
}

#[test]
fn usage_settles_the_estimate_both_ways() {
    let mut local = Local::default();
    let c = [charge("tpm", "a", Some(100), Some(1000))];
    assert!(local.take(0, &c, 100).is_ok());
    // The answer had 800 output tokens: 900 used, 800 more than estimated.
    local.adjust(0, &c, 800);
    let r = refused(local.take(0, &c, 200));
    assert_eq!(r.kind, Kind::Tokens);
    assert_eq!(r.retry_after, Duration::from_secs(6));
    // A request that used less than its estimate gives the rest back, never below empty.
    local.adjust(0, &c, -850);
    assert!(local.take(0, &c, 950).is_ok());
    local.adjust(0, &c, -100_000);
    assert!(local.take(0, &c, 1000).is_ok());
    // Settling touches no request counter: 3 requests so far of 100.
    for _ in 0..97 {
        assert!(
            local
                .take(0, &[charge("tpm", "a", Some(100), None)], 0)
                .is_ok()
        );
    }
    assert!(
        local
            .take(0, &[charge("tpm", "a", Some(100), None)], 0)
            .is_err()
    );
}

#[test]
fn a_new_rate_applies_to_the_counts_kept() {
    let ten = || {
        let mut local = Local::default();
        for _ in 0..10 {
            assert!(
                local
                    .take(0, &[charge("l", "a", Some(10), None)], 0)
                    .is_ok()
            );
        }
        local
    };
    // Reloaded with rpm 20: ten more fit at once.
    let mut raised = ten();
    let twenty = [charge("l", "a", Some(20), None)];
    for _ in 0..10 {
        assert!(raised.take(0, &twenty, 0).is_ok());
    }
    assert!(raised.take(0, &twenty, 0).is_err());
    // With rpm 5, the ten counted drain at 5 a minute: the next fits when 6 have drained.
    let r = refused(ten().take(0, &[charge("l", "a", Some(5), None)], 0));
    assert_eq!(r.retry_after, Duration::from_secs(72));
}

#[test]
fn a_limit_that_counts_something_else_starts_over() {
    let mut local = Local::default();
    assert!(local.take(0, &[charge("l", "a", Some(1), None)], 0).is_ok());
    let team = Charge {
        per: LimitPer::Team,
        ..charge("l", "a", Some(1), None)
    };
    assert!(local.take(0, std::slice::from_ref(&team), 0).is_ok());
    assert!(local.take(0, &[team], 0).is_err());
    assert_eq!(local.entries, 1);
}

#[test]
fn idle_counters_are_swept_so_memory_follows_recent_traffic() {
    let mut local = Local::default();
    for i in 0..5000 {
        let c = [charge("per-user", &format!("user-{i}"), Some(60), None)];
        assert!(local.take(i * 1000, &c, 0).is_ok());
    }
    // Each counter drains in a second; at most the last second's users (1000) plus one
    // sweep's growth are kept.
    assert!(local.entries <= 2 * MIN_SWEEP, "{} counters", local.entries);
    assert_eq!(
        local.entries,
        local.limits.values().map(|l| l.values.len()).sum::<usize>()
    );
    // A busy counter survives the sweeps: its count still holds.
    let busy = [charge("per-user", "busy", Some(2), None)];
    assert!(local.take(5_000_000, &busy, 0).is_ok());
    assert!(local.take(5_000_000, &busy, 0).is_ok());
    for i in 0..5000 {
        let c = [charge("per-user", &format!("other-{i}"), Some(60), None)];
        assert!(local.take(5_000_000 + i, &c, 0).is_ok());
    }
    assert!(local.take(5_010_000, &busy, 0).is_err());
}

#[tokio::test]
async fn the_limiter_charges_settles_and_keeps_counts_across_calls() {
    let limiter = RateLimiter::new();
    let c = vec![charge("tpm", "a", None, Some(1000))];
    let grant = limiter.acquire(c.clone(), 400, None).await.unwrap();
    limiter.settle(grant, 950);
    let r = limiter.acquire(c.clone(), 100, None).await.unwrap_err();
    assert_eq!(
        (r.limit.as_str(), r.kind, r.max),
        ("tpm", Kind::Tokens, 1000)
    );
    assert!((3..=4).contains(&r.retry_after_secs()), "{r:?}");
    // Without token limits, or with nothing to correct, settling changes nothing.
    let rpm = vec![charge("rpm", "a", Some(1), None)];
    let grant = limiter.acquire(rpm.clone(), 0, None).await.unwrap();
    limiter.settle(grant, 10_000);
    assert!(limiter.acquire(rpm, 0, None).await.is_err());
}
