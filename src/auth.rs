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

/// The key a client presented: `Authorization: Bearer KEY` or `x-api-key: KEY`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim()).filter(|k| !k.is_empty());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
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
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some("xyz"));
    }

    #[test]
    fn debug_never_shows_the_hash() {
        let k = store().find("tg-secret").cloned().unwrap();
        assert!(!format!("{k:?}").contains(&hex::encode(k.hash)));
    }
}
