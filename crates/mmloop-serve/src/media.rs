//! An `image_url` part's bytes: a `data:` URI (base64), an `http(s)` URL fetched with a size
//! and time limit, or a `file://` path under `--allowed-local-media-path` only.

use std::path::Path;

use base64::Engine as _;
use futures::StreamExt;
use mmloop_engine::InputImage;

use crate::Server;
use crate::error::ApiError;

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message, Some("messages"))
}

/// The image an `image_url` names; `n` is its place in the request (for messages).
pub async fn fetch(s: &Server, url: &str, n: usize) -> Result<InputImage, ApiError> {
    let limit = s.config.max_image_bytes;
    let name = format!("image {n}");
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or_else(|| bad(format!("{name}: a data: URL without a comma")))?;
        if !meta.ends_with(";base64") {
            return Err(bad(format!("{name}: only base64 data: URLs are supported")));
        }
        if data.len() / 4 * 3 > limit {
            return Err(too_large(&name, limit));
        }
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("{name}: invalid base64 in the data: URL: {e}")))?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        fetch_http(s, url, &name, limit).await?
    } else if let Some(path) = url.strip_prefix("file://") {
        read_local(s, Path::new(path), &name, limit).await?
    } else {
        return Err(bad(format!("{name}: unsupported image URL (use data:, http(s):// or file://)")));
    };
    let image = InputImage::new(name.clone(), bytes);
    if image.mime().is_none() {
        return Err(bad(format!("{name}: not an image format mmloop reads (PNG, JPEG, GIF, WebP, BMP, TIFF)")));
    }
    Ok(image)
}

fn too_large(name: &str, limit: usize) -> ApiError {
    bad(format!("{name} is larger than {} MiB", limit >> 20))
}

async fn fetch_http(s: &Server, url: &str, name: &str, limit: usize) -> Result<Vec<u8>, ApiError> {
    let domains = &s.config.allowed_media_domains;
    if !domains.is_empty() {
        let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string));
        if !host.as_ref().is_some_and(|h| domains.iter().any(|d| d == h)) {
            return Err(bad(format!("{name}: {url} is not on an allowed media domain (--allowed-media-domains)")));
        }
    }
    let resp = s.http.get(url).send().await.map_err(|e| bad(format!("{name}: cannot fetch {url}: {e}")))?;
    if resp.status().is_redirection() {
        return Err(bad(format!("{name}: {url} redirects off the allowed media domains")));
    }
    if !resp.status().is_success() {
        return Err(bad(format!("{name}: fetching {url} answered {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Err(too_large(name, limit));
    }
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| bad(format!("{name}: reading {url}: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(name, limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn read_local(s: &Server, path: &Path, name: &str, limit: usize) -> Result<Vec<u8>, ApiError> {
    let Some(root) = &s.config.allowed_local_media_path else {
        return Err(bad(format!(
            "{name}: file:// URLs are refused unless the server runs with --allowed-local-media-path"
        )));
    };
    let refused =
        || bad(format!("{name}: {} is not a readable image under the allowed local media path", path.display()));
    // Resolve links and `..` before the check, then read what was checked.
    let real = tokio::fs::canonicalize(path).await.map_err(|_| refused())?;
    let root = tokio::fs::canonicalize(root).await.map_err(|_| refused())?;
    if !real.starts_with(&root) {
        return Err(refused());
    }
    let meta = tokio::fs::metadata(&real).await.map_err(|_| refused())?;
    if !meta.is_file() {
        return Err(refused());
    }
    if meta.len() as usize > limit {
        return Err(too_large(name, limit));
    }
    tokio::fs::read(&real).await.map_err(|_| refused())
}
