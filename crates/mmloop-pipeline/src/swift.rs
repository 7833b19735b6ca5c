//! Hand-off to ms-swift for training one machine cannot hold (7B+, several GPUs, DeepSpeed
//! ZeRO, several nodes): `mmloop sft --engine swift`.
//!
//! The version's trusted labels are exported as ms-swift JSONL, the exact `swift sft` command
//! line (with the multi-node variables `NNODES`, `NODE_RANK`, `MASTER_ADDR`,
//! `NPROC_PER_NODE` when set) is written to `OUT/run.sh`, and when `swift` is on the PATH it
//! runs: its `logging.jsonl` is followed for progress, and the run (version, arguments,
//! losses, last checkpoint) is recorded in the project as an embedded run is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use mmloop_core::RunStatus;
use mmloop_formats::{Format, WriteOptions};
use mmloop_store::{ExportFilter, Store, VersionSpec};
use serde_json::{Value, json};

use crate::sft::{SftProgress, SftReport};
use crate::transfer::{ExportRequest, export_file};

/// The multi-node variables `swift` (torchrun) reads, passed through when set.
pub const DISTRIBUTED_ENV: [&str; 5] = ["NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE"];

/// A prepared ms-swift run.
#[derive(Clone, Debug)]
pub struct SwiftRun {
    /// `swift sft ...`, argument by argument.
    pub command: Vec<String>,
    /// The distributed variables set in this environment.
    pub env: Vec<(String, String)>,
    /// `OUT/run.sh`.
    pub script: PathBuf,
    /// The exported training data.
    pub dataset: PathBuf,
    pub output_dir: PathBuf,
}

/// A shell word, quoted when it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Exports `version` (trusted labels, optionally one split) to `OUT/dataset/train.jsonl` and
/// writes `OUT/run.sh` running `swift sft` on it with `flags` (ms-swift's names, without the
/// leading dashes, in order) into `OUT/swift` (`--add_version false`: its checkpoints are
/// `OUT/swift/checkpoint-N`).
pub async fn prepare(
    store: &Store,
    version: &str,
    split: Option<&str>,
    model: &str,
    flags: &[(String, String)],
    out: &Path,
) -> anyhow::Result<SwiftRun> {
    std::fs::create_dir_all(out.join("dataset")).with_context(|| out.display().to_string())?;
    let out = std::path::absolute(out).with_context(|| out.display().to_string())?;
    let dataset = out.join("dataset").join("train.jsonl");
    let req = ExportRequest {
        version: VersionSpec::Named(version.to_string()),
        filter: ExportFilter { split: split.map(String::from), ..ExportFilter::default() },
        format: Format::Swift,
        out: dataset.clone(),
        write: WriteOptions::default(),
    };
    let (_, summary) = export_file(store, req, |_| {}, || {}).await?;
    if summary.records == 0 {
        bail!(
            "{version} {}has no trusted labels to train on\n  hint: accept or edit answers in `mmloop review`, then `mmloop commit`",
            split.map(|s| format!("split {s:?} ")).unwrap_or_default()
        );
    }
    let output_dir = out.join("swift");
    let mut command: Vec<String> = ["swift", "sft", "--model", model].iter().map(|s| s.to_string()).collect();
    command.extend(["--dataset".into(), dataset.display().to_string()]);
    for (k, v) in flags {
        command.push(format!("--{k}"));
        command.extend(v.split(' ').filter(|w| !w.is_empty()).map(String::from));
    }
    command.extend(["--output_dir".into(), output_dir.display().to_string(), "--add_version".into(), "false".into()]);
    let env: Vec<(String, String)> =
        DISTRIBUTED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    let mut script = String::from(
        "#!/usr/bin/env bash\n# Written by `mmloop sft --engine swift`: ms-swift 4 trains the exported version.\n",
    );
    script.push_str("# On several nodes, set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT, NPROC_PER_NODE) on each.\nset -euo pipefail\n");
    for (k, v) in &env {
        script.push_str(&format!("export {k}={}\n", quote(v)));
    }
    script.push_str(&command.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" \\\n    "));
    script.push('\n');
    let path = out.join("run.sh");
    std::fs::write(&path, script).with_context(|| path.display().to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(SwiftRun { command, env, script: path, dataset, output_dir })
}

/// Whether `swift` is on the PATH.
pub fn swift_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("swift").is_file()))
}

/// What ms-swift's `logging.jsonl` says so far.
fn read_log(path: &Path, report: &mut SftReport, progress: &dyn SftProgress, seen: &mut usize) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let lines: Vec<&str> = text.lines().collect();
    // A line being written has no newline yet: read only whole lines.
    let whole = if text.ends_with('\n') { lines.len() } else { lines.len().saturating_sub(1) };
    for line in &lines[*seen..whole] {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let step_of = |v: &Value| {
            v["global_step/max_steps"]
                .as_str()
                .and_then(|s| s.split_once('/'))
                .and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)))
        };
        if let (Some(loss), Some((step, max))) = (v["loss"].as_f64(), step_of(&v)) {
            report.losses.push((step, loss));
            report.global_step = step;
            report.max_steps = max;
            let r = mmloop_models::train::StepReport {
                loss,
                grad_norm: v["grad_norm"].as_f64().unwrap_or(f64::NAN),
                learning_rate: v["learning_rate"].as_f64().unwrap_or(f64::NAN),
                labelled_tokens: 0,
            };
            let per = v["train_speed(s/it)"].as_f64().unwrap_or(f64::NAN);
            progress.step(&crate::sft::StepLog {
                step,
                max_steps: max,
                epoch: v["epoch"].as_f64().unwrap_or(0.0),
                report: r,
                seconds_per_step: per,
            });
        }
        if let (Some(loss), Some((step, _))) = (v["eval_loss"].as_f64(), step_of(&v)) {
            report.eval_losses.push((step, loss));
            progress.eval(step, loss);
        }
        if let Some(c) = v["last_model_checkpoint"].as_str() {
            report.last_checkpoint = Some(PathBuf::from(c));
        }
        if let Some(c) = v["best_model_checkpoint"].as_str() {
            report.best_checkpoint = Some(PathBuf::from(c));
        }
    }
    *seen = whole;
}

/// Runs `swift sft` (the prepared command, in this environment), following its
/// `logging.jsonl`; `stop` ends it (SIGTERM to the process).
pub async fn run(run: &SwiftRun, progress: Arc<dyn SftProgress>, stop: Arc<AtomicBool>) -> anyhow::Result<SftReport> {
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&run.command[0])
        .args(&run.command[1..])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", run.command[0]))?;
    let log = run.output_dir.join("logging.jsonl");
    let mut report = SftReport::default();
    let mut seen = 0;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                read_log(&log, &mut report, &*progress, &mut seen);
                if stop.load(Ordering::Relaxed) {
                    let _ = child.start_kill();
                }
            }
        }
    };
    read_log(&log, &mut report, &*progress, &mut seen);
    report.seconds = started.elapsed().as_secs_f64();
    report.status = Some(if status.success() {
        RunStatus::Done
    } else if stop.load(Ordering::Relaxed) {
        RunStatus::Interrupted
    } else {
        RunStatus::Failed
    });
    if let Some(c) = &report.last_checkpoint {
        progress.saved(c);
    }
    Ok(report)
}

/// [`prepare`] and, when `swift` is on the PATH, [`run`], recorded in the project as a `train`
/// run with `engine: swift`. Returns the prepared run and, when it ran, its report and run id.
#[allow(clippy::too_many_arguments)]
pub async fn sft_swift(
    store: &Store,
    version: &str,
    split: Option<&str>,
    model: &str,
    flags: &[(String, String)],
    out: &Path,
    actor: &str,
    progress: Arc<dyn SftProgress>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(SwiftRun, Option<(SftReport, i64)>)> {
    let prepared = prepare(store, version, split, model, flags, out).await?;
    if !swift_available() {
        return Ok((prepared, None));
    }
    let v = store.version(version).await?;
    let config = json!({
        "engine": "swift",
        "version": v.name(),
        "version_id": v.id.to_hex(),
        "split": split,
        "model": model,
        "command": prepared.command,
        "env": prepared.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "output_dir": prepared.output_dir.display().to_string(),
    });
    let id = store.start_run_on("train", actor, config, Some(v.id.to_hex())).await?;
    let result = run(&prepared, progress, stop).await;
    let (status, summary) = match &result {
        Ok(r) => (r.status.unwrap_or(RunStatus::Done), r.summary()),
        Err(e) => (RunStatus::Failed, json!({"error": format!("{e:#}")})),
    };
    store.finish_run(id, actor, status, summary).await?;
    let report = result?;
    if report.status == Some(RunStatus::Failed) {
        bail!(
            "swift sft failed (its output is above; run {} recorded it)\n  hint: rerun by hand with {}",
            id,
            prepared.script.display()
        );
    }
    Ok((prepared, Some((report, id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(quote("--lora_rank"), "--lora_rank");
        assert_eq!(quote("/data/run 1/x.jsonl"), "'/data/run 1/x.jsonl'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
