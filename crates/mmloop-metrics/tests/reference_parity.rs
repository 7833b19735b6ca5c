//! Parity of the non-caption metrics with their reference implementations, on the
//! fixtures written by `tools/metrics_reference/metrics_reference.sh` (each fixture names its reference,
//! version and Python). Every number must be bit-identical; the 1e-9 bound of the project's
//! parity rule is reported by the failure message but not relied on.

use mmloop_metrics::agreement::krippendorff_alpha_nominal;
use mmloop_metrics::calibration::{Binning, bin_edges, brier_score, expected_calibration_error, reliability_bins};
use mmloop_metrics::choice::{ChoiceItem, MmeQuestion, choice_accuracy, circular_accuracy, mme_scores};
use mmloop_metrics::compare::{BootstrapOptions, paired_bootstrap};
use mmloop_metrics::text::{ANLS_THRESHOLD, evaluate_anls, evaluate_squad};
use mmloop_metrics::vqa::{LmmsEvalTask, VqaQuestion, VqaVariant, evaluate_vqa};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/../../tests/fixtures/metrics/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Collects mismatches so that one failure shows them all.
#[derive(Default)]
struct Parity {
    checked: usize,
    max_abs: f64,
    failures: Vec<String>,
}

impl Parity {
    fn eq(&mut self, what: impl std::fmt::Display, got: f64, want: f64) {
        self.checked += 1;
        let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) || got == want;
        if !same {
            let d = (got - want).abs();
            self.max_abs = self.max_abs.max(d);
            self.failures.push(format!("{what}: rust {got:?} reference {want:?} (diff {d:e})"));
        }
    }

    fn finish(self, name: &str) {
        assert!(self.checked > 0, "{name}: nothing checked");
        assert!(
            self.failures.is_empty(),
            "{name}: {} of {} values differ (max |diff| {:e}):\n{}",
            self.failures.len(),
            self.checked,
            self.max_abs,
            self.failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

fn vqa_parity(file: &str, variant: VqaVariant) {
    let fx = fixture(file);
    let qs = fx["questions"].as_array().unwrap();
    let answers: Vec<Vec<String>> = qs.iter().map(|q| strings(&q["answers"])).collect();
    let questions = qs.iter().zip(&answers).map(|(q, a)| VqaQuestion {
        prediction: q["prediction"].as_str().unwrap(),
        answers: a.as_slice(),
        question_type: q["question_type"].as_str(),
        answer_type: q["answer_type"].as_str(),
    });
    let report = evaluate_vqa(questions, variant).unwrap();
    let mut p = Parity::default();
    for (i, q) in qs.iter().enumerate() {
        let id = &q["question_id"];
        p.eq(
            format_args!("q{id} accuracy {:?} vs {:?}", q["prediction"], q["answers"]),
            report.accuracy[i],
            f(&q["accuracy"]),
        );
        p.eq(format_args!("q{id} per_item"), report.per_item[i], f(&q["per_item"]));
    }
    p.eq("overall", report.overall, f(&fx["overall"]));
    for (key, got) in [("per_question_type", &report.per_question_type), ("per_answer_type", &report.per_answer_type)] {
        if let Some(want) = fx.get(key).and_then(Value::as_object) {
            assert_eq!(got.len(), want.len(), "{key}");
            for (name, value) in got {
                p.eq(format_args!("{key} {name}"), *value, f(&want[name]));
            }
        }
    }
    p.finish(file);
}

/// GT-Vision-Lab/VQA vqaEval.py master a013f00, CPython 3.11.
#[test]
fn vqa_official_a013f00() {
    vqa_parity("vqa_official.json", VqaVariant::Official);
}

/// lmms-eval 0.7.3 vqav2_process_results + mean aggregation, CPython 3.11.
#[test]
fn vqa_lmms_eval_0_7_3_vqav2() {
    vqa_parity("vqa_lmms_eval_vqav2.json", VqaVariant::LmmsEval(LmmsEvalTask::VqaV2));
}

/// lmms-eval 0.7.3 textvqa_process_results + mean aggregation, CPython 3.11.
#[test]
fn vqa_lmms_eval_0_7_3_textvqa() {
    vqa_parity("vqa_lmms_eval_textvqa.json", VqaVariant::LmmsEval(LmmsEvalTask::TextVqa));
}

/// ms-vlmeval 0.0.20 (VLMEvalKit) process_line + hit_calculate, numpy 2.4.6.
#[test]
fn vqa_vlmevalkit_ms_vlmeval_0_0_20() {
    vqa_parity("vqa_vlmevalkit.json", VqaVariant::VlmEvalKit);
}

fn text_items(fx: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let items = fx["items"].as_array().unwrap();
    (
        items.iter().map(|it| it["prediction"].as_str().unwrap().to_string()).collect(),
        items.iter().map(|it| strings(&it["answers"])).collect(),
    )
}

/// Official SQuAD v1.1 evaluate-v1.1.py.
#[test]
fn squad_v1_1_exact_match_and_f1() {
    let fx = fixture("squad.json");
    let (preds, answers) = text_items(&fx);
    let report = evaluate_squad(preds.iter().map(String::as_str).zip(answers.iter().map(Vec::as_slice)));
    let mut p = Parity::default();
    for (i, it) in fx["items"].as_array().unwrap().iter().enumerate() {
        p.eq(
            format_args!("{i} em {:?} vs {:?}", it["prediction"], it["answers"]),
            report.exact_match[i],
            f(&it["exact_match"]),
        );
        p.eq(format_args!("{i} f1 {:?} vs {:?}", it["prediction"], it["answers"]), report.f1[i], f(&it["f1"]));
    }
    p.eq("exact_match", report.exact_match_percent, f(&fx["exact_match"]));
    p.eq("f1", report.f1_percent, f(&fx["f1"]));
    p.finish("squad.json");
}

/// lmms-eval 0.7.3 `anls` (DocVQA/InfographicVQA evaluate_method), threshold 0.5.
#[test]
fn anls_docvqa_official() {
    let fx = fixture("anls.json");
    let (preds, answers) = text_items(&fx);
    let report = evaluate_anls(preds.iter().map(String::as_str).zip(answers.iter().map(Vec::as_slice)), ANLS_THRESHOLD);
    let mut p = Parity::default();
    for (i, it) in fx["items"].as_array().unwrap().iter().enumerate() {
        p.eq(
            format_args!("{i} anls {:?} vs {:?}", it["prediction"], it["answers"]),
            report.per_item[i],
            f(&it["anls"]),
        );
    }
    p.eq("score", report.score, f(&fx["score"]));
    p.finish("anls.json");
}

/// ms-vlmeval 0.0.20 can_infer, eval_vanilla, mcq_circular_eval (no judge), report_acc.
#[test]
fn choice_vlmevalkit_ms_vlmeval_0_0_20() {
    let fx = fixture("choice.json");
    let rows = fx["rows"].as_array().unwrap();
    let items: Vec<ChoiceItem<'_>> = rows
        .iter()
        .map(|r| ChoiceItem {
            index: r["index"].as_u64().unwrap(),
            prediction: r["prediction"].as_str().unwrap(),
            choices: ('A'..='Z')
                .filter_map(|c| r.get(c.to_string().as_str()).and_then(Value::as_str).map(|t| (c, t)))
                .collect(),
            answer: r["answer"].as_str().unwrap().chars().next().unwrap(),
            category: r["category"].as_str(),
            l2_category: r["l2-category"].as_str(),
        })
        .collect();
    let mut p = Parity::default();
    for (it, r) in items.iter().zip(rows) {
        let got = mmloop_metrics::choice::can_infer(it.prediction, &it.choices).letter().map(String::from);
        let want = r["can_infer"].as_str().map(String::from);
        p.eq(
            format_args!("can_infer {:?} {:?}: {got:?} vs {want:?}", it.prediction, it.choices),
            f64::from(u8::from(got == want)),
            1.0,
        );
    }
    let vanilla = choice_accuracy(&items);
    for ((_, hit), want) in vanilla.hits.iter().zip(fx["vanilla_hits"].as_array().unwrap()) {
        p.eq("vanilla hit", f64::from(u8::from(*hit)), f(want));
    }
    let circular = circular_accuracy(&items);
    let want_hits = fx["circular_hits"].as_object().unwrap();
    assert_eq!(circular.hits.len(), want_hits.len());
    for (index, hit) in &circular.hits {
        p.eq(format_args!("circular hit {index}"), f64::from(u8::from(*hit)), f(&want_hits[&index.to_string()]));
    }
    for (report, key) in [(&vanilla, "vanilla_report"), (&circular, "circular_report")] {
        let want = fx[key].as_object().unwrap();
        p.eq(format_args!("{key} Overall"), report.overall, f(&want["Overall"]));
        assert_eq!(report.groups.len() + 1, want.len(), "{key} groups");
        for (name, value) in &report.groups {
            p.eq(format_args!("{key} {name}"), *value, f(&want[name]));
        }
    }
    p.finish("choice.json");
}

/// MME eval_tool calculation.py.
#[test]
fn mme_official_calculation() {
    let fx = fixture("mme.json");
    let rows = fx["rows"].as_array().unwrap();
    let questions: Vec<MmeQuestion<'_>> = rows
        .iter()
        .map(|r| MmeQuestion {
            task: r["task"].as_str().unwrap(),
            answer: r["answer"].as_str().unwrap(),
            prediction: r["prediction"].as_str().unwrap(),
        })
        .collect();
    let report = mme_scores(&questions).unwrap();
    let mut p = Parity::default();
    for t in &report.tasks {
        p.eq(format_args!("{} score", t.task), t.score, f(&fx["task_scores"][&t.task]));
        p.eq(format_args!("{} acc", t.task), t.acc, f(&fx["task_acc"][&t.task]));
    }
    p.eq("perception", report.perception, f(&fx["perception"]));
    p.eq("cognition", report.cognition, f(&fx["cognition"]));
    p.finish("mme.json");
}

/// krippendorff 0.9.0, nominal.
#[test]
fn krippendorff_0_9_0_nominal() {
    let fx = fixture("krippendorff.json");
    let mut p = Parity::default();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rows = case["ratings"].as_array().unwrap();
        let got = if rows.iter().flat_map(|r| r.as_array().unwrap()).any(Value::is_string) {
            let data: Vec<Vec<Option<String>>> = rows
                .iter()
                .map(|r| r.as_array().unwrap().iter().map(|v| v.as_str().map(String::from)).collect())
                .collect();
            krippendorff_alpha_nominal(&data)
        } else {
            let data: Vec<Vec<Option<i64>>> =
                rows.iter().map(|r| r.as_array().unwrap().iter().map(Value::as_i64).collect()).collect();
            krippendorff_alpha_nominal(&data)
        };
        match (got, case["alpha"].as_f64()) {
            (Ok(a), Some(want)) => p.eq(name, a, want),
            (Err(_), None) => p.eq(name, 0.0, 0.0),
            (got, want) => p.failures.push(format!("{name}: rust {got:?} reference {want:?}")),
        }
    }
    p.finish("krippendorff.json");
}

/// scikit-learn 1.9.1 calibration_curve / brier_score_loss.
#[test]
fn calibration_sklearn_1_9_1() {
    let fx = fixture("calibration.json");
    let mut p = Parity::default();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let conf: Vec<f64> = case["confidence"].as_array().unwrap().iter().map(f).collect();
        let ok: Vec<bool> = case["correct"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        for b in case["bins"].as_array().unwrap() {
            let binning = match b["strategy"].as_str().unwrap() {
                "uniform" => Binning::EqualWidth,
                _ => Binning::EqualMass,
            };
            let n = b["n_bins"].as_u64().unwrap() as usize;
            let tag = format!("{name} {} {n}", b["strategy"]);
            for (i, (got, want)) in bin_edges(&conf, n, binning).iter().zip(b["edges"].as_array().unwrap()).enumerate()
            {
                p.eq(format_args!("{tag} edge {i}"), *got, f(want));
            }
            let bins = reliability_bins(&conf, &ok, n, binning).unwrap();
            let counts: Vec<u64> = b["counts"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(bins.iter().map(|x| x.count as u64).collect::<Vec<_>>(), counts, "{tag} counts");
            let nonempty: Vec<_> = bins.iter().filter(|x| x.count > 0).collect();
            for (i, bin) in nonempty.iter().enumerate() {
                p.eq(format_args!("{tag} prob_true {i}"), bin.accuracy, f(&b["prob_true"][i]));
                p.eq(format_args!("{tag} prob_pred {i}"), bin.mean_confidence, f(&b["prob_pred"][i]));
            }
            p.eq(format_args!("{tag} ece"), expected_calibration_error(&conf, &ok, n, binning).unwrap(), f(&b["ece"]));
        }
        let brier = brier_score(&conf, &ok).unwrap();
        p.eq(format_args!("{name} brier (numpy)"), brier, f(&case["brier_numpy"]));
        p.eq(format_args!("{name} brier (sklearn)"), brier, f(&case["brier_sklearn"]));
    }
    p.finish("calibration.json");
}

/// The documented paired bootstrap, re-implemented in Python from compare.rs's doc.
#[test]
fn paired_bootstrap_matches_documented_procedure() {
    let fx = fixture("bootstrap.json");
    let mut p = Parity::default();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let a: Vec<f64> = case["a"].as_array().unwrap().iter().map(f).collect();
        let b: Vec<f64> = case["b"].as_array().unwrap().iter().map(f).collect();
        let opts = BootstrapOptions {
            resamples: case["resamples"].as_u64().unwrap() as usize,
            alpha: f(&case["alpha"]),
            seed: case["seed"].as_u64().unwrap(),
        };
        let r = paired_bootstrap(&a, &b, opts).unwrap();
        for (key, got) in [
            ("mean_a", r.mean_a),
            ("mean_b", r.mean_b),
            ("delta", r.delta),
            ("ci_low", r.ci_low),
            ("ci_high", r.ci_high),
            ("p_value", r.p_value),
        ] {
            p.eq(format_args!("{name} {key}"), got, f(&case[key]));
        }
    }
    p.finish("bootstrap.json");
}
