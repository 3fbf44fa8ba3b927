//! A decoded image as the data side sees it: `f32` planes, channel-major `(C, H, W)`, values in
//! `[0, 1]` until [`crate::augment::Normalize`] runs. Channel-major storage is what candle's
//! `[B, C, H, W]` batches need, so a batch is a plain concatenation of image buffers.

use candle_core::{Device, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    channels: usize,
    height: usize,
    width: usize,
    /// `data[(c * height + y) * width + x]`.
    data: Vec<f32>,
}

impl Image {
    /// An image from channel-major data; `data.len()` must be `channels * height * width`.
    pub fn from_chw(channels: usize, height: usize, width: usize, data: Vec<f32>) -> Image {
        assert_eq!(
            data.len(),
            channels * height * width,
            "Image::from_chw: buffer size does not match {channels}x{height}x{width}"
        );
        Image { channels, height, width, data }
    }

    pub fn filled(channels: usize, height: usize, width: usize, value: f32) -> Image {
        Image::from_chw(channels, height, width, vec![value; channels * height * width])
    }

    /// Channel-major integer samples scaled by `1 / max_value` (255 for 8-bit files, 16 for the
    /// UCI digits), as torchvision's `ToTensor` does for 8-bit images.
    pub fn from_chw_levels(channels: usize, height: usize, width: usize, levels: &[u8], max_value: f32) -> Image {
        Image::from_chw(channels, height, width, levels.iter().map(|&v| f32::from(v) / max_value).collect())
    }

    /// Interleaved 8-bit RGB (`image::RgbImage`'s layout) to channel-major `[0, 1]` planes.
    pub fn from_rgb8_interleaved(height: usize, width: usize, pixels: &[u8]) -> Image {
        assert_eq!(
            pixels.len(),
            3 * height * width,
            "Image::from_rgb8_interleaved: buffer is not {height}x{width} RGB"
        );
        let plane = height * width;
        let mut data = vec![0.0; 3 * plane];
        for (i, rgb) in pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + i] = f32::from(rgb[c]) / 255.0;
            }
        }
        Image::from_chw(3, height, width, data)
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }

    pub fn set(&mut self, c: usize, y: usize, x: usize, value: f32) {
        self.data[(c * self.height + y) * self.width + x] = value;
    }

    /// One channel's `H * W` samples, row-major.
    pub fn plane(&self, c: usize) -> &[f32] {
        let size = self.height * self.width;
        &self.data[c * size..(c + 1) * size]
    }

    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let size = self.height * self.width;
        &mut self.data[c * size..(c + 1) * size]
    }
}

/// Stacks same-shaped images into one `[B, C, H, W]` f32 tensor.
pub fn images_to_batch(images: &[Image], device: &Device) -> candle_core::Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(candle_core::Error::Msg("images_to_batch: an empty batch has no shape".into()));
    };
    let shape = (first.channels, first.height, first.width);
    let mut data = Vec::with_capacity(images.len() * first.data.len());
    for image in images {
        if (image.channels, image.height, image.width) != shape {
            return Err(candle_core::Error::Msg(format!(
                "images_to_batch: image of shape {:?} in a batch of shape {shape:?}",
                (image.channels, image.height, image.width)
            )));
        }
        data.extend_from_slice(&image.data);
    }
    crate::device::upload(data, &[images.len(), shape.0, shape.1, shape.2], device)
}
