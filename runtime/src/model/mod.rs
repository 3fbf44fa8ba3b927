//! The encoder the training loop optimises: a backbone and a projector, with SDCLR's pruned
//! branch (masked conv weights, its own BatchNorm sets) available on demand.

mod backbone;
mod batch_norm_cpu;
mod conv_cpu;
pub(crate) use conv_cpu::contiguous_f32;
mod layers;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use backbone::BackboneKind;
#[cfg(test)]
pub(crate) use layers::assert_convolutions_agree;
pub(crate) use layers::conv2d_as_matmul;
pub use layers::ConvInit;

use crate::device::Compute;
use backbone::Backbone;
use layers::{BatchNorm, BatchNormSync, Linear, Registry};

use crate::dist::Collective;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Shape(String),
    #[error("this encoder was built without SDCLR's pruned branch; build it with EncoderConfig::pruned_branch = true")]
    NoPrunedBranch,
    #[error("prune fraction {0} is outside [0, 1): it is the share of conv weights masked out, e.g. 0.9")]
    InvalidPruneFraction(f64),
    #[error("saved model state does not fit this encoder: {0}; was it saved with another backbone or configuration?")]
    StateMismatch(String),
}

/// Which copy of the network a forward pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Branch {
    Dense,
    /// SDCLR's branch: conv weights times the prune mask, its own BatchNorm sets.
    Pruned,
}

impl Branch {
    fn index(self) -> usize {
        match self {
            Branch::Dense => 0,
            Branch::Pruned => 1,
        }
    }

    /// Name used in parameter names (`bn.dense.weight`).
    fn name(self) -> &'static str {
        match self {
            Branch::Dense => "dense",
            Branch::Pruned => "pruned",
        }
    }
}

/// BatchNorm behaviour: batch statistics (and running-statistics updates) or running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Per-channel standardisation `(x - mean) / std` applied inside the network.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelStandardization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ChannelStandardization {
    /// ImageNet statistics, which the reference's SDCLR and ImageNet ResNets apply to their input
    /// on top of the data pipeline's own normalisation.
    pub fn imagenet() -> Self {
        ChannelStandardization { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub backbone: BackboneKind,
    /// Image channels: 1 for digits and Fashion-MNIST, 3 for colour.
    pub in_channels: usize,
    /// Output width of the projector (128 in every reference recipe).
    pub embedding_dim: usize,
    /// Build SDCLR's second BatchNorm set in every BN layer.
    pub pruned_branch: bool,
    pub conv_init: ConvInit,
    pub input_standardization: Option<ChannelStandardization>,
    /// Seeds the initial weights.
    pub seed: u64,
    /// Hidden width of the online predictor head (BYOL, SimSiam); `None`: no predictor.
    /// (Absent from the JSON of runs without one, so their recorded identity is unchanged.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor_hidden: Option<usize>,
    /// Keep a momentum (EMA) target copy of the backbone and projector (MoCo, BYOL, DINO).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub momentum_target: bool,
}

impl EncoderConfig {
    /// The reference implementation's choices: SDCLR's networks and the ImageNet ResNet-50 use
    /// kaiming-normal(fan_out) conv init and standardise RGB input with ImageNet statistics; the
    /// CIFAR ResNet of SimCLR/Focal/BCL keeps PyTorch's defaults and no extra standardisation.
    pub fn reference(backbone: BackboneKind, in_channels: usize, pruned_branch: bool, seed: u64) -> Self {
        let reference_resnet = pruned_branch || backbone == BackboneKind::ResNet50;
        EncoderConfig {
            backbone,
            in_channels,
            embedding_dim: 128,
            pruned_branch,
            conv_init: if reference_resnet { ConvInit::KaimingNormalFanOut } else { ConvInit::PytorchDefault },
            input_standardization: (reference_resnet && in_channels == 3).then(ChannelStandardization::imagenet),
            seed,
            predictor_hidden: None,
            momentum_target: false,
        }
    }
}

/// fc(F, F) + BN + ReLU + fc(F, D, no bias) + BN, as `proj_head` in the reference.
struct Projector {
    fc1: Linear,
    bn1: BatchNorm,
    fc2: Linear,
    bn2: BatchNorm,
}

impl Projector {
    fn forward(&self, features: &Tensor, branch: Branch, mode: Mode) -> Result<Tensor, ModelError> {
        // BatchNorm takes channel-major input: transpose [N, F] to [F, N] around it.
        let batch_norm = |bn: &BatchNorm, x: &Tensor, relu: bool| -> Result<Tensor, ModelError> {
            Ok(bn.forward(&x.t()?, branch, mode, None, relu)?.t()?)
        };
        let hidden = batch_norm(&self.bn1, &self.fc1.forward(features)?, true)?;
        batch_norm(&self.bn2, &self.fc2.forward(&hidden)?, false)
    }
}

/// BYOL's and SimSiam's predictor head on the online embedding: fc(D, H) + BN + ReLU +
/// fc(H, D), as in both papers (whose H is 4096 and 512). Dense branch only.
struct Predictor {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Predictor {
    fn forward(&self, embedding: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
        let hidden = self.fc1.forward(embedding)?;
        let hidden = self.bn.forward(&hidden.t()?, Branch::Dense, mode, None, true)?.t()?;
        self.fc2.forward(&hidden)
    }
}

/// The momentum target network: a copy of the dense backbone and projector that is never
/// trained, only moved towards the online weights after each step (`θ_t ← m·θ_t + (1−m)·θ`).
/// Its BatchNorm layers keep their own running statistics, from its own forward passes.
struct Target {
    encoder: Box<Encoder>,
    /// (target, online) parameter pairs, matched by name.
    pairs: Vec<(Var, Var)>,
}

/// Prefix of the target network's tensors in [`Encoder::state`].
const TARGET_PREFIX: &str = "target.";

/// How many conv weights the last [`Encoder::update_prune_mask`] masked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneCount {
    pub pruned: usize,
    pub total: usize,
}

/// Backbone + projector. Parameters and buffers are `Var`s shared with the layers, so the
/// optimizer and checkpoints update them in place.
pub struct Encoder {
    config: EncoderConfig,
    /// Where parameters, buffers and activations live; images move here in [`Encoder::features`].
    compute: Compute,
    standardization: Option<(Tensor, Tensor)>,
    backbone: Backbone,
    projector: Projector,
    predictor: Option<Predictor>,
    target: Option<Target>,
    params: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
    batch_norm_sync: BatchNormSync,
}

impl Encoder {
    /// On the CPU, in f32.
    pub fn new(config: EncoderConfig) -> Result<Self, ModelError> {
        Encoder::on(config, &Compute::cpu())
    }

    /// On `compute`'s device. The initial weights are drawn on the host from the config's seed
    /// and then copied, so every device starts from the same weights.
    pub fn on(config: EncoderConfig, compute: &Compute) -> Result<Self, ModelError> {
        let device = compute.device.clone();
        if config.in_channels == 0 || config.embedding_dim == 0 {
            return Err(ModelError::Shape("in_channels and embedding_dim must be positive".into()));
        }
        let standardization = match &config.input_standardization {
            None => None,
            Some(stats) => {
                if stats.mean.len() != config.in_channels || stats.std.len() != config.in_channels {
                    return Err(ModelError::Shape(format!(
                        "input standardisation has {} means and {} stds for {} channels; give one per channel",
                        stats.mean.len(),
                        stats.std.len(),
                        config.in_channels
                    )));
                }
                let shape = (1, config.in_channels, 1, 1);
                let mean = Tensor::from_slice(&stats.mean, shape, &device)?;
                let std = Tensor::from_slice(&stats.std, shape, &device)?;
                Some((mean, std))
            }
        };
        let branches = if config.pruned_branch { 2 } else { 1 };
        let mut registry = Registry::new(ChaCha8Rng::seed_from_u64(config.seed), device, compute.precision);
        let backbone = Backbone::new(&mut registry, config.backbone, config.in_channels, config.conv_init, branches)?;
        let features = config.backbone.feature_dim();
        let projector = Projector {
            fc1: Linear::new(&mut registry, "projector.fc1", features, features, true)?,
            bn1: BatchNorm::new(&mut registry, "projector.bn1", features, branches)?,
            fc2: Linear::new(&mut registry, "projector.fc2", features, config.embedding_dim, false)?,
            bn2: BatchNorm::new(&mut registry, "projector.bn2", config.embedding_dim, branches)?,
        };
        let predictor = match config.predictor_hidden {
            None => None,
            Some(0) => return Err(ModelError::Shape("the predictor's hidden width must be positive".into())),
            Some(hidden) => Some(Predictor {
                fc1: Linear::new(&mut registry, "predictor.fc1", config.embedding_dim, hidden, true)?,
                bn: BatchNorm::new(&mut registry, "predictor.bn", hidden, 1)?,
                fc2: Linear::new(&mut registry, "predictor.fc2", hidden, config.embedding_dim, true)?,
            }),
        };
        let target = match config.momentum_target {
            false => None,
            true => {
                if config.pruned_branch {
                    return Err(ModelError::Shape(
                        "an encoder cannot have both SDCLR's pruned branch and a momentum target network".into(),
                    ));
                }
                let copy = EncoderConfig { predictor_hidden: None, momentum_target: false, ..config.clone() };
                let encoder = Box::new(Encoder::on(copy, compute)?);
                let online: HashMap<&str, &Var> = registry.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
                let pairs = (encoder.params.iter())
                    .map(|(name, var)| {
                        let twin = online[name.as_str()].clone();
                        var.set(twin.as_tensor())?;
                        Ok((var.clone(), twin))
                    })
                    .collect::<Result<_, ModelError>>()?;
                Some(Target { encoder, pairs })
            }
        };
        Ok(Encoder {
            config,
            compute: compute.clone(),
            standardization,
            backbone,
            projector,
            predictor,
            target,
            params: registry.params,
            buffers: registry.buffers,
            batch_norm_sync: registry.batch_norm_sync,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The device the encoder lives on.
    pub fn device(&self) -> &Device {
        &self.compute.device
    }

    /// Backbone features `[N, F]` (what the linear probe sees) and the projector's embedding
    /// `[N, D]`. `images` is `[N, C, H, W]` f32.
    pub fn forward(&self, images: &Tensor, branch: Branch, mode: Mode) -> Result<(Tensor, Tensor), ModelError> {
        let features = self.features(images, branch, mode)?;
        let embedding = self.projector.forward(&features, branch, mode)?;
        Ok((features, embedding))
    }

    /// The predictor head on an online `embedding` `[N, D]` (BYOL, SimSiam).
    pub fn predict(&self, embedding: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
        let predictor = self.predictor.as_ref().ok_or_else(|| {
            ModelError::Shape(
                "this encoder has no predictor head; build it with EncoderConfig::predictor_hidden".into(),
            )
        })?;
        predictor.forward(embedding, mode)
    }

    /// The momentum target network's embedding of `images`, without gradient.
    pub fn forward_target(&self, images: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
        Ok(self.target()?.encoder.forward(images, Branch::Dense, mode)?.1.detach())
    }

    fn target(&self) -> Result<&Target, ModelError> {
        self.target.as_ref().ok_or_else(|| {
            ModelError::Shape(
                "this encoder has no momentum target network; build it with EncoderConfig::momentum_target".into(),
            )
        })
    }

    /// Moves the target network towards the online one: `θ_t ← m·θ_t + (1 − m)·θ` for every
    /// parameter (MoCo's and BYOL's update, after each optimizer step).
    pub fn update_target(&self, momentum: f64) -> Result<(), ModelError> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(ModelError::Shape(format!(
                "the target encoder's momentum is {momentum}; it must lie in [0, 1] (e.g. 0.99)"
            )));
        }
        for (target, online) in &self.target()?.pairs {
            let moved = ((target.as_tensor() * momentum)? + (online.as_tensor() * (1.0 - momentum))?)?;
            target.set(&moved)?;
        }
        Ok(())
    }

    /// Backbone features only: evaluation does not need the projector. `images` may be on any
    /// device; they are copied to the encoder's (a no-op when already there).
    pub fn features(&self, images: &Tensor, branch: Branch, mode: Mode) -> Result<Tensor, ModelError> {
        let dims = images.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels || dims[0] == 0 || images.dtype() != DType::F32 {
            return Err(ModelError::Shape(format!(
                "the encoder expects f32 images [N, {}, H, W] with N >= 1, got {:?} {:?}",
                self.config.in_channels,
                images.dtype(),
                dims
            )));
        }
        if branch == Branch::Pruned && !self.config.pruned_branch {
            return Err(ModelError::NoPrunedBranch);
        }
        let images = images.to_device(&self.compute.device)?;
        let input = match &self.standardization {
            Some((mean, std)) => images.broadcast_sub(mean)?.broadcast_div(std)?,
            None => images,
        };
        self.backbone.forward(&input, branch, mode)
    }

    /// Makes every BatchNorm layer (both branches, projector included) compute its training-mode
    /// statistics over the global batch of `collective`'s ranks (SyncBatchNorm); `None`, over
    /// this process's batch alone.
    pub fn synchronize_batch_norm(&self, collective: Option<Arc<dyn Collective>>) -> Result<(), ModelError> {
        if let Some(target) = &self.target {
            target.encoder.synchronize_batch_norm(collective.clone())?;
        }
        let mut sync =
            self.batch_norm_sync.write().map_err(|_| ModelError::Shape("BatchNorm sync lock poisoned".into()))?;
        *sync = collective;
        Ok(())
    }

    /// Trainable parameters, by name, in a fixed order.
    pub fn parameters(&self) -> &[(String, Var)] {
        &self.params
    }

    /// BatchNorm running statistics of every branch, by name.
    pub fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }

    /// Parameters and buffers, the target network's under `target.`, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let own = self.params.iter().chain(&self.buffers).map(|(name, var)| (name.clone(), var.as_tensor().clone()));
        let target =
            self.target.iter().flat_map(|t| t.encoder.state()).map(|(n, t)| (format!("{TARGET_PREFIX}{n}"), t));
        own.chain(target).collect()
    }

    /// Restores what [`Encoder::state`] returned (from any device); every name must be present
    /// with its shape.
    pub fn load_state(&self, state: &[(String, Tensor)]) -> Result<(), ModelError> {
        let (target, state): (Vec<_>, Vec<_>) = state.iter().partition(|(name, _)| name.starts_with(TARGET_PREFIX));
        match (&self.target, target.is_empty()) {
            (Some(t), false) => {
                let target: Vec<(String, Tensor)> =
                    target.iter().map(|(n, t)| (n[TARGET_PREFIX.len()..].to_string(), t.clone())).collect();
                t.encoder.load_state(&target)?;
            }
            (None, true) => {}
            (Some(_), true) => return Err(ModelError::StateMismatch("the momentum target network is missing".into())),
            (None, false) => {
                return Err(ModelError::StateMismatch("it holds a momentum target network this encoder lacks".into()))
            }
        }
        let saved: HashMap<&str, &Tensor> = state.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
        let own = self.params.iter().chain(&self.buffers);
        if saved.len() != self.params.len() + self.buffers.len() {
            return Err(ModelError::StateMismatch(format!(
                "it holds {} tensors, this encoder has {}",
                saved.len(),
                self.params.len() + self.buffers.len()
            )));
        }
        for (name, var) in own.clone() {
            let tensor =
                saved.get(name.as_str()).ok_or_else(|| ModelError::StateMismatch(format!("`{name}` is missing")))?;
            if tensor.dims() != var.dims() || tensor.dtype() != var.dtype() {
                return Err(ModelError::StateMismatch(format!(
                    "`{name}` is {:?} {:?}, expected {:?} {:?}",
                    tensor.dtype(),
                    tensor.dims(),
                    var.dtype(),
                    var.dims()
                )));
            }
        }
        for (name, var) in own {
            var.set(&saved[name.as_str()].to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Recomputes SDCLR's mask: the `ceil(fraction * total)` smallest-magnitude weights over all
    /// conv layers together are masked out (ties broken by position, so the count is exact).
    /// Until the first call the pruned branch masks nothing, as in the reference.
    pub fn update_prune_mask(&self, fraction: f64) -> Result<PruneCount, ModelError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(ModelError::InvalidPruneFraction(fraction));
        }
        if !self.config.pruned_branch {
            return Err(ModelError::NoPrunedBranch);
        }
        let convs = self.backbone.convs();
        let mut magnitudes = Vec::new();
        for conv in &convs {
            magnitudes.extend(conv.weight.as_tensor().flatten_all()?.abs()?.to_vec1::<f32>()?);
        }
        let total = magnitudes.len();
        let pruned = ((fraction * total as f64).ceil() as usize).min(total);
        let mut keep = vec![1f32; total];
        if pruned > 0 {
            let mut order: Vec<usize> = (0..total).collect();
            let by_magnitude = |a: &usize, b: &usize| magnitudes[*a].total_cmp(&magnitudes[*b]).then(a.cmp(b));
            order.select_nth_unstable_by(pruned - 1, by_magnitude);
            for &index in &order[..pruned] {
                keep[index] = 0.0;
            }
        }
        let mut offset = 0;
        for conv in convs {
            let mask = conv.prune_mask.as_ref().ok_or(ModelError::NoPrunedBranch)?;
            let count = mask.elem_count();
            mask.set(&Tensor::from_slice(&keep[offset..offset + count], mask.shape(), mask.device())?)?;
            offset += count;
        }
        Ok(PruneCount { pruned, total })
    }

    /// Every conv weight with its prune mask (`None` without a pruned branch), in layer order.
    pub fn conv_weights_and_masks(&self) -> Vec<(Tensor, Option<Tensor>)> {
        self.backbone
            .convs()
            .into_iter()
            .map(|conv| {
                (conv.weight.as_tensor().clone(), conv.prune_mask.as_ref().map(|mask| mask.as_tensor().clone()))
            })
            .collect()
    }
}
