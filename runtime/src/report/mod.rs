//! What a run leaves for people: `metrics.jsonl`, `summary.json`, `per_class.png`, TensorBoard
//! event files, a console table of the Many/Medium/Few accuracies and a progress bar.

mod plot;
mod progress;
pub mod tensorboard;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::files::write_atomically;
use crate::probe::{AccuracyReport, Evaluation, Group};

pub use plot::{plot_grouped_bars, plot_per_class, BarSeries};
pub use progress::Progress;
pub use tensorboard::TensorBoard;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
/// The run's configuration: its front end's record, which [`crate::train`] writes once it
/// holds the run directory.
pub const CONFIG_FILE: &str = "config.toml";
pub const PER_CLASS_PLOT_FILE: &str = "per_class.png";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}; check that the run directory is writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot draw {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("{0}")]
    Input(String),
}

/// Appends one JSON object per line to `metrics.jsonl`, flushed line by line so that a crash
/// loses nothing already logged; with [`MetricsLog::log_to_tensorboard`], every line also goes
/// to the run's TensorBoard events file, so the training loop feeds both from one place.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    /// Optimisation steps logged so far, counting those kept from before a resume: the step
    /// axis of TensorBoard.
    steps: u64,
    tensorboard: Option<TensorBoard>,
}

impl MetricsLog {
    /// Opens the log of a run that resumes at `first_epoch` (0 for a new run): lines of later
    /// epochs, logged after the last checkpoint by an interrupted run, are dropped because
    /// those epochs are trained again.
    pub fn open(path: &Path, first_epoch: usize) -> Result<Self, ReportError> {
        let io_error = |source| ReportError::Io { path: path.to_path_buf(), source };
        let kept: String = match fs::read_to_string(path) {
            Ok(previous) => previous
                .lines()
                .filter(|line| {
                    let epoch = serde_json::from_str::<Value>(line).ok().and_then(|value| value["epoch"].as_u64());
                    epoch.is_some_and(|epoch| (epoch as usize) < first_epoch)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(io_error(error)),
        };
        write_atomically(path, kept.as_bytes()).map_err(io_error)?;
        let steps = kept
            .lines()
            .filter(|line| serde_json::from_str::<Value>(line).is_ok_and(|value| value["kind"] == "step"))
            .count() as u64;
        let file = OpenOptions::new().append(true).open(path).map_err(io_error)?;
        Ok(MetricsLog { path: path.to_path_buf(), file, steps, tensorboard: None })
    }

    /// Also writes every later line to a new TensorBoard events file beside the log, starting
    /// with the run's hyper-parameters (`identity`, see [`tensorboard::hparams_of`]) and the
    /// metrics its HPARAMS table shows (`metric_tags`, e.g. [`headline_metric_tags`]). Step
    /// lines are scalars under their own names, epoch lines under `epoch/<name>`, evaluations
    /// under their names (`linear_top1`, `knn20_few`); the step axis counts optimisation steps.
    pub fn log_to_tensorboard(&mut self, identity: &Value, metric_tags: &[String]) {
        let dir = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut tensorboard = TensorBoard::create(dir, self.steps);
        tensorboard.hparams(identity, metric_tags);
        self.tensorboard = Some(tensorboard);
    }

    /// Adds the per-class plot to TensorBoard and marks the run finished in its HPARAMS table.
    pub fn finish_tensorboard(&mut self, per_class_plot: &Path) {
        if let Some(tensorboard) = self.tensorboard.as_mut() {
            tensorboard.png(self.steps, "per_class", per_class_plot);
            tensorboard.session_succeeded();
        }
    }

    fn write(&mut self, mut line: Map<String, Value>, metrics: &[(String, f64)]) -> Result<(), ReportError> {
        for (key, value) in metrics {
            line.insert(key.clone(), json!(value));
        }
        let kind = line.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if kind == "step" {
            self.steps += 1;
        }
        if let Some(tensorboard) = self.tensorboard.as_mut() {
            tensorboard.scalars(self.steps, if kind == "epoch" { "epoch/" } else { "" }, &line);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let io_error = |source| ReportError::Io { path: self.path.clone(), source };
        self.file.write_all(text.as_bytes()).map_err(io_error)?;
        self.file.flush().map_err(io_error)
    }

    /// One optimisation step; `epoch` is 0-based, `metrics` are the objective's. `data_wait`
    /// is the fraction of the step spent waiting for the batch: near 0 when the loader keeps
    /// up, near 1 when it is what limits training.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        epoch: usize,
        step: usize,
        loss: f64,
        lr: f64,
        seconds: f64,
        images_per_second: f64,
        data_wait: f64,
        metrics: &[(String, f64)],
    ) -> Result<(), ReportError> {
        let line = json!({"kind": "step", "epoch": epoch, "step": step, "loss": loss, "lr": lr, "seconds": seconds, "images_per_s": images_per_second, "data_wait": data_wait});
        self.write(as_map(line), metrics)
    }

    /// One epoch: image-weighted mean loss and metrics; `data_wait` as for [`MetricsLog::step`],
    /// over the epoch's steps.
    #[allow(clippy::too_many_arguments)]
    pub fn epoch(
        &mut self,
        epoch: usize,
        loss: f64,
        lr: f64,
        seconds: f64,
        images_per_second: f64,
        data_wait: f64,
        metrics: &[(String, f64)],
    ) -> Result<(), ReportError> {
        let line = json!({"kind": "epoch", "epoch": epoch, "loss": loss, "lr": lr, "seconds": seconds, "images_per_s": images_per_second, "data_wait": data_wait});
        self.write(as_map(line), metrics)
    }

    /// Whether the log holds the evaluation after `completed` epochs: a run killed between
    /// logging its final evaluation and writing its reports has it there already, and its
    /// resume, which redoes the evaluation (to the same figures), must not log it twice.
    pub fn has_evaluation(&self, completed: usize) -> Result<bool, ReportError> {
        let text =
            fs::read_to_string(&self.path).map_err(|source| ReportError::Io { path: self.path.clone(), source })?;
        let epoch = completed.saturating_sub(1) as u64;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|line| line["kind"] == "eval" && line["epoch"].as_u64() == Some(epoch)))
    }

    /// An evaluation after `completed` epochs (logged with `epoch = completed - 1`, the epoch
    /// it follows, so that resuming drops it with that epoch).
    pub fn evaluation(&mut self, completed: usize, result: &Evaluation) -> Result<(), ReportError> {
        let mut line = as_map(json!({"kind": "eval", "epoch": completed.saturating_sub(1)}));
        line.extend(accuracy_fields("linear", &result.linear));
        for (k, report) in &result.knn {
            line.extend(accuracy_fields(&format!("knn{k}"), report));
        }
        self.write(line, &[])
    }
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The headline numbers of one classifier, keys prefixed (`linear_top1`, `knn20_few`).
fn accuracy_fields(prefix: &str, report: &AccuracyReport) -> Map<String, Value> {
    as_map(json!({
        format!("{prefix}_top1"): report.overall,
        format!("{prefix}_many"): report.many,
        format!("{prefix}_medium"): report.medium,
        format!("{prefix}_few"): report.few,
        format!("{prefix}_per_class_std"): report.per_class_std,
        format!("{prefix}_group_std"): report.group_std,
    }))
}

/// The accuracies TensorBoard's HPARAMS table compares runs by: the linear probe's overall,
/// Many/Medium/Few and balancedness, and each kNN's top-1 (names as [`accuracy_fields`]).
pub fn headline_metric_tags(knn_k: &[usize]) -> Vec<String> {
    let mut tags: Vec<String> =
        ["top1", "many", "medium", "few", "group_std"].iter().map(|field| format!("linear_{field}")).collect();
    tags.extend(knn_k.iter().map(|k| format!("knn{k}_top1")));
    tags
}

/// `summary.json`: what ran (`run`: objective, training and encoder configuration, seed,
/// context), the sslc version, the compute threads, and the final evaluation in full
/// (per-class accuracies included). The threads are a record of the machine, not part of
/// the run's identity: results are the same on any number of them.
pub fn write_summary(dir: &Path, run: &Value, result: &Evaluation) -> Result<(), ReportError> {
    let path = dir.join(SUMMARY_FILE);
    let knn: Vec<Value> = result.knn.iter().map(|(k, report)| json!({"k": k, "accuracy": report})).collect();
    let summary = json!({
        "run": run,
        "version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
        "linear": result.linear,
        "knn": knn,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(|e| ReportError::Input(e.to_string()))?;
    write_atomically(&path, text.as_bytes()).map_err(|source| ReportError::Io { path, source })
}

/// The Many/Medium/Few table printed at the end of a run, accuracies in percent.
pub fn group_table(report: &AccuracyReport) -> String {
    let percent = |value: Option<f64>| value.map_or_else(|| "     -".to_string(), |v| format!("{:6.2}", 100.0 * v));
    let mut table = String::from("group     top-1 %\n");
    for group in Group::ALL {
        table.push_str(&format!("{:<8} {}\n", format!("{group:?}"), percent(report.group(group))));
    }
    table.push_str(&format!("{:<8} {}\n", "overall", percent(Some(report.overall))));
    table.push_str(&format!(
        "std of per-class accuracy {:.4}, of group accuracies (balancedness) {}",
        report.per_class_std,
        report.group_std.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
    ));
    table
}
