//! `mmloop eval` end to end: metrics.json and report.html from the committed inputs in
//! tests/fixtures/eval (made by tools/make_eval_fixtures.py from the reference fixtures),
//! with every score checked against the reference implementations' own numbers
//! (pycocoevalcap 1.2, the official VQA eval, VLMEvalKit, MME calculation.py), the
//! terminal table as a snapshot, and the HTML's plots, thumbnails and escaping.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/eval")
}

fn reference(name: &str) -> Value {
    let p = root().join("tests/fixtures/metrics").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Runs mmloop in `dir` (so that paths in its output are the relative ones given).
fn run_in(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(args)
        .current_dir(dir)
        .env("MMLOOP_ACTOR", common::ACTOR)
        .env("NO_COLOR", "1")
        .output()
        .expect("run mmloop")
}

fn ok_in(dir: &Path, args: &[&str]) -> String {
    let out = run_in(dir, args);
    assert!(
        out.status.success(),
        "mmloop {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// metrics.json with what changes from run to run (time, paths of temporary folders, the
/// version of the binary) replaced by placeholders and the per-item list cut to three, for a
/// snapshot of its shape: a field renamed or moved is a diff to look at.
fn stable_shape(m: &Value, tmp: &Path) -> Value {
    fn walk(v: &mut Value, tmp: &str, fixtures: &str) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if matches!(
                        k.as_str(),
                        "created_at" | "generated_at" | "seconds" | "elapsed_s" | "version" | "tool"
                    ) {
                        *x = Value::from(format!("[{k}]"));
                    } else {
                        walk(x, tmp, fixtures);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, tmp, fixtures)),
            Value::String(s) => *s = s.replace(tmp, "[tmp]").replace(fixtures, "[fixtures]"),
            _ => {}
        }
    }
    let mut m = m.clone();
    if let Some(items) = m.get_mut("items").and_then(Value::as_array_mut) {
        items.truncate(3);
    }
    walk(&mut m, &tmp.display().to_string(), &fixtures().display().to_string());
    m
}

fn metric<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["metrics"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("no metric {name}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// pycocoevalcap 1.2 on the 300-image `mixed` corpus (tricky text), scores and per image.
#[test]
fn captions_match_pycocoevalcap_1_2_with_thumbnails() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("captions_refs.json"), tmp.path().join("captions_refs.json")).unwrap();
    let refs: Value = read_json(&tmp.path().join("captions_refs.json"));
    for (i, im) in refs["images"].as_array().unwrap().iter().enumerate() {
        let name = im["file_name"].as_str().unwrap();
        common::png(&tmp.path().join(name), 24, 16, [(i * 37 % 256) as u8, 90, 200]);
    }
    let out = tmp.path().join("report");
    let preds = fixtures().join("captions_results.json");
    let stdout = ok_in(
        tmp.path(),
        &[
            "eval",
            "--predictions",
            preds.to_str().unwrap(),
            "--references",
            "captions_refs.json",
            "--metrics",
            "bleu,rouge_l,cider",
            "--allow-missing",
            "--eval_output_dir",
            "report",
        ],
    );
    insta::assert_snapshot!("captions_table", stdout);
    let m = read_json(&out.join("metrics.json"));
    let want = &reference("captions.json")["corpora"]["mixed"]["scores"];
    let bleu = metric(&m, "bleu");
    for k in 0..4 {
        assert_eq!(f(&bleu["parts"][k]["value"]), f(&want["Bleu"][k]), "Bleu_{}", k + 1);
    }
    assert_eq!(f(&metric(&m, "rouge_l")["value"]), f(&want["ROUGE_L"]));
    assert_eq!(f(&metric(&m, "cider")["value"]), f(&want["CIDEr"]));
    let items = m["items"].as_array().unwrap();
    assert_eq!(items.len(), 300);
    for (i, it) in items.iter().enumerate() {
        assert_eq!(f(&it["scores"]["cider"]), f(&want["CIDEr_per_image"][i]), "CIDEr of image {i}");
        assert_eq!(f(&it["scores"]["rouge_l"]), f(&want["ROUGE_L_per_image"][i]), "ROUGE_L of image {i}");
        for k in 0..4 {
            assert_eq!(f(&it["scores"][format!("bleu_{}", k + 1)]), f(&want["Bleu_per_image"][i][k]));
        }
    }
    assert!(
        m["metrics"].as_array().unwrap().iter().all(|x| x["reference"].as_str().unwrap().contains("pycocoevalcap 1.2"))
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Per-item cider"), "distribution plot");
    assert_eq!(html.matches("data:image/jpeg;base64,").count(), 12, "a thumbnail per worst item");
    assert!(!html.contains("<script"), "no script in the report");
}

/// The official VQA eval (vqaEval.py master a013f00) on 409 questions with hard text.
/// Three predictions are empty: the official script scores them as given, which
/// `--allow-missing` allows.
#[test]
fn vqa_official_numbers_and_table() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = ok_in(
        &fixtures(),
        &[
            "eval",
            "--predictions",
            "vqa_results.json",
            "--references",
            "vqa_questions.json",
            "--annotations",
            "vqa_annotations.json",
            "--metrics",
            "vqa_acc,exact_match,anls",
            "--allow-missing",
            "-o",
            tmp.path().to_str().unwrap(),
        ],
    );
    insta::assert_snapshot!("vqa_table", stdout);
    let m = read_json(&tmp.path().join("metrics.json"));
    insta::assert_json_snapshot!("vqa_metrics_json", stable_shape(&m, tmp.path()));
    let want = reference("vqa_official.json");
    let acc = metric(&m, "vqa_acc");
    assert_eq!(f(&acc["value"]), f(&want["overall"]));
    assert!(acc["reference"].as_str().unwrap().contains("a013f00"));
    for g in acc["groups"].as_array().unwrap() {
        let table = if g["kind"] == "question_type" { "per_question_type" } else { "per_answer_type" };
        assert_eq!(f(&g["value"]), f(&want[table][g["name"].as_str().unwrap()]), "{g}");
    }
    let items = m["items"].as_array().unwrap();
    for (it, q) in items.iter().zip(want["questions"].as_array().unwrap()) {
        assert_eq!(it["id"], q["question_id"].to_string().as_str());
        assert_eq!(f(&it["scores"]["vqa_acc"]), f(&q["accuracy"]), "question {}", q["question_id"]);
    }
    assert_eq!(m["references"]["format"], "vqav2");
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    assert!(html.contains("vqa_acc per question type") && html.contains("vqa_acc per answer type"));
    // The same numbers from the annotations file alone, and under another variant.
    let stdout = ok_in(
        &fixtures(),
        &[
            "eval",
            "-p",
            "vqa_results.json",
            "-r",
            "vqa_annotations.json",
            "--vqa-variant",
            "vlmevalkit",
            "--allow-missing",
            "-o",
            tmp.path().to_str().unwrap(),
            "--json",
        ],
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert!(metric(&v, "vqa_acc")["reference"].as_str().unwrap().starts_with("VLMEvalKit"));
    assert!(v.get("items").is_none());
}

/// A vs B with calibration: the paired bootstrap and the reliability diagram.
#[test]
fn compare_two_models_with_confidences() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = ok_in(
        &fixtures(),
        &[
            "eval",
            "--predictions",
            "vqa_a.jsonl",
            "--compare",
            "vqa_b.jsonl",
            "--references",
            "vqa_annotations.json",
            "--seed",
            "7",
            "--allow-missing",
            "-o",
            tmp.path().to_str().unwrap(),
        ],
    );
    insta::assert_snapshot!("compare_table", stdout);
    let m = read_json(&tmp.path().join("metrics.json"));
    let c = &m["comparison"];
    assert_eq!(c["items"], 409);
    assert_eq!(c["seed"], 7);
    let rows = c["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["metric"].as_str().unwrap()).collect();
    assert_eq!(names, ["vqa_acc", "exact_match", "anls", "brier"]);
    for r in rows {
        assert!(f(&r["ci_low"]) <= f(&r["delta"]) && f(&r["delta"]) <= f(&r["ci_high"]), "{r}");
    }
    // The per-item means behind the test are A's own per-item scores.
    let items = m["items"].as_array().unwrap();
    let mean_a = items.iter().map(|it| f(&it["scores"]["vqa_acc"])).sum::<f64>() / items.len() as f64;
    assert!((f(&rows[0]["mean_a"]) - mean_a).abs() < 1e-12);
    let cal = &m["calibration"];
    assert_eq!(cal["reliability"].as_array().unwrap().len(), 15);
    assert!(f(&cal["brier"]) > 0.0 && f(&cal["ece_equal_width"]) > 0.0);
    assert_eq!(m["predictions"]["model"], "model-a");
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    for want in ["A vs B", "bootstrap interval", "Reliability", "Confidence", "perfect calibration"] {
        assert!(html.contains(want), "report lacks {want}");
    }
}

/// VLMEvalKit multiple choice (vanilla and circular) and MME's calculation.py.
#[test]
fn multiple_choice_and_mme() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    ok_in(&fixtures(), &["eval", "--predictions", "choice.tsv", "--allow-missing", "-o", out]);
    let m = read_json(&tmp.path().join("metrics.json"));
    let want = reference("choice.json");
    assert_eq!(f(&metric(&m, "mc_acc")["value"]), f(&want["vanilla_report"]["Overall"]));
    assert_eq!(f(&metric(&m, "mmbench")["value"]), f(&want["circular_report"]["Overall"]));
    for g in metric(&m, "mmbench")["groups"].as_array().unwrap() {
        assert_eq!(f(&g["value"]), f(&want["circular_report"][g["name"].as_str().unwrap()]), "{g}");
    }
    ok_in(&fixtures(), &["eval", "--predictions", "mme", "--allow-missing", "-o", out]);
    let m = read_json(&tmp.path().join("metrics.json"));
    let want = reference("mme.json");
    let mme = metric(&m, "mme");
    assert_eq!(f(&mme["parts"][0]["value"]), f(&want["perception"]));
    assert_eq!(f(&mme["parts"][1]["value"]), f(&want["cognition"]));
    for g in mme["groups"].as_array().unwrap() {
        assert_eq!(f(&g["value"]), f(&want["task_scores"][g["name"].as_str().unwrap()]), "{g}");
    }
}

/// Text from the data is escaped everywhere in the HTML, plots included.
#[test]
fn report_escapes_markup_in_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("refs.jsonl"),
        "{\"id\": 1, \"question\": \"<img src=x onerror=alert(1)>?\", \"answers\": [\"</td><b>x\"], \"answer_type\": \"<script>t</script>\"}\n{\"id\": 2, \"question\": \"ok?\", \"answers\": [\"y\"], \"answer_type\": \"other\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("preds.jsonl"),
        "{\"id\": 1, \"answer\": \"<script>alert('x')</script>\", \"confidence\": 0.9}\n{\"id\": 2, \"answer\": \"y\", \"confidence\": 0.6}\n",
    )
    .unwrap();
    ok_in(d, &["eval", "-p", "preds.jsonl", "-r", "refs.jsonl", "-o", "out"]);
    let html = std::fs::read_to_string(d.join("out/report.html")).unwrap();
    assert!(!html.contains("<script"), "unescaped script tag");
    assert!(!html.contains("<img src=x"), "unescaped img tag");
    assert!(!html.contains("</td><b>x"), "unescaped reference");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("&lt;script&gt;t&lt;/script&gt;"), "escaped inside the SVG plot too");
}

/// References from a project version: its trusted labels are the truth.
#[tokio::test(flavor = "multi_thread")]
async fn references_from_a_project_version() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pool = common::images(&d.join("imgs"), 4);
    let mut text = String::new();
    for (i, a) in ["red", "two", "a cat", "left"].iter().enumerate() {
        let row = serde_json::json!({
            "id": format!("q{i}"),
            "messages": [{"role": "user", "content": format!("<image>Question {i}?")}, {"role": "assistant", "content": a}],
            "images": [format!("imgs/{}", pool[i])],
        });
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(d.join("data.jsonl"), text).unwrap();
    let project = d.join("proj");
    let store = common::new_project(&project).await;
    common::import(&store, &d.join("data.jsonl"), None).await.unwrap();
    store.close();
    common::ok(&["commit", project.to_str().unwrap(), "-m", "v1"]);
    std::fs::write(
        d.join("p.jsonl"),
        "{\"id\": \"q0\", \"answer\": \"Red\"}\n{\"id\": \"q1\", \"answer\": \"2\"}\n{\"id\": \"q2\", \"answer\": \"cat\"}\n{\"id\": \"q3\", \"answer\": \"left\"}\n",
    )
    .unwrap();
    let out = d.join("out");
    common::ok(&[
        "eval",
        "-p",
        d.join("p.jsonl").to_str().unwrap(),
        "--references",
        project.to_str().unwrap(),
        "--version",
        "v1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let m = read_json(&out.join("metrics.json"));
    assert_eq!(f(&metric(&m, "exact_match")["value"]), 75.0);
    assert!(m["references"]["version"].as_str().unwrap().starts_with("v1 ("));
    assert_eq!(m["references"]["format"], "project");
    // Project images resolve, so the worst items show them.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("data:image/jpeg;base64,"));
}

/// METEOR 1.5 through the jar of the pycocoevalcap in tools/.venv-metrics, when Java and
/// that venv are there (skips otherwise): the corpus and per-image scores of pycocoevalcap.
#[test]
fn meteor_through_the_jar_matches_pycocoevalcap() {
    let Some(jar) = std::fs::read_dir(root().join("tools/.venv-metrics/lib"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("site-packages/pycocoevalcap/meteor/meteor-1.5.jar"))
        .filter(|j| j.is_file())
    else {
        eprintln!("skipped: no pycocoevalcap in tools/.venv-metrics");
        return;
    };
    if std::process::Command::new("java").arg("-version").output().is_err() {
        eprintln!("skipped: java not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    ok_in(
        &fixtures(),
        &[
            "eval",
            "-p",
            "captions_results.json",
            "-r",
            "captions_refs.json",
            "--metrics",
            "meteor",
            "--meteor-jar",
            jar.to_str().unwrap(),
            "--allow-missing",
            "-o",
            out,
        ],
    );
    let m = read_json(&tmp.path().join("metrics.json"));
    let want = &reference("captions.json")["corpora"]["mixed"]["scores"];
    assert_eq!(f(&metric(&m, "meteor")["value"]), f(&want["METEOR"]));
    for (i, it) in m["items"].as_array().unwrap().iter().enumerate() {
        assert_eq!(f(&it["scores"]["meteor"]), f(&want["METEOR_per_image"][i]), "image {i}");
    }
}

#[test]
fn missing_ids_fail_with_a_hint_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("refs.jsonl"), "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"b\"}\n").unwrap();
    std::fs::write(d.join("preds.jsonl"), "{\"id\": 1, \"answer\": \"a\"}\n").unwrap();
    let out = run_in(d, &["eval", "-p", "preds.jsonl", "-r", "refs.jsonl", "-o", "out"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("1 references have no prediction in preds.jsonl (first: id 2 at refs.jsonl:2)"), "{err}");
    assert!(err.contains("hint: pass --allow-missing"), "{err}");
    let stdout = ok_in(d, &["eval", "-p", "preds.jsonl", "-r", "refs.jsonl", "-o", "out", "--allow-missing"]);
    assert!(stdout.contains("1 items scored (vqa task); 1 references without prediction"), "{stdout}");
    let m = read_json(&d.join("out/metrics.json"));
    assert_eq!(m["missing"]["references_without_prediction"][0]["id"], "2");
}
