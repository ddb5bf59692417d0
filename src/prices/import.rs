//! Conversion of LiteLLM's `model_prices_and_context_window.json` into a Tollgate price file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDate;
use serde_json::{Map, Value};

use super::file::FORMAT_VERSION;
use super::{PriceError, json_error, strip_snapshot};
use crate::money::NanoUsd;

/// Modes whose calls are billed per text token, which is all Tollgate meters.
const METERED_MODES: [&str; 4] = ["chat", "completion", "embedding", "responses"];

/// Rates per 1M tokens; `None` where LiteLLM gives none (the price file's default applies).
#[derive(Debug, PartialEq, Eq)]
struct Rates {
    input: NanoUsd,
    output: NanoUsd,
    cached_input: Option<NanoUsd>,
    cache_write: Option<NanoUsd>,
    reasoning: Option<NanoUsd>,
}

#[derive(Debug)]
struct Imported<'a> {
    provider: &'a str,
    context_window: Option<u64>,
    max_output_tokens: Option<u64>,
    rates: Rates,
}

impl Imported<'_> {
    /// Whether a lookup resolving to `base` instead would find the same entry data.
    fn same_as(&self, base: &Imported<'_>) -> bool {
        self.rates == base.rates
            && self.context_window == base.context_window
            && self.max_output_tokens == base.max_output_tokens
    }
}

/// Convert LiteLLM's model_prices_and_context_window.json into Tollgate's YAML price file text.
///
/// Keeps the text-priced models (chat, completion, embedding, responses) whose
/// `litellm_provider` is one of `providers` (`text-completion-openai` counts as `openai`).
/// Skips fine-tunes, prefixed keys (regions, image sizes, other hosts), image/audio-only
/// models and models that bill audio tokens, which Tollgate does not count. A dated or
/// `-latest` snapshot is left out when the name it resolves to has the same rates and
/// token limits, since lookups resolve it there anyway. Long-context surcharges and
/// batch/flex/priority tiers are not represented.
///
/// A model's `context_window` is LiteLLM's `max_input_tokens` and its `max_output_tokens`
/// LiteLLM's field of that name, each when given as a positive integer.
pub fn import_litellm(
    json: &str,
    effective_from: NaiveDate,
    providers: &[&str],
) -> Result<String, PriceError> {
    let map: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| json_error("LiteLLM price map", &e))?;

    let mut models = BTreeMap::new();
    for (name, spec) in &map {
        let Some(spec) = spec.as_object() else {
            continue;
        };
        let Some(provider) = provider_of(spec, providers) else {
            continue;
        };
        if !is_text_model(name, spec) {
            continue;
        }
        if let Some(rates) = rates(spec) {
            models.insert(
                name.as_str(),
                Imported {
                    provider,
                    context_window: tokens(spec, "max_input_tokens"),
                    max_output_tokens: tokens(spec, "max_output_tokens"),
                    rates,
                },
            );
        }
    }

    let redundant: Vec<&str> = models
        .iter()
        .filter(|(name, model)| {
            std::iter::successors(strip_snapshot(name), |n| strip_snapshot(n))
                .find_map(|base| models.get(base))
                .is_some_and(|base| model.same_as(base))
        })
        .map(|(name, _)| *name)
        .collect();
    for name in redundant {
        models.remove(name);
    }

    Ok(render(&models, effective_from, providers))
}

/// The entry of `providers` that `spec`'s `litellm_provider` belongs to.
fn provider_of<'p>(spec: &Map<String, Value>, providers: &[&'p str]) -> Option<&'p str> {
    let litellm = spec.get("litellm_provider")?.as_str()?;
    let litellm = litellm.strip_prefix("text-completion-").unwrap_or(litellm);
    providers.iter().copied().find(|p| *p == litellm)
}

fn is_text_model(name: &str, spec: &Map<String, Value>) -> bool {
    let mode = spec.get("mode").and_then(Value::as_str);
    let has_text = |key| match spec.get(key).and_then(Value::as_array) {
        Some(modalities) => modalities.iter().any(|m| m == "text"),
        None => true,
    };
    let bills_audio = ["input_cost_per_audio_token", "output_cost_per_audio_token"]
        .iter()
        .any(|key| spec.contains_key(*key));
    !name.starts_with("ft:")
        && !name.contains("fine-tune")
        && !name.contains('/')
        && mode.is_some_and(|m| METERED_MODES.contains(&m))
        && has_text("supported_modalities")
        && has_text("supported_output_modalities")
        && !bills_audio
}

/// A token limit of the entry: `max_input_tokens` (the provider's input window) or
/// `max_output_tokens`. LiteLLM's `max_tokens` is a legacy field that holds the output
/// limit when the provider gives one and the input limit only otherwise, so it can stand in
/// for neither and is never read. A value that is not a positive integer leaves the limit
/// out.
fn tokens(spec: &Map<String, Value>, key: &str) -> Option<u64> {
    spec.get(key)?.as_u64().filter(|&tokens| tokens > 0)
}

/// The entry's rates, or None when a required one is missing or any is unusable.
fn rates(spec: &Map<String, Value>) -> Option<Rates> {
    // Outer None: present but unusable (skip the model); inner None: absent.
    let rate = |key: &str| -> Option<Option<NanoUsd>> {
        match spec.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::Number(n)) => per_token_to_per_million(&n.to_string())
                .filter(|r| *r >= NanoUsd::ZERO)
                .map(Some),
            Some(_) => None,
        }
    };
    let embedding = spec.get("mode").and_then(Value::as_str) == Some("embedding");
    let output = match rate("output_cost_per_token")? {
        Some(output) => output,
        // Embeddings produce no billed output tokens.
        None if embedding => NanoUsd::ZERO,
        None => return None,
    };
    Some(Rates {
        input: rate("input_cost_per_token")??,
        output,
        cached_input: rate("cache_read_input_token_cost")?,
        cache_write: rate("cache_creation_input_token_cost")?,
        reasoning: rate("output_cost_per_reasoning_token")?,
    })
}

/// Converts a JSON number's text in USD per token (`2.5e-06`) to USD per 1M tokens by
/// moving the decimal point six places in the text, so no float arithmetic is involved.
/// More than nine decimals round to the nano. None for text that is not a JSON number.
fn per_token_to_per_million(text: &str) -> Option<NanoUsd> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits × 10^shift
    let shift = exponent
        .checked_add(6)?
        .checked_sub(i64::try_from(frac.len()).ok()?)?;
    // Far beyond any price: too big to hold, or far below a nano.
    if shift.unsigned_abs() > 400 {
        return None;
    }
    let decimal = if shift >= 0 {
        format!("{digits}{}", "0".repeat(shift as usize))
    } else {
        let places = shift.unsigned_abs() as usize;
        let padded = format!("{digits:0>places$}");
        let (int, frac) = padded.split_at(padded.len() - places);
        format!("{int}.{frac}")
    };
    NanoUsd::parse_usd(&format!("{sign}{decimal}"))
}

/// `2.500000000` → `2.5`, `10.000000000` → `10`.
fn format_usd(amount: NanoUsd) -> String {
    let text = amount.to_string();
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A mapping key or scalar, quoted unless it is plainly a bare name.
fn yaml_scalar(text: &str) -> String {
    let plain = text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        text.to_owned()
    } else {
        // A JSON string is a valid YAML double-quoted scalar.
        Value::from(text).to_string()
    }
}

fn render(
    models: &BTreeMap<&str, Imported<'_>>,
    effective_from: NaiveDate,
    providers: &[&str],
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "# Prices in USD per 1M tokens.\n\
         # Imported from LiteLLM's model_prices_and_context_window.json (providers: {}),\n\
         # effective from {effective_from}. Regenerate instead of editing; see prices/README.md.\n\
         version: {FORMAT_VERSION}\n\
         models:\n",
        providers.join(", "),
    );
    for (name, model) in models {
        let r = &model.rates;
        let _ = write!(
            out,
            "  {}:\n    provider: {}\n",
            yaml_scalar(name),
            yaml_scalar(model.provider),
        );
        let limits = [
            ("context_window", model.context_window),
            ("max_output_tokens", model.max_output_tokens),
        ];
        for (field, tokens) in limits {
            if let Some(tokens) = tokens {
                let _ = writeln!(out, "    {field}: {tokens}");
            }
        }
        let _ = write!(
            out,
            "    prices:\n      - effective_from: {effective_from}\n        input: {}\n        output: {}\n",
            format_usd(r.input),
            format_usd(r.output),
        );
        let optional = [
            ("cached_input", r.cached_input),
            ("cache_write", r.cache_write),
            ("reasoning", r.reasoning),
        ];
        for (field, rate) in optional {
            if let Some(rate) = rate {
                let _ = writeln!(out, "        {field}: {}", format_usd(rate));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_the_decimal_point_in_the_text() {
        let cases = [
            ("2.5e-06", "2.500000000"),
            ("1.5e-07", "0.150000000"),
            ("3e-06", "3.000000000"),
            ("3E-6", "3.000000000"),
            ("1.5625e-05", "15.625000000"),
            ("0.00012", "120.000000000"),
            ("5e-09", "0.005000000"),
            ("0.0", "0.000000000"),
            ("0", "0.000000000"),
            ("2", "2000000.000000000"),
            ("1.25e+1", "12500000.000000000"),
            ("1e-16", "0.000000000"),
        ];
        for (text, per_million) in cases {
            let got = per_token_to_per_million(text).map(|n| n.to_string());
            assert_eq!(got.as_deref(), Some(per_million), "{text}");
        }
        for bad in [
            "",
            "e5",
            "1.2.3",
            "abc",
            "1e999999",
            "1e-99999999999999999999",
        ] {
            assert_eq!(per_token_to_per_million(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_without_trailing_zeros() {
        assert_eq!(format_usd(NanoUsd(2_500_000_000)), "2.5");
        assert_eq!(format_usd(NanoUsd(10_000_000_000)), "10");
        assert_eq!(format_usd(NanoUsd(5_000_000)), "0.005");
        assert_eq!(format_usd(NanoUsd::ZERO), "0");
    }

    #[test]
    fn quotes_only_names_that_need_it() {
        assert_eq!(yaml_scalar("gpt-4.1-mini"), "gpt-4.1-mini");
        assert_eq!(yaml_scalar("null"), "\"null\"");
        assert_eq!(yaml_scalar("4o"), "\"4o\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
    }
}
