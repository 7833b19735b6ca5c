//! Idefics3 / SmolVLM inputs, as transformers' `Idefics3ImageProcessorPil` and
//! `Idefics3Processor` make them, image splitting included (their default):
//!
//! 1. the longest edge becomes `size.longest_edge` (upscaling small images too; the other
//!    side truncated, then made even), Lanczos on 8-bit RGB;
//! 2. with splitting, both sides are rounded up to multiples of `max_image_size`, the image is
//!    cut into square tiles row by row, and a global view squashed to one tile is added last;
//!    without splitting, the image is squashed to one tile;
//! 3. each image becomes `<fake_token_around_image><row_r_col_c>` + `<image>`×`image_seq_len`
//!    per tile (a newline after each row), then `\n<fake_token_around_image><global-img>` +
//!    `<image>`×`image_seq_len` + `<fake_token_around_image>`.

use image::RgbImage;
use serde_json::Value;

use super::resize::{self, Filter};
use super::{Array, Pixels, Prepared, Processor, normalize_into, triple};
use crate::text::linear_positions;
use crate::{Error, Result};

pub const IMAGE: &str = "<image>";
const FAKE: &str = "<fake_token_around_image>";
const GLOBAL: &str = "<global-img>";

#[derive(Clone, Debug)]
pub struct Idefics3Images {
    pub longest_edge: u32,
    /// The tile side.
    pub tile: u32,
    pub splitting: bool,
    pub do_resize: bool,
    pub filter: Filter,
    pub rescale: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
    pub image_seq_len: usize,
}

impl Idefics3Images {
    pub fn from_config(pre: &Value, proc: &Value, config: &Value) -> Result<Idefics3Images> {
        let n = |v: &Value| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64));
        let tile = n(&pre["max_image_size"]["longest_edge"]).unwrap_or(364) as u32;
        let vision = &config["vision_config"];
        let image_size = n(&vision["image_size"]).unwrap_or(224) as usize;
        let patch = n(&vision["patch_size"]).unwrap_or(32) as usize;
        let scale = n(&config["scale_factor"]).unwrap_or(2) as usize;
        if tile as usize != image_size {
            return Err(Error::Config(format!(
                "preprocessor_config.json max_image_size {tile} differs from the vision tower's image_size {image_size}"
            )));
        }
        let from_model = (image_size / patch).pow(2) / (scale * scale);
        let image_seq_len = n(&proc["image_seq_len"]).map(|v| v as usize).unwrap_or(from_model);
        if image_seq_len != from_model {
            return Err(Error::Config(format!(
                "processor_config.json image_seq_len {image_seq_len} differs from (image_size / patch_size)² / scale_factor² = {from_model}"
            )));
        }
        let filter = match pre["resample"].as_i64() {
            None => Filter::Lanczos,
            Some(n) => Filter::from_pil(n).ok_or_else(|| {
                Error::Config(format!("preprocessor_config.json: resample {n} is not bilinear, bicubic or Lanczos"))
            })?,
        };
        let rescale =
            (pre["do_rescale"] != Value::Bool(false)).then(|| pre["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0));
        let normalize = if pre["do_normalize"] == Value::Bool(false) {
            None
        } else {
            Some((triple(&pre["image_mean"], [0.5; 3])?, triple(&pre["image_std"], [0.5; 3])?))
        };
        Ok(Idefics3Images {
            longest_edge: n(&pre["size"]["longest_edge"]).unwrap_or(4 * 364) as u32,
            tile,
            splitting: pre["do_image_splitting"] != Value::Bool(false),
            do_resize: pre["do_resize"] != Value::Bool(false),
            filter,
            rescale,
            normalize,
            image_seq_len,
        })
    }

    /// One image's tiles (row by row, then the global view) and its rows × columns
    /// (0 × 0 when not split).
    fn tiles(&self, img: &RgbImage) -> (Vec<RgbImage>, usize, usize) {
        let mut img = img.clone();
        if self.do_resize {
            let (h, w) = resize::idefics3_longest_edge(img.height(), img.width(), self.longest_edge);
            img = resize::resize(&img, w, h, self.filter);
        }
        let tile = self.tile;
        if !self.splitting {
            return (vec![resize::resize(&img, tile, tile, self.filter)], 0, 0);
        }
        let (h, w) = (img.height(), img.width());
        let aspect = w as f64 / h as f64;
        let round_up = |x: u32| x.div_ceil(tile) * tile;
        let (nh, nw) = if w >= h {
            let nw = round_up(w);
            (round_up((nw as f64 / aspect) as u32), nw)
        } else {
            let nh = round_up(h);
            (nh, round_up((nh as f64 * aspect) as u32))
        };
        let img = resize::resize(&img, nw, nh, self.filter);
        if nh <= tile && nw <= tile {
            return (vec![img], 0, 0);
        }
        let rows = ((nh - tile) / tile + 1) as usize;
        let cols = ((nw - tile) / tile + 1) as usize;
        let mut out = Vec::with_capacity(rows * cols + 1);
        for r in 0..rows as u32 {
            for c in 0..cols as u32 {
                out.push(image::imageops::crop_imm(&img, c * tile, r * tile, tile, tile).to_image());
            }
        }
        out.push(resize::resize(&img, tile, tile, self.filter));
        (out, rows, cols)
    }

    fn placeholder(&self, rows: usize, cols: usize) -> String {
        let images = IMAGE.repeat(self.image_seq_len);
        let global = format!("{FAKE}{GLOBAL}{images}{FAKE}");
        if rows == 0 && cols == 0 {
            return global;
        }
        let mut s = String::new();
        for r in 0..rows {
            for c in 0..cols {
                s.push_str(&format!("{FAKE}<row_{}_col_{}>{images}", r + 1, c + 1));
            }
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&global);
        s
    }

    pub fn prepare(&self, proc: &Processor, prompt: String, images: &[(String, RgbImage)]) -> Result<Prepared> {
        let pieces: Vec<&str> = prompt.split(IMAGE).collect();
        if pieces.len() != images.len() + 1 {
            return Err(Error::Input(format!(
                "the chat template wrote {} image placeholders for {} images",
                pieces.len() - 1,
                images.len()
            )));
        }
        let side = self.tile as usize;
        let mut data = Vec::new();
        let mut n_tiles = 0;
        let mut text = String::with_capacity(prompt.len());
        for (i, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            let Some((name, img)) = images.get(i) else { continue };
            if img.width() == 0 || img.height() == 0 {
                return Err(Error::Image { name: name.clone(), message: "the image is empty".into() });
            }
            let (tiles, rows, cols) = self.tiles(img);
            if rows > 6 || cols > 6 {
                return Err(Error::Image {
                    name: name.clone(),
                    message: format!("{}×{} tiles: the tokenizer has row/column tokens for at most 6×6", rows, cols),
                });
            }
            for t in &tiles {
                let planes = match (self.rescale, self.normalize) {
                    (r, Some((mean, std))) => normalize_into(t, r.unwrap_or(1.0), mean, std),
                    (r, None) => normalize_into(t, r.unwrap_or(1.0), [0.0; 3], [1.0; 3]),
                };
                for p in planes {
                    debug_assert_eq!(p.len(), side * side);
                    data.extend(p);
                }
            }
            n_tiles += tiles.len();
            text.push_str(&self.placeholder(rows, cols));
        }
        let input_ids = proc.tokens.encode(&text)?;
        let positions = linear_positions(0, input_ids.len());
        let pixels =
            (n_tiles > 0).then(|| Pixels::Tiles { tiles: Array { data, shape: vec![n_tiles, 3, side, side] } });
        Ok(Prepared { prompt, input_ids, pixels, positions, rope_delta: 0 })
    }
}
