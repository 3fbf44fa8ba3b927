//! Training-step throughput, for `sslc bench-train` and `cargo bench`: speed is measured here,
//! never asserted in tests.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{backpropagate, forward_embeddings, TrainError};
use crate::model::{BackboneKind, Encoder, EncoderConfig};
use crate::objective::EmbeddingSpec;
use crate::optim::{Optimizer, Sgd};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Throughput {
    /// Dataset images (each seen in two views) per second.
    pub images_per_second: f64,
    pub seconds_per_step: f64,
}

/// Times `steps` training steps of the runtime's own work (two-view forward in train mode,
/// backward, SGD) on random images, after one untimed warm-up step. The objective is left
/// out: a constant gradient stands in for its output.
pub fn measure_train_throughput(
    backbone: BackboneKind,
    in_channels: usize,
    image_size: usize,
    batch_size: usize,
    steps: usize,
) -> Result<Throughput, TrainError> {
    if batch_size < 2 || steps == 0 || image_size == 0 {
        return Err(TrainError::Setup(
            "the benchmark needs a batch of at least 2, at least one step and a positive image size".into(),
        ));
    }
    let encoder = Encoder::new(EncoderConfig::reference(backbone, in_channels, false, 0))?;
    let specs: Vec<EmbeddingSpec> =
        (0..2).map(|view| EmbeddingSpec { name: format!("z{}", view + 1), view, pruned: None }).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let shape = (batch_size, in_channels, image_size, image_size);
    let mut random_view = || -> candle_core::Result<Tensor> {
        let values: Vec<f32> =
            (0..batch_size * in_channels * image_size * image_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    };
    let views = [random_view()?, random_view()?];
    let mut optimizer = Sgd::new(0.9, 5e-4);
    let mut run_step = || -> Result<(), TrainError> {
        let embeddings = forward_embeddings(&encoder, &specs, &views)?;
        let grads = embeddings
            .iter()
            .map(|z| z.ones_like()?.affine(1.0 / batch_size as f64, 0.0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        optimizer.step(encoder.parameters(), &backpropagate(&embeddings, &grads)?, 0.01)?;
        Ok(())
    };
    run_step()?;
    let start = Instant::now();
    for _ in 0..steps {
        run_step()?;
    }
    let seconds_per_step = start.elapsed().as_secs_f64() / steps as f64;
    Ok(Throughput { images_per_second: batch_size as f64 / seconds_per_step, seconds_per_step })
}
