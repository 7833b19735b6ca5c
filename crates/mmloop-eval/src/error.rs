//! Errors of reading predictions and references and of scoring them. Every message names
//! the file and line (or the id) it is about and ends with what to do next; nothing here
//! is ever silently skipped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a prediction or reference came from: a file and a 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: Arc<PathBuf>,
    /// `None` for a whole-file problem or a record whose line is unknown (project items).
    pub line: Option<u64>,
}

impl Place {
    pub fn new(file: &Arc<PathBuf>, line: u64) -> Self {
        Place { file: file.clone(), line: Some(line) }
    }

    pub fn file(file: &Arc<PathBuf>) -> Self {
        Place { file: file.clone(), line: None }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {source}\n  hint: check the path", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Bad input at a place: `file:line: message` and a hint.
    #[error("{at}: {message}\n  hint: {hint}")]
    Input { at: Place, message: String, hint: String },
    /// A dataset file that `mmloop-formats` could not read.
    #[error(transparent)]
    Format(#[from] mmloop_formats::FormatError),
    /// A dataset record that `mmloop-formats` could not read.
    #[error(transparent)]
    Record(#[from] mmloop_core::RecordError),
    /// Ids on one side that the other side lacks.
    #[error(
        "{count} {what} (first: {first})\n  hint: pass --allow-missing to score the {matched} that match and list the rest in metrics.json"
    )]
    Missing { what: String, count: usize, first: String, matched: usize },
    /// Flags that do not fit together or a metric that does not apply.
    #[error("{message}\n  hint: {hint}")]
    Usage { message: String, hint: String },
    #[error("{0}")]
    Metric(String),
}

impl EvalError {
    pub fn input(at: Place, message: impl Into<String>, hint: impl Into<String>) -> Self {
        EvalError::Input { at, message: message.into(), hint: hint.into() }
    }

    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        EvalError::Usage { message: message.into(), hint: hint.into() }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EvalError::Io { path: path.to_path_buf(), source }
    }
}
