//! The threaded data loader. A producer thread builds batches in order, one ahead of the
//! consumer up to `prefetch`, augmenting each batch's samples in parallel on a dedicated rayon
//! pool, so augmentation overlaps the training step. Every random choice comes from an RNG
//! keyed by `(seed, epoch, sample, view)` (see [`crate::augment::keyed_rng`]) and the epoch
//! order from one keyed by `(seed, epoch)`: the batches do not depend on thread scheduling,
//! and a run resumed at any epoch and batch ([`TwoViewLoader::epoch_from`]) reproduces an
//! uninterrupted one.

use super::{DataError, Dataset};
use crate::augment::{keyed_rng, rand_augment, view_rng, AugmentRng, EvalTransform, SimclrAugment, Stream};
use crate::dist::Shard;
use crate::image::{images_to_batch, Image};
use crate::objective::ExtraAugmentation;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Threads augmenting samples.
    pub workers: usize,
    /// Finished batches waiting for the consumer at most.
    pub prefetch: usize,
    /// Drop the last, smaller batch of an epoch (contrastive losses want full batches).
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> LoaderConfig {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoaderConfig { batch_size: 512, seed: 0, workers, prefetch: 2, drop_last: true }
    }
}

/// Augmented views of `B` samples, on the loader's device: two global views, then any small
/// crops.
#[derive(Debug)]
pub struct Batch {
    /// `[B, C, H, W]` f32 each; the small crops' `H, W` are smaller.
    pub views: Vec<Tensor>,
    pub labels: Vec<u32>,
    /// Dataset indices of the samples.
    pub indices: Vec<u32>,
}

/// One transformed view of `B` samples for feature extraction.
#[derive(Debug)]
pub struct EvalBatch {
    /// `[B, C, H, W]` f32.
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub indices: Vec<u32>,
}

/// Throughput counters of a loader, readable while it runs.
#[derive(Debug, Default)]
pub struct LoaderStats {
    images: AtomicU64,
    producing_nanos: AtomicU64,
}

impl LoaderStats {
    /// Samples produced so far (a two-view sample counts once).
    pub fn images(&self) -> u64 {
        self.images.load(Ordering::Relaxed)
    }

    /// Seconds spent building batches.
    pub fn producing_seconds(&self) -> f64 {
        self.producing_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Images per second of batch building: above the training step's rate, loading is not
    /// the bottleneck.
    pub fn images_per_second(&self) -> f64 {
        let seconds = self.producing_seconds();
        if seconds > 0.0 {
            self.images() as f64 / seconds
        } else {
            0.0
        }
    }
}

/// A BCL-style extra augmentation with its per-sample arguments, by dataset index.
#[derive(Clone, Debug, PartialEq)]
enum Extra {
    /// `randaugment(p, strength)`.
    RandAugment { p: Vec<f32>, strength: Vec<f32> },
}

/// The extra augmentations of an epoch with every sample's arguments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraArgs {
    extras: Vec<Extra>,
}

impl ExtraArgs {
    /// Binds the view spec's extra augmentations to values from
    /// [`crate::objective::Objective::augmentation_args`]: `values[augmentation][argument][k]`
    /// belongs to dataset sample `indices[k]`. Samples not in `indices` get `p = 0` (no extra
    /// augmentation), as the reference's weights before the first epoch ends. Known
    /// augmentations: `randaugment` with arguments `p` and `strength`.
    pub fn new(
        specs: &[ExtraAugmentation],
        indices: &[u32],
        values: &[Vec<Vec<f32>>],
        samples: usize,
    ) -> Result<ExtraArgs, DataError> {
        if values.len() != specs.len() {
            return Err(DataError::invalid(
                "augmentation arguments",
                format!("{} value sets for {} extra augmentations", values.len(), specs.len()),
            ));
        }
        let mut extras = Vec::with_capacity(specs.len());
        for (spec, values) in specs.iter().zip(values) {
            if spec.name != "randaugment" {
                return Err(DataError::invalid(
                    "extra augmentation",
                    format!("`{}` is not known; the loader knows `randaugment(p, strength)`", spec.name),
                ));
            }
            let argument = |name: &str| -> Result<Vec<f32>, DataError> {
                let position = spec.args.iter().position(|a| a == name).ok_or_else(|| {
                    DataError::invalid("randaugment arguments", format!("no `{name}` among {:?}", spec.args))
                })?;
                let given = values
                    .get(position)
                    .ok_or_else(|| DataError::invalid("randaugment arguments", format!("no values for `{name}`")))?;
                if given.len() != indices.len() {
                    return Err(DataError::invalid(
                        "randaugment arguments",
                        format!("{} values of `{name}` for {} samples", given.len(), indices.len()),
                    ));
                }
                let mut by_sample = vec![0.0; samples];
                for (&index, &value) in indices.iter().zip(given) {
                    *by_sample.get_mut(index as usize).ok_or_else(|| {
                        DataError::invalid(
                            "randaugment arguments",
                            format!("sample index {index} is beyond the {samples} samples"),
                        )
                    })? = value;
                }
                Ok(by_sample)
            };
            extras.push(Extra::RandAugment { p: argument("p")?, strength: argument("strength")? });
        }
        Ok(ExtraArgs { extras })
    }

    fn apply(&self, mut image: Image, index: usize, rng: &mut AugmentRng) -> Image {
        for extra in &self.extras {
            match extra {
                Extra::RandAugment { p, strength } => {
                    image = rand_augment(image, f64::from(p[index]), f64::from(strength[index]), rng)
                }
            }
        }
        image
    }
}

/// Batches arriving from the producer thread, in order.
pub struct BatchStream<B> {
    receiver: Option<Receiver<Result<B, DataError>>>,
    producer: Option<JoinHandle<()>>,
}

impl<B> Iterator for BatchStream<B> {
    type Item = Result<B, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl<B> Drop for BatchStream<B> {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.receiver.take();
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

/// The worker pool and counters a loader owns.
struct Workers {
    pool: Arc<rayon::ThreadPool>,
    stats: Arc<LoaderStats>,
    prefetch: usize,
}

impl Workers {
    fn new(workers: usize, prefetch: usize) -> Result<Workers, DataError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("sslc-loader-{i}"))
            .build()
            .map_err(|e| DataError::invalid("loader workers", e.to_string()))?;
        Ok(Workers { pool: Arc::new(pool), stats: Arc::default(), prefetch })
    }

    /// Starts a producer that builds `batches` in order: `sample` makes each sample (in
    /// parallel), `assemble` turns the samples of one batch into a batch.
    fn spawn<S, B>(
        &self,
        batches: Vec<Vec<u32>>,
        sample: impl Fn(u32) -> Result<S, DataError> + Send + Sync + 'static,
        assemble: impl Fn(Vec<S>, Vec<u32>) -> Result<B, DataError> + Send + 'static,
    ) -> BatchStream<B>
    where
        S: Send + 'static,
        B: Send + 'static,
    {
        let (sender, receiver) = sync_channel(self.prefetch.max(1));
        let (pool, stats) = (self.pool.clone(), self.stats.clone());
        let producer = std::thread::spawn(move || {
            for indices in batches {
                let started = Instant::now();
                let samples =
                    pool.install(|| indices.par_iter().map(|&i| sample(i)).collect::<Result<Vec<S>, DataError>>());
                let count = indices.len() as u64;
                let batch = samples.and_then(|samples| assemble(samples, indices));
                stats.producing_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let failed = batch.is_err();
                if !failed {
                    stats.images.fetch_add(count, Ordering::Relaxed);
                }
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        BatchStream { receiver: Some(receiver), producer: Some(producer) }
    }
}

/// One tensor of `images`, on `device` (copied there by the producer thread, overlapping the
/// training step: [`crate::device::upload`]).
fn stack(images: &[Image], device: &Device) -> Result<Tensor, DataError> {
    images_to_batch(images, device).map_err(|e| DataError::invalid("batch", e.to_string()))
}

fn labels_of(dataset: &Dataset, indices: &[u32]) -> Vec<u32> {
    indices.iter().map(|&i| dataset.labels()[i as usize]).collect()
}

/// Two SimCLR views per sample, for self-supervised training, and optionally small crops
/// (multi-crop: SwAV, DINO).
pub struct TwoViewLoader {
    dataset: Arc<Dataset>,
    augment: Arc<SimclrAugment>,
    /// The small crops' augmentation and how many per sample.
    small: Option<(Arc<SimclrAugment>, usize)>,
    config: LoaderConfig,
    workers: Workers,
    /// The part of every batch this process augments (data-parallel training).
    shard: Shard,
    /// Where the batches are delivered (the encoder's device).
    device: Device,
}

impl TwoViewLoader {
    pub fn new(
        dataset: Arc<Dataset>,
        augment: SimclrAugment,
        config: LoaderConfig,
    ) -> Result<TwoViewLoader, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::invalid("batch size", "0"));
        }
        let workers = Workers::new(config.workers, config.prefetch)?;
        Ok(TwoViewLoader {
            dataset,
            augment: Arc::new(augment),
            small: None,
            config,
            workers,
            shard: Shard::WHOLE,
            device: Device::Cpu,
        })
    }

    /// Deliver the batches on `device`, copied there by the producer thread.
    pub fn on_device(mut self, device: Device) -> TwoViewLoader {
        self.device = device;
        self
    }

    /// Also `count` small crops per sample, views `2..2 + count`, augmented by `augment` (the
    /// global pipeline with a smaller, tighter crop: [`crate::augment::Preset::small_crops`]).
    pub fn with_small_crops(mut self, augment: SimclrAugment, count: usize) -> TwoViewLoader {
        self.small = (count > 0).then(|| (Arc::new(augment), count));
        self
    }

    pub fn stats(&self) -> Arc<LoaderStats> {
        self.workers.stats.clone()
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The epoch's sample order: a shuffle keyed by `(seed, epoch)`.
    pub fn epoch_order(&self, epoch: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.dataset.len() as u32).collect();
        order.shuffle(&mut keyed_rng(Stream::EpochOrder, self.config.seed, epoch as u64, 0));
        order
    }

    /// From now on, [`TwoViewLoader::epoch`] yields only `shard`'s part of each batch; the epoch
    /// order and [`TwoViewLoader::epoch_batches`] stay those of the whole (global) batches.
    pub fn set_shard(&mut self, shard: Shard) -> Result<(), DataError> {
        if shard.world == 0 || shard.rank >= shard.world || !self.config.batch_size.is_multiple_of(shard.world) {
            return Err(DataError::invalid(
                "shard",
                format!(
                    "rank {} of {} cannot take an equal part of batches of {}",
                    shard.rank, shard.world, self.config.batch_size
                ),
            ));
        }
        if shard.world > 1 && !self.config.drop_last {
            return Err(DataError::invalid("shard", "sharded batches need drop_last (equal parts on every rank)"));
        }
        self.shard = shard;
        Ok(())
    }

    /// The dataset indices of each batch of `epoch`, in order.
    pub fn epoch_batches(&self, epoch: usize) -> Vec<Vec<u32>> {
        self.epoch_order(epoch)
            .chunks(self.config.batch_size)
            .take(self.batches_per_epoch())
            .map(<[u32]>::to_vec)
            .collect()
    }

    pub fn epoch(&self, epoch: usize, extras: ExtraArgs) -> BatchStream<Batch> {
        self.epoch_from(epoch, 0, extras)
    }

    /// The batches of `epoch` from batch `first_batch` on, identical to those of an epoch
    /// iterated from its start.
    pub fn epoch_from(&self, epoch: usize, first_batch: usize, extras: ExtraArgs) -> BatchStream<Batch> {
        let shard = self.shard;
        let batches: Vec<Vec<u32>> =
            self.epoch_batches(epoch).into_iter().skip(first_batch).map(|batch| shard.part(&batch).to_vec()).collect();
        let (dataset, augment, seed) = (self.dataset.clone(), self.augment.clone(), self.config.seed);
        let small = self.small.clone();
        let count = 2 + small.as_ref().map_or(0, |(_, k)| *k);
        let sample_dataset = dataset.clone();
        let device = self.device.clone();
        let sample = move |index: u32| -> Result<Vec<Image>, DataError> {
            let image = sample_dataset.image(index as usize)?;
            Ok((0..count)
                .map(|view| {
                    let pipeline = match (&small, view) {
                        (Some((small, _)), 2..) => small,
                        _ => &augment,
                    };
                    let mut rng = view_rng(seed, epoch as u64, index, view as u8);
                    let augmented = extras.apply(pipeline.augment(&image, &mut rng), index as usize, &mut rng);
                    match &pipeline.normalize {
                        Some(normalize) => normalize.apply(augmented),
                        None => augmented,
                    }
                })
                .collect())
        };
        let assemble = move |samples: Vec<Vec<Image>>, indices: Vec<u32>| -> Result<Batch, DataError> {
            let mut by_view: Vec<Vec<Image>> = (0..count).map(|_| Vec::with_capacity(samples.len())).collect();
            for views in samples {
                for (column, image) in by_view.iter_mut().zip(views) {
                    column.push(image);
                }
            }
            let views = by_view.iter().map(|images| stack(images, &device)).collect::<Result<Vec<_>, _>>()?;
            Ok(Batch { views, labels: labels_of(&dataset, &indices), indices })
        };
        self.workers.spawn(batches, sample, assemble)
    }
}

/// One transformed view per sample in dataset order, for computing probe features.
pub struct FeatureLoader {
    dataset: Arc<Dataset>,
    transform: Arc<EvalTransform>,
    batch_size: usize,
    seed: u64,
    workers: Workers,
    device: Device,
}

impl FeatureLoader {
    pub fn new(
        dataset: Arc<Dataset>,
        transform: EvalTransform,
        config: &LoaderConfig,
    ) -> Result<FeatureLoader, DataError> {
        if config.batch_size == 0 {
            return Err(DataError::invalid("batch size", "0"));
        }
        let workers = Workers::new(config.workers, config.prefetch)?;
        Ok(FeatureLoader {
            dataset,
            transform: Arc::new(transform),
            batch_size: config.batch_size,
            seed: config.seed,
            workers,
            device: Device::Cpu,
        })
    }

    /// Deliver the images on `device`, copied there by the producer thread.
    pub fn on_device(mut self, device: Device) -> FeatureLoader {
        self.device = device;
        self
    }

    pub fn stats(&self) -> Arc<LoaderStats> {
        self.workers.stats.clone()
    }

    /// Every sample once, in order, the last batch possibly smaller. Random transforms draw
    /// from view 0 of epoch 0, so the same seed gives the same features.
    pub fn batches(&self) -> BatchStream<EvalBatch> {
        let order: Vec<u32> = (0..self.dataset.len() as u32).collect();
        let batches = order.chunks(self.batch_size).map(<[u32]>::to_vec).collect();
        let (dataset, transform, seed) = (self.dataset.clone(), self.transform.clone(), self.seed);
        let device = self.device.clone();
        let sample_dataset = dataset.clone();
        let sample = move |index: u32| -> Result<Image, DataError> {
            let image = sample_dataset.image(index as usize)?;
            Ok(transform.apply(&image, &mut view_rng(seed, 0, index, 0)))
        };
        let assemble = move |images: Vec<Image>, indices: Vec<u32>| -> Result<EvalBatch, DataError> {
            Ok(EvalBatch { images: stack(&images, &device)?, labels: labels_of(&dataset, &indices), indices })
        };
        self.workers.spawn(batches, sample, assemble)
    }
}
