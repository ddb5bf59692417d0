//! Reading `tollgate.yaml`: syntax and type errors come from the YAML parser with their
//! position; everything else is left to `validate`.

use super::problem::{ConfigError, Problem};
use super::validate;
use super::{RawConfig, Validated};
use std::path::Path;

/// Parses YAML text into `T`, turning a parse error into a positioned [`Problem`].
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, Problem> {
    serde_saphyr::from_str(text).map_err(|e| {
        let message = e.without_snippet().to_string();
        // The rendered message may repeat the position; keep only the first line.
        let message = message.lines().next().unwrap_or("invalid YAML").to_string();
        match e.location() {
            Some(loc) => Problem::at(file, &loc, message),
            None => Problem::whole(file, message),
        }
    })
}

/// Loads and validates a config file, with the environment of this process.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![Problem::whole(path, format!("cannot read: {e}"))]))?;
    let raw: RawConfig = parse_yaml(&text, path).map_err(|p| ConfigError(vec![p]))?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::validate(raw, path, base, &|name| std::env::var(name).ok())
}
