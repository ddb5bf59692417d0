//! Reading a policy directory into a checked [`PolicySet`](super::PolicySet).

use super::file::PolicyFile;
use super::{PolicySet, validate};
use crate::config::load::parse_yaml;
use crate::config::{ConfigError, ModelTable, Problem, Provider};
use crate::prices::PriceBook;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What policy files are checked against: the config they run with.
pub struct PolicyContext<'a> {
    /// The providers of `tollgate.yaml` that passed their checks.
    pub providers: &'a BTreeMap<String, Arc<Provider>>,
    pub models: &'a ModelTable,
    /// Every target and cascade step must be priced here.
    pub prices: &'a PriceBook,
    /// When prices are looked up.
    pub now: DateTime<Utc>,
    /// Providers defined in `tollgate.yaml` that failed their own checks, and `models`
    /// entries (names or `prefix*`) pointing at them: their problems are reported already,
    /// so targets naming them are not reported again.
    pub skipped_providers: BTreeSet<String>,
    pub skipped_models: Vec<String>,
}

/// One policy file as read, with the path its problems name.
pub(super) struct Read {
    pub path: PathBuf,
    pub file: PolicyFile,
}

/// Reads every `*.yaml` and `*.yml` file of `dir` (not its subdirectories), in name order,
/// and checks the rules together. Every problem is reported; a set with any is rejected
/// whole.
pub fn load_dir(dir: &Path, ctx: PolicyContext<'_>) -> Result<PolicySet, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError(vec![Problem::whole(
            dir,
            format!("cannot read the policy directory: {e}"),
        )])
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut problems = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::whole(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        // A file of comments only holds no rules yet.
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            continue;
        }
        match parse_yaml::<PolicyFile>(&text, &path) {
            Ok(file) => files.push(Read { path, file }),
            Err(p) => problems.push(p),
        }
    }
    match validate::check(&files, &ctx) {
        Ok(set) if problems.is_empty() => Ok(set),
        checked => {
            problems.extend(checked.err().unwrap_or_default());
            // In reading order, whatever check found them.
            problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(ConfigError(problems))
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
