//! Model prices: which rates apply to a model on a given day, and what a call costs.
//!
//! Prices come from YAML or JSON price files (format: `prices/README.md`). Each rate is
//! converted once, at load time, to integer nano-USD per 1M tokens; costs are integer math.

mod file;
mod import;

pub use import::import_litellm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_saphyr::{DefaultMessageFormatter, Location, MessageFormatter, Spanned};

use crate::money::NanoUsd;
use crate::usage::Usage;
use file::{FORMAT_VERSION, PriceEntry, PriceFile, Usd};

/// Rates in force from `effective_from`, all in USD per 1M tokens. Optional rates from the
/// file are already defaulted (cached input and cache write to `input`, reasoning to `output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Price {
    pub effective_from: NaiveDate,
    pub input: NanoUsd,
    pub output: NanoUsd,
    pub cached_input: NanoUsd,
    pub cache_write: NanoUsd,
    pub reasoning: NanoUsd,
}

impl Price {
    /// The cost of `u`. Every token falls in exactly one bucket (see [`Usage`]), and each
    /// bucket is rounded to the nano on its own.
    pub fn cost(&self, u: &Usage) -> NanoUsd {
        [
            (u.uncached_input_tokens(), self.input),
            (u.cached_input_tokens, self.cached_input),
            (u.cache_write_tokens, self.cache_write),
            (u.non_reasoning_output_tokens(), self.output),
            (u.reasoning_tokens, self.reasoning),
        ]
        .into_iter()
        .map(|(tokens, rate)| NanoUsd::per_million(tokens, rate))
        .sum()
    }
}

/// Where in a price file something is. `line == 0` means the position is unknown
/// (JSON input, or an error not tied to one spot), and only the file is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub source: String,
    pub line: u64,
    pub column: u64,
}

impl Position {
    fn new(source: &str, location: Location) -> Self {
        Position {
            source: source.to_owned(),
            line: location.line(),
            column: location.column(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.source)
        } else {
            write!(f, "{}:{}:{}", self.source, self.line, self.column)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not a well-formed price file: bad syntax, an unknown field, a value of the wrong type.
    #[error("{at}: {message}")]
    Parse { at: Position, message: String },
    /// Well-formed, but not a usable price list: a negative price, a duplicate date or name.
    #[error("{at}: {message}")]
    Invalid { at: Position, message: String },
}

#[derive(Debug, Clone)]
struct ModelPrices {
    provider: Option<String>,
    /// Kept so that `merge` can drop the aliases of an entry it replaces.
    aliases: Vec<String>,
    /// Max input tokens, when the file gives it.
    context_window: Option<u64>,
    /// Max output tokens of one call, when the file gives it.
    max_output_tokens: Option<u64>,
    /// Sorted by `effective_from`, no two on the same day.
    prices: Vec<Price>,
}

#[derive(Debug, Default, Clone)]
pub struct PriceBook {
    models: BTreeMap<String, ModelPrices>,
    /// Alias → canonical model name. Never shadows a model name.
    aliases: HashMap<String, String>,
}

static BUILTIN: LazyLock<PriceBook> = LazyLock::new(|| {
    PriceBook::parse(
        include_str!("../../prices/default.yaml"),
        "prices/default.yaml",
    )
    .expect("the built-in price file is valid (checked by a unit test)")
});

impl PriceBook {
    /// The prices shipped with Tollgate (`prices/default.yaml`).
    pub fn builtin() -> PriceBook {
        BUILTIN.clone()
    }

    /// Parses a price file; `source` names it in error messages. Text starting with `{` is
    /// tried as JSON first (much faster for large files), then as YAML.
    pub fn parse(text: &str, source: &str) -> Result<PriceBook, Vec<PriceError>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let file = if text.trim_start().starts_with('{') {
            match serde_json::from_str::<PriceFile>(text) {
                Ok(file) => file,
                // A YAML flow mapping also starts with `{`; if that fails too, the text was
                // most likely meant as JSON, so report the JSON error.
                Err(json_err) => {
                    serde_saphyr::from_str(text).map_err(|_| vec![json_error(source, &json_err)])?
                }
            }
        } else {
            serde_saphyr::from_str(text).map_err(|e| vec![yaml_error(source, &e)])?
        };
        build(&file, source)
    }

    pub fn load(path: &Path) -> Result<PriceBook, Vec<PriceError>> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![PriceError::Io {
                path: source.clone(),
                source: e,
            }]
        })?;
        PriceBook::parse(&text, &source)
    }

    /// Adds `other`'s models, replacing same-named entries of `self` as a whole (price
    /// history and aliases). Names `other` claims win: an alias of `self` with the same
    /// name is rebound, and a model of `self` named like one of `other`'s aliases is dropped.
    pub fn merge(&mut self, other: PriceBook) {
        for (name, model) in other.models {
            self.remove_model(&name);
            self.remove_alias(&name);
            for alias in &model.aliases {
                self.remove_model(alias);
                self.remove_alias(alias);
                self.aliases.insert(alias.clone(), name.clone());
            }
            self.models.insert(name, model);
        }
    }

    fn remove_model(&mut self, name: &str) {
        if let Some(old) = self.models.remove(name) {
            for alias in old.aliases {
                self.aliases.remove(&alias);
            }
        }
    }

    fn remove_alias(&mut self, alias: &str) {
        if let Some(owner) = self.aliases.remove(alias)
            && let Some(model) = self.models.get_mut(&owner)
        {
            model.aliases.retain(|a| a != alias);
        }
    }

    /// The price in force for `model` at `at`, resolving: exact name; alias; provider prefix
    /// stripped (`openai/gpt-4o`); dated snapshot suffix stripped (`gpt-4o-2024-08-06` →
    /// `gpt-4o`, `claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`, also `-latest`); exact
    /// entries always win over resolved ones. Returns None for an unknown model or a time
    /// before the first effective_from.
    pub fn lookup(&self, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        let prices = &self.models.get(self.resolve_name(model)?)?.prices;
        let day = at.date_naive();
        let in_force = prices.partition_point(|p| p.effective_from <= day);
        prices.get(in_force.checked_sub(1)?)
    }

    /// The canonical entry name `model` resolves to (see [`PriceBook::lookup`]).
    pub fn resolve_name(&self, model: &str) -> Option<&str> {
        if let Some(name) = self.canonical(model) {
            return Some(name);
        }
        // `openrouter/openai/gpt-4o` → `gpt-4o`: only the last segment names the model.
        let mut name = model.rsplit_once('/').map_or(model, |(_, last)| last);
        if let Some(found) = self.canonical(name) {
            return Some(found);
        }
        while let Some(base) = strip_snapshot(name) {
            name = base;
            if let Some(found) = self.canonical(name) {
                return Some(found);
            }
        }
        None
    }

    fn canonical(&self, name: &str) -> Option<&str> {
        match self.models.get_key_value(name) {
            Some((key, _)) => Some(key),
            None => self.aliases.get(name).map(String::as_str),
        }
    }

    /// The most input tokens `model` accepts, from its entry's `context_window`. The name
    /// resolves as in [`PriceBook::lookup`], so an entry without a window (a dated snapshot
    /// priced on its own, say) gives None even when its base model has one. None for an
    /// unknown model too.
    pub fn context_window(&self, model: &str) -> Option<u64> {
        self.models.get(self.resolve_name(model)?)?.context_window
    }

    /// The most output tokens one call to `model` can produce, from its entry's
    /// `max_output_tokens`; resolved like [`PriceBook::context_window`]. None when the
    /// entry gives none or the model is unknown.
    pub fn max_output_tokens(&self, model: &str) -> Option<u64> {
        self.models
            .get(self.resolve_name(model)?)?
            .max_output_tokens
    }

    /// The provider the file names for `model`'s entry (informational).
    pub fn provider(&self, model: &str) -> Option<&str> {
        self.models
            .get(self.resolve_name(model)?)?
            .provider
            .as_deref()
    }

    /// Every model with its price history (oldest first), sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Price])> {
        self.models
            .iter()
            .map(|(name, model)| (name.as_str(), model.prices.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// One level of snapshot suffix: `-latest`, `-YYYY-MM-DD` or `-YYYYMMDD`.
pub(crate) fn strip_snapshot(name: &str) -> Option<&str> {
    name.strip_suffix("-latest")
        .or_else(|| strip_date_suffix(name, "dddd-dd-dd"))
        .or_else(|| strip_date_suffix(name, "dddddddd"))
        .filter(|base| !base.is_empty())
}

/// Strips `-` plus a suffix shaped like `pattern`, where `d` stands for any ASCII digit.
fn strip_date_suffix<'a>(name: &'a str, pattern: &str) -> Option<&'a str> {
    let cut = name.len().checked_sub(pattern.len() + 1)?;
    let (base, suffix) = name.split_at_checked(cut)?;
    let matches = suffix
        .strip_prefix('-')?
        .bytes()
        .zip(pattern.bytes())
        .all(|(c, p)| {
            if p == b'd' {
                c.is_ascii_digit()
            } else {
                c == p
            }
        });
    matches.then_some(base)
}

fn json_error(source: &str, e: &serde_json::Error) -> PriceError {
    let message = e.to_string();
    // serde_json appends the position to its message; it is shown in front instead.
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    PriceError::Parse {
        at: Position {
            source: source.to_owned(),
            line: e.line() as u64,
            column: e.column() as u64,
        },
        message: message.to_owned(),
    }
}

fn yaml_error(source: &str, e: &serde_saphyr::Error) -> PriceError {
    let e = e.without_snippet();
    PriceError::Parse {
        at: Position::new(source, e.location().unwrap_or(Location::UNKNOWN)),
        message: DefaultMessageFormatter.format_message(e).into_owned(),
    }
}

/// Checks a parsed file and converts it, reporting every problem rather than the first.
fn build(file: &PriceFile, source: &str) -> Result<PriceBook, Vec<PriceError>> {
    let mut check = Checker {
        source,
        errors: Vec::new(),
    };
    if file.version.value != FORMAT_VERSION {
        check.error(
            file.version.referenced,
            format!(
                "unsupported price file version {}; expected {FORMAT_VERSION}",
                file.version.value
            ),
        );
    }

    // All model names first, so an alias cannot shadow a model written further down.
    let model_names: HashSet<&str> = file
        .models
        .0
        .iter()
        .map(|(n, _)| n.value.as_str())
        .collect();
    let mut book = PriceBook::default();
    for (name, entry) in &file.models.0 {
        if name.value.is_empty() {
            check.error(name.referenced, "empty model name".to_owned());
            continue;
        }
        if book.models.contains_key(&name.value) {
            check.error(
                name.referenced,
                format!("model {:?} is defined twice", name.value),
            );
            continue;
        }
        let mut aliases = Vec::new();
        for alias in &entry.aliases {
            let text = &alias.value;
            if model_names.contains(text.as_str()) {
                check.error(
                    alias.referenced,
                    format!(
                        "alias {text:?} of model {:?} is also a model name",
                        name.value
                    ),
                );
            } else if let Some(owner) = book.aliases.get(text) {
                check.error(
                    alias.referenced,
                    format!(
                        "alias {text:?} of model {:?} is already an alias of {owner:?}",
                        name.value
                    ),
                );
            } else {
                book.aliases.insert(text.clone(), name.value.clone());
                aliases.push(text.clone());
            }
        }
        let mut limit = |field, tokens: &Option<Spanned<i64>>| {
            tokens
                .as_ref()
                .and_then(|tokens| check.tokens(&name.value, field, tokens))
        };
        let context_window = limit("context_window", &entry.context_window);
        let max_output_tokens = limit("max_output_tokens", &entry.max_output_tokens);
        let prices = check.prices(&name.value, &entry.prices);
        book.models.insert(
            name.value.clone(),
            ModelPrices {
                provider: entry.provider.clone(),
                aliases,
                context_window,
                max_output_tokens,
                prices,
            },
        );
    }

    if check.errors.is_empty() {
        Ok(book)
    } else {
        Err(check.errors)
    }
}

struct Checker<'a> {
    source: &'a str,
    errors: Vec<PriceError>,
}

impl Checker<'_> {
    fn error(&mut self, location: Location, message: String) {
        self.errors.push(PriceError::Invalid {
            at: Position::new(self.source, location),
            message,
        });
    }

    fn prices(&mut self, model: &str, entries: &Spanned<Vec<PriceEntry>>) -> Vec<Price> {
        if entries.value.is_empty() {
            self.error(entries.referenced, format!("model {model:?} has no prices"));
        }
        let mut prices = Vec::with_capacity(entries.value.len());
        let mut days = HashSet::new();
        for entry in &entries.value {
            let day = entry.effective_from.value;
            if !days.insert(day) {
                self.error(
                    entry.effective_from.referenced,
                    format!("model {model:?} has two prices effective from {day}"),
                );
                continue;
            }
            let input = self.rate(model, "input", &entry.input);
            let output = self.rate(model, "output", &entry.output);
            let mut optional = |field, rate: &Option<Spanned<Usd>>, default| match rate {
                Some(rate) => self.rate(model, field, rate),
                None => default,
            };
            prices.push(Price {
                effective_from: day,
                input,
                output,
                cached_input: optional("cached_input", &entry.cached_input, input),
                cache_write: optional("cache_write", &entry.cache_write, input),
                reasoning: optional("reasoning", &entry.reasoning, output),
            });
        }
        prices.sort_by_key(|p| p.effective_from);
        prices
    }

    /// A token limit (`field`), which must be positive.
    fn tokens(&mut self, model: &str, field: &str, limit: &Spanned<i64>) -> Option<u64> {
        let tokens = u64::try_from(limit.value).ok().filter(|&t| t > 0);
        if tokens.is_none() {
            self.error(
                limit.referenced,
                format!(
                    "model {model:?}: {field} {} is not a positive number of tokens",
                    limit.value
                ),
            );
        }
        tokens
    }

    fn rate(&mut self, model: &str, field: &str, rate: &Spanned<Usd>) -> NanoUsd {
        let Usd(amount) = rate.value;
        if amount < NanoUsd::ZERO {
            self.error(
                rate.referenced,
                format!("model {model:?}: {field} price {amount} is negative"),
            );
        }
        amount
    }
}

#[cfg(test)]
mod tests;
