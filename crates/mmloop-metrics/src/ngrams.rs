//! Token interning and n-gram keys shared by the caption metrics (BLEU, CIDEr-D).
//!
//! Tokens become dense ids; an n-gram of up to four ids packs into one `u128` (each id
//! plus one in its own 32-bit lane, so n-grams of different lengths never collide).
//! `ngram_keys` lists the n-grams in the order pycocoevalcap's `precook` first inserts
//! them into its dict: all unigrams left to right, then bigrams, trigrams, 4-grams.

use rustc_hash::FxHashMap;

use crate::pystr;

/// Maps token strings to dense ids for one corpus.
#[derive(Default)]
pub(crate) struct Interner<'a> {
    ids: FxHashMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    pub(crate) fn id(&mut self, tok: &'a str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(tok).or_insert(next)
    }

    /// Ids of `s.split()` (Python whitespace), into `out`.
    pub(crate) fn split_ids(&mut self, s: &'a str, out: &mut Vec<u32>) {
        out.clear();
        for w in pystr::split(s) {
            out.push(self.id(w));
        }
    }
}

/// `(n, key)` for every n-gram occurrence, n = 1..=4, in `precook` insertion order.
pub(crate) fn ngram_keys(ids: &[u32], out: &mut Vec<(usize, u128)>) {
    out.clear();
    for n in 1..=4usize {
        if ids.len() < n {
            break;
        }
        for w in ids.windows(n) {
            let mut key = 0u128;
            for (lane, &id) in w.iter().enumerate() {
                key |= (id as u128 + 1) << (32 * lane);
            }
            out.push((n, key));
        }
    }
}
