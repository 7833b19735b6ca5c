//! Files ⇄ store: the two pipelines that join a format reader or writer to the store.
//! Reading and writing run on their own threads; the store runs on its writer thread.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;

use anyhow::bail;
use mmloop_formats::{Format, ReadOptions, WriteOptions, WriteSummary};
use mmloop_store::{
    ExportFilter, ExportInfo, ImportOptions, ImportProgress, ImportReport, Incoming, Store, VersionSpec,
};
use serde_json::json;

/// One file to import.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    pub file: PathBuf,
    /// `None`: detect from the file.
    pub format: Option<Format>,
    pub read: ReadOptions,
    pub copy_images: bool,
    pub skip_bad: bool,
    pub actor: String,
}

impl ImportRequest {
    pub fn new(file: impl Into<PathBuf>, actor: &str) -> Self {
        ImportRequest {
            file: file.into(),
            format: None,
            read: ReadOptions::default(),
            copy_images: false,
            skip_bad: false,
            actor: actor.to_string(),
        }
    }
}

/// Reads `req.file` on a thread and streams its records into the store, which keeps all
/// of it or none.
pub async fn import_file(
    store: &Store,
    req: &ImportRequest,
    progress: Box<dyn ImportProgress>,
) -> anyhow::Result<ImportReport> {
    if !req.file.exists() {
        bail!("{} does not exist", req.file.display());
    }
    let format = match req.format {
        Some(f) => f,
        None => mmloop_formats::detect(&req.file)?,
    };
    let opts = req.read.clone();
    let images_dir = opts.images_dir_for(&req.file);
    let copy = req.copy_images || store.config().import.copy_images;
    let config = json!({
        "format": format.name(),
        "task": opts.task,
        "question": opts.question,
        "prompt": opts.prompt,
        "images_dir": images_dir.display().to_string(),
        "annotations": opts.annotations.as_ref().map(|p| p.display().to_string()),
        "copy": copy,
        "skip_bad": req.skip_bad,
    });
    let import_opts = ImportOptions {
        format: format.name().to_string(),
        file: std::path::absolute(&req.file).unwrap_or_else(|_| req.file.clone()),
        images_dir,
        copy_images: copy,
        skip_bad: req.skip_bad,
        actor: req.actor.clone(),
        config,
    };
    // Two passes over the file: the images are read and checked first, with no lock on the
    // database, so the import's transaction (which blocks every other writer, a review
    // server included) only does SQL.
    let progress: std::sync::Arc<dyn ImportProgress> = std::sync::Arc::from(progress);
    let (reader, rx) = read_records(format, &req.file, &opts)?;
    let checked = store.check_images(&import_opts, rx, progress.clone()).await;
    let _ = reader.join();
    let checked = checked?;
    let (reader, rx) = read_records(format, &req.file, &opts)?;
    let result = store.import(import_opts, rx, checked, Box::new(progress)).await;
    let _ = reader.join();
    Ok(result?)
}

/// Reads `file` on a thread, sending its records and how it ended.
fn read_records(
    format: Format,
    file: &std::path::Path,
    opts: &ReadOptions,
) -> anyhow::Result<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<Incoming>)> {
    let (tx, rx) = sync_channel::<Incoming>(8192);
    let (file, opts) = (file.to_path_buf(), opts.clone());
    let reader = std::thread::Builder::new().name("mmloop-reader".into()).spawn(move || {
        let mut sink = |r: Result<mmloop_core::Record, mmloop_core::RecordError>| {
            let msg = match r {
                Ok(r) => Incoming::Record(Box::new(r)),
                Err(e) => Incoming::Bad(e),
            };
            if tx.send(msg).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
        };
        let end = match mmloop_formats::read(format, &file, &opts, &mut sink) {
            Ok(()) => Incoming::End,
            Err(e) => Incoming::Abort(e.to_string()),
        };
        let _ = tx.send(end);
    })?;
    Ok((reader, rx))
}

/// One export to write.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub version: VersionSpec,
    pub filter: ExportFilter,
    pub format: Format,
    pub out: PathBuf,
    pub write: WriteOptions,
}

/// Writes the request's version (filtered) to its output; `on_start` learns what is being
/// read, `on_record` is called per record.
pub async fn export_file(
    store: &Store,
    req: ExportRequest,
    on_start: impl FnOnce(&ExportInfo),
    on_record: impl Fn() + Send,
) -> anyhow::Result<(ExportInfo, WriteSummary)> {
    let ExportRequest { version, filter, format, out, write: opts } = req;
    if format == Format::Folder {
        bail!("an image folder is an input format only\n  hint: export to jsonl, csv or parquet");
    }
    let (info, rx) = store.export(version, filter).await?;
    on_start(&info);
    let mut failure = None;
    let summary = tokio::task::block_in_place(|| {
        let mut records = rx.into_iter().map_while(|r| match r {
            Ok(rec) => {
                on_record();
                Some(rec)
            }
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        mmloop_formats::write(format, &out, &mut records, &opts)
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok((info, summary?))
}
