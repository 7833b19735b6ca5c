//! A folder of images: one item per image file (searched recursively, in path order),
//! each asked `--question` (VQA) or `--prompt` (caption). A `metadata.jsonl` or
//! `metadata.csv` in the folder (the HF ImageFolder convention: a `file_name` column
//! plus any of `question`, `answer`, ...) gives each image its own question and answer.

use std::path::Path;
use std::sync::Arc;

use mmloop_core::{ImageSource, Location, Record, Task};
use walkdir::WalkDir;

use crate::error::{FormatError, RecordError};
use crate::{ReadOptions, Sink, table};

pub(crate) const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

pub(crate) fn is_image_path(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

pub(crate) fn read(dir: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let mut with_dir = opts.clone();
    with_dir.images_dir = Some(dir.to_path_buf());
    for (name, jsonl) in [("metadata.jsonl", true), ("metadata.csv", false)] {
        let meta = dir.join(name);
        if meta.is_file() {
            return if jsonl {
                table::read_jsonl(&meta, &with_dir, sink)
            } else {
                table::read_csv(&meta, &with_dir, sink)
            };
        }
    }
    let file = Arc::new(dir.to_path_buf());
    let (task, question) = match (&opts.question, &opts.prompt, opts.task) {
        (Some(_), Some(_), _) => {
            return Err(FormatError::Usage("--question and --prompt exclude each other\n  hint: --question asks each image a question (VQA), --prompt asks for a caption".into()));
        }
        (Some(q), None, _) => (Task::Vqa, q.clone()),
        (None, Some(p), _) => (Task::Caption, p.clone()),
        (None, None, Some(Task::Caption)) => (Task::Caption, opts.caption_prompt()),
        (None, None, _) => {
            return Err(FormatError::Usage(format!(
                "{}: an image folder needs --question \"...\" (VQA) or --prompt \"...\" (captions)",
                dir.display()
            )));
        }
    };
    let mut found = 0u64;
    // The project's own folder may sit inside the image folder.
    let walk = WalkDir::new(dir).follow_links(false).sort_by_file_name().into_iter();
    for entry in walk.filter_entry(|e| e.file_name() != ".mmloop") {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
            FormatError::io(path, e.into_io_error().unwrap_or_else(|| std::io::Error::other("walk error")))
        })?;
        if !entry.file_type().is_file() || !is_image_path(entry.path()) {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let rel = rel.to_string_lossy().replace('\\', "/");
        let mut r = Record::new(task, question.clone(), Location::at(&file, 0, found));
        r.source.line = None;
        r.id = Some(rel.clone());
        r.images = vec![ImageSource::Path(rel)];
        found += 1;
        if sink(Ok(r)).is_break() {
            return Ok(());
        }
    }
    if found == 0 {
        return Err(RecordError::new(Location::file(&file), "no image files in the folder")
            .hint(format!("mmloop looks for {} files, in subfolders too", IMAGE_EXTENSIONS.join(", ")))
            .into());
    }
    Ok(())
}
