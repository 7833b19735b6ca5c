//! Float operations whose exact rounding the reference scripts depend on: Python 3
//! `round(x, n)`, `statistics.mean` (an exact rational mean rounded once), and numpy's
//! `percentile`/`quantile` with the default `linear` method.
//!
//! Sums and means in numpy or Python-`sum` order live in `crate::numeric`; this module
//! holds what that one does not cover. Nothing here allocates on the heap.

use std::io::Write;

/// Python 3 `round(x, ndigits)` for a float: the exact binary value rounded to `ndigits`
/// decimals, ties to even (CPython `double_round` via `_Py_dg_dtoa` mode 3). Python 2
/// broke exact ties away from zero instead, so `round(0.125, 2)` is 0.12 here, 0.13 there.
pub fn py_round(x: f64, ndigits: u32) -> f64 {
    // CPython returns x unchanged when no decimal could be dropped.
    if !x.is_finite() || ndigits > 323 {
        return x;
    }
    // 309 integer digits + sign + point + 323 decimals fit.
    let mut buf = [0u8; 640];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Rust's fixed-precision formatting is exact and breaks ties to even, as dtoa mode 3.
    write!(cursor, "{:.*}", ndigits as usize, x).expect("buffer holds any f64");
    let len = cursor.position() as usize;
    let text = std::str::from_utf8(&buf[..len]).expect("formatting writes ASCII");
    text.parse().expect("formatted float parses")
}

/// `statistics.mean(xs)` for finite non-negative floats: the exact rational mean, rounded
/// once to the nearest float (ties to even), as `float(Fraction(sum) / n)` does.
///
/// Returns `None` for an empty slice, a negative or non-finite value, or values whose
/// binary exponents lie so far apart (or that are so many) that the exact sum would not
/// fit in 127 bits; VQA accuracy terms (0, 1/3, 2/3, 1) always fit.
pub fn statistics_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.len() > 1 << 12 {
        return None;
    }
    let mut min_exp = i32::MAX;
    let mut max_exp = i32::MIN;
    for &x in xs {
        if !x.is_finite() || x.is_sign_negative() && x != 0.0 {
            return None;
        }
        if x != 0.0 {
            let (_, e) = decompose(x);
            min_exp = min_exp.min(e);
            max_exp = max_exp.max(e);
        }
    }
    if min_exp == i32::MAX {
        return Some(0.0);
    }
    // 53-bit mantissas shifted by up to 60 bits, times at most 2^12 terms, stay < 2^125.
    if max_exp - min_exp > 60 {
        return None;
    }
    let mut total: u128 = 0;
    for &x in xs {
        if x != 0.0 {
            let (m, e) = decompose(x);
            total += u128::from(m) << (e - min_exp);
        }
    }
    Some(ratio_to_f64(total, xs.len() as u128, min_exp))
}

/// `x = m * 2^e` with an integer mantissa `m < 2^53`.
fn decompose(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if exp_bits == 0 { (frac, -1074) } else { (frac | (1u64 << 52), exp_bits - 1075) }
}

/// `num / den * 2^exp2`, correctly rounded to the nearest f64 (ties to even); the result
/// must be a normal float, which holds for the means above.
fn ratio_to_f64(num: u128, den: u128, exp2: i32) -> f64 {
    if num == 0 {
        return 0.0;
    }
    let bitlen = |v: u128| 128 - v.leading_zeros() as i32;
    // Enough quotient bits for 53 mantissa bits, a round bit and more; the remainder
    // decides the sticky bit.
    let shift = (64 - (bitlen(num) - bitlen(den))).max(0);
    let scaled = num << shift;
    let q = scaled / den;
    let sticky = !scaled.is_multiple_of(den);
    let drop = bitlen(q) - 53;
    let mut mant = q >> drop;
    let rest = q & ((1u128 << drop) - 1);
    let half = 1u128 << (drop - 1);
    if rest > half || (rest == half && (sticky || mant & 1 == 1)) {
        mant += 1;
    }
    (mant as f64) * pow2(drop - shift + exp2)
}

fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// numpy's `np.percentile(a, p)` (method `linear`, numpy ≥ 1.22): `q = p / 100`,
/// virtual index `(n - 1) * q`, then numpy's `_lerp`, which interpolates from the upper
/// neighbour when the fraction is ≥ 0.5. `sorted` must be sorted ascending and non-empty.
pub fn np_percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    np_quantile_sorted(sorted, p / 100.0)
}

/// numpy's `np.quantile(a, q)` with method `linear` on an ascending, non-empty slice.
pub fn np_quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n as f64 - 1.0) * q;
    if virtual_index >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    if virtual_index < 0.0 {
        return sorted[0];
    }
    let previous = virtual_index.floor();
    let gamma = virtual_index - previous;
    let i = previous as usize;
    np_lerp(sorted[i], sorted[i + 1], gamma)
}

/// numpy `_lerp(a, b, t)` (numpy/lib/_function_base_impl.py).
fn np_lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 { b - diff * (1.0 - t) } else { a + diff * t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_matches_python3() {
        // Python 3.11: round(v, 2) for each v.
        let cases = [
            (0.125, 0.12),
            (0.375, 0.38),
            (2.675, 2.67),
            (1.005, 1.0),
            (-0.125, -0.12),
            (33.33333333333333, 33.33),
            (66.66666666666667, 66.67),
            (99.995, 100.0),
            (1e300, 1e300),
        ];
        for (x, want) in cases {
            assert_eq!(py_round(x, 2), want, "round({x}, 2)");
        }
        assert!(py_round(-0.001, 2).is_sign_negative());
    }

    #[test]
    fn statistics_mean_is_exact() {
        let third = 1.0 / 3.0;
        let two = 2.0 / 3.0;
        // Python 3.11: statistics.mean([1/3]*9 + [2/3]) == 0.36666666666666664
        let mut v = vec![third; 9];
        v.push(two);
        assert_eq!(statistics_mean(&v), Some(0.36666666666666664));
        assert_eq!(statistics_mean(&[0.0, 0.0]), Some(0.0));
        assert_eq!(statistics_mean(&[1.0, 0.5]), Some(0.75));
        assert_eq!(statistics_mean(&[]), None);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let a = [0.1, 0.2, 0.4, 0.8];
        assert_eq!(np_percentile_sorted(&a, 0.0), 0.1);
        assert_eq!(np_percentile_sorted(&a, 100.0), 0.8);
        assert_eq!(np_percentile_sorted(&a, 50.0), 0.30000000000000004);
    }
}
