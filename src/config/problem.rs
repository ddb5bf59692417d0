//! What is wrong with a config, price or policy file, each problem with its position; used
//! by loading and validation alike.

use serde_saphyr::Location;
use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config, price or policy file, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Problem {
    pub fn at(file: &Path, loc: &Location, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_path_buf(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        }
    }

    /// A problem already printed with its own position (from a file this one names).
    pub fn located_elsewhere(message: impl Into<String>) -> Problem {
        Problem {
            file: PathBuf::new(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// A problem with the file as a whole (unreadable, missing).
    pub fn whole(file: &Path, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.as_os_str().is_empty() {
            write!(f, "{}", self.message)
        } else if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in a config; [`fmt::Display`] prints one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
