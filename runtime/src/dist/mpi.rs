//! [`Collective`] over MPI (rsmpi), for ranks started by `mpirun` or `srun --mpi=pmix`.

use std::sync::Mutex;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator, SimpleCommunicator};

use super::{Collective, DistError};

/// The MPI world communicator. Calls are serialised by a mutex; MPI is initialised with
/// `MPI_THREAD_SERIALIZED`, which allows calls from any thread as long as they do not overlap,
/// so the communicator may be shared between threads.
pub struct MpiCollective {
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    /// Dropping it finalises MPI; it lives as long as the communicator.
    _universe: Universe,
}

// SAFETY: every use of the communicator goes through `world`'s mutex, so no two MPI calls run
// at once, and `initialize` refuses an MPI library that provides less than
// MPI_THREAD_SERIALIZED, the level at which calls from different (non-overlapping) threads are
// allowed. The handle itself is a plain value that MPI lets any thread use under that level.
unsafe impl Send for MpiCollective {}
// SAFETY: as for `Send`: shared access only ever reaches MPI through the mutex.
unsafe impl Sync for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI (once per process) and joins the world communicator.
    pub fn initialize() -> Result<MpiCollective, DistError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| DistError::Setup("MPI was already initialised in this process".into()))?;
        if provided < Threading::Serialized {
            return Err(DistError::Setup(format!(
                "the MPI library provides only {provided:?} threading; sslc needs MPI_THREAD_SERIALIZED (OpenMPI and \
                 MPICH both provide it)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiCollective { world: Mutex::new(world), rank, size, _universe: universe })
    }

    fn with_world<T>(&self, call: impl FnOnce(&SimpleCommunicator) -> T) -> Result<T, DistError> {
        let world = self.world.lock().map_err(|_| DistError::Setup("an MPI call panicked".into()))?;
        Ok(call(&world))
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        let mut all = vec![0f32; local.len() * self.size];
        self.with_world(|world| world.all_gather_into(local, &mut all[..]))?;
        Ok(all)
    }

    /// A reduction onto rank 0 followed by its broadcast, rather than `MPI_Allreduce`, whose
    /// algorithms may add in a different order on different ranks: this way every rank holds
    /// the very same bits, and replicated parameters stay identical.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError> {
        self.with_world(|world| {
            let root = world.process_at_rank(0);
            if self.rank == 0 {
                let local = values.to_vec();
                root.reduce_into_root(&local[..], values, SystemOperation::sum());
            } else {
                root.reduce_into(values, SystemOperation::sum());
            }
            root.broadcast_into(values);
        })
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), DistError> {
        if root >= self.size {
            return Err(DistError::Setup(format!("broadcast from rank {root} of {}", self.size)));
        }
        self.with_world(|world| world.process_at_rank(root as i32).broadcast_into(values))
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.with_world(|world| world.barrier())
    }
}
