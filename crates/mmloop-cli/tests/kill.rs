//! Killing an import with SIGKILL leaves the project exactly as before the import: the
//! whole file is one transaction.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{json, ok};

#[test]
fn kill_9_during_import_leaves_the_project_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let project = root.join("p").display().to_string();
    ok(&["init", &project, "--example"]);
    let before = json(&["stats", &project]);

    let pool = common::images(&root.join("imgs"), 50);
    let file = root.join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..400_000 {
        writeln!(
            f,
            r#"{{"id":"{i}","messages":[{{"role":"user","content":"<image>Question {i}?"}},{{"role":"assistant","content":"answer {i}"}}],"images":["imgs/{}"]}}"#,
            pool[i % pool.len()]
        )
        .unwrap();
    }
    drop(f);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(["import", &project, &file.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the import is visibly writing (its WAL grows), well before it could finish.
    let wal = root.join("p/.mmloop/mmloop.db-wal");
    let start = Instant::now();
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        assert!(start.elapsed() < Duration::from_secs(120), "the import never started writing");
        assert!(child.try_wait().unwrap().is_none(), "the import finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let after = json(&["stats", &project]);
    assert_eq!(after["items"], before["items"], "{after}");
    assert_eq!(after["images"], before["images"], "{after}");
    assert_eq!(after["audit_events"], before["audit_events"], "{after}");
    ok(&["audit", "verify", &project]);
    // And the import can simply run again.
    let small = root.join("small.jsonl");
    std::fs::write(&small, std::fs::read_to_string(&file).unwrap().lines().take(10).collect::<Vec<_>>().join("\n"))
        .unwrap();
    let r = json(&["import", &project, &small.display().to_string()]);
    assert_eq!(r["added"], 10);
}
