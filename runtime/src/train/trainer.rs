//! [`train_parallel`](super::train_parallel)'s phases: set up (checks, the run directory's lock,
//! the optimizer), begin (fresh or from the checkpoint), open the reports, train an epoch step
//! by step, checkpoint and evaluate, finish the reports. One struct holds what they share, so
//! each phase reads as what it does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Tensor, Var};

use super::{
    accumulate_metrics, backpropagate_online, check_gradients, evaluate_encoder, first_non_finite, forward_embeddings,
    nothing_to_resume, objective_error, pause_for_tests, reference_learning_rate, replicas_agree, same_on_every_rank,
    settings, BatchSource, EncoderNeeds, EvalSetup, Parallel, RunDir, RunIdentity, Start, TrainConfig, TrainError,
    TrainOutcome, CHECKPOINT_FILE,
};
use crate::checkpoint::Checkpoint;
use crate::dist::{self, Collective, Shard};
use crate::model::Encoder;
use crate::objective::{EmbeddingSpec, Objective, RunPosition};
use crate::optim::{Optimizer, Sgd};
use crate::probe::Evaluation;
use crate::report::{self, MetricsLog, Progress};

/// One run in progress on this rank.
pub(super) struct Trainer<'a, 'e> {
    run: &'a RunDir,
    config: &'a TrainConfig,
    encoder: &'a Encoder,
    objective: &'a mut dyn Objective,
    source: &'a mut dyn BatchSource,
    evaluation: Option<EvalSetup<'e>>,
    parallel: &'a Parallel,
    /// The run directory's lock, held (by rank 0) until the run ends.
    _lock: Option<std::fs::File>,
    name: String,
    identity: serde_json::Value,
    checkpoint_path: PathBuf,
    specs: Vec<EmbeddingSpec>,
    needs: EncoderNeeds,
    /// Whether the learning rate and target momentum change within an epoch (asked once).
    schedules_per_step: bool,
    optimizer: Sgd,
    /// The objective's own parameters (`learn` tensors), as it names them.
    objective_parameters: Vec<(String, Var)>,
    /// Everything the optimizer updates: the encoder's, then the objective's as `objective.{name}`.
    parameters: Vec<(String, Var)>,
    /// Rank 0's reports; other ranks write nothing.
    metrics: Option<MetricsLog>,
    shard: Shard,
    sync_batch_norm: bool,
    progress: Progress,
    last_epoch_loss: Option<f64>,
    last_evaluation: Option<Evaluation>,
}

/// What an epoch's steps add up.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    images: usize,
    /// Seconds the steps waited for their batches.
    waited: f64,
    metric_sums: Vec<(String, f64)>,
}

/// What every step of an epoch shares.
struct EpochPlan {
    epoch: usize,
    /// The epoch's first step.
    at: RunPosition,
    steps: usize,
    /// At the first step; when the objective's schedules advance every step, each step asks
    /// again.
    rates: Rates,
}

/// The learning rate and the target network's momentum at a step.
#[derive(Clone, Copy)]
struct Rates {
    lr: f64,
    target_momentum: Option<f64>,
}

impl<'a, 'e> Trainer<'a, 'e> {
    /// Checks what the objective asks of the encoder, takes the run directory (rank 0), and
    /// builds the objective's state and the optimizer.
    pub(super) fn new(
        run: &'a RunDir,
        config: &'a TrainConfig,
        encoder: &'a Encoder,
        objective: &'a mut dyn Objective,
        source: &'a mut dyn BatchSource,
        evaluation: Option<EvalSetup<'e>>,
        parallel: &'a Parallel,
    ) -> Result<Self, TrainError> {
        let collective = parallel.collective.as_ref();
        let lead = collective.rank() == 0;
        let identity = RunIdentity {
            train: config.clone(),
            encoder: encoder.config().clone(),
            objective: objective.name().to_string(),
        }
        .to_json();
        let specs = objective.embeddings();
        let needs = EncoderNeeds::of(&specs)?;
        let view_count = objective.views().count();
        if let Some(spec) = specs.iter().find(|spec| spec.view >= view_count) {
            return Err(TrainError::Setup(format!(
                "embedding `{}` asks for view {}, but the objective has {view_count} views",
                spec.name, spec.view
            )));
        }
        needs.check(encoder.config())?;
        let prepared = match lead {
            true => run.take().map(Some),
            false => Ok(None),
        };
        let lock = dist::agree(collective, prepared)??;
        let name = objective.name().to_string();
        let schedules_per_step = objective.schedules_per_step();
        objective
            .init_state(source.labels(), encoder.config().embedding_dim)
            .map_err(objective_error("init_state", &name))?;
        // The objective's own parameters train with the encoder's, under names of their own.
        let objective_parameters = objective.parameters();
        let own_name = |n: &str| format!("objective.{n}");
        let optimizer = Sgd::new(config.momentum, config.weight_decay).with_options(
            objective_parameters.iter().zip(objective.parameter_options()).map(|((n, _), o)| (own_name(n), o)),
        );
        let parameters = (encoder.parameters().iter().cloned())
            .chain(objective_parameters.iter().map(|(n, v)| (own_name(n), v.clone())))
            .collect();
        Ok(Trainer {
            run,
            config,
            encoder,
            objective,
            source,
            evaluation,
            parallel,
            _lock: lock,
            name,
            identity,
            checkpoint_path: run.path.join(CHECKPOINT_FILE),
            specs,
            needs,
            schedules_per_step,
            optimizer,
            objective_parameters,
            parameters,
            metrics: None,
            shard: Shard::WHOLE,
            sync_batch_norm: false,
            progress: Progress::new(false),
            last_epoch_loss: None,
            last_evaluation: None,
        })
    }

    fn collective(&self) -> &'a dyn Collective {
        self.parallel.collective.as_ref()
    }

    fn lead(&self) -> bool {
        self.collective().rank() == 0
    }

    /// The epoch to start from: 0 for a fresh run (whose directory rank 0 clears), the saved
    /// one for a resume, whose checkpoint must have been written with the same settings.
    fn starting_epoch(&mut self) -> Result<usize, TrainError> {
        let lead = self.lead();
        match self.run.start {
            Start::Fresh | Start::Overwrite if !lead => Ok(0),
            Start::Fresh | Start::Overwrite => self.run.clear().map(|()| 0),
            Start::Resume => {
                let (path, dir) = (&self.checkpoint_path, &self.run.path);
                // Checked under the lock: a live run's directory is in use, not empty of checkpoints.
                if !path.exists() {
                    return Err(match lead {
                        true => nothing_to_resume(dir),
                        false => TrainError::Setup(format!(
                            "rank {} cannot read {}, which rank 0 resumes from; every rank must see the run directory \
                             (put it on a filesystem all nodes share)",
                            self.collective().rank(),
                            path.display()
                        )),
                    });
                }
                let saved = Checkpoint::load(path)?;
                let seed = self.config.seed;
                if saved.config != self.identity || saved.seed != seed {
                    let mut differ = settings::differences(&saved.config, &self.identity);
                    if saved.seed != seed && !differ.iter().any(|line| line.starts_with("seed:")) {
                        differ.push(format!("seed: saved {}, requested {seed}", saved.seed));
                    }
                    return Err(TrainError::Setup(format!(
                        "{} was written with other settings than this resume asks for:\n  {}\nresume with the run's own \
                         settings (drop or change the flags above), start the run afresh with --out {} --overwrite, or \
                         give the new settings a new --out",
                        path.display(),
                        differ.join("\n  "),
                        dir.display()
                    )));
                }
                self.encoder.load_state(&saved.model)?;
                self.optimizer.load_state(&saved.optimizer)?;
                self.objective.load_state(&saved.objective).map_err(objective_error("load_state", &self.name))?;
                Ok(saved.epoch)
            }
        }
    }

    /// Starts or resumes on every rank, then opens the reports (rank 0), shards the batches and
    /// synchronises BatchNorm; returns the first epoch to train.
    pub(super) fn begin(&mut self) -> Result<usize, TrainError> {
        let collective = self.collective();
        let lead = self.lead();
        let begun = self.starting_epoch().and_then(|epoch| match lead {
            true => self.run.write_record().map(|()| epoch),
            false => Ok(epoch),
        });
        let first_epoch = dist::agree(collective, begun)??;
        same_on_every_rank(collective, first_epoch, "the checkpoint's epoch")?;
        let metrics = match lead {
            true => MetricsLog::open(&self.run.path.join(report::METRICS_FILE), first_epoch).map(Some),
            false => Ok(None),
        };
        self.metrics = dist::agree(collective, metrics)??;
        let knn_k = self.evaluation.as_ref().map_or(&[][..], |setup| &setup.probe.knn_k[..]);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.log_to_tensorboard(&self.identity, &report::headline_metric_tags(knn_k));
        }
        self.shard = match self.source.batch_indices(first_epoch, self.config.seed).map_err(TrainError::Source)?.first()
        {
            Some(batch) => Shard::of(collective, batch.len())?,
            None => Shard::WHOLE,
        };
        self.source.set_shard(self.shard).map_err(TrainError::Source)?;
        self.sync_batch_norm = self.parallel.sync_batch_norm && collective.world() > 1;
        self.encoder.synchronize_batch_norm(self.sync_batch_norm.then(|| self.parallel.collective.clone()))?;
        self.progress = Progress::new(lead && std::io::stdout().is_terminal());
        Ok(first_epoch)
    }

    /// The learning rate and target momentum at `at` (the epoch's `step`), from the objective's
    /// schedules or the reference recipe.
    fn rates(&self, at: RunPosition, step: usize) -> Result<Rates, TrainError> {
        let (name, epoch) = (&self.name, at.epoch);
        let target_momentum = match self.needs.momentum_target {
            false => None,
            true => Some(
                self.objective
                    .target_momentum(at)
                    .map_err(objective_error("target_momentum", name))?
                    .ok_or_else(|| TrainError::Setup(format!("objective `{name}` gives no target momentum")))?,
            ),
        };
        let config = self.config;
        let lr =
            match self.objective.learning_rate(at, config.base_lr).map_err(objective_error("learning_rate", name))? {
                Some(lr) => lr,
                None => reference_learning_rate(epoch, config.epochs, config.base_lr, config.lr_min),
            };
        if !lr.is_finite() {
            let checkpoint = self.checkpoint_path.clone();
            return Err(TrainError::Diverged { what: "learning rate", value: lr, epoch, step, checkpoint });
        }
        Ok(Rates { lr, target_momentum })
    }

    /// Trains one epoch, then checkpoints it and evaluates when due (rank 0).
    pub(super) fn epoch(&mut self, epoch: usize) -> Result<(), TrainError> {
        if let Some(fraction) = self.needs.prune_fraction {
            self.encoder.update_prune_mask(fraction)?;
        }
        let seed = self.config.seed;
        let batches = self.source.batch_indices(epoch, seed).map_err(TrainError::Source)?;
        let at = RunPosition::at_epoch(epoch, self.config.epochs).at_step(0, batches.len());
        let plan = EpochPlan { epoch, at, steps: batches.len(), rates: self.rates(at, 0)? };
        // Augmentation arguments are evaluated once per epoch, for every sample, so the source
        // can augment ahead of the training step.
        let extra_args = match self.objective.views().extra.is_empty() {
            true => Vec::new(),
            false => {
                let all: Vec<u32> = (0..self.source.samples() as u32).collect();
                (self.objective.augmentation_args(&all, plan.at))
                    .map_err(objective_error("augmentation_args", &self.name))?
            }
        };
        self.source.start_epoch(epoch, seed, extra_args).map_err(TrainError::Source)?;
        self.progress.start_epoch(epoch, self.config.epochs, batches.len());
        let epoch_start = Instant::now();
        let mut tally = Tally::default();
        for (step, indices) in batches.iter().enumerate() {
            self.step(&plan, step, indices, &mut tally)?;
        }
        self.objective.end_epoch(epoch + 1, self.config.epochs).map_err(objective_error("end_epoch", &self.name))?;
        replicas_agree(self.collective(), self.encoder, &*self.objective, self.sync_batch_norm, epoch + 1)?;
        // A step can leave non-finite weights behind a finite loss (an infinite learning rate,
        // the last step of a run): such weights are never checkpointed nor evaluated.
        let weights: Vec<Tensor> = self.parameters.iter().map(|(_, var)| var.as_tensor().clone()).collect();
        if let Some(bad) = first_non_finite(&weights)? {
            let (step, checkpoint) = (batches.len().saturating_sub(1), self.checkpoint_path.clone());
            return Err(TrainError::Diverged { what: "weights", value: bad, epoch, step, checkpoint });
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        let images = tally.images.max(1) as f64;
        let epoch_loss = tally.loss_sum / images;
        let means: Vec<(String, f64)> = tally.metric_sums.into_iter().map(|(key, sum)| (key, sum / images)).collect();
        if let Some(metrics) = self.metrics.as_mut() {
            let (rate, wait_fraction) = (tally.images as f64 / seconds.max(1e-9), tally.waited / seconds.max(1e-9));
            metrics.epoch(epoch, epoch_loss, plan.rates.lr, seconds, rate, wait_fraction, &means)?;
        }
        self.progress.finish_epoch();
        self.last_epoch_loss = Some(epoch_loss);
        self.save_and_evaluate(epoch + 1)
    }

    /// One step: the views of this rank's shard, the embeddings, the objective's loss and
    /// gradients on the global batch, backpropagation, the gradient all-reduce and the update.
    fn step(&mut self, plan: &EpochPlan, step: usize, indices: &[u32], tally: &mut Tally) -> Result<(), TrainError> {
        let step_start = Instant::now();
        let at = plan.at.at_step(step, plan.steps);
        let rates = match step > 0 && self.schedules_per_step {
            true => self.rates(at, step)?,
            false => plan.rates,
        };
        let (collective, name, epoch) = (self.collective(), &self.name, plan.epoch);
        if !indices.len().is_multiple_of(self.shard.world) {
            Shard::of(collective, indices.len())?;
        }
        let views = self.source.views(self.shard.part(indices)).map_err(TrainError::Source)?;
        let data_wait = step_start.elapsed().as_secs_f64();
        let embeddings = forward_embeddings(self.encoder, &self.specs, &views)?;
        // The global batch's embeddings, the same on every rank, where the encoder left
        // them: an objective that runs elsewhere copies them itself (docs/gpu.md).
        let detached =
            embeddings.iter().map(|e| dist::gather_rows(collective, &e.detach())).collect::<Result<Vec<_>, _>>()?;
        let diverged =
            |what, value| TrainError::Diverged { what, value, epoch, step, checkpoint: self.checkpoint_path.clone() };
        let output = self.objective.step(&detached, indices, at);
        // The loss is the step's one read of a device value; the embeddings are inspected
        // only once it is not finite (or the objective failed), to name what diverged first.
        if !output.as_ref().is_ok_and(|o| o.loss.is_finite()) {
            if let Some(bad) = first_non_finite(&detached)? {
                return Err(diverged("embeddings", bad));
            }
        }
        let output = output.map_err(objective_error("step", name))?;
        if !output.loss.is_finite() {
            return Err(diverged("loss", output.loss));
        }
        check_gradients(&output, &detached, &self.objective_parameters, name)?;
        let own_grads =
            output.grads.iter().map(|grad| dist::own_rows(collective, grad)).collect::<Result<Vec<_>, _>>()?;
        let grads = backpropagate_online(&embeddings, &own_grads, &self.specs)?;
        let mut grads = dist::all_reduce_gradients(collective, self.encoder.parameters(), grads)?;
        // The objective's own parameters already have the global loss's gradient on every
        // rank (each rank evaluates the whole loss): they are not summed over ranks.
        for ((_, parameter), grad) in self.objective_parameters.iter().zip(&output.parameter_grads) {
            grads.insert(parameter.as_tensor(), grad.clone());
        }
        self.optimizer.step(&self.parameters, &grads, rates.lr)?;
        if let Some(momentum) = rates.target_momentum {
            self.encoder.update_target(momentum)?;
        }
        (self.objective.after_step(&detached, indices, &output, at)).map_err(objective_error("after_step", name))?;

        let seconds = step_start.elapsed().as_secs_f64();
        tally.waited += data_wait;
        tally.loss_sum += output.loss * indices.len() as f64;
        tally.images += indices.len();
        accumulate_metrics(&mut tally.metric_sums, &output.metrics, indices.len());
        let images_per_second = indices.len() as f64 / seconds.max(1e-9);
        if let Some(metrics) = self.metrics.as_mut() {
            let wait_fraction = data_wait / seconds.max(1e-9);
            let (loss, lr) = (output.loss, rates.lr);
            metrics.step(epoch, step, loss, lr, seconds, images_per_second, wait_fraction, &output.metrics)?;
        }
        self.progress.step(output.loss, images_per_second);
        Ok(())
    }

    /// Rank 0 checkpoints the `completed` epochs and evaluates when an evaluation is due.
    fn save_and_evaluate(&mut self, completed: usize) -> Result<(), TrainError> {
        let rank = self.collective().rank();
        let Some(metrics) = self.metrics.as_mut() else {
            // Ranks other than 0 write nothing and do not evaluate.
            pause_for_tests(completed, rank);
            return Ok(());
        };
        Checkpoint {
            epoch: completed,
            seed: self.config.seed,
            config: self.identity.clone(),
            model: self.encoder.state(),
            optimizer: self.optimizer.state()?,
            objective: self.objective.state(),
        }
        .save(&self.checkpoint_path)?;
        pause_for_tests(completed, rank);
        let config = self.config;
        let due = completed == config.epochs || (config.eval_every > 0 && completed.is_multiple_of(config.eval_every));
        if let (true, Some(setup)) = (due, self.evaluation.as_mut()) {
            let result = evaluate_encoder(self.encoder, setup)?;
            metrics.evaluation(completed, &result)?;
            self.last_evaluation = Some(result);
        }
        Ok(())
    }

    /// The final reports (rank 0): a run resumed at its end whose final evaluation or reports
    /// never completed (killed during the evaluation, or a failed write) does them now.
    pub(super) fn finish(mut self, first_epoch: usize, last_epoch: usize) -> Result<TrainOutcome, TrainError> {
        let epochs = self.config.epochs.max(first_epoch);
        let last_epoch_loss = self.last_epoch_loss;
        let Some(mut metrics) = self.metrics.take() else {
            return Ok(TrainOutcome { epochs, last_epoch_loss, evaluation: None });
        };
        let dir = self.run.path.as_path();
        let reported = dir.join(report::SUMMARY_FILE).exists() && dir.join(report::PER_CLASS_PLOT_FILE).exists();
        if let (None, true, false, Some(setup)) =
            (&self.last_evaluation, last_epoch == self.config.epochs, reported, self.evaluation.as_mut())
        {
            let result = evaluate_encoder(self.encoder, setup)?;
            if !metrics.has_evaluation(self.config.epochs)? {
                metrics.evaluation(self.config.epochs, &result)?;
            }
            self.last_evaluation = Some(result);
        }
        if let (Some(setup), Some(result)) = (self.evaluation.as_ref(), self.last_evaluation.as_ref()) {
            report::write_summary(dir, &self.identity, result)?;
            let plot = dir.join(report::PER_CLASS_PLOT_FILE);
            report::plot_per_class(&plot, &result.linear, &setup.train_counts, &setup.groups)?;
            metrics.finish_tensorboard(&plot);
            println!("{}", report::group_table(&result.linear));
        }
        Ok(TrainOutcome { epochs, last_epoch_loss, evaluation: self.last_evaluation })
    }
}
