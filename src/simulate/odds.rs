//! Escalation rates as exact fractions, and the expected cost of a cascade.

use crate::money::NanoUsd;
use std::fmt;
use std::str::FromStr;

/// A probability `num / den`, exact: an observed count of rejections over judged answers, or
/// a decimal given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    num: u64,
    den: u64,
}

impl Rate {
    /// `num / den`; `None` unless `0 <= num <= den` and `den > 0`.
    pub fn new(num: u64, den: u64) -> Option<Rate> {
        (den > 0 && num <= den).then(|| {
            let g = gcd(u128::from(num), u128::from(den)) as u64;
            Rate {
                num: num / g,
                den: den / g,
            }
        })
    }
}

impl FromStr for Rate {
    type Err = String;

    /// A decimal between 0 and 1 with at most nine places: `0.2`, `0.125`, `1`.
    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate {s:?}: a decimal from 0 to 1, e.g. 0.2");
        let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 {
            return Err(bad());
        }
        let den = 10u64.pow(frac.len() as u32);
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let frac: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        int.checked_mul(den)
            .and_then(|n| n.checked_add(frac))
            .and_then(|n| Rate::new(n, den))
            .ok_or_else(bad)
    }
}

impl fmt::Display for Rate {
    /// Two decimal places, rounded half up: `0.14`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hundredths = round(u128::from(self.num) * 100, u128::from(self.den));
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

/// The expected cost of a cascade whose step `i` would cost `costs[i]` and escalates with
/// probability `rates[i]` (the last step never does, so `rates` has one entry fewer):
/// `Σ P(reach i) × costs[i]`, with `P(reach 1) = 1` and `P(reach i+1) = P(reach i) ×
/// rates[i]`. Computed as an exact fraction and rounded half up to the nano once. Should
/// the fraction outgrow 128 bits (rates with huge coprime denominators), the inner steps are
/// rounded to the nano as they are folded in: an error of at most a nano per step.
pub fn expected_cost(costs: &[NanoUsd], rates: &[Rate]) -> NanoUsd {
    debug_assert_eq!(rates.len() + 1, costs.len().max(1));
    let Some((last, rest)) = costs.split_last() else {
        return NanoUsd::ZERO;
    };
    let nanos = |c: &NanoUsd| c.0.max(0) as u128;
    // Folded from the last step back: V = c_i + e_i × V, kept as a / b.
    let (mut a, mut b) = (nanos(last), 1u128);
    for (c, e) in rest.iter().zip(rates).rev() {
        let (c, num, den) = (nanos(c), u128::from(e.num), u128::from(e.den));
        let exact = den.checked_mul(b).and_then(|d| {
            let n = c.checked_mul(d)?.checked_add(num.checked_mul(a)?)?;
            Some((n, d))
        });
        (a, b) = match exact {
            Some((n, d)) => {
                let g = gcd(n, d);
                (n / g, d / g)
            }
            None => (c + round(num * round(a, b), den), 1),
        };
    }
    NanoUsd(i64::try_from(round(a, b)).unwrap_or(i64::MAX))
}

/// `n / d` rounded half up.
fn round(n: u128, d: u128) -> u128 {
    n / d + u128::from(n % d >= d - d / 2)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn rates_parse_exactly_and_refuse_what_is_not_a_probability() {
        assert_eq!(rate("0.2"), Rate::new(1, 5).unwrap());
        assert_eq!(rate(".25"), Rate::new(1, 4).unwrap());
        assert_eq!(rate("1"), Rate::new(1, 1).unwrap());
        assert_eq!(rate("0"), Rate::new(0, 1).unwrap());
        assert_eq!(rate("0.000000001"), Rate::new(1, 1_000_000_000).unwrap());
        for bad in [
            "",
            ".",
            "1.5",
            "-0.1",
            "0.1234567891",
            "2",
            "x",
            "0.2.1",
            " ",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!(Rate::new(17, 120).unwrap().to_string(), "0.14");
        assert_eq!(Rate::new(1, 8).unwrap().to_string(), "0.13");
        assert_eq!(rate("1").to_string(), "1.00");
        assert_eq!(Rate::new(3, 2), None);
        assert_eq!(Rate::new(0, 0), None);
    }

    #[test]
    fn expected_cost_weights_each_step_by_its_chance_of_being_reached() {
        let n = |v: i64| NanoUsd(v);
        // One step: its cost.
        assert_eq!(expected_cost(&[n(700)], &[]), n(700));
        // 1000 + 1/4 × 10000.
        assert_eq!(
            expected_cost(&[n(1000), n(10_000)], &[rate("0.25")]),
            n(3500)
        );
        // 100 + 1/3 × 1000 + 1/3 × 1/2 × 6000 = 100 + 333.33… + 1000, rounded once.
        let third = Rate::new(1, 3).unwrap();
        assert_eq!(
            expected_cost(&[n(100), n(1000), n(6000)], &[third, rate("0.5")]),
            n(1433)
        );
        // Rounding happens once, half up: 1/3 × 2 = 0.67 → 1; twice 1/3 × 1 would give 0.
        assert_eq!(expected_cost(&[n(0), n(2)], &[third]), n(1));
        assert_eq!(expected_cost(&[n(0), n(1)], &[rate("0.5")]), n(1));
        // Never escalating costs the first step; always escalating costs them all.
        assert_eq!(expected_cost(&[n(5), n(50)], &[rate("0")]), n(5));
        assert_eq!(expected_cost(&[n(5), n(50)], &[rate("1")]), n(55));
    }

    #[test]
    fn huge_denominators_fall_back_to_rounding_per_step() {
        // Coprime denominators near 2^64 cannot be multiplied exactly in 128 bits.
        let p = 18_446_744_073_709_551_557u64; // a prime
        let q = 18_446_744_073_709_551_533u64; // another
        let e1 = Rate::new(p / 2, p).unwrap();
        let e2 = Rate::new(q / 2, q).unwrap();
        let cost = NanoUsd(1_000_000_000_000);
        let got = expected_cost(&[cost, cost, cost], &[e1, e2]);
        // ≈ c × (1 + 1/2 + 1/4), within a few nanos.
        assert!((got.0 - 1_750_000_000_000).abs() < 10, "{got:?}");
    }
}
