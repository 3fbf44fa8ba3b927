//! Augmentations on [`Image`]s, each drawing from an explicit seeded RNG so that a view depends
//! only on `(seed, epoch, sample, view)` ([`view_rng`]), never on thread scheduling.
//!
//! Semantics follow torchvision's transforms (what the reference calls); the random draws are
//! this crate's own (ChaCha8), so views are distributed as torchvision's, not bitwise equal.

pub mod color;
pub mod geometry;
pub mod pipeline;
pub mod randaugment;
pub mod resample;

use crate::image::Image;
use rand::{Rng, SeedableRng};

pub use color::{ColorJitter, Normalize};
pub use geometry::{CropBox, RandomResizedCrop};
pub use pipeline::{EvalTransform, Preset, SimclrAugment};
pub use randaugment::{rand_augment, RandAugmentOp};
pub use resample::Interpolation;

pub type AugmentRng = rand_chacha::ChaCha8Rng;

/// Separates the RNG streams of different uses of the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Augmenting one view of one sample.
    View = 1,
    /// The order of an epoch's samples.
    EpochOrder = 2,
}

/// The RNG for `(stream, seed, epoch, item)`: a ChaCha8 key made of the four words, so streams
/// never overlap and each is reproducible on its own.
pub fn keyed_rng(stream: Stream, seed: u64, epoch: u64, item: u64) -> AugmentRng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([stream as u64, seed, epoch, item]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    AugmentRng::from_seed(key)
}

/// The RNG of view `view` (0 or 1) of dataset sample `index` in `epoch`.
pub fn view_rng(seed: u64, epoch: u64, index: u32, view: u8) -> AugmentRng {
    keyed_rng(Stream::View, seed, epoch, (u64::from(index) << 8) | u64::from(view))
}

/// A uniform draw in `[low, high)` (torch's `uniform_`, Python's `random.uniform`).
pub(crate) fn uniform(rng: &mut AugmentRng, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

/// True with probability `p`.
pub(crate) fn chance(rng: &mut AugmentRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// torchvision's `RandomApply([transform], p)`.
pub fn random_apply(
    image: Image,
    p: f64,
    rng: &mut AugmentRng,
    transform: impl FnOnce(Image, &mut AugmentRng) -> Image,
) -> Image {
    if chance(rng, p) {
        transform(image, rng)
    } else {
        image
    }
}
