//! The trajectory of spend: spend per local day, and the period-end projection from the
//! rate of the last `alerts.forecast_days` days.

use crate::config::Spend;
use crate::money::NanoUsd;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;

/// The shortest time a rate is measured over.
const MIN_WINDOW: Duration = Duration::days(1);

/// Days of history kept: enough for the longest forecast window of a month's budget.
const KEEP_DAYS: i64 = 62;

/// Spend per local day.
#[derive(Debug, Clone, Default)]
pub struct DailySpend {
    days: BTreeMap<NaiveDate, NanoUsd>,
}

impl DailySpend {
    pub fn from_days(days: Vec<(NaiveDate, NanoUsd)>) -> DailySpend {
        let mut d = DailySpend::default();
        for (day, amount) in days {
            *d.days.entry(day).or_default() += amount;
        }
        d
    }

    pub fn add(&mut self, at: DateTime<Utc>, tz: Tz, amount: NanoUsd) {
        if amount == NanoUsd::ZERO {
            return;
        }
        let day = at.with_timezone(&tz).date_naive();
        *self.days.entry(day).or_default() += amount;
        let oldest = day - Duration::days(KEEP_DAYS);
        self.days.retain(|d, _| *d >= oldest);
    }

    /// Spend in the window of `days` local days ending with `now`'s day, and the window's
    /// length so far. The window starts no earlier than the first day with any spend, so a
    /// fresh deployment is not averaged with days it never saw. Spend dated after today (a
    /// record from a clock running ahead) is not in it.
    fn window(&self, now: DateTime<Utc>, tz: Tz, days: u32) -> (NanoUsd, Duration) {
        let today = now.with_timezone(&tz).date_naive();
        let mut first = today - Duration::days(i64::from(days.max(1)) - 1);
        if let Some((&seen, _)) = self.days.range(first..=today).next() {
            first = first.max(seen);
        }
        let spent = self.days.range(first..=today).map(|(_, v)| *v).sum();
        let from = tz
            .from_local_datetime(&first.and_hms_opt(0, 0, 0).expect("midnight"))
            .earliest()
            .map_or(now - Duration::days(1), |d| d.with_timezone(&Utc));
        // At least a day: a few minutes of a new period's spend (or of a fresh deployment)
        // would make one request look like a rate that passes any budget.
        (spent, (now - from).max(MIN_WINDOW))
    }
}

/// The period's projected spend at `end`: spend so far plus the recent rate over the time
/// left. Integer arithmetic: a projection, but in the same units as the money.
pub fn project(
    daily: &DailySpend,
    total: NanoUsd,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
    spend: &Spend,
) -> NanoUsd {
    let (recent, window) = daily.window(now, spend.time_zone, spend.alerts.forecast_days);
    let left = (end - now).max(Duration::zero());
    let more = i128::from(recent.0) * i128::from(left.num_seconds())
        / i128::from(window.num_seconds().max(1));
    NanoUsd(
        total
            .0
            .saturating_add(i64::try_from(more).unwrap_or(i64::MAX)),
    )
}

/// The local day the spend reaches `amount` at the recent rate, if before `end`.
pub fn reaches(
    daily: &DailySpend,
    total: NanoUsd,
    amount: NanoUsd,
    now: DateTime<Utc>,
    end: DateTime<Utc>,
    spend: &Spend,
) -> Option<NaiveDate> {
    let tz = spend.time_zone;
    let (recent, window) = daily.window(now, tz, spend.alerts.forecast_days);
    if recent.0 <= 0 {
        return None;
    }
    let need = i128::from(amount.0 - total.0).max(0);
    let secs = need * i128::from(window.num_seconds()) / i128::from(recent.0);
    let at = now + Duration::seconds(i64::try_from(secs).ok()?);
    (at < end).then(|| at.with_timezone(&tz).date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_dated_after_today_is_not_in_the_window() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let tomorrow = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let daily = DailySpend::from_days(vec![(tomorrow, NanoUsd(5_000_000_000))]);
        let spend = Spend::default();
        assert_eq!(
            project(&daily, NanoUsd::ZERO, end, now, &spend),
            NanoUsd::ZERO
        );
        assert_eq!(
            reaches(&daily, NanoUsd::ZERO, NanoUsd(1), now, end, &spend),
            None
        );
    }
}
