//! `sslc run`: train a backbone with an objective on a long-tailed benchmark and report
//! linear-probe accuracy for the Many / Medium / Few classes; `sslc probe`: evaluate a saved
//! checkpoint again; `sslc split`: print a long-tailed subset.

use super::common::{fail, load_objective, load_trained, print_stdout, Backend, Trained};
use clap::{Args, ValueEnum};
use sslc::objective::CompiledObjective;
use sslc_compiler::eval::Overrides;
use sslc_runtime::data::{self, DataSplits, DatasetName, ImbalanceProfile};
use sslc_runtime::model::{Encoder, EncoderConfig};
use sslc_runtime::objective::Objective;
use sslc_runtime::presets::{self, Backbone, EvalData, RunContext};
use sslc_runtime::train::{self, Start, TrainConfig};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum ImbType {
    /// n_c = n_max · r^(c/(C−1)).
    Exp,
    /// Half the classes keep n_max, half n_max · r.
    Step,
}

impl ImbType {
    fn profile(self) -> ImbalanceProfile {
        match self {
            ImbType::Exp => ImbalanceProfile::Exp,
            ImbType::Step => ImbalanceProfile::Step,
        }
    }
}

/// Train a backbone with an objective and report Many/Medium/Few linear-probe accuracy.
#[derive(Args)]
#[command(after_help = "With no flags, trains on the embedded long-tailed UCI digits (no download) in seconds \
on two cores, then prints the Many/Medium/Few table.\n\n\
Outputs, under --out (default runs/<objective>-<time>):\n  metrics.jsonl      one JSON line per step, epoch and evaluation (loss terms, lr, GH weight, ...)\n  \
summary.json       final accuracies (overall, Many/Medium/Few, per class, kNN), configuration, seed, version, threads\n  \
per_class.png      per-class accuracy against training count, groups marked\n  \
checkpoint.safetensors  model, optimizer, objective state and epoch, written atomically every epoch\n\n\
Examples:\n  sslc run objectives/simclr_gh.ssl\n  \
sslc run objectives/simclr.ssl --dataset fashion-mnist-lt --seed 1\n  \
sslc run objectives/sdclr_gh.ssl --dataset cifar100-lt --data ~/data/cifar-100-binary --backbone resnet18 --epochs 1000 --batch-size 512\n  \
sslc run objectives/simclr_gh.ssl --set warm_up=40% --set tau=0.1\n  \
sslc run objectives/simclr_gh.ssl --resume runs/simclr_gh-20261128-101500")]
pub struct RunArgs {
    /// The objective (`.ssl`).
    file: PathBuf,
    /// Benchmark: digits (embedded), fashion-mnist-lt, cifar10-lt, cifar100-lt, imagenet-lt, places-lt.
    #[arg(long, default_value = "digits")]
    dataset: String,
    /// Where the dataset's files are (CIFAR folder, Fashion-MNIST IDX folder, or the image root of
    /// ImageNet-LT/Places-LT).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder holding ImageNet_LT/ and Places_LT/ list files (default: split/).
    #[arg(long)]
    split_dir: Option<PathBuf>,
    /// Imbalance factor r = n_min / n_max of the long-tailed training set.
    #[arg(long)]
    imbalance: Option<f64>,
    #[arg(long, value_enum, default_value = "exp")]
    imb_type: ImbType,
    /// Training epochs (default: the dataset's preset).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch (default: the dataset's preset).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate (the objective's `schedule lr` shapes it).
    #[arg(long, default_value_t = 0.5)]
    lr: f64,
    /// SGD weight decay (default: 5e-4, or 1e-4 on ImageNet-LT/Places-LT).
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backbone (default: the dataset's preset).
    #[arg(long, value_enum)]
    backbone: Option<Backbone>,
    /// CPU threads for compute and data loading (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// NAME=VALUE overrides an objective parameter or `dim` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Where the objective's loss and gradients are computed.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Evaluate every this many epochs as well as at the end (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Linear-probe epochs (METHOD.md uses 500).
    #[arg(long)]
    probe_epochs: Option<usize>,
    /// Run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (same flags).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Start afresh in an --out directory that holds an earlier run, replacing its checkpoint,
    /// metrics, summary and plot (without it, a non-empty directory is refused).
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Stop once this many epochs are done, to continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Use at most this many images of each set (train, probe train, test), evenly strided so
    /// every class keeps its share (the probe's sets keep at least one image of every class):
    /// for smoke runs and quick looks at a large benchmark.
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
}

/// A count of 1 or more (`--limit 0` would leave nothing to train on).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Measure the training throughput of a backbone (forward, backward and SGD on random images).
#[derive(Args)]
#[command(after_help = "Prints one JSON line. Example:
  sslc bench-train --backbone resnet18 --batch-size 64")]
pub struct BenchTrainArgs {
    #[arg(long, value_enum, default_value = "resnet18")]
    backbone: Backbone,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Image side (32 for CIFAR, 224 for ImageNet).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long)]
    threads: Option<usize>,
}

/// Evaluate a saved checkpoint: linear probe and kNN on frozen features.
#[derive(Args)]
#[command(after_help = "Example:\n  sslc probe --checkpoint runs/simclr_gh-20261128-101500/checkpoint.safetensors")]
pub struct ProbeArgs {
    /// The checkpoint (`checkpoint.safetensors` of a run directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Linear-probe epochs (default: as the run was trained with).
    #[arg(long)]
    probe_epochs: Option<usize>,
    /// Where the dataset's files are, if the run used --data.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// Print a long-tailed subset (kept indices and labels) of a dataset.
#[derive(Args)]
#[command(
    after_help = "Example:\n  sslc split --dataset cifar100 --data ~/data/cifar-100-binary --imbalance 0.01 > split/cifar100_lt_r100.txt"
)]
pub struct SplitArgs {
    #[arg(long, default_value = "digits")]
    dataset: String,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    imbalance: Option<f64>,
    #[arg(long, value_enum, default_value = "exp")]
    imb_type: ImbType,
}

fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads.filter(|&t| t > 0) {
        // Both the encoder's kernels and the loader's pool size themselves from this.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
}

pub fn run(args: &RunArgs) -> i32 {
    set_threads(args.threads);
    match run_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run_inner(args: &RunArgs) -> Result<(), i32> {
    let name = DatasetName::from_name(&args.dataset).map_err(fail)?;
    let defaults = presets::preset(name);
    let module = load_objective(&args.file)?;
    let overrides = Overrides::parse(&args.set).map_err(fail)?;
    let mut objective = CompiledObjective::new(module, overrides, args.lr, args.backend.kind()).map_err(fail)?;
    let options =
        presets::data_options(args.data.clone(), args.split_dir.clone(), args.imbalance, args.imb_type.profile())
            .map_err(fail)?;
    eprintln!("loading {} ...", name.name());
    let splits = presets::load_splits(name, &options, args.limit).map_err(fail)?;

    let backbone = args.backbone.unwrap_or(defaults.backbone);
    let batch_size = args.batch_size.unwrap_or(defaults.batch_size).min(splits.train.len());
    let epochs = args.epochs.unwrap_or(defaults.epochs);
    let probe_epochs = args.probe_epochs.unwrap_or(defaults.probe_epochs);
    let (dir, start) = match (&args.resume, &args.out) {
        (Some(dir), _) => (dir.clone(), Start::Resume),
        (None, Some(dir)) => (dir.clone(), if args.overwrite { Start::Overwrite } else { Start::Fresh }),
        (None, None) => (PathBuf::from("runs").join(format!("{}-{}", objective.name(), timestamp())), Start::Fresh),
    };
    let config = TrainConfig {
        epochs,
        base_lr: args.lr,
        lr_min: 1e-6,
        momentum: 0.9,
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        seed: args.seed,
        eval_every: args.eval_every,
        stop_after: args.stop_after,
        context: Some(RunContext {
            objective_file: args.file.display().to_string(),
            dataset: name.name().to_string(),
            data: args.data.as_ref().map(|d| d.display().to_string()),
            imbalance: args.imbalance,
            batch_size,
            backbone,
            set: args.set.clone(),
            backend: Some(args.backend.kind().name().to_string()),
            probe_epochs,
            limit: args.limit,
        }),
    };
    let pruned = objective.embeddings().iter().any(|e| e.pruned.is_some());
    let channels = splits.train.image(0).map_err(fail)?.channels();
    let encoder = Encoder::new(EncoderConfig::reference(backbone.kind(), channels, pruned, args.seed)).map_err(fail)?;

    let samples = splits.train.len();
    let DataSplits { train, probe_train, test } = splits;
    let train_counts = train.class_counts();
    let mut source =
        presets::train_source(name, train, batch_size, args.seed, objective.views().extra).map_err(fail)?;
    let mut evaluation = EvalData::new(name, probe_train, test, train_counts, probe_epochs, args.seed).map_err(fail)?;
    eprintln!(
        "training {} on {} ({} images, batch {batch_size}, {epochs} epochs, {:?} backbone) in {}",
        objective.name(),
        name.name(),
        samples,
        backbone,
        dir.display()
    );
    let started = std::time::Instant::now();
    let outcome = train::train(&dir, &config, &encoder, &mut objective, &mut source, Some(evaluation.setup()), start)
        .map_err(fail)?;
    let stats = source.stats();
    eprintln!(
        "done in {:.0} s ({:.0} images/s augmented); results in {}",
        started.elapsed().as_secs_f64(),
        stats.images_per_second(),
        dir.display()
    );
    if outcome.evaluation.is_none() {
        eprintln!("no evaluation was run (the run had already finished?)");
    }
    Ok(())
}

/// `YYYYmmdd-HHMMSS` in UTC, for default run directories.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

pub fn bench_train(args: &BenchTrainArgs) -> i32 {
    set_threads(args.threads);
    match train::measure_train_throughput(
        args.backbone.kind(),
        args.channels,
        args.image_size,
        args.batch_size,
        args.steps,
    ) {
        Ok(t) => {
            let line = serde_json::json!({
                "backbone": args.backbone,
                "batch": args.batch_size,
                "image_size": args.image_size,
                "threads": rayon::current_num_threads(),
                "images_per_second": t.images_per_second,
                "seconds_per_step": t.seconds_per_step,
            });
            print_stdout(&format!("{line}\n"));
            0
        }
        Err(e) => fail(e),
    }
}

pub fn probe(args: &ProbeArgs) -> i32 {
    match probe_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn probe_inner(args: &ProbeArgs) -> Result<(), i32> {
    let Trained { checkpoint: saved, identity, encoder } = load_trained(&args.checkpoint)?;
    let context = identity
        .train
        .context
        .ok_or_else(|| fail(format!("{} does not say which dataset it was trained on", args.checkpoint.display())))?;
    let name = DatasetName::from_name(&context.dataset).map_err(fail)?;
    let data = args.data.clone().or_else(|| context.data.map(PathBuf::from));
    let options = presets::data_options(data, None, context.imbalance, ImbalanceProfile::Exp).map_err(fail)?;
    let splits = presets::load_splits(name, &options, context.limit).map_err(fail)?;
    let probe_epochs = args.probe_epochs.unwrap_or(context.probe_epochs);
    let seed = saved.seed;
    let train_counts = splits.train.class_counts();
    let mut evaluation =
        EvalData::new(name, splits.probe_train, splits.test, train_counts, probe_epochs, seed).map_err(fail)?;
    let result = train::evaluate_encoder(&encoder, &mut evaluation.setup()).map_err(fail)?;
    println!("{}", sslc_runtime::report::group_table(&result.linear));
    for (k, report) in &result.knn {
        println!("kNN k={k}: top-1 {:.2} %", 100.0 * report.overall);
    }
    Ok(())
}

pub fn split(args: &SplitArgs) -> i32 {
    let run = || -> Result<String, String> {
        let name = DatasetName::from_name(&args.dataset).map_err(|e| e.to_string())?;
        let options = presets::data_options(args.data.clone(), None, args.imbalance, args.imb_type.profile())
            .map_err(|e| e.to_string())?;
        data::split_listing(name, &options).map_err(|e| e.to_string())
    };
    match run() {
        Ok(text) => {
            print_stdout(&text);
            0
        }
        Err(e) => fail(e),
    }
}
