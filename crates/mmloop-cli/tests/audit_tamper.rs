//! `mmloop audit verify` catches any edited, deleted or reordered audit row: the test
//! tampers with the database directly, as an attacker with file access would.

mod common;

use std::path::Path;

use common::{fails, ok};

/// A project with a few events: init, two imports, a split, a commit, a label save.
fn project(root: &Path) -> String {
    let p = root.join("p");
    ok(&["init", &p.display().to_string(), "--example"]);
    ok(&["split", &p.display().to_string()]);
    ok(&["commit", &p.display().to_string(), "-m", "v1"]);
    p.display().to_string()
}

fn tamper(project: &str, sql: &str) {
    let db = Path::new(project).join(".mmloop/mmloop.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn verify_fails(project: &str, expect: &str) {
    let err = fails(&["audit", "verify", project]);
    assert!(err.contains(expect), "expected {expect:?} in:\n{err}");
    assert!(err.contains("tampered"), "{err}");
}

#[test]
fn intact_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    let out = common::json(&["audit", "verify", &p]);
    assert_eq!(out["events"], 5, "{out}");
    assert_eq!(out["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn edited_row_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    tamper(&p, "UPDATE events SET actor = 'mallory' WHERE seq = 2");
    verify_fails(&p, "event 2 was edited");
}

#[test]
fn edited_payload_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    tamper(&p, "UPDATE events SET after = replace(after, 'vqa', 'VQA') WHERE seq = 2");
    verify_fails(&p, "event 2 was edited");
}

#[test]
fn deleted_row_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    tamper(&p, "DELETE FROM events WHERE seq = 3");
    verify_fails(&p, "events 3..3 are missing");
}

#[test]
fn reordered_rows_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    // Swap the contents of events 2 and 3, keeping their sequence numbers.
    tamper(
        &p,
        "CREATE TEMP TABLE t AS SELECT * FROM events WHERE seq IN (2, 3);
         UPDATE events SET (at, actor, action, entity, before, after, prev_hash, hash) =
           (SELECT at, actor, action, entity, before, after, prev_hash, hash FROM t WHERE t.seq = 5 - events.seq)
         WHERE seq IN (2, 3);",
    );
    verify_fails(&p, "event 2");
}

#[test]
fn rehashed_row_still_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    // An attacker who replaces a row wholesale with another valid-looking row (here: a
    // copy of event 4 moved to 3) cannot make the next event follow it.
    tamper(
        &p,
        "UPDATE events SET (at, actor, action, entity, before, after, prev_hash, hash) =
           (SELECT at, actor, action, entity, before, after, prev_hash, hash FROM events WHERE seq = 4)
         WHERE seq = 3;",
    );
    let err = fails(&["audit", "verify", &p]);
    assert!(err.contains("event 3") || err.contains("event 4"), "{err}");
}

/// The project, plus one more event after the commit, so the newest event is recorded by
/// the anchor file only (no version names it).
fn project_with_uncommitted_event(root: &Path) -> String {
    let p = project(root);
    ok(&["split", &p, "--reassign", "--seed", "7"]);
    p
}

#[test]
fn deleted_newest_rows_are_caught_by_the_anchor_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = project_with_uncommitted_event(dir.path());
    tamper(&p, "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)");
    let err = fails(&["audit", "verify", &p]);
    assert!(err.contains("newest events were deleted"), "{err}");
    assert!(!err.contains("version v1"), "only the anchor file can see this: {err}");
}

#[test]
fn a_missing_anchor_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = project_with_uncommitted_event(dir.path());
    tamper(&p, "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)");
    std::fs::remove_file(Path::new(&p).join(".mmloop/audit-head")).unwrap();
    verify_fails(&p, "audit-head is missing");
}

#[test]
fn an_answer_rewritten_in_the_database_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    tamper(&p, "UPDATE labels SET answer = 'TAMPERED' WHERE id = 3");
    let err = fails(&["audit", "verify", &p]);
    assert!(err.contains("label 3 of item") && err.contains("was edited in the database"), "{err}");
    assert!(err.contains("version v1 changed"), "{err}");
}

#[test]
fn an_answer_rewritten_with_a_matching_digest_is_caught_by_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    // An attacker who also recomputes the label's digest: the label checks out, the
    // committed version no longer hashes to its id.
    let answer = mmloop_core::Answer { text: Some("TAMPERED".into()), all: vec![] };
    let conn = rusqlite::Connection::open(Path::new(&p).join(".mmloop/mmloop.db")).unwrap();
    let status: String = conn.query_row("SELECT status FROM labels WHERE id = 3", [], |r| r.get(0)).unwrap();
    let digest = mmloop_core::LabelContent { status: status.parse().unwrap(), answer: &answer }.digest();
    conn.execute(
        "UPDATE labels SET answer = 'TAMPERED', answers = NULL, content = ?1 WHERE id = 3",
        [digest.as_bytes().as_slice()],
    )
    .unwrap();
    drop(conn);
    let err = fails(&["audit", "verify", &p]);
    assert!(!err.contains("label 3 of item"), "{err}");
    assert!(err.contains("version v1 changed: its items, labels or splits no longer hash to its id"), "{err}");
}

#[test]
fn an_edited_question_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    tamper(&p, "UPDATE items SET question = 'What is it really?' WHERE id = 2");
    verify_fails(&p, "item 2 was edited in the database");
}

#[test]
fn versions_anchor_the_chain_too() {
    let dir = tempfile::tempdir().unwrap();
    let p = project(dir.path());
    // Even with the anchor file rewritten to match, the version records the commit event.
    tamper(&p, "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)");
    let conn = rusqlite::Connection::open(Path::new(&p).join(".mmloop/mmloop.db")).unwrap();
    let (seq, hash): (i64, Vec<u8>) = conn
        .query_row("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(Path::new(&p).join(".mmloop/audit-head"), format!("{seq} {hex}\n")).unwrap();
    verify_fails(&p, "newest events were deleted");
}
