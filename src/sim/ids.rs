//! Identifiers shaped like the real providers' ones, timestamps, and a stable hash.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;

use super::error::Flavor;

/// Seconds since the Unix epoch, as in OpenAI's `created` / `created_at`.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn hex(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// `chatcmpl-…` for chat completions, `cmpl-…` for legacy completions.
pub(crate) fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{}", alphanumeric(29))
}

/// Responses API object ids: `resp_`, `msg_`, `rs_`, `fc_` followed by 48 hex digits.
pub(crate) fn response_object_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex(48))
}

/// OpenAI tool call ids, `call_…`.
pub(crate) fn call_id() -> String {
    format!("call_{}", alphanumeric(24))
}

/// Anthropic ids: `msg_01…`, `toolu_01…`.
pub(crate) fn anthropic_id(prefix: &str) -> String {
    format!("{prefix}_01{}", alphanumeric(22))
}

pub(crate) fn request_id(flavor: Flavor) -> String {
    match flavor {
        Flavor::OpenAi => format!("req_{}", hex(32)),
        Flavor::Anthropic => format!("req_011{}", alphanumeric(21)),
    }
}

/// A fixed `system_fingerprint` per model, like a real deployment's backend configuration.
pub(crate) fn fingerprint(model: &str) -> String {
    let mut h = StableHash::new();
    h.write_str(model);
    format!("fp_{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// 64-bit FNV-1a. Unlike `DefaultHasher` its output is fixed across Rust releases, so the
/// simulated output lengths stay the same from one build to the next.
#[derive(Debug, Clone)]
pub(crate) struct StableHash(u64);

impl StableHash {
    pub fn new() -> Self {
        StableHash(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Writes a string followed by a separator, so ("ab","c") and ("a","bc") differ.
    pub fn write_str(&mut self, s: &str) {
        self.write(s.as_bytes());
        self.write(&[0xff]);
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash of a list of strings.
pub(crate) fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h = StableHash::new();
    for p in parts {
        h.write_str(p);
    }
    h.finish()
}

/// SplitMix64 finaliser: turns a counter or hash into well-spread pseudo-random bits.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
