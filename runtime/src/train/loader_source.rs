//! The data loader behind the training loop's traits: [`LoaderSource`] serves the two-view
//! batches of a [`TwoViewLoader`] (augmented on worker threads, ahead of the step), and
//! [`FeatureImages`] the transformed images a [`FeatureLoader`] produces for the probe.

use super::source::{BatchSource, LabelledImages};
use crate::data::loader::{Batch, BatchStream, EvalBatch, ExtraArgs, FeatureLoader, LoaderStats, TwoViewLoader};
use crate::dist::Shard;
use crate::objective::{BoxError, ExtraAugmentation};
use candle_core::Tensor;
use std::sync::Arc;

pub struct LoaderSource {
    loader: TwoViewLoader,
    labels: Vec<u32>,
    extras: Vec<ExtraAugmentation>,
    stream: Option<BatchStream<Batch>>,
}

impl LoaderSource {
    /// `extras` are the objective's extra augmentations (`Objective::views().extra`).
    /// `labels` are the training set's classes, by dataset index.
    pub fn new(loader: TwoViewLoader, labels: Vec<u32>, extras: Vec<ExtraAugmentation>) -> Self {
        LoaderSource { loader, labels, extras, stream: None }
    }

    pub fn stats(&self) -> Arc<LoaderStats> {
        self.loader.stats()
    }
}

impl BatchSource for LoaderSource {
    fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The loader's own order: it shuffles with a key of `(seed, epoch)`, the seed it was built with.
    fn batch_indices(&self, epoch: usize, _seed: u64) -> Result<Vec<Vec<u32>>, BoxError> {
        Ok(self.loader.epoch_batches(epoch))
    }

    fn start_epoch(&mut self, epoch: usize, _seed: u64, extra_args: Vec<Vec<Vec<f32>>>) -> Result<(), BoxError> {
        let all: Vec<u32> = (0..self.labels.len() as u32).collect();
        let extras = if self.extras.is_empty() {
            ExtraArgs::default()
        } else {
            ExtraArgs::new(&self.extras, &all, &extra_args, self.labels.len())?
        };
        self.stream = Some(self.loader.epoch(epoch, extras));
        Ok(())
    }

    fn set_shard(&mut self, shard: Shard) -> Result<(), BoxError> {
        Ok(self.loader.set_shard(shard)?)
    }

    fn views(&mut self, indices: &[u32]) -> Result<Vec<Tensor>, BoxError> {
        let stream = self.stream.as_mut().ok_or("views() before start_epoch()")?;
        let batch = stream.next().ok_or("the loader ran out of batches before the epoch ended")??;
        if batch.indices != indices {
            return Err("the loader's batch does not hold the samples the training loop expects".into());
        }
        Ok(batch.views)
    }
}

/// The images of a set in order, for feature extraction; reads ahead in batches.
pub struct FeatureImages {
    loader: FeatureLoader,
    len: usize,
    /// A batch read ahead, not yet fully handed out: its images and labels, and the first
    /// dataset index it holds.
    pending: Option<(EvalBatch, usize)>,
    stream: Option<BatchStream<EvalBatch>>,
}

impl FeatureImages {
    pub fn new(loader: FeatureLoader, len: usize) -> Self {
        FeatureImages { loader, len, pending: None, stream: None }
    }
}

impl LabelledImages for FeatureImages {
    fn len(&self) -> usize {
        self.len
    }

    /// Serves `start..start + count` from the loader's batches; a read from 0 restarts it.
    fn batch(&mut self, start: usize, count: usize) -> Result<(Tensor, Vec<u32>), BoxError> {
        if start == 0 || self.stream.is_none() {
            self.stream = Some(self.loader.batches());
            self.pending = None;
        }
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let mut next = start;
        while next < start + count {
            let (batch, first) = match self.pending.take() {
                Some(p) => p,
                None => {
                    let b = self
                        .stream
                        .as_mut()
                        .expect("started above")
                        .next()
                        .ok_or("the feature loader ran out of images")??;
                    let first = b.indices.first().map_or(next, |&i| i as usize);
                    (b, first)
                }
            };
            let have = batch.labels.len();
            if next < first || next >= first + have {
                return Err(format!(
                    "feature images must be read in order; asked for {next}, the loader is at {first}"
                )
                .into());
            }
            let offset = next - first;
            let take = (start + count - next).min(have - offset);
            images.push(batch.images.narrow(0, offset, take)?);
            labels.extend_from_slice(&batch.labels[offset..offset + take]);
            next += take;
            if offset + take < have {
                self.pending = Some((batch, first));
            }
        }
        Ok((Tensor::cat(&images, 0)?, labels))
    }
}
