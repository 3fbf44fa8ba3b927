//! Training steps on synthetic data, for `sslc bench-train`, `cargo bench` and the GPU check's
//! one-step comparison: speed is measured here, never asserted in tests.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sslc_rng::standard_normal;

use super::{backpropagate, backpropagate_online, forward_embeddings, objective_error, EncoderNeeds, TrainError};
use crate::device::Compute;
use crate::model::{BackboneKind, Encoder, EncoderConfig};
use crate::objective::{EmbeddingSpec, Objective, RunPosition};
use crate::optim::{Optimizer, Sgd};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Throughput {
    /// Dataset images (each seen in two views) per second.
    pub images_per_second: f64,
    pub seconds_per_step: f64,
    /// The median step's time: on a shared machine, steady where the mean is not.
    pub median_seconds_per_step: f64,
}

/// The shape of a synthetic training step: a backbone and a batch of random square images.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticStep {
    pub backbone: BackboneKind,
    pub in_channels: usize,
    pub image_size: usize,
    pub batch_size: usize,
}

/// A seeded batch of views and a fixed stand-in for the objective's gradients (N(0, 1/N²), so
/// every parameter gets a gradient), made on the host and copied to the device once: the timed
/// steps read images already on the device.
struct Synthetic<'o> {
    encoder: Encoder,
    specs: Vec<EmbeddingSpec>,
    views: Vec<Tensor>,
    grads: Vec<Tensor>,
    optimizer: Sgd,
    /// The objective whose gradients the step backpropagates instead of the stand-in's.
    objective: Option<SyntheticObjective<'o>>,
}

struct SyntheticObjective<'o> {
    objective: &'o mut dyn Objective,
    name: String,
    /// The batch's sample indices.
    indices: Vec<u32>,
    /// The target network's momentum, when the objective has one (that of the first epoch).
    target_momentum: Option<f64>,
}

impl SyntheticStep {
    fn build<'o>(
        &self,
        compute: &Compute,
        objective: Option<&'o mut dyn Objective>,
    ) -> Result<Synthetic<'o>, TrainError> {
        let SyntheticStep { backbone, in_channels, image_size, batch_size } = *self;
        if batch_size < 2 || image_size == 0 || in_channels == 0 {
            return Err(TrainError::Setup(
                "a synthetic step needs a batch of at least 2 and a positive image size and channel count".into(),
            ));
        }
        let specs: Vec<EmbeddingSpec> = match &objective {
            Some(o) if o.views().small_crops > 0 => {
                return Err(TrainError::Setup(format!(
                    "objective `{}` takes small crops; the synthetic benchmark makes two full-size views only",
                    o.name()
                )))
            }
            Some(o) => o.embeddings(),
            None => (0..2).map(|view| EmbeddingSpec::online(format!("z{}", view + 1), view)).collect(),
        };
        let needs = EncoderNeeds::of(&specs)?;
        let mut config = EncoderConfig::reference(backbone, in_channels, needs.prune_fraction.is_some(), 0);
        needs.apply(&mut config);
        let encoder = Encoder::on(config, compute)?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let shape = (batch_size, in_channels, image_size, image_size);
        let count = batch_size * in_channels * image_size * image_size;
        let mut random_view = || -> candle_core::Result<Tensor> {
            let values: Vec<f32> = (0..count).map(|_| rng.random_range(-1.0..1.0)).collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(&compute.device)
        };
        let views = vec![random_view()?, random_view()?];
        let width = encoder.config().embedding_dim;
        let grads = (0..specs.len())
            .map(|_| {
                let values: Vec<f32> =
                    (0..batch_size * width).map(|_| (standard_normal(&mut rng) / batch_size as f64) as f32).collect();
                Tensor::from_vec(values, (batch_size, width), &Device::Cpu)?.to_device(&compute.device)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let objective = match objective {
            Some(objective) => {
                let name = objective.name().to_string();
                objective.init_state(&vec![0; batch_size], width).map_err(objective_error("init_state", &name))?;
                let target_momentum = objective
                    .target_momentum(RunPosition::at_epoch(0, 1))
                    .map_err(objective_error("target_momentum", &name))?;
                let indices = (0..batch_size as u32).collect();
                Some(SyntheticObjective { objective, name, indices, target_momentum })
            }
            None => None,
        };
        Ok(Synthetic { encoder, specs, views, grads, optimizer: Sgd::new(0.9, 5e-4), objective })
    }
}

impl Synthetic<'_> {
    /// Two-view forward in train mode, backward and SGD: the runtime's own work in a training
    /// step, with the objective's step as the training loop runs it when one is given (its
    /// loss read back, the step's one synchronisation), the stand-in gradients otherwise.
    fn step(&mut self) -> Result<(), TrainError> {
        let embeddings = forward_embeddings(&self.encoder, &self.specs, &self.views)?;
        let grads = match self.objective.as_mut() {
            None => backpropagate(&embeddings, &self.grads)?,
            Some(o) => {
                let detached: Vec<Tensor> = embeddings.iter().map(Tensor::detach).collect();
                let at = RunPosition::at_epoch(0, 1);
                let output = o.objective.step(&detached, &o.indices, at).map_err(objective_error("step", &o.name))?;
                backpropagate_online(&embeddings, &output.grads, &self.specs)?
            }
        };
        self.optimizer.step(self.encoder.parameters(), &grads, 0.01)?;
        if let Some(momentum) = self.objective.as_ref().and_then(|o| o.target_momentum) {
            self.encoder.update_target(momentum)?;
        }
        Ok(())
    }
}

/// Times `steps` synthetic training steps on `compute`'s device after one untimed warm-up
/// step (which, on a GPU, also loads the kernels); with `objective`, each step runs it on the
/// embeddings as training does (`sslc bench-train --objective`: the objective's share of a
/// step is the difference of the two measurements).
pub fn measure_train_throughput(
    shape: SyntheticStep,
    steps: usize,
    compute: &Compute,
    objective: Option<&mut dyn Objective>,
) -> Result<Throughput, TrainError> {
    if steps == 0 {
        return Err(TrainError::Setup("the benchmark needs at least one step".into()));
    }
    let mut synthetic = shape.build(compute, objective)?;
    synthetic.step()?;
    // GPU work is asynchronous: time from an idle device to an idle device.
    compute.device.synchronize()?;
    let start = Instant::now();
    let mut step_seconds = Vec::with_capacity(steps);
    for _ in 0..steps {
        let step_start = Instant::now();
        synthetic.step()?;
        // Per-step times only on the CPU: a GPU step is timed as a whole, queue to idle.
        if compute.device.is_cpu() {
            step_seconds.push(step_start.elapsed().as_secs_f64());
        }
    }
    compute.device.synchronize()?;
    let seconds_per_step = start.elapsed().as_secs_f64() / steps as f64;
    step_seconds.sort_by(f64::total_cmp);
    let median_seconds_per_step = step_seconds.get(step_seconds.len() / 2).copied().unwrap_or(seconds_per_step);
    Ok(Throughput {
        images_per_second: shape.batch_size as f64 / seconds_per_step,
        seconds_per_step,
        median_seconds_per_step,
    })
}

/// The encoder's parameters and buffers (host copies) after `steps` synthetic steps from the
/// seeded initial weights (0: the initial weights): the same on every device up to rounding,
/// which the GPU check measures.
pub fn synthetic_steps(
    shape: SyntheticStep,
    steps: usize,
    compute: &Compute,
) -> Result<Vec<(String, Tensor)>, TrainError> {
    let mut synthetic = shape.build(compute, None)?;
    for _ in 0..steps {
        synthetic.step()?;
    }
    Ok(crate::device::to_host(synthetic.encoder.state())?)
}
