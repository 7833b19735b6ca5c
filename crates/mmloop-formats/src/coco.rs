//! COCO captions (cocodataset.org "format-data"; cocodataset/cocoapi `coco.py`): one JSON
//! object with `images` and `annotations` (`{id, image_id, caption}`), image files named
//! by `file_name` relative to the split folder. One record per caption; images without a
//! caption (test splits) become unanswered records. Also reads Karpathy's
//! `dataset_coco.json` (`images[{filepath, filename, split, sentences[{raw}]}]`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use mmloop_core::{Answer, Digest, ImageSource, Location, Record, Task};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};
use crate::json::{self, Fields, LineCounter};
use crate::output::AtomicFile;
use crate::{ReadOptions, Sink, WriteSummary, image_ref};

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow, default)]
    images: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    annotations: Option<Vec<&'a RawValue>>,
}

struct Image {
    loc: Location,
    id: String,
    file_name: String,
    meta: Map<String, Value>,
    split: Option<String>,
    captioned: bool,
}

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let buf = json::read_all(path)?;
    let file = Arc::new(path.to_path_buf());
    let doc: Doc = serde_json::from_slice(&buf).map_err(|e| {
        json::document_error(&file, &buf, &e, "a COCO captions object ({\"images\": [...], \"annotations\": [...]})")
    })?;
    let mut lines = LineCounter::new(&buf);
    let prompt = opts.caption_prompt();
    // Karpathy's file has no `annotations`; neither do COCO test splits
    // (image_info_test*.json), whose images simply have no captions yet.
    let karpathy = doc.annotations.is_none()
        && doc.images.first().is_some_and(|raw| {
            serde_json::from_str::<Map<String, Value>>(raw.get())
                .is_ok_and(|m| m.contains_key("sentences") || m.contains_key("filename"))
        });
    if karpathy {
        return read_karpathy(&file, &doc.images, &mut lines, &prompt, sink);
    }
    let annotations = doc.annotations.unwrap_or_default();

    let mut images: HashMap<String, Image> = HashMap::with_capacity(doc.images.len());
    let mut order = Vec::with_capacity(doc.images.len());
    for (i, raw) in doc.images.iter().enumerate() {
        let loc = Location::at(&file, lines.line_of(raw.get()), i as u64);
        let parsed = json::parse_object(&loc, raw.get()).and_then(|m| {
            let mut f = Fields::new(&loc, m);
            let id = f.opt_id("id")?.ok_or_else(|| f.err("image entry without `id`"))?;
            let file_name = match f.opt_str("file_name")? {
                Some(n) => n,
                None => format!(
                    "{:012}.jpg",
                    id.parse::<u64>().map_err(|_| f.err("image without `file_name` and a non-numeric `id`"))?
                ),
            };
            // Size comes from the image itself; keep the rest for the round trip.
            f.take("width");
            f.take("height");
            // Not COCO's own: mmloop writes it so that splits survive a round trip.
            let split = f.opt_str("split")?;
            let mut meta = f.rest();
            meta.insert("id".into(), json::id_value(&id));
            Ok(Image { loc: loc.clone(), id, file_name, meta, split, captioned: false })
        });
        match parsed {
            Ok(img) => {
                if images.contains_key(&img.id) {
                    if sink(Err(RecordError::new(loc, format!("duplicate image id {}", img.id)))).is_break() {
                        return Ok(());
                    }
                    continue;
                }
                order.push(img.id.clone());
                images.insert(img.id.clone(), img);
            }
            Err(e) => {
                if sink(Err(e)).is_break() {
                    return Ok(());
                }
            }
        }
    }

    for (i, raw) in annotations.iter().enumerate() {
        let loc = Location::at(&file, lines.line_of(raw.get()), i as u64);
        let rec = json::parse_object(&loc, raw.get()).and_then(|m| {
            let mut f = Fields::new(&loc, m);
            let id = f.opt_id("id")?;
            let image_id = f.opt_id("image_id")?.ok_or_else(|| f.err("annotation without `image_id`").id(id.clone()))?;
            let caption = match f.take("caption") {
                Some(Value::String(c)) => c,
                Some(_) => return Err(f.err("`caption` must be a string").id(id)),
                None => {
                    return Err(f
                        .err("annotation without `caption`")
                        .id(id)
                        .hint("this looks like a detection file (instances_*.json); mmloop reads caption files (captions_*.json)"));
                }
            };
            let img = images.get_mut(&image_id).ok_or_else(|| {
                RecordError::new(loc.clone(), format!("`image_id` {image_id} is not in `images`"))
                    .id(id.clone())
                    .hint("the annotation names an image the file does not list; is the file truncated or from another split?")
            })?;
            img.captioned = true;
            let mut r = Record::new(Task::Caption, prompt.clone(), loc.clone());
            r.id = id;
            r.images = vec![ImageSource::Path(img.file_name.clone())];
            r.answer = Some(Answer::text(caption));
            r.split = img.split.clone();
            r.meta = f.rest();
            r.meta.insert("image".into(), Value::Object(img.meta.clone()));
            Ok(r)
        });
        if sink(rec).is_break() {
            return Ok(());
        }
    }
    for id in order {
        let img = &images[&id];
        if !img.captioned {
            let mut r = Record::new(Task::Caption, prompt.clone(), img.loc.clone());
            r.images = vec![ImageSource::Path(img.file_name.clone())];
            r.meta.insert("image".into(), Value::Object(img.meta.clone()));
            r.split = img.split.clone();
            if sink(Ok(r)).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn read_karpathy(
    file: &Arc<std::path::PathBuf>,
    images: &[&RawValue],
    lines: &mut LineCounter,
    prompt: &str,
    sink: &mut Sink,
) -> Result<(), FormatError> {
    for (i, raw) in images.iter().enumerate() {
        let loc = Location::at(file, lines.line_of(raw.get()), i as u64);
        let records = json::parse_object(&loc, raw.get()).and_then(|m| {
            let mut f = Fields::new(&loc, m);
            let filename = f.str("filename")?;
            let path = match f.opt_str("filepath")? {
                Some(dir) => format!("{dir}/{filename}"),
                None => filename,
            };
            let split = f.opt_str("split")?;
            let sentences = f.opt_array("sentences")?.ok_or_else(|| {
                f.err("missing `annotations` (COCO) or `sentences` (Karpathy split)")
                    .hint("is this a COCO captions file? instance/keypoint files are not caption datasets")
            })?;
            let image_meta = f.rest();
            let mut out = Vec::with_capacity(sentences.len());
            for (j, s) in sentences.into_iter().enumerate() {
                let Value::Object(s) = s else {
                    return Err(RecordError::new(loc.clone(), format!("`sentences[{j}]` must be an object")));
                };
                let mut sf = Fields::new(&loc, s);
                let raw_text = sf.str("raw")?;
                let id = sf.opt_id("sentid")?;
                let mut r = Record::new(Task::Caption, prompt, loc.clone());
                r.id = id;
                r.images = vec![ImageSource::Path(path.clone())];
                r.answer = Some(Answer::text(raw_text));
                r.split = split.clone();
                r.meta = sf.rest();
                r.meta.insert("image".into(), Value::Object(image_meta.clone()));
                out.push(r);
            }
            Ok(out)
        });
        match records {
            Ok(rs) => {
                for r in rs {
                    if sink(Ok(r)).is_break() {
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                if sink(Err(e)).is_break() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Assigns COCO integer ids to images: the id the image came with when it is free,
/// otherwise the next unused one.
pub(crate) struct ImageIds {
    by_sha: HashMap<Digest, i64>,
    by_key: HashMap<String, i64>,
    used: std::collections::HashSet<i64>,
    next: i64,
}

impl ImageIds {
    pub(crate) fn new() -> Self {
        ImageIds { by_sha: HashMap::new(), by_key: HashMap::new(), used: Default::default(), next: 1 }
    }

    /// The id for `r`'s first image and whether it is new.
    pub(crate) fn get(&mut self, r: &Record, wanted: Option<i64>) -> (i64, bool) {
        let key = r.image_info.first().map(|i| i.sha256);
        let path_key = r.images.first().map(image_ref::to_string).unwrap_or_default();
        if let Some(k) = key
            && let Some(&id) = self.by_sha.get(&k)
        {
            return (id, false);
        }
        if key.is_none()
            && let Some(&id) = self.by_key.get(&path_key)
        {
            return (id, false);
        }
        let id = match wanted {
            Some(w) if !self.used.contains(&w) => w,
            _ => {
                while self.used.contains(&self.next) {
                    self.next += 1;
                }
                self.next
            }
        };
        self.used.insert(id);
        match key {
            Some(k) => self.by_sha.insert(k, id),
            None => self.by_key.insert(path_key, id),
        };
        (id, true)
    }
}

/// A record's `meta.image` object (COCO image fields kept from import).
pub(crate) fn image_meta(r: &Record) -> Map<String, Value> {
    match r.meta.get("image") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
}

pub(crate) fn write(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let mut ids = ImageIds::new();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut used_ann = std::collections::HashSet::new();
    let mut n = 0u64;
    for r in records {
        n += 1;
        let mut img_meta = image_meta(&r);
        let wanted = img_meta.get("id").and_then(Value::as_i64);
        let (image_id, new) = ids.get(&r, wanted);
        if new {
            img_meta.insert("id".into(), Value::from(image_id));
            img_meta.insert(
                "file_name".into(),
                Value::from(r.images.first().map(image_ref::to_string).unwrap_or_default()),
            );
            if let Some(info) = r.image_info.first() {
                img_meta.insert("width".into(), Value::from(info.width));
                img_meta.insert("height".into(), Value::from(info.height));
            }
            if let Some(split) = &r.split {
                img_meta.insert("split".into(), Value::from(split.clone()));
            }
            images.push(Value::Object(img_meta));
        }
        let Some(caption) = r.answer.as_ref().and_then(Answer::best) else { continue };
        let mut ann = r.meta.clone();
        ann.shift_remove("image");
        ann.insert("image_id".into(), Value::from(image_id));
        ann.insert("caption".into(), Value::from(caption));
        if let Some(id) = r.id.as_deref().and_then(|i| i.parse::<i64>().ok())
            && used_ann.insert(id)
        {
            ann.insert("id".into(), Value::from(id));
        }
        annotations.push(Value::Object(ann));
    }
    // Captions whose id was missing or taken get fresh ids after all others are known.
    let mut next = 1i64;
    for a in annotations.iter_mut() {
        if let Value::Object(m) = a
            && !m.contains_key("id")
        {
            while used_ann.contains(&next) {
                next += 1;
            }
            used_ann.insert(next);
            m.insert("id".into(), Value::from(next));
        }
    }
    let doc = serde_json::json!({
        "info": {"description": "exported by mmloop"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    });
    let mut file = AtomicFile::create(out)?;
    file.json(&doc)?;
    let path = file.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}
