//! Calendar periods in a time zone: where the one holding an instant starts and ends.

use crate::config::Period;
use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The period of kind `period`, in `tz`, that holds `at`: its start and its end (the next
/// period's start), both as UTC instants.
pub fn bounds(period: Period, tz: Tz, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let local = at.with_timezone(&tz).date_naive();
    let first = match period {
        Period::Day => local,
        Period::Week => local - Duration::days(i64::from(local.weekday().num_days_from_monday())),
        Period::Month => local.with_day(1).expect("day 1 exists"),
    };
    let next = match period {
        Period::Day => first + Duration::days(1),
        Period::Week => first + Duration::days(7),
        Period::Month => next_month(first),
    };
    (midnight(tz, first), midnight(tz, next))
}

fn next_month(first: NaiveDate) -> NaiveDate {
    let (y, m) = if first.month() == 12 {
        (first.year() + 1, 1)
    } else {
        (first.year(), first.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).expect("the first of a month exists")
}

/// The first instant of `day` in `tz`. Where a DST change skips midnight, the day starts at
/// the first local time that exists; where midnight happens twice, at the earlier one.
fn midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..4 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => return d.with_timezone(&Utc),
            // Skipped by a DST jump (never more than a few hours): try later.
            LocalResult::None => t += Duration::minutes(30),
        }
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn days_weeks_and_months_in_utc() {
        let at = utc("2026-11-29T15:00:00Z"); // a Sunday
        assert_eq!(
            bounds(Period::Day, chrono_tz::UTC, at),
            (utc("2026-11-29T00:00:00Z"), utc("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            bounds(Period::Week, chrono_tz::UTC, at),
            (utc("2026-11-23T00:00:00Z"), utc("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            bounds(Period::Month, chrono_tz::UTC, utc("2026-12-31T23:59:59Z")),
            (utc("2026-12-01T00:00:00Z"), utc("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn periods_follow_the_local_calendar() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 23:30 UTC on Nov 30 is already December 1 in Paris (UTC+1).
        let (start, end) = bounds(Period::Month, paris, utc("2026-11-30T23:30:00Z"));
        assert_eq!(start, utc("2026-11-30T23:00:00Z"));
        assert_eq!(end, utc("2026-12-31T23:00:00Z"));
        // India is UTC+5:30: its days start at half past the hour in UTC.
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let (start, _) = bounds(Period::Day, kolkata, utc("2026-11-29T20:00:00Z"));
        assert_eq!(start, utc("2026-11-29T18:30:00Z"));
    }

    #[test]
    fn a_day_of_a_dst_change_is_23_or_25_hours() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let (start, end) = bounds(Period::Day, paris, utc("2026-03-29T12:00:00Z"));
        assert_eq!((end - start).num_hours(), 23);
        let (start, end) = bounds(Period::Day, paris, utc("2026-10-25T12:00:00Z"));
        assert_eq!((end - start).num_hours(), 25);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_its_first_hour() {
        // Santiago (Chile) moves clocks from 00:00 to 01:00 on the first Sunday of September.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (start, _) = bounds(Period::Day, santiago, utc("2026-09-06T12:00:00Z"));
        assert_eq!(
            start.with_timezone(&santiago).format("%H:%M").to_string(),
            "01:00"
        );
    }
}
