//! The simulator's runs as a picture: for each contender, the rolling mean
//! latency and success rate over simulated time, with the workload's phases
//! marked. The learning curve shows at a glance how fast each strategy
//! adapts. SVG, drawn with `plotters` (no system libraries).

use plotters::prelude::*;

use crate::sim::{RunResult, Workload};

/// Seconds each point of a curve averages over (the tasks that arrived in
/// that many seconds up to it).
const ROLLING_S: usize = 5;

/// One colour per contender, in order (cycled past the last).
const COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(0, 0, 0),
];

/// A curve's points: (second, rolling value) where the rolling window had
/// tasks. `value(tasks, latency_ms, succeeded)` over the window's sums.
fn rolling(r: &RunResult, value: impl Fn(usize, f64, usize) -> f64) -> Vec<(f64, f64)> {
    let t = &r.timeline;
    (0..t.len())
        .filter_map(|i| {
            let from = (i + 1).saturating_sub(ROLLING_S);
            let (n, ms, ok) = t[from..=i].iter().fold((0, 0.0, 0), |(n, ms, ok), s| {
                (n + s.tasks, ms + s.latency_ms, ok + s.succeeded)
            });
            (n > 0).then(|| (t[i].at_s as f64 + 1.0, value(n, ms, ok)))
        })
        .collect()
}

/// The SVG document of `results` on `workload` (seed `seed`): mean latency
/// above, success rate below, one series per contender in each, the phases
/// as vertical lines. Errors are plotters' own, as text.
pub fn svg(workload: &Workload, seed: u64, results: &[RunResult]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!(
            "{} (seed {seed}): {} tasks at {}/s, rolling {ROLLING_S} s",
            workload.name, workload.tasks, workload.arrival_rate
        );
        let root = root
            .titled(&title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(420);
        let end_s = results
            .iter()
            .map(|r| r.timeline.len())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let latency: Vec<Vec<(f64, f64)>> = results
            .iter()
            .map(|r| rolling(r, |n, ms, _| ms / n as f64))
            .collect();
        let success: Vec<Vec<(f64, f64)>> = results
            .iter()
            .map(|r| rolling(r, |n, _, ok| 100.0 * ok as f64 / n as f64))
            .collect();
        // a log scale shows an oracle at 8 ms and round robin at 80 alike
        let (lo, hi) = latency
            .iter()
            .flatten()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &(_, v)| {
                (lo.min(v), hi.max(v))
            });
        let lo = if lo.is_finite() {
            (lo * 0.8).max(0.1)
        } else {
            1.0
        };
        let hi = (hi * 1.25).max(lo * 2.0);
        let low_success = success
            .iter()
            .flatten()
            .fold(100.0f64, |m, &(_, v)| m.min(v));
        let floor = (low_success - 2.0).clamp(0.0, 98.0).floor();
        let phases: Vec<(f64, String)> = workload
            .phases
            .iter()
            .flat_map(|p| {
                let mut marks = vec![(p.at_s, format!("{} changes", p.group))];
                if let Some(u) = p.until_s {
                    marks.push((u, format!("{} back", p.group)));
                }
                marks
            })
            .collect();

        let mut chart = ChartBuilder::on(&top)
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end_s, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .y_desc("mean latency, ms (log)")
            .x_desc("simulated time, s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (at, label) in &phases {
            chart
                .draw_series(LineSeries::new(
                    vec![(*at, lo), (*at, hi)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*at + end_s / 200.0, hi / 1.1),
                    ("sans-serif", 14),
                )))
                .map_err(|e| e.to_string())?;
        }
        for (i, (r, points)) in results.iter().zip(&latency).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.contender.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;

        let mut chart = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end_s, floor..100.5f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .y_desc("success, %")
            .x_desc("simulated time, s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (at, _) in &phases {
            chart
                .draw_series(LineSeries::new(
                    vec![(*at, floor), (*at, 100.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| e.to_string())?;
        }
        for (i, points) in success.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
