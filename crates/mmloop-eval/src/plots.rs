//! The report's plots, drawn with `plotters` into SVG strings that the HTML embeds inline
//! (no script, no network). Text in them is escaped by plotters' SVG backend. Pure
//! drawing: the numbers come from the evaluation.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::evaluate::{CompareRow, ReliabilityBin};

const BLUE: RGBColor = RGBColor(0x25, 0x63, 0xeb);
const GREEN: RGBColor = RGBColor(0x16, 0xa3, 0x4a);
const RED: RGBColor = RGBColor(0xdc, 0x26, 0x26);
const GRID: RGBColor = RGBColor(0xe5, 0xe7, 0xeb);
const INK: RGBColor = RGBColor(0x37, 0x41, 0x51);
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn svg(w: u32, h: u32, draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<String, String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

fn e<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Horizontal bars, one per group (`name`, value, count), on a 0..`max` axis.
pub(crate) fn bars(title: &str, groups: &[(String, f64, usize)], max: f64, x_desc: &str) -> Result<String, String> {
    let n = groups.len().max(1);
    let longest = groups.iter().map(|(g, _, c)| label(g, *c).chars().count()).max().unwrap_or(4);
    let label_px = (longest as u32 * 7 + 12).clamp(60, 300);
    let h = 70 + 22 * n as u32;
    svg(720, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16).into_font().color(&INK))
            .margin(10)
            .margin_right(40)
            .x_label_area_size(32)
            .y_label_area_size(label_px)
            .build_cartesian_2d(0f64..max, (0..n).into_segmented())
            .map_err(e)?;
        let names: Vec<String> = groups.iter().map(|(g, _, c)| label(g, *c)).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(x_desc)
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(groups.iter().enumerate().map(|(i, (_, v, _))| {
                let mut r = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (v.clamp(0.0, max), SegmentValue::Exact(i + 1))],
                    BLUE.mix(0.8).filled(),
                );
                r.set_margin(3, 3, 0, 0);
                r
            }))
            .map_err(e)?;
        chart
            .draw_series(groups.iter().enumerate().map(|(i, (_, v, _))| {
                Text::new(
                    round_label(*v),
                    (v.clamp(0.0, max) + max * 0.01, SegmentValue::CenterOf(i)),
                    (FONT, 11).into_font().color(&INK).pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(e)?;
        Ok(())
    })
}

fn label(name: &str, count: usize) -> String {
    let short: String =
        if name.chars().count() > 36 { name.chars().take(35).chain(['…']).collect() } else { name.to_string() };
    if count > 0 { format!("{short} ({count})") } else { short }
}

fn round_label(v: f64) -> String {
    if v.abs() >= 10.0 { format!("{v:.2}") } else { format!("{v:.3}") }
}

/// Histogram of confidences in 20 bins over [0, 1], split into right and wrong answers.
pub(crate) fn confidence_histogram(confidence: &[f64], correct: &[bool]) -> Result<String, String> {
    const BINS: usize = 20;
    let mut right = [0u32; BINS];
    let mut wrong = [0u32; BINS];
    for (&c, &ok) in confidence.iter().zip(correct) {
        let b = ((c * BINS as f64) as usize).min(BINS - 1);
        if ok {
            right[b] += 1;
        } else {
            wrong[b] += 1;
        }
    }
    let top = (0..BINS).map(|b| right[b] + wrong[b]).max().unwrap_or(1).max(1) as f64 * 1.08;
    svg(480, 320, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Confidence", (FONT, 16).into_font().color(&INK))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_desc("confidence")
            .y_desc("answers")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        let w = 1.0 / BINS as f64;
        chart
            .draw_series((0..BINS).map(|b| {
                let x = b as f64 * w;
                Rectangle::new([(x + w * 0.05, 0.0), (x + w * 0.95, right[b] as f64)], GREEN.mix(0.8).filled())
            }))
            .map_err(e)?
            .label("right")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], GREEN.mix(0.8).filled()));
        chart
            .draw_series((0..BINS).map(|b| {
                let x = b as f64 * w;
                let lo = right[b] as f64;
                Rectangle::new([(x + w * 0.05, lo), (x + w * 0.95, lo + wrong[b] as f64)], RED.mix(0.7).filled())
            }))
            .map_err(e)?
            .label("wrong")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RED.mix(0.7).filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(GRID)
            .label_font((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// Reliability diagram: accuracy per confidence bin against the diagonal of perfect
/// calibration, with each bin's mean confidence marked.
pub(crate) fn reliability(bins: &[ReliabilityBin]) -> Result<String, String> {
    svg(480, 320, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Reliability", (FONT, 16).into_font().color(&INK))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_desc("confidence")
            .y_desc("accuracy")
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(bins.iter().filter_map(|b| {
                let acc = b.accuracy?;
                let w = b.upper - b.lower;
                Some(Rectangle::new([(b.lower + w * 0.06, 0.0), (b.upper - w * 0.06, acc)], BLUE.mix(0.75).filled()))
            }))
            .map_err(e)?
            .label("accuracy")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.mix(0.75).filled()));
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], ShapeStyle::from(INK.mix(0.6)).stroke_width(1)))
            .map_err(e)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], INK.mix(0.6)));
        chart
            .draw_series(
                bins.iter().filter_map(|b| Some(Circle::new((b.mean_confidence?, b.accuracy?), 3, RED.filled()))),
            )
            .map_err(e)?
            .label("mean confidence")
            .legend(|(x, y)| Circle::new((x + 5, y), 3, RED.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(GRID)
            .label_font((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// Histogram of per-item scores of one metric.
pub(crate) fn distribution(metric: &str, values: &[f64]) -> Result<String, String> {
    const BINS: usize = 20;
    let hi = values.iter().copied().fold(1.0f64, f64::max);
    let w = hi / BINS as f64;
    let mut counts = [0u32; BINS];
    for &v in values {
        counts[((v / w) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.08;
    svg(480, 320, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Per-item {metric}"), (FONT, 16).into_font().color(&INK))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..hi, 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_desc(metric)
            .y_desc("items")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series((0..BINS).map(|b| {
                let x = b as f64 * w;
                Rectangle::new([(x + w * 0.05, 0.0), (x + w * 0.95, counts[b] as f64)], BLUE.mix(0.8).filled())
            }))
            .map_err(e)?;
        Ok(())
    })
}

/// A − B per metric with its confidence interval, against zero.
pub(crate) fn comparison(rows: &[CompareRow], level: f64) -> Result<String, String> {
    let n = rows.len().max(1);
    let span =
        rows.iter().map(|r| r.ci_low.abs().max(r.ci_high.abs()).max(r.delta.abs())).fold(1e-9f64, f64::max) * 1.25;
    let h = 80 + 34 * n as u32;
    svg(720, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("A − B per item, {:.0}% bootstrap interval", level * 100.0),
                (FONT, 16).into_font().color(&INK),
            )
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(110)
            .build_cartesian_2d(-span..span, (0..n).into_segmented())
            .map_err(e)?;
        let names: Vec<String> = rows.iter().map(|r| r.metric.to_string()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("mean per-item score, A − B")
            .label_style((FONT, 12).into_font().color(&INK))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Exact(n))],
                ShapeStyle::from(INK.mix(0.5)).stroke_width(1),
            ))
            .map_err(e)?;
        for (i, r) in rows.iter().enumerate() {
            // Brier and ECE are better when lower.
            let flip = r.metric.lower_is_better();
            let color = match (r.ci_low > 0.0, r.ci_high < 0.0) {
                (true, _) if flip => RED,
                (true, _) => GREEN,
                (_, true) if flip => GREEN,
                (_, true) => RED,
                _ => INK,
            };
            let y = || SegmentValue::CenterOf(i);
            chart
                .draw_series(LineSeries::new(
                    [(r.ci_low, y()), (r.ci_high, y())],
                    ShapeStyle::from(color).stroke_width(3),
                ))
                .map_err(e)?;
            chart.draw_series([Circle::new((r.delta, y()), 5, color.filled())]).map_err(e)?;
            chart
                .draw_series([Text::new(
                    format!("{:+.4}  p={:.3}", r.delta, r.p_value),
                    (r.ci_high + span * 0.03, y()),
                    (FONT, 11).into_font().color(&INK).pos(Pos::new(HPos::Left, VPos::Center)),
                )])
                .map_err(e)?;
        }
        Ok(())
    })
}
