//! `mmloop serve`: the embedded engine behind an OpenAI-compatible API (mmloop-serve).

use anyhow::{Context, bail};
use mmloop_engine::embedded::EmbeddedOptions;
use mmloop_engine::{RuleSet, RulesConfig};
use mmloop_serve::{ServeConfig, Server};

use crate::cli::ServeArgs;
use crate::infer_cmd::{adapter_list, load_embedded, rules_file};
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

pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::new(a.served_model_name.clone().unwrap_or_else(|| a.model.clone()));
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
    let mut o = EmbeddedOptions::new(a.model.clone());
    o.revision = a.revision.clone();
    o.device = a.device.parse()?;
    o.dtype = a.dtype.parse()?;
    o.quant = a.quant.clone();
    o.max_batch = a.max_batch_size;
    // Adapters are served by name beside the base model, never merged into it.
    o.adapters = adapters;
    let backend = std::sync::Arc::new(load_embedded(o).await?);
    let addr = listener.local_addr()?;
    let names: Vec<String> = backend.adapters().into_iter().map(|(n, _)| n).collect();
    ui::ok(format!(
        "serving {}{} at http://{addr}/v1 (OpenAI-compatible; /health, /metrics)",
        config.served_model_name,
        if names.is_empty() { String::new() } else { format!(" and adapters {}", names.join(", ")) }
    ));
    if config.api_key.is_none() && !listener.local_addr()?.ip().is_loopback() {
        ui::warn("no --api-key: anyone who reaches this address can use the model");
    }
    let server = Server::new(backend, rules, config);
    mmloop_serve::serve(server, listener, mmloop_server::shutdown_signal()).await?;
    Ok(())
}
