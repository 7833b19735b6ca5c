//! Free-text answer metrics: SQuAD exact match and token F1, and ANLS.
//!
//! - Exact match and F1 follow the official SQuAD v1.1 `evaluate-v1.1.py`:
//!   `normalize_answer` = `lower()` → drop ASCII `string.punctuation` →
//!   `re.sub(r'\b(a|an|the)\b', ' ', ·)` (Python 3 `\b`, Unicode word characters) →
//!   `' '.join(split())`; F1 from the `Counter` intersection, 0 without overlap (so an empty
//!   prediction against an empty answer has EM 1 but F1 0, unlike SQuAD 2.0); the max over
//!   the ground truths; corpus `100.0 * sum / total` summed with `+=` in item order.
//! - ANLS follows the DocVQA / InfographicVQA official `evaluate_method` (the copy in
//!   QwenLM/Qwen-VL `eval_mm/infographicsvqa_eval.py`; lmms-eval 0.7.3 `api/metrics.py`
//!   `anls` and VLMEvalKit `anls_compute` are the same): Levenshtein distance over code
//!   points of `' '.join(s.strip().lower().split())` of both sides, divided by
//!   `max(len(gt.upper()), len(pred.upper()))` of the *raw* strings (0 when that is 0);
//!   question score `1 - min`, set to 0 when below the threshold (0.5 keeps exactly 0.5);
//!   corpus `totalScore / N` summed with `+=`.
//!
//! Pure functions; they never read files.

use crate::pystr;

/// ASCII `string.punctuation`.
fn is_py_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// SQuAD v1.1 `normalize_answer`.
pub fn squad_normalize(s: &str) -> String {
    let mut lowered = String::with_capacity(s.len());
    pystr::push_lower(s, &mut lowered);
    let no_punct: Vec<char> = lowered.chars().filter(|&c| !is_py_punctuation(c)).collect();
    let no_articles = remove_articles(&no_punct);
    let mut out = String::with_capacity(no_articles.len());
    for (i, w) in pystr::split(&no_articles).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)`: each article standing alone as a word becomes
/// one space; the boundaries are judged on the original text.
fn remove_articles(text: &[char]) -> String {
    let word_at = |i: usize| i < text.len() && pystr::is_word(text[i]);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let boundary_before = i == 0 || !pystr::is_word(text[i - 1]);
        if boundary_before && word_at(i) {
            // Alternatives in the pattern's order; the first one followed by a boundary wins.
            let found = ["a", "an", "the"].iter().find_map(|article| {
                let len = article.len();
                let matches = i + len <= text.len() && article.chars().zip(&text[i..i + len]).all(|(a, &b)| a == b);
                (matches && !word_at(i + len)).then_some(len)
            });
            if let Some(len) = found {
                out.push(' ');
                i += len;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// SQuAD v1.1 `exact_match_score` for one ground truth.
pub fn squad_exact_match(prediction: &str, ground_truth: &str) -> bool {
    squad_normalize(prediction) == squad_normalize(ground_truth)
}

/// SQuAD v1.1 `f1_score` for one ground truth.
pub fn squad_f1(prediction: &str, ground_truth: &str) -> f64 {
    f1_of_normalized(&squad_normalize(prediction), &squad_normalize(ground_truth))
}

fn f1_of_normalized(prediction: &str, ground_truth: &str) -> f64 {
    let pred: Vec<&str> = pystr::split(prediction).collect();
    let gold: Vec<&str> = pystr::split(ground_truth).collect();
    let mut gold_left: Vec<Option<&str>> = gold.iter().map(|&t| Some(t)).collect();
    let mut num_same = 0usize;
    for t in &pred {
        if let Some(slot) = gold_left.iter_mut().find(|g| **g == Some(*t)) {
            *slot = None;
            num_same += 1;
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / pred.len() as f64;
    let recall = 1.0 * num_same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Per-question and corpus SQuAD scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadReport {
    /// Per question: 1.0 or 0.0, the max over its ground truths.
    pub exact_match: Vec<f64>,
    /// Per question: the max F1 over its ground truths.
    pub f1: Vec<f64>,
    /// `100.0 * sum / total`, as the official script prints.
    pub exact_match_percent: f64,
    pub f1_percent: f64,
}

/// Scores `(prediction, ground truths)` pairs as `evaluate-v1.1.py` `evaluate`.
/// A question without ground truths scores 0 (the script's `max` would raise).
pub fn evaluate_squad<'a, S, I>(items: I) -> SquadReport
where
    S: AsRef<str> + 'a,
    I: IntoIterator<Item = (&'a str, &'a [S])>,
{
    let mut em = Vec::new();
    let mut f1 = Vec::new();
    for (prediction, truths) in items {
        let p = squad_normalize(prediction);
        let mut best_em = 0.0f64;
        let mut best_f1 = 0.0f64;
        for t in truths {
            let g = squad_normalize(t.as_ref());
            if p == g {
                best_em = 1.0;
            }
            best_f1 = best_f1.max(f1_of_normalized(&p, &g));
        }
        em.push(best_em);
        f1.push(best_f1);
    }
    let total = em.len() as f64;
    let running = |xs: &[f64]| xs.iter().fold(0.0, |acc, &x| acc + x);
    SquadReport {
        exact_match_percent: 100.0 * running(&em) / total,
        f1_percent: 100.0 * running(&f1) / total,
        exact_match: em,
        f1,
    }
}

/// Levenshtein distance over code points.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, &cl) in long.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cs) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if cl == cs { diag } else { 1 + diag.min(above).min(row[j]) };
            diag = above;
        }
    }
    row[short.len()]
}

fn collapse_lower(s: &str) -> String {
    let mut lowered = String::with_capacity(s.len());
    pystr::push_lower(pystr::strip(s), &mut lowered);
    let mut out = String::with_capacity(lowered.len());
    for (i, w) in pystr::split(&lowered).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The DocVQA default ANLS threshold.
pub const ANLS_THRESHOLD: f64 = 0.5;

/// ANLS of one question: `1 - min` normalised distance over the ground truths, 0 below
/// `threshold`. With no ground truth it is 0 (the script's `min` would raise).
pub fn anls<S: AsRef<str>>(prediction: &str, ground_truths: &[S], threshold: f64) -> f64 {
    let pred = collapse_lower(prediction);
    let pred_len = pystr::upper_len(prediction);
    let mut min_nl = f64::INFINITY;
    for gt in ground_truths {
        let raw = gt.as_ref();
        let dist = levenshtein(&collapse_lower(raw), &pred);
        let length = pystr::upper_len(raw).max(pred_len);
        let nl = if length == 0 { 0.0 } else { dist as f64 / length as f64 };
        min_nl = min_nl.min(nl);
    }
    if min_nl.is_infinite() {
        return 0.0;
    }
    let q = 1.0 - min_nl;
    if q < threshold { 0.0 } else { q }
}

/// Per-question ANLS and the corpus score.
#[derive(Debug, Clone, PartialEq)]
pub struct AnlsReport {
    pub per_item: Vec<f64>,
    /// `totalScore / N`, in [0, 1]; 0 for no questions, as the script.
    pub score: f64,
}

pub fn evaluate_anls<'a, S, I>(items: I, threshold: f64) -> AnlsReport
where
    S: AsRef<str> + 'a,
    I: IntoIterator<Item = (&'a str, &'a [S])>,
{
    let per_item: Vec<f64> = items.into_iter().map(|(p, gts)| anls(p, gts, threshold)).collect();
    let total = per_item.iter().fold(0.0, |acc, &x| acc + x);
    let score = if per_item.is_empty() { 0.0 } else { total / per_item.len() as f64 };
    AnlsReport { per_item, score }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(squad_normalize("The  Cat's hat!"), "cats hat");
        assert_eq!(squad_normalize("an apple, a pear"), "apple pear");
        assert_eq!(squad_normalize("theatre"), "theatre");
        assert!(squad_exact_match("", ""));
        assert_eq!(squad_f1("", ""), 0.0);
        assert_eq!(squad_f1("the cat sat", "cat sat down"), 0.8);
    }

    #[test]
    fn anls_uses_raw_lengths() {
        assert_eq!(anls("abef", &["  abcd  "], 0.5), 0.75);
        assert_eq!(anls("abcd", &["abcd"], 0.5), 1.0);
        assert_eq!(anls("xyz", &["abcd"], 0.5), 0.0);
        assert_eq!(anls("", &[""], 0.5), 1.0);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
