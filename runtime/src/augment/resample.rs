//! Resampling a region of an image to a new size the way PIL's `Image.resize(size, filter, box)`
//! does (what torchvision's transforms call on PIL images): a separable convolution whose
//! filter support widens by the downscaling factor, so shrinking antialiases instead of
//! skipping pixels. Results are clamped to `[0, 1]` as PIL's 8-bit output is.

use crate::image::Image;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Triangle filter, support 1 (torchvision's default, `interpolation=2`).
    Bilinear,
    /// Keys cubic with `a = -0.5`, support 2 (`interpolation=3`).
    Bicubic,
}

impl Interpolation {
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// For each output position along one axis: the first input index and the normalised weights.
fn axis_weights(
    start: f64,
    end: f64,
    input: usize,
    output: usize,
    interpolation: Interpolation,
) -> Vec<(usize, Vec<f32>)> {
    let scale = (end - start) / output as f64;
    let filter_scale = scale.max(1.0);
    let support = interpolation.support() * filter_scale;
    (0..output)
        .map(|o| {
            let center = start + (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5).floor().max(0.0) as usize).min(input - 1);
            let last = ((center + support + 0.5).floor() as usize).clamp(first + 1, input);
            let raw: Vec<f64> =
                (first..last).map(|i| interpolation.weight((i as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = raw.iter().sum();
            let weights = raw.iter().map(|w| if total == 0.0 { 0.0 } else { (w / total) as f32 }).collect();
            (first, weights)
        })
        .collect()
}

/// Resamples the region `[left, right) x [top, bottom)` (pixel-edge coordinates, may be
/// fractional) of `image` to `out_height x out_width`.
pub fn resample_region(
    image: &Image,
    region: [f64; 4],
    out_height: usize,
    out_width: usize,
    interpolation: Interpolation,
) -> Image {
    let [left, top, right, bottom] = region;
    if image.width() == 0 || image.height() == 0 {
        // No pixel to read (decoders refuse such files, but an image of no pixels must not
        // bring a loader thread down): the output is black.
        return Image::filled(image.channels(), out_height, out_width, 0.0);
    }
    let columns = axis_weights(left, right, image.width(), out_width, interpolation);
    let rows = axis_weights(top, bottom, image.height(), out_height, interpolation);
    let first_row = rows.iter().map(|(first, _)| *first).min().unwrap_or(0);
    let last_row = rows.iter().map(|(first, w)| first + w.len()).max().unwrap_or(0);
    let mut out = Image::filled(image.channels(), out_height, out_width, 0.0);
    let mut horizontal = vec![0.0f32; (last_row - first_row) * out_width];
    for c in 0..image.channels() {
        let plane = image.plane(c);
        for y in first_row..last_row {
            let row = &plane[y * image.width()..(y + 1) * image.width()];
            for (x, (first, weights)) in columns.iter().enumerate() {
                horizontal[(y - first_row) * out_width + x] =
                    weights.iter().zip(&row[*first..]).map(|(w, v)| w * v).sum();
            }
        }
        let out_plane = out.plane_mut(c);
        for (y, (first, weights)) in rows.iter().enumerate() {
            for x in 0..out_width {
                let value: f32 = weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * horizontal[(first + k - first_row) * out_width + x])
                    .sum();
                out_plane[y * out_width + x] = value.clamp(0.0, 1.0);
            }
        }
    }
    out
}
