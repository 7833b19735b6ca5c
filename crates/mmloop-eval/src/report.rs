//! What an evaluation writes: `metrics.json` (the whole [`Evaluation`]), a self-contained
//! `report.html` (inline CSS, inline SVG plots, thumbnails as data URIs; no script and
//! nothing fetched), and the short terminal table. Every piece of text from the data is
//! HTML-escaped before it reaches the page.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine;
use mmloop_core::ImageSource;

use crate::error::EvalError;
use crate::evaluate::{Evaluation, Metric, MetricResult};
use crate::plots;

/// Options for `report.html`.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// How many of the lowest-scoring items to show.
    pub worst: usize,
    /// Longest side of a thumbnail, in pixels.
    pub thumbnail: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions { worst: 12, thumbnail: 160 }
    }
}

/// Writes `metrics.json` and `report.html` into `dir` (created if missing).
pub fn write_outputs(ev: &Evaluation, dir: &Path, opts: &ReportOptions) -> Result<(PathBuf, PathBuf), EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let json_path = dir.join("metrics.json");
    let html_path = dir.join("report.html");
    // The two files are independent: one thread each.
    std::thread::scope(|s| {
        let json = s.spawn(|| {
            let json = serde_json::to_vec_pretty(ev).map_err(|e| EvalError::Metric(e.to_string()))?;
            std::fs::write(&json_path, json).map_err(|e| EvalError::io(&json_path, e))
        });
        std::fs::write(&html_path, html(ev, opts)).map_err(|e| EvalError::io(&html_path, e))?;
        json.join().expect("metrics.json writer panicked")
    })?;
    Ok((json_path, html_path))
}

/// `&`, `<`, `>`, `"` and `'` as entities.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A metric's headline number as the reference prints it.
pub fn format_value(m: &MetricResult) -> String {
    format_number(m.value, m.unit)
}

fn format_number(v: f64, unit: &str) -> String {
    match unit {
        "percent" => format!("{v:.2}"),
        "points" if v.abs() >= 100.0 => format!("{v:.2}"),
        _ => format!("{v:.4}"),
    }
}

fn unit_suffix(unit: &str) -> &'static str {
    if unit == "percent" { " %" } else { "" }
}

/// The short table printed after an evaluation.
pub fn terminal_table(ev: &Evaluation) -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    for m in &ev.metrics {
        let reference = m.short_reference().to_string();
        if m.metric == Metric::Bleu {
            for p in &m.parts {
                rows.push([p.name.clone(), format_number(p.value, m.unit), reference.clone()]);
            }
            continue;
        }
        rows.push([m.metric.to_string(), format!("{}{}", format_value(m), unit_suffix(m.unit)), reference]);
        if m.metric == Metric::Mme {
            for p in &m.parts {
                rows.push([format!("  {}", p.name), format_number(p.value, m.unit), String::new()]);
            }
        }
    }
    for u in &ev.unavailable {
        rows.push([u.metric.to_string(), "n/a".into(), "unavailable (see below)".into()]);
    }
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(6).max(6);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(5).max(5);
    let mut out = String::new();
    let _ = writeln!(out, "{:<w0$}  {:>w1$}  reference", "metric", "score");
    for r in &rows {
        let _ = writeln!(out, "{:<w0$}  {:>w1$}  {}", r[0], r[1], r[2]);
    }
    let m = &ev.missing;
    let _ = writeln!(
        out,
        "{} items scored ({} task){}",
        ev.scored,
        ev.task.name(),
        if m.references_without_prediction.is_empty() && m.predictions_without_reference.is_empty() {
            String::new()
        } else {
            format!(
                "; {} references without prediction, {} predictions without reference",
                m.references_without_prediction.len(),
                m.predictions_without_reference.len()
            )
        }
    );
    if !m.empty_predictions.is_empty() {
        let _ = writeln!(out, "{} empty predictions scored as given", m.empty_predictions.len());
    }
    if let Some(c) = &ev.comparison {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "A = {}\nB = {}\n{} common items, paired bootstrap ({} resamples, seed {}):",
            ev.predictions.file, c.predictions_b.file, c.items, c.resamples, c.seed
        );
        let level = format!("{:.0}% CI", (1.0 - c.alpha) * 100.0);
        let w0 = c.rows.iter().map(|r| r.metric.name().len()).max().unwrap_or(6).max(6);
        let _ = writeln!(out, "{:<w0$}  {:>8}  {:>8}  {:>8}  {:>21}  {:>6}", "metric", "A", "B", "A-B", level, "p");
        for r in &c.rows {
            let mcnemar = r.mcnemar.map_or(String::new(), |m| {
                format!("  McNemar exact p={:.3} ({} only A, {} only B)", m.p_value, m.a_only, m.b_only)
            });
            let _ = writeln!(
                out,
                "{:<w0$}  {:>8.4}  {:>8.4}  {:>+8.4}  [{:>+8.4}, {:>+8.4}]  {:>6.3}{mcnemar}",
                r.metric, r.mean_a, r.mean_b, r.delta, r.ci_low, r.ci_high, r.p_value
            );
        }
    }
    out
}

const CSS: &str = r#"
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--accent:#2563eb;--bad:#dc2626;--good:#16a34a}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:36px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
.sub{color:var(--muted);margin:0 0 4px;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px;margin-top:20px}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .name{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:28px;font-weight:650;font-variant-numeric:tabular-nums}
.card .unit{font-size:14px;color:var(--muted);font-weight:400}
.card .parts{font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums}
.card.na .value{font-size:16px;color:var(--bad)}
.note{background:#fffbeb;border:1px solid #fde68a;border-radius:8px;padding:8px 12px;margin:10px 0;overflow-wrap:anywhere}
.plots{display:flex;flex-wrap:wrap;gap:14px}
.plot{background:#fff;border:1px solid var(--line);border-radius:10px;padding:6px;max-width:100%;overflow-x:auto}
.plot svg{display:block;max-width:100%;height:auto}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);border-radius:10px;overflow:hidden}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{background:#f1f5f9;font-weight:600;font-size:12px;color:#475569;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.thumb{width:120px}
.thumb img{max-width:120px;max-height:120px;border-radius:6px;display:block}
.noimg{width:120px;height:80px;border-radius:6px;background:#f1f5f9;color:var(--muted);display:flex;align-items:center;justify-content:center;font-size:12px}
.pred{font-weight:600}
.refs{color:var(--muted);font-size:13px}
.id{color:var(--muted);font-size:12px}
.good{color:var(--good)} .bad{color:var(--bad)}
footer{margin-top:40px;color:var(--muted);font-size:12px}
footer li{overflow-wrap:anywhere}
"#;

/// The whole `report.html`.
pub fn html(ev: &Evaluation, opts: &ReportOptions) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = ev.predictions.model.clone().unwrap_or_else(|| file_name(&ev.predictions.file));
    let _ = writeln!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} — mmloop eval</title><style>{CSS}</style></head><body><main>",
        escape(&title)
    );
    let _ = writeln!(h, "<h1>Evaluation: {}</h1>", escape(&title));
    let refs = match &ev.references.version {
        Some(v) => format!("{} at {}", ev.references.file, v),
        None => ev.references.file.clone(),
    };
    let _ = writeln!(
        h,
        "<p class=\"sub\">{} ({}) against {} ({})</p><p class=\"sub\">{} task · {} items scored · {}</p>",
        escape(&ev.predictions.file),
        escape(&ev.predictions.format),
        escape(&refs),
        escape(&ev.references.format),
        ev.task.name(),
        ev.scored,
        escape(&ev.tool)
    );

    // Headline numbers.
    h.push_str("<div class=\"cards\">\n");
    for m in &ev.metrics {
        let parts: Vec<String> =
            m.parts.iter().map(|p| format!("{} {}", escape(&p.name), format_number(p.value, m.unit))).collect();
        let _ = writeln!(
            h,
            "<div class=\"card\" title=\"{}\"><div class=\"name\">{}</div><div class=\"value\">{}<span class=\"unit\">{}</span></div><div class=\"parts\">{}</div></div>",
            escape(&m.reference),
            escape(m.metric.name()),
            format_value(m),
            escape(unit_suffix(m.unit)),
            parts.join(" · ")
        );
    }
    for u in &ev.unavailable {
        let _ = writeln!(
            h,
            "<div class=\"card na\" title=\"{}\"><div class=\"name\">{}</div><div class=\"value\">unavailable</div><div class=\"parts\">see the note below</div></div>",
            escape(&u.reason),
            escape(u.metric.name())
        );
    }
    h.push_str("</div>\n");
    for u in &ev.unavailable {
        let _ = writeln!(
            h,
            "<p class=\"note\"><b>{}</b> is unavailable: {}</p>",
            escape(u.metric.name()),
            escape(&u.reason)
        );
    }
    for n in &ev.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", escape(n));
    }
    let miss = &ev.missing;
    let missing_note = |what: &str, list: &[crate::evaluate::Missed]| -> String {
        if list.is_empty() {
            return String::new();
        }
        let shown: Vec<String> = list.iter().take(10).map(|m| escape(&m.id)).collect();
        format!(
            "<p class=\"note\">{} {what}: {}{}</p>\n",
            list.len(),
            shown.join(", "),
            if list.len() > 10 { ", … (all in metrics.json)" } else { "" }
        )
    };
    h.push_str(&missing_note("references without a prediction (not scored)", &miss.references_without_prediction));
    h.push_str(&missing_note("predictions without a reference (not scored)", &miss.predictions_without_reference));
    h.push_str(&missing_note("empty predictions (scored as given)", &miss.empty_predictions));

    if let Some(c) = &ev.comparison {
        h.push_str("<h2>A vs B</h2>\n");
        let _ = writeln!(
            h,
            "<p class=\"sub\">A = {} · B = {} · {} common items · {} resamples, seed {}</p>",
            escape(&ev.predictions.file),
            escape(&c.predictions_b.file),
            c.items,
            c.resamples,
            c.seed
        );
        push_plot(&mut h, plots::comparison(&c.rows, 1.0 - c.alpha));
        let _ = writeln!(
            h,
            "<table><tr><th>metric</th><th>A (mean)</th><th>B (mean)</th><th>A − B</th><th>{:.0}% interval</th><th>p</th></tr>",
            (1.0 - c.alpha) * 100.0
        );
        for r in &c.rows {
            // Brier and ECE are better when lower.
            let lower_better = r.metric.lower_is_better();
            let class = match (r.ci_low > 0.0, r.ci_high < 0.0) {
                (true, _) => {
                    if lower_better {
                        "bad"
                    } else {
                        "good"
                    }
                }
                (_, true) => {
                    if lower_better {
                        "good"
                    } else {
                        "bad"
                    }
                }
                _ => "",
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{:.4}</td><td class=\"num\">{:.4}</td><td class=\"num {class}\">{:+.4}</td><td class=\"num\">[{:+.4}, {:+.4}]</td><td class=\"num\">{:.3}</td></tr>",
                escape(r.metric.name()),
                r.mean_a,
                r.mean_b,
                r.delta,
                r.ci_low,
                r.ci_high,
                r.p_value
            );
        }
        h.push_str("</table>\n");
        let _ = writeln!(h, "<p class=\"sub\">{}</p>", escape(&c.method));
    }

    // Breakdowns.
    let mut breakdowns = String::new();
    for m in &ev.metrics {
        let mut kinds: Vec<&str> = m.groups.iter().map(|g| g.kind.as_str()).collect();
        kinds.dedup();
        for kind in kinds {
            let mut gs: Vec<(String, f64, usize)> =
                m.groups.iter().filter(|g| g.kind == kind).map(|g| (g.name.clone(), g.value, g.count)).collect();
            if gs.len() < 2 && kind != "mme_task" {
                continue;
            }
            gs.sort_by(|a, b| a.1.total_cmp(&b.1));
            let max = match m.unit {
                "percent" => 100.0,
                _ if m.metric == Metric::Mme => 200.0,
                _ => gs.iter().map(|g| g.1).fold(1.0, f64::max),
            };
            let title = format!("{} per {}", m.metric, kind.replace('_', " "));
            breakdowns.push_str(&plot_html(plots::bars(&title, &gs, max, m.metric.name())));
        }
    }
    if !breakdowns.is_empty() {
        h.push_str("<h2>Breakdown</h2>\n<div class=\"plots\">\n");
        h.push_str(&breakdowns);
        h.push_str("</div>\n");
    }

    if let Some(c) = &ev.calibration {
        h.push_str("<h2>Calibration</h2>\n");
        let _ = write!(
            h,
            "<p class=\"sub\">ECE {:.4} ({} equal-width bins) · ECE {:.4} (equal-mass) · Brier {:.4} · correct when {}</p>\n<div class=\"plots\">",
            c.ece_equal_width,
            c.bins,
            c.ece_equal_mass,
            c.brier,
            escape(&c.correct_when)
        );
        h.push_str(&plot_html(plots::confidence_histogram(&c.confidence, &c.correct)));
        h.push_str(&plot_html(plots::reliability(&c.reliability)));
        h.push_str("</div>\n");
    }

    let primary = crate::evaluate::primary_metric(&ev.metrics);
    if let Some(p) = primary {
        h.push_str("<h2>Per-item scores</h2>\n<div class=\"plots\">");
        h.push_str(&plot_html(plots::distribution(p.metric.name(), &p.per_item)));
        h.push_str("</div>\n");
        worst_items(&mut h, ev, p, opts);
    }

    h.push_str("<footer><p>Reference implementations reproduced:</p><ul>\n");
    for m in &ev.metrics {
        let _ = writeln!(h, "<li><b>{}</b>: {}</li>", escape(m.metric.name()), escape(&m.reference));
    }
    h.push_str(
        "</ul><p>All scores, per-item scores and missing ids are in metrics.json beside this file.</p></footer>\n",
    );
    h.push_str("</main></body></html>\n");
    h
}

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| p.to_string())
}

fn plot_html(svg: Result<String, String>) -> String {
    match svg {
        // The XML declaration plotters writes is not needed inline.
        Ok(s) => format!(
            "<div class=\"plot\">{}</div>\n",
            s.trim_start_matches(|c| c != '<').replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "")
        ),
        Err(e) => format!("<p class=\"note\">plot failed: {}</p>\n", escape(&e)),
    }
}

fn push_plot(h: &mut String, svg: Result<String, String>) {
    h.push_str("<div class=\"plots\">");
    h.push_str(&plot_html(svg));
    h.push_str("</div>\n");
}

fn worst_items(h: &mut String, ev: &Evaluation, primary: &MetricResult, opts: &ReportOptions) {
    let order: Vec<&(usize, crate::Reference)> = ev.worst_refs.iter().take(opts.worst).collect();
    let _ = writeln!(h, "<h2>Lowest {} ({} items)</h2>", escape(primary.metric.name()), order.len());
    let other: Vec<&MetricResult> = ev.metrics.iter().filter(|m| !m.per_item.is_empty()).collect();
    h.push_str("<table><tr><th>image</th><th>question / prediction / references</th>");
    for m in &other {
        let _ = write!(h, "<th>{}</th>", escape(m.metric.name()));
    }
    h.push_str("</tr>\n");
    for &(i, ref r) in order {
        let item = &ev.items[i];
        let thumb = r.image.as_ref().and_then(|s| thumbnail(s, opts.thumbnail));
        h.push_str("<tr><td class=\"thumb\">");
        match thumb {
            Some(uri) => {
                let _ = write!(h, "<img src=\"{uri}\" alt=\"{}\">", escape(item.image.as_deref().unwrap_or("")));
            }
            None => h.push_str("<div class=\"noimg\">no image</div>"),
        }
        h.push_str("</td><td>");
        let _ = write!(h, "<div class=\"id\">{} · {}</div>", escape(&item.id), escape(&line_of(ev, item.line)));
        if let Some(q) = &item.question {
            let _ = write!(h, "<div>{}</div>", escape(q));
        }
        if !r.choices.is_empty() {
            let opts: Vec<String> = r.choices.iter().map(|(c, t)| format!("{c}. {}", escape(t))).collect();
            let _ = write!(h, "<div class=\"refs\">{}</div>", opts.join(" · "));
        }
        let conf =
            item.confidence.map(|c| format!(" <span class=\"refs\">(confidence {c:.2})</span>")).unwrap_or_default();
        let shown = |t: &str| if t.trim().is_empty() { "<i class=\"refs\">(empty)</i>".to_string() } else { escape(t) };
        let _ = write!(h, "<div class=\"pred\">→ {}{conf}</div>", shown(&item.prediction));
        let refs: Vec<String> = r.answers.iter().take(10).map(|a| shown(a)).collect();
        let _ = write!(h, "<div class=\"refs\">references: {}</div>", refs.join(" | "));
        h.push_str("</td>");
        for m in &other {
            let v = m.per_item.get(i).copied().unwrap_or(f64::NAN);
            let _ = write!(h, "<td class=\"num\">{v:.3}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

/// A small JPEG of the image as a data URI, when the image can be read.
fn thumbnail(src: &ImageSource, side: u32) -> Option<String> {
    let img = match src {
        ImageSource::Path(p) => {
            let path = Path::new(p);
            if !path.is_file() {
                return None;
            }
            image::ImageReader::open(path).ok()?.with_guessed_format().ok()?.decode().ok()?
        }
        ImageSource::Bytes(b) => image::load_from_memory(b).ok()?,
        ImageSource::Url(_) => return None,
    };
    let small = img.thumbnail(side, side).to_rgb8();
    let mut buf = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 82).encode_image(&small).ok()?;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(buf.into_inner())))
}

fn line_of(ev: &Evaluation, line: Option<u64>) -> String {
    let file = file_name(&ev.predictions.file);
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape("<script>a & 'b' \"c\"</script>"),
            "&lt;script&gt;a &amp; &#39;b&#39; &quot;c&quot;&lt;/script&gt;"
        );
        assert_eq!(escape("café ✓"), "café ✓");
    }

    #[test]
    fn numbers_as_the_reference_prints_them() {
        assert_eq!(format_number(55.04, "percent"), "55.04");
        assert_eq!(format_number(0.579_432, "fraction"), "0.5794");
        assert_eq!(format_number(431.25, "points"), "431.25");
    }
}
