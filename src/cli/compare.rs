//! `sslc compare RUN...`: the Many/Medium/Few table of finished runs, as mean ± std over the
//! seeds of each configuration. Runs that differ only in their seed (and run directory) are
//! one row, so `sslc compare runs/*` turns a seed sweep into the table a paper reports;
//! as Markdown (for reading), CSV (for spreadsheets and pandas) and, with `--plot`, grouped bars.

use super::common::{fail, print_stdout};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use sslc_runtime::probe::AccuracyReport;
use sslc_runtime::report::{plot_grouped_bars, BarSeries};
use sslc_runtime::train::RunIdentity;
use std::path::{Path, PathBuf};

/// Tabulate finished runs: Many/Medium/Few accuracy as mean ± std over seeds (Markdown or CSV; a bar plot with --plot)
#[derive(Args)]
#[command(after_help = "Example (three seeds of two objectives):\n  \
for s in 0 1 2; do for o in simclr simclr_gh; do\n    \
sslc run objectives/$o.ssl --dataset fashion-mnist-lt --seed $s --out runs/fm-$o-$s\n  \
done; done\n  \
sslc compare runs/fm-*\n  \
sslc compare runs/fm-* --format csv --plot fm.png > fm.csv\n\n\
CSV columns: objective, dataset, runs, then the mean and std of each of many, medium, few, overall and
group_std (percent; empty where a run lacks the value). The plot draws Many / Medium / Few / overall
per configuration: the bar is the mean over seeds, the error bar ± the sample std.")]
pub struct CompareArgs {
    /// Run directories (or their summary.json files)
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Which classifier's accuracies to tabulate
    #[arg(long, value_enum, default_value = "linear")]
    classifier: Classifier,
    /// How the table is printed on stdout
    #[arg(long, value_enum, default_value = "md")]
    format: Format,
    /// Also draw the accuracies as grouped bars into this PNG file (default: no plot)
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A Markdown table, mean ± std
    Md,
    /// Comma-separated values with a header line, means and stds in separate columns
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum Classifier {
    /// The linear probe (docs/method.md, "Evaluation")
    Linear,
    /// Cosine kNN with k = 20
    Knn20,
}

/// The parts of `summary.json` the table needs.
#[derive(Deserialize)]
struct Summary {
    run: RunIdentity,
    linear: AccuracyReport,
    knn: Vec<KnnEntry>,
}

#[derive(Deserialize)]
struct KnnEntry {
    k: usize,
    accuracy: AccuracyReport,
}

/// One table row: every run of one configuration.
struct Row {
    /// The run identity with the seeds removed: runs with equal keys are seeds of one experiment.
    key: RunIdentity,
    label: String,
    reports: Vec<AccuracyReport>,
}

pub fn compare(args: &CompareArgs) -> i32 {
    let mut rows: Vec<Row> = Vec::new();
    for path in &args.runs {
        let (summary, file) = match read_summary(path) {
            Ok(found) => found,
            Err(message) => return fail(message),
        };
        let report = match args.classifier {
            Classifier::Linear => Some(summary.linear),
            Classifier::Knn20 => summary.knn.into_iter().find(|entry| entry.k == 20).map(|entry| entry.accuracy),
        };
        let Some(report) = report else {
            return fail(format!("{} has no kNN (k = 20) result", file.display()));
        };
        let key = without_seeds(summary.run);
        match rows.iter_mut().find(|row| row.key == key) {
            Some(row) => row.reports.push(report),
            None => rows.push(Row { label: label(&key), key, reports: vec![report] }),
        }
    }
    if let Some(path) = &args.plot {
        if let Err(e) = plot(path, &rows, args.classifier) {
            return fail(e);
        }
    }
    print_stdout(&match args.format {
        Format::Md => table(&rows),
        Format::Csv => csv(&rows),
    });
    0
}

/// Reads one column's value from a run's report.
type Pick = fn(&AccuracyReport) -> Option<f64>;

/// The columns of both tables: name and how to read it from one run's report.
const COLUMNS: [(&str, Pick); 5] = [
    ("Many", |r| r.many),
    ("Medium", |r| r.medium),
    ("Few", |r| r.few),
    ("overall", |r| Some(r.overall)),
    ("group std", |r| r.group_std),
];

fn column(row: &Row, pick: Pick) -> MeanStd {
    MeanStd::of(row.reports.iter().map(pick))
}

/// Grouped bars of the accuracy columns (not the group std, which is no accuracy).
fn plot(path: &Path, rows: &[Row], classifier: Classifier) -> Result<(), String> {
    let accuracies = &COLUMNS[..4];
    let series: Vec<BarSeries> = rows
        .iter()
        .map(|row| BarSeries {
            label: format!("{} (n = {})", row.label, row.reports.len()),
            values: accuracies.iter().map(|&(_, pick)| column(row, pick).0.map(|(mean, std, _)| (mean, std))).collect(),
        })
        .collect();
    let names: Vec<&str> = accuracies.iter().map(|&(name, _)| name).collect();
    let title = match classifier {
        Classifier::Linear => "Linear-probe accuracy, mean ± std over seeds",
        Classifier::Knn20 => "kNN (k = 20) accuracy, mean ± std over seeds",
    };
    plot_grouped_bars(path, title, &names, &series).map_err(|e| e.to_string())
}

/// CSV with a header; objective and dataset in their own columns, so it sorts and filters.
fn csv(rows: &[Row]) -> String {
    let mut out = String::from("objective,dataset,runs");
    for (name, _) in COLUMNS {
        let key = name.to_lowercase().replace(' ', "_");
        out.push_str(&format!(",{key}_mean,{key}_std"));
    }
    out.push('\n');
    for row in rows {
        let dataset = row.key.train.context.as_ref().map_or("", |c| c.dataset.as_str());
        out.push_str(&format!("{},{},{}", csv_field(&row.key.objective), csv_field(dataset), row.reports.len()));
        for (_, pick) in COLUMNS {
            match column(row, pick).0 {
                Some((mean, std, _)) => out.push_str(&format!(",{mean:.4},{std:.4}")),
                None => out.push_str(",,"),
            }
        }
        out.push('\n');
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Reads `path/summary.json` (or `path` itself when it is the file).
fn read_summary(path: &Path) -> Result<(Summary, PathBuf), String> {
    let file = if path.is_dir() { path.join(sslc_runtime::report::SUMMARY_FILE) } else { path.to_path_buf() };
    let text = sslc_runtime::files::read_regular_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e} (is it a finished `sslc run` directory?)", file.display()))?;
    let summary = serde_json::from_str(&text).map_err(|e| {
        format!("{} is not an sslc summary: {e} (rerun the evaluation with `sslc probe`)", file.display())
    })?;
    Ok((summary, file))
}

/// The run identity minus the seeds (zeroed).
fn without_seeds(mut run: RunIdentity) -> RunIdentity {
    run.train.seed = 0;
    run.encoder.seed = 0;
    run
}

/// `objective (dataset)`, the row's name.
fn label(key: &RunIdentity) -> String {
    let dataset = key.train.context.as_ref().map_or("?", |c| c.dataset.as_str());
    format!("{} ({dataset})", key.objective)
}

/// A Markdown table, accuracies in percent as mean ± sample std over the row's runs.
fn table(rows: &[Row]) -> String {
    let mut out = String::from("| objective | runs |");
    for (name, _) in COLUMNS {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str(&format!("\n|---|---|{}\n", "---|".repeat(COLUMNS.len())));
    for row in rows {
        out.push_str(&format!("| {} | {} |", row.label, row.reports.len()));
        for (_, pick) in COLUMNS {
            out.push_str(&format!(" {} |", column(row, pick)));
        }
        out.push('\n');
    }
    out
}

/// Mean ± sample standard deviation of percentages; `-` when any run lacks the value.
struct MeanStd(Option<(f64, f64, usize)>);

impl MeanStd {
    fn of(values: impl Iterator<Item = Option<f64>>) -> Self {
        let values: Option<Vec<f64>> = values.map(|v| v.map(|v| 100.0 * v)).collect();
        MeanStd(values.filter(|v| !v.is_empty()).map(|v| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
            (mean, var.sqrt(), v.len())
        }))
    }
}

impl std::fmt::Display for MeanStd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some((mean, _, 1)) => write!(f, "{mean:.2}"),
            Some((mean, std, _)) => write!(f, "{mean:.2} ± {std:.2}"),
        }
    }
}
