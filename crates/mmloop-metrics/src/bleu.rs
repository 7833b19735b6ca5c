//! BLEU-1..4 as pycocoevalcap 1.2 computes it (`bleu/bleu.py`, `bleu/bleu_scorer.py`,
//! David Chiang's scorer as modified for COCO): n-grams of `str.split()`, counts clipped by
//! the maximum count in any one reference, the `closest` reference length (ties go to the
//! shorter one), the constants `tiny = 1e-15` and `small = 1e-9`, and a brevity penalty
//! applied to every order when the length ratio is below one. No other smoothing.
//!
//! The corpus score comes from summed statistics, not from the per-image scores. Counts are
//! integers, so only the final arithmetic (same operations, same order, glibc `pow`/`exp`)
//! matters for bit parity. Pure computation, no I/O.

use rustc_hash::FxHashMap;

use crate::ngrams::{Interner, ngram_keys};
use crate::numeric::c_pow;

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// The summed statistics pycocoevalcap prints (`totalcomps`) and its length ratio.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BleuStats {
    pub testlen: u64,
    pub reflen: u64,
    pub guess: [u64; 4],
    pub correct: [u64; 4],
}

impl BleuStats {
    /// `(testlen + tiny) / (reflen + small)`.
    pub fn ratio(&self) -> f64 {
        (self.testlen as f64 + TINY) / (self.reflen as f64 + SMALL)
    }

    /// BLEU-1..4 from these statistics, exactly as `BleuScorer.compute_score`.
    pub fn scores(&self) -> [f64; 4] {
        let mut out = [0.0; 4];
        let mut b = 1.0f64;
        for (k, o) in out.iter_mut().enumerate() {
            b *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            *o = c_pow(b, 1.0 / (k as f64 + 1.0));
        }
        let ratio = self.ratio();
        if ratio < 1.0 {
            let bp = (1.0 - 1.0 / ratio).exp();
            for s in &mut out {
                *s *= bp;
            }
        }
        out
    }

    fn add(&mut self, o: &BleuStats) {
        self.testlen += o.testlen;
        self.reflen += o.reflen;
        for k in 0..4 {
            self.guess[k] += o.guess[k];
            self.correct[k] += o.correct[k];
        }
    }
}

/// Corpus and per-image BLEU. pycocoevalcap 1.2, `Bleu(4)`, `option='closest'`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BleuScores {
    /// BLEU-1..4 of the corpus.
    pub corpus: [f64; 4],
    /// BLEU-1..4 of each image, in input order.
    pub per_image: Vec<[f64; 4]>,
    /// Summed statistics behind `corpus`.
    pub stats: BleuStats,
}

/// Scores one hypothesis per image against its references (at least one each; an image
/// without references is scored against nothing, where the reference would assert).
pub fn bleu<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>]) -> BleuScores {
    assert_eq!(hyps.len(), refs.len(), "one hypothesis per image");
    let mut interner = Interner::default();
    let mut maxcounts: FxHashMap<u128, u32> = FxHashMap::default();
    let mut counts: FxHashMap<u128, u32> = FxHashMap::default();
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let mut total = BleuStats::default();
    let mut per_image = Vec::with_capacity(hyps.len());
    for (hyp, rs) in hyps.iter().zip(refs) {
        maxcounts.clear();
        let mut reflens = Vec::with_capacity(rs.len());
        for r in rs {
            interner.split_ids(r.as_ref(), &mut ids);
            reflens.push(ids.len() as u64);
            counts.clear();
            ngram_keys(&ids, &mut keys);
            for &(_, key) in &keys {
                *counts.entry(key).or_default() += 1;
            }
            for (&key, &c) in &counts {
                let m = maxcounts.entry(key).or_default();
                *m = (*m).max(c);
            }
        }
        interner.split_ids(hyp.as_ref(), &mut ids);
        let testlen = ids.len() as u64;
        counts.clear();
        ngram_keys(&ids, &mut keys);
        for &(_, key) in &keys {
            *counts.entry(key).or_default() += 1;
        }
        let mut correct = [0u64; 4];
        for &(n, key) in &keys {
            // Each distinct n-gram once: count it on its first occurrence only.
            if let Some(c) = counts.remove(&key) {
                correct[n - 1] += c.min(maxcounts.get(&key).copied().unwrap_or(0)) as u64;
            }
        }
        // `min((abs(l - testlen), l) for l in reflen)[1]`: closest, then shortest.
        let reflen = reflens.iter().copied().min_by_key(|&l| (l.abs_diff(testlen), l)).unwrap_or(0);
        let guess = std::array::from_fn(|k| testlen.saturating_sub(k as u64));
        let stats = BleuStats { testlen, reflen, guess, correct };
        per_image.push(stats.scores());
        total.add(&stats);
    }
    BleuScores { corpus: total.scores(), per_image, stats: total }
}
