//! Image resizing exactly as the reference preprocessors do it, so the model sees the
//! pixels transformers feeds it.
//!
//! transformers' image processors (PIL backend) resize 8-bit RGB with Pillow: a separable
//! convolution (`libImaging/Resample.c`) whose kernel widens with the downscale factor
//! (antialiasing), with 22-bit fixed-point weights, rounding and clamping after each pass,
//! horizontal pass first. A few levels of difference in a pixel move the answers'
//! log-probabilities by 1e-3 to 1e-1, so the processors resize with this port of Pillow's
//! algorithm to the exact size the reference processor picks (Qwen's `smart_resize`,
//! Idefics3's longest-edge rules). Nothing here is specific to a model.

use image::RgbImage;

/// Pillow's resampling filters (the `resample` numbers of preprocessor configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From Pillow's `Image.Resampling` number: 1 LANCZOS, 2 BILINEAR, 3 BICUBIC.
    pub fn from_pil(n: i64) -> Option<Filter> {
        match n {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: the first input index, how many inputs, and fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range.
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1i64 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes 8-bit RGB to `width` × `height` exactly as Pillow's `Image.resize` does.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    if (w0, h0) == (w1, h1) {
        return img.clone();
    }
    let horiz = coeffs(w0, w1, filter);
    let vert = coeffs(h0, h1, filter);
    let src = img.as_raw();
    // Only the source rows the vertical pass reads go through the horizontal pass.
    let (first, last) = (vert.bounds[0].0, vert.bounds[h1 - 1].0 + vert.bounds[h1 - 1].1);
    let (tmp, tmp_w, row0) = if w0 != w1 {
        let rows = last - first;
        let mut out = vec![0u8; rows * w1 * 3];
        for y in 0..rows {
            let line = &src[(y + first) * w0 * 3..(y + first + 1) * w0 * 3];
            for xx in 0..w1 {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += line[(xmin + x) * 3 + c] as i64 * kx as i64;
                    }
                    out[(y * w1 + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (out, w1, first)
    } else {
        (src.to_vec(), w0, 0)
    };
    if h0 == h1 {
        return RgbImage::from_raw(width, height, tmp).expect("sizes match");
    }
    let mut out = vec![0u8; h1 * tmp_w * 3];
    for yy in 0..h1 {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for xx in 0..tmp_w {
            for c in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss += tmp[((ymin - row0 + y) * tmp_w + xx) * 3 + c] as i64 * ky as i64;
                }
                out[(yy * tmp_w + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("sizes match")
}

/// Python's `round` (half to even), as transformers' `smart_resize` uses it.
fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// transformers' Qwen2-VL `smart_resize`: both sides multiples of `factor`, the pixel count
/// within `[min_pixels, max_pixels]`, the aspect ratio kept as well as possible.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), String> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(format!("absolute aspect ratio must be smaller than 200, got {}", h.max(w) / h.min(w)));
    }
    let mut h_bar = py_round(h / f) * f;
    let mut w_bar = py_round(w / f) * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// transformers' Idefics3 longest-edge size: the longest side becomes `max_len`, the other
/// keeps the aspect ratio (truncated, then made even), all capped at 4096.
pub fn idefics3_longest_edge(height: u32, width: u32, max_len: u32) -> (u32, u32) {
    let (mut h, mut w) = (height as i64, width as i64);
    let aspect = w as f64 / h as f64;
    if w >= h {
        w = max_len as i64;
        h = (w as f64 / aspect) as i64;
        if h % 2 != 0 {
            h += 1;
        }
    } else {
        h = max_len as i64;
        w = (h as f64 * aspect) as i64;
        if w % 2 != 0 {
            w += 1;
        }
    }
    let (mut h, mut w) = (h.max(1), w.max(1));
    const MAX_IMAGE_SIZE: i64 = 4096;
    let aspect = w as f64 / h as f64;
    if w >= h && w > MAX_IMAGE_SIZE {
        w = MAX_IMAGE_SIZE;
        h = (w as f64 / aspect) as i64;
    } else if h > w && h > MAX_IMAGE_SIZE {
        h = MAX_IMAGE_SIZE;
        w = (h as f64 * aspect) as i64;
    }
    (h.max(1) as u32, w.max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_transformers() {
        // Values from transformers 5.24 `smart_resize`.
        assert_eq!(smart_resize(36, 48, 28, 3136, 50176).unwrap(), (56, 84));
        assert_eq!(smart_resize(64, 224, 28, 3136, 50176).unwrap(), (56, 224));
        assert_eq!(smart_resize(240, 320, 28, 3136, 50176).unwrap(), (168, 252));
        assert_eq!(smart_resize(480, 640, 28, 3136, 640 * 480).unwrap(), (476, 644));
        assert_eq!(smart_resize(42, 42, 28, 1, 1 << 30).unwrap(), (56, 56), "round half to even: 1.5 -> 2");
        assert_eq!(smart_resize(70, 70, 28, 1, 1 << 30).unwrap(), (56, 56), "2.5 -> 2");
        assert!(smart_resize(1, 300, 28, 1, 1 << 30).is_err());
    }

    #[test]
    fn idefics3_sizes_match_transformers() {
        assert_eq!(idefics3_longest_edge(36, 48, 128), (96, 128));
        assert_eq!(idefics3_longest_edge(64, 224, 128), (36, 128));
        assert_eq!(idefics3_longest_edge(480, 640, 2048), (1536, 2048));
        assert_eq!(idefics3_longest_edge(300, 200, 128), (128, 86));
    }

    /// Pillow 13 `Image.resize(..., reducing_gap=None)` on the fixture PNGs: sha256 prefixes
    /// of the RGB bytes, computed with tools/.venv-vlm.
    #[test]
    fn resize_is_bit_exact_with_pillow() {
        let expected: [(&str, [&str; 7]); 3] = [
            (
                "img0",
                [
                    "d91e2be470b019da",
                    "370cc1b17ea3381a",
                    "3608b16cb94df9c1",
                    "a33b1745f4b4f1c8",
                    "b57a75a288fd1168",
                    "468fabecc1c57dc5",
                    "e91c2b0efa8ec246",
                ],
            ),
            (
                "img1",
                [
                    "a462ab437263a219",
                    "8b43bce3797e9125",
                    "6674bd7be1619487",
                    "ae551004c94f490b",
                    "31924a4fecb30c27",
                    "5c4582e33d47d56d",
                    "1ad43bd9bbf79d2a",
                ],
            ),
            (
                "img2",
                [
                    "7433e4ad8dce9ede",
                    "cff81f3d80b27a07",
                    "75e28bd36b142516",
                    "d2e5db95edc21c2a",
                    "b9600c14080c3fdd",
                    "cd9fc97006911b8f",
                    "60d7a246f3a9f725",
                ],
            ),
        ];
        let sizes = [(56, 56, 3), (224, 56, 3), (37, 91, 3), (128, 96, 1), (64, 64, 1), (30, 20, 2), (500, 300, 1)];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm/images");
        for (name, hashes) in expected {
            let img = image::open(dir.join(format!("{name}.png"))).unwrap().into_rgb8();
            for ((w, h, f), want) in sizes.iter().zip(hashes) {
                use sha2::Digest as _;
                let out = resize(&img, *w, *h, Filter::from_pil(*f).unwrap());
                let got = hex::encode(sha2::Sha256::digest(out.as_raw()));
                assert_eq!(&got[..16], want, "{name} -> {w}x{h} filter {f}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_flat_images_stay_flat() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        assert_eq!(resize(&img, 7, 5, Filter::Bicubic), img);
        let flat = RgbImage::from_pixel(9, 6, image::Rgb([200, 10, 77]));
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            for (w, h) in [(4, 3), (20, 13), (9, 2)] {
                let r = resize(&flat, w, h, f);
                assert!(r.pixels().all(|p| p.0 == [200, 10, 77]), "{f:?} {w}x{h}");
            }
        }
    }
}
