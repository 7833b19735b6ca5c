//! `mmloop export`.

use anyhow::bail;
use mmloop_formats::{Format, WriteOptions};
use mmloop_pipeline::transfer::{ExportRequest, export_file};
use mmloop_store::{ExportFilter, Store, StoreError, VersionSpec};

use crate::cli::ExportArgs;
use crate::ui;

pub async fn export(a: ExportArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let format: Format = a.format.parse()?;
    let version: VersionSpec = a.version.parse().expect("infallible");
    let filter = ExportFilter {
        split: a.split.clone(),
        include_unreviewed: a.include_unreviewed,
        task: a.task.as_deref().map(str::parse).transpose()?,
        candidates: format == Format::LabelStudio,
    };
    let opts = WriteOptions {
        embed_images: a.embed_images,
        document_root: a.document_root.clone(),
        data_subtype: a.split.clone(),
    };
    let pb = ui::bar("exporting", 0);
    let req = ExportRequest { version, filter, format, out: a.output.clone(), write: opts };
    let res = export_file(&store, req, |info| pb.set_length(info.items), || pb.inc(1)).await;
    pb.finish_and_clear();
    let (info, summary) = match res {
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::NoVersions)) => {
            bail!(
                "no version committed yet\n  hint: run `mmloop commit {} -m \"...\"` first, or export the uncommitted state with --version working",
                a.project.display()
            );
        }
        other => other?,
    };
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
            "notes": summary.notes,
        }));
    }
    let files: Vec<String> = summary.files.iter().map(|f| f.display().to_string()).collect();
    ui::ok(format!("exported {} records of {from} to {}", ui::count(summary.records), files.join(", ")));
    for n in &summary.notes {
        ui::warn(n);
    }
    if summary.records == 0 {
        ui::warn("nothing matched");
        ui::hint(
            "only items with a trusted label (imported, accepted, edited) are exported; add --include-unreviewed for the rest",
        );
    }
    Ok(())
}
