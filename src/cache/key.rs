//! The cache key: which requests share an answer.
//!
//! A key is a SHA-256 over the endpoint path, the provider, the upstream model, the scope and
//! the request body in a canonical form. The canonical body keeps every member that can change
//! the answer and drops those that only change how it is delivered or tracked
//! ([`DROPPED_MEMBERS`]). Object keys are sorted at every depth and whitespace is removed, but
//! numbers keep the text they were written with: `1e2`, `100` and `100.0` stay distinct, and
//! no digit of a large integer or a long fraction is lost to a float round trip.

use crate::api::Endpoint;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Top-level request members left out of the key: none changes the answer.
///
/// - `user`, `safety_identifier`, `metadata`: who asked, for abuse tracking and dashboards.
/// - `stream`, `stream_options`: how the answer is delivered; a hit is replayed in the form
///   the client asked for.
/// - `prompt_cache_key`: a routing hint for the provider's own prompt cache.
///
/// Kept on purpose: `store` (a stored Responses answer can be referenced by a later
/// `previous_response_id`; a replayed one from an unstored call cannot), `service_tier`
/// (it changes the price the entry's cost reflects), and every sampling and tool member
/// (`seed`, `temperature`, `top_p`, `tools`, `tool_choice`, `response_format`, ...).
pub const DROPPED_MEMBERS: &[&str] = &[
    "user",
    "safety_identifier",
    "metadata",
    "stream",
    "stream_options",
    "prompt_cache_key",
];

/// Who may share an entry, as a policy rule sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Requests made with the same virtual key.
    Key,
    /// Requests of the same team.
    Team,
    /// Every request.
    Global,
}

impl CacheScope {
    pub fn parse(s: &str) -> Option<CacheScope> {
        Some(match s {
            "key" => CacheScope::Key,
            "team" => CacheScope::Team,
            "global" => CacheScope::Global,
            _ => return None,
        })
    }

    /// The scope string of a request made with virtual key `key_name` for `team`. A request
    /// without a team falls back to its key's scope; one without a key name (a client's own
    /// provider key) has no private scope, so `None`: it must not be cached under `key` or
    /// `team` scope, lest two callers share answers.
    pub fn label(self, key_name: &str, team: &str) -> Option<String> {
        match self {
            CacheScope::Global => Some("global".into()),
            CacheScope::Team if !team.is_empty() => Some(format!("team:{team}")),
            CacheScope::Key | CacheScope::Team if !key_name.is_empty() => {
                Some(format!("key:{key_name}"))
            }
            CacheScope::Key | CacheScope::Team => None,
        }
    }
}

/// A request body the cache cannot key: not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("request body is not a JSON object: {0}")]
pub struct KeyError(String);

/// A cache key: SHA-256 of the request's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of a request at `endpoint` (its path), sent to `provider` as `model`, shared
    /// within `scope` (see [`CacheScope::label`]). `body` is the body as sent upstream.
    pub fn new(
        endpoint: &str,
        provider: &str,
        model: &str,
        scope: &str,
        body: &[u8],
    ) -> Result<CacheKey, KeyError> {
        let canonical = normalize(body)?;
        let mut h = Sha256::new();
        h.update(b"tollgate-cache-v1");
        // Length-prefixed, so no two different field lists hash the same bytes.
        for part in [
            endpoint.as_bytes(),
            provider.as_bytes(),
            model.as_bytes(),
            scope.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((canonical.len() as u64).to_le_bytes());
        h.update(&canonical);
        Ok(CacheKey(h.finalize().into()))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The canonical form of a request body: [`DROPPED_MEMBERS`] left out at the top level, keys
/// sorted at every depth (a repeated key keeps its last value, as JSON parsers do), no
/// whitespace, strings re-escaped one way, numbers as written.
pub fn normalize(body: &[u8]) -> Result<Vec<u8>, KeyError> {
    let top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| KeyError(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len());
    out.push(b'{');
    let mut first = true;
    for (k, v) in top
        .iter()
        .filter(|(k, _)| !DROPPED_MEMBERS.contains(&k.as_str()))
    {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_string(&mut out, k);
        out.push(b':');
        canonical(&mut out, v)?;
    }
    out.push(b'}');
    Ok(out)
}

fn canonical(out: &mut Vec<u8>, v: &RawValue) -> Result<(), KeyError> {
    let text = v.get();
    let bad = |e: serde_json::Error| KeyError(e.to_string());
    match text.as_bytes().first() {
        Some(b'{') => {
            let map: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(bad)?;
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                canonical(out, v)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(bad)?;
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(out, v)?;
            }
            out.push(b']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(bad)?;
            write_string(out, &s);
        }
        // Numbers, `true`, `false`, `null`: their text, already without whitespace.
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    let mut ser = serde_json::Serializer::new(out);
    s.serialize(&mut ser)
        .expect("writing a string to a Vec cannot fail");
}

/// Whether a request asks for an answer that repeats: the rule is that sampling is pinned,
/// by `temperature` 0 or a `seed`, and one choice is asked for (`n`, and `best_of` of the
/// legacy completions endpoint, at most 1). An absent temperature is the provider's default
/// (1 for OpenAI and Anthropic), so it does not count as pinned. Embeddings do not sample
/// and are always deterministic. A body that does not parse is not.
pub fn is_deterministic(endpoint: Endpoint, body: &[u8]) -> bool {
    if endpoint == Endpoint::Embeddings {
        return serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    }
    let Ok(top) = serde_json::from_slice::<BTreeMap<String, &RawValue>>(body) else {
        return false;
    };
    let number = |name: &str| -> Option<Result<f64, ()>> {
        let v = top.get(name)?;
        if v.get() == "null" {
            return None;
        }
        Some(serde_json::from_str::<f64>(v.get()).map_err(|_| ()))
    };
    let pinned_temperature = matches!(number("temperature"), Some(Ok(t)) if t == 0.0);
    let seeded = matches!(number("seed"), Some(Ok(_)));
    let one_choice = ["n", "best_of"]
        .iter()
        .all(|m| number(m).is_none_or(|n| n.is_ok_and(|n| n <= 1.0)));
    (pinned_temperature || seeded) && one_choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        String::from_utf8(normalize(s.as_bytes()).unwrap()).unwrap()
    }

    fn key(scope: &str, body: &str) -> CacheKey {
        CacheKey::new(
            "/v1/chat/completions",
            "openai",
            "gpt-4o-mini",
            scope,
            body.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        let b = "{ \"temperature\" : 0,\n  \"messages\": [ { \"content\": \"hi\", \"role\": \"user\" } ],\n \"model\": \"m\" }";
        assert_eq!(norm(a), norm(b));
        assert_eq!(key("global", a), key("global", b));
        assert_eq!(
            norm(b),
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}"#
        );
    }

    #[test]
    fn members_that_do_not_change_the_answer_are_dropped() {
        let plain = r#"{"model":"m","messages":[]}"#;
        let decorated = r#"{"model":"m","messages":[],"user":"u1","metadata":{"a":"b"},
            "stream":true,"stream_options":{"include_usage":true},"safety_identifier":"x",
            "prompt_cache_key":"p"}"#;
        assert_eq!(key("global", plain), key("global", decorated));
        // Only at the top level: a tool parameter named `user` is part of the request.
        let nested = r#"{"model":"m","messages":[],"tools":[{"user":1}]}"#;
        assert!(norm(nested).contains(r#""user":1"#));
    }

    #[test]
    fn members_that_change_the_answer_are_kept() {
        let base = r#"{"model":"m","messages":[]}"#;
        for extra in [
            r#","seed":1"#,
            r#","temperature":0"#,
            r#","store":true"#,
            r#","service_tier":"flex""#,
            r#","tools":[]"#,
            r#","response_format":{"type":"json_object"}"#,
        ] {
            let with = format!("{}{extra}}}", &base[..base.len() - 1]);
            assert_ne!(key("global", base), key("global", &with), "{extra}");
        }
    }

    #[test]
    fn numbers_keep_every_digit() {
        let big = r#"{"seed":123456789012345678901234567890,"temperature":0.10000000000000000555}"#;
        assert_eq!(norm(big), big);
        // One past the largest exact f64 integer: a float round trip would merge them.
        let a = key("global", r#"{"seed":9007199254740993}"#);
        let b = key("global", r#"{"seed":9007199254740992}"#);
        assert_ne!(a, b);
        assert_ne!(
            key("global", r#"{"top_p":0.1}"#),
            key("global", r#"{"top_p":0.10000000000000001}"#)
        );
    }

    #[test]
    fn strings_compare_by_value_not_escape() {
        assert_eq!(norm(r#"{"a":"\u0041\/"}"#), norm(r#"{"a":"A/"}"#));
        assert_eq!(norm(r#"{"\u0061":1}"#), norm(r#"{"a":1}"#));
    }

    #[test]
    fn a_repeated_member_keeps_its_last_value() {
        assert_eq!(norm(r#"{"a":1,"a":2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn scope_endpoint_provider_and_model_separate_keys() {
        let body = br#"{"model":"m"}"#;
        let k = |e: &str, p: &str, m: &str, s: &str| CacheKey::new(e, p, m, s, body).unwrap();
        let base = k("/v1/chat/completions", "openai", "m", "global");
        assert_ne!(base, k("/v1/chat/completions", "openai", "m", "key:a"));
        assert_ne!(
            k("/v1/chat/completions", "openai", "m", "key:a"),
            k("/v1/chat/completions", "openai", "m", "key:b")
        );
        assert_ne!(base, k("/v1/responses", "openai", "m", "global"));
        assert_ne!(base, k("/v1/chat/completions", "azure", "m", "global"));
        assert_ne!(base, k("/v1/chat/completions", "openai", "m2", "global"));
        // Fields are framed: moving a byte from one field to the next changes the key.
        assert_ne!(
            k("/v1/chat/completions", "ab", "c", "global"),
            k("/v1/chat/completions", "a", "bc", "global")
        );
    }

    #[test]
    fn scope_labels() {
        assert_eq!(CacheScope::Key.label("k1", "t").as_deref(), Some("key:k1"));
        assert_eq!(CacheScope::Team.label("k1", "t").as_deref(), Some("team:t"));
        assert_eq!(CacheScope::Team.label("k1", "").as_deref(), Some("key:k1"));
        assert_eq!(CacheScope::Key.label("", "t"), None);
        assert_eq!(CacheScope::Team.label("", ""), None);
        assert_eq!(CacheScope::Global.label("", "").as_deref(), Some("global"));
    }

    #[test]
    fn bodies_that_are_not_objects_have_no_key() {
        for body in ["", "[1]", "{", "\"s\"", "{\"a\":}"] {
            assert!(normalize(body.as_bytes()).is_err(), "{body:?}");
        }
    }

    #[test]
    fn determinism_rule() {
        let chat = Endpoint::ChatCompletions;
        let det = |b: &str| is_deterministic(chat, b.as_bytes());
        assert!(det(r#"{"temperature":0}"#));
        assert!(det(r#"{"temperature":0.0,"n":1}"#));
        assert!(det(r#"{"temperature":0.7,"seed":42}"#));
        assert!(det(r#"{"seed":42}"#));
        assert!(
            !det(r#"{}"#),
            "absent temperature is the provider's default, 1"
        );
        assert!(!det(r#"{"temperature":0.2}"#));
        assert!(!det(r#"{"temperature":0,"n":2}"#));
        assert!(!det(r#"{"seed":1,"n":3}"#));
        assert!(!det(r#"{"temperature":null}"#));
        assert!(!det(r#"{"temperature":"0"}"#));
        assert!(!det(r#"{"temperature":0,"n":"1"}"#));
        assert!(det(r#"{"temperature":0,"n":null}"#));
        assert!(!is_deterministic(
            Endpoint::Completions,
            br#"{"temperature":0,"best_of":3}"#
        ));
        assert!(is_deterministic(Endpoint::Embeddings, br#"{"input":"x"}"#));
        assert!(!is_deterministic(Endpoint::Embeddings, b"{"));
        assert!(!det("not json"));
    }
}
