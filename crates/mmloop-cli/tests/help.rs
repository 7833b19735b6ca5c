//! The command line as users see it: `--help` of `mmloop` and of every command and
//! subcommand, found by walking the `Commands:` lists (a new command gets its snapshot
//! without editing this file). A flag renamed, dropped or documented differently shows up as
//! a snapshot diff to review. Rendered with an empty environment (no `[env: X=value]` from
//! the machine) at 100 columns.

use std::process::Command;

fn help(path: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mmloop"))
        .args(path)
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "mmloop {path:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The command names listed under `Commands:` (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_command_help_is_as_reviewed() {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let name = if path.is_empty() { "mmloop".to_string() } else { format!("mmloop {}", path.join(" ")) };
        insta::assert_snapshot!(name.replace(' ', "_"), text, &format!("{name} --help"));
        seen += 1;
        for c in commands(&text) {
            let mut sub = path.clone();
            sub.push(c);
            todo.push(sub);
        }
    }
    assert!(seen >= 20, "{seen} commands");
}
