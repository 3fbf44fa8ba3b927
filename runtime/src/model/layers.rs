//! Layers with explicit parameters, so that the optimizer, the checkpoint and SDCLR's pruning
//! can see every tensor by name.

use std::sync::{Arc, RwLock};

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sslc_rng::BoxMuller;

use super::batch_norm_cpu::FusedBatchNorm;
use super::conv_cpu::{Conv, Patches};
use super::{Branch, Mode, ModelError};
use crate::device::{self, Precision};
use crate::dist::{all_reduce_sum_differentiable, Collective};

/// The ranks every BatchNorm of one encoder computes its batch statistics over in training
/// mode (`None`: this process's batch alone), shared by all its layers so that one switch
/// turns synchronisation on or off for every BN, the projector's and the pruned branch's too.
pub(crate) type BatchNormSync = Arc<RwLock<Option<Arc<dyn Collective>>>>;

/// BatchNorm's default epsilon and running-statistics momentum (PyTorch's defaults).
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// How conv weights are initialised; the reference uses different schemes per network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConvInit {
    /// PyTorch's `Conv2d` default, kaiming_uniform(a=√5): U(±1/√fan_in).
    /// The reference's CIFAR ResNet for SimCLR/Focal/BCL (`resnet.py`) keeps it.
    PytorchDefault,
    /// kaiming_normal(mode=fan_out, relu): N(0, 2/fan_out). The reference's SDCLR ResNets
    /// and its ImageNet ResNet-50 (`resnet_prune_multibn.py`, `resnet_imagenet.py`) use it.
    KaimingNormalFanOut,
}

/// Collects every trainable parameter and every buffer under a dotted name as layers are
/// built, and draws their initial values from one seeded stream.
pub(crate) struct Registry {
    pub params: Vec<(String, Var)>,
    pub buffers: Vec<(String, Var)>,
    pub batch_norm_sync: BatchNormSync,
    rng: ChaCha8Rng,
    device: Device,
    /// Given to every conv and linear layer built here.
    precision: Precision,
}

impl Registry {
    pub fn new(rng: ChaCha8Rng, device: Device, precision: Precision) -> Self {
        Registry {
            params: Vec::new(),
            buffers: Vec::new(),
            batch_norm_sync: BatchNormSync::default(),
            rng,
            device,
            precision,
        }
    }

    fn tensor(&self, values: Vec<f32>, shape: &[usize]) -> Result<Tensor, ModelError> {
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    fn uniform(&mut self, shape: &[usize], bound: f64) -> Result<Tensor, ModelError> {
        let count = shape.iter().product();
        let values = (0..count).map(|_| self.rng.random_range(-bound..bound) as f32).collect();
        self.tensor(values, shape)
    }

    fn normal(&mut self, shape: &[usize], std: f64) -> Result<Tensor, ModelError> {
        let count = shape.iter().product();
        // `1 - u` is in (0, 1] without clamping; initial weights have always been drawn so.
        let values = (0..count)
            .map(|_| (BoxMuller::new(1.0 - self.rng.random::<f64>(), self.rng.random()).cos() * std) as f32)
            .collect();
        self.tensor(values, shape)
    }

    fn filled(&self, shape: &[usize], value: f32) -> Result<Tensor, ModelError> {
        self.tensor(vec![value; shape.iter().product()], shape)
    }

    fn param(&mut self, name: String, value: Tensor) -> Result<Var, ModelError> {
        let var = Var::from_tensor(&value)?;
        self.params.push((name, var.clone()));
        Ok(var)
    }

    fn buffer(&mut self, name: String, value: Tensor) -> Result<Var, ModelError> {
        let var = Var::from_tensor(&value)?;
        self.buffers.push((name, var.clone()));
        Ok(var)
    }
}

/// A bias-free 2-d convolution on channel-major activations `[C, N, H, W]`, whose weight
/// SDCLR's pruned branch multiplies by a 0/1 mask.
pub struct Conv2d {
    pub(crate) weight: Var,
    stride: usize,
    padding: usize,
    /// The pruned branch's 0/1 mask, same shape as the weight, all ones until the first
    /// pruning (as the reference's `Mask.reset`); `None` when the encoder has no pruned branch.
    /// A `Var` so that pruning can update it in place.
    pub(crate) prune_mask: Option<Var>,
    precision: Precision,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        registry: &mut Registry,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: ConvInit,
        prunable: bool,
    ) -> Result<Self, ModelError> {
        let shape = [out_channels, in_channels, kernel, kernel];
        let value = match init {
            ConvInit::PytorchDefault => {
                registry.uniform(&shape, 1.0 / ((in_channels * kernel * kernel) as f64).sqrt())?
            }
            ConvInit::KaimingNormalFanOut => {
                registry.normal(&shape, (2.0 / (out_channels * kernel * kernel) as f64).sqrt())?
            }
        };
        let weight = registry.param(format!("{name}.weight"), value)?;
        let prune_mask = if prunable { Some(Var::from_tensor(&registry.filled(&shape, 1.0)?)?) } else { None };
        Ok(Conv2d { weight, stride, padding, prune_mask, precision: registry.precision })
    }

    pub(crate) fn forward(&self, x: &Tensor, branch: Branch) -> Result<Tensor, ModelError> {
        let weight = match branch {
            Branch::Dense => self.weight.as_tensor().clone(),
            Branch::Pruned => {
                let mask = self.prune_mask.as_ref().ok_or(ModelError::NoPrunedBranch)?;
                self.weight.as_tensor().mul(&mask.as_tensor().detach())?
            }
        };
        Ok(device::conv2d(x, &weight, self.stride, self.padding, self.precision)?)
    }
}

/// 2-d convolution of channel-major input `[C, N, H, W]` to `[O, N, OH, OW]` on the CPU, in
/// f32: one custom op ([`Conv`]) whose forward and backward are patch matrices and `gemm`
/// products. candle's own CPU conv2d backward (a direct-loop transposed convolution) runs about
/// two orders of magnitude slower, and channel-major layout needs no transposes between layers.
pub(crate) fn conv2d_as_matmul(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (channels, batch, height, width) = x.dims4()?;
    let (out_channels, weight_channels, kernel, kernel_width) = weight.dims4()?;
    if weight_channels != channels
        || kernel != kernel_width
        || kernel == 0
        || stride == 0
        || height + 2 * padding < kernel
        || width + 2 * padding < kernel
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
    {
        return Err(candle_core::Error::Msg(format!(
            "conv with a {out_channels}x{weight_channels}x{kernel}x{kernel_width} kernel and stride {stride} cannot take channel-major {:?} input of shape {:?}",
            x.dtype(),
            x.dims()
        )));
    }
    let patches = Patches { channels, batch, height, width, kernel, stride, padding, out_channels };
    x.contiguous()?.apply_op2(&weight.contiguous()?, Conv(patches))
}

/// A fully connected layer, `y = x Wᵀ + b`, with PyTorch's default initialisation.
pub struct Linear {
    weight: Var,
    bias: Option<Var>,
    precision: Precision,
}

impl Linear {
    pub(crate) fn new(
        registry: &mut Registry,
        name: &str,
        in_features: usize,
        out_features: usize,
        with_bias: bool,
    ) -> Result<Self, ModelError> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight_value = registry.uniform(&[out_features, in_features], bound)?;
        let weight = registry.param(format!("{name}.weight"), weight_value)?;
        let bias = if with_bias {
            let bias_value = registry.uniform(&[out_features], bound)?;
            Some(registry.param(format!("{name}.bias"), bias_value)?)
        } else {
            None
        };
        Ok(Linear { weight, bias, precision: registry.precision })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let y = device::matmul_t(x, self.weight.as_tensor(), self.precision)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias.as_tensor())?,
            None => y,
        })
    }
}

/// One set of BatchNorm affine parameters and running statistics.
struct BatchNormSet {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
}

/// BatchNorm over the channel axis of channel-major input (see [`BatchNorm::forward`]), with one
/// independent set of affine parameters and running statistics per [`Branch`]: SDCLR's pruned
/// network sees different activation statistics than the dense one.
pub struct BatchNorm {
    sets: Vec<BatchNormSet>,
    channels: usize,
    sync: BatchNormSync,
}

impl BatchNorm {
    /// `branches` is 1 (dense only) or 2 (dense and pruned).
    pub(crate) fn new(
        registry: &mut Registry,
        name: &str,
        channels: usize,
        branches: usize,
    ) -> Result<Self, ModelError> {
        let mut sets = Vec::with_capacity(branches);
        for branch in &[Branch::Dense, Branch::Pruned][..branches] {
            let prefix = format!("{name}.{}", branch.name());
            let ones = registry.filled(&[channels], 1.0)?;
            let zeros = registry.filled(&[channels], 0.0)?;
            sets.push(BatchNormSet {
                weight: registry.param(format!("{prefix}.weight"), ones.clone())?,
                bias: registry.param(format!("{prefix}.bias"), zeros.clone())?,
                running_mean: registry.buffer(format!("{prefix}.running_mean"), zeros)?,
                running_var: registry.buffer(format!("{prefix}.running_var"), ones)?,
            });
        }
        Ok(BatchNorm { sets, channels, sync: registry.batch_norm_sync.clone() })
    }

    /// `relu?(BN(x) + residual?)` of channel-major `x`, `[C, ...]` (`[C, N]` or `[C, N, H, W]`):
    /// what ends every unit of the backbones. On the CPU in f32 in
    /// training mode this is one fused op ([`FusedBatchNorm`]); elsewhere (CUDA, bf16,
    /// SyncBatchNorm, evaluation) it is [`BatchNorm::composed`] then the add and the ReLU.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        branch: Branch,
        mode: Mode,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor, ModelError> {
        let set = self.sets.get(branch.index()).ok_or(ModelError::NoPrunedBranch)?;
        if x.rank() < 2 || x.dim(0)? != self.channels {
            return Err(ModelError::Shape(format!(
                "BatchNorm over {} channels got channel-major input of shape {:?}",
                self.channels,
                x.dims()
            )));
        }
        let fusable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && residual.is_none_or(|r| r.dtype() == DType::F32 && r.dims() == x.dims())
            && mode == Mode::Train
            && self.synchronised()?.is_none();
        if fusable {
            return self.fused(set, x, residual, relu);
        }
        let mut out = self.composed(set, x, mode)?;
        if let Some(residual) = residual {
            out = (out + residual)?;
        }
        Ok(if relu { out.relu()? } else { out })
    }

    /// The collective this layer's statistics are synchronised over, when there is more than one rank.
    fn synchronised(&self) -> Result<Option<Arc<dyn Collective>>, ModelError> {
        let sync = self.sync.read().map_err(|_| ModelError::Shape("BatchNorm sync lock poisoned".into()))?;
        Ok(sync.as_ref().filter(|collective| collective.world() > 1).cloned())
    }

    /// Training mode through [`FusedBatchNorm`], with the running statistics updated as
    /// [`BatchNorm::composed`] updates them.
    fn fused(
        &self,
        set: &BatchNormSet,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor, ModelError> {
        let values_per_channel = x.elem_count() / self.channels;
        check_values_per_channel(values_per_channel, x)?;
        let affine = Tensor::stack(&[set.weight.as_tensor(), set.bias.as_tensor()], 0)?;
        let op = FusedBatchNorm::new(relu, BN_EPS);
        let slot = op.stats_slot();
        let x = x.contiguous()?;
        let y = match residual {
            Some(residual) => x.apply_op3(&affine, &residual.contiguous()?, op)?,
            None => x.apply_op2(&affine, op)?,
        };
        let stats = slot.lock().map(|stats| stats.clone()).unwrap_or_default();
        let device = x.device();
        update_running(&set.running_mean, &Tensor::from_vec(stats.mean, self.channels, device)?)?;
        let var = Tensor::from_vec(stats.var, self.channels, device)?;
        update_running(&set.running_var, &(var * unbiased_factor(values_per_channel))?)?;
        Ok(y)
    }

    /// BatchNorm composed of candle ops, which run on every device. Every reduction runs over
    /// the last axis of a `[C, M]` view, candle's fast path (its reductions over other axes
    /// divide per element and run about a hundred times slower).
    fn composed(&self, set: &BatchNormSet, x: &Tensor, mode: Mode) -> Result<Tensor, ModelError> {
        // Statistics and normalisation in f32 whatever the activations' type (bf16 under
        // `--precision bf16`), the result back in that type.
        let dtype = x.dtype();
        let rows = x.contiguous()?.reshape((self.channels, ()))?.to_dtype(candle_core::DType::F32)?;
        let column = |t: &Tensor| t.reshape((self.channels, 1));
        let (centered, var) = match mode {
            Mode::Train => {
                let sync = self.synchronised()?;
                let values_per_channel = rows.dim(1)? * sync.as_ref().map_or(1, |collective| collective.world());
                check_values_per_channel(values_per_channel, x)?;
                let (mean, centered, var) = match sync {
                    None => {
                        let mean = rows.mean_keepdim(1)?;
                        let centered = rows.broadcast_sub(&mean)?;
                        let var = centered.sqr()?.mean_keepdim(1)?;
                        (mean, centered, var)
                    }
                    // SyncBatchNorm: the statistics of the global batch, from sums over the
                    // ranks that autograd differentiates (each rank's gradient then includes
                    // every rank's share of the loss through the statistics). Two passes, as
                    // above, rather than E[x²] - E[x]², which cancels badly in f32.
                    Some(collective) => {
                        let count = values_per_channel as f64;
                        let mean = (all_reduce_sum_differentiable(&collective, &rows.sum_keepdim(1)?)? / count)?;
                        let centered = rows.broadcast_sub(&mean)?;
                        let squares = centered.sqr()?.sum_keepdim(1)?;
                        let var = (all_reduce_sum_differentiable(&collective, &squares)? / count)?;
                        (mean, centered, var)
                    }
                };
                update_running(&set.running_mean, &mean.flatten_all()?)?;
                let unbiased = (var.flatten_all()? * unbiased_factor(values_per_channel))?;
                update_running(&set.running_var, &unbiased)?;
                (centered, var)
            }
            Mode::Eval => {
                (rows.broadcast_sub(&column(set.running_mean.as_tensor())?)?, column(set.running_var.as_tensor())?)
            }
        };
        let scale = column(set.weight.as_tensor())?.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let normalized = centered.broadcast_mul(&scale)?.broadcast_add(&column(set.bias.as_tensor())?)?;
        Ok(normalized.to_dtype(dtype)?.reshape(x.dims())?)
    }
}

/// Batch statistics need two values per channel at least.
fn check_values_per_channel(values_per_channel: usize, x: &Tensor) -> Result<(), ModelError> {
    if values_per_channel < 2 {
        return Err(ModelError::Shape(format!(
            "BatchNorm in training mode needs more than one value per channel, got input of shape {:?}; use a batch of at least 2",
            x.dims()
        )));
    }
    Ok(())
}

/// `n / (n - 1)`: the running variance is the unbiased estimate, as PyTorch's.
fn unbiased_factor(values_per_channel: usize) -> f64 {
    values_per_channel as f64 / (values_per_channel - 1) as f64
}

/// PyTorch's running-statistics update: `running = (1 - m) running + m batch`, outside the graph.
fn update_running(running: &Var, batch: &Tensor) -> Result<(), ModelError> {
    let updated = ((running.as_tensor().detach() * (1.0 - BN_MOMENTUM))? + (batch.detach() * BN_MOMENTUM)?)?;
    running.set(&updated)?;
    Ok(())
}

/// Asserts that two convolutions agree, values within 1e-4 and both gradients within 1e-3, for
/// every kernel, stride and padding the backbones use, odd sizes included. Each takes input
/// `[2, 3, size, size]` (NCHW), weights `[4, 3, k, k]`, stride and padding.
#[cfg(test)]
pub(crate) fn assert_convolutions_agree(
    expected: impl Fn(&Tensor, &Tensor, usize, usize) -> candle_core::Result<Tensor>,
    actual: impl Fn(&Tensor, &Tensor, usize, usize) -> candle_core::Result<Tensor>,
) {
    let device = Device::Cpu;
    let max_difference =
        |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    for (kernel, stride, padding, size) in [
        (3, 1, 1, 8),
        (3, 2, 1, 9),
        (1, 1, 0, 6),
        (1, 2, 0, 7),
        (7, 2, 3, 11),
        (5, 1, 2, 1),
        (3, 2, 1, 2),
        (3, 1, 1, 1),
        (3, 2, 2, 3),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, size, size), &device).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, kernel, kernel), &device).unwrap()).unwrap();
        let want = expected(&x, &w, stride, padding).unwrap();
        let got = actual(&x, &w, stride, padding).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(max_difference(&got, &want) < 1e-4, "kernel {kernel} stride {stride}");
        // Backward: the gradient of sum(y * r) for a fixed random r.
        let r = Tensor::randn(0f32, 1.0, want.dims(), &device).unwrap();
        let want_grads = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let got_grads = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &w] {
            let (a, e) = (got_grads.get(var).unwrap(), want_grads.get(var).unwrap());
            assert!(max_difference(a, e) < 1e-3, "kernel {kernel} stride {stride}: gradient differs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// A BatchNorm over 3 channels with random affine parameters, input `[3, 4, 5, 5]` away from
    /// zero mean and unit variance, a residual, and a fixed output gradient.
    fn batch_norm_case() -> (BatchNorm, Var, Var, Tensor) {
        let device = Device::Cpu;
        let mut registry = Registry::new(ChaCha8Rng::seed_from_u64(1), device.clone(), Precision::F32);
        let bn = BatchNorm::new(&mut registry, "bn", 3, 1).unwrap();
        bn.sets[0].weight.set(&Tensor::new(&[0.5f32, -1.5, 2.0], &device).unwrap()).unwrap();
        bn.sets[0].bias.set(&Tensor::new(&[0.1f32, 0.0, -0.3], &device).unwrap()).unwrap();
        let random = |scale: f64, shift: f64| {
            (Tensor::randn(0f32, 1.0, (3, 4, 5, 5), &device).unwrap() * scale).unwrap() + shift
        };
        let x = Var::from_tensor(&random(3.0, 1.0).unwrap()).unwrap();
        let residual = Var::from_tensor(&random(1.0, 0.0).unwrap()).unwrap();
        (bn, x, residual, random(1.0, 0.0).unwrap())
    }

    /// The running statistics, then resets them to their initial values.
    fn take_running(bn: &BatchNorm) -> (Tensor, Tensor) {
        let set = &bn.sets[0];
        let taken = (set.running_mean.as_tensor().copy().unwrap(), set.running_var.as_tensor().copy().unwrap());
        set.running_mean.set(&set.running_mean.zeros_like().unwrap()).unwrap();
        set.running_var.set(&set.running_var.ones_like().unwrap()).unwrap();
        taken
    }

    /// The fused CPU BatchNorm (+ add) (+ ReLU) agrees with the candle composition, which CUDA
    /// runs: outputs, running statistics, and the gradients of input, residual and parameters.
    #[test]
    fn fused_batch_norm_matches_the_composition() {
        for (with_residual, relu) in [(false, false), (false, true), (true, true), (true, false)] {
            let (bn, x, residual, output_grad) = batch_norm_case();
            let set = &bn.sets[0];
            let residual = with_residual.then_some(residual.as_tensor());
            let fused = bn.fused(set, &x, residual, relu).unwrap();
            let fused_running = take_running(&bn);
            let mut composed = bn.composed(set, &x, Mode::Train).unwrap();
            if let Some(r) = residual {
                composed = (composed + r).unwrap();
            }
            let composed = if relu { composed.relu().unwrap() } else { composed };
            let composed_running = take_running(&bn);
            let case = format!("residual {with_residual}, relu {relu}");
            assert!(max_difference(&fused, &composed) < 1e-5, "{case}: outputs differ");
            assert!(max_difference(&fused_running.0, &composed_running.0) < 1e-6, "{case}: running means differ");
            assert!(max_difference(&fused_running.1, &composed_running.1) < 1e-5, "{case}: running vars differ");
            let grads = |y: &Tensor| (y * &output_grad).unwrap().sum_all().unwrap().backward().unwrap();
            let (fused_grads, composed_grads) = (grads(&fused), grads(&composed));
            let mut vars = vec![x.as_tensor(), set.weight.as_tensor(), set.bias.as_tensor()];
            vars.extend(residual);
            for (index, var) in vars.into_iter().enumerate() {
                let (a, e) = (fused_grads.get(var).unwrap(), composed_grads.get(var).unwrap());
                assert!(max_difference(a, e) < 1e-4, "{case}: gradient {index} differs");
            }
        }
    }

    /// The fused BatchNorm gives the same bits on 1 and 3 threads, forward and backward.
    #[test]
    fn fused_batch_norm_is_the_same_on_any_number_of_threads() {
        let (bn, x, residual, output_grad) = batch_norm_case();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = bn.fused(&bn.sets[0], &x, Some(residual.as_tensor()), true).unwrap();
                let grads = (&y * &output_grad).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dx)
            })
        };
        assert!(run(1) == run(3), "the fused BatchNorm's results depend on the thread count");
    }

    /// The im2col form agrees with candle's direct conv2d.
    #[test]
    fn conv_as_matmul_matches_candles_conv2d() {
        assert_convolutions_agree(
            |x, w, stride, padding| x.conv2d(w, padding, stride, 1, 1),
            |x, w, stride, padding| conv2d_as_matmul(&x.transpose(0, 1)?, w, stride, padding)?.transpose(0, 1),
        );
    }
}
