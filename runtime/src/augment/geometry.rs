//! Crops, resizes and flips with torchvision's semantics.

use super::resample::{resample_region, Interpolation};
use super::{uniform, AugmentRng};
use crate::image::Image;
use rand::Rng;

/// A crop in pixel coordinates; always inside the image it was sampled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Python's `round` (half to even), which torchvision's box sizes go through.
fn round_half_even(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// torchvision's `RandomResizedCrop`: a box covering `scale` of the area with aspect ratio in
/// `ratio` (log-uniform), resized to `size x size`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    pub size: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub interpolation: Interpolation,
}

impl RandomResizedCrop {
    /// With torchvision's default ratio range 3/4..4/3.
    pub fn new(size: usize, scale: (f64, f64), interpolation: Interpolation) -> RandomResizedCrop {
        RandomResizedCrop { size, scale, ratio: (3.0 / 4.0, 4.0 / 3.0), interpolation }
    }

    /// Up to 10 draws of area and log-ratio; a box that fits is taken at a uniform position.
    /// If none fits, the largest centred box whose ratio is clamped into range.
    pub fn sample_box(&self, height: usize, width: usize, rng: &mut AugmentRng) -> CropBox {
        let area = (height * width) as f64;
        let (log_low, log_high) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_low, log_high).exp();
            let w = round_half_even((target_area * aspect).sqrt());
            let h = round_half_even((target_area / aspect).sqrt());
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return CropBox { top, left, height: h, width: w };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (h, w) = if in_ratio < self.ratio.0 {
            (round_half_even(width as f64 / self.ratio.0).min(height), width)
        } else if in_ratio > self.ratio.1 {
            (height, round_half_even(height as f64 * self.ratio.1).min(width))
        } else {
            (height, width)
        };
        CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
    }

    pub fn apply(&self, image: &Image, rng: &mut AugmentRng) -> Image {
        let crop = self.sample_box(image.height(), image.width(), rng);
        resized_crop(image, crop, self.size, self.size, self.interpolation)
    }
}

/// Crops `crop` and resizes it to `out_height x out_width` (torchvision's `resized_crop`).
pub fn resized_crop(
    image: &Image,
    crop: CropBox,
    out_height: usize,
    out_width: usize,
    interpolation: Interpolation,
) -> Image {
    let region = [crop.left as f64, crop.top as f64, (crop.left + crop.width) as f64, (crop.top + crop.height) as f64];
    resample_region(image, region, out_height, out_width, interpolation)
}

pub fn horizontal_flip(image: &Image) -> Image {
    let mut out = image.clone();
    let width = image.width();
    for c in 0..image.channels() {
        for row in out.plane_mut(c).chunks_exact_mut(width) {
            row.reverse();
        }
    }
    out
}

/// `crop` of `image`, where the box may reach `padding` pixels outside it (zero fill).
fn padded_crop(image: &Image, top: isize, left: isize, height: usize, width: usize) -> Image {
    let mut out = Image::filled(image.channels(), height, width, 0.0);
    for c in 0..image.channels() {
        for y in 0..height {
            let source_y = top + y as isize;
            if source_y < 0 || source_y >= image.height() as isize {
                continue;
            }
            for x in 0..width {
                let source_x = left + x as isize;
                if source_x >= 0 && source_x < image.width() as isize {
                    out.set(c, y, x, image.get(c, source_y as usize, source_x as usize));
                }
            }
        }
    }
    out
}

/// torchvision's `RandomCrop(size, padding)` with zero padding: a uniform `size x size` window
/// of the padded image.
pub fn random_crop_padded(image: &Image, size: usize, padding: usize, rng: &mut AugmentRng) -> Image {
    let top = rng.random_range(0..=(image.height() + 2 * padding).saturating_sub(size)) as isize - padding as isize;
    let left = rng.random_range(0..=(image.width() + 2 * padding).saturating_sub(size)) as isize - padding as isize;
    padded_crop(image, top, left, size, size)
}

/// torchvision's `Resize(size)` for an int: the shorter side becomes `size`, the longer keeps
/// the aspect ratio (truncated).
pub fn resize_shorter(image: &Image, size: usize, interpolation: Interpolation) -> Image {
    let (h, w) = (image.height(), image.width());
    let (out_h, out_w) = if h <= w { (size, size * w / h) } else { (size * h / w, size) };
    if (out_h, out_w) == (h, w) {
        return image.clone();
    }
    resample_region(image, [0.0, 0.0, w as f64, h as f64], out_h, out_w, interpolation)
}

/// torchvision's `CenterCrop(size)`: offsets rounded half to even, zero padding if smaller.
pub fn center_crop(image: &Image, size: usize) -> Image {
    let top = ((image.height() as f64 - size as f64) / 2.0).round_ties_even() as isize;
    let left = ((image.width() as f64 - size as f64) / 2.0).round_ties_even() as isize;
    padded_crop(image, top, left, size, size)
}
