//! CIDEr-D as pycocoevalcap 1.2 computes it (`cider/cider.py`, `cider/cider_scorer.py`):
//! n = 1..4, tf-idf vectors with document frequency counted over the *reference* sets of
//! the scored corpus (the hypotheses do not count) and `ref_len = log(#images)`, clipped
//! similarity `min(w_hyp, w_ref) · w_ref`, a Gaussian length penalty with σ = 6 whose
//! "length" is the number of *bigrams* (the reference's `if n == 1` quirk), the mean over
//! n as `np.mean`, divided by the number of references, times 10, and the corpus score as
//! `np.mean` over images.
//!
//! Bit parity needs the reference's summation orders: vector norms and dot products add
//! n-grams in the order the hypothesis/reference dict first saw them (insertion order),
//! references add up in input order, and means are numpy pairwise sums. `log` is glibc's
//! (numpy's AVX-512 `log` differs in the last bit for a few integers ≥ 9170, see
//! `tools/metrics_reference/_venv.py`). Pure computation, no I/O.

use rustc_hash::FxHashMap;

use crate::ngrams::{Interner, ngram_keys};
use crate::numeric::{c_pow, c_pow2, np_mean};

const SIGMA: f64 = 6.0;

/// Corpus and per-image CIDEr-D. pycocoevalcap 1.2, `Cider()` (n = 4, σ = 6).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CiderScores {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// One sentence's n-grams (dense ids) with their tf-idf weights, per order, in first-seen
/// order.
struct Counts {
    grams: [Vec<(u32, f64)>; 4],
    /// Number of bigram occurrences (what the reference calls the length).
    length: u32,
}

/// Dense ids for n-grams, and per-id scratch space that avoids hashing in the hot loops.
#[derive(Default)]
struct Grams {
    ids: FxHashMap<u128, u32>,
    /// `stamp[id] == sentence` when the id was seen in the current sentence (or image).
    stamp: Vec<u32>,
    slot: Vec<u32>,
    df: Vec<u32>,
    clock: u32,
}

impl Grams {
    fn id(&mut self, key: u128) -> u32 {
        let next = self.ids.len() as u32;
        let id = *self.ids.entry(key).or_insert(next);
        if id == next {
            self.stamp.push(0);
            self.slot.push(0);
            self.df.push(0);
        }
        id
    }

    fn tick(&mut self) -> u32 {
        self.clock += 1;
        self.clock
    }

    /// `precook`: counts in insertion order.
    fn cook(&mut self, ids: &[u32], keys: &mut Vec<(usize, u128)>) -> Counts {
        ngram_keys(ids, keys);
        let mut grams: [Vec<(u32, f64)>; 4] = Default::default();
        let now = self.tick();
        for &(n, key) in keys.iter() {
            let id = self.id(key);
            let g = &mut grams[n - 1];
            if self.stamp[id as usize] == now {
                g[self.slot[id as usize] as usize].1 += 1.0;
            } else {
                self.stamp[id as usize] = now;
                self.slot[id as usize] = g.len() as u32;
                g.push((id, 1.0));
            }
        }
        Counts { grams, length: ids.len().saturating_sub(1) as u32 }
    }
}

/// tf-idf weights (in place of the counts) and their norms, summed in insertion order.
fn to_vec(c: &mut Counts, df: &[u32], ln_df: &[f64], ref_len: f64) -> [f64; 4] {
    let mut norm = [0.0f64; 4];
    for (n, g) in c.grams.iter_mut().enumerate() {
        for (id, w) in g.iter_mut() {
            let d = df.get(*id as usize).copied().unwrap_or(0) as usize;
            *w *= ref_len - ln_df[d];
            norm[n] += c_pow2(*w);
        }
    }
    norm.map(f64::sqrt)
}

/// Σ over the hypothesis' n-grams (in its order) of `min(w_h, w_r) · w_r`.
fn clipped_dot(hyp: &[(u32, f64)], reference: &[(u32, f64)]) -> f64 {
    let mut val = 0.0f64;
    for &(id, wh) in hyp {
        let wr = reference.iter().find(|&&(r, _)| r == id).map_or(0.0, |&(_, w)| w);
        // Python's `min(a, b)` keeps `a` unless `b < a`.
        val += if wr < wh { wr } else { wh } * wr;
    }
    val
}

/// Scores one hypothesis per image against its references.
pub fn cider_d<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>]) -> CiderScores {
    assert_eq!(hyps.len(), refs.len(), "one hypothesis per image");
    let mut interner = Interner::default();
    let mut grams = Grams::default();
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let mut cooked_refs: Vec<Vec<Counts>> = Vec::with_capacity(refs.len());
    for rs in refs {
        let cooked: Vec<Counts> = rs
            .iter()
            .map(|r| {
                interner.split_ids(r.as_ref(), &mut ids);
                grams.cook(&ids, &mut keys)
            })
            .collect();
        // Document frequency: images whose reference set holds the n-gram.
        let now = grams.tick();
        for c in &cooked {
            for g in &c.grams {
                for &(id, _) in g {
                    if grams.stamp[id as usize] != now {
                        grams.stamp[id as usize] = now;
                        grams.df[id as usize] += 1;
                    }
                }
            }
        }
        cooked_refs.push(cooked);
    }
    // `np.log(max(1.0, df))` for every possible df; df never exceeds the image count.
    let ln_df: Vec<f64> = (0..=refs.len()).map(|d| (d.max(1) as f64).ln()).collect();
    let ref_len = (refs.len() as f64).ln();
    let df = std::mem::take(&mut grams.df);

    let per_image: Vec<f64> = hyps
        .iter()
        .zip(cooked_refs.iter_mut())
        .map(|(h, crefs)| {
            interner.split_ids(h.as_ref(), &mut ids);
            let mut hyp = grams.cook(&ids, &mut keys);
            let norm_h = to_vec(&mut hyp, &df, &ln_df, ref_len);
            let mut score = [0.0f64; 4];
            for r in crefs.iter_mut() {
                let norm_r = to_vec(r, &df, &ln_df, ref_len);
                let delta = hyp.length as f64 - r.length as f64;
                let penalty = c_pow(std::f64::consts::E, -c_pow(delta, 2.0) / (2.0 * c_pow(SIGMA, 2.0)));
                for n in 0..4 {
                    let mut val = clipped_dot(&hyp.grams[n], &r.grams[n]);
                    if norm_h[n] != 0.0 && norm_r[n] != 0.0 {
                        val /= norm_h[n] * norm_r[n];
                    }
                    score[n] += val * penalty;
                }
            }
            let mut avg = np_mean(&score);
            avg /= crefs.len() as f64;
            avg * 10.0
        })
        .collect();
    CiderScores { corpus: np_mean(&per_image), per_image }
}
