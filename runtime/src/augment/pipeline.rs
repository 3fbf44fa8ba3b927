//! The per-dataset pipelines: SimCLR's two-view augmentation (METHOD.md §2) and the
//! deterministic or weak transforms of feature extraction (§4).
//!
//! Choices for the datasets the reference never used:
//! - Fashion-MNIST (28x28, 1 channel): crop scale 0.2..1 (a tenth of a small garment is mostly
//!   background), flip kept (garments are left-right symmetric), jitter of brightness and
//!   contrast only (saturation and hue do not exist in one channel), no grayscale, no blur.
//! - Digits (8x8, 1 channel, 16 levels): crop scale 0.5..1 (smaller crops of 8 pixels erase the
//!   digit), no flip (mirrored 2/5, 3/E change meaning), brightness/contrast jitter only, no blur.

use super::color::{random_gaussian_blur, to_grayscale, ColorJitter, Normalize};
use super::geometry::{center_crop, horizontal_flip, random_crop_padded, resize_shorter, RandomResizedCrop};
use super::resample::Interpolation;
use super::{random_apply, AugmentRng};
use crate::image::Image;

/// The dataset family whose transforms to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// CIFAR-10/100, 32x32 RGB.
    Cifar,
    /// ImageNet-LT and Places-LT, decoded files cropped to 224x224.
    ImageNet,
    FashionMnist,
    Digits,
}

/// SimCLR's view augmentation: random resized crop, flip, colour jitter, grayscale, blur.
/// Normalisation is kept apart because extra augmentations (BCL's RandAugment) run between.
#[derive(Clone, Debug, PartialEq)]
pub struct SimclrAugment {
    pub crop: RandomResizedCrop,
    pub flip_p: f64,
    pub jitter: ColorJitter,
    pub jitter_p: f64,
    pub grayscale_p: f64,
    /// Sigma range and probability of the Gaussian blur, if any.
    pub blur: Option<((f32, f32), f64)>,
    pub normalize: Option<Normalize>,
}

impl SimclrAugment {
    /// The augmentation up to (not including) normalisation.
    pub fn augment(&self, image: &Image, rng: &mut AugmentRng) -> Image {
        let mut view = self.crop.apply(image, rng);
        view = random_apply(view, self.flip_p, rng, |v, _| horizontal_flip(&v));
        view = random_apply(view, self.jitter_p, rng, |v, rng| self.jitter.apply(v, rng));
        view = random_apply(view, self.grayscale_p, rng, |v, _| to_grayscale(&v));
        if let Some((sigma, p)) = self.blur {
            view = random_apply(view, p, rng, |v, rng| random_gaussian_blur(&v, sigma, rng));
        }
        view
    }
}

/// A feature-extraction transform, applied once per image.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalTransform {
    /// The image as it is (CIFAR-style test sets).
    Plain { normalize: Option<Normalize> },
    /// Random `size` crop of the zero-padded image, then an optional flip (CIFAR's weak
    /// augmentation for the probe's training set).
    PaddedCrop { size: usize, padding: usize, flip: bool, normalize: Option<Normalize> },
    /// Random resized crop and flip (the reference's ImageNet probe training transform).
    ResizedCropFlip { crop: RandomResizedCrop, normalize: Option<Normalize> },
    /// Shorter side resized to `resize`, centre `crop` (ImageNet test transform).
    ResizeCenterCrop { resize: usize, crop: usize, normalize: Option<Normalize> },
}

impl EvalTransform {
    pub fn apply(&self, image: &Image, rng: &mut AugmentRng) -> Image {
        let (view, normalize) = match self {
            EvalTransform::Plain { normalize } => (image.clone(), normalize),
            EvalTransform::PaddedCrop { size, padding, flip, normalize } => {
                let view = random_crop_padded(image, *size, *padding, rng);
                (if *flip { random_apply(view, 0.5, rng, |v, _| horizontal_flip(&v)) } else { view }, normalize)
            }
            EvalTransform::ResizedCropFlip { crop, normalize } => {
                let view = crop.apply(image, rng);
                (random_apply(view, 0.5, rng, |v, _| horizontal_flip(&v)), normalize)
            }
            EvalTransform::ResizeCenterCrop { resize, crop, normalize } => {
                (center_crop(&resize_shorter(image, *resize, Interpolation::Bilinear), *crop), normalize)
            }
        };
        match normalize {
            Some(normalize) => normalize.apply(view),
            None => view,
        }
    }
}

fn normalize(mean: &[f32], std: &[f32]) -> Option<Normalize> {
    Some(Normalize { mean: mean.to_vec(), std: std.to_vec() })
}

/// Jitter without the colour terms, for 1-channel images.
const GRAY_JITTER: ColorJitter = ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.0, hue: 0.0 };

impl Preset {
    /// Channel statistics the reference normalises with. ImageNet/Places: none, as the
    /// reference's ResNet-50 path feeds `[0, 1]` images. Fashion-MNIST and digits: the
    /// training set's own pixel mean and standard deviation.
    pub fn normalize(self) -> Option<Normalize> {
        match self {
            Preset::Cifar => normalize(&[0.4914, 0.4822, 0.4465], &[0.2023, 0.1994, 0.2010]),
            Preset::ImageNet => None,
            Preset::FashionMnist => normalize(&[0.2860], &[0.3530]),
            Preset::Digits => normalize(&[0.3053], &[0.3760]),
        }
    }

    pub fn simclr(self) -> SimclrAugment {
        let color = ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 };
        let base = |crop, flip_p, jitter, grayscale_p, blur| SimclrAugment {
            crop,
            flip_p,
            jitter,
            jitter_p: 0.8,
            grayscale_p,
            blur,
            normalize: self.normalize(),
        };
        match self {
            Preset::Cifar => {
                base(RandomResizedCrop::new(32, (0.1, 1.0), Interpolation::Bilinear), 0.5, color, 0.2, None)
            }
            Preset::ImageNet => base(
                RandomResizedCrop::new(224, (0.08, 1.0), Interpolation::Bicubic),
                0.5,
                color,
                0.2,
                Some(((0.1, 2.0), 0.5)),
            ),
            Preset::FashionMnist => {
                base(RandomResizedCrop::new(28, (0.2, 1.0), Interpolation::Bilinear), 0.5, GRAY_JITTER, 0.0, None)
            }
            Preset::Digits => {
                base(RandomResizedCrop::new(8, (0.5, 1.0), Interpolation::Bilinear), 0.0, GRAY_JITTER, 0.0, None)
            }
        }
    }

    /// Multi-crop's small crops (SwAV, DINO): the global pipeline with a smaller, tighter
    /// random resized crop. ImageNet: SwAV's 96 pixels of 5–14 % of the image. The other sets
    /// scale that down: CIFAR 16 pixels of 5–14 %; Fashion-MNIST 12 pixels of 10–40 % and
    /// digits 4 pixels of 30–60 % (smaller parts of those images are background).
    pub fn small_crops(self) -> SimclrAugment {
        let (size, scale, interpolation) = match self {
            Preset::Cifar => (16, (0.05, 0.14), Interpolation::Bilinear),
            Preset::ImageNet => (96, (0.05, 0.14), Interpolation::Bicubic),
            Preset::FashionMnist => (12, (0.1, 0.4), Interpolation::Bilinear),
            Preset::Digits => (4, (0.3, 0.6), Interpolation::Bilinear),
        };
        SimclrAugment { crop: RandomResizedCrop::new(size, scale, interpolation), ..self.simclr() }
    }

    /// The probe's training-set transform (the weak augmentation, applied once).
    pub fn probe_train(self) -> EvalTransform {
        let normalize = self.normalize();
        match self {
            Preset::Cifar => EvalTransform::PaddedCrop { size: 32, padding: 4, flip: true, normalize },
            Preset::ImageNet => EvalTransform::ResizedCropFlip {
                crop: RandomResizedCrop::new(224, (0.08, 1.0), Interpolation::Bilinear),
                normalize,
            },
            Preset::FashionMnist => EvalTransform::PaddedCrop { size: 28, padding: 2, flip: true, normalize },
            Preset::Digits => EvalTransform::PaddedCrop { size: 8, padding: 1, flip: false, normalize },
        }
    }

    pub fn test(self) -> EvalTransform {
        match self {
            Preset::ImageNet => EvalTransform::ResizeCenterCrop { resize: 256, crop: 224, normalize: None },
            _ => EvalTransform::Plain { normalize: self.normalize() },
        }
    }
}
