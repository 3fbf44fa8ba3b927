//! [`Collective`] over NCCL (cudarc's `nccl` module): one process per GPU, one communicator per
//! process, its operations on the rank's candle CUDA stream.
//!
//! The trait is over host slices, because the objective runs on the host (the embeddings and
//! gradients already come to the host for it), so every call copies host → device, runs the
//! NCCL operation and copies back, synchronising the stream once per call. That costs two PCIe
//! copies per call on top of NCCL's own traffic (docs/distributed.md); it is the price of one
//! interface for MPI and NCCL until the step keeps its tensors on the device.
//!
//! This file is the only one that calls NCCL. Nothing here has run on a GPU yet.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Device;
use cudarc::driver::{CudaContext, CudaStream, DriverError};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::{Collective, DistError};

/// Bytes in an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const ID_BYTES: usize = 128;

/// One rank's NCCL communicator. Calls are serialised by a mutex (NCCL communicators must not be
/// used from two threads at once), and each call binds the rank's CUDA context to the calling
/// thread first, since NCCL launches on the current context.
pub struct NcclCollective {
    comm: Mutex<Comm>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    /// The collective that handed out the unique id (MPI), kept alive for the run: dropping it
    /// would finalise MPI, and `mpirun` watches the ranks through it.
    _bootstrap: Option<Arc<dyn Collective>>,
}

// SAFETY: the communicator is a pointer to NCCL state that NCCL allows any thread to use, one
// call at a time; every use goes through `comm`'s mutex, so no two calls overlap. The stream is
// cudarc's, itself Send and Sync.
unsafe impl Send for NcclCollective {}
// SAFETY: as for `Send`: shared access reaches the communicator only through the mutex.
unsafe impl Sync for NcclCollective {}

fn nccl(what: &str, error: NcclError) -> DistError {
    DistError::Setup(format!(
        "NCCL {what} failed: {:?}; run with NCCL_DEBUG=WARN for NCCL's own account (a lost rank, a missing or \
         mismatched libnccl.so.2, two ranks on one GPU)",
        error.0
    ))
}

fn cuda(what: &str, error: DriverError) -> DistError {
    DistError::Setup(format!("CUDA {what} for NCCL failed: {error}"))
}

/// How many CUDA devices this process sees; "no CUDA device found" when there are none, so
/// `--gpus` fails in a second with the message `--device cuda` gives.
pub fn device_count() -> Result<usize, DistError> {
    let count = CudaContext::device_count()
        .map_err(|e| DistError::Setup(format!("no CUDA device found: the CUDA driver reports {e}")))?;
    match usize::try_from(count) {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(DistError::Setup("no CUDA device found: the CUDA driver reports none".into())),
    }
}

/// A new unique id, made by one process and handed to every rank of the run.
pub fn new_id() -> Result<[u8; ID_BYTES], DistError> {
    let id = Id::new().map_err(|e| nccl("ncclGetUniqueId", e))?;
    Ok(id.internal().map(|byte| byte as u8))
}

impl NcclCollective {
    /// Joins the communicator of `world` ranks named by `id` as `rank`, on `device` (a CUDA
    /// device: the rank's own GPU). Blocks until every rank has joined, then checks the three
    /// operations once ([`NcclCollective::check`]).
    pub fn join(device: &Device, rank: usize, world: usize, id: &[u8; ID_BYTES]) -> Result<NcclCollective, DistError> {
        let stream = match device {
            // candle's stream: NCCL's work is then ordered after candle's kernels on it.
            Device::Cuda(cuda_device) => cuda_device.cuda_stream(),
            _ => {
                return Err(DistError::Setup(format!(
                    "NCCL needs a CUDA device; this rank was given {device:?}; run with --device cuda"
                )))
            }
        };
        stream.context().bind_to_thread().map_err(|e| cuda("binding the context", e))?;
        let id = Id::uninit(id.map(|byte| byte as core::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, world, id).map_err(|e| nccl("ncclCommInitRank", e))?;
        let collective = NcclCollective { comm: Mutex::new(comm), stream, rank, world, _bootstrap: None };
        collective.check()?;
        Ok(collective)
    }

    /// Gathers every rank's number, sums ones and broadcasts rank 0's value, and compares each
    /// with what it must be. Run once at setup, so a broken NCCL setup fails there with a
    /// message, and so a one-rank run (where the training step skips every exchange) still
    /// shows that NCCL works on this machine.
    fn check(&self) -> Result<(), DistError> {
        let ranks = self.all_gather(&[self.rank as f32])?;
        let mut ones = [1.0];
        self.all_reduce_sum(&mut ones)?;
        let mut root = [self.rank as f32 + 7.0];
        self.broadcast(&mut root, 0)?;
        let expected: Vec<f32> = (0..self.world).map(|rank| rank as f32).collect();
        if ranks != expected || ones[0] != self.world as f32 || root[0] != 7.0 {
            return Err(DistError::Setup(format!(
                "NCCL's check at setup failed on rank {}: gathered ranks {ranks:?} (expected {expected:?}), a sum of \
                 ones {} (expected {}), a broadcast {} (expected 7); run with NCCL_DEBUG=INFO to see what NCCL did",
                self.rank, ones[0], self.world, root[0]
            )));
        }
        Ok(())
    }

    /// Joins a communicator over the ranks of `bootstrap` (MPI under `mpirun`): rank 0 makes
    /// the id and broadcasts it through `bootstrap`, whose rank and size this one takes.
    pub fn over(bootstrap: Arc<dyn Collective>, device: &Device) -> Result<NcclCollective, DistError> {
        let made = if bootstrap.rank() == 0 { new_id() } else { Ok([0; ID_BYTES]) };
        let mut id = super::agree(bootstrap.as_ref(), made)??;
        // Bytes as f32 (each exact), since the interface carries f32.
        let mut values: Vec<f32> = id.iter().map(|&byte| f32::from(byte)).collect();
        bootstrap.broadcast(&mut values, 0)?;
        id.iter_mut().zip(&values).for_each(|(byte, &value)| *byte = value as u8);
        let mut collective = NcclCollective::join(device, bootstrap.rank(), bootstrap.world(), &id)?;
        collective._bootstrap = Some(bootstrap);
        Ok(collective)
    }

    /// The communicator, locked, with the rank's context current on this thread.
    fn comm(&self) -> Result<MutexGuard<'_, Comm>, DistError> {
        let comm = self.comm.lock().map_err(|_| DistError::Setup("an NCCL call panicked".into()))?;
        self.stream.context().bind_to_thread().map_err(|e| cuda("binding the context", e))?;
        Ok(comm)
    }

    /// Runs `operation` in place on a device copy of `values` and copies the result back.
    fn in_place(
        &self,
        values: &mut [f32],
        what: &str,
        operation: impl FnOnce(&Comm, &mut cudarc::driver::CudaSlice<f32>) -> Result<(), NcclError>,
    ) -> Result<(), DistError> {
        if values.is_empty() {
            return Ok(());
        }
        let comm = self.comm()?;
        let mut buffer = self.stream.clone_htod(values).map_err(|e| cuda("copy to the device", e))?;
        operation(&comm, &mut buffer).map_err(|e| nccl(what, e))?;
        self.stream.memcpy_dtoh(&buffer, values).map_err(|e| cuda("copy to the host", e))?;
        self.stream.synchronize().map_err(|e| cuda("synchronising the stream", e))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        if local.is_empty() {
            return Ok(Vec::new());
        }
        let comm = self.comm()?;
        let send = self.stream.clone_htod(local).map_err(|e| cuda("copy to the device", e))?;
        let mut all = self.stream.alloc_zeros::<f32>(local.len() * self.world).map_err(|e| cuda("allocation", e))?;
        comm.all_gather(&send, &mut all).map_err(|e| nccl("ncclAllGather", e))?;
        let gathered = self.stream.clone_dtoh(&all).map_err(|e| cuda("copy to the host", e))?;
        self.stream.synchronize().map_err(|e| cuda("synchronising the stream", e))?;
        Ok(gathered)
    }

    /// A reduce onto rank 0 and its broadcast, as the MPI collective does, rather than
    /// `ncclAllReduce`: every rank then holds the very same bits by construction.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError> {
        self.in_place(values, "ncclReduce/ncclBroadcast", |comm, buffer| {
            comm.reduce_in_place(buffer, &ReduceOp::Sum, 0)?;
            comm.broadcast_in_place(buffer, 0).map(|_| ())
        })
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), DistError> {
        if root >= self.world {
            return Err(DistError::Setup(format!("broadcast from rank {root} of {}", self.world)));
        }
        self.in_place(values, "ncclBroadcast", |comm, buffer| comm.broadcast_in_place(buffer, root as i32).map(|_| ()))
    }

    /// NCCL has no barrier: a one-value all-reduce that every rank must join, then a wait for it.
    fn barrier(&self) -> Result<(), DistError> {
        self.in_place(&mut [0.0], "ncclAllReduce (barrier)", |comm, buffer| {
            comm.all_reduce_in_place(buffer, &ReduceOp::Sum).map(|_| ())
        })
    }
}
