//! Bad input gets a clear error naming the file and line (or item id) with a hint, and
//! nothing already stored is lost: a refused import leaves the project as it was.

mod common;

use std::path::Path;

use common::{fails, json, ok, png};

struct Case {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    project: String,
}

fn setup() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let project = root.join("p").display().to_string();
    ok(&["init", &project]);
    png(&root.join("data/a.png"), 4, 4, [1, 2, 3]);
    png(&root.join("data/b.png"), 5, 4, [3, 2, 1]);
    Case { _dir: dir, root, project }
}

fn row(id: &str, image: &str, q: &str, a: &str) -> String {
    serde_json::json!({
        "id": id,
        "messages": [{"role": "user", "content": format!("<image>{q}")}, {"role": "assistant", "content": a}],
        "images": [image],
    })
    .to_string()
}

fn write(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The project holds nothing and its audit log only has its creation.
fn assert_untouched(c: &Case) {
    let s = json(&["stats", &c.project]);
    assert_eq!(s["items"], 0, "{s}");
    assert_eq!(s["images"], 0, "{s}");
    assert_eq!(s["audit_events"], 1, "{s}");
    ok(&["audit", "verify", &c.project]);
}

fn import_fails(c: &Case, file: &Path, extra: &[&str]) -> String {
    let f = file.display().to_string();
    let mut args = vec!["import", &c.project, &f];
    args.extend_from_slice(extra);
    let err = fails(&args);
    assert_untouched(c);
    err
}

#[test]
fn malformed_json_line_names_the_line() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "a.png", "Q", "A"), "{\"messages\": [".into(), row("3", "b.png", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("d.jsonl:2"), "{err}");
    assert!(err.contains("malformed JSON"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(err.contains("--skip-bad"), "{err}");
}

#[test]
fn wrong_schema_names_the_field() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "a.png", "Q", "A"), r#"{"messages": "What is it?", "images": ["a.png"]}"#.into()]);
    let err = import_fails(&c, &f, &["--format", "swift"]);
    assert!(err.contains("d.jsonl:2"), "{err}");
    assert!(err.contains("`messages`"), "{err}");
}

#[test]
fn missing_image_names_record_and_path() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "a.png", "Q", "A"), row("q2", "nope.png", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("d.jsonl:2"), "{err}");
    assert!(err.contains("q2"), "{err}");
    assert!(err.contains("nope.png") && err.contains("not found"), "{err}");
    assert!(err.contains("--images-dir"), "{err}");
}

#[test]
fn truncated_and_foreign_images_are_refused() {
    let c = setup();
    let bytes = std::fs::read(c.root.join("data/a.png")).unwrap();
    std::fs::write(c.root.join("data/cut.png"), &bytes[..bytes.len() - 15]).unwrap();
    std::fs::write(c.root.join("data/text.png"), b"hello, not an image").unwrap();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "cut.png", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("truncated"), "{err}");
    write(&f, &[row("1", "text.png", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("not a recognised image"), "{err}");
}

#[test]
fn path_escaping_the_root_is_refused() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "../../etc/passwd", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("leaves the dataset root"), "{err}");
    assert!(err.contains("d.jsonl:1"), "{err}");
}

#[test]
fn decompression_bomb_is_refused_from_its_header() {
    let c = setup();
    let mut p = std::fs::read(c.root.join("data/a.png")).unwrap();
    p[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    p[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(c.root.join("data/bomb.png"), &p).unwrap();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "bomb.png", "Q", "A")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("50000×50000"), "{err}");
    assert!(err.contains("decompression bomb"), "{err}");
}

fn crc32(b: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &x in b {
        crc ^= x as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn duplicate_ids_are_refused() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("7", "a.png", "Q1", "A"), row("7", "b.png", "Q2", "B")]);
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("duplicate id \"7\""), "{err}");
    assert!(err.contains("d.jsonl:2"), "{err}");
}

#[test]
fn empty_and_non_utf8_files() {
    let c = setup();
    let f = c.root.join("data/empty.jsonl");
    std::fs::write(&f, "\n  \n").unwrap();
    let err = import_fails(&c, &f, &["--format", "swift"]);
    assert!(err.contains("empty"), "{err}");
    let f = c.root.join("data/latin1.jsonl");
    let mut bytes = (row("1", "a.png", "Q", "A") + "\n").into_bytes();
    bytes.extend_from_slice(b"{\"query\": \"caf\xe9\", \"response\": \"x\", \"images\": [\"a.png\"]}\n");
    std::fs::write(&f, bytes).unwrap();
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("latin1.jsonl:2"), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
    assert!(err.contains("iconv"), "{err}");
}

#[test]
fn unknown_format_asks_for_format() {
    let c = setup();
    let f = c.root.join("data/d.json");
    std::fs::write(&f, r#"[{"foo": 1}]"#).unwrap();
    let err = import_fails(&c, &f, &[]);
    assert!(err.contains("cannot tell the format"), "{err}");
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn skip_bad_imports_the_good_rows_and_reports_the_bad() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(
        &f,
        &[
            row("1", "a.png", "Q", "A"),
            "not json".into(),
            row("3", "missing.png", "Q", "A"),
            row("4", "b.png", "Q", "B"),
        ],
    );
    let f = f.display().to_string();
    let report = json(&["import", &c.project, &f, "--skip-bad"]);
    assert_eq!(report["added"], 2, "{report}");
    assert_eq!(report["bad"], 2, "{report}");
    let path = report["report_path"].as_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["location"].as_str().unwrap().ends_with("d.jsonl:2"), "{text}");
    assert!(rows[1]["error"].as_str().unwrap().contains("missing.png"), "{text}");
    ok(&["audit", "verify", &c.project]);
}

#[test]
fn reimporting_the_same_file_changes_nothing() {
    let c = setup();
    let f = c.root.join("data/d.jsonl");
    write(&f, &[row("1", "a.png", "Q", "A"), row("2", "b.png", "Q", "B")]);
    let f = f.display().to_string();
    assert_eq!(json(&["import", &c.project, &f])["added"], 2);
    let again = json(&["import", &c.project, &f]);
    assert_eq!(again["added"], 0);
    assert_eq!(again["unchanged"], 2);
    // A changed answer under the same id updates the imported label...
    let g = c.root.join("data/e.jsonl");
    write(&g, &[row("2", "b.png", "Q", "changed")]);
    let updated = json(&["import", &c.project, &g.display().to_string()]);
    assert_eq!(updated["updated"], 1, "{updated}");
    // ...while a changed question under the same id is refused, keeping what was there.
    write(&g, &[row("2", "b.png", "Another question", "B")]);
    let err = fails(&["import", &c.project, &g.display().to_string()]);
    assert!(err.contains("already in the project"), "{err}");
    assert!(err.contains("d.jsonl:2"), "{err}");
    assert_eq!(json(&["stats", &c.project])["items"], 2);
    ok(&["audit", "verify", &c.project]);
}

/// Flags with a fixed set of values list them in `--help`, refuse others when the command
/// line is read (nothing runs), and still take the aliases their types know.
#[test]
fn fixed_value_flags_list_their_values_and_refuse_others_up_front() {
    for (args, values) in [
        (&["import", "--help"][..], "[possible values: swift, llava, sharegpt, coco, vqav2, textvqa,"),
        (&["infer", "--help"][..], "[possible values: cpu, cuda, metal]"),
        (&["serve", "--help"][..], "[possible values: auto, f32, bf16, f16]"),
        (&["eval", "--help"][..], "[possible values: official, lmms-eval, lmms-eval-textvqa, vlmevalkit]"),
        (&["route", "--help"][..], "[possible values: confidence, calibrated]"),
    ] {
        // Wrapped to the terminal: compared with the line breaks taken out.
        let help = ok(args).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains(values), "{args:?} lists {values}:\n{help}");
    }
    let c = setup();
    let bad = fails(&["import", &c.project, "nowhere.jsonl", "--format", "yaml"]);
    assert!(bad.contains("--format \"yaml\"") && bad.contains("swift, llava"), "{bad}");
    let bad = fails(&["export", &c.project, "--format", "swift", "-o", "x.jsonl", "--task", "qa"]);
    assert!(bad.contains("--task \"qa\"") && bad.contains("vqa, caption"), "{bad}");
    // An alias the format knows passes the command line (and fails later, on the missing file).
    let later = fails(&["import", &c.project, "nowhere.jsonl", "--format", "ms-swift"]);
    assert!(!later.contains("--format"), "{later}");
    assert!(later.contains("nowhere.jsonl"), "{later}");
}
