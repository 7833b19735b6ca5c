//! `mmloop commit`, `log`, `diff`.

use console::style;
use mmloop_store::{DiffKind, Store};

use crate::cli::{CommitArgs, DiffArgs, LogArgs, MigrateArgs};
use crate::ui;

pub async fn commit(a: CommitArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let out = store.commit(&a.message, actor).await?;
    store.close();
    if a.json {
        return ui::json(&out);
    }
    let v = &out.version;
    ui::ok(format!(
        "committed {} {} ({} items; {} of {} pages new)",
        style(v.name()).bold(),
        v.id.short(),
        ui::count(v.items),
        out.new_pages,
        out.pages
    ));
    Ok(())
}

pub async fn log(a: LogArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let versions = store.log().await?;
    store.close();
    if a.json {
        return ui::json(&versions);
    }
    if versions.is_empty() {
        println!("no versions yet");
        ui::hint(format!("`mmloop commit {} -m \"...\"` records one", a.project.display()));
    }
    for v in versions {
        println!(
            "{} {}  {}  {}  {} items\n    {}",
            style(v.name()).yellow().bold(),
            style(v.id.short()).dim(),
            v.at,
            v.author,
            ui::count(v.items),
            v.message
        );
    }
    Ok(())
}

pub async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let target: mmloop_store::MigrateTarget = a.to.parse()?;
    let pb = ui::spinner("copying");
    let rows = pb.clone();
    let report = mmloop_store::migrate(&a.project, target, Box::new(move |n| rows.set_position(n))).await;
    pb.finish_and_clear();
    let report = report?;
    if a.json {
        return ui::json(&report);
    }
    let copied: u64 = report.tables.iter().map(|(_, n)| n).sum();
    ui::ok(format!(
        "moved {} from {} to {}: {} rows, {} audit events verified{}",
        a.project.display(),
        report.from,
        report.to,
        ui::count(copied),
        ui::count(report.events),
        report.head.as_ref().map(|(seq, h)| format!(", head {seq} {}", &h[..12])).unwrap_or_default()
    ));
    if let Some(b) = &report.backup {
        ui::hint(format!("the SQLite database before the move is kept as {}", b.display()));
    }
    Ok(())
}

fn answer_text(l: &Option<mmloop_store::LabelView>) -> String {
    match l {
        None => "—".into(),
        Some(l) => {
            let a = l.answer.best().unwrap_or("").to_string();
            format!("[{}] {a:?}", l.status)
        }
    }
}

pub async fn diff(a: DiffArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let d = store.diff(&a.from, &a.to, a.limit).await?;
    store.close();
    if a.json {
        return ui::json(&d);
    }
    println!(
        "{} {} → {} {}: {} added, {} removed, {} changed",
        d.from.name(),
        style(d.from.id.short()).dim(),
        d.to.name(),
        style(d.to.id.short()).dim(),
        style(d.added).green(),
        style(d.removed).red(),
        style(d.changed).yellow()
    );
    for e in d.entries.iter().take(a.limit) {
        let mark = match e.kind {
            DiffKind::Added => style("+").green(),
            DiffKind::Removed => style("-").red(),
            DiffKind::Changed => style("~").yellow(),
        };
        let q = e.question.as_deref().unwrap_or("");
        println!("{mark} item {} {}", e.item, style(q).dim());
        if e.kind == DiffKind::Changed {
            if e.before.as_ref().map(|l| (&l.answer, l.status)) != e.after.as_ref().map(|l| (&l.answer, l.status)) {
                println!("    label {} → {}", answer_text(&e.before), answer_text(&e.after));
            }
            if e.split_before != e.split_after {
                println!(
                    "    split {} → {}",
                    e.split_before.as_deref().unwrap_or("—"),
                    e.split_after.as_deref().unwrap_or("—")
                );
            }
        } else {
            let l = if e.kind == DiffKind::Added { &e.after } else { &e.before };
            println!("    {}", answer_text(l));
        }
    }
    let total = d.entries.len();
    if total > a.limit {
        println!("… and {} more (--limit N or --json for all)", total - a.limit);
    }
    Ok(())
}
