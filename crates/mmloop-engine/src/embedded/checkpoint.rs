//! A checkpoint folder ready for mistralrs: located (local folder or hub cache, downloaded
//! when needed and allowed), its family recognised, and its `config.json` normalised into a
//! scratch folder when mistralrs 0.8.1 cannot parse the published spelling.
//!
//! Normalisations (each fills only what is missing, with transformers' defaults):
//! - Idefics3 / SmolVLM: the published `vision_config` omits `num_channels`, `hidden_act`,
//!   `layer_norm_eps` (and `num_hidden_layers`, `intermediate_size`), and `text_config`
//!   omits `hidden_act`; mistralrs requires them all.
//! - Qwen2-VL / Qwen2.5-VL saved by transformers 5 (nested `text_config`, `rope_parameters`):
//!   mistralrs reads only the flat legacy layout the published checkpoints use.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::EngineError;
use crate::hub::{self, Located};

/// The model families this backend knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Qwen2Vl,
    Qwen25Vl,
    Qwen3Vl,
    Idefics3,
    /// Another architecture mistralrs may load (untested here).
    Other,
}

impl Family {
    pub fn from_architecture(arch: &str) -> Family {
        match arch {
            "Qwen2VLForConditionalGeneration" => Family::Qwen2Vl,
            "Qwen2_5_VLForConditionalGeneration" => Family::Qwen25Vl,
            "Qwen3VLForConditionalGeneration" => Family::Qwen3Vl,
            "Idefics3ForConditionalGeneration" => Family::Idefics3,
            _ => Family::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Qwen2Vl => "qwen2_vl",
            Family::Qwen25Vl => "qwen2_5_vl",
            Family::Qwen3Vl => "qwen3_vl",
            Family::Idefics3 => "idefics3",
            Family::Other => "other",
        }
    }

    /// Whether mistralrs gets the round-trip tokenizer ([`round_trip_tokenizer`]): the Qwen-VL
    /// inputs processors decode and re-encode the whole sequence at every step of an image
    /// request, Idefics3's does so for the prompt; and for all four, the answer text mistralrs
    /// returns then spells the generated ids, which checks our step hook.
    pub fn uses_stand_in_tokenizer(self) -> bool {
        !matches!(self, Family::Other)
    }

    pub fn loader(self) -> Option<mistralrs::MultimodalLoaderType> {
        use mistralrs::MultimodalLoaderType as L;
        match self {
            Family::Qwen2Vl => Some(L::Qwen2VL),
            Family::Qwen25Vl => Some(L::Qwen2_5VL),
            Family::Qwen3Vl => Some(L::Qwen3VL),
            Family::Idefics3 => Some(L::Idefics3),
            Family::Other => None,
        }
    }
}

/// A checkpoint as it will be loaded.
pub struct Checkpoint {
    /// The folder the files come from (a snapshot or the user's folder).
    pub source: PathBuf,
    /// The folder handed to mistralrs (`source`, or a scratch copy with a normalised config).
    pub load_dir: PathBuf,
    pub family: Family,
    pub architecture: String,
    /// What was loaded, for the run record: `repo@sha` or the folder.
    pub resolved: String,
    /// Keeps the scratch folder alive as long as the checkpoint.
    _scratch: Option<tempfile::TempDir>,
}

fn read_json(path: &Path) -> Result<Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Load(format!("{}: not JSON: {e}", path.display())))
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
    /// Finds `model` (folder or repo id) and prepares it for loading.
    pub async fn prepare(model: &str, revision: &str) -> Result<Checkpoint, EngineError> {
        let (source, resolved) = match hub::locate(model, revision).map_err(EngineError::Load)? {
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
        let config = read_json(&source.join("config.json"))?;
        let architecture = config["architectures"][0].as_str().unwrap_or_default().to_string();
        let family = Family::from_architecture(&architecture);
        let mut replaced: Vec<(&str, Value)> = Vec::new();
        if let Some(fixed) = normalize_config(family, &config) {
            replaced.push(("config.json", fixed));
        }
        if family.uses_stand_in_tokenizer() {
            let tok = read_json(&source.join("tokenizer.json"))?;
            replaced.push(("tokenizer.json", round_trip_tokenizer(&tok)?));
        }
        if family == Family::Idefics3 {
            let path = source.join("preprocessor_config.json");
            let pre = if path.is_file() { read_json(&path)? } else { json!({}) };
            if let Some(fixed) = without_tiling(&pre) {
                replaced.push(("preprocessor_config.json", fixed));
            }
        }
        let (load_dir, scratch) = if replaced.is_empty() {
            (source.clone(), None)
        } else {
            let scratch = scratch_copy(&source, &replaced)?;
            (scratch.path().to_path_buf(), Some(scratch))
        };
        Ok(Checkpoint { source, load_dir, family, architecture, resolved, _scratch: scratch })
    }
}

/// A folder of links to `source`'s files, with `replaced` files written instead.
fn scratch_copy(source: &Path, replaced: &[(&str, Value)]) -> Result<tempfile::TempDir, EngineError> {
    let io = |e: std::io::Error| EngineError::Load(format!("preparing {}: {e}", source.display()));
    let dir = tempfile::Builder::new().prefix("mmloop-ckpt-").tempdir().map_err(io)?;
    for entry in std::fs::read_dir(source).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if replaced.iter().any(|(r, _)| name == *r) {
            continue;
        }
        let target = std::fs::canonicalize(entry.path()).map_err(io)?;
        link(&target, &dir.path().join(&name)).map_err(io)?;
    }
    for (name, value) in replaced {
        let text = serde_json::to_string(value).expect("JSON serializes");
        std::fs::write(dir.path().join(name), text).map_err(io)?;
    }
    Ok(dir)
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) -> std::io::Result<()> {
    std::fs::hard_link(target, at).or_else(|_| std::fs::copy(target, at).map(|_| ()))
}

fn fill(obj: &mut Map<String, Value>, defaults: &[(&str, Value)]) -> bool {
    let mut changed = false;
    for (k, v) in defaults {
        if !obj.contains_key(*k) || obj[*k].is_null() {
            obj.insert(k.to_string(), v.clone());
            changed = true;
        }
    }
    changed
}

/// The config mistralrs 0.8.1 can parse, when it differs from `config`.
pub fn normalize_config(family: Family, config: &Value) -> Option<Value> {
    let mut c = config.clone();
    let changed = match family {
        Family::Idefics3 => normalize_idefics3(&mut c),
        Family::Qwen2Vl | Family::Qwen25Vl => flatten_qwen(&mut c),
        _ => false,
    };
    changed.then_some(c)
}

fn normalize_idefics3(c: &mut Value) -> bool {
    let top = c.as_object_mut().expect("config is an object");
    let mut changed = fill(top, &[("scale_factor", json!(2)), ("image_token_id", json!(128257))]);
    let vocab = top.get("vocab_size").cloned();
    let tie = top.get("tie_word_embeddings").cloned().unwrap_or(json!(false));
    // transformers' Idefics3VisionConfig defaults.
    let vision = top.entry("vision_config").or_insert_with(|| json!({}));
    if let Some(v) = vision.as_object_mut() {
        changed |= fill(
            v,
            &[
                ("hidden_size", json!(1152)),
                ("intermediate_size", json!(3072)),
                ("num_hidden_layers", json!(12)),
                ("num_attention_heads", json!(16)),
                ("num_channels", json!(3)),
                ("image_size", json!(224)),
                ("patch_size", json!(32)),
                ("hidden_act", json!("gelu_pytorch_tanh")),
                ("layer_norm_eps", json!(1e-6)),
            ],
        );
    }
    // transformers' LlamaConfig defaults, with Idefics3's rms_norm_eps.
    let text = top.entry("text_config").or_insert_with(|| json!({}));
    if let Some(t) = text.as_object_mut() {
        let heads = t.get("num_attention_heads").cloned().unwrap_or(json!(32));
        let theta = t.get("rope_parameters").and_then(|r| r.get("rope_theta")).cloned().unwrap_or(json!(10000.0));
        let mut d = vec![
            ("hidden_act", json!("silu")),
            ("rms_norm_eps", json!(1e-5)),
            ("rope_theta", theta),
            ("max_position_embeddings", json!(2048)),
            ("num_key_value_heads", heads),
            ("tie_word_embeddings", tie),
        ];
        if let Some(v) = vocab {
            d.push(("vocab_size", v));
        }
        changed |= fill(t, &d);
    }
    changed
}

/// Hoists a transformers-5 `text_config` to the top level and `rope_parameters` to the
/// legacy `rope_theta` + `rope_scaling {type: mrope, mrope_section}`.
fn flatten_qwen(c: &mut Value) -> bool {
    let top = c.as_object_mut().expect("config is an object");
    let mut changed = false;
    if let Some(Value::Object(text)) = top.shift_remove("text_config") {
        for (k, v) in text {
            if k != "model_type" && !top.contains_key(&k) {
                top.insert(k, v);
            }
        }
        changed = true;
    }
    if let Some(rp) = top.get("rope_parameters").cloned() {
        if !top.contains_key("rope_theta")
            && let Some(t) = rp.get("rope_theta")
        {
            top.insert("rope_theta".into(), t.clone());
            changed = true;
        }
        if top.get("rope_scaling").is_none_or(Value::is_null)
            && let Some(s) = rp.get("mrope_section")
        {
            top.insert("rope_scaling".into(), json!({"type": "mrope", "mrope_section": s}));
            changed = true;
        }
    }
    changed
}

/// First and second characters of the stand-in codes: two disjoint runs of Unicode's
/// Supplementary Private Use Area-A, which prompts never contain.
const CODE_HI: u32 = 0xF0000;
const CODE_LO: u32 = 0xF8000;
const CODE_SPAN: u32 = 1024;

/// The two-character stand-in for vocabulary id `id`.
pub fn stand_in(id: u32) -> String {
    let hi = char::from_u32(CODE_HI + id / CODE_SPAN).expect("in the private use area");
    let lo = char::from_u32(CODE_LO + id % CODE_SPAN).expect("in the private use area");
    [hi, lo].iter().collect()
}

/// The ids spelled by stand-in codes in `text` (other text, such as special tokens, is
/// skipped); `None` when the stand-ins are malformed.
pub fn stand_in_ids(text: &str) -> Option<Vec<u32>> {
    let mut ids = Vec::new();
    let mut hi: Option<u32> = None;
    for c in text.chars() {
        let u = c as u32;
        if (CODE_HI..CODE_LO).contains(&u) {
            if hi.is_some() {
                return None;
            }
            hi = Some(u - CODE_HI);
        } else if (CODE_LO..CODE_LO + CODE_SPAN).contains(&u) {
            ids.push(hi.take()? * CODE_SPAN + (u - CODE_LO));
        } else if hi.is_some() {
            return None;
        }
    }
    hi.is_none().then_some(ids)
}

/// Whether `c` is one of the stand-in characters (stripped from prompts).
pub fn is_stand_in_char(c: char) -> bool {
    let c = c as u32;
    (CODE_HI..CODE_LO + CODE_SPAN).contains(&c)
}

/// A tokenizer whose decode → encode round trip is exact, for mistralrs' Qwen-VL inputs
/// processors. At every decode step of an image request they decode all ids to text and
/// encode it again to place the image tokens; a generated sequence that is not BPE's own
/// choice for its text (a split multi-byte character, a non-canonical merge) comes back
/// with another length and the step fails (`shape mismatch in where_cond`).
///
/// Every ordinary vocabulary entry also becomes a non-special added token whose content is
/// a two-character private-use code mapping to the same id: ids decode to their codes, and
/// codes encode back to exactly those ids. Prompt text contains no such characters, so it
/// still encodes through BPE exactly as before; special tokens keep their own text, so
/// image placeholders are found as before. Only mistralrs' own answer text changes (our
/// answers are decoded with the checkpoint's original tokenizer).
pub fn round_trip_tokenizer(tok: &Value) -> Result<Value, EngineError> {
    let mut tok = tok.clone();
    let bad = |m: &str| EngineError::Load(format!("tokenizer.json: {m}"));
    let added: Vec<(String, u64)> = tok["added_tokens"]
        .as_array()
        .ok_or_else(|| bad("no added_tokens list"))?
        .iter()
        .filter_map(|t| Some((t["content"].as_str()?.to_string(), t["id"].as_u64()?)))
        .collect();
    let vocab =
        tok["model"]["vocab"].as_object_mut().ok_or_else(|| bad("model.vocab is not a map (not a BPE tokenizer)"))?;
    // The stand-ins make the vocabulary map longer than its id range; tokens found in it keep
    // their ids, so the existing added tokens are listed there too (as mistralrs does anyway)
    // rather than numbered from its length.
    for (content, id) in &added {
        vocab.entry(content.clone()).or_insert(json!(id));
    }
    let added: std::collections::HashSet<u64> = added.iter().map(|(_, id)| *id).collect();
    let mut ids: Vec<u64> = vocab.values().filter_map(Value::as_u64).filter(|id| !added.contains(id)).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.last().is_some_and(|&m| m >= (CODE_LO - CODE_HI) as u64 * CODE_SPAN as u64) {
        return Err(bad("vocabulary too large for stand-in codes"));
    }
    let mut entries = Vec::with_capacity(ids.len());
    for &id in &ids {
        let code = stand_in(id as u32);
        vocab.insert(code.clone(), json!(id));
        entries.push(json!({
            "id": id, "content": code, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": false,
        }));
    }
    tok["added_tokens"].as_array_mut().expect("checked above").extend(entries);
    Ok(tok)
}

/// Idefics3 preprocessing without tiling (`do_image_splitting: false`), when it tiles.
///
/// mistralrs 0.8.1's Idefics3 encoder cache indexes the tiles of all images with one hash
/// per image (`vision_models/idefics3/mod.rs`, `per_image` filled per hash, unwrapped per
/// tile), so an image cut into tiles panics its engine. Without tiling each image is one
/// `max_image_size` square, as transformers does with the same setting.
///
/// Images reach mistralrs already at that square size ([`super::pixels`]), so the copy also
/// sets `size.longest_edge` to it: mistralrs' first resize then keeps the image as it is.
pub fn without_tiling(pre: &Value) -> Option<Value> {
    let square = pre["max_image_size"]["longest_edge"].as_u64().unwrap_or(364);
    if pre["do_image_splitting"] == json!(false) && pre["size"]["longest_edge"].as_u64() == Some(square) {
        return None;
    }
    let mut p = pre.clone();
    let o = p.as_object_mut()?;
    o.insert("do_image_splitting".into(), json!(false));
    o.insert("size".into(), json!({"longest_edge": square}));
    o.insert("max_image_size".into(), json!({"longest_edge": square}));
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smolvlm_published_config_gets_transformers_defaults() {
        let published = json!({
            "architectures": ["Idefics3ForConditionalGeneration"],
            "image_token_id": 49190, "scale_factor": 4, "vocab_size": 49280,
            "text_config": {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                            "rms_norm_eps": 1e-5, "rope_theta": 100000, "vocab_size": 49280,
                            "intermediate_size": 1536, "num_hidden_layers": 30, "max_position_embeddings": 8192},
            "vision_config": {"hidden_size": 768, "image_size": 512, "num_attention_heads": 12, "patch_size": 16}
        });
        let fixed = normalize_config(Family::Idefics3, &published).expect("changed");
        assert_eq!(fixed["vision_config"]["num_hidden_layers"], 12);
        assert_eq!(fixed["vision_config"]["intermediate_size"], 3072);
        assert_eq!(fixed["vision_config"]["hidden_act"], "gelu_pytorch_tanh");
        assert_eq!(fixed["vision_config"]["hidden_size"], 768, "present values are kept");
        assert_eq!(fixed["text_config"]["hidden_act"], "silu");
        assert_eq!(fixed["text_config"]["num_key_value_heads"], 3);
        assert_eq!(fixed["text_config"]["rope_theta"], 100000);
        assert!(normalize_config(Family::Idefics3, &fixed).is_none(), "idempotent");
    }

    #[test]
    fn stand_in_codes_are_distinct_two_char_strings() {
        let mut seen = std::collections::HashSet::new();
        for id in (0..160_000).step_by(7) {
            let s = stand_in(id);
            assert_eq!(s.chars().count(), 2);
            assert!(s.chars().all(is_stand_in_char));
            assert!(seen.insert(s));
        }
        let text = format!("{}<|im_end|>{}{}", stand_in(5), stand_in(151_642), stand_in(0));
        assert_eq!(stand_in_ids(&text), Some(vec![5, 151_642, 0]));
        assert_eq!(stand_in_ids(&stand_in(3)[..4]), None, "half a code");
        assert!(!is_stand_in_char('a') && !is_stand_in_char('这'));
    }

    #[test]
    fn tokenizer_round_trip_is_exact_for_any_ids() {
        // A byte-level BPE in the tokenizers JSON layout with one special token.
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 6, "content": "<|im_end|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4, "è": 5},
                      "merges": ["a b", "Ġ ab"]}
        });
        let fixed = round_trip_tokenizer(&tok).unwrap();
        let original = tokenizers::Tokenizer::from_bytes(tok.to_string().as_bytes()).unwrap();
        let t = tokenizers::Tokenizer::from_bytes(fixed.to_string().as_bytes()).unwrap();
        // Natural text encodes as before.
        for text in ["ab ab<|im_end|>", "a b", "abab"] {
            assert_eq!(
                t.encode_fast(text, false).unwrap().get_ids(),
                original.encode_fast(text, false).unwrap().get_ids(),
                "{text}"
            );
        }
        // Non-canonical ids ("a","b" instead of "ab") and a lone byte of a character do not
        // survive the original round trip; they do with the stand-ins.
        let ids = [0u32, 1, 3, 2, 5, 6, 0];
        let text = original.decode(&ids, false).unwrap();
        assert_ne!(original.encode_fast(text, false).unwrap().get_ids(), &ids);
        let text = t.decode(&ids, false).unwrap();
        assert_eq!(t.encode_fast(text.as_str(), false).unwrap().get_ids(), &ids, "{text:?}");
    }

    #[test]
    fn idefics3_tiling_is_turned_off_once() {
        let pre = json!({"do_image_splitting": true, "max_image_size": {"longest_edge": 512}});
        let off = without_tiling(&pre).unwrap();
        assert_eq!(off["do_image_splitting"], false);
        assert_eq!(off["size"]["longest_edge"], 512);
        assert!(without_tiling(&off).is_none());
    }

    #[test]
    fn qwen_transformers5_layout_is_flattened() {
        let nested = json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "text_config": {"hidden_size": 32, "model_type": "qwen2_5_vl_text",
                            "rope_parameters": {"rope_theta": 1e6, "mrope_section": [2, 3, 3], "rope_type": "default"}},
            "vision_config": {"depth": 2}
        });
        let flat = normalize_config(Family::Qwen25Vl, &nested).expect("changed");
        assert_eq!(flat["hidden_size"], 32);
        assert_eq!(flat["rope_theta"], 1e6);
        assert_eq!(flat["rope_scaling"]["mrope_section"], json!([2, 3, 3]));
        assert!(flat.get("text_config").is_none());
        let published = json!({"hidden_size": 32, "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}});
        assert!(normalize_config(Family::Qwen25Vl, &published).is_none());
    }
}
