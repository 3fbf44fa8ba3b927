//! The boundary between the training loop and a compiled objective.
//!
//! The runtime knows nothing about `.ssl` programs: it asks an [`Objective`] which views and
//! branches to produce, hands it the embeddings of a batch, and gets back the loss, the
//! per-sample losses, logged metrics and the gradient with respect to every embedding. It then
//! backpropagates those gradients through the encoder itself. The `sslc` crate adapts the
//! compiler's evaluators to this trait; tests may implement it by hand.

use crate::optim::ParamOptions;
use candle_core::{Tensor, Var};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One embedding the objective consumes, in the order [`Objective::step`] receives them.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingSpec {
    /// Name in the objective (`z1`).
    pub name: String,
    /// Which augmented view feeds the encoder: 0 or 1 (the global views), or a small crop.
    pub view: usize,
    /// SDCLR's pruned branch: the fraction of smallest-magnitude conv weights masked out.
    pub pruned: Option<f64>,
    /// From the momentum target network (no gradient reaches the encoder through it); its
    /// momentum is [`Objective::target_momentum`].
    pub target: bool,
    /// Through the online predictor head of this hidden width (BYOL, SimSiam).
    pub predictor: Option<usize>,
}

impl EmbeddingSpec {
    /// The online encoder's embedding of `view`.
    pub fn online(name: impl Into<String>, view: usize) -> Self {
        EmbeddingSpec { name: name.into(), view, pruned: None, target: false, predictor: None }
    }
}

/// An augmentation applied after the base pipeline with per-sample arguments (BCL's
/// `randaugment(p=..., strength=...)`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraAugmentation {
    pub name: String,
    /// Argument names, in the order [`Objective::augmentation_args`] returns their values.
    pub args: Vec<String>,
}

/// The views the data loader must produce.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewSpec {
    /// The base pipeline's name (`simclr_augment`); the dataset decides its parameters.
    pub base: String,
    pub extra: Vec<ExtraAugmentation>,
    /// Small crops after the two global views (multi-crop, SwAV and DINO): views `2..2 + k`.
    pub small_crops: usize,
}

impl ViewSpec {
    /// Global views and small crops together.
    pub fn count(&self) -> usize {
        2 + self.small_crops
    }
}

/// Where in the run a step happens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPosition {
    /// Epochs completed before the current one.
    pub epoch: usize,
    /// Epochs in the whole run.
    pub epochs: usize,
    /// `(steps completed, steps in the run)` when the caller counts steps (the training
    /// loop); `None` counts one step per epoch.
    pub iteration: Option<(usize, usize)>,
}

impl RunPosition {
    /// The start of epoch `epoch` of `epochs`, steps not counted.
    pub fn at_epoch(epoch: usize, epochs: usize) -> RunPosition {
        RunPosition { epoch, epochs, iteration: None }
    }

    /// Step `step` (0-based) of an epoch of `steps_per_epoch` steps.
    pub fn at_step(self, step: usize, steps_per_epoch: usize) -> RunPosition {
        let iteration = (self.epoch * steps_per_epoch + step, self.epochs * steps_per_epoch);
        RunPosition { iteration: Some(iteration), ..self }
    }
}

pub struct StepOutput {
    /// The scalar that is minimised.
    pub loss: f64,
    /// The base loss of each sample, `[N]` (BCL's momentum loss tracks it).
    pub per_sample: Tensor,
    /// `metric` declarations of the objective, in declaration order.
    pub metrics: Vec<(String, f64)>,
    /// d loss / d embedding, one per [`EmbeddingSpec`], same shapes as the embeddings.
    pub grads: Vec<Tensor>,
    /// d loss / d parameter, one per [`Objective::parameters`] entry, in that order.
    pub parameter_grads: Vec<Tensor>,
}

pub trait Objective: Send {
    /// The objective's name (`simclr_gh`).
    fn name(&self) -> &str;
    fn embeddings(&self) -> Vec<EmbeddingSpec>;
    fn views(&self) -> ViewSpec;
    /// Creates per-sample and global state for a training set whose images have these
    /// `labels` (by dataset index; objectives that declare `labels` keep them, the others use
    /// their count) and embeddings `width` wide: state shapes may use the embedding width (a
    /// queue `[Q, D]`), so it must be known before the first step.
    fn init_state(&mut self, labels: &[u32], width: usize) -> Result<(), BoxError>;
    /// Tensors the objective learns (`learn` in an objective: SwAV's prototypes), trained by the
    /// run's optimizer with the encoder's parameters. They are the objective's own, so they are
    /// saved with its [`Objective::state`]; the optimizer's buffers for them with its own.
    fn parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
    /// The optimizer's factors for each of [`Objective::parameters`], in that order (`learn t:
    /// [1] = zeros, decay=0` keeps `t` out of weight decay).
    fn parameter_options(&self) -> Vec<ParamOptions> {
        vec![ParamOptions::PLAIN; self.parameters().len()]
    }
    /// Named state tensors (and parameters), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores state saved by [`Objective::state`]; names and shapes must match.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), BoxError>;
    /// The momentum of the target network during an epoch, when an embedding comes from it.
    fn target_momentum(&self, _at: RunPosition) -> Result<Option<f64>, BoxError> {
        Ok(None)
    }
    /// The learning rate for an epoch, when the objective declares `schedule lr`.
    fn learning_rate(&self, at: RunPosition, base_lr: f64) -> Result<Option<f64>, BoxError>;
    /// Whether the learning rate or the target momentum change within an epoch (a schedule
    /// reads `iteration`): the loop then asks for them at every step, else once per epoch.
    fn schedules_per_step(&self) -> bool {
        false
    }
    /// Per-sample arguments of every extra augmentation for the given dataset indices:
    /// `result[augmentation][argument][sample]`.
    fn augmentation_args(&self, indices: &[u32], at: RunPosition) -> Result<Vec<Vec<Vec<f32>>>, BoxError>;
    /// Loss, per-sample losses, metrics and gradients for one batch. `embeddings` are `[N, D]`
    /// f32 tensors on the encoder's device (a GPU too), detached from the encoder's graph;
    /// `indices` are the batch's dataset indices. The gradients may be on any device (the loop
    /// moves them to the embeddings'), the parameters' gradients on their variables' device.
    /// An objective that computes on the host copies the embeddings there itself; one that
    /// computes on the embeddings' device should read only the loss back, the step's one
    /// synchronisation.
    fn step(&mut self, embeddings: &[Tensor], indices: &[u32], at: RunPosition) -> Result<StepOutput, BoxError>;
    /// Runs `on step` state updates after the optimizer step, with the same batch (the
    /// embeddings and the output as [`Objective::step`] had them).
    fn after_step(
        &mut self,
        embeddings: &[Tensor],
        indices: &[u32],
        output: &StepOutput,
        at: RunPosition,
    ) -> Result<(), BoxError>;
    /// Runs `on epoch` handlers once `completed` epochs are done.
    fn end_epoch(&mut self, completed: usize, epochs: usize) -> Result<(), BoxError>;
}
