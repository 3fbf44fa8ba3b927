//! Photometric augmentations with torchvision's float-tensor semantics: `blend(a, b, f) =
//! clamp(f * a + (1 - f) * b, 0, 1)`; grayscale uses ITU-R 601 luma weights.

use super::{uniform, AugmentRng};
use crate::image::Image;
use rand::seq::SliceRandom;

pub const LUMA_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// The luma plane of an RGB image; a 1-channel image is its own luma.
pub fn luma(image: &Image) -> Vec<f32> {
    if image.channels() != 3 {
        return image.plane(0).to_vec();
    }
    let (r, g, b) = (image.plane(0), image.plane(1), image.plane(2));
    (0..r.len()).map(|i| LUMA_WEIGHTS[0] * r[i] + LUMA_WEIGHTS[1] * g[i] + LUMA_WEIGHTS[2] * b[i]).collect()
}

/// The luma replicated to every channel (torchvision's `Grayscale(num_output_channels=C)`).
pub fn to_grayscale(image: &Image) -> Image {
    let gray = luma(image);
    let mut out = image.clone();
    for c in 0..image.channels() {
        out.plane_mut(c).copy_from_slice(&gray);
    }
    out
}

/// `factor * image + (1 - factor) * other(channel, position)`, clamped to `[0, 1]`.
fn blend(image: &Image, factor: f32, other: impl Fn(usize, usize) -> f32) -> Image {
    let mut out = image.clone();
    for c in 0..image.channels() {
        for (i, value) in out.plane_mut(c).iter_mut().enumerate() {
            *value = (factor * *value + (1.0 - factor) * other(c, i)).clamp(0.0, 1.0);
        }
    }
    out
}

/// Blends with black.
pub fn adjust_brightness(image: &Image, factor: f32) -> Image {
    blend(image, factor, |_, _| 0.0)
}

/// Blends with the mean luma of the whole image.
pub fn adjust_contrast(image: &Image, factor: f32) -> Image {
    let gray = luma(image);
    let mean = gray.iter().sum::<f32>() / gray.len().max(1) as f32;
    blend(image, factor, |_, _| mean)
}

/// Blends with the image's own luma; a no-op for 1-channel images.
pub fn adjust_saturation(image: &Image, factor: f32) -> Image {
    if image.channels() != 3 {
        return image.clone();
    }
    let gray = luma(image);
    blend(image, factor, |_, i| gray[i])
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    if chroma == 0.0 {
        return (0.0, 0.0, max);
    }
    let saturation = chroma / max;
    let (rc, gc, bc) = ((max - r) / chroma, (max - g) / chroma, (max - b) / chroma);
    let hue = if max == r {
        bc - gc
    } else if max == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((hue / 6.0 + 1.0) % 1.0, saturation, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let sector = (h * 6.0).floor();
    let f = h * 6.0 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Rotates the hue by `shift` turns (in `[-0.5, 0.5]`) in HSV; a no-op for 1-channel images.
pub fn adjust_hue(image: &Image, shift: f32) -> Image {
    if image.channels() != 3 {
        return image.clone();
    }
    let mut out = image.clone();
    let size = image.height() * image.width();
    let data = out.data_mut();
    for i in 0..size {
        let (h, s, v) = rgb_to_hsv(data[i], data[size + i], data[2 * size + i]);
        let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        data[i] = r;
        data[size + i] = g;
        data[2 * size + i] = b;
    }
    out
}

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)`: factors drawn from
/// `[max(0, 1 - x), 1 + x]` (hue from `[-h, h]`), applied in a random order. A zero strength
/// is left out entirely, as torchvision's `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    pub fn apply(&self, image: Image, rng: &mut AugmentRng) -> Image {
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |strength: f32| {
            (strength > 0.0)
                .then(|| uniform(rng, f64::from((1.0 - strength).max(0.0)), f64::from(1.0 + strength)) as f32)
        };
        let factors = [factor(self.brightness), factor(self.contrast), factor(self.saturation)];
        let hue = (self.hue > 0.0).then(|| uniform(rng, -f64::from(self.hue), f64::from(self.hue)) as f32);
        order.iter().fold(image, |image, &op| {
            let factor = if op < 3 { factors[op] } else { hue };
            match (op, factor) {
                (_, None) => image,
                (0, Some(f)) => adjust_brightness(&image, f),
                (1, Some(f)) => adjust_contrast(&image, f),
                (2, Some(f)) => adjust_saturation(&image, f),
                (_, Some(shift)) => adjust_hue(&image, shift),
            }
        })
    }
}

/// Convolves every channel with a normalised Gaussian of standard deviation `sigma` pixels
/// (radius `ceil(3 sigma)`), edges extended. The reference uses PIL's `GaussianBlur(radius=
/// sigma)`, which approximates this same Gaussian with three box blurs.
pub fn gaussian_blur(image: &Image, sigma: f32) -> Image {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|k| (-((k * k) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let (h, w) = (image.height() as isize, image.width() as isize);
    let mut out = image.clone();
    let mut temp = vec![0.0f32; (h * w) as usize];
    for c in 0..image.channels() {
        let plane = image.plane(c);
        for y in 0..h {
            for x in 0..w {
                temp[(y * w + x) as usize] = (-radius..=radius)
                    .map(|k| kernel[(k + radius) as usize] * plane[(y * w + (x + k).clamp(0, w - 1)) as usize])
                    .sum();
            }
        }
        let out_plane = out.plane_mut(c);
        for y in 0..h {
            for x in 0..w {
                out_plane[(y * w + x) as usize] = (-radius..=radius)
                    .map(|k| kernel[(k + radius) as usize] * temp[((y + k).clamp(0, h - 1) * w + x) as usize])
                    .sum();
            }
        }
    }
    out
}

/// The reference's SimCLR blur: sigma uniform in `[low, high]`.
pub fn random_gaussian_blur(image: &Image, sigma: (f32, f32), rng: &mut AugmentRng) -> Image {
    gaussian_blur(image, uniform(rng, f64::from(sigma.0), f64::from(sigma.1)) as f32)
}

/// Per-channel `(x - mean) / std`, the last step before a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    pub fn apply(&self, mut image: Image) -> Image {
        for c in 0..image.channels() {
            let (mean, std) = (self.mean[c], self.std[c]);
            image.plane_mut(c).iter_mut().for_each(|v| *v = (*v - mean) / std);
        }
        image
    }

    /// Undoes [`Normalize::apply`] (for looking at augmented views).
    pub fn invert(&self, mut image: Image) -> Image {
        for c in 0..image.channels() {
            let (mean, std) = (self.mean[c], self.std[c]);
            image.plane_mut(c).iter_mut().for_each(|v| *v = *v * std + mean);
        }
        image
    }
}
