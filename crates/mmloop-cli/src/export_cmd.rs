//! `mmloop export`.

use anyhow::bail;
use mmloop_formats::{Format, WriteOptions};
use mmloop_store::{ExportFilter, Store, StoreError, VersionSpec};

use crate::cli::ExportArgs;
use crate::ui;

pub async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let format: Format = a.format.parse()?;
    if format == Format::Folder {
        bail!("an image folder is an input format only\n  hint: export to jsonl, csv or parquet");
    }
    let version: VersionSpec = a.version.parse().expect("infallible");
    let filter = ExportFilter {
        split: a.split.clone(),
        include_unreviewed: a.include_unreviewed,
        task: a.task.as_deref().map(str::parse).transpose()?,
        candidates: format == Format::LabelStudio,
    };
    let (info, rx) = match store.export(version, filter).await {
        Err(StoreError::NoVersions) if a.version.eq_ignore_ascii_case("HEAD") => {
            bail!(
                "no version committed yet\n  hint: run `mmloop commit {} -m \"...\"` first, or export the uncommitted state with --version working",
                a.project.display()
            );
        }
        other => other?,
    };
    let pb = ui::bar("exporting", info.items);
    let mut failure = None;
    let mut records = rx.into_iter().map_while(|r| match r {
        Ok(rec) => {
            pb.inc(1);
            Some(rec)
        }
        Err(e) => {
            failure = Some(e);
            None
        }
    });
    let opts = WriteOptions {
        embed_images: a.embed_images,
        document_root: a.document_root.clone(),
        data_subtype: a.split.clone(),
    };
    let out = a.output.clone();
    let summary = tokio::task::block_in_place(|| mmloop_formats::write(format, &out, &mut records, &opts));
    drop(records);
    pb.finish_and_clear();
    if let Some(e) = failure {
        return Err(e.into());
    }
    let summary = summary?;
    store.close();
    let from = match &info.version {
        Some(v) => format!("{} ({})", v.name(), v.id.short()),
        None => "the working state".to_string(),
    };
    if a.json {
        return ui::json(&serde_json::json!({
            "version": info.version,
            "records": summary.records,
            "files": summary.files,
        }));
    }
    let files: Vec<String> = summary.files.iter().map(|f| f.display().to_string()).collect();
    ui::ok(format!("exported {} records of {from} to {}", ui::count(summary.records), files.join(", ")));
    if summary.records == 0 {
        ui::warn("nothing matched");
        ui::hint(
            "only items with a trusted label (imported, accepted, edited) are exported; add --include-unreviewed for the rest",
        );
    }
    Ok(())
}
