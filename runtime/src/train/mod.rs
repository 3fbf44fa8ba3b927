//! The training loop: drives any [`Objective`] over batches from a [`BatchSource`], updates
//! the [`Encoder`] with SGD, checkpoints every epoch and evaluates on frozen features.

mod bench;
mod loader_source;
mod run_dir;
mod settings;
mod source;
mod trainer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::checkpoint::CheckpointError;
use crate::dist::{Collective, DistError, SingleProcess};
use crate::model::{Branch, Encoder, EncoderConfig, Mode, ModelError};
use crate::objective::{BoxError, EmbeddingSpec, Objective, StepOutput};
use crate::optim::OptimError;
use crate::presets::RunContext;
use crate::probe::{self, Evaluation, Features, Group, ProbeConfig, ProbeError};
use crate::report::ReportError;

pub use bench::{measure_train_throughput, synthetic_steps, SyntheticStep, Throughput};
pub use loader_source::{FeatureImages, LoaderSource};
pub use run_dir::{inside_run, is_run_file, RunDir, Start, LOCK_FILE};
pub use source::{BatchSource, LabelledImages};
use trainer::Trainer;

/// The checkpoint's file name inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("objective `{objective}` failed in {during}: {source}")]
    Objective { objective: String, during: &'static str, source: BoxError },
    #[error("the data source failed: {0}")]
    Source(BoxError),
    #[error("the {what} became {value} at epoch {epoch}, step {step}; the run stopped and {}", diverged_advice(*epoch, checkpoint))]
    Diverged { what: &'static str, value: f64, epoch: usize, step: usize, checkpoint: PathBuf },
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("{0}")]
    Setup(String),
}

/// What to do after a diverged step: resume from the last checkpoint, or, before the first
/// epoch completed, start again (there is no checkpoint then).
fn diverged_advice(epoch: usize, checkpoint: &Path) -> String {
    if epoch > 0 && checkpoint.exists() {
        format!("{} still holds the last good epoch (lower the learning rate, then --resume)", checkpoint.display())
    } else {
        "no epoch had completed, so there is no checkpoint: lower the learning rate and start the run again \
         (--overwrite to reuse its directory)"
            .into()
    }
}

/// Why `--resume` of `dir` has nothing to continue from: the directory holds no checkpoint,
/// because the run stopped before its first epoch completed (or none was started there).
fn nothing_to_resume(dir: &Path) -> TrainError {
    let shown = dir.display();
    TrainError::Setup(if dir.is_dir() {
        format!(
            "cannot resume {shown}: it holds no {CHECKPOINT_FILE}, because the run there stopped before its first epoch \
             completed (or none was started there); start the run again with --out {shown} --overwrite, or with a \
             new --out"
        )
    } else if dir.exists() {
        format!("cannot resume {shown}: it is a file; give the run directory, the folder that holds {CHECKPOINT_FILE}")
    } else {
        format!("cannot resume {shown}: it does not exist; start the run with --out {shown}")
    })
}

/// The SGD recipe and run length (METHOD.md §2).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub base_lr: f64,
    /// Floor of the default cosine schedule.
    pub lr_min: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Evaluate every this many epochs (0: only at the end).
    pub eval_every: usize,
    /// What else identifies the run (dataset, backbone, overrides): recorded in checkpoints,
    /// which refuse to resume under another, and in `summary.json`.
    pub context: Option<RunContext>,
    /// Stop after this many epochs in total, leaving the run to be resumed (train in chunks).
    /// Not part of the run's identity.
    #[serde(skip)]
    pub stop_after: Option<usize>,
}

impl Default for TrainConfig {
    /// CIFAR-100-LT's recipe, except the epoch count.
    fn default() -> Self {
        TrainConfig {
            epochs: 100,
            base_lr: 0.5,
            lr_min: 1e-6,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            eval_every: 0,
            context: None,
            stop_after: None,
        }
    }
}

/// The reference's `lr_scheduler`: with `e = epoch + 1`, a linear warm-up `base·e/10` while
/// `e < 10`, then cosine from `base` to `lr_min` over the remaining epochs. (Runs of at most ten
/// epochs reach the cosine's start at `e = 10` and stay there.)
pub fn reference_learning_rate(epoch: usize, epochs: usize, base_lr: f64, lr_min: f64) -> f64 {
    let e = (epoch + 1) as f64;
    if e < 10.0 {
        base_lr * e / 10.0
    } else {
        let progress = (e - 10.0) / (epochs.saturating_sub(10).max(1)) as f64;
        lr_min + (base_lr - lr_min) * 0.5 * (1.0 + (progress * std::f64::consts::PI).cos())
    }
}

/// Evaluation data and settings. Features come from the dense backbone in eval mode.
pub struct EvalSetup<'a> {
    pub probe_train: &'a mut dyn LabelledImages,
    pub probe_test: &'a mut dyn LabelledImages,
    /// Class `c`'s group.
    pub groups: Vec<Group>,
    /// Class `c`'s number of images in the (long-tailed) training set, for the plot.
    pub train_counts: Vec<usize>,
    pub probe: ProbeConfig,
    /// Images per forward pass when extracting features.
    pub batch_size: usize,
}

/// How a run ended.
#[derive(Debug)]
pub struct TrainOutcome {
    /// Epochs completed, counting those before a resume.
    pub epochs: usize,
    /// Mean loss of the last epoch trained in this call (`None` when none was left to train).
    pub last_epoch_loss: Option<f64>,
    pub evaluation: Option<Evaluation>,
}

/// Set to an epoch count `N`, a run pauses (sleeps) right after saving the checkpoint of its
/// `N`th epoch, saying so on stderr: the point where tests kill it (SIGKILL with `N` the last
/// epoch lands in the final evaluation, which follows) every time instead of by chance.
pub const TEST_PAUSE_ENV: &str = "SSLC_TEST_PAUSE_AFTER_EPOCH";

fn pause_for_tests(completed: usize, rank: usize) {
    if std::env::var(TEST_PAUSE_ENV).is_ok_and(|at| at.trim() == completed.to_string()) {
        eprintln!("sslc: paused after epoch {completed} (pid {}, rank {rank})", std::process::id());
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}

/// What a run's checkpoints and `summary.json` record about it; a resume must match it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunIdentity {
    pub train: TrainConfig,
    pub encoder: EncoderConfig,
    /// The objective's name.
    pub objective: String,
}

impl RunIdentity {
    /// As recorded. A resume compares this JSON with the checkpoint's, so it matches exactly
    /// what was saved, whatever version of sslc saved it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a run identity is plain data")
    }
}

/// How the ranks of a data-parallel run work together (one process: [`Parallel::single`]).
#[derive(Clone)]
pub struct Parallel {
    pub collective: Arc<dyn Collective>,
    /// Synchronise BatchNorm statistics over the ranks (SyncBatchNorm). Only switched off to
    /// show that the equivalence with one process needs it.
    pub sync_batch_norm: bool,
}

impl Parallel {
    pub fn single() -> Parallel {
        Parallel { collective: Arc::new(SingleProcess), sync_batch_norm: true }
    }
}

/// Trains `encoder` with `objective` in run directory `dir` (checkpoint, metrics.jsonl, and
/// with evaluation summary.json and per_class.png).
pub fn train(
    dir: &Path,
    config: &TrainConfig,
    encoder: &Encoder,
    objective: &mut dyn Objective,
    source: &mut dyn BatchSource,
    evaluation: Option<EvalSetup<'_>>,
    start: Start,
) -> Result<TrainOutcome, TrainError> {
    train_parallel(&RunDir::new(dir, start), config, encoder, objective, source, evaluation, &Parallel::single())
}

/// [`train`] as one rank of a data-parallel run, equal to the single-process run with the same
/// global batch (docs/distributed.md): every rank trains on its [`Shard`] of each global batch;
/// the objective sees the gathered global batch on every rank (its full loss computed on each,
/// so that its state updates run identically everywhere); each rank backpropagates the
/// gradient rows of its own samples and the parameter gradients are summed over the ranks.
/// Rank 0 alone writes to the run directory (after taking it: [`RunDir`]), and evaluates.
pub fn train_parallel(
    run: &RunDir,
    config: &TrainConfig,
    encoder: &Encoder,
    objective: &mut dyn Objective,
    source: &mut dyn BatchSource,
    evaluation: Option<EvalSetup<'_>>,
    parallel: &Parallel,
) -> Result<TrainOutcome, TrainError> {
    let mut trainer = Trainer::new(run, config, encoder, objective, source, evaluation, parallel)?;
    let first_epoch = trainer.begin()?;
    let last_epoch = config.stop_after.map_or(config.epochs, |s| s.min(config.epochs));
    for epoch in first_epoch..last_epoch {
        trainer.epoch(epoch)?;
    }
    trainer.finish(first_epoch, last_epoch)
}

/// Checks once per epoch that every rank holds the same model and objective state, as the
/// data-parallel step guarantees by construction (same update from the same summed gradient,
/// same state update from the same global batch): a checksum of both, compared bit for bit.
/// BatchNorm's running statistics count only when BatchNorm is synchronised; without, each
/// rank's follow its own samples.
fn replicas_agree(
    collective: &dyn Collective,
    encoder: &Encoder,
    objective: &dyn Objective,
    batch_norm_synchronised: bool,
    completed: usize,
) -> Result<(), TrainError> {
    if collective.world() == 1 {
        return Ok(());
    }
    let mut compared: Vec<Tensor> = encoder.parameters().iter().map(|(_, var)| var.as_tensor().clone()).collect();
    if batch_norm_synchronised {
        compared.extend(encoder.buffers().iter().map(|(_, var)| var.as_tensor().clone()));
    }
    compared.extend(objective.state().into_iter().map(|(_, tensor)| tensor));
    let mut checksum = 0f64;
    for tensor in &compared {
        let values = tensor.to_dtype(candle_core::DType::F64)?.flatten_all()?;
        checksum += values.sum_all()?.to_scalar::<f64>()? + values.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    // The checksum's 64 bits as four 16-bit pieces, each exact in an f32.
    let bits = checksum.to_bits();
    let pieces: Vec<f32> = (0..4).map(|i| ((bits >> (16 * i)) & 0xffff) as f32).collect();
    let all = collective.all_gather(&pieces)?;
    match all.chunks(4).position(|other| other != &pieces[..]) {
        Some(rank) => Err(TrainError::Setup(format!(
            "after epoch {completed}, rank {rank}'s model or objective state differs from rank {}'s: the replicas \
             diverged, so the run stopped (this is a bug in sslc; please report it with the command line)",
            collective.rank()
        ))),
        None => Ok(()),
    }
}

/// Fails unless every rank holds the same `value` (rank 0's is the reference).
fn same_on_every_rank(collective: &dyn Collective, value: usize, what: &str) -> Result<(), TrainError> {
    let all = collective.all_gather(&[value as f32])?;
    match all.iter().position(|&other| other != all[0]) {
        Some(rank) if collective.world() > 1 => Err(TrainError::Setup(format!(
            "{what} differs between ranks: rank 0 has {}, rank {rank} has {}; every rank must read the same run \
             directory",
            all[0], all[rank]
        ))),
        _ => Ok(()),
    }
}

/// What an objective's embeddings ask of the encoder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncoderNeeds {
    /// SDCLR's pruned branch, with its one prune fraction (the encoder holds one mask).
    pub prune_fraction: Option<f64>,
    /// The predictor head's hidden width (one head, shared by every predicted embedding).
    pub predictor_hidden: Option<usize>,
    /// A momentum target network.
    pub momentum_target: bool,
}

impl EncoderNeeds {
    /// Checks the embeddings agree with each other (one prune fraction, one predictor width).
    pub fn of(specs: &[EmbeddingSpec]) -> Result<EncoderNeeds, TrainError> {
        let mut needs = EncoderNeeds::default();
        for spec in specs {
            if let Some(wanted) = spec.pruned {
                agree(&mut needs.prune_fraction, wanted, |shared| {
                    format!(
                        "embedding `{}` asks for prune fraction {wanted}, another for {shared}; use one fraction for all \
                         pruned embeddings",
                        spec.name
                    )
                })?;
            }
            if let Some(wanted) = spec.predictor {
                agree(&mut needs.predictor_hidden, wanted, |shared| {
                    format!(
                        "embedding `{}` asks for a predictor {wanted} wide, another for one {shared} wide; the encoder \
                         has one predictor head: give every `predictor(...)` the same `hidden`",
                        spec.name
                    )
                })?;
            }
            needs.momentum_target |= spec.target;
        }
        if needs.momentum_target && needs.prune_fraction.is_some() {
            return Err(TrainError::Setup(
                "the objective asks for both SDCLR's pruned branch and a momentum target encoder; sslc builds one \
                 or the other"
                    .into(),
            ));
        }
        Ok(needs)
    }

    /// Sets up `config` to provide what is needed.
    pub fn apply(&self, config: &mut EncoderConfig) {
        config.pruned_branch = self.prune_fraction.is_some();
        config.predictor_hidden = self.predictor_hidden;
        config.momentum_target = self.momentum_target;
    }

    /// Fails unless an encoder built with `config` provides what is needed.
    fn check(&self, config: &EncoderConfig) -> Result<(), TrainError> {
        let missing = if self.prune_fraction.is_some() && !config.pruned_branch {
            Some("SDCLR's pruned branch")
        } else if self.predictor_hidden.is_some() && self.predictor_hidden != config.predictor_hidden {
            Some("a predictor head of the width the objective asks for")
        } else if self.momentum_target && !config.momentum_target {
            Some("a momentum target network")
        } else {
            None
        };
        match missing {
            Some(what) => Err(TrainError::Setup(format!(
                "the objective needs {what}, which this encoder was built without; build it with \
                 EncoderNeeds::apply on its EncoderConfig"
            ))),
            None => Ok(()),
        }
    }
}

/// Records `wanted` in `shared` (the encoder's one prune mask, its one predictor head), unless
/// another value is there already: then the error `conflict` describes with that value.
fn agree<T: Copy + PartialEq>(
    shared: &mut Option<T>,
    wanted: T,
    conflict: impl FnOnce(T) -> String,
) -> Result<(), TrainError> {
    match *shared {
        Some(existing) if existing != wanted => Err(TrainError::Setup(conflict(existing))),
        _ => {
            *shared = Some(wanted);
            Ok(())
        }
    }
}

/// Each spec's embedding, with the encoder's graph attached (the target network's detached).
/// The reference encodes the two views separately, so BatchNorm sees each view's batch
/// statistics; an online embedding read twice (SimSiam's `z1` and `predictor(encoder(x1))`) is
/// computed once.
pub fn forward_embeddings(
    encoder: &Encoder,
    specs: &[EmbeddingSpec],
    views: &[Tensor],
) -> Result<Vec<Tensor>, TrainError> {
    let mut online: HashMap<(usize, Branch), Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let view = views
            .get(spec.view)
            .ok_or_else(|| TrainError::Setup(format!("no view {} for `{}`", spec.view, spec.name)))?;
        if spec.target {
            out.push(encoder.forward_target(view, Mode::Train)?);
            continue;
        }
        let branch = if spec.pruned.is_some() { Branch::Pruned } else { Branch::Dense };
        let embedding = match online.get(&(spec.view, branch)) {
            Some(embedding) => embedding.clone(),
            None => {
                let embedding = encoder.forward(view, branch, Mode::Train)?.1;
                online.insert((spec.view, branch), embedding.clone());
                embedding
            }
        };
        out.push(match spec.predictor {
            Some(_) => encoder.predict(&embedding, Mode::Train)?,
            None => embedding,
        });
    }
    Ok(out)
}

/// Backpropagates the objective's `d loss / d embedding` through the encoder: the gradient of
/// `Σ_i sum(z_i · g_i)` with the `g_i` constant (moved to the embeddings' device first). All embeddings go in one backward pass, so
/// gradients reaching a parameter from several embeddings add up; that is how SDCLR's two
/// steps (dense with the pruned side detached, then pruned with the dense side detached)
/// accumulate before the single optimizer step.
pub fn backpropagate(embeddings: &[Tensor], grads: &[Tensor]) -> Result<GradStore, TrainError> {
    let mut surrogate: Option<Tensor> = None;
    for (embedding, grad) in embeddings.iter().zip(grads) {
        let term = (embedding * grad.detach().to_device(embedding.device())?)?.sum_all()?;
        surrogate = Some(match surrogate {
            Some(total) => (total + term)?,
            None => term,
        });
    }
    let surrogate = surrogate.ok_or_else(|| TrainError::Setup("the objective consumes no embedding".into()))?;
    Ok(surrogate.backward()?)
}

/// [`backpropagate`] of the embeddings the encoder trains: the target network's are detached,
/// so nothing flows back through them and their gradients are left out.
pub fn backpropagate_online(
    embeddings: &[Tensor],
    grads: &[Tensor],
    specs: &[EmbeddingSpec],
) -> Result<GradStore, TrainError> {
    let (trained, trained_grads): (Vec<Tensor>, Vec<Tensor>) = (embeddings.iter().zip(grads))
        .zip(specs)
        .filter(|(_, spec)| !spec.target)
        .map(|((e, g), _)| (e.clone(), g.clone()))
        .unzip();
    backpropagate(&trained, &trained_grads)
}

/// Names the objective and the call that failed.
fn objective_error(during: &'static str, name: &str) -> impl FnOnce(BoxError) -> TrainError {
    let objective = name.to_string();
    move |source| TrainError::Objective { objective, during, source }
}

/// A NaN or infinite entry of the embeddings, if any: the encoder diverged.
fn first_non_finite(embeddings: &[Tensor]) -> Result<Option<f64>, TrainError> {
    for e in embeddings {
        let sum = e.abs()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_vec0::<f64>()?;
        if !sum.is_finite() {
            return Ok(Some(sum));
        }
    }
    Ok(None)
}

fn check_gradients(
    output: &StepOutput,
    embeddings: &[Tensor],
    parameters: &[(String, candle_core::Var)],
    objective: &str,
) -> Result<(), TrainError> {
    if output.grads.len() != embeddings.len() || output.parameter_grads.len() != parameters.len() {
        return Err(TrainError::Setup(format!(
            "objective `{objective}` returned {} gradients for {} embeddings and {} for {} parameters",
            output.grads.len(),
            embeddings.len(),
            output.parameter_grads.len(),
            parameters.len()
        )));
    }
    let parameters = parameters.iter().map(|(_, p)| p.as_tensor());
    for (grad, value) in output.grads.iter().chain(&output.parameter_grads).zip(embeddings.iter().chain(parameters)) {
        if grad.dims() != value.dims() {
            return Err(TrainError::Setup(format!(
                "objective `{objective}` returned a gradient of shape {:?} for a value of shape {:?}",
                grad.dims(),
                value.dims()
            )));
        }
    }
    Ok(())
}

/// Adds batch-size-weighted metric values, keeping the objective's declaration order.
fn accumulate_metrics(sums: &mut Vec<(String, f64)>, metrics: &[(String, f64)], weight: usize) {
    for (key, value) in metrics {
        match sums.iter_mut().find(|(existing, _)| existing == key) {
            Some((_, sum)) => *sum += value * weight as f64,
            None => sums.push((key.clone(), value * weight as f64)),
        }
    }
}

/// Frozen dense-backbone features of a labelled set, in eval mode.
pub fn extract_features(
    encoder: &Encoder,
    images: &mut dyn LabelledImages,
    batch_size: usize,
) -> Result<Features, TrainError> {
    if images.is_empty() || batch_size == 0 {
        return Err(TrainError::Setup(
            "feature extraction needs a non-empty image set and a positive batch size".into(),
        ));
    }
    let mut chunks = Vec::new();
    let mut labels = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(batch_size) {
        let (batch, batch_labels) =
            images.batch(start, batch_size.min(images.len() - start)).map_err(TrainError::Source)?;
        chunks.push(encoder.features(&batch, Branch::Dense, Mode::Eval)?.detach());
        labels.extend(batch_labels);
    }
    Ok(Features { values: Tensor::cat(&chunks, 0)?, labels })
}

/// Linear probe and kNN on the current encoder.
pub fn evaluate_encoder(encoder: &Encoder, setup: &mut EvalSetup<'_>) -> Result<Evaluation, TrainError> {
    if setup.train_counts.len() != setup.groups.len() {
        return Err(TrainError::Setup(format!(
            "{} training counts for {} class groups; give one of each per class",
            setup.train_counts.len(),
            setup.groups.len()
        )));
    }
    let train = extract_features(encoder, setup.probe_train, setup.batch_size)?;
    let test = extract_features(encoder, setup.probe_test, setup.batch_size)?;
    Ok(probe::evaluate(&train, &test, &setup.groups, &setup.probe)?)
}
