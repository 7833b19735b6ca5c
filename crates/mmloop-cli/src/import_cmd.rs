//! `mmloop init` and `mmloop import`.

use std::path::Path;

use anyhow::{Context, bail};
use console::style;
use indicatif::ProgressBar;
use mmloop_formats::{Format, ReadOptions};
use mmloop_pipeline::transfer::{ImportRequest, import_file};
use mmloop_store::{ImportProgress, ImportReport, Store};

use crate::cli::{ImportArgs, InitArgs};
use crate::ui;

pub async fn init(a: InitArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::init_with(&a.dir, a.name.as_deref(), actor, a.database.as_deref()).await?;
    match &store.config().project.database {
        Some(_) => ui::ok(format!("created project {} (database: PostgreSQL)", store.paths().root.display())),
        None => ui::ok(format!("created project {}", store.paths().root.display())),
    }
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
    fn phase(&self, what: &str) {
        self.0.set_position(0);
        self.0.set_message(what.to_string());
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
    if r.updated > 0 {
        parts.push(format!("{} answers updated", ui::count(r.updated)));
    }
    if r.kept_reviewed > 0 {
        parts.push(format!("{} changed answers not taken (already reviewed)", ui::count(r.kept_reviewed)));
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

/// Imports `a.file` with the command's flags.
pub async fn import_into(
    store: &Store,
    a: &ImportArgs,
    actor: &str,
    progress: Option<ProgressBar>,
) -> anyhow::Result<ImportReport> {
    let format = a.format.as_deref().map(str::parse::<Format>).transpose()?;
    let task = a.task.as_deref().map(str::parse).transpose()?;
    let read = ReadOptions {
        task,
        question: a.question.clone(),
        prompt: a.prompt.clone(),
        images_dir: a.images_dir.clone(),
        annotations: a.annotations.clone(),
    };
    let is_folder = format == Some(Format::Folder) || (format.is_none() && a.file.is_dir());
    if is_folder && a.question.is_none() && a.prompt.is_none() && task.is_none() {
        let meta = ["metadata.jsonl", "metadata.csv"].iter().any(|m| a.file.join(m).is_file());
        if !meta {
            bail!(
                "{}: an image folder needs --question \"...\" (VQA) or --prompt \"...\" (captions)",
                a.file.display()
            );
        }
    }
    let req = ImportRequest {
        file: a.file.clone(),
        format,
        read,
        copy_images: a.copy,
        skip_bad: a.skip_bad,
        actor: actor.to_string(),
    };
    let sink: Box<dyn ImportProgress> = match progress.clone() {
        Some(pb) => Box::new(Progress(pb)),
        None => Box::new(()),
    };
    let result = import_file(store, &req, sink).await;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    result
}
