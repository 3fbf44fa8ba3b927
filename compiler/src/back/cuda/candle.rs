//! The objective's kernels on candle's CUDA tensors, in place: the one file where the CUDA back
//! end meets candle's device memory (built with the root crate's `cuda` feature).
//!
//! Training keeps the embeddings on the GPU. Their memory is lent to the kernels as it is
//! (borrowed from candle's storage for the launch), the kernels run on candle's own stream so
//! they are ordered after the encoder's forward pass and before its backward pass with no
//! synchronisation, and the gradients and per-sample losses are left on the device as candle
//! tensors. The only copy to the host is the loss and the metrics, gathered on the device into
//! one small buffer first. Host tensors among the bindings (state the handlers keep on the
//! host, the sample indices) are uploaded as before.

use super::driver::{DeviceBuffer, Lent, Session};
use super::plan::BufferSource;
use super::{Cuda, CudaError};
use crate::eval::Bindings;
use crate::objective::Evaluation;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};

fn candle_error(e: candle_core::Error) -> CudaError {
    CudaError::Driver(e.to_string())
}

/// candle's CUDA device of the bindings' inputs, when they are on one.
pub fn device_of(b: &Bindings) -> Option<CudaDevice> {
    b.inputs.iter().find_map(|t| match t.device() {
        Device::Cuda(d) => Some(d.clone()),
        _ => None,
    })
}

/// Values and gradients of one batch whose inputs are on `device`: see the module's comment.
pub fn evaluate(cuda: &Cuda, device: &CudaDevice, b: &Bindings) -> Result<Evaluation, CudaError> {
    let kernels = cuda.kernels_on(device.cuda_stream())?;
    let plan = &cuda.plan;
    let on_device = Device::Cuda(device.clone());
    // Every external f32 tensor already on this device, contiguous from its first element.
    let tensors = plan
        .buffers
        .iter()
        .map(|buf| {
            let t = match buf.source {
                BufferSource::Input(i) => &b.inputs[i],
                BufferSource::Const(i) => &b.consts[i],
                BufferSource::State(i) => &b.states[i],
                BufferSource::SampleIndex | BufferSource::Temp => return Ok(None),
            };
            if !t.device().same_device(&on_device) {
                return Ok(None);
            }
            let t = t.to_dtype(DType::F32).map_err(candle_error)?;
            let t = match t.is_contiguous() && t.layout().start_offset() == 0 {
                true => t,
                // A view into a larger allocation: a fresh contiguous copy, on the device.
                false => t.affine(1.0, 0.0).map_err(candle_error)?,
            };
            Ok(Some(t))
        })
        .collect::<Result<Vec<_>, CudaError>>()?;
    // The storages stay read-locked while the kernels are enqueued (candle only writes through
    // a write lock), and the stream orders every later write after the kernels.
    let guards: Vec<_> = tensors.iter().map(|t| t.as_ref().map(|t| t.storage_and_layout().0)).collect();
    let lent = guards
        .iter()
        .map(|g| match g.as_deref() {
            Some(Storage::Cuda(s)) if s.dtype() == DType::F32 => {
                s.as_cuda_slice::<f32>().map(|s| Some(Lent::Float(s))).map_err(candle_error)
            }
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let session = Session::with_lent(&cuda.executable.module, plan, &kernels, b, &lent)?;
    session.launch()?;
    let stream = session.stream().clone();
    let outputs = session.into_device_outputs()?;
    drop(guards);

    // Scalars (loss, metrics) gathered into one buffer and read back in one copy.
    let scalars: Vec<usize> = (0..outputs.len())
        .filter(|&k| outputs[k].1.is_empty() && matches!(outputs[k].0, DeviceBuffer::Float(_)))
        .collect();
    let mut gathered = stream.alloc_zeros::<f32>(scalars.len().max(1)).map_err(|e| CudaError::Driver(e.to_string()))?;
    for (slot, &k) in scalars.iter().enumerate() {
        if let DeviceBuffer::Float(s) = &outputs[k].0 {
            stream
                .memcpy_dtod(&s.slice(0..1), &mut gathered.slice_mut(slot..slot + 1))
                .map_err(|e| CudaError::Driver(format!("gathering the scalars: {e}")))?;
        }
    }
    let host = stream.clone_dtoh(&gathered).map_err(|e| CudaError::Driver(format!("reading the loss: {e}")))?;

    let wrap = |storage: CudaStorage, shape: Vec<usize>| {
        Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
    };
    let mut tensors = Vec::with_capacity(outputs.len());
    for (k, (buffer, shape)) in outputs.into_iter().enumerate() {
        if let Some(slot) = scalars.iter().position(|&s| s == k) {
            tensors.push(Tensor::new(host[slot], &Device::Cpu).map_err(candle_error)?);
            continue;
        }
        tensors.push(match buffer {
            DeviceBuffer::Float(s) => wrap(f32::wrap_cuda_slice(s, device.clone()), shape),
            DeviceBuffer::Int(s) => wrap(i64::wrap_cuda_slice(s, device.clone()), shape),
            DeviceBuffer::Bool(s) => wrap(u8::wrap_cuda_slice(s, device.clone()), shape),
            DeviceBuffer::LentFloat(_) | DeviceBuffer::LentInt(_) => {
                return Err(CudaError::Driver("an output still in lent memory".into()))
            }
        });
    }
    cuda.executable.collect(&tensors).map_err(candle_error)
}
