//! Back ends: the ways to run an objective's gradient program. Each is a folder here (`clif`:
//! Cranelift JIT on the CPU; `cuda`: NVRTC kernels), and the reference evaluator is one too, so
//! the command line, the tests and the training loop treat them alike through [`Backend`].

pub mod clif;
pub mod cuda;

use crate::eval::{Bindings, EvalError};
use crate::objective::{Evaluation, Executable};
use std::sync::Arc;

/// An objective prepared for one back end: compiled once, evaluated on many batches.
pub trait Backend: Send {
    /// The back end's name as `--backend` spells it.
    fn name(&self) -> &'static str;
    /// Loss, per-sample losses, metrics and the gradient of every input, for `bindings`
    /// (bound against the same module the back end was built from).
    fn evaluate(&self, bindings: &Bindings) -> Result<Evaluation, BackendError>;
    /// Whether `evaluate` takes inputs on a GPU as they are (and leaves the gradients there);
    /// the others are handed host copies.
    fn reads_device_memory(&self) -> bool {
        false
    }
    /// Milliseconds of each of `repeats` evaluations as the device's own events measure them
    /// (around the kernels only, inputs already on the device), after a warm-up: how `sslc
    /// bench` times a GPU back end, the way PyTorch is timed next to it. `None` for back ends
    /// on the host, which `sslc bench` times by the wall clock.
    fn device_times(&self, bindings: &Bindings, repeats: usize) -> Option<Result<Vec<f64>, BackendError>> {
        let _ = (bindings, repeats);
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Boxed: evaluation errors are large, and every back-end call returns this type.
    #[error("{0}")]
    Eval(Box<EvalError>),
    /// The objective uses something this back end does not implement.
    #[error("the {backend} back end cannot run this objective: {why}")]
    Unsupported { backend: &'static str, why: String },
    /// A failure while running compiled code on valid bindings (bad indices, memory).
    #[error("the {backend} back end failed: {why}")]
    Run { backend: &'static str, why: String },
}

impl From<EvalError> for BackendError {
    fn from(e: EvalError) -> Self {
        BackendError::Eval(Box::new(e))
    }
}

impl From<cuda::CudaError> for BackendError {
    fn from(e: cuda::CudaError) -> Self {
        BackendError::Run { backend: BackendKind::Cuda.name(), why: e.to_string() }
    }
}

/// Which back end to build, as `--backend` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Reference,
    Cpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Reference => "reference",
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// The reference evaluator as a back end: runs the unoptimised gradient program node by node.
pub struct Reference {
    pub executable: Arc<Executable>,
}

impl Backend for Reference {
    fn name(&self) -> &'static str {
        BackendKind::Reference.name()
    }
    fn evaluate(&self, bindings: &Bindings) -> Result<Evaluation, BackendError> {
        Ok(self.executable.evaluate(bindings)?)
    }
}

/// Builds (compiles) `executable` for the back end `kind`.
pub fn build(kind: BackendKind, executable: Arc<Executable>) -> Result<Box<dyn Backend>, BackendError> {
    build_with(kind, executable, cuda::Precision::default())
}

/// [`build`], with the CUDA back end's similarity tiles at `precision` (training passes the
/// run's `--precision`, so f32 means f32 for the objective too).
pub fn build_with(
    kind: BackendKind,
    executable: Arc<Executable>,
    precision: cuda::Precision,
) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Reference => Ok(Box::new(Reference { executable })),
        BackendKind::Cpu => Ok(Box::new(clif::Cpu::new(executable)?)),
        BackendKind::Cuda => Ok(Box::new(cuda::Cuda::new(executable, precision)?)),
    }
}
