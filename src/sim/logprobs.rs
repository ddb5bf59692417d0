//! Token log probabilities for OpenAI chat requests that ask for `logprobs`.
//!
//! Each token's logprob is drawn around a mean (the `logprob=X` directive, else
//! [`DEFAULT_MEAN`]) and the draws are centred so that the mean over the answer is exactly X:
//! a confidence judge sees the number the test chose.

use serde_json::{Value, json};

use super::ids::mix;
use super::text::word;

/// A confident model: about 90% average token probability.
pub(crate) const DEFAULT_MEAN: f64 = -0.1;
/// OpenAI's cap on `top_logprobs`.
const MAX_TOP: u64 = 20;
/// Stands in for the log of a probability too small to matter.
const FLOOR: f64 = -9999.0;

/// What the request asked for: `logprobs: true`, and `top_logprobs: N` alternatives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub top: usize,
}

impl Wanted {
    pub fn of(req: &Value) -> Option<Self> {
        if req.get("logprobs").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let top = req.get("top_logprobs").and_then(Value::as_u64).unwrap_or(0);
        Some(Wanted {
            top: top.min(MAX_TOP) as usize,
        })
    }
}

/// `n` logprobs, all <= 0, whose mean is `mean` (up to rounding).
pub(crate) fn draw(n: usize, mean: f64, seed: u64) -> Vec<f64> {
    // Offsets within ±|mean|/2, centred: every value then lies within [2·mean, 0].
    let spread = mean.abs() / 2.0;
    let offsets: Vec<f64> = (0..n as u64)
        .map(|i| (mix(seed ^ mix(i)) % 2001) as f64 / 1000.0 - 1.0)
        .map(|unit| unit * spread)
        .collect();
    let centre = offsets.iter().sum::<f64>() / n.max(1) as f64;
    offsets
        .iter()
        .map(|off| (mean + off - centre).min(0.0))
        .collect()
}

/// The `logprobs.content` entries of `tokens`, each with `top` alternatives.
pub(crate) fn entries(tokens: &[String], values: &[f64], top: usize) -> Vec<Value> {
    tokens
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (token, &logprob))| {
            // The rest of the probability mass, halved for each further alternative.
            let rest = (1.0 - logprob.exp()).max(0.0).ln().max(FLOOR);
            let alternatives = (1..top as u64).map(|j| {
                let space = if token.starts_with(' ') { " " } else { "" };
                let mut alt = format!("{space}{}", word(i as u64 + j * 7));
                if alt == *token {
                    alt = format!("{space}{}", word(i as u64 + j * 7 + 1));
                }
                let lp = (rest - j as f64 * std::f64::consts::LN_2).max(FLOOR);
                (lp, entry(&alt, lp))
            });
            let mut top_logprobs: Vec<(f64, Value)> = (top > 0)
                .then(|| (logprob, entry(token, logprob)))
                .into_iter()
                .chain(alternatives)
                .collect();
            // Most likely first, as OpenAI lists them.
            top_logprobs.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top_logprobs: Vec<Value> = top_logprobs.into_iter().map(|(_, e)| e).collect();
            let mut e = entry(token, logprob);
            e["top_logprobs"] = Value::from(top_logprobs);
            e
        })
        .collect()
}

fn entry(token: &str, logprob: f64) -> Value {
    json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_the_asked_mean_and_are_never_positive() {
        for mean in [-0.2, -3.5, -0.1, 0.0, -50.0] {
            for n in [1, 2, 7, 64] {
                let v = draw(n, mean, 42);
                let avg = v.iter().sum::<f64>() / n as f64;
                assert!((avg - mean).abs() < 1e-9, "{mean} over {n}: {avg}");
                assert!(v.iter().all(|x| *x <= 0.0));
            }
        }
        let v = draw(10, -1.0, 3);
        assert!(v.iter().any(|x| (x - v[0]).abs() > 1e-6), "values vary");
    }

    #[test]
    fn top_logprobs_include_the_token_and_fit_in_one() {
        let tokens = vec!["Hello".to_owned(), " world".to_owned()];
        let e = entries(&tokens, &[-0.05, -2.0], 3);
        assert_eq!(e[1]["bytes"], json!(" world".as_bytes()));
        for item in &e {
            let top = item["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert!(top.iter().any(|t| t["token"] == item["token"]));
            let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
            assert!(lps.windows(2).all(|w| w[0] >= w[1]), "most likely first");
            let total: f64 = top
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap().exp())
                .sum();
            assert!(total <= 1.0 + 1e-9);
        }
        assert_eq!(
            entries(&tokens, &[-0.1, -0.1], 0)[0]["top_logprobs"],
            json!([])
        );
    }
}
