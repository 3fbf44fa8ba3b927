//! Everything that depends on where training runs, in one place (listed in docs/gpu.md): the
//! `--device` and `--precision` settings, opening the device, and the convolution each device
//! does best. The rest of the runtime is written against candle's `Device` and runs the same
//! code on the CPU and on CUDA, so CI, which has no GPU, exercises the training loop a GPU runs.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::model::conv2d_as_matmul;

/// Where training runs: `cpu`, `cuda` (device 0) or `cuda:I`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|ordinal| ordinal.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("`{text}` is not a device; give cpu, cuda or cuda:I (I = 0, 1, ...)")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The backbone's arithmetic (the objective's CUDA kernels have their own `--precision` in
/// `sslc eval/bench`). Parameters, optimizer state, BatchNorm statistics and the loss are f32
/// in every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// Plain f32 everywhere. The CPU's default (`tf32` is accepted there and means f32).
    F32,
    /// f32 tensors; cuBLAS may round matmul and conv operands to TF32 on tensor cores
    /// (f32 accumulation). The default on CUDA, as PyTorch's `allow_tf32` for convolutions.
    Tf32,
    /// Convolutions and matmuls take bf16 operands (weights cast from the f32 master copy each
    /// step, f32 accumulation) and the backbone's activations between layers are bf16;
    /// BatchNorm's statistics, the pooled features, the projector's output and the loss are f32.
    /// Meant for CUDA; on the CPU it works (the device path's convolution, so CI tests it) but
    /// is slower than f32.
    Bf16,
}

impl Precision {
    /// The default where none is given: TF32 on CUDA (what PyTorch uses for convolutions),
    /// f32 on the CPU, which has no faster mode.
    pub fn default_for(spec: DeviceSpec) -> Precision {
        match spec {
            DeviceSpec::Cpu => Precision::F32,
            DeviceSpec::Cuda(_) => Precision::Tf32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether this binary was built with `--features cuda` (candle's CUDA back end).
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// A device opened for training, with the backbone's precision on it.
#[derive(Clone, Debug)]
pub struct Compute {
    pub device: Device,
    pub precision: Precision,
}

impl Compute {
    pub fn cpu() -> Compute {
        Compute { device: Device::Cpu, precision: Precision::F32 }
    }

    /// Opens `spec`; `precision` defaults per device ([`Precision::default_for`]). Fails with a
    /// message a user can act on, never a panic: a binary without CUDA says how to build one,
    /// and a machine without a GPU says "no CUDA device found".
    pub fn open(spec: DeviceSpec, precision: Option<Precision>) -> Result<Compute, String> {
        let precision = precision.unwrap_or(Precision::default_for(spec));
        match spec {
            DeviceSpec::Cpu => Ok(Compute { device: Device::Cpu, precision }),
            DeviceSpec::Cuda(ordinal) => {
                if !BUILT_WITH_CUDA {
                    return Err(format!(
                        "--device {spec}: this sslc was built without CUDA support; build it with \
                         `cargo build --release --features cuda` (docs/gpu.md)"
                    ));
                }
                // candle appends a backtrace to driver errors; the first line says what failed.
                let device = Device::new_cuda(ordinal).map_err(|e| {
                    let text = e.to_string();
                    format!("no CUDA device found: cannot open {spec} ({})", text.lines().next().unwrap_or_default())
                })?;
                #[cfg(feature = "cuda")]
                if let Device::Cuda(cuda) = &device {
                    cuda_glue::retain_freed_memory(cuda)
                        .map_err(|e| format!("{spec}: cannot configure its memory pool ({e})"))?;
                }
                // A process-wide cuBLAS setting, so it is set on every open: the last device
                // opened decides, and a process trains on one.
                candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
                Ok(Compute { device, precision })
            }
        }
    }

    /// A short description for logs: `cuda:0 (tf32)`.
    pub fn describe(&self) -> String {
        let place = match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cpu".to_string(),
        };
        format!("{place} ({})", self.precision.name())
    }
}

/// 2-d convolution of channel-major input `[C, N, H, W]` with weight `[O, C, K, K]`, to
/// `[O, N, OH, OW]`: the patch matrix `[C·K·K, N·OH·OW]`, then one matmul, so the backward pass
/// is two matmuls and the patch matrix's adjoint. On the CPU this is one op of ours that runs
/// the products through `gemm` over patch matrices of a few images at a time (candle's own CPU
/// conv backward is about a hundred times slower; the op is f32 only, so CPU bf16 takes the
/// other path). Elsewhere the patch matrix is
/// built from candle's indexing ops ([`patches_by_indexing`]), each of which has CUDA kernels
/// and a backward: the products go to cuBLAS, where candle's CUDA conv2d would run its backward
/// as a direct `conv_transpose2d` and a conv with an image-sized kernel. In bf16 the operands
/// are cast to bf16 (the weight from its f32 master copy) and the result stays bf16: the
/// activations between layers are bf16, as under PyTorch's autocast, and BatchNorm computes its
/// statistics in f32 ([`crate::model`]).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && precision != Precision::Bf16 {
        return conv2d_as_matmul(x, weight, stride, padding);
    }
    let (x, weight) = match precision {
        Precision::Bf16 => (x.to_dtype(DType::BF16)?, weight.to_dtype(DType::BF16)?),
        Precision::F32 | Precision::Tf32 => (x.clone(), weight.clone()),
    };
    conv2d_by_indexing(&x, &weight, stride, padding)
}

/// [`conv2d`]'s device path, on any device (the CPU tests it against the CPU op).
pub fn conv2d_by_indexing(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (_, batch, _, _) = x.dims4()?;
    let (out_channels, channels, kernel, _) = weight.dims4()?;
    let (patches, out_height, out_width) = patches_by_indexing(x, kernel, stride, padding)?;
    let weight = weight.reshape((out_channels, channels * kernel * kernel))?;
    weight.matmul(&patches)?.reshape((out_channels, batch, out_height, out_width))
}

/// The patch matrix `[C·K·K, N·OH·OW]` of channel-major `x` (rows in the weight's `[C, K, K]`
/// order, zero where a patch overhangs) and `(OH, OW)`, from padding, one strided slice per
/// kernel offset (`narrow` at stride 1, `index_select` otherwise) and a stack.
pub fn patches_by_indexing(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<(Tensor, usize, usize)> {
    let (channels, batch, height, width) = x.dims4()?;
    if kernel == 0 || stride == 0 || height + 2 * padding < kernel || width + 2 * padding < kernel {
        return Err(candle_core::Error::Msg(format!(
            "a {kernel}x{kernel} kernel with stride {stride} and padding {padding} cannot take input of shape {:?}",
            x.dims()
        )));
    }
    let out_height = (height + 2 * padding - kernel) / stride + 1;
    let out_width = (width + 2 * padding - kernel) / stride + 1;
    let padded = x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?;
    // Every `stride`-th position from `start`, `count` of them, along `dim`.
    let strided = |t: &Tensor, dim: usize, start: usize, count: usize| -> candle_core::Result<Tensor> {
        if stride == 1 {
            return t.narrow(dim, start, count);
        }
        let positions: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
        // index_select wants a contiguous source: a strided view (unpadded input) is copied.
        t.contiguous()?.index_select(&Tensor::from_vec(positions, count, t.device())?, dim)
    };
    let mut taps = Vec::with_capacity(kernel * kernel);
    for ky in 0..kernel {
        let rows = strided(&padded, 2, ky, out_height)?;
        for kx in 0..kernel {
            taps.push(strided(&rows, 3, kx, out_width)?);
        }
    }
    let patches = Tensor::stack(&taps, 1)?.reshape((channels * kernel * kernel, batch * out_height * out_width))?;
    Ok((patches, out_height, out_width))
}

/// `x · wᵀ` in the given precision (bf16 operands when asked, f32 result).
pub fn matmul_t(x: &Tensor, weight: &Tensor, precision: Precision) -> candle_core::Result<Tensor> {
    if precision == Precision::Bf16 {
        return x.to_dtype(DType::BF16)?.matmul(&weight.to_dtype(DType::BF16)?.t()?)?.to_dtype(DType::F32);
    }
    x.matmul(&weight.t()?)
}

/// Host copies of named tensors: checkpoints and exports are device-independent.
pub fn to_host(tensors: Vec<(String, Tensor)>) -> candle_core::Result<Vec<(String, Tensor)>> {
    tensors.into_iter().map(|(name, tensor)| Ok((name, tensor.to_device(&Device::Cpu)?))).collect()
}

/// Images assembled on the host, `shape`d, on `device` when this returns. The data loader's
/// producer thread calls it: candle computes on per-thread CUDA streams, so this copy runs on
/// the producer's stream while the training thread computes on its own, and the next batch's
/// copy overlaps this step. On CUDA the data goes through a page-locked staging buffer, which
/// the copy engine reads directly (a pageable buffer is first copied again by the driver), and
/// the copy is waited for here, so the training thread reads the memory without synchronising.
pub fn upload(data: Vec<f32>, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda_glue::upload(&data, shape, cuda);
    }
    Tensor::from_vec(data, shape, device)
}

/// The CUDA-only glue of the runtime (built with `--features cuda`): the device's memory pool
/// and the loader's pinned uploads.
#[cfg(feature = "cuda")]
mod cuda_glue {
    use candle_core::cuda_backend::{CudaDType, CudaDevice};
    use candle_core::op::BackpropOp;
    use candle_core::{Storage, Tensor};
    use cudarc::driver::{result, sys, PinnedHostSlice};
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Keeps memory that candle frees in the device's default pool for the next allocation.
    /// cudarc allocates with `cuMemAllocAsync` from that pool, whose release threshold is 0 by
    /// default: every synchronise (the loader's producer thread makes at least two a step)
    /// would hand the freed memory back to the driver, and the next step map it again.
    pub fn retain_freed_memory(device: &CudaDevice) -> candle_core::Result<()> {
        let context = device.cuda_stream().context().clone();
        if !context.has_async_alloc() {
            return Ok(()); // no memory pools on this device: cudarc uses plain cuMemAlloc
        }
        let w = candle_core::Error::wrap;
        // SAFETY: `cu_device` is the device of a live context (candle's, just opened).
        let pool = unsafe { result::device::get_default_mem_pool(context.cu_device()) }.map_err(w)?;
        let mut threshold = u64::MAX;
        // SAFETY: `pool` is the device's default pool, valid while the device is; the release
        // threshold is a `cuuint64_t`, and `threshold` is one, alive for the call.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        }
        .map_err(w)
    }

    thread_local! {
        /// This thread's staging buffers, by length (a batch's global views and small crops
        /// differ): allocated once per producer thread, page-locking being slow.
        static STAGING: RefCell<HashMap<usize, PinnedHostSlice<f32>>> = RefCell::new(HashMap::new());
    }

    /// The invariant that makes this sound is the `synchronize` below, and nothing else.
    /// candle computes on per-thread default streams, which cudarc does not count as several
    /// streams, so its event tracking is off: the staging buffer's event is never recorded
    /// (`as_mut_slice` waits for nothing) and the device memory carries no events. Without the
    /// synchronise, the next call would overwrite the staging buffer while the copy may still
    /// read it, and the training thread, whose own stream does not wait for this one, could
    /// read the memory before the copy lands. Whoever removes it to overlap more must record
    /// an event on this stream after the copy, make the next write of the buffer wait for it,
    /// and make the training thread's stream wait for it before the first read.
    pub fn upload(data: &[f32], shape: &[usize], device: &CudaDevice) -> candle_core::Result<Tensor> {
        let stream = device.cuda_stream();
        let w = candle_core::Error::wrap;
        let memory = STAGING.with(|staging| -> candle_core::Result<_> {
            let mut staging = staging.borrow_mut();
            let buffer = match staging.entry(data.len()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                // SAFETY: the buffer's contents are uninitialised; they are written below before
                // the copy reads them.
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(unsafe { stream.context().alloc_pinned::<f32>(data.len()) }.map_err(w)?)
                }
            };
            // Safe to overwrite: the previous call's copy from this buffer was synchronised.
            buffer.as_mut_slice().map_err(w)?.copy_from_slice(data);
            // SAFETY: every element is written by the copy below before any kernel reads it
            // (the copy is complete when this function returns).
            let mut memory = unsafe { stream.alloc::<f32>(data.len()) }.map_err(w)?;
            stream.memcpy_htod(buffer, &mut memory).map_err(w)?;
            // The one guard of the staging buffer and of `memory` (see the function's comment).
            stream.synchronize().map_err(w)?;
            Ok(memory)
        })?;
        let storage = Storage::Cuda(f32::wrap_cuda_slice(memory, device.clone()));
        Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print_back() {
        for (text, spec) in [("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0)), ("cuda:3", DeviceSpec::Cuda(3))] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let error = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(error.contains("cpu, cuda or cuda:I"), "{error}");
        }
    }

    /// The device path's convolution agrees with the CPU's op, both on channel-major
    /// input `[C, N, H, W]` (here a transposed, non-contiguous view).
    #[test]
    fn conv_by_indexing_matches_the_cpu_op() {
        let device = Device::Cpu;
        let channel_major = |conv: fn(&Tensor, &Tensor, usize, usize) -> candle_core::Result<Tensor>| {
            move |x: &Tensor, w: &Tensor, stride, padding| conv(&x.transpose(0, 1)?, w, stride, padding)
        };
        crate::model::assert_convolutions_agree(channel_major(conv2d_as_matmul), channel_major(conv2d_by_indexing));
        assert!(patches_by_indexing(&Tensor::zeros((1, 1, 2, 2), DType::F32, &device).unwrap(), 5, 1, 0).is_err());
    }

    #[test]
    fn precision_defaults_per_device_and_cuda_fails_cleanly_without_a_gpu() {
        assert_eq!(Compute::open(DeviceSpec::Cpu, None).unwrap().precision, Precision::F32);
        assert_eq!(Precision::default_for(DeviceSpec::Cuda(1)), Precision::Tf32);
        // CI has no GPU: either the build lacks CUDA or the driver finds no device.
        if let Err(error) = Compute::open(DeviceSpec::Cuda(0), None) {
            assert!(error.contains("built without CUDA") || error.contains("no CUDA device found"), "{error}");
        }
    }
}
