//! Sticky assignment against GrowthBook's own SDK: every user id lands in the arm GrowthBook
//! would give it (hash version 2), so a product already bucketing users with a GrowthBook SDK
//! and `mmloop serve --experiment` agree. Fixture: `tests/fixtures/metrics/growthbook.json`,
//! made by `tools/ab_reference.py` with the pinned `growthbook` package.

use mmloop_metrics::ab::{assign, growthbook_hash};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics/growthbook.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("growthbook.json")).expect("JSON")
}

fn weights(v: &Value) -> Vec<f64> {
    v.as_array().expect("weights").iter().map(|w| w.as_f64().expect("weight")).collect()
}

#[test]
fn hash_equals_the_sdk_for_ascii_unicode_and_empty_ids() {
    let f = fixture();
    let cases = f["hashes"].as_array().expect("hashes");
    assert!(cases.len() > 200);
    for c in cases {
        let (seed, id) = (c["seed"].as_str().unwrap(), c["id"].as_str().unwrap());
        // The SDK's value is an exact decimal of n % 10000 / 10000: equal, not close.
        assert_eq!(growthbook_hash(seed, id), c["hash"].as_f64().unwrap(), "seed {seed:?} id {id:?}");
    }
}

#[test]
fn arms_equal_the_sdk_bucket_choice() {
    let f = fixture();
    let mut checked = 0;
    for c in f["assignments"].as_array().unwrap().iter().chain(f["sdk_runs"].as_array().unwrap()) {
        let (seed, id) = (c["seed"].as_str().unwrap(), c["id"].as_str().unwrap());
        let want = c["arm"].as_i64().unwrap();
        let got = assign(seed, id, &weights(&c["weights"])).map_or(-1, |a| a as i64);
        assert_eq!(got, want, "seed {seed:?} id {id:?} weights {}", c["weights"]);
        checked += 1;
    }
    assert_eq!(checked, 735 + 180);
}
