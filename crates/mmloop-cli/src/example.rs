//! The sample project of `mmloop init --example`: twelve small pictures drawn here (so
//! their licence is ours), with VQA questions and captions, written as ms-swift JSONL.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde_json::json;

pub struct ExampleFile {
    pub path: PathBuf,
    pub task: &'static str,
}

const COLORS: [(&str, [u8; 3]); 4] =
    [("red", [210, 40, 40]), ("blue", [40, 80, 210]), ("green", [40, 160, 70]), ("yellow", [230, 200, 40])];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
const BACKGROUNDS: [(&str, [u8; 3]); 2] = [("white", [245, 245, 245]), ("gray", [150, 150, 150])];

fn inside(shape: &str, x: f32, y: f32) -> bool {
    // (x, y) in [-1, 1]² around the shape's centre.
    match shape {
        "circle" => x * x + y * y <= 1.0,
        "square" => x.abs() <= 0.85 && y.abs() <= 0.85,
        _ => (-0.9..=0.9).contains(&y) && x.abs() <= (y + 0.9) / 1.8 * 0.95,
    }
}

fn draw(shape: &str, color: [u8; 3], bg: [u8; 3], count: usize, seed: usize) -> RgbImage {
    let (w, h) = (192u32, 144u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb(bg));
    let size = if count == 1 { 52.0 } else { 30.0 };
    for k in 0..count {
        let cx = if count == 1 { 96.0 } else { 48.0 + 96.0 * k as f32 } + (seed % 3) as f32 * 4.0;
        let cy = 72.0 + ((seed * 7 + k * 13) % 9) as f32 - 4.0;
        for py in 0..h {
            for px in 0..w {
                let (x, y) = ((px as f32 - cx) / size, (py as f32 - cy) / size);
                if inside(shape, x, y) {
                    img.put_pixel(px, py, Rgb(color));
                }
            }
        }
    }
    img
}

/// Writes `images/*.png`, `data/vqa.jsonl` and `data/captions.jsonl` under `root`; image
/// paths in the files are relative to `root`.
pub fn write(root: &Path) -> anyhow::Result<Vec<ExampleFile>> {
    let images = root.join("images");
    let data = root.join("data");
    std::fs::create_dir_all(&images)?;
    std::fs::create_dir_all(&data)?;
    let mut vqa = String::new();
    let mut captions = String::new();
    for i in 0..12 {
        let (color, rgb) = COLORS[i % COLORS.len()];
        let shape = SHAPES[i % SHAPES.len()];
        let (bg_name, bg) = BACKGROUNDS[(i / 6) % BACKGROUNDS.len()];
        let count = 1 + (i / 4) % 2;
        let name = format!("{i:02}-{color}-{shape}.png");
        draw(shape, rgb, bg, count, i).save(images.join(&name))?;
        let image = format!("images/{name}");
        let plural = if count == 1 { shape.to_string() } else { format!("{shape}s") };
        let qa = [
            (format!("What color is the {shape}?"), color.to_string()),
            ("What shape is shown in the picture?".to_string(), plural.clone()),
            (format!("How many {shape}s are there?"), count.to_string()),
        ];
        for (j, (q, a)) in qa.iter().enumerate() {
            let row = json!({
                "id": format!("ex{i:02}-q{j}"),
                "messages": [
                    {"role": "user", "content": format!("<image>{q}")},
                    {"role": "assistant", "content": a},
                ],
                "images": [image],
            });
            vqa.push_str(&row.to_string());
            vqa.push('\n');
        }
        let caption = if count == 1 {
            format!("A {color} {shape} on a {bg_name} background.")
        } else {
            format!("Two {color} {shape}s side by side on a {bg_name} background.")
        };
        let row = json!({
            "id": format!("ex{i:02}-cap"),
            "messages": [
                {"role": "user", "content": "<image>Describe this image in one sentence."},
                {"role": "assistant", "content": caption},
            ],
            "images": [image],
        });
        captions.push_str(&row.to_string());
        captions.push('\n');
    }
    let vqa_path = data.join("vqa.jsonl");
    let cap_path = data.join("captions.jsonl");
    std::fs::write(&vqa_path, vqa)?;
    std::fs::write(&cap_path, captions)?;
    Ok(vec![ExampleFile { path: vqa_path, task: "vqa" }, ExampleFile { path: cap_path, task: "caption" }])
}
