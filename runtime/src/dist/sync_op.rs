//! A sum over the ranks that autograd can differentiate: what synchronised BatchNorm builds its
//! global batch statistics from.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::Collective;

/// `y = Σ_ranks x` in forward; in backward, `∂L/∂x = Σ_ranks ∂L_r/∂y`. The loss being
/// minimised is the sum of every rank's local surrogate `L = Σ_r L_r`, and `y` feeds every
/// rank's `L_r`, so the gradient reaching this rank's `x` through `y` is the sum of all ranks'
/// gradients at `y`: an all-reduce of the incoming gradient. Every rank runs the same graph,
/// so the backward passes call it in the same order on every rank.
struct AllReduceSum(Arc<dyn Collective>);

impl AllReduceSum {
    fn reduce(&self, values: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut values = values.to_vec();
        self.0.all_reduce_sum(&mut values).map_err(candle_core::Error::wrap)?;
        Ok(values)
    }
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("all-reduce-sum takes contiguous input".into()))?;
        let values = &storage.as_slice::<f32>()?[start..end];
        Ok((CpuStorage::F32(self.reduce(values)?), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(Tensor::from_vec(self.reduce(&grad)?, grad_res.dims(), grad_res.device())?))
    }
}

/// The element-wise sum of `x` (f32) over the ranks, differentiable (see [`AllReduceSum`]).
/// The exchange runs on the CPU; tensors elsewhere are copied there and back, both copies on
/// the autograd graph.
pub fn all_reduce_sum_differentiable(collective: &Arc<dyn Collective>, x: &Tensor) -> candle_core::Result<Tensor> {
    if collective.world() == 1 {
        return Ok(x.clone());
    }
    let op = AllReduceSum(collective.clone());
    match x.device() {
        Device::Cpu => x.contiguous()?.apply_op1(op),
        device => x.to_device(&Device::Cpu)?.contiguous()?.apply_op1(op)?.to_device(device),
    }
}
