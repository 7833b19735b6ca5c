//! Readers of predictions and references, one test per format, and every bad-input case
//! with the file and line it must name.

use std::path::{Path, PathBuf};

use mmloop_eval::{EvalError, EvalOptions, EvalTask, Metric, RefOptions, evaluate, read_predictions, read_references};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_text<T: std::fmt::Debug>(r: Result<T, EvalError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn coco_caption_results_and_annotations() {
    let d = tempfile::tempdir().unwrap();
    let refs = write(
        d.path(),
        "captions_val.json",
        r#"{"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}],
 "annotations": [
  {"id": 1, "image_id": 3, "caption": "a dog on grass"},
  {"id": 2, "image_id": 7, "caption": "a cat on a mat"},
  {"id": 3, "image_id": 7, "caption": "a small cat"}
 ]}"#,
    );
    let preds = write(
        d.path(),
        "res.json",
        "[\n{\"image_id\": 3, \"caption\": \"a dog\"},\n{\"image_id\": 7, \"caption\": \"a cat\"}\n]",
    );
    let r = read_references(&refs, &RefOptions::default()).unwrap();
    assert_eq!(r.task, EvalTask::Caption);
    assert_eq!(r.format, "coco");
    // pycocoevalcap's order: the `images` list of the annotation file.
    let ids: Vec<&str> = r.items.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["7", "3"]);
    assert_eq!(r.items[0].answers, ["a cat on a mat", "a small cat"]);
    let p = read_predictions(&preds).unwrap();
    assert_eq!(p.format, "coco-results");
    assert_eq!(p.items[1].id, "7");
    assert_eq!(p.items[1].at.to_string(), format!("{}:3", preds.display()));
    let opts = EvalOptions { metrics: Some(vec![Metric::Bleu, Metric::Cider]), ..Default::default() };
    let ev = evaluate(&p, &r, None, &opts).unwrap();
    assert_eq!(ev.scored, 2);
    assert_eq!(ev.items[0].id, "7");
}

const QUESTIONS: &str = r#"{"data_subtype": "val2014", "questions": [
 {"question_id": 11, "image_id": 1, "question": "What color?"},
 {"question_id": 12, "image_id": 1, "question": "How many?"}
]}"#;

fn annotations(extra: &str) -> String {
    let ten = |a: &str| {
        (1..=10)
            .map(|i| format!(r#"{{"answer_id": {i}, "answer": "{a}", "answer_confidence": "yes"}}"#))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"{{"annotations": [
 {{"question_id": 11, "image_id": 1, "question_type": "what color", "answer_type": "other", "multiple_choice_answer": "red", "answers": [{}]}},
 {{"question_id": 12, "image_id": 1, "question_type": "how many", "answer_type": "number", "multiple_choice_answer": "2", "answers": [{}]}}{extra}
]}}"#,
        ten("red"),
        ten("2")
    )
}

#[test]
fn vqa_results_against_vqav2_questions_and_annotations() {
    let d = tempfile::tempdir().unwrap();
    let q = write(d.path(), "v2_OpenEnded_mscoco_val2014_questions.json", QUESTIONS);
    write(d.path(), "v2_mscoco_val2014_annotations.json", &annotations(""));
    let preds =
        write(d.path(), "res.json", r#"[{"question_id": 11, "answer": "red"}, {"question_id": 12, "answer": "3"}]"#);
    let r = read_references(&q, &RefOptions::default()).unwrap();
    assert_eq!((r.task, r.format.as_str()), (EvalTask::Vqa, "vqav2"));
    assert_eq!(r.items[0].answers.len(), 10);
    assert_eq!(r.items[1].question_type.as_deref(), Some("how many"));
    assert_eq!(r.items[1].answer_type.as_deref(), Some("number"));
    let p = read_predictions(&preds).unwrap();
    assert_eq!(p.format, "vqa-results");
    let ev = evaluate(&p, &r, None, &EvalOptions::default()).unwrap();
    let acc = ev.metrics.iter().find(|m| m.metric.name() == "vqa_acc").unwrap();
    assert_eq!(acc.value, 50.0);
    assert!(acc.groups.iter().any(|g| g.kind == "answer_type" && g.name == "number" && g.value == 0.0));
}

#[test]
fn vqav2_annotations_alone() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "ann.json", &annotations(""));
    let r = read_references(&a, &RefOptions::default()).unwrap();
    assert_eq!(r.format, "vqav2-annotations");
    assert_eq!(r.items.len(), 2);
    assert_eq!(r.items[0].question_type.as_deref(), Some("what color"));
    assert_eq!(r.items[1].at.line, Some(3));
}

#[test]
fn textvqa_references() {
    let d = tempfile::tempdir().unwrap();
    let t = write(
        d.path(),
        "TextVQA_0.5.1_val.json",
        r#"{"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
 {"question_id": 5, "question": "what brand?", "image_id": "abc", "answers": ["nokia","nokia","nokia","nokia","nokia","nokia","nokia","nokia","nokia","nokia"], "set_name": "val"}
]}"#,
    );
    let r = read_references(&t, &RefOptions::default()).unwrap();
    assert_eq!((r.task, r.format.as_str(), r.items[0].id.as_str()), (EvalTask::Vqa, "textvqa", "5"));
    assert_eq!(r.items[0].answers.len(), 10);
}

#[test]
fn jsonl_predictions_with_confidence_and_model() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "p.jsonl",
        "{\"id\": \"q1\", \"answer\": \"red\", \"confidence\": 0.9, \"model\": \"qwen2-vl\"}\n\n{\"id\": 2, \"answer\": 3, \"confidence\": 0.2}\n",
    );
    let p = read_predictions(&p).unwrap();
    assert_eq!((p.format, p.model.as_deref()), ("jsonl", Some("qwen2-vl")));
    assert_eq!(p.items[1].id, "2");
    assert_eq!(p.items[1].answer, "3");
    assert_eq!(p.items[1].confidence, Some(0.2));
    assert_eq!(p.items[1].at.line, Some(3));
}

#[test]
fn swift_llava_and_mmloop_infer_outputs() {
    let d = tempfile::tempdir().unwrap();
    let swift = write(
        d.path(),
        "swift.jsonl",
        concat!(
            r#"{"response": "a cat", "labels": "a cat", "messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "a cat"}], "images": ["x.jpg"]}"#,
            "\n",
            r#"{"response": "two", "messages": [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": "2"}]}"#,
            "\n"
        ),
    );
    let p = read_predictions(&swift).unwrap();
    assert_eq!(p.format, "swift-infer");
    let refs = p.inline_references().expect("labels and messages carry the references");
    assert_eq!(refs.items[0].answers, ["a cat"]);
    assert_eq!(refs.items[1].answers, ["2"]);
    assert_eq!(p.items[1].id, "2");

    let llava = write(
        d.path(),
        "llava.jsonl",
        r#"{"question_id": 7, "prompt": "What?", "text": "red", "answer_id": "x", "model_id": "llava-v1.5-7b", "metadata": {}}"#,
    );
    let p = read_predictions(&llava).unwrap();
    assert_eq!(
        (p.format, p.model.as_deref(), p.items[0].answer.as_str()),
        ("llava-infer", Some("llava-v1.5-7b"), "red")
    );
    assert!(p.inline_references().is_none());

    let ours = write(d.path(), "infer.jsonl", r#"{"id": "17", "response": "blue", "confidence": 0.61}"#);
    let p = read_predictions(&ours).unwrap();
    assert_eq!((p.format, p.items[0].id.as_str(), p.items[0].confidence), ("mmloop-infer", "17", Some(0.61)));
}

#[test]
fn multiple_choice_tables_and_rows() {
    let d = tempfile::tempdir().unwrap();
    let t = write(
        d.path(),
        "mmb.tsv",
        "index\tquestion\tA\tB\tC\tanswer\tcategory\tl2-category\tprediction\n1\tWhere?\tleft\tright\t\tB\tspatial\tLR\tB\n1000001\tWhere?\tright\tleft\t\tA\tspatial\tLR\tThe answer is A\n",
    );
    let p = read_predictions(&t).unwrap();
    assert_eq!(p.format, "choice-table");
    let refs = p.inline_references().unwrap();
    assert_eq!(refs.task, EvalTask::Choice);
    assert_eq!(refs.items[0].choices, [('A', "left".to_string()), ('B', "right".to_string())]);
    let ev = evaluate(&p, &refs, None, &EvalOptions::default()).unwrap();
    let names: Vec<&str> = ev.metrics.iter().map(|m| m.metric.name()).collect();
    assert_eq!(names, ["mc_acc", "mmbench"]);
    assert_eq!(ev.metrics[1].value, 1.0);

    let rows =
        write(d.path(), "mc.jsonl", r#"{"id": 1, "question": "Color?", "options": ["red", "blue"], "answer": "B"}"#);
    let r = read_references(&rows, &RefOptions::default()).unwrap();
    assert_eq!(r.task, EvalTask::Choice);
    let bad = write(d.path(), "mc_bad.jsonl", "{\"id\": 1, \"options\": [\"red\", \"blue\"], \"answer\": \"blue\"}\n");
    let e = err_text(read_references(&bad, &RefOptions::default()));
    assert!(e.contains("mc_bad.jsonl:1") && e.contains("not one of the option letters"), "{e}");
}

#[test]
fn mme_result_files() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "existence.txt", "a.jpg\tIs there a cat?\tYes\tyes\na.jpg\tIs there a dog?\tNo\tYes, there is\n");
    write(d.path(), "count.txt", "b.jpg\tTwo cats?\tYes\tno\nb.jpg\tThree cats?\tNo\tno\n");
    let p = read_predictions(d.path()).unwrap();
    assert_eq!((p.format, p.items.len()), ("mme", 4));
    let refs = p.inline_references().unwrap();
    let ev = evaluate(&p, &refs, None, &EvalOptions::default()).unwrap();
    let mme = &ev.metrics[0];
    assert_eq!(mme.metric.name(), "mme");
    // existence: acc 0.5, acc+ 0 -> 50; count: acc 0.5, acc+ 0 -> 50.
    assert_eq!(mme.parts[0].value, 100.0);
    let bad = write(d.path(), "color.txt", "c.jpg\tRed?\tYes\n");
    let e = err_text(read_predictions(&bad));
    assert!(e.contains("not a predictions file") || e.contains("color.txt:1"), "{e}");
}

#[test]
fn plain_reference_rows() {
    let d = tempfile::tempdir().unwrap();
    let r = write(
        d.path(),
        "refs.jsonl",
        "{\"id\": 1, \"answers\": [\"red\", \"dark red\"]}\n{\"id\": 2, \"answer\": \"2\"}\n",
    );
    let r = read_references(&r, &RefOptions::default()).unwrap();
    assert_eq!((r.task, r.format.as_str()), (EvalTask::Vqa, "rows"));
    assert_eq!(r.items[1].answers, ["2"]);
    let p = write(d.path(), "p.jsonl", "{\"id\": 1, \"answer\": \"Red\"}\n{\"id\": 2, \"answer\": \"two\"}\n");
    let p = read_predictions(&p).unwrap();
    let ev = evaluate(&p, &r, None, &EvalOptions::default()).unwrap();
    // One answer per question: VQA accuracy would always be 0, so the default skips it.
    let names: Vec<&str> = ev.metrics.iter().map(|m| m.metric.name()).collect();
    assert_eq!(names, ["exact_match", "f1", "anls"]);
    assert_eq!(ev.metrics[0].value, 50.0);
}

// ---- bad input: each names the file and line ----

#[test]
fn missing_ids_on_either_side_and_allow_missing() {
    let d = tempfile::tempdir().unwrap();
    let r = write(
        d.path(),
        "refs.jsonl",
        "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"b\"}\n{\"id\": 3, \"answer\": \"c\"}\n",
    );
    let p = write(d.path(), "p.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 9, \"answer\": \"z\"}\n");
    let refs = read_references(&r, &RefOptions::default()).unwrap();
    let preds = read_predictions(&p).unwrap();
    let e = err_text(evaluate(&preds, &refs, None, &EvalOptions::default()));
    assert!(
        e.contains("2 references have no prediction") && e.contains("id 2 at ") && e.contains("refs.jsonl:2"),
        "{e}"
    );
    assert!(e.contains("--allow-missing"), "{e}");
    // Only the predictions side missing.
    let p2 = write(
        d.path(),
        "p2.jsonl",
        "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"b\"}\n{\"id\": 3, \"answer\": \"c\"}\n{\"id\": 4, \"answer\": \"d\"}\n",
    );
    let e = err_text(evaluate(&read_predictions(&p2).unwrap(), &refs, None, &EvalOptions::default()));
    assert!(e.contains("1 predictions have no reference") && e.contains("p2.jsonl:4"), "{e}");

    let opts = EvalOptions { allow_missing: true, ..Default::default() };
    let ev = evaluate(&preds, &refs, None, &opts).unwrap();
    assert_eq!(ev.scored, 1);
    assert_eq!(ev.missing.references_without_prediction.len(), 2);
    assert_eq!(ev.missing.predictions_without_reference[0].id, "9");
    assert_eq!(ev.missing.predictions_without_reference[0].at, format!("{}:2", p.display()));
}

#[test]
fn duplicate_ids() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "p.jsonl",
        "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"b\"}\n{\"id\": 1, \"answer\": \"c\"}\n",
    );
    let e = err_text(read_predictions(&p));
    assert!(e.contains("p.jsonl:3") && e.contains("duplicate prediction for id 1") && e.contains("p.jsonl:1"), "{e}");
    let r = write(
        d.path(),
        "r.json",
        "[\n{\"question_id\": 5, \"answers\": [\"x\"]},\n{\"question_id\": 5, \"answers\": [\"y\"]}\n]",
    );
    let e = err_text(read_references(&r, &RefOptions::default()));
    assert!(e.contains("r.json:3") && e.contains("duplicate reference id 5"), "{e}");
}

#[test]
fn empty_predictions() {
    let d = tempfile::tempdir().unwrap();
    let r = write(d.path(), "r.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"b\"}\n");
    let p = write(d.path(), "p.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"  \"}\n");
    let refs = read_references(&r, &RefOptions::default()).unwrap();
    let preds = read_predictions(&p).unwrap();
    // Scored as given (a wrong answer), as the official scripts do, and listed; no flag needed.
    let ev = evaluate(&preds, &refs, None, &EvalOptions::default()).unwrap();
    assert_eq!(ev.missing.empty_predictions[0].id, "2");
    assert_eq!(ev.missing.empty_predictions[0].at, format!("{}:2", p.display()));
    assert_eq!(ev.scored, 2);
    // Missing ids stay an error.
    let short = write(d.path(), "short.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n");
    let e = err_text(evaluate(&read_predictions(&short).unwrap(), &refs, None, &EvalOptions::default()));
    assert!(e.contains("references have no prediction"), "{e}");
    // An empty file.
    let empty = write(d.path(), "empty.jsonl", "\n  \n");
    let e = err_text(read_predictions(&empty));
    assert!(e.contains("empty.jsonl") && e.contains("the file is empty"), "{e}");
}

#[test]
fn non_utf8_names_the_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.jsonl");
    std::fs::write(&p, b"{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \"\xff\xfe\"}\n").unwrap();
    let e = err_text(read_predictions(&p));
    assert!(e.contains("p.jsonl:2") && e.contains("not valid UTF-8") && e.contains("iconv"), "{e}");
    let r = d.path().join("r.json");
    std::fs::write(&r, b"[\n{\"id\": 1,\n \"answer\": \"\xe9t\xe9\"}]").unwrap();
    let e = err_text(read_references(&r, &RefOptions::default()));
    assert!(e.contains("r.json:3") && e.contains("not valid UTF-8"), "{e}");
}

#[test]
fn wrong_formats() {
    let d = tempfile::tempdir().unwrap();
    let t = write(d.path(), "p.json", "hello world\n");
    let e = err_text(read_predictions(&t));
    assert!(e.contains("p.json:1") && e.contains("not a predictions file"), "{e}");
    let bad_line = write(d.path(), "p.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n{\"id\": 2, \"answer\": \n");
    let e = err_text(read_predictions(&bad_line));
    assert!(e.contains("p.jsonl:2") && e.contains("malformed JSON"), "{e}");
    let no_answer = write(d.path(), "q.jsonl", "{\"id\": 1, \"result\": \"a\"}\n");
    let e = err_text(read_predictions(&no_answer));
    assert!(e.contains("q.jsonl:1") && e.contains("no answer field"), "{e}");
    let no_id = write(d.path(), "n.jsonl", "{\"answer\": \"a\"}\n");
    let e = err_text(read_predictions(&no_id));
    assert!(e.contains("n.jsonl:1") && e.contains("without an id"), "{e}");
    let conf = write(d.path(), "c.jsonl", "{\"id\": 1, \"answer\": \"a\", \"confidence\": 7.5}\n");
    let e = err_text(read_predictions(&conf));
    assert!(e.contains("c.jsonl:1") && e.contains("probability"), "{e}");
    let array_of_strings = write(d.path(), "s.json", "[\n\"a\",\n\"b\"]");
    let e = err_text(read_predictions(&array_of_strings));
    assert!(e.contains("s.json:2") && e.contains("expected a JSON object"), "{e}");
    // A caption metric on VQA references.
    let r = write(d.path(), "r.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n");
    let refs = read_references(&r, &RefOptions::default()).unwrap();
    let preds = read_predictions(&write(d.path(), "ok.jsonl", "{\"id\": 1, \"answer\": \"a\"}\n")).unwrap();
    let opts = EvalOptions { metrics: Some(vec![Metric::Cider]), ..Default::default() };
    let e = err_text(evaluate(&preds, &refs, None, &opts));
    assert!(e.contains("`cider` does not apply to vqa") && e.contains("hint"), "{e}");
}

#[test]
fn meteor_without_the_jar_is_unavailable_not_replaced() {
    let d = tempfile::tempdir().unwrap();
    let r = write(
        d.path(),
        "r.json",
        r#"[{"image_id": 1, "caption": "a dog runs"}, {"image_id": 1, "caption": "a dog is running"}]"#,
    );
    let p = write(d.path(), "p.json", r#"[{"image_id": 1, "caption": "a dog running"}]"#);
    let refs = read_references(&r, &RefOptions::default()).unwrap();
    assert_eq!(refs.items[0].answers.len(), 2);
    let opts = EvalOptions {
        metrics: Some(vec![Metric::Meteor, Metric::Cider]),
        meteor: mmloop_eval::MeteorJar::Path(d.path().join("missing/meteor-1.5.jar")),
        ..Default::default()
    };
    let ev = evaluate(&read_predictions(&p).unwrap(), &refs, None, &opts).unwrap();
    assert!(ev.metrics.iter().all(|m| m.metric.name() != "meteor"));
    let u = &ev.unavailable[0];
    assert_eq!(u.metric.name(), "meteor");
    assert!(u.reason.contains("pip install pycocoevalcap==1.2") && !u.reason.contains('\n'), "{}", u.reason);
}
