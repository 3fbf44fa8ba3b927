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
    /// Plain f32 everywhere. The CPU's only mode (`tf32` is accepted there and means f32).
    F32,
    /// f32 tensors; cuBLAS may round matmul and conv operands to TF32 on tensor cores
    /// (f32 accumulation). The default on CUDA, as PyTorch's `allow_tf32` for convolutions.
    Tf32,
    /// Convolutions and matmuls take bf16 operands (weights cast from the f32 master copy each
    /// step, f32 accumulation); BatchNorm, activations between layers and the loss stay f32.
    /// CUDA only.
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
            DeviceSpec::Cpu => match precision {
                Precision::Bf16 => Err("--precision bf16 needs --device cuda; on the CPU the backbone runs in f32".into()),
                Precision::F32 | Precision::Tf32 => Ok(Compute { device: Device::Cpu, precision }),
            },
            DeviceSpec::Cuda(ordinal) => {
                if !BUILT_WITH_CUDA {
                    return Err(format!(
                        "--device {spec}: this sslc was built without CUDA support; build it with \
                         `cargo build --release --features cuda` (docs/gpu.md)"
                    ));
                }
                let device = Device::new_cuda(ordinal)
                    .map_err(|e| format!("no CUDA device found: cannot open {spec} ({e})"))?;
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
/// `[O, N, OH, OW]`, by the best means of the input's device. On the CPU our im2col op and one
/// gemm (candle's CPU conv backward is about a hundred times slower). Elsewhere candle's own
/// conv2d, which has CUDA kernels (im2col + cuBLAS forward, its own backward kernels); it takes
/// batch-major input, hence the two transposes. In bf16 the operands are cast to bf16 and the
/// result back to f32, so BatchNorm sees f32.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        return conv2d_as_matmul(x, weight, stride, padding);
    }
    let (x, weight) = match precision {
        Precision::Bf16 => (x.to_dtype(DType::BF16)?, weight.to_dtype(DType::BF16)?),
        Precision::F32 | Precision::Tf32 => (x.clone(), weight.clone()),
    };
    let y = x.transpose(0, 1)?.contiguous()?.conv2d(&weight, padding, stride, 1, 1)?.transpose(0, 1)?.contiguous()?;
    y.to_dtype(DType::F32)
}

/// `x · wᵀ` in the given precision (bf16 operands on a GPU when asked, f32 result).
pub fn matmul_t(x: &Tensor, weight: &Tensor, precision: Precision) -> candle_core::Result<Tensor> {
    if precision == Precision::Bf16 && !x.device().is_cpu() {
        return x.to_dtype(DType::BF16)?.matmul(&weight.to_dtype(DType::BF16)?.t()?)?.to_dtype(DType::F32);
    }
    x.matmul(&weight.t()?)
}

/// Host copies of named tensors: checkpoints and exports are device-independent.
pub fn to_host(tensors: Vec<(String, Tensor)>) -> candle_core::Result<Vec<(String, Tensor)>> {
    tensors.into_iter().map(|(name, tensor)| Ok((name, tensor.to_device(&Device::Cpu)?))).collect()
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

    #[test]
    fn the_cpu_refuses_bf16_and_cuda_fails_cleanly_without_a_gpu() {
        assert_eq!(Compute::open(DeviceSpec::Cpu, None).unwrap().precision, Precision::F32);
        assert!(Compute::open(DeviceSpec::Cpu, Some(Precision::Bf16)).unwrap_err().contains("--device cuda"));
        // CI has no GPU: either the build lacks CUDA or the driver finds no device.
        if let Err(error) = Compute::open(DeviceSpec::Cuda(0), None) {
            assert!(error.contains("built without CUDA") || error.contains("no CUDA device found"), "{error}");
        }
    }
}
