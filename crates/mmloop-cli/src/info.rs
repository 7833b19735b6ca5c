//! `mmloop stats`, `split`, `show`, `audit`.

use anyhow::bail;
use console::style;
use mmloop_store::{SplitPlan, Store};

use crate::cli::{AuditCommand, ShowArgs, SplitArgs, StatsArgs};
use crate::ui;

fn table(title: &str, rows: &std::collections::BTreeMap<String, u64>, total: u64) {
    println!("{}", style(title).bold());
    for (k, v) in rows {
        let pct = if total > 0 { 100.0 * *v as f64 / total as f64 } else { 0.0 };
        println!("  {k:<12} {:>10}  {pct:5.1}%", ui::count(*v));
    }
}

pub async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let s = store.stats().await?;
    store.close();
    if a.json {
        return ui::json(&s);
    }
    println!("{} {}", style("project").bold(), s.name);
    println!(
        "  {} items, {} images ({}, {} copied), {} model answers on {} items",
        ui::count(s.items),
        ui::count(s.images),
        ui::bytes(s.image_bytes),
        ui::count(s.images_copied),
        ui::count(s.candidates),
        ui::count(s.items_with_candidates)
    );
    table("task", &s.by_task, s.items);
    table("label status", &s.by_status, s.items);
    table("split", &s.by_split, s.items);
    match &s.head {
        Some(v) => {
            let dirty = if s.changes_since_head > 0 {
                style(format!("{} changes since", s.changes_since_head)).yellow().to_string()
            } else {
                "no changes since".to_string()
            };
            println!("{} {} {} ({dirty})", style("version").bold(), v.name(), style(v.id.short()).dim());
        }
        None => println!("{} none committed yet", style("version").bold()),
    }
    println!("{} {} events", style("audit").bold(), ui::count(s.audit_events));
    Ok(())
}

/// `0.8,0.1,0.1` (train, val, test) or `train=0.7,dev=0.3`.
fn parse_ratios(s: &str) -> anyhow::Result<Vec<(String, f64)>> {
    const DEFAULT_NAMES: [&str; 3] = ["train", "val", "test"];
    let parts: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let (name, num) = match p.split_once('=') {
            Some((n, v)) => (n.trim().to_string(), v.trim()),
            None => match DEFAULT_NAMES.get(i) {
                Some(n) => (n.to_string(), *p),
                None => bail!("--ratios: name the fourth split and beyond, e.g. train=0.7,val=0.1,test=0.1,extra=0.1"),
            },
        };
        let v: f64 = num.parse().map_err(|_| anyhow::anyhow!("--ratios: {num:?} is not a number"))?;
        if !(v >= 0.0 && v.is_finite()) {
            bail!("--ratios: {v} is not a non-negative share");
        }
        out.push((name, v));
    }
    if out.is_empty() || out.iter().all(|r| r.1 == 0.0) {
        bail!("--ratios needs at least one positive share, e.g. 0.8,0.1,0.1");
    }
    Ok(out)
}

pub async fn split(a: SplitArgs, actor: &str) -> anyhow::Result<()> {
    let ratios = parse_ratios(&a.ratios)?;
    let store = Store::open(&a.project).await?;
    let r = store.split(SplitPlan { ratios, seed: a.seed, reassign: a.reassign }, actor).await?;
    store.close();
    if a.json {
        return ui::json(&r);
    }
    let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k} {}", ui::count(*v))).collect();
    ui::ok(format!(
        "split {} image groups: {} items assigned, {} kept their split; now {}",
        ui::count(r.groups),
        ui::count(r.assigned),
        ui::count(r.kept),
        counts.join(", ")
    ));
    if r.leaks > 0 {
        ui::warn(format!("{} image groups already had items in different splits (left as they are)", r.leaks));
        ui::hint("--reassign redoes every split from scratch");
    }
    Ok(())
}

pub async fn show(a: ShowArgs) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let item = store.item(a.item).await?;
    let history = store.label_history(a.item).await?;
    store.close();
    if a.json {
        return ui::json(&serde_json::json!({"item": item, "history": history}));
    }
    println!("{} {} ({})", style("item").bold(), item.id, item.task);
    if let Some(id) = &item.source_id {
        println!("  id        {id}");
    }
    for m in &item.context {
        println!("  {:<9} {}", m.role, m.content);
    }
    println!("  question  {}", item.question);
    for img in &item.images {
        println!(
            "  image     {} ({}×{} {}, {})",
            img.path.display(),
            img.width,
            img.height,
            img.format,
            img.sha256.short()
        );
    }
    println!("  split     {}", item.split.as_deref().unwrap_or("—"));
    if let (Some(f), l) = (&item.source_file, item.source_line) {
        println!("  source    {f}{}", l.map(|l| format!(":{l}")).unwrap_or_default());
    }
    println!("{}", style("labels").bold());
    if history.is_empty() {
        println!("  none (pending)");
    }
    for l in history {
        let answer = if l.answer.all.is_empty() {
            format!("{:?}", l.answer.text.clone().unwrap_or_default())
        } else {
            let all: Vec<&str> = l.answer.all.iter().map(|a| a.answer.as_str()).collect();
            format!("{:?} of {all:?}", l.answer.best().unwrap_or(""))
        };
        println!(
            "  #{:<5} {:<9} {answer}  {} {} ({})",
            l.id,
            l.status.to_string(),
            style(&l.actor).dim(),
            style(&l.at).dim(),
            l.action
        );
    }
    Ok(())
}

pub async fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { project, json } => {
            let store = Store::open(&project).await?;
            let r = store.audit_verify().await?;
            store.close();
            if json {
                ui::json(&r)?;
            } else if r.ok() {
                let head = r.head.as_ref().map(|(s, h)| format!(", head {s} {}", &h[..12])).unwrap_or_default();
                ui::ok(format!("audit log intact: {} events{head}", ui::count(r.events)));
            } else {
                for p in &r.problems {
                    eprintln!("{} {p}", style("✗").red().bold());
                }
            }
            if !r.ok() {
                bail!("the audit log of {} has been tampered with ({} problems)", project.display(), r.problems.len());
            }
            Ok(())
        }
        AuditCommand::Log { project, item, limit, json } => {
            let store = Store::open(&project).await?;
            let events = store.audit_log(item.map(|i| format!("item:{i}")), limit).await?;
            store.close();
            if json {
                return ui::json(&events);
            }
            for e in events {
                let after = e.after.map(|a| a.to_string()).unwrap_or_default();
                let after =
                    if after.len() > 100 { format!("{}…", &after[..after.floor_char_boundary(100)]) } else { after };
                println!(
                    "{:>6} {} {:<14} {:<12} {} {}",
                    e.seq,
                    style(&e.at).dim(),
                    e.actor,
                    e.action,
                    e.entity,
                    style(after).dim()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        let r = parse_ratios("0.8,0.1,0.1").unwrap();
        assert_eq!(r[2], ("test".to_string(), 0.1));
        assert_eq!(parse_ratios("train=0.5, dev=0.5").unwrap()[1].0, "dev");
        assert!(parse_ratios("0.5,x").is_err());
        assert!(parse_ratios("0,0").is_err());
        assert!(parse_ratios("0.2,0.2,0.2,0.4").is_err());
    }
}
