//! `mmloop serve`: the embedded engine behind an OpenAI-compatible API (mmloop-serve).

use std::sync::Arc;

use anyhow::{Context, bail};
use console::style;
use mmloop_engine::Backend;
use mmloop_engine::openai::{OpenAiBackend, OpenAiOptions};
use mmloop_engine::{RuleSet, RulesConfig};
use mmloop_serve::{AbConfig, ArmTarget, ExperimentLog, ExposureRecord, ServeConfig, Server, Upstream};
use mmloop_store::Store;
use mmloop_store::ab::{Arm, Experiment, Exposure, OutcomeKind};
use serde_json::json;

use crate::cli::{AbAction, AbArgs, ServeArgs};
use crate::infer_cmd::{adapter_list, engine_options, load_embedded, rules_file};
use crate::ui;

/// `8` or vLLM's `{"image": 8}`.
fn images_limit(s: &str) -> anyhow::Result<usize> {
    if let Ok(n) = s.trim().parse() {
        return Ok(n);
    }
    let v: serde_json::Value = serde_json::from_str(s)
        .with_context(|| format!("--limit-mm-per-prompt {s:?}: expected a number or {{\"image\": N}}"))?;
    v["image"].as_u64().map(|n| n as usize).with_context(|| format!("--limit-mm-per-prompt {s:?}: no \"image\" count"))
}

/// Exposures and outcomes kept in the project, audited.
struct StoreLog(Store);

fn exposure(x: ExposureRecord) -> Exposure {
    Exposure {
        experiment: x.experiment,
        request_id: x.request_id,
        user_id: x.user_id,
        arm: x.arm,
        latency_ms: x.latency_ms,
        prompt_tokens: x.prompt_tokens,
        completion_tokens: x.completion_tokens,
        confidence: x.confidence,
    }
}

#[async_trait::async_trait]
impl ExperimentLog for StoreLog {
    async fn exposure(&self, x: ExposureRecord) -> Result<(), String> {
        self.0.ab_expose(exposure(x)).await.map_err(|e| e.to_string())
    }

    async fn exposures(&self, xs: Vec<ExposureRecord>) -> Result<(), String> {
        self.0.ab_expose_many(xs.into_iter().map(exposure).collect()).await.map_err(|e| e.to_string())
    }

    async fn outcome(&self, request_id: &str, outcome: &str, value: Option<f64>) -> Result<(), (u16, String)> {
        let kind: OutcomeKind = serde_json::from_value(json!(outcome)).map_err(|_| {
            (400, format!("unknown outcome {outcome:?}: accept, edit, reject, thumbs_up, thumbs_down or value"))
        })?;
        match self.0.ab_outcome(request_id, kind, value, "api").await {
            Ok(_) => Ok(()),
            Err(e @ mmloop_store::StoreError::NotFound(_)) => Err((404, e.to_string())),
            Err(e @ mmloop_store::StoreError::Config(_)) => Err((400, e.to_string())),
            Err(e) => Err((500, e.to_string())),
        }
    }
}

fn is_upstream(arm_spec: &str) -> bool {
    arm_spec.split_once('=').is_some_and(|(_, t)| t.starts_with("http://") || t.starts_with("https://"))
}

/// An upstream arm `URL[#MODEL]`: its chat URL and model (asked of the server when not given).
async fn upstream(spec: &str, target: &str, key: Option<&str>) -> anyhow::Result<Upstream> {
    let (url, model) = target.split_once('#').unwrap_or((target, ""));
    let mut o = OpenAiOptions::new(url, model);
    o.api_key = key.map(String::from);
    o.timeout = std::time::Duration::from_secs(30);
    let b = OpenAiBackend::connect(o).await.with_context(|| format!("--arm {spec:?}"))?;
    Ok(Upstream { chat_url: b.info().resolved.clone(), model: b.info().model.clone(), api_key: key.map(String::from) })
}

/// The arms of `--arm NAME=MODEL[:ADAPTER]|URL#MODEL` against what is served here
/// (`served`: the base model's name, `None` on a gateway without one).
async fn parse_arms(
    a: &ServeArgs,
    served: Option<&str>,
    adapters: &[String],
) -> anyhow::Result<Vec<mmloop_serve::Arm>> {
    let mut out: Vec<mmloop_serve::Arm> = Vec::new();
    for spec in &a.arms {
        let Some((name, target)) = spec.split_once('=') else {
            bail!("--arm {spec:?}: expected NAME=MODEL[:ADAPTER] or NAME=URL#MODEL");
        };
        if name.is_empty() || out.iter().any(|arm| arm.name == name) {
            bail!("--arm {spec:?}: arm names must be unique and not empty");
        }
        let target = if is_upstream(spec) {
            ArmTarget::Upstream(upstream(spec, target, a.upstream_api_key.as_deref()).await?)
        } else {
            let Some(served) = served else {
                bail!("--arm {spec:?}: this server has no --model to answer it");
            };
            let (model, adapter) = match target.rsplit_once(':') {
                Some((m, ad)) if adapters.iter().any(|x| x == ad) => (m, Some(ad.to_string())),
                _ if adapters.iter().any(|x| x == target) => (served, Some(target.to_string())),
                _ => (target, None),
            };
            if model != served && Some(model) != a.model.as_deref() {
                bail!(
                    "--arm {spec:?}: {model:?} is not the served model ({served}), one of its adapters ({}), \
                     or another server's URL",
                    adapters.join(", ")
                );
            }
            ArmTarget::Local(adapter)
        };
        out.push(mmloop_serve::Arm { name: name.to_string(), target });
    }
    if out.len() < 2 {
        bail!("an experiment needs two --arm's at least");
    }
    Ok(out)
}

fn weights(split: &[f64], arms: usize) -> anyhow::Result<Vec<f64>> {
    if split.is_empty() {
        return Ok(vec![1.0 / arms as f64; arms]);
    }
    let total: f64 = split.iter().sum();
    if split.len() != arms || split.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 {
        bail!("--split needs one non-negative share per arm ({arms}), e.g. 50,50");
    }
    Ok(split.iter().map(|w| w / total).collect())
}

pub async fn serve(a: ServeArgs, actor: &str) -> anyhow::Result<()> {
    let gateway_only = !a.arms.is_empty() && a.arms.iter().all(|s| is_upstream(s));
    if a.model.is_none() && !gateway_only {
        bail!("--model is required (only a gateway whose --arm's are all other servers' URLs runs without one)");
    }
    let served = a.served_model_name.clone().or_else(|| a.model.clone()).or_else(|| a.experiment.clone());
    let mut config = ServeConfig::new(served.unwrap_or_default());
    config.api_key = a.api_key.clone().filter(|k| !k.is_empty());
    config.limit_mm_per_prompt = images_limit(&a.limit_mm_per_prompt)?;
    config.max_body_bytes = a.max_body_mb.max(1) << 20;
    config.runtime_lora_updating = a.allow_runtime_lora_updating;
    config.allowed_media_domains = a.allowed_media_domains.clone();
    config.max_model_len = a.max_model_len;
    if let Some(dir) = &a.allowed_local_media_path {
        if !dir.is_dir() {
            bail!("--allowed-local-media-path {} is not a folder", dir.display());
        }
        config.allowed_local_media_path = Some(dir.clone());
    }
    let rules = RuleSet::new(match &a.rules {
        Some(f) => rules_file(f)?,
        None => RulesConfig::default(),
    })?;
    let adapters = adapter_list(&a.adapters);
    if let Some((n, _)) = adapters.iter().find(|(n, _)| *n == config.served_model_name) {
        bail!("the adapter name {n:?} is the base model's name; pick another");
    }
    // Bind before the long load, so a taken port fails at once.
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
    let backend = match &a.model {
        Some(model) => {
            let mut o = engine_options(model, &a.revision, &a.device, &a.dtype, a.quant.clone(), a.max_batch_size)?;
            // Adapters are served by name beside the base model, never merged into it.
            o.adapters = adapters;
            Some(Arc::new(load_embedded(o).await?))
        }
        None if !adapters.is_empty() => bail!("--adapters need a --model to adapt"),
        None => None,
    };
    let addr = listener.local_addr()?;
    let names: Vec<String> = backend.iter().flat_map(|b| b.adapters()).map(|(n, _)| n).collect();
    match &backend {
        Some(_) => ui::ok(format!(
            "serving {}{} at http://{addr}/v1 (OpenAI-compatible; /health, /metrics)",
            config.served_model_name,
            if names.is_empty() { String::new() } else { format!(" and adapters {}", names.join(", ")) }
        )),
        None => ui::ok(format!("gateway at http://{addr}/v1 (OpenAI-compatible; /health, /metrics)")),
    }
    if config.api_key.is_none() && !listener.local_addr()?.ip().is_loopback() {
        ui::warn("no --api-key: anyone who reaches this address can use the model");
    }
    let mut store = None;
    if let Some(name) = &a.experiment {
        if backend.is_some()
            && (*name == config.served_model_name || Some(name) == a.model.as_ref() || names.contains(name))
        {
            bail!("--experiment {name:?} is the name of a served model or adapter; pick another");
        }
        let arms = parse_arms(&a, backend.as_ref().map(|_| config.served_model_name.as_str()), &names).await?;
        let weights = weights(&a.split, arms.len())?;
        let project = a.project.as_ref().expect("clap: --experiment requires --project");
        let s = Store::open(project).await?;
        let e = s
            .ab_start(
                Experiment {
                    name: name.clone(),
                    seed: name.clone(),
                    arms: arms
                        .iter()
                        .map(|arm| Arm {
                            name: arm.name.clone(),
                            model: match &arm.target {
                                ArmTarget::Local(ad) => ad.clone().unwrap_or_else(|| config.served_model_name.clone()),
                                ArmTarget::Upstream(u) => format!("{}#{}", u.chat_url, u.model),
                            },
                        })
                        .collect(),
                    weights: weights.clone(),
                },
                actor,
            )
            .await?;
        ui::ok(format!(
            "experiment {}: requests for model {:?} split {} by user",
            style(name).bold(),
            name,
            arms.iter()
                .zip(&weights)
                .map(|(arm, w)| format!("{} {:.0}%", arm.name, w * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        config.ab = Some(AbConfig { name: e.name, seed: e.seed, arms, weights, log: Arc::new(StoreLog(s.clone())) });
        store = Some(s);
    }
    let server = Server::new(backend, rules, config);
    mmloop_serve::serve(server, listener, mmloop_server::shutdown_signal()).await?;
    if let Some(s) = store {
        s.close();
    }
    Ok(())
}

/// `mmloop ab status DIR NAME`.
pub async fn ab(a: AbArgs) -> anyhow::Result<()> {
    let AbAction::Status { project, experiment, alpha, tau, json, html } = a.action;
    if !(alpha > 0.0 && alpha < 1.0 && tau > 0.0) {
        bail!("--alpha must be in (0, 1) and --tau positive");
    }
    let store = Store::open(&project).await?;
    let status = store.ab_status(&experiment, alpha, tau).await;
    store.close();
    let s = status.map_err(|e| match e {
        mmloop_store::StoreError::NotFound(_) => anyhow::anyhow!(
            "no experiment {experiment:?} in {}\n  hint: `mmloop serve --project DIR --experiment NAME --arm ...` starts one",
            project.display()
        ),
        other => other.into(),
    })?;
    if let Some(path) = &html {
        std::fs::write(path, mmloop_server::ab_report::html(&s))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        return ui::json(&s);
    }
    println!("experiment {} (α = {alpha}, τ = {tau})", style(&s.experiment.name).bold());
    for (arm, w) in s.arms.iter().zip(&s.experiment.weights) {
        let rate = if arm.units_with_outcome > 0 {
            format!("{:.3}", arm.unit_sum / arm.units_with_outcome as f64)
        } else {
            "-".into()
        };
        println!(
            "  {:<12} {:<24} share {:>4.0}%  users {:>7}  requests {:>7}  with outcome {:>7}  success {rate:>6}  latency {}  confidence {}",
            arm.arm,
            arm.model,
            w * 100.0,
            arm.units,
            arm.exposures,
            arm.outcomes,
            arm.mean_latency_ms.map_or("-".into(), |l| format!("{l:.0} ms")),
            arm.mean_confidence.map_or("-".into(), |c| format!("{c:.3}")),
        );
    }
    let srm = s.srm_p_value;
    println!("  sample ratio check: p = {srm:.4}{}", if s.srm_mismatch { " — MISMATCH" } else { "" });
    for c in &s.comparisons {
        match &c.sequential {
            Some(q) => println!(
                "  {} − {}: {:+.4} [{:+.4}, {:+.4}] always-valid p = {:.4} → {}",
                c.arm, c.against, q.difference, q.low, q.high, q.p_value, c.recommendation
            ),
            None => println!(
                "  {}: not enough to compare yet (two users with outcomes per arm, and some variation) → {}",
                c.arm, c.recommendation
            ),
        }
    }
    if let Some(path) = &html {
        ui::ok(format!("report with plots: {}", path.display()));
    }
    Ok(())
}
