//! From a chat (messages with images) to what a model takes: token ids, pixel tensors and
//! positions, exactly as the checkpoint's transformers processor makes them.
//!
//! - the prompt is the checkpoint's own chat template ([`template`]), rendered with
//!   `add_generation_prompt`;
//! - each image placeholder the template writes is expanded the family's way (Qwen: one
//!   `<|image_pad|>` per merged patch; Idefics3: tiles of `<image>` blocks with row/column
//!   markers and a global view), then the text is tokenized with the checkpoint's
//!   `tokenizer.json`, without extra special tokens;
//! - pixels are resized with Pillow's exact algorithm on 8-bit RGB ([`resize`]), rescaled in
//!   float64 and normalized in float32 as transformers' PIL backend does.
//!
//! Nothing here runs a model.

pub mod idefics3;
pub mod qwen;
pub mod resize;
pub mod template;
pub mod tokens;

use std::path::Path;

use image::RgbImage;
use serde_json::Value;

use crate::model::Family;
use crate::{Error, Result};
pub use template::ChatTemplate;
pub use tokens::TokenTable;

/// One part of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    /// The next image of the request, in order.
    Image,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub parts: Vec<Part>,
}

impl ChatMessage {
    pub fn text(role: &str, text: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), parts: vec![Part::Text(text.into())] }
    }

    /// The message as transformers' chat templates see it: content as a list of parts.
    pub fn to_json(&self) -> Value {
        let content: Vec<Value> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => serde_json::json!({"type": "text", "text": t}),
                Part::Image => serde_json::json!({"type": "image"}),
            })
            .collect();
        serde_json::json!({"role": self.role, "content": content})
    }
}

/// A flat row-major float32 array and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

/// The images of one request, ready for the vision tower.
#[derive(Clone, Debug)]
pub enum Pixels {
    /// Qwen: all images' patches `[patches, C·T·P·P]` and each image's (t, h, w) patch grid.
    Patches { patches: Array, grids: Vec<[usize; 3]> },
    /// Idefics3: every tile of every image, `[tiles, 3, S, S]`.
    Tiles { tiles: Array },
}

/// A request ready for the model.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub prompt: String,
    pub input_ids: Vec<u32>,
    pub pixels: Option<Pixels>,
    /// (t, h, w) position of each input token.
    pub positions: Vec<[i64; 3]>,
    /// The position of generated token `i` (0 = the first) is `input_ids.len() + i + delta`.
    pub rope_delta: i64,
}

/// How images are prepared for one family.
#[derive(Clone, Debug)]
pub enum ImageProcessor {
    Qwen(qwen::QwenImages),
    Idefics3(idefics3::Idefics3Images),
}

/// Everything between a chat and the model's inputs, for one checkpoint.
pub struct Processor {
    pub family: Family,
    pub tokens: TokenTable,
    pub template: ChatTemplate,
    pub images: ImageProcessor,
    pub image_token_id: u32,
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Load(format!("{}: not JSON: {e}", path.display())))
}

pub(crate) fn read_json_opt(path: &Path) -> Result<Value> {
    if path.is_file() { read_json(path) } else { Ok(Value::Object(Default::default())) }
}

impl Processor {
    /// The processor of the checkpoint in `dir`; `eos` are its end-of-sequence ids.
    pub fn load(dir: &Path, family: Family, config: &Value, eos: &[u32]) -> Result<Processor> {
        let tokens = TokenTable::load(&dir.join("tokenizer.json"), eos)?;
        let template = ChatTemplate::load(dir)?;
        let pre = read_json_opt(&dir.join("preprocessor_config.json"))?;
        let (images, image_token) = match family {
            Family::Qwen2Vl | Family::Qwen25Vl | Family::Qwen3Vl => {
                (ImageProcessor::Qwen(qwen::QwenImages::from_config(family, &pre, config)?), "<|image_pad|>")
            }
            Family::Idefics3 => {
                let proc = read_json_opt(&dir.join("processor_config.json"))?;
                (ImageProcessor::Idefics3(idefics3::Idefics3Images::from_config(&pre, &proc, config)?), "<image>")
            }
        };
        let from_config = config["image_token_id"].as_u64().or_else(|| config["image_token_index"].as_u64());
        let image_token_id = match (tokens.id(image_token), from_config) {
            (Some(t), Some(c)) if t as u64 != c => {
                return Err(Error::Config(format!(
                    "{}: image_token_id {c} is not the tokenizer's {image_token} ({t})",
                    dir.join("config.json").display()
                )));
            }
            (Some(t), _) => t,
            (None, _) => {
                return Err(Error::Config(format!(
                    "{}: the tokenizer has no {image_token} token",
                    dir.join("tokenizer.json").display()
                )));
            }
        };
        Ok(Processor { family, tokens, template, images, image_token_id })
    }

    /// The prompt text the template renders for `messages` (with the generation prompt).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template.render(messages, true)
    }

    /// Everything the model needs for `messages` with `images` (in the order their
    /// placeholders appear).
    pub fn prepare(&self, messages: &[ChatMessage], images: &[(String, RgbImage)]) -> Result<Prepared> {
        let n_placeholders: usize =
            messages.iter().map(|m| m.parts.iter().filter(|p| matches!(p, Part::Image)).count()).sum();
        if n_placeholders != images.len() {
            return Err(Error::Input(format!(
                "the messages place {n_placeholders} images but {} were given",
                images.len()
            )));
        }
        let prompt = self.render(messages)?;
        match &self.images {
            ImageProcessor::Qwen(q) => q.prepare(self, prompt, images),
            ImageProcessor::Idefics3(p) => p.prepare(self, prompt, images),
        }
    }
}

/// `(value as f64 · rescale) as f32`, then `(x − mean) / std` in float32: transformers'
/// `rescale` and `normalize` of the PIL backend.
pub(crate) fn normalize_into(img: &RgbImage, rescale: f64, mean: [f32; 3], std: [f32; 3]) -> [Vec<f32>; 3] {
    let (w, h) = img.dimensions();
    let mut planes = [
        Vec::with_capacity((w * h) as usize),
        Vec::with_capacity((w * h) as usize),
        Vec::with_capacity((w * h) as usize),
    ];
    for px in img.pixels() {
        for c in 0..3 {
            let v = (px.0[c] as f64 * rescale) as f32;
            planes[c].push((v - mean[c]) / std[c]);
        }
    }
    planes
}

/// Three numbers from a JSON list, or the default.
pub(crate) fn triple(v: &Value, default: [f32; 3]) -> Result<[f32; 3]> {
    match v {
        Value::Null => Ok(default),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default() as f32;
            Ok([x; 3])
        }
        Value::Array(a) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| Error::Config(format!("not a number: {x}")))? as f32;
            }
            Ok(out)
        }
        other => Err(Error::Config(format!("expected three numbers (image_mean / image_std), got {other}"))),
    }
}
