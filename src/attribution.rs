//! Who a call is charged to: the virtual key's bindings first, then `x-tollgate-*` headers.

use crate::auth::VirtualKey;
use crate::config::AttributionConfig;
use std::collections::BTreeMap;

pub const HEADER_PREFIX: &str = "x-tollgate-";
pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub key_name: String,
    pub team: String,
    pub project: String,
    pub env: String,
    pub user: String,
    pub feature: String,
    pub workflow_id: String,
    pub tags: BTreeMap<String, String>,
}

impl Attribution {
    /// Reads the attribution headers; values bound to `key` cannot be overridden by them.
    pub fn resolve(
        headers: &http::HeaderMap,
        key: Option<&VirtualKey>,
        limits: &AttributionConfig,
    ) -> Attribution {
        // Values are taken as UTF-8 (lossily): names and tags need not be ASCII.
        let header = |name: &str| -> String {
            headers
                .get(name)
                .map(|v| {
                    bounded(
                        String::from_utf8_lossy(v.as_bytes()).trim(),
                        limits.max_value_len,
                    )
                })
                .unwrap_or_default()
        };
        let bound = |v: Option<&String>, name: &str| v.cloned().unwrap_or_else(|| header(name));
        Attribution {
            key_name: key.map(|k| k.name.clone()).unwrap_or_default(),
            team: bound(key.and_then(|k| k.team.as_ref()), "x-tollgate-team"),
            project: bound(key.and_then(|k| k.project.as_ref()), "x-tollgate-project"),
            env: bound(key.and_then(|k| k.env.as_ref()), "x-tollgate-env"),
            // The key's owner is the default user; a header may name the end user.
            user: Some(header("x-tollgate-user"))
                .filter(|u| !u.is_empty())
                .or_else(|| key.and_then(|k| k.owner.clone()))
                .unwrap_or_default(),
            feature: header("x-tollgate-feature"),
            workflow_id: header("x-tollgate-workflow"),
            tags: parse_tags(&header_raw(headers, "x-tollgate-tags"), limits),
        }
    }
}

fn header_raw(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `k=v,k2=v2`: empty keys are skipped, values bounded, at most `max_tags` kept.
fn parse_tags(raw: &str, limits: &AttributionConfig) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for pair in raw.split(',') {
        if tags.len() >= limits.max_tags {
            break;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = k.trim();
        if k.is_empty() {
            continue;
        }
        tags.insert(
            bounded(k, limits.max_value_len),
            bounded(v.trim(), limits.max_value_len),
        );
    }
    tags
}

/// Whether a request header is Tollgate's own and must not reach the provider.
pub fn is_tollgate_header(name: &str) -> bool {
    name.len() > HEADER_PREFIX.len()
        && name.as_bytes()[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn key_bindings_win_over_headers() {
        let key = VirtualKey {
            name: "k".into(),
            hash: [0; 32],
            team: Some("payments".into()),
            project: None,
            env: Some("prod".into()),
            owner: Some("ana".into()),
        };
        let h = headers(&[
            ("x-tollgate-team", "intruder"),
            ("x-tollgate-project", "checkout"),
            ("x-tollgate-env", "dev"),
        ]);
        let a = Attribution::resolve(&h, Some(&key), &AttributionConfig::default());
        assert_eq!(a.team, "payments");
        assert_eq!(a.project, "checkout");
        assert_eq!(a.env, "prod");
        assert_eq!(a.user, "ana");
        assert_eq!(a.key_name, "k");
    }

    #[test]
    fn tags_are_bounded() {
        let limits = AttributionConfig {
            max_value_len: 4,
            max_tags: 2,
        };
        let h = headers(&[
            ("x-tollgate-tags", "a=1, b=22222 ,=x,c=3"),
            ("x-tollgate-user", "éééé"),
        ]);
        let a = Attribution::resolve(&h, None, &limits);
        assert_eq!(a.tags.len(), 2);
        assert_eq!(a.tags["b"], "2222");
        assert_eq!(a.user, "éé");
    }

    #[test]
    fn recognises_own_headers() {
        assert!(is_tollgate_header("X-Tollgate-Team"));
        assert!(!is_tollgate_header("x-tollgate-"));
        assert!(!is_tollgate_header("authorization"));
    }
}
