//! Streaming readers and writers for the dataset formats VQA and caption teams use:
//! ms-swift, LLaVA, ShareGPT, COCO captions, VQAv2, TextVQA, Label Studio, HF Parquet,
//! plain JSONL/CSV tables and image folders.
//!
//! Readers turn a file into [`Record`]s one at a time, with the file and line each came
//! from; writers turn records back into a file. A round trip through the same format loses
//! nothing: fields the data model has no place for ride along in `Record::meta`.
//! This crate never touches the project store, and reads images only to find them.

mod conversation;
mod error;
mod image_ref;
pub mod infer_row;
mod json;
mod output;
pub mod rows;

mod coco;
mod detect;
mod folder;
mod labelstudio;
mod llava;
mod parquet_io;
mod sharegpt;
mod swift;
mod table;
mod textvqa;
mod vqav2;

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use detect::detect;
pub use error::{FormatError, RecordError};
pub use infer_row::InferRow;
use mmloop_core::{Record, Task};

/// The prompt caption items get when the source has none (COCO, image folders).
pub const DEFAULT_CAPTION_PROMPT: &str = "Describe this image in one sentence.";

/// A dataset format, by its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// ms-swift JSONL: `messages` + `images`, or `query`/`response`/`history`.
    Swift,
    /// LLaVA instruct JSON: `id`, `image`, `conversations` of `from`/`value`.
    Llava,
    /// LLaMA-Factory ShareGPT: `conversations` + plural `images`.
    ShareGpt,
    /// COCO captions: `images` + `annotations` with `caption`.
    Coco,
    /// VQAv2 questions file, with its annotations file beside it.
    Vqav2,
    /// TextVQA 0.5.1: `data` with ten `answers` each.
    TextVqa,
    /// Label Studio JSON export (read) and import JSON with predictions (write).
    LabelStudio,
    /// Parquet in the HF `datasets` layout (`image` as `struct<bytes, path>`).
    Parquet,
    /// Generic JSON Lines with `image`, `question`, `answer`.
    Jsonl,
    /// Generic CSV with `image,question,answer` columns.
    Csv,
    /// A folder of images (with an optional `metadata.jsonl`).
    Folder,
}

impl Format {
    pub const ALL: [Format; 11] = [
        Format::Swift,
        Format::Llava,
        Format::ShareGpt,
        Format::Coco,
        Format::Vqav2,
        Format::TextVqa,
        Format::LabelStudio,
        Format::Parquet,
        Format::Jsonl,
        Format::Csv,
        Format::Folder,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Format::Swift => "swift",
            Format::Llava => "llava",
            Format::ShareGpt => "sharegpt",
            Format::Coco => "coco",
            Format::Vqav2 => "vqav2",
            Format::TextVqa => "textvqa",
            Format::LabelStudio => "labelstudio",
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Folder => "folder",
        }
    }

    /// Whether an export writes a folder rather than one file.
    pub const fn writes_folder(self) -> bool {
        matches!(self, Format::Vqav2)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.to_ascii_lowercase().replace(['-', '_'], "");
        let alias = match norm.as_str() {
            "msswift" | "swiftjsonl" => "swift",
            "labelstudiojson" | "ls" => "labelstudio",
            "imagefolder" | "images" | "dir" => "folder",
            "vqa" | "vqav2questions" => "vqav2",
            other => other,
        };
        Format::ALL.into_iter().find(|f| f.name() == alias).ok_or_else(|| {
            FormatError::Usage(format!(
                "unknown format {s:?}\n  hint: one of {}",
                Format::ALL.map(Format::name).join(", ")
            ))
        })
    }
}

/// What a reader needs beyond the file itself.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The task of items the format does not fix (chat formats, tables); default VQA.
    pub task: Option<Task>,
    /// The question every image of a folder gets (VQA).
    pub question: Option<String>,
    /// The prompt caption items get; default [`DEFAULT_CAPTION_PROMPT`].
    pub prompt: Option<String>,
    /// Where relative image paths and COCO-style file names are found; default: the
    /// dataset file's folder.
    pub images_dir: Option<PathBuf>,
    /// The VQAv2 annotations file that goes with a questions file.
    pub annotations: Option<PathBuf>,
}

impl ReadOptions {
    /// The folder relative image paths of `path` resolve against.
    pub fn images_dir_for(&self, path: &Path) -> PathBuf {
        match &self.images_dir {
            Some(d) => d.clone(),
            None if path.is_dir() => path.to_path_buf(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    pub(crate) fn caption_prompt(&self) -> String {
        self.prompt.clone().unwrap_or_else(|| DEFAULT_CAPTION_PROMPT.to_string())
    }
}

/// What a reader hands each record (or record error) to; `Break` stops reading.
pub type Sink<'a> = dyn FnMut(Result<Record, RecordError>) -> ControlFlow<()> + 'a;

/// Reads `path` as `format`, handing each record to `sink` as soon as it is parsed.
///
/// Errors of single records go to the sink (the caller decides to stop or skip); errors
/// that make the whole file unreadable are returned.
pub fn read(format: Format, path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    match format {
        Format::Swift => swift::read(path, opts, sink),
        Format::Llava => llava::read(path, opts, sink),
        Format::ShareGpt => sharegpt::read(path, opts, sink),
        Format::Coco => coco::read(path, opts, sink),
        Format::Vqav2 => vqav2::read(path, opts, sink),
        Format::TextVqa => textvqa::read(path, opts, sink),
        Format::LabelStudio => labelstudio::read(path, opts, sink),
        Format::Parquet => parquet_io::read(path, opts, sink),
        Format::Jsonl => table::read_jsonl(path, opts, sink),
        Format::Csv => table::read_csv(path, opts, sink),
        Format::Folder => folder::read(path, opts, sink),
    }
}

/// What a writer needs beyond the records.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Parquet: embed image bytes instead of paths.
    pub embed_images: bool,
    /// Label Studio: the `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` image paths are made
    /// relative to; `None` writes paths as they are.
    pub document_root: Option<PathBuf>,
    /// VQAv2: the `data_subtype` written into the files (e.g. `train2014`).
    pub data_subtype: Option<String>,
}

/// What a writer produced.
#[derive(Clone, Debug, Default)]
pub struct WriteSummary {
    pub records: u64,
    pub files: Vec<PathBuf>,
    /// What the format could not hold as the project has it, for the user to read.
    pub notes: Vec<String>,
}

/// Writes `records` to `out` as `format`. Records of one conversation must be
/// consecutive. The output appears only once complete.
pub fn write(
    format: Format,
    out: &Path,
    records: &mut dyn Iterator<Item = Record>,
    opts: &WriteOptions,
) -> Result<WriteSummary, FormatError> {
    match format {
        Format::Swift => swift::write(out, records),
        Format::Llava => llava::write(out, records),
        Format::ShareGpt => sharegpt::write(out, records),
        Format::Coco => coco::write(out, records),
        Format::Vqav2 => vqav2::write(out, records, opts),
        Format::TextVqa => textvqa::write(out, records),
        Format::LabelStudio => labelstudio::write(out, records, opts),
        Format::Parquet => parquet_io::write(out, records, opts),
        Format::Jsonl => table::write_jsonl(out, records),
        Format::Csv => table::write_csv(out, records),
        Format::Folder => Err(FormatError::Usage(
            "an image folder is an input format only\n  hint: export to jsonl, csv or parquet instead".into(),
        )),
    }
}
