//! Terminal output: short lines, colour when stderr is a terminal, progress bars for long
//! jobs.

use std::time::Duration;

use console::style;
use indicatif::{ProgressBar, ProgressStyle};

pub fn error(e: &anyhow::Error) {
    let text = format!("{e:#}");
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        eprintln!("{} {first}", style("error:").red().bold());
    }
    for l in lines {
        eprintln!("{l}");
    }
}

pub fn ok(msg: impl std::fmt::Display) {
    eprintln!("{} {msg}", style("✓").green().bold());
}

pub fn warn(msg: impl std::fmt::Display) {
    eprintln!("{} {msg}", style("warning:").yellow().bold());
}

pub fn hint(msg: impl std::fmt::Display) {
    eprintln!("  {} {msg}", style("hint:").cyan());
}

/// A counter for work of unknown size.
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} records ({per_sec}) {elapsed}")
            .expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A bar for work of known size.
pub fn bar(what: &str, total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Thousands separators for counts people read.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
