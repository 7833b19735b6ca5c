//! Versions: content-addressed manifests of (item, label, split).
//!
//! A version's id is the hash of its rows' content digests in sorted order, so the same
//! content gets the same id however it was inserted. Its manifest lists (item id, label
//! id, split) in item order, cut into pages at content-defined boundaries (an item id
//! whose hash has its low bits zero ends a page): unchanged stretches of the project give
//! byte-identical pages, stored once and skipped by diff without decoding.

use std::collections::{BTreeMap, HashSet};

use mmloop_core::{Digest, ItemContent, LabelContent, LabelStatus, Task, row_digest, version_digest};
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::AuditProblem;
use crate::labels::{LabelView, label_by_id, parse_answers};
use crate::sql::{Cell, Conn, Row as SqlRow};
use crate::{Store, StoreError};

/// Pages end after an item whose mixed id has these low bits zero (~256 entries).
const BOUNDARY_MASK: u64 = 0xFF;
const MAX_PAGE: usize = 2048;

/// One committed version.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    pub seq: i64,
    pub id: Digest,
    pub parent: Option<i64>,
    pub message: String,
    pub author: String,
    pub at: String,
    pub items: u64,
    pub stats: Value,
}

impl VersionInfo {
    pub fn name(&self) -> String {
        format!("v{}", self.seq)
    }
}

/// What `commit` did.
#[derive(Clone, Debug, Serialize)]
pub struct CommitOutcome {
    pub version: VersionInfo,
    /// Pages written new (the rest were shared with earlier versions).
    pub new_pages: u64,
    pub pages: u64,
}

/// A manifest row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub item: i64,
    pub label: Option<i64>,
    pub split: Option<u32>,
}

/// A decoded manifest: entries plus the split names they index.
pub(crate) struct Manifest {
    pub splits: Vec<String>,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn split_of(&self, e: &Entry) -> Option<&str> {
        e.split.map(|i| self.splits[i as usize].as_str())
    }
}

fn mix(x: u64) -> u64 {
    // splitmix64: spreads consecutive ids evenly over the boundary test.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u64, StoreError> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos).ok_or_else(|| StoreError::Internal("truncated version page".into()))?;
        *pos += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err(StoreError::Internal("bad varint in version page".into()));
        }
    }
}

/// Page layout: split names used, then entries as (item id delta, label id + 1, split
/// index + 1), all varints.
fn encode_page(entries: &[(i64, Option<i64>, Option<&str>)]) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    for (_, _, s) in entries {
        if let Some(s) = s
            && !names.contains(s)
        {
            names.push(s);
        }
    }
    let mut out = Vec::with_capacity(entries.len() * 6 + 16);
    put_varint(&mut out, names.len() as u64);
    for n in &names {
        put_varint(&mut out, n.len() as u64);
        out.extend_from_slice(n.as_bytes());
    }
    put_varint(&mut out, entries.len() as u64);
    let mut prev = 0i64;
    for (item, label, split) in entries {
        put_varint(&mut out, (item - prev) as u64);
        prev = *item;
        put_varint(&mut out, label.map_or(0, |l| l as u64 + 1));
        put_varint(&mut out, split.map_or(0, |s| names.iter().position(|n| *n == s).unwrap_or(0) as u64 + 1));
    }
    out
}

fn decode_page(b: &[u8], splits: &mut Vec<String>, entries: &mut Vec<Entry>) -> Result<(), StoreError> {
    let mut pos = 0;
    let n_names = get_varint(b, &mut pos)? as usize;
    let mut local = Vec::with_capacity(n_names);
    for _ in 0..n_names {
        let len = get_varint(b, &mut pos)? as usize;
        let name =
            std::str::from_utf8(b.get(pos..pos + len).ok_or_else(|| StoreError::Internal("truncated page".into()))?)
                .map_err(|_| StoreError::Internal("bad split name in page".into()))?;
        pos += len;
        let idx = match splits.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                splits.push(name.to_string());
                splits.len() - 1
            }
        };
        local.push(idx as u32);
    }
    let n = get_varint(b, &mut pos)? as usize;
    let mut prev = 0i64;
    for _ in 0..n {
        prev += get_varint(b, &mut pos)? as i64;
        let label = get_varint(b, &mut pos)?;
        let split = get_varint(b, &mut pos)?;
        entries.push(Entry {
            item: prev,
            label: (label > 0).then(|| label as i64 - 1),
            split: (split > 0).then(|| local[split as usize - 1]),
        });
    }
    Ok(())
}

fn page_hashes(pages: &[u8]) -> impl Iterator<Item = &[u8]> {
    pages.chunks_exact(32)
}

pub(crate) fn load_manifest<'c>(conn: impl Into<Conn<'c>>, pages: &[u8]) -> Result<Manifest, StoreError> {
    let conn = conn.into();
    let mut m = Manifest { splits: Vec::new(), entries: Vec::new() };
    let hashes: Vec<&[u8]> = page_hashes(pages).collect();
    let data: std::collections::HashMap<Vec<u8>, Vec<u8>> = conn
        .query_in("SELECT hash, data FROM pages WHERE", "hash", &hashes, "", |r| Ok((r.get(0)?, r.get(1)?)))?
        .into_iter()
        .collect();
    for h in hashes {
        // A page two versions share is listed once per version; each listing decodes it.
        let page =
            data.get(h).ok_or_else(|| StoreError::Internal(format!("manifest page {} is missing", hex::encode(h))))?;
        decode_page(page, &mut m.splits, &mut m.entries)?;
    }
    Ok(m)
}

fn row_version(r: &SqlRow) -> Result<(VersionInfo, Vec<u8>), StoreError> {
    let id: Vec<u8> = r.get(1)?;
    let stats: String = r.get(7)?;
    Ok((
        VersionInfo {
            seq: r.get(0)?,
            id: Digest::from_slice(&id).unwrap_or_default(),
            parent: r.get(2)?,
            message: r.get(3)?,
            author: r.get(4)?,
            at: r.get(5)?,
            items: r.get::<i64>(6)? as u64,
            stats: serde_json::from_str(&stats).unwrap_or(Value::Null),
        },
        r.get(8)?,
    ))
}

const VERSION_COLS: &str = "seq, id, parent, message, author, at, items, stats, pages";

/// Finds a version by `v3`, `3`, `HEAD`, `HEAD~2`, or a prefix of its id.
pub(crate) fn resolve<'c>(conn: impl Into<Conn<'c>>, spec: &str) -> Result<(VersionInfo, Vec<u8>), StoreError> {
    let conn = conn.into();
    let unknown = || StoreError::UnknownVersion(spec.to_string());
    let by_seq = |seq: i64| -> Result<(VersionInfo, Vec<u8>), StoreError> {
        conn.optional(&format!("SELECT {VERSION_COLS} FROM versions WHERE seq = ?1"), &[&seq], row_version)?
            .ok_or_else(unknown)
    };
    let head: Option<i64> = conn.one("SELECT MAX(seq) FROM versions", &[], |r| r.get(0))?;
    let s = spec.trim();
    let upper = s.to_ascii_uppercase();
    if upper == "HEAD" || upper == "LATEST" {
        return by_seq(head.ok_or(StoreError::NoVersions)?);
    }
    if let Some(back) = upper.strip_prefix("HEAD~") {
        let n: i64 = back.parse().map_err(|_| unknown())?;
        return by_seq(head.ok_or(StoreError::NoVersions)? - n);
    }
    let digits = s.strip_prefix('v').or_else(|| s.strip_prefix('V')).unwrap_or(s);
    if !digits.is_empty() && digits.len() < 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return by_seq(digits.parse().map_err(|_| unknown())?);
    }
    if s.len() >= 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = s.to_ascii_lowercase();
        let found: Vec<(VersionInfo, Vec<u8>)> = conn
            .query(&format!("SELECT {VERSION_COLS} FROM versions ORDER BY seq DESC"), &[], row_version)?
            .into_iter()
            .filter(|(v, _)| v.id.to_hex().starts_with(&prefix))
            .collect();
        // Several versions may share an id (same content); the newest names it.
        return found.into_iter().next().ok_or_else(unknown);
    }
    Err(unknown())
}

/// The working state's manifest rows with their content digests.
/// Manifest rows before pagination: (item id, label id, split).
type Row = (i64, Option<i64>, Option<String>);

fn working_rows(conn: Conn) -> Result<(Vec<Row>, Vec<Digest>, Value), StoreError> {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_split: BTreeMap<String, u64> = BTreeMap::new();
    let sql = "SELECT i.id, i.content, i.split, i.label_id, l.content, l.status
               FROM items i LEFT JOIN labels l ON l.id = i.label_id ORDER BY i.id";
    conn.each(sql, &[], |r| {
        let item: i64 = r.get(0)?;
        let content: Vec<u8> = r.get(1)?;
        let split: Option<String> = r.get(2)?;
        let label: Option<i64> = r.get(3)?;
        let label_content: Option<Vec<u8>> = r.get(4)?;
        let status: Option<String> = r.get(5)?;
        let item_d =
            Digest::from_slice(&content).ok_or_else(|| StoreError::Internal(format!("item {item}: bad digest")))?;
        let label_d = label_content.as_deref().and_then(Digest::from_slice);
        digests.push(row_digest(&item_d, label_d.as_ref(), split.as_deref()));
        *by_status.entry(status.unwrap_or_else(|| LabelStatus::Pending.to_string())).or_default() += 1;
        *by_split.entry(split.clone().unwrap_or_else(|| "-".into())).or_default() += 1;
        entries.push((item, label, split));
        Ok(())
    })?;
    Ok((entries, digests, json!({"status": by_status, "split": by_split})))
}

/// How many problems of one kind `verify_content` lists before it only counts.
const LISTED: usize = 50;

/// Collects problems of one kind, listing the first `LISTED` and counting the rest.
struct Found<'a> {
    what: &'static str,
    listed: usize,
    more: u64,
    out: &'a mut Vec<AuditProblem>,
}

impl Found<'_> {
    fn push(&mut self, p: AuditProblem) {
        if self.listed < LISTED {
            self.listed += 1;
            self.out.push(p);
        } else {
            self.more += 1;
        }
    }

    fn finish(self) {
        if self.more > 0 {
            self.out.push(AuditProblem::More { what: self.what.into(), count: self.more });
        }
    }
}

/// Recomputes every item's and label's content digest from the stored fields, every
/// version page's hash, and every version's id from its manifest: a row edited in the
/// database (an answer rewritten with SQL, say) no longer matches the digest recorded when
/// it was written, and a version whose rows changed no longer matches its id.
pub(crate) fn verify_content<'c>(conn: impl Into<Conn<'c>>) -> Result<Vec<AuditProblem>, StoreError> {
    let conn = conn.into();
    let mut problems = Vec::new();
    // Item digests, from the fields and the images' sha256 in position order: one row per
    // (item, image), an item's rows together.
    let mut item_digests: std::collections::HashMap<i64, Digest> = std::collections::HashMap::new();
    {
        let mut found = Found { what: "items changed", listed: 0, more: 0, out: &mut problems };
        struct Fields {
            id: i64,
            task: String,
            source_id: Option<String>,
            question: String,
            context: Option<String>,
            turn: i64,
            tags: Option<String>,
            meta: Option<String>,
            stored: Vec<u8>,
            shas: Vec<Digest>,
        }
        let mut check = |f: Fields| {
            let tags: Vec<String> = f.tags.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
            let digest = ItemContent {
                task: f.task.parse().unwrap_or(Task::Vqa),
                source_id: f.source_id.as_deref(),
                question: &f.question,
                context_json: f.context.as_deref(),
                turn: f.turn as u32,
                images: &f.shas,
                tags: &tags,
                meta_json: f.meta.as_deref(),
            }
            .digest();
            if digest.as_bytes().as_slice() != f.stored.as_slice() || f.task.parse::<Task>().is_err() {
                found.push(AuditProblem::ItemChanged { item: f.id });
            }
            item_digests.insert(f.id, digest);
        };
        let mut current: Option<Fields> = None;
        conn.each(
            "SELECT i.id, i.task, i.source_id, i.question, i.context, i.turn, i.tags, i.meta, i.content, im.sha256
             FROM items i LEFT JOIN item_images ii ON ii.item_id = i.id LEFT JOIN images im ON im.id = ii.image_id
             ORDER BY i.id, ii.pos",
            &[],
            |r| {
                let id: i64 = r.get(0)?;
                if current.as_ref().is_none_or(|f| f.id != id) {
                    if let Some(done) = current.take() {
                        check(done);
                    }
                    current = Some(Fields {
                        id,
                        task: r.get(1)?,
                        source_id: r.get(2)?,
                        question: r.get(3)?,
                        context: r.get(4)?,
                        turn: r.get(5)?,
                        tags: r.get(6)?,
                        meta: r.get(7)?,
                        stored: r.get(8)?,
                        shas: Vec::new(),
                    });
                }
                if let (Some(f), Some(sha)) = (current.as_mut(), r.get::<Option<Vec<u8>>>(9)?) {
                    f.shas.push(Digest::from_slice(&sha).unwrap_or_default());
                }
                Ok(())
            },
        )?;
        if let Some(done) = current.take() {
            check(done);
        }
        found.finish();
    }
    // Label digests, from status and answers.
    let mut label_digests: std::collections::HashMap<i64, Digest> = std::collections::HashMap::new();
    {
        let mut found = Found { what: "labels changed", listed: 0, more: 0, out: &mut problems };
        conn.each("SELECT id, item_id, status, answer, answers, content FROM labels ORDER BY id", &[], |r| {
            let id: i64 = r.get(0)?;
            let item: i64 = r.get(1)?;
            let status: String = r.get(2)?;
            let answer = parse_answers(r.get(3)?, r.get(4)?);
            let stored: Vec<u8> = r.get(5)?;
            let parsed = status.parse::<LabelStatus>().ok();
            let digest = LabelContent { status: parsed.unwrap_or(LabelStatus::Pending), answer: &answer }.digest();
            if parsed.is_none() || digest.as_bytes().as_slice() != stored.as_slice() {
                found.push(AuditProblem::LabelChanged { label: id, item });
            }
            label_digests.insert(id, digest);
            Ok(())
        })?;
        found.finish();
    }
    // Versions: pages intact, and the id recomputed from the recomputed row digests.
    let mut found = Found { what: "versions changed", listed: 0, more: 0, out: &mut problems };
    let versions: Vec<(i64, Vec<u8>, Vec<u8>)> =
        conn.query("SELECT seq, id, pages FROM versions ORDER BY seq", &[], |v| Ok((v.get(0)?, v.get(1)?, v.get(2)?)))?;
    for (seq, id, pages) in versions {
        let mut m = Manifest { splits: Vec::new(), entries: Vec::new() };
        let mut why = None;
        for h in page_hashes(&pages) {
            let data: Option<Vec<u8>> = conn.optional("SELECT data FROM pages WHERE hash = ?1", &[&h], |r| r.get(0))?;
            match data {
                None => why = Some("a manifest page is missing".to_string()),
                Some(d) if Digest::of(&d).as_bytes().as_slice() != h => {
                    why = Some("a manifest page was edited".to_string())
                }
                Some(d) => {
                    if decode_page(&d, &mut m.splits, &mut m.entries).is_err() {
                        why = Some("a manifest page cannot be read".to_string());
                    }
                }
            }
            if why.is_some() {
                break;
            }
        }
        if why.is_none() {
            let mut digests = Vec::with_capacity(m.entries.len());
            for e in &m.entries {
                let Some(item) = item_digests.get(&e.item) else {
                    why = Some(format!("item {} is gone", e.item));
                    break;
                };
                let label = match e.label {
                    Some(l) => match label_digests.get(&l) {
                        Some(d) => Some(d),
                        None => {
                            why = Some(format!("label {l} of item {} is gone", e.item));
                            break;
                        }
                    },
                    None => None,
                };
                digests.push(row_digest(item, label, m.split_of(e)));
            }
            if why.is_none() && version_digest(&mut digests).as_bytes().as_slice() != id.as_slice() {
                why = Some("its items, labels or splits no longer hash to its id".to_string());
            }
        }
        if let Some(why) = why {
            found.push(AuditProblem::VersionChanged { version: seq, why });
        }
    }
    found.finish();
    Ok(problems)
}

/// Splits manifest rows into pages at content-defined boundaries.
fn paginate(entries: &[Row]) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut cur: Vec<(i64, Option<i64>, Option<&str>)> = Vec::new();
    for (item, label, split) in entries {
        cur.push((*item, *label, split.as_deref()));
        if mix(*item as u64) & BOUNDARY_MASK == 0 || cur.len() >= MAX_PAGE {
            pages.push(encode_page(&cur));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        pages.push(encode_page(&cur));
    }
    pages
}

/// How an item differs between two versions.
#[derive(Clone, Debug, Serialize)]
pub struct DiffEntry {
    pub item: i64,
    pub kind: DiffKind,
    /// Filled for the first entries only (see `Store::diff`).
    pub question: Option<String>,
    pub before: Option<LabelView>,
    pub after: Option<LabelView>,
    pub split_before: Option<String>,
    pub split_after: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    Added,
    Removed,
    Changed,
}

/// Stores the pages not stored yet (versions share most of theirs): one statement finds the
/// stored ones, one `COPY` writes the rest, instead of a round trip per page (4,000 at a
/// million items). Runs under the write lock, where no other commit adds pages meanwhile.
fn store_pages(conn: Conn, pages: Vec<Vec<u8>>, hashes: Vec<Vec<u8>>) -> Result<u64, StoreError> {
    let stored: HashSet<Vec<u8>> =
        conn.query_in("SELECT hash FROM pages WHERE", "hash", &hashes, "", |r| r.get(0))?.into_iter().collect();
    let mut fresh = HashSet::new();
    let rows: Vec<Vec<Cell>> = pages
        .into_iter()
        .zip(hashes)
        .filter(|(_, h)| !stored.contains(h) && fresh.insert(h.clone()))
        .map(|(p, h)| vec![Cell::Blob(h), Cell::Blob(p)])
        .collect();
    if !rows.is_empty() {
        conn.copy_in("pages", &["hash", "data"], &rows)?;
    }
    Ok(rows.len() as u64)
}

/// The difference between two versions.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub from: VersionInfo,
    pub to: VersionInfo,
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub entries: Vec<DiffEntry>,
}

impl Store {
    /// Records the current state as a new version; refuses when nothing changed since the
    /// latest version.
    pub async fn commit(&self, message: &str, author: &str) -> Result<CommitOutcome, StoreError> {
        let (message, author) = (message.to_string(), author.to_string());
        let out = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let (entries, mut digests, stats) = working_rows(conn)?;
                let id = version_digest(&mut digests);
                let head: Option<(i64, Vec<u8>)> = conn.optional(
                    "SELECT seq, id FROM versions ORDER BY seq DESC LIMIT 1",
                    &[],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if let Some((seq, hid)) = &head
                    && hid.as_slice() == id.as_bytes()
                {
                    return Err(StoreError::NothingToCommit(format!("v{seq}")));
                }
                let pages = paginate(&entries);
                let hashes: Vec<Vec<u8>> = pages.iter().map(|p| Digest::of(p).as_bytes().to_vec()).collect();
                let list = hashes.concat();
                let page_count = pages.len() as u64;
                let new_pages = store_pages(conn, pages, hashes)?;
                let seq: i64 = conn.one("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions", &[], |r| r.get(0))?;
                let after = json!({"version": format!("v{seq}"), "id": id.to_hex(), "items": entries.len(), "message": message});
                let audit_seq = crate::audit::append(conn, &author, "commit", &format!("version:v{seq}"), None, Some(&after))?;
                let (_, audit_hash) = crate::audit::head_digest(conn)?;
                let at = crate::now();
                conn.execute(
                    "INSERT INTO versions (seq, id, parent, message, author, at, items, pages, stats, audit_seq, audit_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    &[
                        &seq,
                        &id.as_bytes().as_slice(),
                        &head.as_ref().map(|h| h.0),
                        &message,
                        &author,
                        &at,
                        &(entries.len() as i64),
                        &list,
                        &stats.to_string(),
                        &audit_seq,
                        &audit_hash.as_bytes().as_slice(),
                    ],
                )?;
                tx.commit()?;
                Ok(CommitOutcome {
                    version: VersionInfo {
                        seq,
                        id,
                        parent: head.map(|h| h.0),
                        message,
                        author,
                        at,
                        items: entries.len() as u64,
                        stats,
                    },
                    new_pages,
                    pages: page_count,
                })
            })
            .await?;
        self.sync_audit_head().await?;
        Ok(out)
    }

    /// Versions, newest first.
    pub async fn log(&self) -> Result<Vec<VersionInfo>, StoreError> {
        self.db()
            .read(|c| {
                c.query(&format!("SELECT {VERSION_COLS} FROM versions ORDER BY seq DESC"), &[], |r| {
                    Ok(row_version(r)?.0)
                })
            })
            .await
    }

    /// One version by name (`v2`, `HEAD`, `HEAD~1`, id prefix).
    pub async fn version(&self, spec: &str) -> Result<VersionInfo, StoreError> {
        let spec = spec.to_string();
        self.db().read(move |c| Ok(resolve(c, &spec)?.0)).await
    }

    /// What changed from version `a` to version `b`. The first `detail` entries carry the
    /// question and both labels.
    pub async fn diff(&self, a: &str, b: &str, detail: usize) -> Result<Diff, StoreError> {
        let (a, b) = (a.to_string(), b.to_string());
        self.db()
            .read(move |c| {
                let (va, pa) = resolve(c, &a)?;
                let (vb, pb) = resolve(c, &b)?;
                let ha: Vec<&[u8]> = page_hashes(&pa).collect();
                let hb: Vec<&[u8]> = page_hashes(&pb).collect();
                // Pages both versions share hold identical entries: skip them.
                let shared: std::collections::HashSet<&[u8]> = ha.iter().copied().filter(|h| hb.contains(h)).collect();
                let only = |hs: &[&[u8]]| -> Vec<u8> {
                    hs.iter().filter(|h| !shared.contains(*h)).flat_map(|h| h.to_vec()).collect()
                };
                let ma = load_manifest(c, &only(&ha))?;
                let mb = load_manifest(c, &only(&hb))?;
                let mut entries = Vec::new();
                let (mut i, mut j) = (0, 0);
                // The digests of the labels that differ by id between the two versions' entries
                // of an item, fetched together (same id, same label: nothing to compare).
                let mut differing = Vec::new();
                let (mut a_i, mut b_j) = (0, 0);
                while let (Some(x), Some(y)) = (ma.entries.get(a_i), mb.entries.get(b_j)) {
                    match x.item.cmp(&y.item) {
                        std::cmp::Ordering::Equal => {
                            if x.label != y.label {
                                differing.extend(x.label);
                                differing.extend(y.label);
                            }
                            a_i += 1;
                            b_j += 1;
                        }
                        std::cmp::Ordering::Less => a_i += 1,
                        std::cmp::Ordering::Greater => b_j += 1,
                    }
                }
                let digests: std::collections::HashMap<i64, Vec<u8>> = c
                    .query_in("SELECT id, content FROM labels WHERE", "id", &differing, "", |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .into_iter()
                    .collect();
                let label_digest = |l: Option<i64>| -> Result<Option<Vec<u8>>, StoreError> {
                    Ok(l.and_then(|l| digests.get(&l).cloned()))
                };
                let mut push = |kind, item: i64, ea: Option<&Entry>, eb: Option<&Entry>| {
                    entries.push(DiffEntry {
                        item,
                        kind,
                        question: None,
                        before: None,
                        after: None,
                        split_before: ea.and_then(|e| ma.split_of(e)).map(String::from),
                        split_after: eb.and_then(|e| mb.split_of(e)).map(String::from),
                    });
                    let _ = (ea.map(|e| e.label), eb.map(|e| e.label));
                };
                let mut labels: Vec<(Option<i64>, Option<i64>)> = Vec::new();
                while i < ma.entries.len() || j < mb.entries.len() {
                    let ea = ma.entries.get(i);
                    let eb = mb.entries.get(j);
                    match (ea, eb) {
                        (Some(x), Some(y)) if x.item == y.item => {
                            let split_changed = ma.split_of(x) != mb.split_of(y);
                            let label_changed = x.label != y.label && label_digest(x.label)? != label_digest(y.label)?;
                            if split_changed || label_changed {
                                push(DiffKind::Changed, x.item, Some(x), Some(y));
                                labels.push((x.label, y.label));
                            }
                            i += 1;
                            j += 1;
                        }
                        (Some(x), Some(y)) if x.item < y.item => {
                            push(DiffKind::Removed, x.item, Some(x), None);
                            labels.push((x.label, None));
                            i += 1;
                        }
                        (Some(x), None) => {
                            push(DiffKind::Removed, x.item, Some(x), None);
                            labels.push((x.label, None));
                            i += 1;
                        }
                        (_, Some(y)) => {
                            push(DiffKind::Added, y.item, None, Some(y));
                            labels.push((None, y.label));
                            j += 1;
                        }
                        (None, None) => break,
                    }
                }
                for (e, (la, lb)) in entries.iter_mut().zip(labels).take(detail) {
                    e.question = c.optional("SELECT question FROM items WHERE id = ?1", &[&e.item], |r| r.get(0))?;
                    e.before = match la {
                        Some(l) => label_by_id(c, l)?,
                        None => None,
                    };
                    e.after = match lb {
                        Some(l) => label_by_id(c, l)?,
                        None => None,
                    };
                }
                let count = |k: DiffKind| entries.iter().filter(|e| e.kind == k).count() as u64;
                Ok(Diff {
                    added: count(DiffKind::Added),
                    removed: count(DiffKind::Removed),
                    changed: count(DiffKind::Changed),
                    from: va,
                    to: vb,
                    entries,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip() {
        let entries =
            vec![(3, Some(10), Some("train".to_string())), (4, None, None), (900, Some(2), Some("val".to_string()))];
        let pages = paginate(&entries);
        let mut splits = Vec::new();
        let mut out = Vec::new();
        for p in &pages {
            decode_page(p, &mut splits, &mut out).unwrap();
        }
        let back: Vec<_> = out.iter().map(|e| (e.item, e.label, e.split.map(|s| splits[s as usize].clone()))).collect();
        assert_eq!(back, entries);
    }

    #[test]
    fn boundaries_do_not_move_when_far_items_change() {
        let a: Vec<_> = (1..5000).map(|i| (i, Some(i), None)).collect();
        let mut b = a.clone();
        b[4000].1 = Some(99_999);
        let (pa, pb) = (paginate(&a), paginate(&b));
        assert_eq!(pa.len(), pb.len());
        let differing = pa.iter().zip(&pb).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 1);
        // An insertion also only touches its own page.
        let mut c = a.clone();
        c.insert(10, (10_000_000, None, None));
        c.sort_by_key(|e| e.0);
        let pc = paginate(&c);
        let same = pc.iter().filter(|p| pa.contains(p)).count();
        assert!(same + 1 >= pa.len(), "{same} of {}", pa.len());
    }
}
