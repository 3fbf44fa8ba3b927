//! Data-parallel training: the one interface ([`Collective`]) through which W processes
//! ("ranks") exchange tensors, its single-process and MPI implementations, and the pieces of
//! the training step built on it (sharding a global batch, gathering embeddings, reducing
//! gradients, synchronised BatchNorm statistics).
//!
//! The training loop knows only [`Collective`]; a W-rank run is defined to equal the
//! single-process run with the same global batch (docs/distributed.md).

pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod simulated;
mod sync_op;

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

#[cfg(feature = "mpi")]
pub use self::mpi::MpiCollective;
#[cfg(feature = "nccl")]
pub use self::nccl::{NcclCollective, ID_BYTES};
pub use simulated::Simulated;
pub use sync_op::all_reduce_sum_differentiable;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: rank {rank} gave {got} values, rank 0 gave {expected}; every rank must run the same program with the same settings")]
    Mismatch { what: &'static str, rank: usize, got: usize, expected: usize },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Collective operations over the ranks of one run. Every rank must call the same operations
/// in the same order with buffers of the same length (MPI's rule); the training loop does,
/// because every rank runs the same step on data of the same shape.
///
/// Buffers are plain `f32` slices: every tensor the step exchanges (embeddings, gradients,
/// BatchNorm sums) is f32, and flat slices let one call carry many tensors.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Every rank's `local` (all of one length), concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, DistError>;
    /// Replaces `values` by their element-wise sum over the ranks. The result is bitwise the
    /// same on every rank, so parameters updated from it never drift apart.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError>;
    /// Replaces `values` on every rank by rank `root`'s.
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        Ok(local.to_vec())
    }
    fn all_reduce_sum(&self, _values: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast(&self, _values: &mut [f32], _root: usize) -> Result<(), DistError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}

/// Environment variables through which launchers tell a process the job's size: OpenMPI's
/// `mpirun`, MPICH/Hydra and Slurm's PMI-2, and Slurm's `srun --mpi=pmix` (with `PMIX_RANK`).
const LAUNCHER_SIZE_VARIABLES: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// The number of ranks a launcher started this process as one of, if any.
pub fn launched_world_size() -> Option<usize> {
    let read = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok());
    LAUNCHER_SIZE_VARIABLES
        .iter()
        .find_map(|name| read(name))
        .or_else(|| std::env::var_os("PMIX_RANK").and(read("SLURM_STEP_NUM_TASKS").or_else(|| read("SLURM_NTASKS"))))
}

/// The collective this process takes part in: MPI when a launcher started it as one of
/// several ranks, otherwise a single process. A binary built without the `mpi` feature that
/// finds itself one of several ranks refuses to run, since each rank would otherwise train
/// the whole run alone and all of them would write the same directory.
pub fn from_environment() -> Result<Arc<dyn Collective>, DistError> {
    match launched_world_size() {
        Some(world) if world > 1 => connect(world),
        _ => Ok(Arc::new(SingleProcess)),
    }
}

#[cfg(feature = "mpi")]
fn connect(world: usize) -> Result<Arc<dyn Collective>, DistError> {
    let collective = MpiCollective::initialize()?;
    if collective.world() != world {
        return Err(DistError::Setup(format!(
            "the launcher announced {world} ranks, MPI reports {}; launch with one MPI (mpirun/srun) only",
            collective.world()
        )));
    }
    Ok(Arc::new(collective))
}

#[cfg(not(feature = "mpi"))]
fn connect(world: usize) -> Result<Arc<dyn Collective>, DistError> {
    Err(without_mpi(world))
}

/// Why a binary built without MPI support refuses to be one of `world` ranks.
pub fn without_mpi(world: usize) -> DistError {
    DistError::Setup(format!(
        "this sslc was launched as one of {world} ranks (by mpirun or srun), but it was built without MPI support, so \
         every rank would train the whole run alone; rebuild it with `cargo build --release --features mpi`, or run \
         it without the launcher"
    ))
}

/// Whether this binary was built with `--features nccl`.
pub const BUILT_WITH_NCCL: bool = cfg!(feature = "nccl");

/// Why a binary built without NCCL cannot do what `wanted` asks.
pub fn without_nccl(wanted: &str) -> DistError {
    DistError::Setup(format!(
        "{wanted} needs NCCL, but this sslc was built without it; build it with `cargo build --release --features \
         nccl` (which implies cuda; docs/distributed.md)"
    ))
}

/// The collective a run on `device` uses, from the one the process was started with
/// (`launched`: MPI or a single process) and, for a rank started by `sslc run --gpus`, what its
/// parent told it. GPU ranks exchange through NCCL when the binary has it: a `--gpus` rank with
/// its parent's id, MPI ranks with an id rank 0 broadcasts over MPI. Without NCCL, MPI ranks on
/// GPUs exchange through MPI on the host, as CPU ranks do.
pub fn for_device(
    launched: Arc<dyn Collective>,
    gpu: Option<&launch::GpuRank>,
    device: &Device,
) -> Result<Arc<dyn Collective>, DistError> {
    match gpu {
        Some(gpu) => join_gpu_rank(gpu, device),
        None if launched.world() > 1 && device.is_cuda() && BUILT_WITH_NCCL => nccl_over(launched, device),
        None => Ok(launched),
    }
}

#[cfg(feature = "nccl")]
fn join_gpu_rank(gpu: &launch::GpuRank, device: &Device) -> Result<Arc<dyn Collective>, DistError> {
    let id: &[u8; ID_BYTES] = gpu.id.as_slice().try_into().map_err(|_| {
        DistError::Setup(format!(
            "the NCCL id from `--gpus` has {} bytes, not {ID_BYTES}; the ranks must be this same sslc",
            gpu.id.len()
        ))
    })?;
    Ok(Arc::new(NcclCollective::join(device, gpu.rank, gpu.world, id)?))
}

#[cfg(not(feature = "nccl"))]
fn join_gpu_rank(_gpu: &launch::GpuRank, _device: &Device) -> Result<Arc<dyn Collective>, DistError> {
    Err(without_nccl("a rank of `sslc run --gpus`"))
}

#[cfg(feature = "nccl")]
fn nccl_over(launched: Arc<dyn Collective>, device: &Device) -> Result<Arc<dyn Collective>, DistError> {
    Ok(Arc::new(NcclCollective::over(launched, device)?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_over(launched: Arc<dyn Collective>, _device: &Device) -> Result<Arc<dyn Collective>, DistError> {
    Ok(launched)
}

/// For `sslc run --gpus N` in the parent: checks that N GPUs are visible and makes the NCCL
/// unique id its ranks are handed ([`launch::spawn_ranks`]); a binary without NCCL says which
/// feature it needs.
#[cfg(feature = "nccl")]
pub fn gpu_id(gpus: usize) -> Result<Vec<u8>, DistError> {
    let count = nccl::device_count()?;
    if count < gpus {
        return Err(DistError::Setup(format!(
            "--gpus {gpus}: only {count} CUDA device(s) are visible; give --gpus {count} or fewer (CUDA_VISIBLE_DEVICES \
             chooses which)"
        )));
    }
    Ok(nccl::new_id()?.to_vec())
}

#[cfg(not(feature = "nccl"))]
pub fn gpu_id(gpus: usize) -> Result<Vec<u8>, DistError> {
    Err(without_nccl(&format!("--gpus {gpus}")))
}

/// Which slice of each global batch this rank trains on: rank `r` of `W` takes the `r`th of
/// `W` equal contiguous parts, so the ranks' parts gathered in rank order are the global
/// batch in its own order (what the single-process run sees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The shard of `collective`'s rank, when a global batch of `batch_size` splits evenly.
    pub fn of(collective: &dyn Collective, batch_size: usize) -> Result<Shard, DistError> {
        let world = collective.world();
        if !batch_size.is_multiple_of(world) || batch_size < world {
            let lower = batch_size / world * world;
            let suggestion = if lower > 0 { format!("{lower} or {}", lower + world) } else { world.to_string() };
            return Err(DistError::Setup(format!(
                "the global batch of {batch_size} does not split evenly over {world} ranks; give a --batch-size that \
                 is a multiple of {world} (e.g. {suggestion}), or launch a number of ranks that divides {batch_size}"
            )));
        }
        Ok(Shard { rank: collective.rank(), world })
    }

    /// This rank's part of `batch`, whose length the world size divides.
    pub fn part<'a, T>(&self, batch: &'a [T]) -> &'a [T] {
        let local = batch.len() / self.world;
        &batch[self.rank * local..(self.rank + 1) * local]
    }
}

/// Every rank's rows of `local` (`[n, ...]`, the same shape on each rank) stacked in rank
/// order: `[W n, ...]`. Detached: the caller routes gradients back itself (the rows of its own
/// rank, see [`own_rows`]).
pub fn gather_rows(collective: &dyn Collective, local: &Tensor) -> Result<Tensor, DistError> {
    if collective.world() == 1 {
        return Ok(local.detach());
    }
    let values = local.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let gathered = collective.all_gather(&values)?;
    let mut dims = local.dims().to_vec();
    dims[0] *= collective.world();
    Ok(Tensor::from_vec(gathered, dims, local.device())?)
}

/// This rank's rows of a global-batch tensor `[W n, ...]`: rows `r n .. (r + 1) n`.
pub fn own_rows(collective: &dyn Collective, global: &Tensor) -> Result<Tensor, DistError> {
    let world = collective.world();
    if world == 1 {
        return Ok(global.clone());
    }
    let local = global.dim(0)? / world;
    Ok(global.narrow(0, collective.rank() * local, local)?)
}

/// Sums every parameter's gradient over the ranks, in one collective call: each rank's
/// gradient is that of its own rows' share of the global loss, so the sum is the gradient of
/// the global loss, the single-process run's. Parameters without a gradient are the same on
/// every rank (every rank builds the same graph) and stay without one.
pub fn all_reduce_gradients(
    collective: &dyn Collective,
    params: &[(String, Var)],
    mut grads: GradStore,
) -> Result<GradStore, DistError> {
    if collective.world() == 1 {
        return Ok(grads);
    }
    let mut present: Vec<(&Var, Vec<usize>)> = Vec::new();
    let mut flat = Vec::new();
    for (_, var) in params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            flat.extend(grad.flatten_all()?.to_vec1::<f32>()?);
            present.push((var, grad.dims().to_vec()));
        }
    }
    collective.all_reduce_sum(&mut flat)?;
    let mut offset = 0;
    for (var, dims) in present {
        let count = dims.iter().product::<usize>();
        let summed = Tensor::from_slice(&flat[offset..offset + count], dims, var.device())?;
        grads.insert(var.as_tensor(), summed);
        offset += count;
    }
    Ok(grads)
}

/// Whether every rank succeeded at a step that can fail on some ranks only (setup, reading a
/// checkpoint): each rank says whether it did, so that all of them stop together with a
/// message instead of the others waiting forever in their next collective call. A rank that
/// failed returns its own error; the others name the first rank that failed.
pub fn agree<T, E>(collective: &dyn Collective, result: Result<T, E>) -> Result<Result<T, E>, DistError> {
    if collective.world() == 1 {
        return Ok(result);
    }
    let failed = collective.all_gather(&[if result.is_err() { 1.0 } else { 0.0 }])?;
    match (result, failed.iter().position(|&flag| flag != 0.0)) {
        (Err(e), _) => Ok(Err(e)),
        (Ok(_), Some(rank)) => Err(DistError::Setup(format!(
            "rank {rank} failed (its message says why); rank {} stops with it",
            collective.rank()
        ))),
        (Ok(value), None) => Ok(Ok(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_mpi_names_the_fix() {
        let message = without_mpi(4).to_string();
        assert!(message.contains("one of 4 ranks") && message.contains("--features mpi"), "{message}");
    }

    #[test]
    fn a_binary_without_nccl_names_the_fix() {
        let message = without_nccl("--gpus 2").to_string();
        assert!(message.starts_with("--gpus 2 needs NCCL") && message.contains("--features nccl"), "{message}");
    }

    #[test]
    fn shards_are_contiguous_parts_in_rank_order() {
        let batch: Vec<u32> = (0..12).collect();
        let parts: Vec<&[u32]> = (0..3).map(|rank| Shard { rank, world: 3 }.part(&batch)).collect();
        assert_eq!(parts.concat(), batch);
        assert_eq!(parts[1], &[4, 5, 6, 7]);
    }
}
