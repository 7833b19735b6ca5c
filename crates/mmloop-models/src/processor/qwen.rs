//! Qwen2-VL / Qwen2.5-VL / Qwen3-VL inputs, as transformers' `Qwen2VLImageProcessorPil` and
//! `Qwen2VLProcessor` make them: `smart_resize` to multiples of patch × merge (bicubic by
//! default), patches flattened as (channel, temporal copy, row, column) and ordered in 2×2
//! merge windows, one `<|image_pad|>` per merged patch, and M-RoPE positions from
//! `get_rope_index`.

use image::RgbImage;
use serde_json::Value;

use super::resize::{self, Filter};
use super::{Array, Pixels, Prepared, Processor, normalize_into, triple};
use crate::model::Family;
use crate::{Error, Result};

pub const IMAGE_PAD: &str = "<|image_pad|>";

/// The image settings of one Qwen checkpoint (`preprocessor_config.json`).
#[derive(Clone, Debug)]
pub struct QwenImages {
    pub patch: usize,
    pub merge: usize,
    pub temporal: usize,
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub filter: Filter,
    pub do_resize: bool,
    pub rescale: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

// OpenAI CLIP's mean and std as transformers spells them, rounded to float32 as numpy does.
#[allow(clippy::excessive_precision)]
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl QwenImages {
    pub fn from_config(family: Family, pre: &Value, config: &Value) -> Result<QwenImages> {
        let (patch, min_default, max_default) = match family {
            Family::Qwen3Vl => (16, 65_536, 16_777_216),
            _ => (14, 56 * 56, 28 * 28 * 1280),
        };
        let patch = num(&pre["patch_size"]).unwrap_or(patch) as usize;
        let merge = num(&pre["merge_size"]).unwrap_or(2) as usize;
        let temporal = num(&pre["temporal_patch_size"]).unwrap_or(2) as usize;
        let min_pixels = num(&pre["min_pixels"]).or_else(|| num(&pre["size"]["shortest_edge"])).unwrap_or(min_default);
        let max_pixels = num(&pre["max_pixels"]).or_else(|| num(&pre["size"]["longest_edge"])).unwrap_or(max_default);
        let filter = match pre["resample"].as_i64() {
            None => Filter::Bicubic,
            Some(n) => Filter::from_pil(n).ok_or_else(|| {
                Error::Config(format!("preprocessor_config.json: resample {n} is not bilinear, bicubic or Lanczos"))
            })?,
        };
        let vision = &config["vision_config"];
        let model_patch = num(&vision["patch_size"]).unwrap_or(patch as u64) as usize;
        let model_merge = num(&vision["spatial_merge_size"]).unwrap_or(2) as usize;
        let model_temporal = num(&vision["temporal_patch_size"]).unwrap_or(2) as usize;
        if (patch, merge, temporal) != (model_patch, model_merge, model_temporal) {
            return Err(Error::Config(format!(
                "preprocessor_config.json (patch {patch}, merge {merge}, temporal {temporal}) disagrees with config.json's vision_config (patch {model_patch}, merge {model_merge}, temporal {model_temporal})"
            )));
        }
        let rescale =
            (pre["do_rescale"] != Value::Bool(false)).then(|| pre["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0));
        let normalize = if pre["do_normalize"] == Value::Bool(false) {
            None
        } else {
            Some((triple(&pre["image_mean"], CLIP_MEAN)?, triple(&pre["image_std"], CLIP_STD)?))
        };
        Ok(QwenImages {
            patch,
            merge,
            temporal,
            min_pixels,
            max_pixels,
            filter,
            do_resize: pre["do_resize"] != Value::Bool(false),
            rescale,
            normalize,
        })
    }

    /// One image's patches (appended to `out`) and its (t, h, w) grid.
    fn patchify(&self, name: &str, img: &RgbImage, out: &mut Vec<f32>) -> Result<[usize; 3]> {
        let factor = (self.patch * self.merge) as u32;
        let (w, h) = img.dimensions();
        let resized;
        let img = if self.do_resize {
            let (th, tw) = resize::smart_resize(h, w, factor, self.min_pixels, self.max_pixels)
                .map_err(|m| Error::Image { name: name.into(), message: m })?;
            resized = resize::resize(img, tw, th, self.filter);
            &resized
        } else {
            if !h.is_multiple_of(factor) || !w.is_multiple_of(factor) {
                return Err(Error::Image {
                    name: name.into(),
                    message: format!("{w}×{h} is not a multiple of {factor} and do_resize is off"),
                });
            }
            img
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        let planes: [Vec<f32>; 3] = match (self.rescale, self.normalize) {
            (Some(r), Some((mean, std))) => normalize_into(img, r, mean, std),
            (r, n) => {
                let (mean, std) = n.unwrap_or(([0.0; 3], [1.0; 3]));
                normalize_into(img, r.unwrap_or(1.0), mean, std)
            }
        };
        let (p, m, t) = (self.patch, self.merge, self.temporal);
        let (gh, gw) = (h / p, w / p);
        out.reserve(gh * gw * 3 * t * p * p);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (row0, col0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for plane in &planes {
                            for _ in 0..t {
                                for ph in 0..p {
                                    let start = (row0 + ph) * w + col0;
                                    out.extend_from_slice(&plane[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok([1, gh, gw])
    }

    pub fn prepare(&self, proc: &Processor, prompt: String, images: &[(String, RgbImage)]) -> Result<Prepared> {
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for (name, img) in images {
            grids.push(self.patchify(name, img, &mut data)?);
        }
        let pieces: Vec<&str> = prompt.split(IMAGE_PAD).collect();
        if pieces.len() != images.len() + 1 {
            return Err(Error::Input(format!(
                "the chat template wrote {} image placeholders for {} images",
                pieces.len() - 1,
                images.len()
            )));
        }
        let mut text = String::with_capacity(prompt.len());
        for (i, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            if let Some(g) = grids.get(i) {
                text.push_str(&IMAGE_PAD.repeat(g[0] * g[1] * g[2] / (self.merge * self.merge)));
            }
        }
        let input_ids = proc.tokens.encode(&text)?;
        let (positions, rope_delta) = rope_index(&input_ids, proc.image_token_id, &grids, self.merge)?;
        let pixels = (!images.is_empty()).then(|| {
            let per_patch = 3 * self.temporal * self.patch * self.patch;
            let n = data.len() / per_patch;
            Pixels::Patches { patches: Array { data, shape: vec![n, per_patch] }, grids }
        });
        Ok(Prepared { prompt, input_ids, pixels, positions, rope_delta })
    }
}

/// transformers' `get_rope_index` for images: text tokens count up on all three axes; an
/// image's tokens take (start, start + row, start + column) over its merged grid, and the
/// text after it starts at `start + max(rows, columns)`.
pub fn rope_index(ids: &[u32], image_token: u32, grids: &[[usize; 3]], merge: usize) -> Result<(Vec<[i64; 3]>, i64)> {
    let mut pos = Vec::with_capacity(ids.len());
    let mut current = 0i64;
    let mut i = 0;
    let mut image = 0;
    while i < ids.len() {
        if ids[i] != image_token {
            pos.push([current; 3]);
            current += 1;
            i += 1;
            continue;
        }
        let grid = grids.get(image).ok_or_else(|| Error::Input("more image token runs than images".into()))?;
        let (t, h, w) = (grid[0], grid[1] / merge, grid[2] / merge);
        let run = ids[i..].iter().take_while(|&&x| x == image_token).count();
        if run != t * h * w {
            return Err(Error::Input(format!("image {image}: {run} image tokens for a {t}×{h}×{w} merged grid")));
        }
        for ti in 0..t {
            for hi in 0..h {
                for wi in 0..w {
                    pos.push([current + ti as i64, current + hi as i64, current + wi as i64]);
                }
            }
        }
        current += h.max(w) as i64;
        i += run;
        image += 1;
    }
    let max = pos.iter().flat_map(|p| p.iter().copied()).max().unwrap_or(-1);
    Ok((pos, max + 1 - ids.len() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_matches_transformers_layout() {
        // text(2) image(grid 1×4×6 → 2×3 merged) text(2)
        let ids = [5, 6, 9, 9, 9, 9, 9, 9, 7, 8];
        let (pos, delta) = rope_index(&ids, 9, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(pos[..2], [[0, 0, 0], [1, 1, 1]]);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[4], [2, 2, 4]);
        assert_eq!(pos[5], [2, 3, 2]);
        assert_eq!(pos[8], [5, 5, 5], "text resumes at start + max(h, w)");
        assert_eq!(delta, 7 - 10);
        assert!(rope_index(&[9, 9], 9, &[[1, 4, 6]], 2).is_err());
    }
}
