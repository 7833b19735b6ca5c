//! numpy 2.4.6 `np.sum` / `np.mean` on float64, bit for bit, against
//! `tests/fixtures/metrics/numpy_sums.json` (made by `tools/metrics_reference/numpy_sums.py`).

use mmloop_metrics::numeric::{np_mean, np_sum};

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fixture script's generator: mantissa in [-0.5, 0.5) scaled by 2^-30..2^30.
fn array(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let a = splitmix(&mut s);
            let b = splitmix(&mut s);
            let m = (a >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            m * 2f64.powi((b % 61) as i32 - 30)
        })
        .collect()
}

fn bits(hex: &serde_json::Value) -> u64 {
    u64::from_str_radix(hex.as_str().unwrap(), 16).unwrap()
}

#[test]
fn np_sum_and_mean_match_numpy_2_4_6_bit_for_bit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics/numpy_sums.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 3000);
    for case in cases {
        let seed = case[0].as_u64().unwrap();
        let n = case[1].as_u64().unwrap() as usize;
        let a = array(seed, n);
        assert_eq!(np_sum(&a).to_bits(), bits(&case[2]), "np.sum, seed {seed}, n {n}");
        if n > 0 {
            assert_eq!(np_mean(&a).to_bits(), bits(&case[3]), "np.mean, seed {seed}, n {n}");
        } else {
            assert!(np_mean(&a).is_nan());
        }
    }
}

#[test]
fn negative_zeros_sum_to_positive_zero_as_numpy() {
    for n in [1, 3, 8, 10, 200] {
        assert_eq!(np_sum(&vec![-0.0; n]).to_bits(), 0.0f64.to_bits(), "n {n}");
    }
}
