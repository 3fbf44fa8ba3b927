//! `sslc run`: train a backbone with an objective on a long-tailed benchmark and report
//! linear-probe accuracy for the Many / Medium / Few classes; `sslc probe`: evaluate a saved
//! checkpoint again; `sslc split`: print a long-tailed subset.

use super::common::{fail, load_objective, load_trained, print_stdout, Backend, Trained};
use super::config::{self, ImbType, RunSettings};
use clap::Args;
use sslc::objective::CompiledObjective;
use sslc_compiler::back::cuda::Precision as TilePrecision;
use sslc_compiler::eval::Overrides;
use sslc_runtime::data::{self, DataSplits, DatasetName, ImbalanceProfile};
use sslc_runtime::device::{Compute, DeviceSpec, Precision};
use sslc_runtime::dist::launch::{self, GpuRank};
use sslc_runtime::dist::{self, Shard};
use sslc_runtime::model::{Encoder, EncoderConfig};
use sslc_runtime::objective::Objective;
use sslc_runtime::presets::{self, Backbone, EvalData, RunContext};
use sslc_runtime::report::CONFIG_FILE;
use sslc_runtime::train::{self, EncoderNeeds, Parallel, RunDir, Start, SyntheticStep, TrainConfig};
use std::path::PathBuf;

/// Train a backbone with an objective and report Many/Medium/Few linear-probe accuracy.
///
/// Settings come from, highest first: flags, the --config file, the dataset's preset
/// (configs/<dataset>.toml, built in), the built-in defaults.
#[derive(Args)]
#[command(after_help = "With no flags, trains on the embedded long-tailed UCI digits (no download) in seconds \
on two cores, then prints the Many/Medium/Few table.\n\n\
Outputs, under --out (default runs/<objective>-<time>):\n  metrics.jsonl      one JSON line per step, epoch and evaluation (loss terms, lr, GH weight, ...)\n  \
config.toml        everything that defines the run; repeat it with --config DIR/config.toml
  \
summary.json       final accuracies (overall, Many/Medium/Few, per class, kNN), configuration, seed, version, threads
  \
per_class.png      per-class accuracy against training count, groups marked\n  \
checkpoint.safetensors  model, optimizer, objective state and epoch, written atomically every epoch\n\n\
Examples:\n  sslc run objectives/simclr_gh.ssl\n  \
sslc run objectives/simclr.ssl --dataset fashion-mnist-lt --seed 1\n  \
sslc run objectives/sdclr_gh.ssl --dataset cifar100-lt --data ~/data/cifar-100-binary --backbone resnet18 --epochs 1000 --batch-size 512\n  \
sslc run objectives/simclr_gh.ssl --set warm_up=40% --set tau=0.1\n  \
sslc run --config runs/simclr_gh-20261128-101500/config.toml --seed 1 --out runs/seed1\n  \
sslc run --resume runs/simclr_gh-20261128-101500\n  \
sslc run objectives/simclr_gh.ssl --gpus 4 --batch-size 256   (a build with --features nccl)")]
pub struct RunArgs {
    #[command(flatten)]
    settings: RunSettings,
    /// A run configuration (TOML: a run directory's config.toml, one of configs/*.toml, or your
    /// own); flags given as well override its values.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with the settings its
    /// config.toml records (flags given as well override them; a changed setting is refused).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Start afresh in an --out directory that holds an earlier run, replacing its checkpoint,
    /// metrics, summary and plot (without it, a non-empty directory is refused).
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Resume even though the objective file has changed since the run started (its sha256,
    /// recorded in config.toml, differs): the rest of the run then trains another objective.
    #[arg(long, requires = "resume")]
    allow_changed_objective: bool,
    /// Stop once this many epochs are done, to continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Train on N GPUs of this machine, one process each, exchanging through NCCL: this
    /// process starts the N ranks (rank r on cuda:r; CUDA_VISIBLE_DEVICES chooses the GPUs),
    /// stops them all if one fails, and waits. Implies --device cuda; the global --batch-size
    /// is split over the ranks. Needs a build with `--features nccl` (docs/distributed.md).
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// Under mpirun: compute BatchNorm statistics per rank instead of over the global batch
    /// (breaks the equivalence with one process; for tests that show it matters).
    #[arg(long, hide = true)]
    no_sync_bn: bool,
}

/// Measure the training throughput of a backbone (forward, backward and SGD on random images).
#[derive(Args)]
#[command(after_help = "Prints one JSON line. Without --objective the step backpropagates fixed random \
gradients in place of an objective's; with it, the step runs that objective on the embeddings as `sslc run` \
does (on the GPU with --device cuda), so the difference of the two is the objective's share of a step. Examples:
  sslc bench-train --backbone resnet18 --batch-size 64
  sslc bench-train --backbone resnet18 --batch-size 512 --device cuda --objective objectives/simclr_gh.ssl")]
pub struct BenchTrainArgs {
    /// Run this objective in each step (its default parameters; the backend follows --device).
    #[arg(long, value_name = "FILE.ssl")]
    objective: Option<PathBuf>,
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
    /// CPU threads (default: all cores; at most 8 per core).
    #[arg(long, value_parser = super::common::thread_count)]
    threads: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `--device` and `--precision` of the commands that are not `sslc run` (whose are settings).
#[derive(Args)]
pub struct DeviceArgs {
    /// Where to compute: cpu, cuda or cuda:I.
    #[arg(long, value_name = "cpu|cuda[:I]", default_value = "cpu")]
    device: DeviceSpec,
    /// The backbone's arithmetic (default: tf32 on CUDA, f32 on the CPU; see `sslc run --help`).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

impl DeviceArgs {
    fn open(&self) -> Result<Compute, i32> {
        Compute::open(self.device, self.precision).map_err(fail)
    }
}

/// One synthetic training step from the seeded initial weights; writes the updated parameters
/// and buffers as safetensors (the GPU check compares a GPU's with the CPU's).
#[derive(Args)]
pub struct TrainStepArgs {
    #[arg(long, value_enum, default_value = "small")]
    backbone: Backbone,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Steps to take (0 writes the initial weights).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Where to write the weights (safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// Evaluate a saved checkpoint: linear probe and kNN on frozen features.
#[derive(Args)]
#[command(after_help = "Example:\n  sslc probe --checkpoint runs/simclr_gh-20261128-101500/checkpoint.safetensors")]
pub struct ProbeArgs {
    /// The checkpoint (`checkpoint.safetensors` of a run directory).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Linear-probe epochs (default: as the run was trained with).
    #[arg(long, value_parser = config::at_least_one)]
    probe_epochs: Option<usize>,
    /// Where the dataset's files are, if the run used --data.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
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

/// The objective's similarity tiles follow the backbone's precision (tf32 unless told).
fn tiles(precision: Precision) -> TilePrecision {
    match precision {
        Precision::F32 => TilePrecision::F32,
        Precision::Tf32 => TilePrecision::Tf32,
        Precision::Bf16 => TilePrecision::Bf16,
    }
}

fn set_threads(threads: Option<usize>) {
    if let Some(t) = threads.filter(|&t| t > 0) {
        // Both the encoder's kernels and the loader's pool size themselves from this.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
}

pub fn run(args: &RunArgs) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run_inner(args: &RunArgs) -> Result<(), i32> {
    // A process that `--gpus` started is told so in its environment; without one, `--gpus`
    // makes this process the parent that starts the ranks.
    let gpu = match args.gpus {
        Some(_) => GpuRank::from_environment().map_err(fail)?,
        None => None,
    };
    if let (Some(gpus), None) = (args.gpus, &gpu) {
        return launch_gpus(args, gpus);
    }
    // First: a process launched as one of several ranks without MPI support stops here.
    let launched = dist::from_environment().map_err(fail)?;
    let mut settings = run_settings(args)?;
    let mut run = settings.resolve().map_err(fail)?;
    // Several ranks on one machine: each on its own GPU, counted from the one given.
    if let DeviceSpec::Cuda(first) = run.device {
        run.device = DeviceSpec::Cuda(first + launch::local_rank(gpu.as_ref()));
    }
    // Before any data is read: a missing GPU should fail in a second, not after loading.
    let compute = Compute::open(run.device, run.precision).map_err(fail)?;
    let collective = dist::for_device(launched, gpu.as_ref(), &compute.device).map_err(fail)?;
    let lead = collective.rank() == 0;
    set_threads(settings.threads);
    settings.threads = Some(rayon::current_num_threads());
    settings.objective_sha256 = Some(config::sha256_of(&run.objective).map_err(fail)?);
    settings.sslc_version = Some(env!("CARGO_PKG_VERSION").to_string());

    let name = run.dataset;
    let module = load_objective(&run.objective)?;
    let overrides = Overrides::parse(&run.set).map_err(fail)?;
    let mut objective =
        CompiledObjective::with_precision(module, overrides, run.lr, run.backend.kind(), tiles(compute.precision))
            .map_err(fail)?;
    objective.check_batch(run.batch_size).map_err(|e| fail(format!("{e} (at --batch-size {})", run.batch_size)))?;
    let options = presets::data_options(run.data.clone(), run.split_dir.clone(), run.imbalance, run.imb_type.profile())
        .map_err(fail)?;
    if lead {
        eprintln!("loading {} ...", name.name());
    }
    let splits = presets::load_splits(name, &options, run.limit).map_err(fail)?;

    let backbone = run.backbone;
    let batch_size = run.batch_size.min(splits.train.len());
    Shard::of(collective.as_ref(), batch_size).map_err(fail)?;
    let epochs = run.epochs;
    let probe_epochs = run.probe_epochs;
    let (dir, start) = match (&args.resume, &args.out) {
        (Some(dir), _) => (dir.clone(), Start::Resume),
        (None, Some(dir)) => (dir.clone(), if args.overwrite { Start::Overwrite } else { Start::Fresh }),
        (None, None) => (PathBuf::from("runs").join(format!("{}-{}", objective.name(), timestamp())), Start::Fresh),
    };
    let config = TrainConfig {
        epochs,
        base_lr: run.lr,
        lr_min: 1e-6,
        momentum: 0.9,
        weight_decay: run.weight_decay,
        seed: run.seed,
        eval_every: run.eval_every,
        stop_after: args.stop_after,
        context: Some(RunContext {
            objective_file: run.objective.display().to_string(),
            dataset: name.name().to_string(),
            data: run.data.as_ref().map(|d| d.display().to_string()),
            imbalance: run.imbalance,
            batch_size,
            backbone,
            set: run.set.clone(),
            backend: Some(run.backend.kind().name().to_string()),
            probe_epochs,
            limit: run.limit,
        }),
    };
    let needs = EncoderNeeds::of(&objective.embeddings()).map_err(fail)?;
    let channels = splits.train.image(0).map_err(fail)?.channels();
    let mut encoder_config =
        EncoderConfig::reference(backbone.kind(), channels, needs.prune_fraction.is_some(), run.seed);
    needs.apply(&mut encoder_config);
    let encoder = Encoder::on(encoder_config, &compute).map_err(fail)?;

    let samples = splits.train.len();
    let DataSplits { train, probe_train, test } = splits;
    let train_counts = train.class_counts();
    let mut source =
        presets::train_source(name, train, batch_size, run.seed, &objective.views(), &compute.device).map_err(fail)?;
    let mut evaluation =
        EvalData::new(name, probe_train, test, train_counts, probe_epochs, run.seed, &compute.device).map_err(fail)?;
    let ranks = match collective.world() {
        1 => String::new(),
        world => format!(" over {world} ranks"),
    };
    if lead {
        eprintln!(
            "training {} on {} ({} images, batch {batch_size}{ranks}, {epochs} epochs, {:?} backbone, {}) in {}",
            objective.name(),
            name.name(),
            samples,
            backbone,
            compute.describe(),
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let parallel = Parallel { collective, sync_batch_norm: !args.no_sync_bn };
    let setup = Some(evaluation.setup());
    let run_dir = RunDir::new(&dir, start).with_record(config::to_file_text(&settings, &dir).map_err(fail)?);
    let outcome = train::train_parallel(&run_dir, &config, &encoder, &mut objective, &mut source, setup, &parallel)
        .map_err(fail)?;
    if !lead {
        return Ok(());
    }
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

/// The run's settings: flags over the --config file over the presets. `--gpus` implies
/// `--device cuda` where neither names a device.
fn run_settings(args: &RunArgs) -> Result<RunSettings, i32> {
    // A resumed run's own record stands in for --config: `--resume DIR` alone continues it.
    let recorded = args.resume.as_ref().map(|dir| dir.join(CONFIG_FILE)).filter(|path| path.is_file());
    let file = match (&args.config, &recorded) {
        (Some(path), _) | (None, Some(path)) => {
            let file = config::load(path).map_err(fail)?;
            match config::objective_change(&file, path) {
                // Resuming trains the rest of the recorded run: another objective would make it
                // a different run under the same name.
                Some(change) if args.resume.is_some() && !args.allow_changed_objective => {
                    return Err(fail(format!(
                        "{change}; resuming would train the rest of this run with another objective. Restore \
                         the file, start a new run, or resume anyway with --allow-changed-objective"
                    )))
                }
                Some(change) => eprintln!("warning: {change}"),
                None => {}
            }
            file
        }
        (None, None) => RunSettings::default(),
    };
    let mut settings = args.settings.clone().over(file);
    if args.gpus.is_some() && settings.device.is_none() {
        settings.device = Some(DeviceSpec::Cuda(0));
    }
    let mut settings = settings.complete().map_err(fail)?;
    // Recorded so that the run resolves them from any working directory (`--resume` from
    // elsewhere); the objective's sha256 keeps guarding its content.
    for path in [&mut settings.objective, &mut settings.data, &mut settings.split_dir].into_iter().flatten() {
        if let Ok(absolute) = path.canonicalize() {
            *path = absolute;
        }
    }
    Ok(settings)
}

/// `sslc run --gpus N` in the parent process: checks what can be checked before any rank
/// starts, then starts N copies of this program with the same arguments and supervises them
/// (`dist::launch`).
fn launch_gpus(args: &RunArgs, gpus: usize) -> Result<(), i32> {
    if gpus == 0 {
        return Err(fail("--gpus 0: give the number of GPUs to train on, 1 or more"));
    }
    if dist::launched_world_size().is_some_and(|world| world > 1) {
        return Err(fail(format!(
            "--gpus {gpus} starts its own ranks, but this process is already one of several started by mpirun or \
             srun; leave --gpus out there (each launched rank trains on the GPU of its local rank)"
        )));
    }
    match run_settings(args)?.device {
        Some(DeviceSpec::Cpu) => {
            return Err(fail(format!(
                "--gpus {gpus} trains on GPUs, but the device is cpu (from --device or the --config file); drop one \
                 of the two"
            )))
        }
        Some(DeviceSpec::Cuda(first)) if first != 0 => {
            return Err(fail(format!(
                "--gpus {gpus} trains on cuda:0 to cuda:{}; to use other GPUs, choose them with \
                 CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES={first},{} for two) instead of --device cuda:{first}",
                gpus - 1,
                first + 1
            )))
        }
        _ => {}
    }
    let id = dist::gpu_id(gpus).map_err(fail)?;
    let program =
        std::env::current_exe().map_err(|e| fail(format!("cannot find this program to start the ranks: {e}")))?;
    let arguments: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    eprintln!("--gpus {gpus}: starting {gpus} rank(s), rank r on cuda:r, exchanging through NCCL");
    let command = |_rank| {
        let mut command = std::process::Command::new(&program);
        command.args(&arguments);
        command
    };
    let ranks = launch::spawn_ranks(gpus, &id, &timestamp(), command).map_err(fail)?;
    launch::supervise(ranks).map_err(fail)
}

/// `YYYYmmdd-HHMMSS` in UTC, for default run directories: the `--gpus` parent's, in a rank it
/// started, so that every rank names the same directory.
fn timestamp() -> String {
    if let Ok(stamp) = std::env::var(launch::STAMP_VARIABLE) {
        return stamp;
    }
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
    let compute = match args.device.open() {
        Ok(compute) => compute,
        Err(code) => return code,
    };
    set_threads(args.threads);
    let shape = SyntheticStep {
        backbone: args.backbone.kind(),
        in_channels: args.channels,
        image_size: args.image_size,
        batch_size: args.batch_size,
    };
    let mut objective = match &args.objective {
        None => None,
        Some(file) => {
            let module = match load_objective(file) {
                Ok(module) => module,
                Err(code) => return code,
            };
            let backend = Backend::for_device(args.device.device).kind();
            match CompiledObjective::with_precision(
                module,
                Overrides::default(),
                0.5,
                backend,
                tiles(compute.precision),
            ) {
                Ok(objective) => Some(objective),
                Err(e) => return fail(e),
            }
        }
    };
    let name = objective.as_ref().map(|o| o.name().to_string());
    match train::measure_train_throughput(
        shape,
        args.steps,
        &compute,
        objective.as_mut().map(|o| o as &mut dyn Objective),
    ) {
        Ok(t) => {
            let line = serde_json::json!({
                "objective": name,
                "backbone": args.backbone,
                "batch": args.batch_size,
                "image_size": args.image_size,
                "device": args.device.device.to_string(),
                "precision": compute.precision.name(),
                "threads": rayon::current_num_threads(),
                "images_per_second": t.images_per_second,
                "seconds_per_step": t.seconds_per_step,
                "median_seconds_per_step": t.median_seconds_per_step,
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

pub fn train_step(args: &TrainStepArgs) -> i32 {
    let run = || -> Result<(), i32> {
        let compute = args.device.open()?;
        let shape = SyntheticStep {
            backbone: args.backbone.kind(),
            in_channels: args.channels,
            image_size: args.image_size,
            batch_size: args.batch_size,
        };
        let state = train::synthetic_steps(shape, args.steps, &compute).map_err(fail)?;
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = state.into_iter().collect();
        candle_core::safetensors::save(&tensors, &args.out)
            .map_err(|e| fail(format!("cannot write {}: {e}", args.out.display())))
    };
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn probe_inner(args: &ProbeArgs) -> Result<(), i32> {
    let compute = args.device.open()?;
    let Trained { checkpoint: saved, identity, encoder } = load_trained(&args.checkpoint, &compute)?;
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
        EvalData::new(name, splits.probe_train, splits.test, train_counts, probe_epochs, seed, encoder.device())
            .map_err(fail)?;
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
