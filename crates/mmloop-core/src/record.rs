//! `Record`: one item as a dataset file carries it, the unit that readers yield and
//! writers consume.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::hash::Digest;
use crate::model::{Answer, LabelStatus, Message, Prediction, Task};

/// Where an image of a record comes from, as the file spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A local path, as written in the file (relative paths are resolved by the importer).
    Path(String),
    /// An `http(s)://` URL.
    Url(String),
    /// Encoded image bytes (base64 or `data:` URI in JSON, binary in Parquet).
    Bytes(Arc<[u8]>),
}

impl ImageSource {
    /// A short description for error messages (never the bytes themselves).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Path(p) => p.clone(),
            ImageSource::Url(u) => u.clone(),
            ImageSource::Bytes(b) => format!("<{} inline bytes>", b.len()),
        }
    }
}

/// What the store knows of an image once imported; writers use it for COCO `images`
/// entries and Label Studio / Parquet output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub sha256: Digest,
    pub width: u32,
    pub height: u32,
    /// Lower-case format name (`jpeg`, `png`, ...).
    pub format: String,
}

/// Where a record was read from: the file, the 1-based line where the record starts,
/// and for JSON arrays and tables its 0-based position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<PathBuf>,
    pub line: Option<u64>,
    pub index: Option<u64>,
}

impl Location {
    pub fn line(file: &Arc<PathBuf>, line: u64) -> Self {
        Location { file: file.clone(), line: Some(line), index: None }
    }

    pub fn index(file: &Arc<PathBuf>, index: u64) -> Self {
        Location { file: file.clone(), line: None, index: Some(index) }
    }

    pub fn at(file: &Arc<PathBuf>, line: u64, index: u64) -> Self {
        Location { file: file.clone(), line: Some(line), index: Some(index) }
    }

    pub fn file(file: &Arc<PathBuf>) -> Self {
        Location { file: file.clone(), line: None, index: None }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(i) = self.index {
            write!(f, " (record {i})")?;
        }
        Ok(())
    }
}

/// One item as a dataset file carries it.
///
/// Multi-turn conversations are split into one record per answered turn; each keeps the
/// turns before it in `context` and shares a `conversation` key with its siblings so a
/// writer can join them back into one conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The source's own id for this item (question_id, annotation id, task id...).
    pub id: Option<String>,
    pub task: Task,
    /// The question, or for captions the prompt; image tags such as `<image>` are kept as
    /// the file wrote them.
    pub question: String,
    /// Messages before this turn (system prompt, earlier turns).
    pub context: Vec<Message>,
    /// Groups the turns of one conversation; `None` for single-turn items.
    pub conversation: Option<String>,
    /// 0-based index of this answered turn within its conversation.
    pub turn: u32,
    pub images: Vec<ImageSource>,
    /// Filled by the store on export, empty on import.
    pub image_info: Vec<ImageInfo>,
    pub answer: Option<Answer>,
    /// Review status of `answer`; readers leave it `None` unless the file records one
    /// (Label Studio annotations), and the importer then marks answers `Imported`.
    pub status: Option<LabelStatus>,
    pub predictions: Vec<Prediction>,
    pub split: Option<String>,
    pub tags: Vec<String>,
    /// Fields of the source record that have no place above, kept so a round trip through
    /// the same format loses nothing.
    pub meta: Map<String, Value>,
    pub source: Location,
}

impl Record {
    /// A single-turn record with everything optional left empty.
    pub fn new(task: Task, question: impl Into<String>, source: Location) -> Self {
        Record {
            id: None,
            task,
            question: question.into(),
            context: Vec::new(),
            conversation: None,
            turn: 0,
            images: Vec::new(),
            image_info: Vec::new(),
            answer: None,
            status: None,
            predictions: Vec::new(),
            split: None,
            tags: Vec::new(),
            meta: Map::new(),
            source,
        }
    }
}

/// One record could not be read; the rest of the file may still be fine, so importers
/// can skip it (`--skip-bad`) or abort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub location: Location,
    /// The record's own id, when it could be read.
    pub id: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl RecordError {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        RecordError { location, id: None, message: message.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn id(mut self, id: Option<String>) -> Self {
        self.id = id;
        self
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(id) = &self.id {
            write!(f, " (id {id})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecordError {}
