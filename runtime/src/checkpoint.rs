//! Training checkpoints: one safetensors file with the model's parameters and BatchNorm
//! statistics, the optimizer's buffers and the objective's state tensors; the epoch, the seed
//! and the run's configuration go in the header's metadata.
//!
//! Files are written atomically (a temporary file in the same directory, fsync, rename), so a
//! crash leaves either the previous checkpoint or the new one. A SHA-256 of every tensor's name,
//! dtype, shape and bytes, kept in the metadata, turns silent corruption into a clear error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use crate::files::write_atomically;

/// Marks the file as ours; a safetensors file without it is someone else's.
const FORMAT: &str = "sslc-checkpoint";
const VERSION: &str = "1";

const MODEL: &str = "model";
const OPTIMIZER: &str = "optimizer";
const OBJECTIVE: &str = "objective";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoint {path}: {source}; check that the run directory exists and the disk has space")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read checkpoint {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is damaged ({reason}); resume from an earlier checkpoint or start the run afresh")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is not an sslc checkpoint ({reason}); point --resume at a run directory written by `sslc run`")]
    Foreign { path: PathBuf, reason: String },
    #[error("cannot serialise the checkpoint for {path}: {reason}")]
    Serialize { path: PathBuf, reason: String },
}

/// Everything a run needs to continue exactly where it stopped.
#[derive(Debug)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// The run's seed. Every random stream of a run (weight init, shuffling, augmentation) is
    /// derived from `(seed, epoch)`, so together with `epoch` this is the whole RNG state.
    pub seed: u64,
    /// The run's configuration, kept to check that a resume uses the same one.
    pub config: serde_json::Value,
    /// Model parameters and BatchNorm running statistics of both branches.
    pub model: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub objective: Vec<(String, Tensor)>,
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let serialize_error = |reason: String| CheckpointError::Serialize { path: path.to_path_buf(), reason };
        let mut tensors: Vec<(String, RawTensor)> = Vec::new();
        for (section, entries) in [(MODEL, &self.model), (OPTIMIZER, &self.optimizer), (OBJECTIVE, &self.objective)] {
            for (name, tensor) in entries {
                let raw = RawTensor::new(tensor).map_err(|e| serialize_error(format!("tensor `{name}`: {e}")))?;
                tensors.push((format!("{section}/{name}"), raw));
            }
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut digest = digest_metadata(self.epoch, self.seed, &self.config);
        for (name, raw) in &tensors {
            digest_tensor(&mut digest, name, raw);
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            ("epoch".to_string(), self.epoch.to_string()),
            ("seed".to_string(), self.seed.to_string()),
            ("config".to_string(), self.config.to_string()),
            ("sha256".to_string(), hex(&digest.finalize())),
        ]);
        let bytes = safetensors::serialize(tensors.iter().map(|(name, raw)| (name.as_str(), raw)), Some(metadata))
            .map_err(|e| serialize_error(e.to_string()))?;
        write_atomically(path, &bytes).map_err(|source| CheckpointError::Write { path: path.to_path_buf(), source })
    }

    /// Reads and verifies a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = crate::files::read_regular(path)
            .map_err(|source| CheckpointError::Read { path: path.to_path_buf(), source })?;
        let corrupt = |reason: String| CheckpointError::Corrupt { path: path.to_path_buf(), reason };
        let foreign = |reason: String| CheckpointError::Foreign { path: path.to_path_buf(), reason };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| match damage_of_our_file(&bytes) {
            Some(damage) => corrupt(damage),
            None => foreign(format!("not a readable safetensors file: {e}")),
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(foreign("its header lacks the sslc-checkpoint marker".into()));
        }
        if metadata.get("version").map(String::as_str) != Some(VERSION) {
            return Err(foreign(format!("format version {:?}, this build reads {VERSION}", metadata.get("version"))));
        }
        let field = |key: &str| metadata.get(key).ok_or_else(|| corrupt(format!("metadata field `{key}` is missing")));
        let epoch = field("epoch")?.parse().map_err(|_| corrupt("epoch is not a number".into()))?;
        let seed = field("seed")?.parse().map_err(|_| corrupt("seed is not a number".into()))?;
        let config = serde_json::from_str(field("config")?).map_err(|e| corrupt(format!("config is not JSON: {e}")))?;
        let expected_digest = field("sha256")?.clone();

        let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut digest = digest_metadata(epoch, seed, &config);
        let mut checkpoint =
            Checkpoint { epoch, seed, config, model: Vec::new(), optimizer: Vec::new(), objective: Vec::new() };
        for name in names {
            let view = file.tensor(&name).map_err(|e| corrupt(e.to_string()))?;
            let tensor = view.load(&Device::Cpu).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
            let raw = RawTensor::new(&tensor).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
            digest_tensor(&mut digest, &name, &raw);
            let (section, entry) = name.split_once('/').unwrap_or(("", &name));
            let entries = match section {
                MODEL => &mut checkpoint.model,
                OPTIMIZER => &mut checkpoint.optimizer,
                OBJECTIVE => &mut checkpoint.objective,
                _ => return Err(corrupt(format!("tensor `{name}` belongs to no section"))),
            };
            entries.push((entry.to_string(), tensor));
        }
        if hex(&digest.finalize()) != expected_digest {
            return Err(corrupt("its contents do not match the checksum written with it".into()));
        }
        // A run never saves a non-finite value (a NaN loss stops it first), so one here was
        // planted or forged: training from it would spread NaN into every weight.
        for (section, entries) in
            [(MODEL, &checkpoint.model), (OPTIMIZER, &checkpoint.optimizer), (OBJECTIVE, &checkpoint.objective)]
        {
            for (name, tensor) in entries {
                let bad = non_finite(tensor).map_err(|e| corrupt(format!("tensor `{section}/{name}`: {e}")))?;
                if bad > 0 {
                    return Err(corrupt(format!(
                        "tensor `{section}/{name}` holds {bad} NaN or infinite values, which no healthy run saves; \
                         resume from an earlier copy of the run or start it again"
                    )));
                }
            }
        }
        Ok(checkpoint)
    }
}

/// Writes `tensors` as a plain safetensors file (no sslc sections or checksum) with `metadata`,
/// atomically: what `sslc export` hands to other tools.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let serialize_error = |reason: String| CheckpointError::Serialize { path: path.to_path_buf(), reason };
    let raw = tensors
        .iter()
        .map(|(name, tensor)| {
            RawTensor::new(tensor)
                .map(|raw| (name.as_str(), raw))
                .map_err(|e| serialize_error(format!("`{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(raw.iter().map(|(name, raw)| (*name, raw)), Some(metadata))
        .map_err(|e| serialize_error(e.to_string()))?;
    write_atomically(path, &bytes).map_err(|source| CheckpointError::Write { path: path.to_path_buf(), source })
}

/// How many entries of a float tensor are NaN or infinite (0 for integer tensors).
fn non_finite(t: &Tensor) -> candle_core::Result<usize> {
    if !t.dtype().is_float() {
        return Ok(0);
    }
    let values = t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    Ok(values.iter().filter(|v| !v.is_finite()).count())
}

/// Why an unreadable file that is ours (cut short, or carrying our format marker) is damaged;
/// `None` when nothing says it was ever an sslc checkpoint.
fn damage_of_our_file(bytes: &[u8]) -> Option<String> {
    let Some(length_bytes) = bytes.get(..8) else {
        return Some(format!("{} bytes, truncated", bytes.len()));
    };
    let header_length = u64::from_le_bytes(length_bytes.try_into().ok()?) as usize;
    let header = &bytes[8..bytes.len().min(8usize.saturating_add(header_length))];
    let marked = header.windows(FORMAT.len()).any(|window| window == FORMAT.as_bytes());
    match (marked, bytes.len() < 8usize.saturating_add(header_length)) {
        (true, true) => Some(format!("{} bytes, truncated inside its header", bytes.len())),
        (true, false) => Some("its header or tensor table is unreadable or truncated".into()),
        (false, _) => None,
    }
}

/// A tensor's little-endian bytes, computed once for both the checksum and the file (candle's
/// own `View` impl converts on every call and unwraps errors).
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawTensor {
    fn new(tensor: &Tensor) -> candle_core::Result<Self> {
        let flat = tensor.flatten_all()?;
        let (dtype, bytes) = match tensor.dtype() {
            DType::F32 => (Dtype::F32, flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::F64 => (Dtype::F64, flat.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::U32 => (Dtype::U32, flat.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::I64 => (Dtype::I64, flat.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::U8 => (Dtype::U8, flat.to_vec1::<u8>()?),
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "dtype {other:?} is not checkpointed; use f32, f64, u32, i64 or u8"
                )))
            }
        };
        Ok(RawTensor { dtype, shape: tensor.dims().to_vec(), bytes })
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Starts the checksum with the metadata fields, so that damage there is caught too.
fn digest_metadata(epoch: usize, seed: u64, config: &serde_json::Value) -> Sha256 {
    let mut digest = Sha256::new();
    digest.update(format!("{epoch}\n{seed}\n{config}\n").as_bytes());
    digest
}

/// Feeds a tensor's identity and bytes to the checksum.
fn digest_tensor(digest: &mut Sha256, name: &str, raw: &RawTensor) {
    digest.update(name.as_bytes());
    digest.update(format!("{:?}{:?}", raw.dtype, raw.shape).as_bytes());
    digest.update(&raw.bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
