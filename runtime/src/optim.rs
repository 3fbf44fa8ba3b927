//! SGD with momentum and Adam, with PyTorch's update rules, so that the reference recipes'
//! hyper-parameters mean the same thing here. Their state is a list of named tensors for
//! checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;

use crate::model::contiguous_f32;

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("saved optimizer state does not fit: {0}; was the checkpoint written for another model or optimizer?")]
    StateMismatch(String),
}

/// What the training loop needs from an optimizer.
pub trait Optimizer: Send {
    /// Updates every parameter that has a gradient in `grads`; the others are left untouched
    /// and keep no state, as PyTorch skips parameters whose `.grad` is `None`.
    fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<(), OptimError>;
    /// Named state tensors (`{kind}/{parameter}`), for checkpoints.
    fn state(&self) -> Result<Vec<(String, Tensor)>, OptimError>;
    /// Restores what [`Optimizer::state`] returned.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), OptimError>;
}

/// Factors on the run's learning rate and weight decay for one parameter, as a PyTorch
/// parameter group's own `lr` and `weight_decay` (an objective's `learn t: [1] = zeros,
/// decay=0, lr_scale=0.1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamOptions {
    pub lr_scale: f64,
    pub decay: f64,
}

impl ParamOptions {
    /// The run's own learning rate and weight decay.
    pub const PLAIN: ParamOptions = ParamOptions { lr_scale: 1.0, decay: 1.0 };
}

/// `torch.optim.SGD(momentum, weight_decay)`: `d = g + wd·p; buf = m·buf + d` (the first step
/// sets `buf = d`); `p -= lr·buf`, with `lr` and `wd` scaled per parameter by its
/// [`ParamOptions`].
pub struct Sgd {
    momentum: f64,
    weight_decay: f64,
    momentum_buffers: HashMap<String, Tensor>,
    options: HashMap<String, ParamOptions>,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Sgd { momentum, weight_decay, momentum_buffers: HashMap::new(), options: HashMap::new() }
    }

    /// Parameters (by name) trained with their own factors; the others use the defaults. The
    /// options come from the objective's source, not from checkpoints.
    pub fn with_options(mut self, options: impl IntoIterator<Item = (String, ParamOptions)>) -> Self {
        self.options.extend(options);
        self
    }
}

/// `g + wd·p`: PyTorch's L2 weight decay, folded into the gradient.
fn decayed_gradient(grad: &Tensor, param: &Tensor, weight_decay: f64) -> candle_core::Result<Tensor> {
    if weight_decay == 0.0 {
        Ok(grad.clone())
    } else {
        grad + (param * weight_decay)?
    }
}

impl Sgd {
    /// One parameter's update with candle ops, on any device and dtype.
    fn step_composed(
        &mut self,
        name: &str,
        param: &Var,
        grad: &Tensor,
        lr: f64,
        decay: f64,
    ) -> candle_core::Result<()> {
        // Detached, so that buffers carry no autograd history from step to step.
        let current = param.as_tensor().detach();
        let direction = decayed_gradient(&grad.detach(), &current, decay)?;
        let direction = if self.momentum == 0.0 {
            direction
        } else {
            let buffer = match self.momentum_buffers.get(name) {
                Some(buffer) => ((on_device_of(buffer, &current)? * self.momentum)? + direction)?,
                None => direction,
            };
            self.momentum_buffers.insert(name.to_string(), buffer.clone());
            buffer
        };
        param.set(&(current - (direction * lr)?)?)
    }

    /// The same update on the CPU in f32, in place: one parallel pass over the momentum buffer
    /// and one over the parameter, where the composition makes seven single-threaded passes and
    /// six parameter-sized allocations. `None` when the tensors do not allow it (another device
    /// or dtype, a buffer restored on another device).
    fn step_in_place(
        &mut self,
        name: &str,
        param: &Var,
        grad: &Tensor,
        lr: f64,
        decay: f64,
    ) -> Option<candle_core::Result<()>> {
        let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
        let param = param.as_tensor();
        let fits = |t: &Tensor| on_cpu_f32(t) && t.shape() == param.shape();
        if !on_cpu_f32(param) || !fits(grad) || self.momentum_buffers.get(name).is_some_and(|b| !fits(b)) {
            return None;
        }
        let (momentum, lr) = (self.momentum as f32, lr as f32);
        if self.momentum == 0.0 {
            return Some(param.inplace_op2(grad, &Descend { lr, decay: decay as f32 }));
        }
        let update = match self.momentum_buffers.get(name) {
            Some(buffer) => buffer
                .inplace_op3(grad, param, &Momentum { momentum, decay: decay as f32 })
                .and_then(|()| param.inplace_op2(buffer, &Descend { lr, decay: 0.0 })),
            // The first step's buffer is the decayed gradient itself (a copy: the buffer is
            // updated in place later, the gradient store must not be).
            None => {
                decayed_gradient(&grad.detach(), &param.detach(), decay).and_then(|d| d.copy()).and_then(|buffer| {
                    param.inplace_op2(&buffer, &Descend { lr, decay: 0.0 })?;
                    self.momentum_buffers.insert(name.to_string(), buffer);
                    Ok(())
                })
            }
        };
        Some(update)
    }
}

/// `p = p - (d + p·wd)·lr`, applied to `(p; d)` in place, in the composition's order of f32
/// operations.
struct Descend {
    lr: f32,
    decay: f32,
}

/// `buffer = buffer·m + (g + p·wd)`, applied to `(buffer; g, p)` in place.
struct Momentum {
    momentum: f32,
    decay: f32,
}

fn cpu_f32_mut<'a>(
    storage: &'a mut candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("in-place SGD needs contiguous tensors".into()))?;
    match storage {
        candle_core::CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => Err(candle_core::Error::Msg("in-place SGD needs f32 tensors".into())),
    }
}

/// Elements per parallel task: large enough that a task's overhead vanishes.
const SGD_CHUNK: usize = 1 << 14;

impl candle_core::InplaceOp2 for Descend {
    fn name(&self) -> &'static str {
        "sgd-descend"
    }

    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        dst_l: &candle_core::Layout,
        src: &candle_core::CpuStorage,
        src_l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let Descend { lr, decay } = *self;
        let (p, d) = (cpu_f32_mut(dst, dst_l)?, contiguous_f32(src, src_l, "sgd")?);
        if p.len() != d.len() {
            return Err(candle_core::Error::Msg("sgd: parameter and direction differ in size".into()));
        }
        p.par_chunks_mut(SGD_CHUNK).zip(d.par_chunks(SGD_CHUNK)).for_each(|(p, d)| {
            for (p, &d) in p.iter_mut().zip(d) {
                let d = if decay == 0.0 { d } else { d + *p * decay };
                *p -= d * lr;
            }
        });
        Ok(())
    }
}

impl candle_core::InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        dst_l: &candle_core::Layout,
        g: &candle_core::CpuStorage,
        g_l: &candle_core::Layout,
        p: &candle_core::CpuStorage,
        p_l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let Momentum { momentum, decay } = *self;
        let (b, g, p) = (cpu_f32_mut(dst, dst_l)?, contiguous_f32(g, g_l, "sgd")?, contiguous_f32(p, p_l, "sgd")?);
        if b.len() != g.len() || b.len() != p.len() {
            return Err(candle_core::Error::Msg("sgd: buffer, gradient and parameter differ in size".into()));
        }
        b.par_chunks_mut(SGD_CHUNK).zip(g.par_chunks(SGD_CHUNK).zip(p.par_chunks(SGD_CHUNK))).for_each(
            |(b, (g, p))| {
                for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                    let d = if decay == 0.0 { g } else { g + p * decay };
                    *b = *b * momentum + d;
                }
            },
        );
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<(), OptimError> {
        for (name, param) in params {
            let Some(grad) = grads.get(param.as_tensor()) else { continue };
            let options = self.options.get(name).copied().unwrap_or(ParamOptions::PLAIN);
            let (lr, decay) = (lr * options.lr_scale, self.weight_decay * options.decay);
            match self.step_in_place(name, param, grad, lr, decay) {
                Some(done) => done?,
                None => self.step_composed(name, param, grad, lr, decay)?,
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>, OptimError> {
        // Copies: the buffers are updated in place, and a saved state must not change after.
        let copies =
            self.momentum_buffers.iter().map(|(name, buffer)| Ok((format!("momentum_buffer/{name}"), buffer.copy()?)));
        Ok(sorted_state(copies.collect::<candle_core::Result<Vec<_>>>()?.into_iter()))
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), OptimError> {
        let [momentum_buffers] = split_state(state, ["momentum_buffer"])?;
        self.momentum_buffers = momentum_buffers;
        Ok(())
    }
}

/// `torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8, weight_decay)`: L2 decay added to the
/// gradient (not AdamW's decoupled decay), bias-corrected moments, per-parameter step counts.
pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    first_moments: HashMap<String, Tensor>,
    second_moments: HashMap<String, Tensor>,
    steps: HashMap<String, u64>,
}

impl Adam {
    pub fn new(weight_decay: f64) -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            first_moments: HashMap::new(),
            second_moments: HashMap::new(),
            steps: HashMap::new(),
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<(), OptimError> {
        for (name, param) in params {
            let Some(grad) = grads.get(param.as_tensor()) else { continue };
            // Detached, so that the moments carry no autograd history from step to step.
            let current = param.as_tensor().detach();
            let grad = decayed_gradient(&grad.detach(), &current, self.weight_decay)?;
            let step = self.steps.get(name).copied().unwrap_or(0) + 1;
            let first = match self.first_moments.get(name) {
                Some(m) => ((on_device_of(m, &current)? * self.beta1)? + (&grad * (1.0 - self.beta1))?)?,
                None => (&grad * (1.0 - self.beta1))?,
            };
            let second = match self.second_moments.get(name) {
                Some(v) => ((on_device_of(v, &current)? * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?,
                None => (grad.sqr()? * (1.0 - self.beta2))?,
            };
            let bias_correction1 = 1.0 - self.beta1.powi(step as i32);
            let bias_correction2 = 1.0 - self.beta2.powi(step as i32);
            let denominator = ((second.sqrt()? / bias_correction2.sqrt())? + self.eps)?;
            let update = ((&first / denominator)? * (lr / bias_correction1))?;
            param.set(&(current - update)?)?;
            self.first_moments.insert(name.clone(), first);
            self.second_moments.insert(name.clone(), second);
            self.steps.insert(name.clone(), step);
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>, OptimError> {
        let mut state: Vec<(String, Tensor)> = Vec::new();
        for (name, m) in &self.first_moments {
            state.push((format!("exp_avg/{name}"), m.clone()));
        }
        for (name, v) in &self.second_moments {
            state.push((format!("exp_avg_sq/{name}"), v.clone()));
        }
        for (name, &step) in &self.steps {
            state.push((format!("step/{name}"), Tensor::new(step as f64, &Device::Cpu)?));
        }
        Ok(sorted_state(state.into_iter()))
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), OptimError> {
        let [first_moments, second_moments, step_tensors] = split_state(state, ["exp_avg", "exp_avg_sq", "step"])?;
        let mut steps = HashMap::new();
        for (name, step) in step_tensors {
            steps.insert(name, step.to_dtype(DType::F64)?.to_scalar::<f64>()? as u64);
        }
        let covered = |moments: &HashMap<String, Tensor>| {
            moments.len() == steps.len() && moments.keys().all(|name| steps.contains_key(name))
        };
        if !covered(&first_moments) || !covered(&second_moments) {
            return Err(OptimError::StateMismatch("Adam's moments and step counts cover different parameters".into()));
        }
        (self.first_moments, self.second_moments, self.steps) = (first_moments, second_moments, steps);
        Ok(())
    }
}

/// `state` on `param`'s device: state restored from a checkpoint is loaded on the host and
/// moves to the parameters' device at its first use (a no-op afterwards).
fn on_device_of(state: &Tensor, param: &Tensor) -> candle_core::Result<Tensor> {
    state.to_device(param.device())
}

fn sorted_state(entries: impl Iterator<Item = (String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut state: Vec<_> = entries.collect();
    state.sort_by(|a, b| a.0.cmp(&b.0));
    state
}

/// Splits `{kind}/{parameter}` entries by kind, keyed by parameter; any other name is an error.
fn split_state<const KINDS: usize>(
    state: &[(String, Tensor)],
    kinds: [&str; KINDS],
) -> Result<[HashMap<String, Tensor>; KINDS], OptimError> {
    let mut split: [HashMap<String, Tensor>; KINDS] = std::array::from_fn(|_| HashMap::new());
    for (name, tensor) in state {
        let (kind, param) = name.split_once('/').unwrap_or((name.as_str(), ""));
        let position = kinds
            .iter()
            .position(|known| *known == kind)
            .ok_or_else(|| OptimError::StateMismatch(format!("unexpected entry `{name}`, expected kinds {kinds:?}")))?;
        split[position].insert(param.to_string(), tensor.clone());
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place CPU update gives the composition's values, bit for bit, over three steps
    /// (the first creates the momentum buffer), with and without momentum and weight decay.
    #[test]
    fn in_place_sgd_matches_the_composition() {
        for (momentum, decay) in [(0.9, 5e-4), (0.9, 0.0), (0.0, 1e-2), (0.0, 0.0)] {
            let start = Tensor::randn(0f32, 1.0, (37, 1001), &Device::Cpu).unwrap();
            let (a, b) = (Var::from_tensor(&start).unwrap(), Var::from_tensor(&start).unwrap());
            let (mut in_place, mut composed) = (Sgd::new(momentum, decay), Sgd::new(momentum, decay));
            for _ in 0..3 {
                let grad = Tensor::randn(0f32, 1.0, (37, 1001), &Device::Cpu).unwrap();
                in_place.step_in_place("w", &a, &grad, 0.1, decay).unwrap().unwrap();
                composed.step_composed("w", &b, &grad, 0.1, decay).unwrap();
            }
            let values = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values(&a) == values(&b), "momentum {momentum}, decay {decay}: the updates differ");
        }
    }
}
