//! Content hashing: the same content gets the same id, whoever computes it and in
//! whatever order the rows were inserted.
//!
//! Every hash is sha256 over a length-prefixed encoding of the fields, prefixed with a
//! domain tag, so no two different contents share an encoding. Changing an encoding
//! changes every id: bump the tag's version when that is intended.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::model::{Answer, LabelStatus, Task};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Digest)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as shown to people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// JSON text with object keys sorted at every level, whatever map type `serde_json` was
/// built with, so equal values always hash equal.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// A sha256 over length-prefixed fields.
struct Fields(Sha256);

impl Fields {
    fn new(domain: &str) -> Self {
        let mut f = Fields(Sha256::new());
        f.bytes(domain.as_bytes());
        f
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    fn opt(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            None => self.0.update([0u8]),
            Some(b) => {
                self.0.update([1u8]);
                self.bytes(b);
            }
        }
        self
    }

    fn count(&mut self, n: usize) -> &mut Self {
        self.0.update((n as u64).to_le_bytes());
        self
    }

    fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// The immutable content of an item: what it asks about which images.
///
/// `context_json` and `meta_json` are the stored JSON texts; they are canonical because
/// `serde_json` maps keep their keys sorted.
#[derive(Clone, Copy, Debug)]
pub struct ItemContent<'a> {
    pub task: Task,
    pub source_id: Option<&'a str>,
    pub question: &'a str,
    pub context_json: Option<&'a str>,
    pub turn: u32,
    pub images: &'a [Digest],
    pub tags: &'a [String],
    pub meta_json: Option<&'a str>,
}

impl ItemContent<'_> {
    pub fn digest(&self) -> Digest {
        let mut f = Fields::new("mmloop/item/v1");
        f.bytes(self.task.as_str().as_bytes())
            .opt(self.source_id.map(str::as_bytes))
            .bytes(self.question.as_bytes())
            .opt(self.context_json.map(str::as_bytes))
            .count(self.turn as usize)
            .count(self.images.len());
        for d in self.images {
            f.bytes(d.as_bytes());
        }
        f.count(self.tags.len());
        for t in self.tags {
            f.bytes(t.as_bytes());
        }
        f.opt(self.meta_json.map(str::as_bytes));
        f.finish()
    }
}

/// The content of a label: its status and answer. Who decided and when are audit
/// metadata, not content: the same answer reviewed by two people is the same label.
#[derive(Clone, Copy, Debug)]
pub struct LabelContent<'a> {
    pub status: LabelStatus,
    pub answer: &'a Answer,
}

impl LabelContent<'_> {
    pub fn digest(&self) -> Digest {
        let mut f = Fields::new("mmloop/label/v1");
        f.bytes(self.status.as_str().as_bytes())
            .opt(self.answer.text.as_deref().map(str::as_bytes))
            .count(self.answer.all.len());
        for a in &self.answer.all {
            f.bytes(a.answer.as_bytes()).opt(a.confidence.as_deref().map(str::as_bytes));
        }
        f.finish()
    }
}

/// The content of one item as a version sees it: item, label (if any) and split.
pub fn row_digest(item: &Digest, label: Option<&Digest>, split: Option<&str>) -> Digest {
    let mut f = Fields::new("mmloop/row/v1");
    f.bytes(item.as_bytes()).opt(label.map(|d| d.as_bytes().as_slice())).opt(split.map(str::as_bytes));
    f.finish()
}

/// A version id: the hash of its rows' digests in sorted order, so it depends on the
/// content only, never on insert order or internal ids. Sorts `rows` in place.
pub fn version_digest(rows: &mut [Digest]) -> Digest {
    rows.sort_unstable();
    let mut f = Fields::new("mmloop/version/v1");
    f.count(rows.len());
    for r in rows.iter() {
        f.0.update(r.as_bytes());
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(q: &str, imgs: &[Digest]) -> Digest {
        ItemContent {
            task: Task::Vqa,
            source_id: None,
            question: q,
            context_json: None,
            turn: 0,
            images: imgs,
            tags: &[],
            meta_json: None,
        }
        .digest()
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = Digest::of(b"a");
        // Moving bytes between fields must change the digest.
        let x = ItemContent {
            task: Task::Vqa,
            source_id: Some("ab"),
            question: "c",
            context_json: None,
            turn: 0,
            images: &[a],
            tags: &[],
            meta_json: None,
        };
        let y = ItemContent { source_id: Some("a"), question: "bc", ..x };
        assert_ne!(x.digest(), y.digest());
        assert_ne!(item("q", &[a]), item("q", &[]));
    }

    #[test]
    fn canonical_json_sorts_keys_everywhere() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b": [{"z": 1, "a": 2}], "a": null}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":null,"b":[{"a":2,"z":1}]}"#);
    }

    #[test]
    fn digest_hex_round_trips() {
        let d = Digest::of(b"mmloop");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short().len(), 12);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    proptest! {
        #[test]
        fn version_id_ignores_order(mut rows in prop::collection::vec(any::<[u8; 32]>(), 0..50), seed in any::<u64>()) {
            let mut a: Vec<Digest> = rows.iter().copied().map(Digest).collect();
            // A deterministic shuffle driven by the seed.
            let n = rows.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                rows.swap(i, j);
            }
            let mut b: Vec<Digest> = rows.into_iter().map(Digest).collect();
            prop_assert_eq!(version_digest(&mut a), version_digest(&mut b));
        }
    }
}
