//! How dataset files spell images: paths, URLs, base64 and `data:` URIs, HF
//! `{bytes, path}` objects; and how writers spell them back.

use std::sync::Arc;

use base64::Engine as _;
use mmloop_core::ImageSource;
use serde_json::Value;

/// Reads one image reference from a JSON value.
pub(crate) fn parse(v: &Value) -> Result<ImageSource, String> {
    match v {
        Value::String(s) => parse_str(s),
        Value::Object(m) => {
            // HF `datasets` Image feature: {"bytes": ..., "path": ...}; ms-swift writes
            // the placeholder "<<<bytes>>>" for raw bytes it cannot serialize.
            let path = m.get("path").and_then(Value::as_str);
            match m.get("bytes") {
                Some(Value::String(b)) if b != "<<<bytes>>>" => {
                    decode_base64(b).map(ImageSource::Bytes).ok_or_else(|| "`bytes` is not valid base64".to_string())
                }
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_u64().filter(|&n| n < 256).map(|n| n as u8))
                    .collect::<Option<Vec<u8>>>()
                    .map(|b| ImageSource::Bytes(b.into()))
                    .ok_or_else(|| "`bytes` must be a byte list or base64".to_string()),
                other => match path {
                    Some(p) => parse_str(p),
                    None if other.and_then(Value::as_str) == Some("<<<bytes>>>") => Err(
                        "the image bytes were not saved (ms-swift's `<<<bytes>>>` placeholder) and there is no `path`"
                            .into(),
                    ),
                    None => Err("an image object needs `path` or `bytes`".into()),
                },
            }
        }
        other => Err(format!("an image must be a path string, found {}", crate::json::kind(other))),
    }
}

pub(crate) fn parse_str(s: &str) -> Result<ImageSource, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("the image path is empty".into());
    }
    if t.starts_with("http://") || t.starts_with("https://") {
        return Ok(ImageSource::Url(t.to_string()));
    }
    if let Some(rest) = t.strip_prefix("data:") {
        let (_, data) = rest.split_once(";base64,").ok_or("a data: URI must be base64")?;
        return decode_base64(data)
            .map(ImageSource::Bytes)
            .ok_or_else(|| "the data: URI is not valid base64".to_string());
    }
    // Raw base64 (ms-swift accepts it): long, no extension, decodes to a known image.
    if t.len() > 256
        && !t.contains('.')
        && let Some(b) = decode_base64(t)
        && looks_like_image(&b)
    {
        return Ok(ImageSource::Bytes(b));
    }
    if t.starts_with("file://") {
        return Ok(ImageSource::Path(t.trim_start_matches("file://").to_string()));
    }
    Ok(ImageSource::Path(s.to_string()))
}

fn decode_base64(s: &str) -> Option<Arc<[u8]>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok().map(Into::into)
}

fn looks_like_image(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
        || b.starts_with(b"\x89PNG")
        || b.starts_with(b"GIF8")
        || (b.len() > 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP")
        || b.starts_with(b"BM")
}

/// How a writer spells an image in JSON: paths and URLs as strings, bytes as a data URI.
pub(crate) fn to_json(src: &ImageSource) -> Value {
    Value::String(to_string(src))
}

pub(crate) fn to_string(src: &ImageSource) -> String {
    match src {
        ImageSource::Path(p) => p.clone(),
        ImageSource::Url(u) => u.clone(),
        ImageSource::Bytes(b) => {
            format!("data:{};base64,{}", mime(b), base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

fn mime(b: &[u8]) -> &'static str {
    if b.starts_with(b"\x89PNG") {
        "image/png"
    } else if b.starts_with(b"GIF8") {
        "image/gif"
    } else if b.len() > 12 && &b[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(parse_str("a/b.jpg").unwrap(), ImageSource::Path("a/b.jpg".into()));
        assert!(matches!(parse_str("https://x/y.png").unwrap(), ImageSource::Url(_)));
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let uri = to_string(&ImageSource::Bytes(png.clone().into()));
        assert!(uri.starts_with("data:image/png;base64,"));
        assert_eq!(parse_str(&uri).unwrap(), ImageSource::Bytes(png.into()));
        let hf = serde_json::json!({"bytes": null, "path": "x.jpg"});
        assert_eq!(parse(&hf).unwrap(), ImageSource::Path("x.jpg".into()));
        assert!(parse(&serde_json::json!(3)).is_err());
    }
}
