//! A checkpoint folder, located: the user's folder, or a Hugging Face repo id resolved in the
//! hub cache (offline when `HF_HUB_OFFLINE` says so), downloaded when missing and allowed.

use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::hub::{self, Located};

/// A checkpoint on disk, and what it is for the run record.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// `repo@sha` or the folder.
    pub resolved: String,
}

/// Files worth fetching from a repo: configs, tokenizer, templates, safetensors weights.
fn wanted(name: &str) -> bool {
    const FILES: &[&str] = &[
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ];
    !name.contains('/') && (FILES.contains(&name) || name.ends_with(".safetensors"))
}

async fn download(repo: &str, revision: &str) -> Result<PathBuf, EngineError> {
    use hf_hub::api::tokio::ApiBuilder;
    let fail = |what: String| {
        EngineError::Load(format!(
            "{repo}: {what}\n  hint: check the name and your network, or download it first (`hf download {repo}`) and run with HF_HUB_OFFLINE=1"
        ))
    };
    let api = ApiBuilder::from_env()
        .with_cache_dir(hub::cache_dir())
        .with_progress(true)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let r = api.repo(hf_hub::Repo::with_revision(repo.into(), hf_hub::RepoType::Model, revision.into()));
    let info = r.info().await.map_err(|e| fail(format!("cannot list the repo: {e}")))?;
    let mut dir = None;
    for s in info.siblings.iter().filter(|s| wanted(&s.rfilename)) {
        let p = r.get(&s.rfilename).await.map_err(|e| fail(format!("cannot download {}: {e}", s.rfilename)))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| fail("the repo has no config.json or weights".into()))
}

impl Checkpoint {
    /// Finds `model` (folder or repo id), downloading it when it is not cached.
    pub async fn locate(model: &str, revision: &str) -> Result<Checkpoint, EngineError> {
        let (dir, resolved) = match hub::locate(model, revision).map_err(EngineError::Load)? {
            Located::Local(dir) => {
                let r = dir.display().to_string();
                (dir, r)
            }
            Located::Cached { repo, dir } => {
                let sha = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (dir, format!("{repo}@{sha}"))
            }
            Located::Remote { repo, missing, .. } => {
                if hub::offline() {
                    return Err(EngineError::Load(format!(
                        "{repo} is not in the hub cache ({missing}) and HF_HUB_OFFLINE is set\n  hint: download it while online (`hf download {repo}`), or pass a local folder"
                    )));
                }
                let dir = download(&repo, revision).await?;
                if let Some(m) = hub::missing_files(&dir) {
                    return Err(EngineError::Load(format!("{repo}: downloaded, but still incomplete: {m}")));
                }
                let sha = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (dir, format!("{repo}@{sha}"))
            }
        };
        Ok(Checkpoint { dir, resolved })
    }
}
