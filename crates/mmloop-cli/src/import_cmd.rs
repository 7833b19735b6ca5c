//! `mmloop init` and `mmloop import`.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use anyhow::{Context, bail};
use console::style;
use indicatif::ProgressBar;
use mmloop_formats::{Format, ReadOptions};
use mmloop_store::{ImportOptions, ImportProgress, ImportReport, Incoming, Store};
use serde_json::json;

use crate::cli::{ImportArgs, InitArgs};
use crate::ui;

pub async fn init(a: InitArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::init(&a.dir, a.name.as_deref(), actor).await?;
    ui::ok(format!("created project {}", store.paths().root.display()));
    if a.example {
        let files = crate::example::write(&store.paths().root).context("writing the example data")?;
        for f in &files {
            let args = ImportArgs {
                project: a.dir.clone(),
                file: f.path.clone(),
                format: Some("swift".into()),
                images_dir: Some(store.paths().root.clone()),
                annotations: None,
                task: Some(f.task.into()),
                question: None,
                prompt: None,
                copy: false,
                skip_bad: false,
                json: false,
            };
            let report = import_into(&store, &args, actor, None).await?;
            ui::ok(format!(
                "imported {} {} items from {}",
                report.added,
                f.task,
                f.path.strip_prefix(&store.paths().root).unwrap_or(&f.path).display()
            ));
        }
        eprintln!("\nTry:");
        let d = a.dir.display();
        for c in [
            format!("mmloop stats {d}"),
            format!("mmloop split {d} --ratios 0.8,0.1,0.1 --seed 42"),
            format!("mmloop commit {d} -m \"first version\""),
            format!("mmloop export {d} --format llava --split train -o train.json"),
            format!("mmloop audit verify {d}"),
        ] {
            eprintln!("  {}", style(c).bold());
        }
    }
    store.close();
    Ok(())
}

struct Progress(ProgressBar);

impl ImportProgress for Progress {
    fn records(&self, done: u64) {
        self.0.set_position(done);
    }
}

pub async fn import(a: ImportArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let report = import_into(&store, &a, actor, Some(ui::spinner("importing"))).await?;
    store.close();
    if a.json {
        return ui::json(&report);
    }
    print_report(&a.file, &report);
    Ok(())
}

fn print_report(file: &Path, r: &ImportReport) {
    let mut parts = vec![format!("{} new items", ui::count(r.added))];
    if r.unchanged > 0 {
        parts.push(format!("{} already present", ui::count(r.unchanged)));
    }
    if r.duplicates > 0 {
        parts.push(format!("{} exact duplicates skipped", ui::count(r.duplicates)));
    }
    parts.push(format!("{} labels", ui::count(r.labels)));
    if r.candidates > 0 {
        parts.push(format!("{} model answers", ui::count(r.candidates)));
    }
    parts.push(format!("{} new images", ui::count(r.images_added)));
    ui::ok(format!("imported {}: {}", file.display(), parts.join(", ")));
    if let Some(p) = &r.report_path {
        ui::warn(format!("{} bad records skipped; details in {}", ui::count(r.bad), p.display()));
    }
}

/// Reads `a.file` on a thread and streams its records into the store.
pub async fn import_into(
    store: &Store,
    a: &ImportArgs,
    actor: &str,
    progress: Option<ProgressBar>,
) -> anyhow::Result<ImportReport> {
    if !a.file.exists() {
        bail!("{} does not exist", a.file.display());
    }
    let format = match &a.format {
        Some(f) => f.parse::<Format>()?,
        None => mmloop_formats::detect(&a.file)?,
    };
    let task = a.task.as_deref().map(str::parse).transpose()?;
    let opts = ReadOptions {
        task,
        question: a.question.clone(),
        prompt: a.prompt.clone(),
        images_dir: a.images_dir.clone(),
        annotations: a.annotations.clone(),
    };
    if format == Format::Folder && a.question.is_none() && a.prompt.is_none() && task.is_none() {
        let meta = ["metadata.jsonl", "metadata.csv"].iter().any(|m| a.file.join(m).is_file());
        if !meta {
            bail!(
                "{}: an image folder needs --question \"...\" (VQA) or --prompt \"...\" (captions)",
                a.file.display()
            );
        }
    }
    let images_dir = opts.images_dir_for(&a.file);
    let config = json!({
        "format": format.name(),
        "task": a.task,
        "question": a.question,
        "prompt": a.prompt,
        "images_dir": images_dir.display().to_string(),
        "annotations": a.annotations.as_ref().map(|p| p.display().to_string()),
        "copy": a.copy || store.config().import.copy_images,
        "skip_bad": a.skip_bad,
    });
    let import_opts = ImportOptions {
        format: format.name().to_string(),
        file: std::path::absolute(&a.file).unwrap_or_else(|_| a.file.clone()),
        images_dir,
        copy_images: a.copy || store.config().import.copy_images,
        skip_bad: a.skip_bad,
        actor: actor.to_string(),
        config,
    };
    let (tx, rx) = sync_channel::<Incoming>(8192);
    let file = a.file.clone();
    let reader = std::thread::Builder::new().name("mmloop-reader".into()).spawn(move || {
        let mut sink = |r: Result<mmloop_core::Record, mmloop_core::RecordError>| {
            let msg = match r {
                Ok(r) => Incoming::Record(r),
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
    let sink: Box<dyn ImportProgress> = match progress.clone() {
        Some(pb) => Box::new(Progress(pb)),
        None => Box::new(()),
    };
    let result = store.import(import_opts, rx, sink).await;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let _ = reader.join();
    Ok(result?)
}
