//! `mmloop audit-sample`, `mmloop route` (certify, apply, undo) and `mmloop route threshold`.

use std::io::BufRead;

use anyhow::{Context, bail};
use console::style;
use mmloop_core::RunStatus;
use mmloop_metrics::selective::{Certificate, CertifyOptions, PValue, certify};
use mmloop_store::route_plan::{RouteOptions, RoutePlan, ScoreKind, plan};
use mmloop_store::{AuditSampleInfo, RouteApply, SampleKind, SampleOptions, Store, Verdict};
use serde_json::json;

use crate::cli::{AuditSampleArgs, RouteAction, RouteArgs, RouteCommand, RouteThresholdArgs};
use crate::ui;

pub async fn audit_sample(a: AuditSampleArgs, actor: &str) -> anyhow::Result<()> {
    let store = Store::open(&a.project).await?;
    let out = audit_sample_in(&store, &a, actor).await;
    store.close();
    out
}

async fn audit_sample_in(store: &Store, a: &AuditSampleArgs, actor: &str) -> anyhow::Result<()> {
    if let Some(id) = a.close {
        store.close_audit_sample(id, actor).await?;
        ui::ok(format!("closed audit sample {id}: the queue no longer serves it first"));
        return Ok(());
    }
    let Some(size) = a.size else {
        let samples = store.audit_samples().await?;
        if a.json {
            return ui::json(&samples);
        }
        if samples.is_empty() {
            println!("no audit samples yet");
            ui::hint(format!("`mmloop audit-sample {} --size 1000` draws one", a.project.display()));
        }
        for s in &samples {
            print_sample(s);
        }
        return Ok(());
    };
    let task = a.task.as_deref().map(str::parse).transpose()?;
    let s = store.create_audit_sample(SampleOptions { size, task, seed: a.seed }, actor).await?;
    if a.json {
        return ui::json(&s);
    }
    ui::ok(format!(
        "audit sample {} of {} items, drawn at random from {} pending model answers (seed {})",
        style(s.id).bold(),
        ui::count(s.size),
        ui::count(s.pool),
        s.seed
    ));
    if (s.size as usize) < size {
        ui::warn(format!("only {} items could be drawn", s.size));
    }
    ui::hint(format!(
        "`mmloop review {}`: reviewers get these items first, in random order, without the model's confidence; \
         then `mmloop route {} --dry-run`",
        a.project.display(),
        a.project.display()
    ));
    Ok(())
}

fn print_sample(s: &AuditSampleInfo) {
    let what = match (s.kind, s.route_run) {
        (SampleKind::Drift, Some(run)) => format!("drift of route run {run}"),
        _ => format!("calibration{}", s.task.map(|t| format!(" ({t})")).unwrap_or_default()),
    };
    println!(
        "{} {}  {}/{} decided, {} wrong  drawn from {}  {} by {}{}",
        style(format!("#{}", s.id)).bold(),
        what,
        ui::count(s.decided),
        ui::count(s.size),
        ui::count(s.wrong),
        ui::count(s.pool),
        s.created_at,
        s.created_by,
        if s.closed_at.is_some() { style("  closed").dim().to_string() } else { String::new() }
    );
}

pub async fn route(a: RouteCommand, actor: &str) -> anyhow::Result<()> {
    match a.action {
        Some(RouteAction::Undo { project, run, json }) => {
            let store = Store::open(&project).await?;
            let out = store.undo_route(run, actor).await;
            store.close();
            let out = out?;
            if json {
                return ui::json(&out);
            }
            ui::ok(format!(
                "route run {run} undone: {} answers back to review, {} decided by people since left as they are",
                ui::count(out.reverted),
                ui::count(out.kept)
            ));
            Ok(())
        }
        Some(RouteAction::Threshold(t)) => threshold(t),
        None => route_project(a.run, actor).await,
    }
}

fn cert_line(c: &Certificate) -> String {
    match c.threshold {
        Some(t) => format!(
            "≥ {t:.4}: {} of {} audited answers ({:.1}%), {} wrong, p = {:.3}",
            c.n,
            c.sample,
            c.coverage * 100.0,
            c.errors,
            c.p_value.unwrap_or(f64::NAN)
        ),
        None => format!("nothing certified ({} audited answers)", c.sample),
    }
}

fn print_plan(p: &RoutePlan) {
    let o = &p.options;
    println!(
        "certifying error ≤ {} with probability ≥ {} ({} score{})",
        o.epsilon,
        1.0 - o.delta,
        match o.score {
            ScoreKind::Confidence => "confidence",
            ScoreKind::Calibrated => "calibrated",
        },
        if p.groups.len() > 1 { format!(", δ split over {} groups", p.groups.len()) } else { String::new() }
    );
    for g in &p.groups {
        println!(
            "{}  {} audited, {} still open, {} pending answers",
            style(&g.group).bold(),
            g.audited,
            g.open,
            g.pool
        );
        println!("  confidence  {}", cert_line(&g.confidence));
        match (&g.calibrated, &g.calibrator) {
            (Some(c), Some(m)) => println!("  calibrated  {} (trained on {} others)", cert_line(c), m.trained_on),
            _ => println!("  calibrated  not trained (needs ≥ 20 audited answers, right and wrong ones)"),
        }
        println!(
            "  → {}",
            match g.threshold {
                Some(_) => format!(
                    "auto-accept {} of {} pending answers",
                    ui::count(g.accept as u64),
                    ui::count(g.pool as u64)
                ),
                None => "nothing auto-accepted".into(),
            }
        );
    }
    println!(
        "review saved: {} of {} pending model answers ({:.1}%)",
        ui::count(p.accepted as u64),
        ui::count(p.pool as u64),
        p.review_saved * 100.0
    );
}

async fn route_project(a: RouteArgs, actor: &str) -> anyhow::Result<()> {
    let project = a.project.clone().context("the project folder is missing")?;
    let opts = RouteOptions {
        score: a.score.parse().map_err(anyhow::Error::msg)?,
        per_type: a.per_type,
        min_n: a.min_n,
        p_value: a.p_value.parse().map_err(anyhow::Error::msg)?,
        ..RouteOptions::new(a.epsilon, a.delta)
    };
    opts.validate().map_err(anyhow::Error::msg)?;
    if !(0.0..=1.0).contains(&a.audit_rate) {
        bail!("--audit-rate {} must be between 0 and 1", a.audit_rate);
    }
    let store = Store::open(&project).await?;
    let out = route_in(&store, &a, &opts, actor).await;
    store.close();
    out
}

async fn route_in(store: &Store, a: &RouteArgs, opts: &RouteOptions, actor: &str) -> anyhow::Result<()> {
    let project = a.project.as_ref().expect("checked");
    let samples: Vec<AuditSampleInfo> = store
        .audit_samples()
        .await?
        .into_iter()
        .filter(|s| s.kind == SampleKind::Calibration && (a.sample.is_empty() || a.sample.contains(&s.id)))
        .collect();
    if let Some(missing) = a.sample.iter().find(|id| !samples.iter().any(|s| s.id == **id)) {
        bail!("no calibration audit sample {missing}\n  hint: `mmloop audit-sample {}` lists them", project.display());
    }
    if samples.is_empty() {
        bail!(
            "no audit sample to certify from\n  hint: `mmloop audit-sample {} --size 1000`, review it, then route",
            project.display()
        );
    }
    let ids: Vec<i64> = samples.iter().map(|s| s.id).collect();
    let audited: Vec<_> = store
        .audited(Some(SampleKind::Calibration))
        .await?
        .into_iter()
        .filter(|x| ids.contains(&x.sample_id))
        .collect();
    let max_candidate = samples.iter().map(|s| s.max_candidate).max().unwrap_or(0);
    let pool = store.route_pool(max_candidate).await?;
    let p = plan(&audited, &pool, opts);
    let open = audited.iter().filter(|x| x.verdict == Verdict::Open).count();
    if !a.json {
        print_plan(&p);
        if open > 0 {
            ui::warn(format!(
                "{open} audited answers are not decided yet and count for nothing; reviewing them can only help"
            ));
        }
    }
    let certificate = json!({
        "epsilon": opts.epsilon, "delta": opts.delta, "score": opts.score, "per_type": opts.per_type,
        "p_value": opts.p_value,
        "samples": ids, "max_candidate": max_candidate,
        "groups": p.groups.iter().map(|g| json!({
            "group": g.group, "delta": g.delta, "threshold": g.threshold, "score": g.score,
            "confidence": g.confidence, "calibrated": g.calibrated, "calibrator": g.calibrator,
            "pool": g.pool, "accept": g.accept,
        })).collect::<Vec<_>>(),
    });
    if a.dry_run || p.accept.is_empty() {
        if a.json {
            return ui::json(&json!({"plan": p, "applied": null}));
        }
        if p.accept.is_empty() {
            ui::warn("nothing certified: no answer is auto-accepted");
            ui::hint(
                "a larger audit sample, a looser --epsilon/--delta, or --score calibrated may certify a threshold",
            );
        } else {
            ui::hint("dry run: nothing written; run again without --dry-run to auto-accept");
        }
        return Ok(());
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64)?;
    let config = json!({"epsilon": opts.epsilon, "delta": opts.delta, "score": opts.score, "per_type": opts.per_type,
                        "p_value": opts.p_value,
                        "audit_rate": a.audit_rate, "samples": ids, "min_n": opts.min_n, "seed": seed});
    let run_id = store.start_run("route", actor, config).await?;
    let applied = store
        .apply_route(RouteApply {
            run_id,
            accept: p.accept.clone(),
            audit_rate: a.audit_rate,
            seed,
            certificate: certificate.clone(),
        })
        .await;
    let applied = match applied {
        Ok(x) => x,
        Err(e) => {
            store.finish_run(run_id, actor, RunStatus::Failed, json!({"error": e.to_string()})).await?;
            return Err(e.into());
        }
    };
    let mut summary = certificate;
    summary["applied"] = serde_json::to_value(&applied)?;
    store.finish_run(run_id, actor, RunStatus::Done, summary).await?;
    if a.json {
        return ui::json(&json!({"plan": p, "applied": applied}));
    }
    ui::ok(format!(
        "route run {}: {} answers auto-accepted (actor route:{}){}",
        style(run_id).bold(),
        ui::count(applied.accepted),
        run_id,
        if applied.changed > 0 {
            format!(", {} changed meanwhile and left alone", applied.changed)
        } else {
            String::new()
        }
    ));
    if let Some(s) = applied.drift_sample {
        ui::ok(format!(
            "drift audit sample {s}: {} of them go back to review first, to measure their real error",
            applied.drift_size
        ));
    }
    ui::hint(format!("`mmloop route undo {} {run_id}` reverts this run", project.display()));
    Ok(())
}

fn threshold(a: RouteThresholdArgs) -> anyhow::Result<()> {
    let opts = RouteOptions::new(a.epsilon, a.delta);
    opts.validate().map_err(anyhow::Error::msg)?;
    let p_value: PValue = a.p_value.parse().map_err(anyhow::Error::msg)?;
    let file = std::fs::File::open(&a.calibration).with_context(|| format!("{}", a.calibration.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", a.calibration.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Row {
            score: f64,
            correct: bool,
        }
        let r: Row = serde_json::from_str(&line).with_context(|| {
            format!("{}:{}: expected {{\"score\": number, \"correct\": true|false}}", a.calibration.display(), i + 1)
        })?;
        if !r.score.is_finite() {
            bail!("{}:{}: the score is not a finite number", a.calibration.display(), i + 1);
        }
        rows.push((r.score, r.correct));
    }
    let c = certify(
        &rows,
        &CertifyOptions {
            min_n: a.min_n,
            p_value,
            start_errors: a.start_errors,
            ..CertifyOptions::new(a.epsilon, a.delta)
        },
    );
    if a.json {
        return ui::json(&c);
    }
    println!("{}", cert_line(&c));
    Ok(())
}
