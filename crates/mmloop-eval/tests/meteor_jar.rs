//! METEOR 1.5 jar driven like pycocoevalcap 1.2, on the toy vector of
//! `tests/fixtures/metrics/captions.json`. Skips (with the reason) without Java or the jar,
//! and fails instead when `MMLOOP_REQUIRE_METEOR` is set (`.ci/run` installs both and sets it).

use std::path::{Path, PathBuf};

use mmloop_eval::meteor_jar::{MeteorJarError, find_jar, find_jar_with, meteor};
use mmloop_metrics::meteor::evaluate;
use serde_json::Value;

fn skip(why: &str) -> Option<PathBuf> {
    assert!(
        std::env::var_os("MMLOOP_REQUIRE_METEOR").is_none(),
        "the METEOR jar test cannot run: {why} (MMLOOP_REQUIRE_METEOR is set, so this must run)"
    );
    eprintln!("skipped: {why}");
    None
}

fn jar() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv_python = root.join("tools/.venv-metrics/bin/python3");
    let python = if venv_python.exists() { venv_python.into_os_string() } else { "python3".into() };
    if std::process::Command::new("java").arg("-version").output().is_err() {
        return skip("java not found");
    }
    match find_jar_with(None, &python) {
        Ok(j) => Some(j),
        Err(e) => skip(&e.to_string()),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
}

#[test]
fn meteor_jar_matches_pycocoevalcap_1_2_on_the_toy_vector() {
    let Some(jar) = jar() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/metrics/captions.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let toy = &fx["corpora"]["toy"];
    let keys = ["1", "2", "3"];
    let refs: Vec<Vec<String>> = keys.iter().map(|k| strings(&toy["gts"][k])).collect();
    let hyps: Vec<String> = keys.iter().map(|k| toy["res"][k][0].as_str().unwrap().to_owned()).collect();
    let got = meteor(&jar, &hyps, &refs).unwrap();
    let want = &toy["scores"];
    assert_eq!(got.corpus, want["METEOR"].as_f64().unwrap());
    let per: Vec<f64> = want["METEOR_per_image"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(got.per_image, per);
    // The Rust aggregation of the jar's statistics gives the jar's EVAL answers.
    assert_eq!(evaluate(&got.stats), (got.per_image.clone(), got.corpus));
}

#[test]
fn a_missing_jar_is_a_typed_error_with_a_hint() {
    let e = find_jar(Some(Path::new("/nonexistent/meteor-1.5.jar"))).unwrap_err();
    assert!(matches!(e, MeteorJarError::JarMissing(_)));
    let msg = e.to_string();
    assert!(msg.contains("pip install pycocoevalcap==1.2") && !msg.contains('\n'), "{msg}");
}
