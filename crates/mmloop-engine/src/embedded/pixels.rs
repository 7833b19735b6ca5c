//! Each image brought to the size the checkpoint's own (transformers) image processor
//! would give it, with Pillow's exact resampling ([`super::resize`]), before mistralrs sees
//! it; mistralrs' resize then has nothing left to do.
//!
//! - Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `smart_resize` to multiples of patch × merge within
//!   the configured pixel range, `resample` (bicubic by default).
//! - Idefics3 / SmolVLM, without tiling (see [`super::checkpoint::without_tiling`]): the
//!   longest edge to `size.longest_edge`, then the `max_image_size` square, Lanczos by
//!   default; the copy of the preprocessor config mistralrs reads asks for no further
//!   resizing.

use image::{DynamicImage, RgbImage};
use serde_json::Value;

use super::checkpoint::Family;
use super::resize::{self, Filter};
use crate::EngineError;

/// How images of one checkpoint are sized.
#[derive(Clone, Debug, PartialEq)]
pub enum Sizing {
    /// Leave it to mistralrs (families not known here).
    Engine,
    Qwen {
        factor: u32,
        min_pixels: u64,
        max_pixels: u64,
        filter: Filter,
    },
    Idefics3 {
        longest_edge: u32,
        square: u32,
        filter: Filter,
    },
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

impl Sizing {
    /// From the checkpoint's `preprocessor_config.json` (transformers' defaults for missing keys).
    pub fn new(family: Family, pre: &Value) -> Result<Sizing, EngineError> {
        if pre["do_resize"] == Value::Bool(false) {
            return Ok(Sizing::Engine);
        }
        let filter = |default: Filter| match pre.get("resample").and_then(Value::as_i64) {
            None => Ok(default),
            Some(n) => Filter::from_pil(n).ok_or_else(|| {
                EngineError::Load(format!("preprocessor_config.json: resample {n} is not bilinear, bicubic or Lanczos"))
            }),
        };
        Ok(match family {
            Family::Qwen2Vl | Family::Qwen25Vl | Family::Qwen3Vl => {
                let (patch, min_default, max_default) = match family {
                    Family::Qwen3Vl => (16, 65_536, 16_777_216),
                    _ => (14, 56 * 56, 28 * 28 * 1280),
                };
                let patch = num(&pre["patch_size"]).unwrap_or(patch);
                let merge = num(&pre["merge_size"]).unwrap_or(2);
                let min_pixels =
                    num(&pre["min_pixels"]).or_else(|| num(&pre["size"]["shortest_edge"])).unwrap_or(min_default);
                let max_pixels =
                    num(&pre["max_pixels"]).or_else(|| num(&pre["size"]["longest_edge"])).unwrap_or(max_default);
                Sizing::Qwen {
                    factor: (patch * merge) as u32,
                    min_pixels,
                    max_pixels,
                    filter: filter(Filter::Bicubic)?,
                }
            }
            Family::Idefics3 => Sizing::Idefics3 {
                longest_edge: num(&pre["size"]["longest_edge"]).unwrap_or(4 * 364) as u32,
                square: num(&pre["max_image_size"]["longest_edge"]).unwrap_or(364) as u32,
                filter: filter(Filter::Lanczos)?,
            },
            Family::Other => Sizing::Engine,
        })
    }

    /// The image as the reference processor would have resized it.
    pub fn apply(&self, img: DynamicImage, name: &str) -> Result<DynamicImage, EngineError> {
        let rgb: RgbImage = img.into_rgb8();
        let (w, h) = (rgb.width(), rgb.height());
        let out = match *self {
            Sizing::Engine => rgb,
            Sizing::Qwen { factor, min_pixels, max_pixels, filter } => {
                let (th, tw) = resize::smart_resize(h, w, factor, min_pixels, max_pixels)
                    .map_err(|m| EngineError::Image { name: name.into(), message: m })?;
                resize::resize(&rgb, tw, th, filter)
            }
            Sizing::Idefics3 { longest_edge, square, filter } => {
                let (th, tw) = resize::idefics3_longest_edge(h, w, longest_edge);
                let first = resize::resize(&rgb, tw, th, filter);
                resize::resize(&first, square, square, filter)
            }
        };
        Ok(DynamicImage::ImageRgb8(out))
    }
}
