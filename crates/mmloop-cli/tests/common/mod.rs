//! Helpers shared by the end-to-end tests: images, projects, running the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use mmloop_pipeline::transfer::{ImportRequest, import_file};
use mmloop_store::{ImportReport, Store};

pub const ACTOR: &str = "test";

/// A small PNG of one colour; distinct colours give distinct images.
pub fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

/// `n` distinct PNGs `dir/img{i}.png`; returns their file names.
pub fn images(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("img{i}.png");
            png(&dir.join(&name), 8 + (i % 5) as u32, 6, [(i * 37 % 256) as u8, (i * 91 % 256) as u8, (i / 7) as u8]);
            name
        })
        .collect()
}

pub fn mmloop(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(args)
        .env("MMLOOP_ACTOR", ACTOR)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mmloop")
}

/// Runs mmloop and insists on success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = mmloop(args);
    assert!(
        out.status.success(),
        "mmloop {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs mmloop and insists on failure; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = mmloop(args);
    assert!(!out.status.success(), "mmloop {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

pub fn json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&a)).unwrap()
}

pub async fn new_project(dir: &Path) -> Store {
    Store::init(dir, Some("test"), ACTOR).await.unwrap()
}

pub async fn import(store: &Store, file: &Path, images_dir: Option<PathBuf>) -> anyhow::Result<ImportReport> {
    let mut req = ImportRequest::new(file, ACTOR);
    req.read.images_dir = images_dir;
    import_file(store, &req, Box::new(())).await
}
