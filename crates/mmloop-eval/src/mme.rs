//! MME result files: `image<TAB>question<TAB>truth<TAB>answer` per line, no header, one file
//! per subtask (named by it: `existence.txt`, `count.txt`, ...) or a folder of them. Every
//! line is a prediction carrying its own reference; the predictions and the references
//! readers both take the lines from here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{EvalError, Place};
use crate::input;

/// One question of an MME result file.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// `subtask/image/n`, n = 0 or 1 for the image's two questions.
    pub id: String,
    pub task: String,
    pub question: String,
    /// `yes` or `no`.
    pub truth: String,
    pub answer: String,
    pub at: Place,
}

/// Whether a text looks like MME result lines: tab-separated, the third field yes or no.
pub(crate) fn looks_like(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let cols: Vec<&str> = first.split('\t').collect();
    cols.len() >= 3 && matches!(cols[2].trim().to_ascii_lowercase().as_str(), "yes" | "no")
}

/// The lines of one MME result file; the subtask is the file name without `.txt`.
pub(crate) fn read_text(file: &Arc<PathBuf>, text: &str) -> Result<Vec<Line>, EvalError> {
    let task = file.file_stem().and_then(|s| s.to_str()).unwrap_or("mme").to_string();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let at = Place::new(file, i as u64 + 1);
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 4 {
            return Err(EvalError::input(
                at,
                format!("expected 4 tab-separated fields (image, question, truth, answer), found {}", cols.len()),
                "MME result files hold one question per line; tabs inside an answer must be removed",
            ));
        }
        lines.push(Line {
            id: format!("{task}/{}/{}", cols[0], lines.len() % 2),
            task: task.clone(),
            question: cols[1].to_string(),
            truth: cols[2].trim().to_string(),
            answer: cols[3].to_string(),
            at,
        });
    }
    if lines.is_empty() {
        return Err(EvalError::input(Place::file(file), "no MME questions in the file", "check the path"));
    }
    Ok(lines)
}

/// The lines of a folder of MME result files, in file-name order.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<Line>, EvalError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EvalError::usage(
            format!("{}: a folder, but no MME result files (*.txt) in it", dir.display()),
            "pass a predictions file, or a folder of MME result files",
        ));
    }
    let mut all = Vec::new();
    for f in files {
        let (file, text) = input::read_text(&f)?;
        all.extend(read_text(&file, &text)?);
    }
    Ok(all)
}
