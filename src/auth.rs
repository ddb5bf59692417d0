//! Virtual keys: client keys that map to a team, project, environment and owner.
//!
//! Only SHA-256 digests are held. A presented key is hashed, found by digest, and the digest
//! confirmed in constant time; the map lookup can only leak timing about a digest, which
//! says nothing useful about any key.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use subtle::ConstantTimeEq;

pub type KeyHash = [u8; 32];

pub fn sha256(data: &[u8]) -> KeyHash {
    Sha256::digest(data).into()
}

pub fn parse_sha256_hex(s: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

#[derive(Clone)]
pub struct VirtualKey {
    pub name: String,
    pub hash: KeyHash,
    pub team: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    pub owner: Option<String>,
}

impl fmt::Debug for VirtualKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualKey")
            .field("name", &self.name)
            .field("team", &self.team)
            .field("project", &self.project)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<KeyHash, VirtualKey>,
}

impl KeyStore {
    pub fn new(keys: Vec<VirtualKey>) -> KeyStore {
        KeyStore {
            by_hash: keys.into_iter().map(|k| (k.hash, k)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn find(&self, presented: &str) -> Option<&VirtualKey> {
        let digest = sha256(presented.as_bytes());
        let key = self.by_hash.get(&digest)?;
        bool::from(key.hash.ct_eq(&digest)).then_some(key)
    }
}

/// A key found in a request's headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Key(&'a str),
    /// A key is there but is not text (not UTF-8): it cannot match any key.
    Unreadable,
}

/// The key a client presented: `Authorization: Bearer KEY` (the scheme in any case, any
/// whitespace after it) or `x-api-key: KEY`. `None` when neither carries one.
pub fn presented_key(headers: &http::HeaderMap) -> Option<Presented<'_>> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()));
    let key = bearer.or_else(|| {
        headers
            .get("x-api-key")
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|k| !k.is_empty())
    })?;
    Some(match std::str::from_utf8(key) {
        Ok(k) => Presented::Key(k),
        Err(_) => Presented::Unreadable,
    })
}

/// The credentials of a `Bearer` authorization value (RFC 9110 §11.4: the scheme is
/// case-insensitive, separated from the credentials by whitespace).
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| b.is_ascii_whitespace())?;
    let (scheme, rest) = value.split_at(split);
    let creds = rest.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !creds.is_empty()).then_some(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        KeyStore::new(vec![VirtualKey {
            name: "search".into(),
            hash: sha256(b"tg-secret"),
            team: Some("search".into()),
            project: None,
            env: None,
            owner: None,
        }])
    }

    #[test]
    fn finds_only_the_right_key() {
        let s = store();
        assert_eq!(s.find("tg-secret").map(|k| k.name.as_str()), Some("search"));
        assert!(s.find("tg-secreT").is_none());
        assert!(s.find("").is_none());
    }

    #[test]
    fn reads_either_header() {
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some(Presented::Key("abc")));
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some(Presented::Key("xyz")));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_any_whitespace_separates_it() {
        for value in ["BEARER k1", "bearer k1", "Bearer\tk1", "  BeArEr   k1  "] {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            assert_eq!(presented_key(&h), Some(Presented::Key("k1")), "{value:?}");
        }
        for value in ["Bearer", "Bearer   ", "Basic k1", "Bearerk1"] {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            assert_eq!(presented_key(&h), None, "{value:?}");
        }
    }

    #[test]
    fn a_key_that_is_not_text_is_unreadable_not_missing() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_bytes(b"Bearer k\xff\xfe").unwrap(),
        );
        assert_eq!(presented_key(&h), Some(Presented::Unreadable));
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let k = store().find("tg-secret").cloned().unwrap();
        assert!(!format!("{k:?}").contains(&hex::encode(k.hash)));
    }
}
