//! Exact money: integer nano-USD. Never summed as floating point.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// An amount in nano-USD (1e-9 USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NanoUsd(pub i64);

pub const NANOS_PER_USD: i64 = 1_000_000_000;

impl NanoUsd {
    pub const ZERO: NanoUsd = NanoUsd(0);

    /// Parses a decimal USD string such as `"2.5"`, `"0.000000075"` or `"3"` exactly.
    /// More than nine decimals are rounded half away from zero.
    pub fn parse_usd(s: &str) -> Option<NanoUsd> {
        let s = s.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let int: i64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut frac: i64 = 0;
        for (i, b) in frac_part.bytes().take(9).enumerate() {
            frac += i64::from(b - b'0') * 10_i64.pow(8 - i as u32);
        }
        if frac_part.len() > 9 && frac_part.as_bytes()[9] >= b'5' {
            frac += 1;
        }
        let v = int.checked_mul(NANOS_PER_USD)?.checked_add(frac)?;
        Some(NanoUsd(if neg { -v } else { v }))
    }

    /// Converts a price read as a float from a config file. Prices carry at most nine
    /// decimals, so rounding to the nearest nano is exact for every real price.
    pub fn from_f64_usd(v: f64) -> Option<NanoUsd> {
        if !v.is_finite() || v.abs() > 9.0e9 {
            return None;
        }
        Some(NanoUsd((v * NANOS_PER_USD as f64).round() as i64))
    }

    /// `tokens × price_per_million / 1e6`, rounded half up to the nano.
    pub fn per_million(tokens: u64, price_per_million: NanoUsd) -> NanoUsd {
        let num = i128::from(tokens) * i128::from(price_per_million.0);
        let q = (num + 500_000) / 1_000_000;
        NanoUsd(q.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// An integer grouped in thousands, as amounts are written for people: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for NanoUsd {
    /// Formats as an exact decimal with nine places, e.g. `0.000123450`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:09}",
            abs / NANOS_PER_USD as u64,
            abs % NANOS_PER_USD as u64
        )
    }
}

impl Add for NanoUsd {
    type Output = NanoUsd;
    fn add(self, o: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(o.0))
    }
}

impl AddAssign for NanoUsd {
    fn add_assign(&mut self, o: NanoUsd) {
        *self = *self + o;
    }
}

impl Sum for NanoUsd {
    fn sum<I: Iterator<Item = NanoUsd>>(iter: I) -> NanoUsd {
        iter.fold(NanoUsd::ZERO, Add::add)
    }
}

/// Serialized as a decimal string (`"0.000123450"`) so no reader turns it into a float.
impl Serialize for NanoUsd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NanoUsd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NanoUsd::parse_usd(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid USD amount {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        assert_eq!(NanoUsd::parse_usd("2.5"), Some(NanoUsd(2_500_000_000)));
        assert_eq!(NanoUsd::parse_usd("0.000000075"), Some(NanoUsd(75)));
        assert_eq!(NanoUsd::parse_usd(".5"), Some(NanoUsd(500_000_000)));
        assert_eq!(NanoUsd::parse_usd("abc"), None);
        assert_eq!(NanoUsd(123_450).to_string(), "0.000123450");
        assert_eq!(NanoUsd(-5).to_string(), "-0.000000005");
        assert_eq!(NanoUsd::from_f64_usd(0.15), Some(NanoUsd(150_000_000)));
    }

    #[test]
    fn per_million_rounds_half_up() {
        // 3 tokens at $0.15/M = 0.45 micro-USD = 450 nano
        assert_eq!(NanoUsd::per_million(3, NanoUsd(150_000_000)), NanoUsd(450));
        // 1 token at $0.0000005/M = 0.0005 nano -> 0
        assert_eq!(NanoUsd::per_million(1, NanoUsd(500)), NanoUsd(0));
        assert_eq!(
            NanoUsd::per_million(1_000_000, NanoUsd(2_500_000_000)),
            NanoUsd(2_500_000_000)
        );
    }
}

/// A USD amount as a config file writes it: a number (`2.5`) or a decimal string (`"2.50"`),
/// read exactly into nano-USD.
#[derive(Debug, Clone, Copy)]
pub struct Usd(pub NanoUsd);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UsdVisitor;

        impl Visitor<'_> for UsdVisitor {
            type Value = Usd;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a USD amount such as 2.5 or \"2.50\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Usd, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(NANOS_PER_USD))
                    .map(|n| Usd(NanoUsd(n)))
                    .ok_or_else(|| E::custom(format!("USD amount {v} is too large")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Usd, E> {
                v.checked_mul(NANOS_PER_USD)
                    .map(|n| Usd(NanoUsd(n)))
                    .ok_or_else(|| E::custom(format!("USD amount {v} is too large")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Usd, E> {
                NanoUsd::from_f64_usd(v)
                    .map(Usd)
                    .ok_or_else(|| E::custom(format!("invalid USD amount {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Usd, E> {
                NanoUsd::parse_usd(v)
                    .map(Usd)
                    .ok_or_else(|| E::custom(format!("invalid USD amount {v:?}")))
            }
        }

        d.deserialize_any(UsdVisitor)
    }
}
