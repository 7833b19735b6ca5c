//! An online experiment as a person reads it: the arms, each arm against the control with
//! its always-valid confidence sequence, the sample-ratio check, the recommendation, and two
//! plots (the arms' success rates and the difference with its confidence sequence as users
//! came in). One renderer for `mmloop ab status --html` and the review server's
//! experiments page: SVG drawn with `plotters` (text escaped by its backend), HTML with
//! every string escaped, no script.

use std::fmt::Write as _;

use mmloop_store::ab::AbStatus;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x25, 0x63, 0xeb),
    RGBColor(0xea, 0x58, 0x0c),
    RGBColor(0x16, 0xa3, 0x4a),
    RGBColor(0x93, 0x33, 0xea),
    RGBColor(0xdb, 0x27, 0x77),
    RGBColor(0x0d, 0x94, 0x88),
];
const GRID: RGBColor = RGBColor(0xe5, 0xe7, 0xeb);
const INK: RGBColor = RGBColor(0x37, 0x41, 0x51);
const FONT: &str = "sans-serif";

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn svg(draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>) -> String {
    let mut buf = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut buf, (640, 340)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root))
            .and_then(|_| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => buf,
        Err(e) => format!("<p>plot not drawn: {}</p>", escape(&e)),
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A plot's frame: its title, users with an outcome across, `y` up to the range given.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    users: f64,
    (lo, hi): (f64, f64),
    y: &str,
) -> Result<Chart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 16).into_font().color(&INK))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..users, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .x_desc("users with an outcome")
        .y_desc(y)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{:.2}", if v.abs() < 1e-9 { 0.0 } else { *v }))
        .label_style((FONT, 12).into_font().color(&INK))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, at: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.9))
        .border_style(GRID)
        .label_font((FONT, 12).into_font().color(&INK))
        .draw()
        .map_err(err)
}

fn line_legend(col: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 14, y)], ShapeStyle::from(col).stroke_width(2))
}

/// The arms' mean outcome over the users with outcomes so far.
pub fn rates_plot(s: &AbStatus) -> String {
    let n = s.trajectory.last().map_or(1, |l| l.units).max(1) as f64;
    let values = s.trajectory.iter().flat_map(|l| l.arms.iter().filter_map(|(_, m)| *m));
    let (lo, hi) = values.fold((1.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let range = if lo > hi { (0.0, 1.0) } else { ((lo - 0.05).max(0.0), (hi + 0.05).min(1.0)) };
    svg(|root| {
        let mut chart = frame(root, "Success rate by arm", n, range, "mean outcome")?;
        for (i, arm) in s.arms.iter().enumerate() {
            let points: Vec<(f64, f64)> =
                s.trajectory.iter().filter_map(|l| Some((l.units as f64, l.arms.get(i)?.1?))).collect();
            chart
                .draw_series(LineSeries::new(points, ShapeStyle::from(color(i)).stroke_width(2)))
                .map_err(err)?
                .label(arm.arm.clone())
                .legend(line_legend(color(i)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// Each arm minus the control as users came in, with its always-valid confidence sequence.
pub fn difference_plot(s: &AbStatus) -> String {
    let n = s.trajectory.last().map_or(1, |l| l.units).max(1) as f64;
    // The first looks' sequences are wide: the range follows the last nine tenths (the early
    // band is cut at the frame).
    let settled = &s.trajectory[s.trajectory.len() / 10..];
    let bounds = settled.iter().flat_map(|l| l.comparisons.iter().flatten()).flat_map(|q| [q.low, q.high]);
    let (lo, hi) = bounds.filter(|v| v.is_finite()).fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo.max(-1.0) - 0.01, hi.min(1.0) + 0.01);
    let title = format!("Difference from {} (always-valid {:.0}% sequence)", s.arms[0].arm, (1.0 - s.alpha) * 100.0);
    svg(|root| {
        let mut chart = frame(root, &title, n, (lo, hi), "difference of mean outcome")?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (n, 0.0)], ShapeStyle::from(INK.mix(0.7)).stroke_width(1)))
            .map_err(err)?;
        for (j, c) in s.comparisons.iter().enumerate() {
            let col = color(j + 1);
            let looks: Vec<(f64, f64, f64, f64)> = s
                .trajectory
                .iter()
                .filter_map(|l| {
                    let q = l.comparisons.get(j)?.as_ref()?;
                    Some((l.units as f64, q.difference, q.low.max(lo), q.high.min(hi)))
                })
                .collect();
            if looks.is_empty() {
                continue;
            }
            let band: Vec<(f64, f64)> = looks
                .iter()
                .map(|&(x, _, _, h)| (x, h))
                .chain(looks.iter().rev().map(|&(x, _, l, _)| (x, l)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(band, col.mix(0.18).filled()))).map_err(err)?;
            chart
                .draw_series(LineSeries::new(
                    looks.iter().map(|&(x, d, _, _)| (x, d)),
                    ShapeStyle::from(col).stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{} − {}", c.arm, c.against))
                .legend(line_legend(col));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// `&`, `<`, `>`, `"` and `'` as entities.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("–".into(), |v| format!("{v:.digits$}"))
}

const CSS: &str = "body{margin:0;font:14px/1.5 system-ui,sans-serif;color:#1f2937;background:#f8fafc}\
main{max-width:1100px;margin:0 auto;padding:28px 24px 60px}h1{font-size:24px;margin:0 0 4px}\
h2{font-size:18px;margin:30px 0 10px;padding-bottom:6px;border-bottom:1px solid #e5e7eb}\
.sub{color:#6b7280}table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e5e7eb}\
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid #e5e7eb}th{background:#f1f5f9;font-size:12px}\
td.num{text-align:right;font-variant-numeric:tabular-nums}.plots{display:flex;flex-wrap:wrap;gap:14px}\
.plot{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:6px}.plot svg{display:block;max-width:100%;height:auto}\
.verdict{font-weight:600}.bad{color:#dc2626}.good{color:#16a34a}";

/// The tables and plots, the page's body.
fn fragment(s: &AbStatus) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<p class=\"sub\">α = {} ({} per comparison), τ = {}; the unit is the {}</p>",
        s.alpha,
        num(Some(s.level_per_comparison), 4),
        s.tau,
        escape(s.unit)
    );
    h.push_str(
        "<table><thead><tr><th>arm</th><th>model</th><th>share</th><th>users</th><th>requests</th>\
         <th>with outcome</th><th>success</th><th>latency</th><th>confidence</th></tr></thead><tbody>",
    );
    for (a, w) in s.arms.iter().zip(&s.experiment.weights) {
        let rate = (a.units_with_outcome > 0).then(|| a.unit_sum / a.units_with_outcome as f64);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=num>{:.0}%</td><td class=num>{}</td><td class=num>{}</td>\
             <td class=num>{}</td><td class=num>{}</td><td class=num>{} ms</td><td class=num>{}</td></tr>",
            escape(&a.arm),
            escape(&a.model),
            w * 100.0,
            a.units,
            a.exposures,
            a.outcomes,
            num(rate, 3),
            num(a.mean_latency_ms, 0),
            num(a.mean_confidence, 3)
        );
    }
    h.push_str("</tbody></table>");
    let _ = write!(
        h,
        "<p>Sample ratio check (χ² of users per arm against the split): p = {}{}</p>",
        num(Some(s.srm_p_value), 4),
        if s.srm_mismatch { " — <span class=bad>MISMATCH</span>" } else { "" }
    );
    h.push_str(
        "<table><thead><tr><th>comparison</th><th>difference</th><th>confidence sequence</th>\
         <th>always-valid p</th><th>recommendation</th></tr></thead><tbody>",
    );
    for c in &s.comparisons {
        let q = c.sequential.as_ref();
        let class = if c.recommendation.contains("better") {
            "good"
        } else if c.recommendation.starts_with("stop") {
            "bad"
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr><td>{} − {}</td><td class=num>{}</td><td class=num>[{}, {}]</td><td class=num>{}</td>\
             <td class=\"verdict {class}\">{}</td></tr>",
            escape(&c.arm),
            escape(&c.against),
            num(q.map(|q| q.difference), 4),
            num(q.map(|q| q.low), 4),
            num(q.map(|q| q.high), 4),
            num(q.map(|q| q.p_value), 4),
            escape(&c.recommendation)
        );
    }
    h.push_str("</tbody></table>");
    let _ = write!(
        h,
        "<div class=plots><div class=plot>{}</div><div class=plot>{}</div></div>",
        rates_plot(s),
        difference_plot(s)
    );
    h.push_str(
        "<p class=sub>Users in the order of their first outcome, each with their mean outcome now. \
         The band is the normal-mixture mSPRT confidence sequence at each point: valid at every look, \
         so the experiment may be read (and stopped) at any time; an arm is called better or worse when \
         the always-valid p-value reaches the level per comparison.</p>",
    );
    h
}

/// A standalone HTML page.
pub fn html(s: &AbStatus) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{} — mmloop experiment</title><style>{CSS}</style></head><body><main><h1>Experiment {}</h1>{}</main></body></html>",
        escape(&s.experiment.name),
        escape(&s.experiment.name),
        fragment(s)
    )
}
