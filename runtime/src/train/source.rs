//! Where the training loop gets its images. The data loader implements these traits; the loop
//! only asks for batches by dataset index, so the two are developed and tested separately.

use candle_core::Tensor;

use crate::dist::Shard;
use crate::objective::BoxError;

/// The training set, as batches of augmented views.
pub trait BatchSource {
    /// The class of every image of the dataset, by dataset index: objectives that declare
    /// `labels` (SupCon) read them.
    fn labels(&self) -> &[u32];
    /// Number of images in the dataset; the objective keeps per-sample state for this many.
    fn samples(&self) -> usize {
        self.labels().len()
    }
    /// The dataset indices of every batch of `epoch`, in order. Must depend only on
    /// `(epoch, seed)`, so that a resumed run sees the same batches.
    fn batch_indices(&self, epoch: usize, seed: u64) -> Result<Vec<Vec<u32>>, BoxError>;
    /// Begins an epoch whose batches are [`BatchSource::batch_indices`]. `extra_args` holds
    /// every dataset sample's arguments of each extra augmentation
    /// (`extra_args[augmentation][argument][sample]`, see `Objective::augmentation_args`), so
    /// a source can prepare batches ahead of the training step.
    fn start_epoch(&mut self, epoch: usize, seed: u64, extra_args: Vec<Vec<Vec<f32>>>) -> Result<(), BoxError>;
    /// The augmented views `[N, C, H, W]` f32 of the epoch's next batch, whose dataset indices
    /// are `indices`: the two global views, then the small crops the source was built for
    /// (smaller `H, W`). Randomness must derive from `(seed, epoch, indices)` only.
    fn views(&mut self, indices: &[u32]) -> Result<Vec<Tensor>, BoxError>;
    /// From the next epoch on, produce the views of `shard`'s part of each batch only
    /// ([`Shard::part`] of the [`BatchSource::batch_indices`] batch): data-parallel training,
    /// where each rank augments its own samples. A source that cannot split its batches
    /// accepts only the whole batch.
    fn set_shard(&mut self, shard: Shard) -> Result<(), BoxError> {
        match shard == Shard::WHOLE {
            true => Ok(()),
            false => Err("this data source cannot serve a part of each batch to one of several ranks".into()),
        }
    }
}

/// A labelled, unaugmented image set for evaluation (the probe's training and test sets).
pub trait LabelledImages {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Images `[count, C, H, W]` f32 and labels of samples `start..start + count`.
    fn batch(&mut self, start: usize, count: usize) -> Result<(Tensor, Vec<u32>), BoxError>;
}
