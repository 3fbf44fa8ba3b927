//! Training-mode BatchNorm with what follows it in the backbones (a residual add, a ReLU) as
//! one CPU pass over memory forward and one backward, as candle custom ops. The composition of
//! candle ops it stands in for (kept for CUDA, bf16, SyncBatchNorm and evaluation, and as the
//! tests' reference) runs about a dozen single-threaded element-wise passes per layer each way,
//! each allocating an activation-sized buffer: most of a CPU step's time outside the GEMMs.
//!
//! Every channel is one task that sums its values in a fixed order, so the results are the
//! same bit for bit on any number of threads.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv_cpu::contiguous_f32;

/// Interleaved partial sums per reduction: they vectorise, and add up in a fixed order.
const LANES: usize = 16;

/// `Σ term(a[i], b[i], c[i])` (the three slices of one length) in [`LANES`] partial sums,
/// combined in a fixed order.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], term: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ac, bc, cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let tails = ac.remainder().iter().zip(bc.remainder()).zip(cc.remainder());
    for ((a, b), c) in ac.zip(bc).zip(cc) {
        for (lane, sum) in lanes.iter_mut().enumerate() {
            *sum += term(a[lane], b[lane], c[lane]);
        }
    }
    for (sum, ((a, b), c)) in lanes.iter_mut().zip(tails) {
        *sum += term(*a, *b, *c);
    }
    lanes.iter().sum()
}

/// The per-channel batch statistics of one forward pass: its backward and the running
/// statistics read them.
#[derive(Clone, Debug, Default)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased (divided by the count), as normalisation uses it.
    pub var: Vec<f32>,
}

/// `relu?(BN(x) + residual?)` of channel-major `x` viewed as `[C, M]`, with batch statistics and
/// affine parameters `[2, C]` (weights, then biases). Applied to `(x, affine)` as a
/// [`CustomOp2`], or to `(x, affine, residual)` as a [`CustomOp3`].
pub(crate) struct FusedBatchNorm {
    relu: bool,
    eps: f32,
    /// Shared with the caller, who reads the statistics once the op has run.
    stats: Arc<Mutex<BatchStats>>,
}

impl FusedBatchNorm {
    pub fn new(relu: bool, eps: f64) -> Self {
        FusedBatchNorm { relu, eps: eps as f32, stats: Arc::default() }
    }

    /// Where the forward pass leaves its statistics.
    pub fn stats_slot(&self) -> Arc<Mutex<BatchStats>> {
        self.stats.clone()
    }

    fn stats(&self) -> BatchStats {
        self.stats.lock().map(|stats| stats.clone()).unwrap_or_default()
    }

    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        affine: (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_values = contiguous_f32(x.0, x.1, "fused batch norm")?;
        let affine_values = contiguous_f32(affine.0, affine.1, "fused batch norm")?;
        let channels = affine_values.len() / 2;
        let residual = match residual {
            Some((storage, layout)) => Some(contiguous_f32(storage, layout, "fused batch norm")?),
            None => None,
        };
        if channels == 0
            || x_values.is_empty()
            || x_values.len() % channels != 0
            || residual.is_some_and(|r| r.len() != x_values.len())
        {
            return Err(candle_core::Error::Msg(format!(
                "fused batch norm: {} values do not split into {channels} channels",
                x_values.len()
            )));
        }
        let (gamma, beta) = affine_values.split_at(channels);
        let count = x_values.len() / channels;
        let mut out = vec![0f32; x_values.len()];
        let mut stats = BatchStats { mean: vec![0.0; channels], var: vec![0.0; channels] };
        out.par_chunks_mut(count).zip(stats.mean.par_iter_mut().zip(stats.var.par_iter_mut())).enumerate().for_each(
            |(channel, (y, (mean_out, var_out)))| {
                let xs = &x_values[channel * count..(channel + 1) * count];
                let mean = lane_sum(xs, xs, xs, |x, _, _| x) / count as f32;
                let var = lane_sum(xs, xs, xs, |x, _, _| (x - mean) * (x - mean)) / count as f32;
                let scale = gamma[channel] / (var + self.eps).sqrt();
                let shift = beta[channel];
                match residual {
                    Some(r) => {
                        let rs = &r[channel * count..(channel + 1) * count];
                        for ((y, &x), &r) in y.iter_mut().zip(xs).zip(rs) {
                            *y = (x - mean) * scale + shift + r;
                        }
                    }
                    None => {
                        for (y, &x) in y.iter_mut().zip(xs) {
                            *y = (x - mean) * scale + shift;
                        }
                    }
                }
                if self.relu {
                    y.iter_mut().for_each(|y| *y = y.max(0.0));
                }
                (*mean_out, *var_out) = (mean, var);
            },
        );
        if let Ok(mut saved) = self.stats.lock() {
            *saved = stats;
        }
        Ok((CpuStorage::F32(out), x.1.shape().clone()))
    }

    /// `(dx, d_affine, d_residual)` from the output gradient; `d_residual` when `with_residual`.
    fn backward(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        with_residual: bool,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let channels = affine.dim(1)?;
        let stats = self.stats();
        if stats.mean.len() != channels {
            return Err(candle_core::Error::Msg("fused batch norm: backward before forward".into()));
        }
        let op = Backward {
            relu: self.relu,
            with_residual,
            gamma: affine.get(0)?.to_vec1::<f32>()?,
            mean: stats.mean,
            inv_std: stats.var.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect(),
            d_affine: Mutex::new(Vec::new()),
        };
        let grads = grad.contiguous()?.apply_op3_no_bwd(x, y, &op)?;
        let d_affine = op.d_affine.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        let d_affine = Tensor::from_vec(d_affine, (2, channels), x.device())?;
        if with_residual {
            let grads = grads.reshape((2, x.elem_count()))?;
            let dx = grads.get(0)?.reshape(x.shape())?;
            let d_residual = grads.get(1)?.reshape(x.shape())?;
            Ok((dx, d_affine, Some(d_residual)))
        } else {
            Ok((grads.reshape(x.shape())?, d_affine, None))
        }
    }
}

impl CustomOp2 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "fused-batch-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        affine: &CpuStorage,
        affine_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, x_layout), (affine, affine_layout), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, d_affine, _) = self.backward(x, affine, y, grad, false)?;
        Ok((Some(dx), Some(d_affine)))
    }
}

impl CustomOp3 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "fused-batch-norm-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        affine: &CpuStorage,
        affine_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward((x, x_layout), (affine, affine_layout), Some((residual, residual_layout)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _residual: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, d_affine, d_residual) = self.backward(x, affine, y, grad, true)?;
        Ok((Some(dx), Some(d_affine), d_residual))
    }
}

/// The backward pass of [`FusedBatchNorm`], applied to `(grad, x, y)`: `dx` (then `d_residual`
/// when there is a residual, in one buffer); the affine parameters' gradient `[2, C]` is left
/// in `d_affine`.
struct Backward {
    relu: bool,
    with_residual: bool,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    d_affine: Mutex<Vec<f32>>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
        y: &CpuStorage,
        y_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused batch norm backward";
        let (grad, x, y) = (
            contiguous_f32(grad, grad_layout, name)?,
            contiguous_f32(x, x_layout, name)?,
            contiguous_f32(y, y_layout, name)?,
        );
        let channels = self.gamma.len();
        let count = x.len() / channels;
        let outputs = if self.with_residual { 2 } else { 1 };
        let mut out = vec![0f32; outputs * x.len()];
        let mut d_affine = vec![0f32; 2 * channels];
        let (dx, d_residual) = out.split_at_mut(x.len());
        let (d_gamma, d_beta) = d_affine.split_at_mut(channels);
        // With a ReLU, the gradient passes where the output is positive (as PyTorch's).
        let relu = self.relu;
        let gated = move |g: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { g };
        let mut d_residual_chunks: Vec<&mut [f32]> = d_residual.chunks_mut(count.max(1)).collect();
        d_residual_chunks.resize_with(channels, Default::default);
        dx.par_chunks_mut(count)
            .zip(d_residual_chunks.into_par_iter())
            .zip(d_gamma.par_iter_mut().zip(d_beta.par_iter_mut()))
            .enumerate()
            .for_each(|(channel, ((dx, d_residual), (d_gamma, d_beta)))| {
                let range = channel * count..(channel + 1) * count;
                let (gs, xs, ys) = (&grad[range.clone()], &x[range.clone()], &y[range]);
                let mean = self.mean[channel];
                let sum_g = lane_sum(gs, ys, ys, |g, y, _| gated(g, y));
                let sum_gx = lane_sum(gs, ys, xs, |g, y, x| gated(g, y) * (x - mean));
                let inv_std = self.inv_std[channel];
                (*d_gamma, *d_beta) = (sum_gx * inv_std, sum_g);
                let scale = self.gamma[channel] * inv_std;
                let mean_g = sum_g / count as f32;
                let slope = inv_std * inv_std * sum_gx / count as f32;
                for (((dx, &g), &y), &x) in dx.iter_mut().zip(gs).zip(ys).zip(xs) {
                    *dx = scale * (gated(g, y) - mean_g - (x - mean) * slope);
                }
                for ((dr, &g), &y) in d_residual.iter_mut().zip(gs).zip(ys) {
                    *dr = gated(g, y);
                }
            });
        if let Ok(mut saved) = self.d_affine.lock() {
            *saved = d_affine;
        }
        Ok((CpuStorage::F32(out), Shape::from(outputs * x.len())))
    }
}
