//! `per_class.png`: per-class accuracy against the class's training count, coloured by group.
//!
//! The font is embedded (DejaVu Sans, Bitstream Vera licence, see `font/LICENSE-DejaVu.txt`)
//! and rendered by ab_glyph, so the plot draws the same on a machine with no fonts installed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::ReportError;
use crate::probe::{AccuracyReport, Group};

static DEJAVU_SANS: &[u8] = include_bytes!("font/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process; false if ab_glyph rejects it.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok())
}

fn group_colour(group: Group) -> RGBColor {
    match group {
        Group::Many => RGBColor(31, 119, 180),
        Group::Medium => RGBColor(255, 127, 14),
        Group::Few => RGBColor(214, 39, 40),
    }
}

/// Draws the linear probe's per-class accuracy (y, %) against `train_counts` (x, log scale);
/// `groups[c]` colours class `c`, and the legend gives each group's mean.
pub fn plot_per_class(
    path: &Path,
    report: &AccuracyReport,
    train_counts: &[usize],
    groups: &[Group],
) -> Result<(), ReportError> {
    let classes = report.per_class.len();
    if classes == 0 || train_counts.len() != classes || groups.len() != classes {
        return Err(ReportError::Input(format!(
            "the plot needs at least one class, and one training count and one group per class: {classes} classes, {} counts, {} groups",
            train_counts.len(),
            groups.len()
        )));
    }
    let plot_error = |reason: String| ReportError::Plot { path: path.to_path_buf(), reason };
    if !font_registered() {
        return Err(plot_error("the embedded font could not be loaded".into()));
    }
    // A log axis needs positive values: a class without training images sits at 1.
    let counts: Vec<f64> = train_counts.iter().map(|&count| count.max(1) as f64).collect();
    let lowest = counts.iter().copied().fold(f64::INFINITY, f64::min) * 0.8;
    let highest = counts.iter().copied().fold(1.0, f64::max) * 1.25;

    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    let draw = |error: &dyn std::fmt::Display| plot_error(error.to_string());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Linear-probe accuracy per class", (FONT_FAMILY, 28))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d((lowest..highest).log_scale(), 0.0..100.0)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("training images of the class (log scale)")
        .y_desc("top-1 accuracy (%)")
        .x_label_formatter(&|count| format!("{count:.0}"))
        .y_label_formatter(&|percent| format!("{percent:.0}"))
        .label_style((FONT_FAMILY, 18))
        .axis_desc_style((FONT_FAMILY, 20))
        .draw()
        .map_err(|e| draw(&e))?;
    for group in Group::ALL {
        let colour = group_colour(group);
        let points: Vec<(f64, f64)> =
            (0..classes).filter(|&c| groups[c] == group).map(|c| (counts[c], 100.0 * report.per_class[c])).collect();
        let label = match report.group(group) {
            Some(mean) => format!("{group:?}: mean {:.1}%", 100.0 * mean),
            None => format!("{group:?}: no class"),
        };
        chart
            .draw_series(points.into_iter().map(|point| Circle::new(point, 5, colour.filled())))
            .map_err(|e| draw(&e))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
