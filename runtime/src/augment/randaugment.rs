//! BCL's RandAugment (METHOD.md §BCL; the reference's `RandAugment_prob` with one operation):
//! draw one of 15 operations uniformly, apply it with probability `p` at magnitude
//! `strength / 30` of its range (`strength` on the 0..30 scale). The reference runs these PIL
//! operations on 8-bit images, so the photometric ones here work on 8-bit levels with PIL's
//! lookup tables and truncating blends; the geometric ones resample nearest with black fill.

use super::{chance, uniform, AugmentRng};
use crate::image::Image;
use rand::Rng;

/// The top of the strength scale.
pub const MAX_STRENGTH: f64 = 30.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandAugmentOp {
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    AutoContrast,
    Invert,
    Equalize,
    Solarize,
    Posterize,
    Contrast,
    Color,
    Brightness,
    Sharpness,
    Cutout,
}

impl RandAugmentOp {
    /// In the reference's list order, which the uniform draw indexes.
    pub const ALL: [RandAugmentOp; 15] = [
        RandAugmentOp::ShearX,
        RandAugmentOp::ShearY,
        RandAugmentOp::TranslateX,
        RandAugmentOp::TranslateY,
        RandAugmentOp::Rotate,
        RandAugmentOp::AutoContrast,
        RandAugmentOp::Invert,
        RandAugmentOp::Equalize,
        RandAugmentOp::Solarize,
        RandAugmentOp::Posterize,
        RandAugmentOp::Contrast,
        RandAugmentOp::Color,
        RandAugmentOp::Brightness,
        RandAugmentOp::Sharpness,
        RandAugmentOp::Cutout,
    ];

    /// The magnitude at strength 0 and at strength 30. Shear is a slope, translation and
    /// cutout fractions of the width/height, rotation degrees, solarize a level threshold,
    /// posterize bits kept, the enhancers PIL enhance factors; the rest take no magnitude.
    pub fn range(self) -> (f64, f64) {
        match self {
            RandAugmentOp::ShearX | RandAugmentOp::ShearY => (0.0, 0.6),
            RandAugmentOp::TranslateX | RandAugmentOp::TranslateY => (0.0, 0.66),
            RandAugmentOp::Rotate => (0.0, 60.0),
            RandAugmentOp::AutoContrast | RandAugmentOp::Invert | RandAugmentOp::Equalize => (0.0, 1.0),
            RandAugmentOp::Solarize => (0.0, 110.0),
            RandAugmentOp::Posterize => (4.0, 8.0),
            RandAugmentOp::Contrast | RandAugmentOp::Color | RandAugmentOp::Brightness | RandAugmentOp::Sharpness => {
                (0.1, 1.9)
            }
            RandAugmentOp::Cutout => (0.0, 0.4),
        }
    }

    /// `strength / 30` of the way through [`RandAugmentOp::range`].
    pub fn magnitude(self, strength: f64) -> f64 {
        let (low, high) = self.range();
        strength / MAX_STRENGTH * (high - low) + low
    }

    /// Applies the operation at `magnitude`; shear, translation and rotation flip its sign
    /// with probability 1/2, cutout draws its centre.
    pub fn apply(self, image: &Image, magnitude: f64, rng: &mut AugmentRng) -> Image {
        let mut signed = || if rng.random::<f64>() > 0.5 { -magnitude } else { magnitude };
        let (w, h) = (image.width() as f64, image.height() as f64);
        match self {
            RandAugmentOp::ShearX => affine_nearest(image, [1.0, signed(), 0.0, 0.0, 1.0, 0.0]),
            RandAugmentOp::ShearY => affine_nearest(image, [1.0, 0.0, 0.0, signed(), 1.0, 0.0]),
            RandAugmentOp::TranslateX => affine_nearest(image, [1.0, 0.0, signed() * w, 0.0, 1.0, 0.0]),
            RandAugmentOp::TranslateY => affine_nearest(image, [1.0, 0.0, 0.0, 0.0, 1.0, signed() * h]),
            RandAugmentOp::Rotate => rotate(image, signed()),
            RandAugmentOp::AutoContrast => map_levels(image, autocontrast_table),
            RandAugmentOp::Invert => map_levels(image, |_| std::array::from_fn(|i| 255 - i as u8)),
            RandAugmentOp::Equalize => map_levels(image, equalize_table),
            RandAugmentOp::Solarize => map_levels(image, |_| {
                std::array::from_fn(|i| if (i as f64) < magnitude { i as u8 } else { 255 - i as u8 })
            }),
            RandAugmentOp::Posterize => {
                let bits = (magnitude as u32).clamp(1, 8);
                let mask = !((1u16 << (8 - bits)) - 1) as u8;
                map_levels(image, |_| std::array::from_fn(|i| i as u8 & mask))
            }
            RandAugmentOp::Contrast => {
                let levels = Levels::of(image);
                let luma = levels.luma();
                let mean = (luma.iter().map(|&v| f64::from(v)).sum::<f64>() / luma.len().max(1) as f64 + 0.5) as u8;
                levels.blend_from(|_, _| mean, magnitude).into_image()
            }
            RandAugmentOp::Color => {
                let levels = Levels::of(image);
                let luma = levels.luma();
                levels.blend_from(|_, i| luma[i], magnitude).into_image()
            }
            RandAugmentOp::Brightness => Levels::of(image).blend_from(|_, _| 0, magnitude).into_image(),
            RandAugmentOp::Sharpness => {
                let levels = Levels::of(image);
                let smooth = levels.smoothed();
                levels.blend_from(|c, i| smooth[c][i], magnitude).into_image()
            }
            RandAugmentOp::Cutout => cutout(image, magnitude * w, rng),
        }
    }
}

/// One BCL RandAugment draw: an operation chosen uniformly, applied with probability `p` at
/// `strength` (0..30). The draw of the operation comes first, as in the reference.
pub fn rand_augment(image: Image, p: f64, strength: f64, rng: &mut AugmentRng) -> Image {
    let op = RandAugmentOp::ALL[rng.random_range(0..RandAugmentOp::ALL.len())];
    if chance(rng, p) {
        op.apply(&image, op.magnitude(strength), rng)
    } else {
        image
    }
}

/// PIL's `Image.transform(AFFINE, (a, b, c, d, e, f))` with nearest sampling: output pixel
/// `(x, y)` takes the input pixel containing `(a x' + b y' + c, d x' + e y' + f)` for the pixel
/// centre `(x', y') = (x + 1/2, y + 1/2)`; outside the image is black.
fn affine_nearest(image: &Image, m: [f64; 6]) -> Image {
    let (h, w) = (image.height(), image.width());
    let mut out = Image::filled(image.channels(), h, w, 0.0);
    for y in 0..h {
        for x in 0..w {
            let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
            let (sx, sy) = ((m[0] * cx + m[1] * cy + m[2]).floor(), (m[3] * cx + m[4] * cy + m[5]).floor());
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < w && (sy as usize) < h {
                for c in 0..image.channels() {
                    out.set(c, y, x, image.get(c, sy as usize, sx as usize));
                }
            }
        }
    }
    out
}

/// PIL's `Image.rotate(degrees)`: counter-clockwise about the centre, same size.
fn rotate(image: &Image, degrees: f64) -> Image {
    let angle = -degrees.to_radians();
    let (cos, sin) = (angle.cos(), angle.sin());
    let (cx, cy) = (image.width() as f64 / 2.0, image.height() as f64 / 2.0);
    affine_nearest(image, [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy])
}

/// The reference's `Cutout`: a `side x side` square (PIL rectangle, corners inclusive) at a
/// centre drawn by `np.random.uniform(size)` (i.e. in `[1, size]`), filled with gray
/// (125, 123, 114); its luma 123 on 1-channel images.
fn cutout(image: &Image, side: f64, rng: &mut AugmentRng) -> Image {
    if side <= 0.0 {
        return image.clone();
    }
    let (w, h) = (image.width() as f64, image.height() as f64);
    let (x_centre, y_centre) = (uniform(rng, w, 1.0), uniform(rng, h, 1.0));
    let x0 = (x_centre - side / 2.0).max(0.0).trunc();
    let y0 = (y_centre - side / 2.0).max(0.0).trunc();
    let x1 = (x0 + side).min(w).trunc().min(w - 1.0);
    let y1 = (y0 + side).min(h).trunc().min(h - 1.0);
    let fill: &[f32] = if image.channels() == 3 { &[125.0, 123.0, 114.0] } else { &[123.0] };
    let mut out = image.clone();
    for c in 0..image.channels() {
        for y in y0 as usize..=y1 as usize {
            for x in x0 as usize..=x1 as usize {
                out.set(c, y, x, fill[c.min(fill.len() - 1)] / 255.0);
            }
        }
    }
    out
}

/// An image as 8-bit levels, per channel.
struct Levels {
    height: usize,
    width: usize,
    planes: Vec<Vec<u8>>,
}

impl Levels {
    fn of(image: &Image) -> Levels {
        let planes = (0..image.channels())
            .map(|c| image.plane(c).iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect())
            .collect();
        Levels { height: image.height(), width: image.width(), planes }
    }

    fn into_image(self) -> Image {
        let data = self.planes.concat();
        Image::from_chw_levels(self.planes.len(), self.height, self.width, &data, 255.0)
    }

    /// PIL's `convert("L")`: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
    fn luma(&self) -> Vec<u8> {
        if self.planes.len() != 3 {
            return self.planes[0].clone();
        }
        let [r, g, b] = [&self.planes[0], &self.planes[1], &self.planes[2]];
        (0..r.len())
            .map(|i| {
                ((19595 * u32::from(r[i]) + 38470 * u32::from(g[i]) + 7471 * u32::from(b[i]) + 0x8000) >> 16) as u8
            })
            .collect()
    }

    /// PIL's `Image.blend(degenerate, image, factor)`: `d + f (v - d)`, clipped and truncated.
    fn blend_from(mut self, degenerate: impl Fn(usize, usize) -> u8, factor: f64) -> Levels {
        for (c, plane) in self.planes.iter_mut().enumerate() {
            for (i, value) in plane.iter_mut().enumerate() {
                let d = f64::from(degenerate(c, i));
                *value = (d + factor * (f64::from(*value) - d)).clamp(0.0, 255.0) as u8;
            }
        }
        self
    }

    /// PIL's `ImageFilter.SMOOTH` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13, rounded);
    /// border pixels keep their value.
    fn smoothed(&self) -> Vec<Vec<u8>> {
        let (h, w) = (self.height, self.width);
        self.planes
            .iter()
            .map(|plane| {
                let mut out = plane.clone();
                for y in 1..h.saturating_sub(1) {
                    for x in 1..w.saturating_sub(1) {
                        let mut sum = 4 * u32::from(plane[y * w + x]);
                        for dy in 0..3 {
                            for dx in 0..3 {
                                sum += u32::from(plane[(y + dy - 1) * w + x + dx - 1]);
                            }
                        }
                        out[y * w + x] = (f64::from(sum) / 13.0 + 0.5).min(255.0) as u8;
                    }
                }
                out
            })
            .collect()
    }
}

/// Applies a per-channel lookup table built from that channel's levels.
fn map_levels(image: &Image, table: impl Fn(&[u8]) -> [u8; 256]) -> Image {
    let mut levels = Levels::of(image);
    for plane in &mut levels.planes {
        let lut = table(plane);
        plane.iter_mut().for_each(|v| *v = lut[usize::from(*v)]);
    }
    levels.into_image()
}

fn histogram(levels: &[u8]) -> [usize; 256] {
    let mut counts = [0; 256];
    levels.iter().for_each(|&v| counts[usize::from(v)] += 1);
    counts
}

/// PIL's `ImageOps.autocontrast()`: stretch `[min, max]` to `[0, 255]`, truncating.
fn autocontrast_table(levels: &[u8]) -> [u8; 256] {
    let (low, high) = (levels.iter().min().copied().unwrap_or(0), levels.iter().max().copied().unwrap_or(255));
    if high <= low {
        return std::array::from_fn(|i| i as u8);
    }
    let scale = 255.0 / f64::from(high - low);
    let offset = -f64::from(low) * scale;
    std::array::from_fn(|i| (i as f64 * scale + offset).clamp(0.0, 255.0) as u8)
}

/// PIL's `ImageOps.equalize()`: the cumulative histogram in steps of
/// `(count - count of the top level) / 255`.
fn equalize_table(levels: &[u8]) -> [u8; 256] {
    let counts = histogram(levels);
    let identity = std::array::from_fn(|i| i as u8);
    let present: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
    if present.len() <= 1 {
        return identity;
    }
    let step = (present.iter().sum::<usize>() - present[present.len() - 1]) / 255;
    if step == 0 {
        return identity;
    }
    let mut table = [0u8; 256];
    let mut running = step / 2;
    for (level, entry) in table.iter_mut().enumerate() {
        *entry = (running / step).min(255) as u8;
        running += counts[level];
    }
    table
}
