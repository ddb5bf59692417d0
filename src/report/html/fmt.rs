//! Text for the page: HTML escaping and exact number formatting.

use crate::money::{NANOS_PER_USD, NanoUsd};

/// `s` safe inside element text and inside double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An attribution value as a cell shows it: the empty value is `(none)`.
pub fn label(s: &str) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        esc(s)
    }
}

/// Exact dollars, grouped in thousands, with at least cents and no trailing zeros beyond
/// them: `$1,234.50`, `$0.00012345`, `-$3.00`.
pub fn usd(v: NanoUsd) -> String {
    let sign = if v.0 < 0 { "-" } else { "" };
    let abs = v.0.unsigned_abs();
    let nanos = format!("{:09}", abs % NANOS_PER_USD as u64);
    let frac = nanos.trim_end_matches('0');
    let frac = if frac.len() < 2 { &nanos[..2] } else { frac };
    format!("{sign}${}.{frac}", count(abs / NANOS_PER_USD as u64))
}

pub use crate::money::thousands as count;

/// `part` as a percentage of `whole` with one decimal, rounded half up; `-` when `whole`
/// is not positive.
pub fn percent(part: i128, whole: i128) -> String {
    if whole <= 0 {
        return "-".into();
    }
    let tenths = (part.abs() * 2000 + whole) / (whole * 2);
    let sign = if part < 0 && tenths > 0 { "-" } else { "" };
    format!("{sign}{}.{}%", tenths / 10, tenths % 10)
}

/// `part / whole` clamped to 0..=1, for drawing only (never for money).
pub fn fraction(part: i128, whole: i128) -> f64 {
    if whole <= 0 || part <= 0 {
        return 0.0;
    }
    (part as f64 / whole as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_to_the_nano_with_at_least_cents() {
        assert_eq!(usd(NanoUsd(0)), "$0.00");
        assert_eq!(usd(NanoUsd(1)), "$0.000000001");
        assert_eq!(usd(NanoUsd(123_450)), "$0.00012345");
        assert_eq!(usd(NanoUsd(1_234_500_000_000)), "$1,234.50");
        assert_eq!(usd(NanoUsd(1_000_000_001)), "$1.000000001");
        assert_eq!(usd(NanoUsd(-3_000_000_000)), "-$3.00");
        assert_eq!(usd(NanoUsd(i64::MIN)), "-$9,223,372,036.854775808");
    }

    #[test]
    fn counts_and_percentages() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(2, 3), "66.7%");
        assert_eq!(percent(1, 2000), "0.1%");
        assert_eq!(percent(5, 0), "-");
        assert_eq!(percent(-1, 4), "-25.0%");
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(label(""), "(none)");
    }
}
