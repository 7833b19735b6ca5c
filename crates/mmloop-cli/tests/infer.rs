//! `mmloop infer` end to end: project mode (candidates, resume, run record, a corrupt image,
//! kill -9) and file mode (swift-infer rows in order, resume, re-import) against an
//! OpenAI-compatible server on 127.0.0.1, and the embedded engine on a tiny fixture model.

mod common;

#[path = "../../mmloop-engine/tests/support/fake_openai.rs"]
mod fake_openai;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fails, ok};
use fake_openai::{FakeServer, Reply};
use serde_json::Value;

const QUESTIONS: [&str; 6] = [
    "What colour is the chair?",
    "Is the chair red?",
    "How many legs does it have?",
    "What material is it?",
    "Is it made of wood?",
    "What is behind it?",
];

/// A project with `n` items (image + question), questions cycling through QUESTIONS.
fn project(root: &Path, n: usize) -> String {
    let project = root.join("p").display().to_string();
    ok(&["init", &project]);
    let imgs = common::images(&root.join("imgs"), n);
    let mut lines = Vec::new();
    for (i, img) in imgs.iter().enumerate() {
        lines.push(
            serde_json::json!({
                "id": format!("q{i}"),
                "messages": [{"role": "user", "content": format!("<image>{}", QUESTIONS[i % QUESTIONS.len()])}],
                "images": [format!("imgs/{img}")],
            })
            .to_string(),
        );
    }
    let file = root.join("data.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    ok(&["import", &project, &file.display().to_string()]);
    project
}

/// Hedges on yes/no questions, answers "red" otherwise.
async fn server(delay_ms: u64) -> FakeServer {
    fake_openai::start(move |req, _| {
        let q = fake_openai::question(req);
        let reply = if q.starts_with("Is") { Reply::answer("maybe red", -0.7) } else { Reply::answer("red", -0.2) };
        if delay_ms > 0 { Reply::Delay(Duration::from_millis(delay_ms), Box::new(reply)) } else { reply }
    })
    .await
}

/// Runs mmloop off the async threads (the server lives on them).
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        common::mmloop(&a)
    })
    .await
    .unwrap()
}

async fn run_ok(args: &[&str]) -> Value {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.push("--json".into());
    let out = run(a).await;
    assert!(
        out.status.success(),
        "mmloop {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn db(project: &str) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        Path::new(project).join(".mmloop/mmloop.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

fn count(project: &str, sql: &str) -> i64 {
    db(project).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn project_mode_stores_candidates_resumes_and_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), 12);
    let s = server(0).await;
    let r = run_ok(&["infer", &p, "--api", &s.url, "--model", "fake-vlm"]).await;
    assert_eq!(r["answered"], 12, "{r}");
    assert_eq!(r["failed"], 0);
    // The yes/no questions get a hedged, unsure "maybe red"; "How many legs?" gets "red".
    assert_eq!(r["flagged"], 6, "{r}");
    assert_eq!(r["flags"]["hedging"], 4);
    assert_eq!(r["flags"]["not_yes_no"], 4);
    assert_eq!(r["flags"]["low_confidence"], 4);
    assert_eq!(r["flags"]["not_number"], 2);
    assert_eq!(s.requests(), 12);

    let c = db(&p);
    let (answer, conf, flags, detail, logprobs): (String, f64, String, String, String) = c
        .query_row(
            "SELECT c.answer, c.confidence,
                    (SELECT json_group_array(json_object('flag', f.flag, 'why', f.why, 'span', json_array(f.span_start, f.span_end)))
                     FROM candidate_flags f WHERE f.candidate_id = c.id),
                    c.confidence_detail, c.logprobs FROM candidates c
             JOIN items i ON i.id = c.item_id WHERE i.question LIKE '%Is the chair red?' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(answer, "maybe red");
    assert!((conf - (-0.7f64).exp()).abs() < 1e-9);
    let flags: Value = serde_json::from_str(&flags).unwrap();
    assert_eq!(flags[0]["flag"], "hedging");
    assert_eq!(flags[0]["span"], serde_json::json!([0, 5]));
    assert!(flags[0]["why"].as_str().unwrap().contains("maybe"));
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["tokens"], 2);
    assert_eq!(detail["finish_reason"], "stop");
    let logprobs: Value = serde_json::from_str(&logprobs).unwrap();
    assert_eq!(logprobs["content"][1]["token"], " red");

    // The run record keeps the whole configuration and its outcome.
    let (status, config, summary): (String, String, String) = c
        .query_row("SELECT status, config, summary FROM runs WHERE kind = 'infer'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(status, "done");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["backend"]["engine"], "openai");
    assert_eq!(config["generation"]["max_new_tokens"], 256);
    assert_eq!(config["params_hash"], r["params_hash"]);
    assert!(config["rules"]["hedging_zh"].as_array().unwrap().len() > 5);
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["answered"], 12);

    // Rules come from the project's mmloop.toml.
    let toml = Path::new(&p).join("mmloop.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[rules]\ndisable = [\"low_confidence\"]\nextra_hedging = [\"red\"]\n");
    std::fs::write(&toml, text).unwrap();
    let ruled = run_ok(&["infer", &p, "--api", &s.url, "--model", "fake-vlm", "--seed", "1", "--limit", "2"]).await;
    assert_eq!(ruled["flags"]["hedging"], 3, "\"red\" hedges now, \"maybe\" still does: {ruled}");
    assert!(ruled["flags"].get("low_confidence").is_none(), "{ruled}");

    // Same settings again: nothing to do.
    let again = run_ok(&["infer", &p, "--api", &s.url, "--model", "fake-vlm"]).await;
    assert_eq!(again["total"], 0, "{again}");
    assert_eq!(s.requests(), 14, "only the two rule-test questions were asked since");
    // Other settings are another run.
    let other =
        run_ok(&["infer", &p, "--api", &s.url, "--model", "fake-vlm", "--max-new-tokens", "8", "--limit", "5"]).await;
    assert_eq!(other["answered"], 5);
    assert_ne!(other["params_hash"], r["params_hash"]);
    assert_eq!(count(&p, "SELECT COUNT(*) FROM candidates"), 19);
    ok(&["audit", "verify", &p]);
}

/// API keys and URL credentials never reach the run record or the audit chain (which
/// every reviewer reads and nobody can edit afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn secrets_on_the_command_line_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), 2);
    let s = server(0).await;
    let url = s.url.replacen("http://", "http://bob:s3cret-pw@", 1);
    let r = run_ok(&["infer", &p, "--api", &url, "--model", "fake-vlm", "--api-key", "sk-SECRET-123"]).await;
    assert_eq!(r["answered"], 2, "{r}");
    let c = db(&p);
    let mut texts: Vec<String> = Vec::new();
    for sql in
        ["SELECT config FROM runs", "SELECT COALESCE(summary, '') FROM runs", "SELECT COALESCE(after, '') FROM events"]
    {
        let mut st = c.prepare(sql).unwrap();
        texts.extend(st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap));
    }
    let all = texts.join("\n");
    assert!(all.contains("[redacted]"), "the command line is recorded, redacted: {all}");
    for secret in ["sk-SECRET-123", "s3cret-pw"] {
        assert!(!all.contains(secret), "{secret} was recorded: {all}");
    }
    let log = common::json(&["audit", "log", &p, "-n", "100"]).to_string();
    assert!(!log.contains("sk-SECRET-123") && !log.contains("s3cret-pw"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_image_fails_its_item_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), 6);
    std::fs::write(dir.path().join("imgs/img3.png"), b"not a picture at all").unwrap();
    let s = server(0).await;
    let r = run_ok(&["infer", &p, "--api", &s.url]).await;
    assert_eq!(r["model"], "fake-vlm", "the model name comes from the server");
    assert_eq!(r["answered"], 5, "{r}");
    assert_eq!(r["failed"], 1);
    assert!(r["errors"][0].as_str().unwrap().contains("img3.png"), "{r}");
    let err: String =
        db(&p).query_row("SELECT error FROM candidates WHERE error IS NOT NULL", [], |r| r.get(0)).unwrap();
    assert!(err.contains("img3.png"), "{err}");
    // A rerun leaves the failed item alone unless asked.
    assert_eq!(run_ok(&["infer", &p, "--api", &s.url]).await["total"], 0);
    let retry = run_ok(&["infer", &p, "--api", &s.url, "--retry-errors"]).await;
    assert_eq!((retry["total"].as_u64(), retry["failed"].as_u64()), (Some(1), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_server_stops_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), 4);
    let s = fake_openai::start(|_, _| Reply::Status {
        status: 400,
        body: serde_json::json!({"message": "Qwen2-7B is not a multimodal model"}),
        retry_after: None,
    })
    .await;
    let out = run(vec!["infer".into(), p.clone(), "--api".into(), s.url.clone(), "--model".into(), "m".into()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not accept images") && err.contains("hint:"), "{err}");
    let status: String = db(&p).query_row("SELECT status FROM runs WHERE kind = 'infer'", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "failed");
    assert_eq!(count(&p, "SELECT COUNT(*) FROM candidates"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_at_most_the_batch_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path(), 120);
    let s = server(40).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["infer", &p, "--api", &s.url, "--model", "fake-vlm", "--concurrency", "4"])
        .env("MMLOOP_ACTOR", common::ACTOR)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let stored = count(&p, "SELECT COUNT(*) FROM candidates");
        if stored > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no candidate was ever stored");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stored = count(&p, "SELECT COUNT(*) FROM candidates");
    let asked = s.requests() as i64;
    assert!(stored < 120, "killed mid-run");
    // Answers the server gave but the store never saw: at most a batch (32) plus those in flight.
    assert!(asked - stored <= 32 + 4, "lost {} answers", asked - stored);
    ok(&["audit", "verify", &p]);

    let r = run_ok(&["infer", &p, "--api", &s.url, "--model", "fake-vlm"]).await;
    assert_eq!(r["total"].as_i64().unwrap(), 120 - stored, "{r}");
    assert_eq!(count(&p, "SELECT COUNT(*) FROM candidates"), 120);
    assert_eq!(count(&p, "SELECT COUNT(DISTINCT item_id) FROM candidates"), 120, "no item answered twice");
    ok(&["audit", "verify", &p]);
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn file_mode_writes_swift_rows_in_order_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("photos");
    common::images(&imgs, 9);
    let out = dir.path().join("answers.jsonl");
    let s = server(0).await;
    let glob = format!("{}/*.png", imgs.display());
    let r = run_ok(&[
        "infer",
        "--api",
        &s.url,
        "--images",
        &glob,
        "--prompt",
        "Is it red?",
        "--output",
        &out.display().to_string(),
        "--system",
        "Answer briefly.",
    ])
    .await;
    assert_eq!(r["answered"], 9, "{r}");
    let rows = lines(&out);
    assert_eq!(rows.len(), 9);
    let mut names: Vec<String> = (0..9).map(|i| format!("img{i}.png")).collect();
    names.sort();
    for (row, name) in rows.iter().zip(&names) {
        assert!(row["id"].as_str().unwrap().ends_with(name.as_str()), "input order: {row}");
        assert_eq!(row["response"], "maybe red");
        assert_eq!(row["labels"], Value::Null);
        assert_eq!(row["model"], "fake-vlm");
        assert_eq!(row["messages"][0], serde_json::json!({"role": "system", "content": "Answer briefly."}));
        assert_eq!(row["messages"][1]["content"], "<image>Is it red?");
        assert_eq!(row["messages"][2], serde_json::json!({"role": "assistant", "content": "maybe red"}));
        assert_eq!(row["images"].as_array().unwrap().len(), 1);
        assert_eq!(row["logprobs"]["content"][0]["token"], "maybe");
        assert_eq!(row["flags"][0]["flag"], "hedging");
        assert!(row["confidence"].as_f64().unwrap() > 0.0);
    }
    // Cut the file as a kill would (last row half written): a rerun completes it.
    let text = std::fs::read_to_string(&out).unwrap();
    let keep: Vec<&str> = text.lines().take(6).collect();
    std::fs::write(&out, format!("{}\n{{\"response\": \"trunc", keep.join("\n"))).unwrap();
    let before = s.requests();
    let r = run_ok(&[
        "infer",
        "--api",
        &s.url,
        "--images",
        &glob,
        "--prompt",
        "Is it red?",
        "-o",
        &out.display().to_string(),
    ])
    .await;
    assert_eq!((r["answered"].as_u64(), r["already_done"].as_u64()), (Some(3), Some(6)), "{r}");
    assert_eq!(s.requests() - before, 3);
    // The output is a dataset ms-swift (and mmloop) reads: answers come back as predictions.
    let good: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .map(String::from)
        .collect();
    assert_eq!(good.len(), 9);
    let clean = dir.path().join("clean.jsonl");
    std::fs::write(&clean, good.join("\n")).unwrap();
    let p2 = dir.path().join("p2").display().to_string();
    ok(&["init", &p2]);
    let imported = common::json(&["import", &p2, &clean.display().to_string(), "--format", "swift"]);
    assert_eq!(imported["added"], 9, "{imported}");
    assert_eq!(imported["candidates"], 9, "{imported}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_mode_reads_datasets_and_keeps_their_answers_as_labels() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = common::images(&dir.path().join("imgs"), 3);
    let data = dir.path().join("val.jsonl");
    let rows: Vec<String> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| {
            serde_json::json!({"messages": [{"role": "user", "content": "<image>What colour?"},
                                            {"role": "assistant", "content": format!("colour {i}")}],
                               "images": [format!("imgs/{img}")]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let s = server(0).await;
    let out = dir.path().join("res.jsonl");
    run_ok(&[
        "infer",
        "--api",
        &s.url,
        "--val_dataset",
        &data.display().to_string(),
        "--result_path",
        &out.display().to_string(),
    ])
    .await;
    let rows = lines(&out);
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["labels"], format!("colour {i}"));
        assert_eq!(row["response"], "red");
        assert_eq!(row["messages"].as_array().unwrap().len(), 2, "the reference turn is replaced by the answer");
    }
    // The question sent is the dataset's, without its answer.
    assert!(s.bodies().iter().all(|b| fake_openai::question(b) == "What colour?"));
}

#[test]
fn usage_errors_say_what_to_do() {
    let e = fails(&["infer"]);
    assert!(e.contains("nothing to answer") && e.contains("hint:"), "{e}");
    let e = fails(&["infer", "--images", "x.png", "--prompt", "q", "-o", "o.jsonl", "--api", "http://127.0.0.1:9/v1"]);
    assert!(e.contains("x.png"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.png");
    common::png(&img, 4, 4, [1, 2, 3]);
    let e =
        fails(&["infer", "--images", &img.display().to_string(), "-o", "o.jsonl", "--api", "http://127.0.0.1:9/v1"]);
    assert!(e.contains("--prompt"), "{e}");
    let e = fails(&["infer", "--images", &img.display().to_string(), "--prompt", "q"]);
    assert!(e.contains("--output"), "{e}");
    let e = fails(&[
        "infer",
        "--images",
        &img.display().to_string(),
        "--prompt",
        "q",
        "-o",
        "o.jsonl",
        "--infer_backend",
        "vllm",
    ]);
    assert!(e.contains("--api"), "{e}");
    let e = fails(&[
        "infer",
        "--images",
        &img.display().to_string(),
        "--prompt",
        "q",
        "-o",
        "o.jsonl",
        "--temperature=-1",
        "--api",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    ]);
    assert!(e.contains("--temperature"), "{e}");
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm")
}

/// The embedded engine end to end, every family: `mmloop infer --model DIR` on the tiny
/// checkpoints (published layouts, SmolVLM tiling on) answers what transformers 5.24 answers
/// (greedy, no repetition penalty, f32; `reference.json`), logprobs within 1e-4.
#[test]
fn embedded_file_mode_reproduces_the_reference_answers_for_every_family() {
    let fx = fixtures();
    let prompt = "What color is the main object? Answer briefly.";
    for family in ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3"] {
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join(family).join("reference.json")).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let r: Value = serde_json::from_str(&ok(&[
            "infer",
            "--model",
            &fx.join(family).display().to_string(),
            "--dtype",
            "f32",
            "--temperature",
            "0",
            "--repetition_penalty",
            "1.0",
            "--max_new_tokens",
            "8",
            "--images",
            &fx.join("images").display().to_string(),
            "--prompt",
            prompt,
            "--output",
            &out.display().to_string(),
            "--json",
        ]))
        .unwrap();
        assert_eq!(r["answered"], 3, "{family}: {r}");
        for row in lines(&out) {
            let img = Path::new(row["id"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            let case = reference["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["prompt"] == prompt && c["image"].as_str().is_some_and(|i| i.ends_with(&img)))
                .unwrap();
            assert_eq!(row["response"].as_str().unwrap(), case["text"].as_str().unwrap().trim(), "{family} {img}");
            let lp = row["logprobs"]["content"].as_array().unwrap();
            let steps = case["steps"].as_array().unwrap();
            let special = case["stopped_on_eos"].as_bool().unwrap_or(false) as usize;
            assert_eq!(lp.len(), steps.len() - special, "{family} {img}");
            for (got, want) in lp.iter().zip(steps) {
                let d = (got["logprob"].as_f64().unwrap() - want["logprob"].as_f64().unwrap()).abs();
                assert!(d < 1e-4, "{family} {img}: |Δ ln p| = {d}");
            }
        }
    }
}

/// `--adapters DIR` answers with a PEFT adapter, unmerged and merged at load, as PEFT does.
#[test]
fn embedded_adapters_reproduce_peft() {
    let fx = fixtures();
    let family = "qwen2_5_vl";
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join(family).join("reference_lora.json")).unwrap()).unwrap();
    let case = &reference["cases"][1];
    let img = fx.join(family).join(case["image"].as_str().unwrap());
    for merge in ["false", "true"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        ok(&[
            "infer",
            "--model",
            &fx.join(family).display().to_string(),
            "--adapters",
            &fx.join(family).join("adapters/lora").display().to_string(),
            "--merge_lora",
            merge,
            "--temperature",
            "0",
            "--repetition_penalty",
            "1.0",
            "--max_new_tokens",
            "8",
            "--images",
            &img.display().to_string(),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--output",
            &out.display().to_string(),
        ]);
        let row = &lines(&out)[0];
        assert_eq!(row["response"].as_str().unwrap(), case["text"].as_str().unwrap().trim(), "merge {merge}");
        let lp = row["logprobs"]["content"][0]["logprob"].as_f64().unwrap();
        assert!((lp - case["steps"][0]["logprob"].as_f64().unwrap()).abs() < 1e-4, "merge {merge}");
    }
}

/// A repo id resolves in the hub cache without the network, and `HF_HUB_OFFLINE=1` turns a
/// missing model into a clear error instead of a download attempt.
#[test]
fn hub_ids_resolve_in_the_cache_offline() {
    let fx = fixtures().join("idefics3");
    let cache = tempfile::tempdir().unwrap();
    let snap = cache.path().join("models--tiny--smolvlm/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(&fx).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(cache.path().join("models--tiny--smolvlm/refs")).unwrap();
    std::fs::write(cache.path().join("models--tiny--smolvlm/refs/main"), "0123abcd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.jsonl");
    let img = fixtures().join("images/img0.png");
    let run = |model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
            .args(["infer", "--model", model, "--dtype", "f32", "--max-new-tokens", "4", "--json"])
            .args(["--images", &img.display().to_string(), "--prompt", "What is it?", "-o", &out.display().to_string()])
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let ok = run("tiny/smolvlm");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stderr).contains("tiny/smolvlm@0123abcd"));
    let missing = run("tiny/not-there");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("hint:"), "{err}");
}
