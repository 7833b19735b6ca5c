//! One decoding step done by us from the model's raw logits: exact natural-log
//! probabilities (log-softmax accumulated in f64) and the choice of the next token
//! (greedy, or temperature / top-k / top-p sampling with transformers' order and
//! repetition-penalty rule).
//!
//! The numbers are the ones transformers computes (`log_softmax` of the f32 logits over the
//! whole `vocab_size` row), reported before the penalty, temperature and filters that only
//! steer the choice; each request draws from its own seed, so answers do not depend on what
//! else is in the batch. Nothing here knows about models.

use rand::Rng;

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPolicy {
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f64,
    /// 0 = off: drop tokens less likely than `min_p` times the most likely one.
    pub min_p: f64,
    /// 1 = off.
    pub repetition_penalty: f64,
    /// How many of the most likely tokens to report per step.
    pub top_n: usize,
}

/// How a request samples (the settings of [`StepPolicy`] plus what surrounds the steps).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub policy: StepPolicy,
    pub max_new_tokens: usize,
    /// End-of-sequence ids are suppressed until this many tokens exist.
    pub min_new_tokens: usize,
    /// The request's own seed (already mixed with its stream, see [`request_seed`]).
    pub seed: u64,
    /// Strings that end the answer when they appear (not included in it).
    pub stop: Vec<String>,
}

impl SamplingParams {
    /// Pure greedy decoding, no penalty: what the parity references use.
    pub fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            policy: StepPolicy {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                repetition_penalty: 1.0,
                top_n: 5,
            },
            max_new_tokens,
            min_new_tokens: 0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// One step: the chosen token, its log-probability under the model, and the most likely
/// tokens (ids and log-probabilities, most likely first, ties by lower id).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: u32,
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// `ln Σ exp(x)` over finite values, accumulated in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logits.iter().map(|&x| ((x as f64) - max).exp()).sum();
    max + sum.ln()
}

/// The `n` largest values' indices, largest first, ties by lower index (torch's `topk`
/// order on equal values is unspecified; lower id is what argmax picks).
pub fn top_indices(values: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    let better = |a: &u32, b: &u32| {
        let (x, y) = (values[*a as usize], values[*b as usize]);
        y.total_cmp(&x).then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, better);
        idx.truncate(n);
    }
    idx.sort_unstable_by(better);
    idx
}

/// The first index of the largest value (torch's argmax).
pub fn argmax(values: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every token already in `context`
/// (prompt and generated) has its logit divided by `penalty` when positive and multiplied
/// when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let p = penalty as f32;
    let mut seen = vec![false; logits.len()];
    for &t in context {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let l = logits[t];
            logits[t] = if l < 0.0 { l * p } else { l / p };
        }
    }
}

/// Runs one step over the raw logits of the whole vocabulary row.
///
/// `suppress` lists tokens that may not be chosen now (end-of-sequence ids before
/// `min_new_tokens`). Reported log-probabilities are those of the model itself, before
/// the penalty, temperature and filters that only steer the choice.
pub fn step(
    logits: &[f32],
    context: &[u32],
    policy: &StepPolicy,
    suppress: &[u32],
    rng: &mut impl Rng,
) -> Result<Step, String> {
    if logits.is_empty() {
        return Err("the model returned no logits".into());
    }
    if logits.iter().any(|x| x.is_nan()) {
        return Err("the model returned NaN logits (try --dtype f32 or another quantization)".into());
    }
    let lse = log_sum_exp(logits);
    let lp = |i: u32| logits[i as usize] as f64 - lse;
    let top: Vec<(u32, f64)> = top_indices(logits, policy.top_n).into_iter().map(|i| (i, lp(i))).collect();

    let steer = policy.repetition_penalty != 1.0 || !suppress.is_empty();
    let mut steered;
    let scores: &[f32] = if steer {
        steered = logits.to_vec();
        apply_repetition_penalty(&mut steered, context, policy.repetition_penalty);
        for &t in suppress {
            if let Some(x) = steered.get_mut(t as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        &steered
    } else {
        logits
    };
    let id = if policy.temperature <= 0.0 {
        argmax(scores).ok_or("every token was suppressed")?
    } else {
        sample(scores, policy, rng).ok_or("every token was suppressed")?
    };
    Ok(Step { id, logprob: lp(id), top })
}

/// Temperature, then top-k, then top-p, then min-p (transformers' warper order), then a draw.
fn sample(scores: &[f32], policy: &StepPolicy, rng: &mut impl Rng) -> Option<u32> {
    let t = policy.temperature;
    // Candidates, most likely first; top-k cuts the list before any sort of the whole row.
    let finite = scores.iter().filter(|x| x.is_finite()).count();
    let k = if policy.top_k > 0 { policy.top_k.min(finite) } else { finite };
    let cand = top_indices(scores, k);
    let cand: Vec<u32> = cand.into_iter().filter(|&i| scores[i as usize].is_finite()).collect();
    let first = *cand.first()?;
    let max = scores[first as usize] as f64 / t;
    let weights: Vec<f64> = cand.iter().map(|&i| (scores[i as usize] as f64 / t - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    // Top-p: the smallest head of the list whose probability reaches top_p (at least one).
    let mut keep = cand.len();
    if policy.top_p < 1.0 {
        let mut cum = 0.0;
        for (j, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= policy.top_p {
                keep = j + 1;
                break;
            }
        }
    }
    // Min-p: the weights are relative to the most likely token's (the first, weight 1).
    if policy.min_p > 0.0 {
        keep = keep.min(weights.iter().take_while(|&&w| w >= policy.min_p).count().max(1));
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let mut u = rng.random::<f64>() * kept_total;
    for (j, w) in weights[..keep].iter().enumerate() {
        if u < *w {
            return Some(cand[j]);
        }
        u -= w;
    }
    Some(cand[keep - 1])
}

/// A seed for one request: the run's seed mixed with the request's stream number
/// (SplitMix64), so draws do not depend on the order requests run in.
pub fn request_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn greedy(top_n: usize) -> StepPolicy {
        StepPolicy { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, top_n }
    }

    #[test]
    fn log_softmax_matches_the_closed_form() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let s = step(&logits, &[], &greedy(4), &[], &mut StdRng::seed_from_u64(0)).unwrap();
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        assert_eq!(s.id, 2);
        assert!((s.logprob - (3.0 - z.ln())).abs() < 1e-12);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1, 0, 3]);
        let total: f64 = s.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let logits = [1e4f32, 1e4, -1e4];
        let s = step(&logits, &[], &greedy(2), &[], &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(s.id, 0, "ties go to the lower id, like torch.argmax");
        assert!((s.logprob - (0.5f64).ln()).abs() < 1e-9);
    }

    #[test]
    fn nan_logits_are_an_error() {
        assert!(step(&[0.0, f32::NAN], &[], &greedy(1), &[], &mut StdRng::seed_from_u64(0)).is_err());
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut l = vec![2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        // The choice is steered, the reported log-probability is the model's own.
        let logits = [2.0f32, 1.9, 0.0];
        let p = StepPolicy { repetition_penalty: 1.5, ..greedy(1) };
        let s = step(&logits, &[0], &p, &[], &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(s.id, 1);
        assert!((s.logprob - (1.9f32 as f64 - log_sum_exp(&logits))).abs() < 1e-9);
    }

    #[test]
    fn suppressed_tokens_are_never_chosen() {
        let s = step(&[5.0, 1.0], &[], &greedy(1), &[0], &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(s.id, 1);
        assert_eq!(s.top[0].0, 0, "top logprobs still show the model's favourite");
    }

    #[test]
    fn min_p_keeps_tokens_near_the_most_likely() {
        // Probabilities 0.5, 0.3, 0.2: min_p 0.5 keeps the first two (0.2 < 0.25).
        let scores = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let p = StepPolicy { temperature: 1.0, min_p: 0.5, ..greedy(0) };
        let mut rng = StdRng::seed_from_u64(3);
        let drawn: std::collections::BTreeSet<u32> = (0..400).map(|_| sample(&scores, &p, &mut rng).unwrap()).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = [0.0f32, 3.0, 2.9, -5.0];
        let mut rng = StdRng::seed_from_u64(7);
        let k1 = StepPolicy { temperature: 1.0, top_k: 1, ..greedy(0) };
        for _ in 0..50 {
            assert_eq!(step(&logits, &[], &k1, &[], &mut rng).unwrap().id, 1);
        }
        let p = StepPolicy { temperature: 1.0, top_p: 0.5, ..greedy(0) };
        for _ in 0..50 {
            assert_eq!(step(&logits, &[], &p, &[], &mut rng).unwrap().id, 1, "p(1) > 0.5 alone");
        }
        let p = StepPolicy { temperature: 1.0, top_p: 0.9, ..greedy(0) };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            seen.insert(step(&logits, &[], &p, &[], &mut rng).unwrap().id);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()];
        let p = StepPolicy { temperature: 1.0, ..greedy(0) };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..4000).filter(|_| step(&logits, &[], &p, &[], &mut rng).unwrap().id == 1).count()
        };
        let ones = draw(1);
        assert!((2800..3200).contains(&ones), "{ones} of 4000, expected ~3000");
        assert_eq!(draw(1), ones, "same seed, same draws");
        assert_ne!(request_seed(1, 0), request_seed(1, 1));
    }

    #[test]
    fn top_indices_are_sorted_with_ties_by_id() {
        assert_eq!(top_indices(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_indices(&[1.0], 5), vec![0]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
    }
}
