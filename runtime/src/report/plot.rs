//! `per_class.png`: per-class accuracy against the class's training count, coloured by group;
//! and the grouped bars of `sslc compare --plot`.
//!
//! The font is embedded (DejaVu Sans, Bitstream Vera licence, see `font/LICENSE-DejaVu.txt`)
//! and rendered by ab_glyph, so the plot draws the same on a machine with no fonts installed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::combinators::IntoLogRange;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
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

    let mut pixels = blank_canvas();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CANVAS).into_drawing_area();
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
            let points: Vec<(f64, f64)> = (0..classes)
                .filter(|&c| groups[c] == group)
                .map(|c| (counts[c], 100.0 * report.per_class[c]))
                .collect();
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
    }
    save_png(path, &pixels)
}

/// One bar colour of [`plot_grouped_bars`]: a name for the legend and, per category, the mean
/// and the half-length of its error bar (`None`: no bar).
pub struct BarSeries {
    pub label: String,
    pub values: Vec<Option<(f64, f64)>>,
}

/// An x axis of categories: category `i` spans `[i, i + 1)`, labelled at its centre only.
struct CategoryAxis {
    range: RangedCoordf64,
    centres: Vec<f64>,
}

impl Ranged for CategoryAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.centres.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }
}

/// Colours of successive series (matplotlib's tab10, which `group_colour` also draws from).
const SERIES_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws grouped bars: for each of `categories` (x), one bar per series, its height the mean
/// (%, y) with a ± error bar; one colour per series, named in the legend.
pub fn plot_grouped_bars(
    path: &Path,
    title: &str,
    categories: &[&str],
    series: &[BarSeries],
) -> Result<(), ReportError> {
    if categories.is_empty() || series.is_empty() || series.iter().any(|s| s.values.len() != categories.len()) {
        return Err(ReportError::Input(format!(
            "the bar plot needs at least one category and one series, each with a value per category: {} categories, {} series",
            categories.len(),
            series.len()
        )));
    }
    let plot_error = |reason: String| ReportError::Plot { path: path.to_path_buf(), reason };
    if !font_registered() {
        return Err(plot_error("the embedded font could not be loaded".into()));
    }
    let highest = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().map(|(mean, err)| mean + err.abs()))
        .filter(|v| v.is_finite())
        .fold(100.0, f64::max);
    let slots = categories.len() as f64;
    let centres: Vec<f64> = (0..categories.len()).map(|i| i as f64 + 0.5).collect();

    let mut pixels = blank_canvas();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CANVAS).into_drawing_area();
        let draw = |error: &dyn std::fmt::Display| plot_error(error.to_string());
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, 28))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            // Headroom above the bars for the legend.
            .build_cartesian_2d(CategoryAxis { range: (0.0..slots).into(), centres }, 0.0..highest * 1.3)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("top-1 accuracy (%)")
            .x_label_formatter(&|x| {
                categories.get(x.floor().max(0.0) as usize).copied().unwrap_or_default().to_string()
            })
            // The headroom above 100 % is for the legend, not for values.
            .y_label_formatter(&|percent| if *percent <= 100.0 { format!("{percent:.0}") } else { String::new() })
            .label_style((FONT_FAMILY, 18))
            .axis_desc_style((FONT_FAMILY, 20))
            .draw()
            .map_err(|e| draw(&e))?;
        let width = 0.8 / series.len() as f64;
        for (index, one) in series.iter().enumerate() {
            let colour = SERIES_COLOURS[index % SERIES_COLOURS.len()];
            let left = |category: usize| category as f64 + 0.1 + index as f64 * width;
            let bars: Vec<(usize, f64, f64)> = one
                .values
                .iter()
                .enumerate()
                .filter_map(|(c, value)| value.filter(|(m, e)| m.is_finite() && e.is_finite()).map(|(m, e)| (c, m, e)))
                .collect();
            chart
                .draw_series(
                    bars.iter().map(|&(c, mean, _)| {
                        Rectangle::new([(left(c), 0.0), (left(c) + width, mean)], colour.filled())
                    }),
                )
                .map_err(|e| draw(&e))?
                .label(one.label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
            for &(c, mean, err) in bars.iter().filter(|(_, _, err)| *err > 0.0) {
                let (x, cap) = (left(c) + width / 2.0, width / 4.0);
                let (low, high) = ((mean - err).max(0.0), mean + err);
                let lines = [
                    vec![(x, low), (x, high)],
                    vec![(x - cap, low), (x + cap, low)],
                    vec![(x - cap, high), (x + cap, high)],
                ];
                chart
                    .draw_series(lines.into_iter().map(|line| PathElement::new(line, BLACK.stroke_width(2))))
                    .map_err(|e| draw(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    save_png(path, &pixels)
}

/// Every plot's size in pixels.
const CANVAS: (u32, u32) = (1000, 640);

/// An RGB pixel buffer of [`CANVAS`]'s size for a plot to draw into.
fn blank_canvas() -> Vec<u8> {
    vec![255; CANVAS.0 as usize * CANVAS.1 as usize * 3]
}

/// Encodes a drawn canvas as PNG and writes it atomically, so a full disk or a kill leaves the
/// earlier plot (or none), never a torn one.
fn save_png(path: &Path, pixels: &[u8]) -> Result<(), ReportError> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, CANVAS.0, CANVAS.1, image::ExtendedColorType::Rgb8)
        .map_err(|e| ReportError::Plot { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::files::write_atomically(path, &png).map_err(|source| ReportError::Io { path: path.to_path_buf(), source })
}
