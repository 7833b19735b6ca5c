//! How sure the model is of an answer, from its tokens' natural-log probabilities.
//!
//! - **sequence probability**: the geometric mean of the token probabilities,
//!   `exp(Σ ln p / n)`: length-neutral, 1 when every token was certain;
//! - **minimum token probability**: the weakest link (one unsure word in a long answer);
//! - **first-token margin**: the chosen first content token's probability minus the best
//!   other token's, at the step where short VQA answers are decided ("yes" vs "no");
//! - **agreement** (self-consistency, optional): the share of extra sampled answers that
//!   say the same thing as the answer, after VQA-style normalisation.
//!
//! Special tokens (end of sequence) are left out: they are not part of the answer text.

pub use mmloop_core::ConfidenceDetail;

use crate::backend::TokenLogprob;

/// A confidence in [0, 1] and what it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Confidence {
    pub score: f64,
    pub detail: ConfidenceDetail,
}

/// Confidence from a generated answer's tokens; `None` when there are no logprobs.
pub fn from_tokens(tokens: &[TokenLogprob]) -> Option<ConfidenceDetail> {
    let content: Vec<&TokenLogprob> = tokens.iter().filter(|t| !t.special).collect();
    // An empty answer that ended at once: the end token's probability is all there is.
    let scored: Vec<&TokenLogprob> = if content.is_empty() { tokens.iter().collect() } else { content };
    if scored.is_empty() {
        return None;
    }
    let n = scored.len();
    let sum: f64 = scored.iter().map(|t| t.logprob).sum();
    let (min_i, min_lp) = scored
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t.logprob))
        .fold((0, f64::INFINITY), |best, cur| if cur.1 < best.1 { cur } else { best });
    let first = scored
        .iter()
        .find(|t| {
            let text =
                if t.bytes.is_empty() { t.token.clone() } else { String::from_utf8_lossy(&t.bytes).into_owned() };
            !text.trim().is_empty()
        })
        .unwrap_or(&scored[0]);
    let first_p = first.logprob.exp();
    let best_other = first
        .top_logprobs
        .iter()
        .filter(|a| match (a.id, first.id) {
            (Some(x), Some(y)) => x != y,
            _ => a.token != first.token,
        })
        .map(|a| a.logprob)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = (!first.top_logprobs.is_empty()).then(|| first_p - best_other.exp());
    Some(ConfidenceDetail {
        sequence_prob: (sum / n as f64).exp(),
        sum_logprob: sum,
        min_token_prob: min_lp.exp(),
        min_token_index: min_i,
        first_token_margin: margin,
        first_token_prob: first_p,
        tokens: n,
        agreement: None,
        samples: Vec::new(),
        source: String::new(),
    })
}

/// VQA-style answer normalisation for agreement: lower case, punctuation and articles
/// dropped, number words as digits, whitespace collapsed.
pub fn normalize_answer(s: &str) -> String {
    const NUMBERS: [(&str, &str); 11] = [
        ("none", "0"),
        ("zero", "0"),
        ("one", "1"),
        ("two", "2"),
        ("three", "3"),
        ("four", "4"),
        ("five", "5"),
        ("six", "6"),
        ("seven", "7"),
        ("eight", "8"),
        ("nine", "9"),
    ];
    let lower = s.to_lowercase();
    let cleaned: String =
        lower.chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The share of `samples` that agree with `answer`.
pub fn agreement(answer: &str, samples: &[String]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let a = normalize_answer(answer);
    let same = samples.iter().filter(|s| normalize_answer(s) == a).count();
    Some(same as f64 / samples.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TopLogprob;

    fn tok(id: u32, text: &str, lp: f64, alts: &[(u32, f64)]) -> TokenLogprob {
        TokenLogprob {
            id: Some(id),
            token: text.into(),
            logprob: lp,
            bytes: text.as_bytes().to_vec(),
            top_logprobs: alts
                .iter()
                .map(|&(i, l)| TopLogprob { id: Some(i), token: format!("t{i}"), logprob: l, bytes: vec![] })
                .collect(),
            special: false,
        }
    }

    #[test]
    fn geometric_mean_min_and_margin() {
        let toks = vec![
            tok(1, " ", (0.9f64).ln(), &[(1, (0.9f64).ln()), (2, (0.05f64).ln())]),
            tok(5, "Yes", (0.6f64).ln(), &[(5, (0.6f64).ln()), (6, (0.3f64).ln())]),
            tok(7, ".", (0.5f64).ln(), &[]),
            TokenLogprob { special: true, ..tok(0, "<eos>", (0.01f64).ln(), &[]) },
        ];
        let d = from_tokens(&toks).unwrap();
        assert_eq!(d.tokens, 3);
        assert!((d.sequence_prob - (0.9f64 * 0.6 * 0.5).powf(1.0 / 3.0)).abs() < 1e-12);
        assert!((d.min_token_prob - 0.5).abs() < 1e-12);
        assert_eq!(d.min_token_index, 2);
        // The first *content* token decides: " " is skipped.
        assert!((d.first_token_margin.unwrap() - 0.3).abs() < 1e-12);
        assert!((d.first_token_prob - 0.6).abs() < 1e-12);
    }

    #[test]
    fn no_tokens_no_confidence() {
        assert!(from_tokens(&[]).is_none());
        let only_eos = [TokenLogprob { special: true, ..tok(0, "", (0.2f64).ln(), &[]) }];
        assert!((from_tokens(&only_eos).unwrap().sequence_prob - 0.2).abs() < 1e-12);
    }

    #[test]
    fn agreement_normalises_answers() {
        let s = vec!["Two.".to_string(), "2".into(), "the two".into(), "three".into()];
        assert_eq!(agreement("two", &s), Some(0.75));
        assert_eq!(normalize_answer("  A Red-Car! "), "red car");
        assert_eq!(agreement("x", &[]), None);
    }
}
