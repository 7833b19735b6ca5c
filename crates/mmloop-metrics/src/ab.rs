//! Online A/B statistics: sticky assignment compatible with GrowthBook's SDKs, the
//! sample-ratio-mismatch check, and an always-valid comparison of two arms (mixture
//! sequential probability ratio test, Johari et al., "Always valid inference", 2017) whose
//! p-value and confidence sequence stay valid however often they are looked at.
//! Pure: no I/O.

use serde::Serialize;

/// 32-bit FNV-1a over a string's UTF-16 code units, as GrowthBook's JavaScript SDK hashes
/// (`charCodeAt`); for ASCII this is the standard FNV-1a of the bytes.
pub fn fnv32a(s: &str) -> u32 {
    s.encode_utf16().fold(0x811c_9dc5u32, |h, u| (h ^ u32::from(u)).wrapping_mul(0x0100_0193))
}

/// GrowthBook's hash, version 2: `fnv32a(str(fnv32a(seed + id))) % 10000 / 10000`, a number
/// in [0, 1) that depends only on the experiment's seed and the user's id.
pub fn growthbook_hash(seed: &str, id: &str) -> f64 {
    let inner = fnv32a(&format!("{seed}{id}"));
    f64::from(fnv32a(&inner.to_string()) % 10_000) / 10_000.0
}

/// The arm of `id`: weights (summing to 1) cut [0, 1) into consecutive ranges, as
/// GrowthBook's `getBucketRanges` with full coverage; the hash picks one. `None` only when
/// the weights do not cover the hash (they sum to less than 1).
pub fn assign(seed: &str, id: &str, weights: &[f64]) -> Option<usize> {
    let n = growthbook_hash(seed, id);
    let mut start = 0.0;
    for (i, w) in weights.iter().enumerate() {
        let end = start + w;
        if n >= start && n < end {
            return Some(i);
        }
        start = end;
    }
    None
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error below 1e-14).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let s = C[1..].iter().enumerate().fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// The regularized upper incomplete gamma function Q(a, x): a series below a + 1, a
/// continued fraction (modified Lentz) above.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        return (1.0 - sum * front).clamp(0.0, 1.0);
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..10_000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (front * h).clamp(0.0, 1.0)
}

/// The sample-ratio-mismatch check: Pearson's χ² goodness of fit of the exposures per arm to
/// the planned weights; a p-value below 0.001 means the split is broken (assignment or
/// logging), and no comparison of the arms should be trusted.
pub fn srm_pvalue(observed: &[u64], weights: &[f64]) -> f64 {
    let total: u64 = observed.iter().sum();
    let wsum: f64 = weights.iter().sum();
    if total == 0 || observed.len() < 2 || observed.len() != weights.len() || wsum <= 0.0 {
        return 1.0;
    }
    let chi2: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = total as f64 * w / wsum;
            if e > 0.0 { (o as f64 - e).powi(2) / e } else { 0.0 }
        })
        .sum();
    gamma_q((observed.len() - 1) as f64 / 2.0, chi2 / 2.0)
}

/// One arm's outcomes so far: count, sum and sum of squares (a rate is a 0/1 outcome).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ArmStats {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl ArmStats {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum / self.n as f64 }
    }

    /// The sample variance (n − 1), 0 below two outcomes.
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// The always-valid comparison of arm B against arm A at one look.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sequential {
    /// mean(B) − mean(A).
    pub difference: f64,
    /// The mixture likelihood ratio against "no difference".
    pub likelihood_ratio: f64,
    /// min(1, 1/Λ) at this look; take the running minimum over looks ([`AlwaysValid`]).
    pub p_value: f64,
    /// The (1 − α) confidence sequence for the difference at this look.
    pub low: f64,
    pub high: f64,
}

/// The normal-mixture mSPRT for a difference of means with mixing variance `tau2` (the
/// squared size of the differences worth detecting): with s² = var(A)/n_A + var(B)/n_B,
/// Λ = sqrt(s² / (s² + τ²)) · exp(τ² θ̂² / (2 s² (s² + τ²))), and the confidence sequence
/// θ̂ ± sqrt(2 s² (s² + τ²) / τ² · (ln(1/α) + ½ ln((s² + τ²) / s²))). `None` before both arms
/// have a variance.
pub fn msprt(a: &ArmStats, b: &ArmStats, tau2: f64, alpha: f64) -> Option<Sequential> {
    if a.n < 2 || b.n < 2 {
        return None;
    }
    let s2 = a.variance() / a.n as f64 + b.variance() / b.n as f64;
    if s2 <= 0.0 {
        return None;
    }
    let d = b.mean() - a.mean();
    let ln_lr = 0.5 * (s2 / (s2 + tau2)).ln() + tau2 * d * d / (2.0 * s2 * (s2 + tau2));
    let lr = ln_lr.exp();
    let half = (2.0 * s2 * (s2 + tau2) / tau2 * ((1.0 / alpha).ln() + 0.5 * ((s2 + tau2) / s2).ln())).sqrt();
    Some(Sequential {
        difference: d,
        likelihood_ratio: lr,
        p_value: (1.0 / lr).min(1.0),
        low: d - half,
        high: d + half,
    })
}

/// The running state of an experiment looked at many times: the always-valid p-value is the
/// smallest seen so far, the confidence sequence the intersection of all intervals so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AlwaysValid {
    pub p_value: f64,
    pub low: f64,
    pub high: f64,
}

impl Default for AlwaysValid {
    fn default() -> Self {
        AlwaysValid { p_value: 1.0, low: f64::NEG_INFINITY, high: f64::INFINITY }
    }
}

impl AlwaysValid {
    pub fn look(&mut self, s: &Sequential) {
        self.p_value = self.p_value.min(s.p_value);
        self.low = self.low.max(s.low);
        self.high = self.high.min(s.high);
    }
}

/// Per-arm sample size of a fixed-horizon two-sided z-test of two rates `p_a`, `p_b` at
/// level `alpha` with power `power` (normal approximation).
pub fn fixed_horizon_n(p_a: f64, p_b: f64, alpha: f64, power: f64) -> f64 {
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    (za + zb).powi(2) * (p_a * (1.0 - p_a) + p_b * (1.0 - p_b)) / (p_b - p_a).powi(2)
}

/// Φ⁻¹(p) (Acklam's rational approximation, relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] =
        [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv32a(""), 0x811c9dc5);
        assert_eq!(fnv32a("a"), 0xe40c292c);
        assert_eq!(fnv32a("foobar"), 0xbf9cf968);
    }

    #[test]
    fn chi_square_tail_matches_known_values() {
        // P(χ²₁ > 3.841459) = 0.05, P(χ²₂ > 5.991465) = 0.05, P(χ²₃ > 11.34487) = 0.01.
        assert!((gamma_q(0.5, 3.841_459 / 2.0) - 0.05).abs() < 1e-6);
        assert!((gamma_q(1.0, 5.991_465 / 2.0) - 0.05).abs() < 1e-6);
        assert!((gamma_q(1.5, 11.344_87 / 2.0) - 0.01).abs() < 1e-6);
        assert!((srm_pvalue(&[5000, 5000], &[0.5, 0.5]) - 1.0).abs() < 1e-12);
        assert!(srm_pvalue(&[5200, 4800], &[0.5, 0.5]) < 1e-4);
    }

    #[test]
    fn normal_quantiles() {
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-8);
        assert!((normal_quantile(0.8) - 0.841_621_234).abs() < 1e-8);
        assert!((normal_quantile(0.001) + 3.090_232_306).abs() < 1e-8);
    }

    #[test]
    fn assignment_follows_the_weights() {
        let weights = [0.2, 0.8];
        let a = (0..20_000).filter(|i| assign("exp", &format!("u{i}"), &weights) == Some(0)).count();
        assert!((3_700..4_300).contains(&a), "{a}");
        assert_eq!(assign("exp", "u1", &weights), assign("exp", "u1", &weights));
    }

    #[test]
    fn the_confidence_sequence_holds_the_difference_and_narrows() {
        let (mut a, mut b) = (ArmStats::default(), ArmStats::default());
        let mut widths = Vec::new();
        for i in 0..4000u64 {
            a.add(f64::from(u8::from(i % 5 != 0))); // 0.8
            b.add(f64::from(u8::from(i % 10 != 0))); // 0.9
            if i % 1000 == 999 {
                let s = msprt(&a, &b, 0.01, 0.05).unwrap();
                assert!(s.low < 0.1 && 0.1 < s.high, "{s:?}");
                widths.push(s.high - s.low);
            }
        }
        assert!(widths.windows(2).all(|w| w[1] < w[0]));
        assert!(msprt(&a, &b, 0.01, 0.05).unwrap().p_value < 1e-6);
    }
}
