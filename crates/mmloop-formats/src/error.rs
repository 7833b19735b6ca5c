//! Errors of reading and writing dataset files. Each names the file and the line (or
//! record) and, where we can tell, what to do about it.

use std::path::PathBuf;

pub use mmloop_core::RecordError;

/// A whole file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is broken as a whole (not JSON, truncated, wrong top-level shape...).
    #[error("{0}")]
    File(RecordError),
    #[error("{path}: cannot tell the format{}\n  hint: name it with --format (swift, llava, sharegpt, coco, vqav2, textvqa, labelstudio, parquet, jsonl, csv, folder)", .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Unknown { path: PathBuf, detail: Option<String> },
    #[error("{0}")]
    Usage(String),
    #[error("{path}: parquet: {message}")]
    Parquet { path: PathBuf, message: String },
}

impl FormatError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }
}

impl From<RecordError> for FormatError {
    fn from(e: RecordError) -> Self {
        FormatError::File(e)
    }
}
