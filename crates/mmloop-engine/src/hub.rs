//! Finding a checkpoint on disk: a local folder, or a Hugging Face repo id resolved in the
//! hub cache ourselves (`models--{org}--{name}/refs/{revision}` → `snapshots/<sha>/`).
//!
//! Resolving here lets cached models load offline and makes `HF_HUB_OFFLINE=1` mean what it
//! means in transformers. Downloading, when needed and allowed, is the embedded backend's
//! business; this module only reads the disk.

use std::path::{Path, PathBuf};

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).unwrap_or_default();
    PathBuf::from(home).join(".cache").join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` forbids network access (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Whether `s` looks like `org/name` (and is not an existing path).
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !Path::new(s).exists()
}

/// The snapshot folder of `repo` at `revision` (a branch, tag or commit hash) in `cache`,
/// when it exists.
pub fn snapshot_dir(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let sha = match std::fs::read_to_string(base.join("refs").join(revision)) {
        Ok(s) => s.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let dir = base.join("snapshots").join(&sha);
    dir.is_dir().then_some(dir)
}

/// The weight files a checkpoint folder needs, or what is missing.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", index.display()))?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        if shards.is_empty() {
            return Err(format!("{}: no weight_map", index.display()));
        }
        let missing: Vec<&String> = shards.iter().filter(|s| !dir.join(s).is_file()).collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing weight shards: {}",
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        return Ok(shards.iter().map(|s| dir.join(s)).collect());
    }
    Err("no model.safetensors or model.safetensors.index.json".into())
}

/// What a folder lacks to be loaded (`None`: complete).
pub fn missing_files(dir: &Path) -> Option<String> {
    let mut missing: Vec<String> =
        ["config.json", "tokenizer.json"].iter().filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect();
    if let Err(e) = weight_files(dir) {
        missing.push(e);
    }
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Where a model name points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// A folder with everything needed.
    Local(PathBuf),
    /// A complete snapshot in the hub cache.
    Cached { repo: String, dir: PathBuf },
    /// A repo id not (completely) in the cache: download, unless offline.
    Remote { repo: String, partial: Option<PathBuf>, missing: String },
}

/// Locates `model`: an existing folder, or a repo id looked up in the hub cache.
pub fn locate(model: &str, revision: &str) -> Result<Located, String> {
    locate_in(model, revision, &cache_dir())
}

/// [`locate`] with an explicit hub cache.
pub fn locate_in(model: &str, revision: &str, cache: &Path) -> Result<Located, String> {
    let path = Path::new(model);
    if path.exists() {
        if !path.is_dir() {
            return Err(format!("{model} is a file; pass the checkpoint's folder"));
        }
        return match missing_files(path) {
            None => Ok(Located::Local(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))),
            Some(m) => Err(format!("{model} is not a complete checkpoint folder: {m}")),
        };
    }
    if !is_repo_id(model) {
        return Err(format!(
            "{model} is neither a folder nor a Hugging Face repo id (org/name)\n  hint: pass a checkpoint folder or e.g. HuggingFaceTB/SmolVLM-256M-Instruct"
        ));
    }
    match snapshot_dir(cache, model, revision) {
        Some(dir) => match missing_files(&dir) {
            None => Ok(Located::Cached { repo: model.into(), dir }),
            Some(missing) => Ok(Located::Remote { repo: model.into(), partial: Some(dir), missing }),
        },
        None => Ok(Located::Remote {
            repo: model.into(),
            partial: None,
            missing: format!("not in the hub cache {}", cache.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn repo_ids_and_paths() {
        assert!(is_repo_id("Qwen/Qwen2.5-VL-3B-Instruct"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("plain"));
    }

    #[test]
    fn snapshots_resolve_through_refs_and_check_shards() {
        let cache = tempfile::tempdir().unwrap();
        let base = cache.path().join("models--org--m");
        touch(&base.join("refs/main"), "abc123\n");
        let snap = base.join("snapshots/abc123");
        touch(&snap.join("config.json"), "{}");
        touch(&snap.join("tokenizer.json"), "{}");
        touch(
            &snap.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
        );
        touch(&snap.join("model-00001-of-00002.safetensors"), "");
        assert_eq!(snapshot_dir(cache.path(), "org/m", "main"), Some(snap.clone()));
        assert_eq!(snapshot_dir(cache.path(), "org/m", "abc123"), Some(snap.clone()));
        assert_eq!(snapshot_dir(cache.path(), "org/other", "main"), None);
        let m = missing_files(&snap).unwrap();
        assert!(m.contains("model-00002-of-00002.safetensors"), "{m}");
        assert!(matches!(locate_in("org/m", "main", cache.path()), Ok(Located::Remote { partial: Some(_), .. })));
        touch(&snap.join("model-00002-of-00002.safetensors"), "");
        assert_eq!(missing_files(&snap), None);
        assert_eq!(weight_files(&snap).unwrap().len(), 2);
        assert_eq!(locate_in("org/m", "main", cache.path()), Ok(Located::Cached { repo: "org/m".into(), dir: snap }));
        assert!(matches!(locate_in("org/none", "main", cache.path()), Ok(Located::Remote { partial: None, .. })));
        assert!(locate_in("not a model", "main", cache.path()).is_err());
    }
}
