//! What a webhook receives: a Slack message, or the alert as signed JSON.
//!
//! The JSON body's field names are part of the interface (receivers parse them); money is a
//! decimal string of exact USD and times are RFC 3339 in UTC. A JSON webhook also gets
//! `x-tollgate-timestamp` (Unix seconds) and `x-tollgate-signature`: `sha256=` and the hex
//! HMAC-SHA256, keyed with the webhook's secret, of `"<timestamp>.<body>"`.

use super::{Alert, AlertKind};
use crate::config::Period;
use crate::money::{NANOS_PER_USD, NanoUsd, thousands};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::collections::BTreeMap;

pub const TIMESTAMP_HEADER: &str = "x-tollgate-timestamp";
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

/// The body of a Slack-compatible incoming webhook.
pub fn slack_body(alert: &Alert) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "text": text(alert) })).expect("text serializes")
}

/// The body of a JSON webhook. `id` names the alert, the same on every retry.
pub fn json_body(id: &str, alert: &Alert) -> Vec<u8> {
    let (percent, projected_usd, limit_reached_on) = match alert.kind {
        AlertKind::Threshold { percent } => (Some(percent), None, None),
        AlertKind::Forecast { projected, on } => (None, Some(projected), Some(on)),
    };
    let payload = Payload {
        id,
        kind: alert.kind.name(),
        budget: &alert.budget,
        percent,
        projected_usd,
        limit_reached_on,
        spend_usd: alert.spend,
        limit_usd: alert.limit,
        period: alert.period.as_str(),
        period_start: rfc3339(alert.period_start),
        resets_at: rfc3339(alert.resets_at),
        scope: alert
            .scope
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        at: rfc3339(alert.at),
        text: text(alert),
    };
    serde_json::to_vec(&payload).expect("payload serializes")
}

/// Every field is always present (`null` where it does not apply), so receivers can rely
/// on the shape.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    /// `threshold` or `forecast`.
    kind: &'static str,
    budget: &'a str,
    percent: Option<u32>,
    projected_usd: Option<NanoUsd>,
    limit_reached_on: Option<NaiveDate>,
    spend_usd: NanoUsd,
    limit_usd: NanoUsd,
    period: &'static str,
    period_start: String,
    resets_at: String,
    scope: BTreeMap<&'a str, &'a str>,
    at: String,
    text: String,
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `"<timestamp>.<body>"`).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One or two readable sentences saying what happened, to whom, and until when.
pub fn text(alert: &Alert) -> String {
    let name = escape(&alert.budget);
    let (adjective, noun) = period_words(alert.period);
    let spend = usd(alert.spend);
    let limit = usd(alert.limit);
    let start = minute(alert.period_start);
    let what = match alert.kind {
        AlertKind::Threshold { percent } => format!(
            "Budget *{name}* has reached {percent}% of its {adjective} limit: {spend} of {limit} spent in the {noun} from {start}."
        ),
        AlertKind::Forecast { projected, on } => format!(
            "Budget *{name}* is projected to reach its {adjective} limit of {limit} on {on}: {} projected for the {noun} from {start}, {spend} spent so far.",
            usd(projected)
        ),
    };
    let scope = if alert.scope.is_empty() {
        "all requests".to_string()
    } else {
        let fields: Vec<String> = alert
            .scope
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
            .collect();
        fields.join(", ")
    };
    format!(
        "{what}\nResets {}. Scope: {scope}.",
        minute(alert.resets_at)
    )
}

fn period_words(p: Period) -> (&'static str, &'static str) {
    match p {
        Period::Day => ("daily", "day"),
        Period::Week => ("weekly", "week"),
        Period::Month => ("monthly", "month"),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Slack reads `&`, `<` and `>` as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Dollars for people: cents with thousands separators, rounded half away from zero;
/// amounts under a cent exactly, so a small spend never reads as `$0.00`.
fn usd(n: NanoUsd) -> String {
    let sign = if n.0 < 0 { "-" } else { "" };
    let abs = n.0.unsigned_abs();
    let nanos_per_cent = NANOS_PER_USD as u64 / 100;
    if abs != 0 && abs < nanos_per_cent {
        let exact = NanoUsd(abs as i64).to_string();
        return format!("{sign}${}", exact.trim_end_matches('0'));
    }
    let cents = (abs + nanos_per_cent / 2) / nanos_per_cent;
    format!("{sign}${}.{:02}", thousands(cents / 100), cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn threshold() -> Alert {
        Alert {
            budget: "search <prod> & co".into(),
            kind: AlertKind::Threshold { percent: 80 },
            period: Period::Month,
            period_start: at(2025, 6, 1, 0),
            resets_at: at(2025, 7, 1, 0),
            spend: NanoUsd(1_234_567_891_234),
            limit: NanoUsd(1_500_000_000_000),
            scope: vec![
                ("team".into(), "search".into()),
                ("env".into(), "prod".into()),
            ],
            at: at(2025, 6, 24, 13),
        }
    }

    fn forecast() -> Alert {
        Alert {
            budget: "daily-eval".into(),
            kind: AlertKind::Forecast {
                projected: NanoUsd(45_500_000_000),
                on: NaiveDate::from_ymd_opt(2025, 6, 3).unwrap(),
            },
            period: Period::Week,
            period_start: at(2025, 6, 2, 0),
            resets_at: at(2025, 6, 9, 0),
            spend: NanoUsd(4_000_000),
            limit: NanoUsd(30_000_000_000),
            scope: vec![],
            at: at(2025, 6, 2, 9),
        }
    }

    #[test]
    fn usd_reads_as_people_write_it() {
        assert_eq!(usd(NanoUsd(0)), "$0.00");
        assert_eq!(usd(NanoUsd(4_500_000)), "$0.0045");
        assert_eq!(usd(NanoUsd(9_999_999)), "$0.009999999");
        assert_eq!(usd(NanoUsd(14_999_999)), "$0.01");
        assert_eq!(usd(NanoUsd(15_000_000)), "$0.02");
        assert_eq!(usd(NanoUsd(999_994_999)), "$1.00");
        assert_eq!(usd(NanoUsd(1_234_567_891_234)), "$1,234.57");
        assert_eq!(usd(NanoUsd(100_000_000_000_000)), "$100,000.00");
        assert_eq!(usd(NanoUsd(-2_500_000_000)), "-$2.50");
    }

    #[test]
    fn slack_text_says_who_how_much_and_until_when() {
        let body: serde_json::Value = serde_json::from_slice(&slack_body(&threshold())).unwrap();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        assert_eq!(
            body["text"],
            "Budget *search &lt;prod&gt; &amp; co* has reached 80% of its monthly limit: \
             $1,234.57 of $1,500.00 spent in the month from 2025-06-01 00:00 UTC.\n\
             Resets 2025-07-01 00:00 UTC. Scope: team=search, env=prod."
        );
        assert_eq!(
            text(&forecast()),
            "Budget *daily-eval* is projected to reach its weekly limit of $30.00 on 2025-06-03: \
             $45.50 projected for the week from 2025-06-02 00:00 UTC, $0.004 spent so far.\n\
             Resets 2025-06-09 00:00 UTC. Scope: all requests."
        );
    }

    #[test]
    fn json_payload_has_stable_fields_exact_money_and_utc_times() {
        let v: serde_json::Value =
            serde_json::from_slice(&json_body("0197-abc", &threshold())).unwrap();
        assert_eq!(v["id"], "0197-abc");
        assert_eq!(v["kind"], "threshold");
        assert_eq!(v["budget"], "search <prod> & co");
        assert_eq!(v["percent"], 80);
        assert_eq!(v["projected_usd"], serde_json::Value::Null);
        assert_eq!(v["limit_reached_on"], serde_json::Value::Null);
        assert_eq!(v["spend_usd"], "1234.567891234");
        assert_eq!(v["limit_usd"], "1500.000000000");
        assert_eq!(v["period"], "month");
        assert_eq!(v["period_start"], "2025-06-01T00:00:00Z");
        assert_eq!(v["resets_at"], "2025-07-01T00:00:00Z");
        assert_eq!(v["at"], "2025-06-24T13:00:00Z");
        assert_eq!(
            v["scope"],
            serde_json::json!({"team": "search", "env": "prod"})
        );
        assert_eq!(v["text"], text(&threshold()));
        assert_eq!(v.as_object().unwrap().len(), 14);

        let f: serde_json::Value = serde_json::from_slice(&json_body("id-2", &forecast())).unwrap();
        assert_eq!(f["kind"], "forecast");
        assert_eq!(f["percent"], serde_json::Value::Null);
        assert_eq!(f["projected_usd"], "45.500000000");
        assert_eq!(f["limit_reached_on"], "2025-06-03");
        assert_eq!(f["spend_usd"], "0.004000000");
        assert_eq!(f["scope"], serde_json::json!({}));
        assert_eq!(f.as_object().unwrap().len(), 14);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let (ts, body) = (1_750_000_000, br#"{"id":"x"}"#);
        let sig = signature(b"s3cret", ts, body);
        // An independent HMAC (RFC 2104 from SHA-256 alone) of the same message.
        let message = [format!("{ts}.").as_bytes(), &body[..]].concat();
        assert_eq!(sig, format!("sha256={}", rfc2104(b"s3cret", &message)));
        // RFC 4231 test case 2 checks the reference itself.
        assert_eq!(
            rfc2104(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(
            sig,
            signature(b"s3cret", ts + 1, body),
            "timestamp is signed"
        );
        assert_ne!(sig, signature(b"other", ts, body), "key is used");
    }

    /// HMAC-SHA256 written out from its definition, to check the library's use.
    fn rfc2104(key: &[u8], message: &[u8]) -> String {
        use sha2::Digest;
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::digest([pad(0x36), message.to_vec()].concat());
        hex::encode(Sha256::digest([pad(0x5c), inner.to_vec()].concat()))
    }
}
