//! OpenAI embeddings (`POST /v1/embeddings`): deterministic unit vectors of a small dimension.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::error::{Flavor, SimError};
use super::ids::{self, mix};
use super::openai::{model, u64_field};
use super::{Call, Reply, SimProvider};
use crate::tokens::Encoding;

/// Small enough to keep test payloads readable; `dimensions` can ask for more.
const DEFAULT_DIMENSIONS: u64 = 8;
const MAX_DIMENSIONS: u64 = 3072;

pub(super) async fn embeddings(
    State(sim): State<SimProvider>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.handle(Flavor::OpenAi, &headers, &body, build).await
}

/// One thing to embed: text, or a pre-tokenized prompt.
enum Input<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

fn build(call: &Call, req: &Value) -> Result<Reply, SimError> {
    let model = model(req, Flavor::OpenAi)?;
    let inputs = inputs(req.get("input"))?;
    let dimensions = match u64_field(req, "dimensions") {
        None => DEFAULT_DIMENSIONS,
        Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d,
        Some(d) => {
            return Err(SimError::invalid_param(
                "dimensions",
                format!(
                    "Invalid 'dimensions': {d}. Expected a value between 1 and {MAX_DIMENSIONS}."
                ),
            ));
        }
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(SimError::invalid_param(
                "encoding_format",
                format!(
                    "Invalid value for 'encoding_format': '{other}'. Expected 'float' or 'base64'."
                ),
            ));
        }
    };

    let enc = Encoding::for_model(model);
    let mut prompt_tokens = 0;
    let mut data = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let (tokens, seed) = match input {
            Input::Text(text) => (enc.count(text), ids::stable_hash([model, text])),
            Input::Tokens(ids) => (
                ids.len() as u64,
                ids::stable_hash([model, &Value::from(ids.to_vec()).to_string()]),
            ),
        };
        prompt_tokens += tokens;
        let vector = unit_vector(seed, dimensions);
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(BASE64.encode(&bytes))
        } else {
            json!(vector)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let mut body = json!({"object": "list", "data": data, "model": model});
    if !call.directives.no_usage {
        body["usage"] = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
    }
    Ok(Reply::Json(body))
}

/// `input` is a string, a list of strings, a list of token ids, or a list of such lists.
fn inputs(input: Option<&Value>) -> Result<Vec<Input<'_>>, SimError> {
    let invalid = || {
        SimError::invalid_param(
            "input",
            "'$.input' is invalid. Please check the API reference: \
             https://platform.openai.com/docs/api-reference.",
        )
    };
    let inputs = match input {
        None | Some(Value::Null) => return Err(SimError::missing(Flavor::OpenAi, "input")),
        Some(Value::String(s)) => vec![Input::Text(s)],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            vec![Input::Tokens(items)]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(Input::Text(s)),
                Value::Array(ids) if ids.iter().all(Value::is_u64) => Ok(Input::Tokens(ids)),
                _ => Err(invalid()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid()),
    };
    let empty = |i: &Input<'_>| match i {
        Input::Text(s) => s.is_empty(),
        Input::Tokens(ids) => ids.is_empty(),
    };
    if inputs.is_empty() || inputs.iter().any(empty) {
        return Err(invalid());
    }
    Ok(inputs)
}

/// Pseudo-random components from `seed`, normalised to length 1 like real embeddings.
fn unit_vector(seed: u64, dimensions: u64) -> Vec<f32> {
    let raw: Vec<f64> = (0..dimensions)
        .map(|i| {
            // The top 53 bits give a uniform value in [0, 1), mapped to [-1, 1).
            let unit = (mix(seed ^ mix(i)) >> 11) as f64 / (1u64 << 53) as f64;
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    raw.iter().map(|x| (x * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let v = unit_vector(42, 8);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(v, unit_vector(42, 8));
        assert_ne!(v, unit_vector(43, 8));
    }
}
