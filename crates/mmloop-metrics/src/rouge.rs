//! ROUGE-L as pycocoevalcap 1.2 computes it (`rouge/rouge.py`, Vedantam's COCO version):
//! tokens from `str.split(" ")` (so `""` is one empty token and double spaces make empty
//! tokens), the longest common subsequence with each reference, precision and recall
//! maximised over references independently, F with β = 1.2, and the corpus score as
//! `np.mean` of the per-image scores. Pure computation, no I/O.

use crate::numeric::{c_pow, np_mean};

const BETA: f64 = 1.2;

/// Corpus and per-image ROUGE-L. pycocoevalcap 1.2, `Rouge()`, numpy pairwise mean.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RougeScores {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// Scores one candidate per image against its references.
pub fn rouge_l<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>]) -> RougeScores {
    assert_eq!(hyps.len(), refs.len(), "one hypothesis per image");
    let mut row = Vec::new();
    let per_image: Vec<f64> = hyps
        .iter()
        .zip(refs)
        .map(|(h, rs)| {
            let cand: Vec<&str> = h.as_ref().split(' ').collect();
            let refs: Vec<Vec<&str>> = rs.iter().map(|r| r.as_ref().split(' ').collect()).collect();
            image_score(&cand, &refs, &mut row)
        })
        .collect();
    RougeScores { corpus: np_mean(&per_image), per_image }
}

/// `Rouge.calc_score` for one image.
fn image_score(cand: &[&str], refs: &[Vec<&str>], row: &mut Vec<u32>) -> f64 {
    let (mut prec_max, mut rec_max) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for r in refs {
        let lcs = lcs_len(r, cand, row) as f64;
        prec_max = prec_max.max(lcs / cand.len() as f64);
        rec_max = rec_max.max(lcs / r.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = c_pow(BETA, 2.0);
        ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// Length of the longest common subsequence (one DP row, O(|a|·|b|)).
fn lcs_len(a: &[&str], b: &[&str], row: &mut Vec<u32>) -> u32 {
    row.clear();
    row.resize(b.len() + 1, 0);
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_strings_are_one_empty_token() {
        // "".split(" ") == [""], which matches an empty reference.
        let s = rouge_l(&[""], &[vec![""]]);
        assert_eq!(s.per_image, vec![1.0]);
        assert_eq!(rouge_l(&["a b"], &[vec![""]]).per_image, vec![0.0]);
    }
}
