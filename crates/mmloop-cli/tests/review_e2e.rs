//! The review UI end to end in real headless Chromium: makes a project (the example plus
//! captions carrying `<script>` and `"><img onerror>`, and model candidates with risk
//! flags), starts `mmloop review`, runs `crates/mmloop-server/e2e/review.spec.mjs`
//! (playwright-core driving Debian's /usr/bin/chromium), then checks the database and the
//! audit log. Skipped, with the reason printed, only where node, chromium or the npm
//! packages are missing — and a failure instead when `MMLOOP_REQUIRE_E2E` is set, as
//! `.ci/run` sets it after installing them: CI never passes by skipping.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{json, ok};
use mmloop_store::Store;
use serde_json::Value;

const XSS: [&str; 2] = ["<script>window.__xss=1</script>", "\"><img src=x onerror=\"window.__xss=1\">"];

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mmloop-server/e2e")
}

fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!("{chromium} is not installed (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !e2e_dir().join("node_modules/playwright-core").exists() {
        return Some(format!("playwright-core is not installed (cd {} && npm ci)", e2e_dir().display()));
    }
    None
}

#[test]
fn review_ten_items_with_the_keyboard_in_headless_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("MMLOOP_REQUIRE_E2E").is_none(),
            "review_e2e cannot run: {why} (MMLOOP_REQUIRE_E2E is set, so this must run)"
        );
        eprintln!("SKIPPED review_e2e: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p").display().to_string();
    ok(&["init", &project, "--example"]);
    // Captions that would run script if rendered as HTML.
    let xss = dir.path().join("xss.jsonl");
    let image = dir.path().join("p/images/00-red-circle.png");
    let mut f = std::fs::File::create(&xss).unwrap();
    for (i, s) in XSS.iter().enumerate() {
        let row = serde_json::json!({"id": format!("xss{i}"), "messages": [
            {"role": "user", "content": format!("<image>Describe this image. {s}")},
            {"role": "assistant", "content": s}], "images": [image.display().to_string()]});
        writeln!(f, "{row}").unwrap();
    }
    drop(f);
    ok(&["import", &project, &xss.display().to_string(), "--task", "caption"]);
    // Model candidates, as the engine writes them: the risky ones come first.
    let db = rusqlite::Connection::open(dir.path().join("p/.mmloop/mmloop.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let xss_items: Vec<i64> = db
        .prepare("SELECT id FROM items WHERE source_id LIKE 'xss%' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows: Vec<(i64, &str, f64, String)> = vec![
        (xss_items[0], XSS[0], 0.08, r#"[{"flag":"markup","why":"the answer contains markup","span":[1,7]}]"#.into()),
        (xss_items[1], XSS[1], 0.09, r#"[{"flag":"markup","why":"says \"onerror\""}]"#.into()),
        (1, "It is probably red.", 0.21, r#"[{"flag":"hedge","why":"hedges with 'probably'"}]"#.into()),
        (2, "circles", 0.35, "[]".into()),
        (
            3,
            "three",
            0.42,
            r#"[{"flag":"number_mismatch","why":"a word where a digit was expected","span":[0,5]}]"#.into(),
        ),
        (4, "blue", 0.55, "[]".into()),
        (5, "squares", 0.61, "[]".into()),
        (6, "1", 0.77, "[]".into()),
        (7, "green", 0.83, "[]".into()),
        (8, "triangle", 0.91, "[]".into()),
    ];
    let candidates: Vec<mmloop_store::NewCandidate> = rows
        .iter()
        .map(|(item, answer, conf, flags)| {
            let c = mmloop_core::Candidate {
                answer: answer.to_string(),
                confidence: Some(*conf),
                detail: None,
                flags: serde_json::from_str(flags).expect("flags"),
            };
            mmloop_store::NewCandidate::answered(*item, c)
        })
        .collect();
    drop(db);
    // An online experiment with outcomes, for the experiments page; an arm named like markup.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use mmloop_store::ab::{Arm, Experiment, Exposure, OutcomeKind};
        let store = Store::open(std::path::Path::new(&project)).await.unwrap();
        let model = "qwen2.5-vl-3b";
        store.add_candidates(None, model, mmloop_core::Digest([0; 32]), "test", candidates).await.unwrap();
        let arms = vec![
            Arm { name: "base".into(), model: "smol".into() },
            Arm { name: "<img src=x onerror=alert(2)>".into(), model: "v3".into() },
        ];
        let e = Experiment { name: "v3-vs-base".into(), seed: "v3-vs-base".into(), arms, weights: vec![0.5, 0.5] };
        store.ab_start(e.clone(), "test").await.unwrap();
        for i in 0..400 {
            let arm = &e.arms[i % 2].name;
            let id = format!("chatcmpl-e2e-{i}");
            let x = Exposure {
                experiment: e.name.clone(),
                request_id: id.clone(),
                user_id: Some(format!("user-{i}")),
                arm: arm.clone(),
                latency_ms: 100.0 + i as f64,
                prompt_tokens: 40,
                completion_tokens: 6,
                confidence: Some(0.8),
            };
            store.ab_expose(x).await.unwrap();
            // The control accepts 1 in 2, the other arm 9 in 10.
            let accept = if i % 2 == 0 { i % 4 == 0 } else { i % 20 != 1 };
            let o = if accept { OutcomeKind::Accept } else { OutcomeKind::Reject };
            store.ab_outcome(&id, o, None, "test").await.unwrap();
        }
        store.close();
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["user", "add", &project, "rita", "--role", "reviewer", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"rita's password\n").unwrap();
    assert!(c.wait().unwrap().success());

    let mut server = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["review", &project, "--port", "0"])
        // rita is a reviewer: without an admin yet, the server makes one.
        .env("MMLOOP_ADMIN_PASSWORD", "the admin's password")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let out_dir = e2e_dir().join("output");
    let run = Command::new("node")
        .arg(e2e_dir().join("review.spec.mjs"))
        .env("MMLOOP_URL", url.trim())
        .env("MMLOOP_USER", "rita")
        .env("MMLOOP_PASSWORD", "rita's password")
        .env("E2E_OUT", &out_dir)
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let stopped = server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    assert!(stopped.success(), "the server did not stop gracefully");
    eprintln!("{stdout}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("result.json")).unwrap()).unwrap();

    // The riskiest items came first and their text was shown as text.
    let seen = result["seen"].as_array().unwrap();
    assert_eq!(seen[0]["id"].as_i64(), Some(xss_items[0]));
    assert_eq!(seen[0]["candidate"], XSS[0]);
    assert_eq!(seen[0]["answer"], XSS[0]);
    assert_eq!(seen[1]["candidate"], XSS[1]);
    assert!(seen[1]["question"].as_str().unwrap().ends_with(XSS[1]));
    assert_eq!(seen[0]["marks"][0][1], "script", "span-based flag highlight");
    assert!(
        seen.iter().any(|s| s["marks"].as_array().unwrap().iter().any(|m| m[0] == "hedge" && m[1] == "probably")),
        "the hedging word is highlighted"
    );
    // The page weight budget. The first-render time is printed for docs/benchmarks.md, not
    // asserted: a timing on a shared 2-core CI machine is a benchmark, not a test.
    let render = result["first_render_ms"]["median"].as_f64().unwrap();
    eprintln!("first render: median {render} ms");
    let weight = result["page_weight"]["bytes"].as_u64().unwrap();
    assert!(weight <= 200 * 1024, "the review page weighs {weight} bytes");

    // The experiments page: both plots drawn (as images, under the page's security policy),
    // the verdict, and the markup-like arm name shown as text.
    let ex = &result["experiment"];
    assert_eq!(ex["plots"].as_array().unwrap().len(), 2, "{ex}");
    assert!(ex["plots"].as_array().unwrap().iter().all(|w| w.as_u64().unwrap() > 100), "plots not rendered: {ex}");
    assert!(ex["verdict"].as_str().unwrap().starts_with("stop: better"), "{ex}");
    assert_eq!(ex["arm"], "<img src=x onerror=alert(2)>");

    // The database: ten decisions by rita, the edit, the undo, all audited.
    rt.block_on(async {
        let store = Store::open(std::path::Path::new(&project)).await.unwrap();
        let decisions = result["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 10);
        for d in decisions {
            let id = d["id"].as_i64().unwrap();
            let history = store.label_history(id).await.unwrap();
            assert!(
                history.iter().any(|l| l.actor == "rita" && l.action == d["action"].as_str().unwrap()),
                "item {id}: no {} by rita in {history:?}",
                d["action"]
            );
        }
        let edited = result["edited"].as_i64().unwrap();
        let label = store.item(edited).await.unwrap().label.unwrap();
        assert_eq!(label.status.as_str(), "edited");
        assert_eq!(label.answer.text.as_deref(), Some("edited by the e2e test"));
        assert!(label.lead_time_ms.is_some_and(|t| t > 0));
        let undone = result["undone"].as_i64().unwrap();
        let history = store.label_history(undone).await.unwrap();
        let actions: Vec<&str> = history.iter().map(|l| l.action.as_str()).collect();
        assert_eq!(&actions[..3], ["accept", "undo", "accept"], "undone item {undone}: {actions:?}");
        assert_eq!(history[1].status, history[3].status, "undo restored the label before");
        let events = store.audit_log(None, 1000).await.unwrap();
        let saves = events.iter().filter(|e| e.action == "label.save" && e.actor == "rita").count();
        assert_eq!(saves, 11, "ten decisions and one undo");
        assert!(events.iter().any(|e| e.action == "user.login" && e.actor == "rita"));
        assert!(store.audit_verify().await.unwrap().ok());
        store.close();
    });
    ok(&["audit", "verify", &project]);
    let _ = json(&["stats", &project]);
    assert!(out_dir.join("review.png").exists() && out_dir.join("stats.png").exists());
}
