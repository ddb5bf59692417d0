//! The price file as written on disk (YAML or JSON).
//!
//! These types only describe its shape; checks that need more than one field (signs,
//! duplicates, name collisions) happen when a `PriceBook` is built from them.

use std::fmt;
use std::marker::PhantomData;

use chrono::NaiveDate;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

pub use crate::money::Usd;

/// The only format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    pub version: Spanned<u32>,
    #[serde(default)]
    pub models: Entries<Spanned<String>, ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Informational only; lookups never depend on it.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    /// The most input tokens the model accepts. Signed so that a negative value reaches
    /// validation and is reported as such, not as a type error.
    #[serde(default)]
    pub context_window: Option<Spanned<i64>>,
    /// The most output tokens one call can produce; signed for the same reason.
    #[serde(default)]
    pub max_output_tokens: Option<Spanned<i64>>,
    pub prices: Spanned<Vec<PriceEntry>>,
}

/// One set of rates, in USD per 1M tokens, in force from `effective_from` (UTC, inclusive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub effective_from: Spanned<NaiveDate>,
    pub input: Spanned<Usd>,
    pub output: Spanned<Usd>,
    #[serde(default)]
    pub cached_input: Option<Spanned<Usd>>,
    #[serde(default)]
    pub cache_write: Option<Spanned<Usd>>,
    #[serde(default)]
    pub reasoning: Option<Spanned<Usd>>,
}

/// A USD amount written as a number (`2.5`) or as a decimal string (`"2.50"`).
/// Strings are parsed exactly; numbers are rounded to the nano, which is exact for any
/// price with at most nine decimals.
/// A mapping kept as a list in file order, so a repeated key reaches validation instead of
/// silently replacing the first (serde_json keeps the last of two equal keys).
#[derive(Debug)]
pub struct Entries<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<K, V> {
            type Value = Entries<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}
