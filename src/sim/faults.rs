//! Per-request behaviour requested through headers (the proxy forwards unknown headers).
//!
//! - `x-sim-fault`: comma-separated directives:
//!   `status=N` (reply N with a wire-format error body), `no-usage` (omit every usage object),
//!   `reset-after=K` (send K content events, then abort the connection mid-body),
//!   `delay-ms=N` (hold the response header back N ms: a provider that hangs).
//! - `x-sim-output-tokens: N`: generate exactly N visible output tokens.
//! - `x-sim-token-interval-ms: N`: pause N ms between streamed events.
//!
//! Malformed values are ignored rather than rejected, so a typo shows up as "no fault".

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

pub(crate) const FAULT: &str = "x-sim-fault";
pub(crate) const OUTPUT_TOKENS: &str = "x-sim-output-tokens";
pub(crate) const TOKEN_INTERVAL: &str = "x-sim-token-interval-ms";

/// Keeps a stray huge header value from making the simulator allocate gigabytes.
const MAX_OUTPUT_TOKENS: u64 = 100_000;
const MAX_INTERVAL_MS: u64 = 60_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    pub status: Option<StatusCode>,
    pub no_usage: bool,
    pub reset_after: Option<usize>,
    pub header_delay: Option<Duration>,
    pub output_tokens: Option<u64>,
    pub token_interval: Option<Duration>,
}

impl Directives {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());

        let mut d = Directives {
            output_tokens: number(OUTPUT_TOKENS).map(|n| n.min(MAX_OUTPUT_TOKENS)),
            token_interval: number(TOKEN_INTERVAL)
                .map(|ms| Duration::from_millis(ms.min(MAX_INTERVAL_MS))),
            ..Directives::default()
        };
        for value in headers
            .get_all(FAULT)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for item in value.split([',', ';']).map(str::trim) {
                d.apply(item);
            }
        }
        d
    }

    fn apply(&mut self, item: &str) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        match (key.to_ascii_lowercase().as_str(), value) {
            ("status", Some(v)) => {
                // Only error statuses make sense as a fault.
                self.status = v
                    .parse::<u16>()
                    .ok()
                    .filter(|code| (400..=599).contains(code))
                    .and_then(|code| StatusCode::from_u16(code).ok());
            }
            ("no-usage", None) => self.no_usage = true,
            ("reset-after", Some(v)) => self.reset_after = v.parse().ok(),
            ("delay-ms", Some(v)) => {
                self.header_delay = v
                    .parse::<u64>()
                    .ok()
                    .map(|ms| Duration::from_millis(ms.min(MAX_INTERVAL_MS)))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Directives {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        Directives::from_headers(&headers)
    }

    #[test]
    fn parses_combined_directives() {
        let d = parse(&[
            (FAULT, "no-usage, reset-after=3"),
            (OUTPUT_TOKENS, "12"),
            (TOKEN_INTERVAL, "25"),
        ]);
        assert!(d.no_usage);
        assert_eq!(d.reset_after, Some(3));
        assert_eq!(d.output_tokens, Some(12));
        assert_eq!(d.token_interval, Some(Duration::from_millis(25)));
        assert_eq!(d.status, None);
    }

    #[test]
    fn ignores_malformed_values() {
        let d = parse(&[
            (FAULT, "status=abc; reset-after=-1; bogus"),
            (OUTPUT_TOKENS, "many"),
        ]);
        assert_eq!(d, Directives::default());
        assert_eq!(parse(&[(FAULT, "status=200")]).status, None);
        assert_eq!(
            parse(&[(FAULT, "status=529")]).status.map(|s| s.as_u16()),
            Some(529)
        );
    }
}
