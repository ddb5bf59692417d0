//! `POST /tollgate/v1/outcomes`: a client reports the business result of a request or a
//! workflow, answered on the proxy port before admission. It is not an LLM call: no
//! request record, no rate limit, nothing counted in the call metrics. Accepted outcomes
//! go to the ledger's outcomes stream (and from there to ClickHouse `outcomes`).
//!
//! An outcome is stored with the reporting key's team (its bound team; empty when it binds
//! none) and joins only requests of that team, so a key cannot label another team's
//! requests. Ids of requests not recorded yet are accepted: an outcome may arrive first.

use super::outcome::Outcome;
use super::{RequestCtx, Tollgate, body, usage};
use crate::attribution::Attribution;
use crate::auth::{Presented, presented_key};
use crate::config::AttributionConfig;
use crate::error::ProxyError;
use crate::record::OutcomeRecord;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use pingora::proxy::Session;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub const PATH: &str = "/tollgate/v1/outcomes";
/// Most outcomes in one batch.
pub const MAX_BATCH: usize = 1000;
/// Longest outcome label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest request id (the same bound as a client's `x-request-id`).
const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether the request is for this endpoint (a trailing slash and a query are ignored).
pub fn is_outcomes(session: &Session) -> bool {
    session.req_header().uri.path().trim_end_matches('/') == PATH
}

/// Answers the request: 202 with the number of outcomes accepted, 400 naming the first bad
/// field, 401 without a known virtual key, 405 for a method other than POST.
pub async fn answer(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), Outcome> {
    if session.req_header().method != http::Method::POST {
        return usage::refuse_method(session, ctx, PATH, "POST").await;
    }
    let cfg = ctx.config.clone();
    let key = match presented_key(&session.req_header().headers) {
        None => return Err(ProxyError::MissingKey.into()),
        Some(Presented::Unreadable) => return Err(ProxyError::UnknownKey.into()),
        Some(Presented::Key(k)) => cfg.keys.find(k).ok_or(ProxyError::UnknownKey)?,
    };
    let deadline = Duration::from_millis(cfg.server.body_timeout_ms);
    let raw = body::read(session, cfg.max_body_bytes, deadline).await?;
    let json: Value =
        serde_json::from_slice(&raw).map_err(|e| ProxyError::BadJson(e.to_string()))?;
    // Headers are not read: the key's bindings alone say whose requests it may label.
    let who = Attribution::resolve(&http::HeaderMap::new(), Some(key), &cfg.attribution);
    let records = parse(&json, &who, &cfg.attribution, Utc::now())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    tg.ledger
        .append_outcomes(&records)
        .map_err(|e| ProxyError::Internal(format!("outcomes not recorded: {e}")))?;
    for r in &records {
        tg.metrics.observe_outcome(&r.team, &r.outcome);
    }
    let body = serde_json::json!({ "accepted": records.len() }).to_string();
    usage::reply(session, ctx, 202, Bytes::from(body), "POST").await
}

/// A bad field of the body: where it is (`outcomes[3].outcome`) and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The body's outcomes, as records: one object, or `{"outcomes": [...]}`.
pub fn parse(
    body: &Value,
    who: &Attribution,
    limits: &AttributionConfig,
    now: DateTime<Utc>,
) -> Result<Vec<OutcomeRecord>, FieldError> {
    let Value::Object(obj) = body else {
        return Err(bad("body", "must be a JSON object"));
    };
    let items: Vec<(String, &Value)> = match obj.get("outcomes") {
        None => vec![(String::new(), body)],
        Some(Value::Array(list)) => {
            if obj.len() > 1 {
                let other = obj.keys().find(|k| *k != "outcomes").cloned();
                return Err(bad(
                    other.unwrap_or_default(),
                    "unknown field next to `outcomes`",
                ));
            }
            if list.is_empty() {
                return Err(bad("outcomes", "must hold at least one outcome"));
            }
            if list.len() > MAX_BATCH {
                return Err(bad(
                    "outcomes",
                    format!(
                        "holds {} outcomes; at most {MAX_BATCH} per call",
                        list.len()
                    ),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, v)| (format!("outcomes[{i}]."), v))
                .collect()
        }
        Some(_) => return Err(bad("outcomes", "must be an array")),
    };
    items
        .into_iter()
        .map(|(prefix, v)| item(&prefix, v, who, limits, now))
        .collect()
}

fn item(
    prefix: &str,
    v: &Value,
    who: &Attribution,
    limits: &AttributionConfig,
    now: DateTime<Utc>,
) -> Result<OutcomeRecord, FieldError> {
    let at = |name: &str| format!("{prefix}{name}");
    let Value::Object(obj) = v else {
        return Err(bad(prefix.trim_end_matches('.'), "must be an object"));
    };
    if let Some(k) = obj.keys().find(|k| {
        !matches!(
            k.as_str(),
            "request_id" | "workflow_id" | "outcome" | "value" | "tags"
        )
    }) {
        return Err(bad(at(k), "unknown field"));
    }
    let request_id = text(obj, "request_id", &at, MAX_REQUEST_ID_LEN)?;
    let workflow_id = text(obj, "workflow_id", &at, limits.max_value_len)?;
    let (request_id, workflow_id) = match (request_id, workflow_id) {
        (Some(r), None) => (r, String::new()),
        (None, Some(w)) => (String::new(), w),
        (None, None) => {
            return Err(bad(
                at("request_id"),
                "one of `request_id` and `workflow_id` is required",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                at("workflow_id"),
                "give `request_id` or `workflow_id`, not both",
            ));
        }
    };
    let outcome = text(obj, "outcome", &at, MAX_LABEL_LEN)?.ok_or_else(|| {
        bad(
            at("outcome"),
            "is required: `success`, `failure` or a label",
        )
    })?;
    let value = match obj.get("value") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite()),
        Some(_) => return Err(bad(at("value"), "must be a number")),
    };
    let tags = tags(obj.get("tags"), &at("tags"), limits)?;
    Ok(OutcomeRecord {
        ts: now,
        id: uuid::Uuid::now_v7().to_string(),
        team: who.team.clone(),
        key_name: who.key_name.clone(),
        request_id,
        workflow_id,
        outcome,
        value,
        tags,
    })
}

/// An optional string field: non-empty, at most `max` bytes, printable.
fn text(
    obj: &Map<String, Value>,
    name: &str,
    at: &dyn Fn(&str) -> String,
    max: usize,
) -> Result<Option<String>, FieldError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => check_text(s, max).map(Some).map_err(|p| bad(at(name), p)),
        Some(_) => Err(bad(at(name), "must be a string")),
    }
}

fn check_text(s: &str, max: usize) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else if s.len() > max {
        Err(format!("is {} bytes; at most {max}", s.len()))
    } else if s.chars().any(char::is_control) {
        Err("must be printable (no control characters)".into())
    } else {
        Ok(s.to_string())
    }
}

/// A string map, bounded like attribution tags.
fn tags(
    v: Option<&Value>,
    field: &str,
    limits: &AttributionConfig,
) -> Result<BTreeMap<String, String>, FieldError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(bad(field, "must be an object of strings")),
    };
    if obj.len() > limits.max_tags {
        return Err(bad(
            field,
            format!("has {} tags; at most {}", obj.len(), limits.max_tags),
        ));
    }
    let mut tags = BTreeMap::new();
    for (k, v) in obj {
        let at = format!("{field}.{k}");
        let k = check_text(k, limits.max_value_len).map_err(|p| bad(&at, format!("name {p}")))?;
        let Value::String(v) = v else {
            return Err(bad(at, "must be a string"));
        };
        if v.len() > limits.max_value_len {
            return Err(bad(
                at,
                format!("is {} bytes; at most {}", v.len(), limits.max_value_len),
            ));
        }
        tags.insert(k, v.clone());
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who() -> Attribution {
        Attribution {
            key_name: "k".into(),
            team: "search".into(),
            ..Attribution::default()
        }
    }

    fn run(body: Value) -> Result<Vec<OutcomeRecord>, FieldError> {
        parse(&body, &who(), &AttributionConfig::default(), Utc::now())
    }

    fn field_of(body: Value) -> String {
        run(body).unwrap_err().field
    }

    #[test]
    fn single_and_batch_carry_the_keys_team() {
        let one = run(json!({"request_id": "r1", "outcome": "success", "value": 2.5})).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].team.as_str(), one[0].request_id.as_str()),
            ("search", "r1")
        );
        assert_eq!(one[0].value, Some(2.5));
        let batch = run(json!({"outcomes": [
            {"workflow_id": "w", "outcome": "failure", "tags": {"a": "b"}},
            {"request_id": "r2", "outcome": "refund"},
        ]}))
        .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].workflow_id, "w");
        assert_eq!(batch[0].tags.get("a").map(String::as_str), Some("b"));
        assert_ne!(batch[0].id, batch[1].id);
    }

    #[test]
    fn bad_fields_are_named_with_their_index() {
        let ok = json!({"request_id": "r", "outcome": "success"});
        let batch = |bad: Value| json!({"outcomes": [ok.clone(), bad]});
        assert_eq!(
            field_of(batch(json!({"outcome": "success"}))),
            "outcomes[1].request_id"
        );
        assert_eq!(
            field_of(batch(
                json!({"request_id": "r", "workflow_id": "w", "outcome": "x"})
            )),
            "outcomes[1].workflow_id"
        );
        assert_eq!(
            field_of(batch(
                json!({"request_id": "r", "outcome": "x", "value": "3"})
            )),
            "outcomes[1].value"
        );
        assert_eq!(
            field_of(batch(json!({"request_id": "r", "outcome": "a\nb"}))),
            "outcomes[1].outcome"
        );
        assert_eq!(
            field_of(batch(
                json!({"request_id": "r", "outcome": "x".repeat(MAX_LABEL_LEN + 1)})
            )),
            "outcomes[1].outcome"
        );
        assert_eq!(
            field_of(batch(
                json!({"request_id": "r", "outcome": "x", "tags": {"t": 1}})
            )),
            "outcomes[1].tags.t"
        );
        assert_eq!(field_of(json!({"request_id": "r"})), "outcome");
        let many: Vec<Value> = (0..=MAX_BATCH).map(|_| ok.clone()).collect();
        assert_eq!(field_of(json!({ "outcomes": many })), "outcomes");
        assert_eq!(field_of(json!([ok])), "body");
    }
}
