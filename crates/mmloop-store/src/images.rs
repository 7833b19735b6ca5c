//! Images: content-addressed by the sha256 of their bytes. Size and format come from the
//! header (never a full decode); truncation is caught by each format's end marker; paths
//! relative to the dataset root may not climb out of it.

use std::io::Cursor;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use mmloop_core::{Digest, ImageSource};
use serde::Serialize;

/// Limits that protect the machine from hostile images.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    /// Pixel count above which an image is refused: PIL's `DecompressionBombError`
    /// threshold (2 × `Image.MAX_IMAGE_PIXELS`).
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_pixels: 178_956_970 }
    }
}

/// Why an image was refused, with the path it came from.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} not found")]
    Missing(String),
    #[error("image {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("image {0} is not a recognised image (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    NotAnImage(String),
    #[error("image {path} is truncated ({format} without its end marker)")]
    Truncated { path: String, format: &'static str },
    #[error("image {path} is {width}×{height} = {pixels} pixels, over the limit of {limit} (decompression bomb?)")]
    TooLarge { path: String, width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("image {path} has zero width or height")]
    Empty { path: String },
    #[error("image path {path} leaves the dataset root {root}")]
    Escapes { path: String, root: String },
    #[error("image {0} is a URL; mmloop does not download images")]
    Url(String),
    #[error("image {0} is not a regular file (a symbolic link, a device or a pipe)")]
    NotAFile(String),
    #[error("image {0} changed since it was imported (its bytes no longer match their sha256)")]
    Changed(String),
}

impl ImageError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ImageError::Missing(_) => {
                "relative paths resolve against --images-dir (default: the dataset file's folder)".into()
            }
            ImageError::Truncated { .. } => "the file was cut short; copy or download it again".into(),
            ImageError::TooLarge { .. } => {
                "raise [import] max_image_pixels in mmloop.toml if the image is genuine".into()
            }
            ImageError::Escapes { .. } => {
                "paths may not climb out of the dataset root with `..`; pass --images-dir for images kept elsewhere"
                    .into()
            }
            ImageError::Url(_) => {
                "download the images first and point the dataset (or --images-dir) at the files".into()
            }
            ImageError::NotAnImage(_) => "check that the path points at an image file".into(),
            ImageError::NotAFile(_) | ImageError::Changed(_) => {
                "put the original file back, or import the dataset again with --copy so the project keeps its own copy"
                    .into()
            }
            _ => return None,
        })
    }
}

/// An image the store knows.
#[derive(Clone, Debug, Serialize)]
pub struct StoredImage {
    pub id: i64,
    pub sha256: Digest,
    /// Absolute path of the bytes (in place, or the project's copy).
    pub path: PathBuf,
    pub copied: bool,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub bytes: u64,
}

impl StoredImage {
    /// The MIME type to serve it with.
    pub fn mime(&self) -> &'static str {
        match self.format.as_str() {
            "png" => "image/png",
            "gif" => "image/gif",
            "webp" => "image/webp",
            "bmp" => "image/bmp",
            "tiff" => "image/tiff",
            _ => "image/jpeg",
        }
    }
}

/// Reads the bytes of a stored image for serving or inference, trusting nothing about
/// the file that is there now: it must be a regular file reached without following a
/// symbolic link at its last component (so a dataset image replaced by a link to
/// `/etc/passwd`, `/dev/zero` or a FIFO is refused without reading or blocking), of the
/// size recorded at import, and its sha256 must still be the image's id.
pub fn read_checked(img: &StoredImage) -> Result<Vec<u8>, ImageError> {
    use sha2::Digest as _;
    use std::io::Read;
    let shown = || img.path.display().to_string();
    let file = open_no_follow(&img.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing(shown()),
        _ if is_symlink_error(&e) => ImageError::NotAFile(shown()),
        _ => ImageError::Unreadable { path: shown(), message: e.to_string() },
    })?;
    let meta = file.metadata().map_err(|e| ImageError::Unreadable { path: shown(), message: e.to_string() })?;
    if !meta.file_type().is_file() {
        return Err(ImageError::NotAFile(shown()));
    }
    if meta.len() != img.bytes {
        return Err(ImageError::Changed(shown()));
    }
    let mut bytes = Vec::with_capacity(img.bytes as usize);
    let mut hasher = sha2::Sha256::new();
    let mut reader = file.take(img.bytes + 1);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n =
            reader.read(&mut chunk).map_err(|e| ImageError::Unreadable { path: shown(), message: e.to_string() })?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        bytes.extend_from_slice(&chunk[..n]);
    }
    if bytes.len() as u64 != img.bytes || hasher.finalize().as_slice() != img.sha256.as_bytes() {
        return Err(ImageError::Changed(shown()));
    }
    Ok(bytes)
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just after).
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::other("symbolic link"));
    }
    std::fs::File::open(path)
}

#[cfg(unix)]
fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(not(unix))]
fn is_symlink_error(e: &std::io::Error) -> bool {
    e.to_string() == "symbolic link"
}

/// An image read and checked, not yet stored.
pub(crate) struct Probed {
    pub sha256: Digest,
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub bytes: u64,
    /// Where the bytes are: a file kept in place, or bytes that must be copied.
    pub origin: Origin,
}

pub(crate) enum Origin {
    File(PathBuf),
    Inline(Arc<[u8]>),
}

/// `..` and `.` folded away without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The file a path of a dataset names: absolute paths as they are, relative ones under
/// `root`, which they may not leave.
pub(crate) fn resolve(raw: &str, root: &Path) -> Result<PathBuf, ImageError> {
    let p = Path::new(raw);
    if p.is_absolute() {
        return Ok(normalize(p));
    }
    // A dataset named without a folder (`data.jsonl`) has the empty path as its parent,
    // which `absolute` refuses: it is the working directory.
    let root = if root.as_os_str().is_empty() { Path::new(".") } else { root };
    let root = normalize(&std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()));
    let joined = normalize(&root.join(p));
    if !joined.starts_with(&root) {
        return Err(ImageError::Escapes { path: raw.to_string(), root: root.display().to_string() });
    }
    Ok(joined)
}

/// Reads, hashes and checks one image source.
pub(crate) fn probe(src: &ImageSource, root: &Path, limits: ImageLimits) -> Result<Probed, ImageError> {
    match src {
        ImageSource::Url(u) => Err(ImageError::Url(u.clone())),
        ImageSource::Bytes(b) => {
            let (width, height, format) = check(b, "<inline image>", limits)?;
            Ok(Probed {
                sha256: Digest::of(b),
                width,
                height,
                format,
                bytes: b.len() as u64,
                origin: Origin::Inline(b.clone()),
            })
        }
        ImageSource::Path(raw) => {
            let path = resolve(raw, root)?;
            let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ImageError::Missing(path.display().to_string()),
                _ => ImageError::Unreadable { path: path.display().to_string(), message: e.to_string() },
            })?;
            let shown = path.display().to_string();
            let (width, height, format) = check(&bytes, &shown, limits)?;
            Ok(Probed {
                sha256: Digest::of(&bytes),
                width,
                height,
                format,
                bytes: bytes.len() as u64,
                origin: Origin::File(path),
            })
        }
    }
}

/// Format and size from the header, plus an end-marker check for truncation.
pub(crate) fn check(bytes: &[u8], shown: &str, limits: ImageLimits) -> Result<(u32, u32, &'static str), ImageError> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable { path: shown.into(), message: e.to_string() })?;
    let format = match reader.format() {
        Some(image::ImageFormat::Jpeg) => "jpeg",
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::WebP) => "webp",
        Some(image::ImageFormat::Gif) => "gif",
        Some(image::ImageFormat::Bmp) => "bmp",
        Some(image::ImageFormat::Tiff) => "tiff",
        _ => return Err(ImageError::NotAnImage(shown.into())),
    };
    if truncated(bytes, format) {
        return Err(ImageError::Truncated { path: shown.into(), format });
    }
    let (width, height) = reader.into_dimensions().map_err(|e| match e {
        image::ImageError::Limits(_) | image::ImageError::Decoding(_) | image::ImageError::Unsupported(_) => {
            ImageError::Unreadable { path: shown.into(), message: format!("cannot read the {format} header: {e}") }
        }
        other => ImageError::Unreadable { path: shown.into(), message: other.to_string() },
    })?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path: shown.into() });
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge { path: shown.into(), width, height, pixels, limit: limits.max_pixels });
    }
    Ok((width, height, format))
}

/// Whether a file lacks the end its format requires. Cheap: looks at the tail only.
fn truncated(b: &[u8], format: &str) -> bool {
    let tail = &b[b.len().saturating_sub(4096)..];
    match format {
        // EOI; encoders and cameras may pad or append data after it.
        "jpeg" => !tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        "png" => !tail.windows(4).any(|w| w == b"IEND"),
        "gif" => !b[b.len().saturating_sub(64)..].contains(&0x3B),
        "webp" => b.len() < 12 || (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize).saturating_add(8) > b.len(),
        "bmp" => b.len() < 6 || u32::from_le_bytes([b[2], b[3], b[4], b[5]]) as usize > b.len(),
        _ => false,
    }
}

/// The file name a copied image gets under `.mmloop/blobs/`.
pub(crate) fn blob_rel_path(sha: &Digest, format: &str) -> PathBuf {
    let hex = sha.to_hex();
    let ext = if format == "jpeg" { "jpg" } else { format };
    PathBuf::from("blobs").join(&hex[..2]).join(format!("{hex}.{ext}"))
}

/// Copies an image's bytes under `.mmloop/` atomically (a crash leaves no partial blob).
pub(crate) fn write_blob(dot: &Path, p: &Probed) -> std::io::Result<PathBuf> {
    let rel = blob_rel_path(&p.sha256, p.format);
    let dest = dot.join(&rel);
    if dest.exists() {
        return Ok(rel);
    }
    let dir = dest.parent().expect("blob paths have a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = crate::fs::temp_file_in(dir)?;
    match &p.origin {
        Origin::Inline(b) => std::io::Write::write_all(&mut tmp, b)?,
        Origin::File(src) => {
            let mut f = std::fs::File::open(src)?;
            std::io::copy(&mut f, &mut tmp)?;
        }
    }
    tmp.persist(&dest).map_err(|e| e.error)?;
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 10]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn reads_size_and_format_from_the_header() {
        assert_eq!(check(&png(7, 5), "x", ImageLimits::default()).unwrap(), (7, 5, "png"));
        assert_eq!(check(&jpeg(9, 4), "x", ImageLimits::default()).unwrap(), (9, 4, "jpeg"));
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let j = jpeg(64, 64);
        let err = check(&j[..j.len() / 2], "cut.jpg", ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageError::Truncated { format: "jpeg", .. }), "{err}");
        let p = png(16, 16);
        assert!(matches!(
            check(&p[..p.len() - 12], "cut.png", ImageLimits::default()),
            Err(ImageError::Truncated { .. })
        ));
        assert!(matches!(
            check(b"root:x:0:0:root:/root:/bin/bash\n", "passwd", ImageLimits::default()),
            Err(ImageError::NotAnImage(_))
        ));
    }

    #[test]
    fn refuses_decompression_bombs_from_the_header_alone() {
        // A PNG header claiming 100000×100000 pixels with almost no data behind it.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = check(&p, "bomb.png", ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 100_000, height: 100_000, .. }), "{err}");
    }

    fn stored(path: PathBuf, bytes: &[u8]) -> StoredImage {
        StoredImage {
            id: 1,
            sha256: Digest::of(bytes),
            path,
            copied: false,
            width: 1,
            height: 1,
            format: "png".into(),
            bytes: bytes.len() as u64,
        }
    }

    #[test]
    fn stored_images_are_read_only_when_unchanged_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let bytes = png(3, 3);
        std::fs::write(&p, &bytes).unwrap();
        let img = stored(p.clone(), &bytes);
        assert_eq!(read_checked(&img).unwrap(), bytes);

        // Same size, other content.
        let mut other = bytes.clone();
        other[20] ^= 1;
        std::fs::write(&p, &other).unwrap();
        assert!(matches!(read_checked(&img), Err(ImageError::Changed(_))));
        // Other size.
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(read_checked(&img), Err(ImageError::Changed(_))));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(read_checked(&img), Err(ImageError::Missing(_))));
    }

    #[cfg(unix)]
    #[test]
    fn links_devices_and_pipes_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = png(3, 3);
        let real = dir.path().join("real.png");
        std::fs::write(&real, &bytes).unwrap();
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(read_checked(&stored(link, &bytes)), Err(ImageError::NotAFile(_))));
        let passwd = dir.path().join("passwd.png");
        std::os::unix::fs::symlink("/etc/passwd", &passwd).unwrap();
        assert!(matches!(read_checked(&stored(passwd, &bytes)), Err(ImageError::NotAFile(_))));
        assert!(matches!(read_checked(&stored("/dev/zero".into(), &bytes)), Err(ImageError::NotAFile(_))));
        let fifo = dir.path().join("fifo.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_checked(&stored(fifo, &bytes)), Err(ImageError::NotAFile(_))));
    }

    #[test]
    fn relative_paths_stay_under_the_root() {
        let root = Path::new("/data/set");
        assert_eq!(resolve("imgs/a.jpg", root).unwrap(), PathBuf::from("/data/set/imgs/a.jpg"));
        assert_eq!(resolve("imgs/../b.jpg", root).unwrap(), PathBuf::from("/data/set/b.jpg"));
        assert!(matches!(resolve("../../etc/passwd", root), Err(ImageError::Escapes { .. })));
        assert!(matches!(resolve("a/../../x.jpg", root), Err(ImageError::Escapes { .. })));
        assert_eq!(resolve("/abs/c.png", root).unwrap(), PathBuf::from("/abs/c.png"));
        // A file named without its folder: paths under the working directory, stored absolute.
        let here = std::env::current_dir().unwrap();
        assert_eq!(resolve("imgs/a.jpg", Path::new("")).unwrap(), here.join("imgs/a.jpg"));
    }
}
