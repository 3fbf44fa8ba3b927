//! Backbones: a small conv net for tiny images, and the reference's ResNets.
//!
//! All of them are one shape: a stem of conv+BN+ReLU units, optionally a max-pool, a list of
//! residual blocks, then global average pooling. The small net is a stem with no blocks.

use candle_core::Tensor;

use super::layers::{BatchNorm, Conv2d, ConvInit, Registry};
use super::{Branch, Mode, ModelError};

/// Which backbone to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    /// Three 3x3 conv+BN+ReLU units (32, 64, 128 channels; strides 1, 2, 2), 128-d features:
    /// enough for 8x8 digits and 28x28 Fashion-MNIST and fast on two CPU cores.
    SmallConv,
    /// ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), 512-d features.
    ResNet18Cifar,
    /// ResNet-50 with the ImageNet stem (7x7 conv stride 2, 3x3 max-pool), 2048-d features.
    ResNet50,
}

impl BackboneKind {
    /// Width of the pooled feature vector.
    pub fn feature_dim(self) -> usize {
        match self {
            BackboneKind::SmallConv => 128,
            BackboneKind::ResNet18Cifar => 512,
            BackboneKind::ResNet50 => 2048,
        }
    }
}

/// A convolution followed by BatchNorm, the unit every backbone is made of.
pub(crate) struct ConvBn {
    pub conv: Conv2d,
    bn: BatchNorm,
}

/// What every layer of one backbone shares at construction.
struct Builder<'a> {
    registry: &'a mut Registry,
    init: ConvInit,
    branches: usize,
}

impl Builder<'_> {
    /// A `kernel`x`kernel` conv with "same" padding (`kernel / 2`), then BatchNorm.
    fn unit(
        &mut self,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<ConvBn, ModelError> {
        let conv_name = format!("{name}.conv");
        let conv = Conv2d::new(
            self.registry,
            &conv_name,
            in_channels,
            out_channels,
            kernel,
            stride,
            kernel / 2,
            self.init,
            self.branches == 2,
        )?;
        let bn = BatchNorm::new(self.registry, &format!("{name}.bn"), out_channels, self.branches)?;
        Ok(ConvBn { conv, bn })
    }
}

impl ConvBn {
    /// `relu?(BN(conv(x)) + residual?)`: the add and the ReLU fuse into BatchNorm on the CPU.
    fn forward(
        &self,
        x: &Tensor,
        branch: Branch,
        mode: Mode,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor, ModelError> {
        self.bn.forward(&self.conv.forward(x, branch)?, branch, mode, residual, relu)
    }
}

/// A residual block: units with ReLU between them and none after the last, plus a shortcut
/// (identity or 1x1 conv+BN), then ReLU. Basic blocks have two 3x3 units, bottlenecks 1x1,
/// 3x3, 1x1 with the stride on the 3x3 (as in `resnet.py` and torchvision).
struct ResidualBlock {
    units: Vec<ConvBn>,
    shortcut: Option<ConvBn>,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor, branch: Branch, mode: Mode) -> Result<Tensor, ModelError> {
        let (last, inner) = self.units.split_last().ok_or_else(|| ModelError::Shape("a block without units".into()))?;
        let mut out = x.clone();
        for unit in inner {
            out = unit.forward(&out, branch, mode, None, true)?;
        }
        let identity = match &self.shortcut {
            Some(shortcut) => shortcut.forward(x, branch, mode, None, false)?,
            None => x.clone(),
        };
        last.forward(&out, branch, mode, Some(&identity), true)
    }
}

pub(crate) struct Backbone {
    stem: Vec<ConvBn>,
    /// ImageNet stem's 3x3 stride-2 max-pool with padding 1.
    stem_max_pool: bool,
    blocks: Vec<ResidualBlock>,
}

impl Backbone {
    pub fn new(
        registry: &mut Registry,
        kind: BackboneKind,
        in_channels: usize,
        init: ConvInit,
        branches: usize,
    ) -> Result<Self, ModelError> {
        let mut builder = Builder { registry, init, branches };
        let b = &mut builder;
        Ok(match kind {
            BackboneKind::SmallConv => Backbone {
                stem: vec![
                    b.unit("backbone.stem.0", in_channels, 32, 3, 1)?,
                    b.unit("backbone.stem.1", 32, 64, 3, 2)?,
                    b.unit("backbone.stem.2", 64, 128, 3, 2)?,
                ],
                stem_max_pool: false,
                blocks: Vec::new(),
            },
            BackboneKind::ResNet18Cifar => Backbone {
                stem: vec![b.unit("backbone.stem.0", in_channels, 64, 3, 1)?],
                stem_max_pool: false,
                blocks: resnet_stages(b, [2, 2, 2, 2], 1)?,
            },
            BackboneKind::ResNet50 => Backbone {
                stem: vec![b.unit("backbone.stem.0", in_channels, 64, 7, 2)?],
                stem_max_pool: true,
                blocks: resnet_stages(b, [3, 4, 6, 3], 4)?,
            },
        })
    }

    /// Pooled features `[N, feature_dim]` of images `[N, C, H, W]`. Inside, activations are
    /// channel-major `[C, N, H, W]`: the layout in which conv and BatchNorm are cheapest.
    pub fn forward(&self, x: &Tensor, branch: Branch, mode: Mode) -> Result<Tensor, ModelError> {
        let mut out = x.transpose(0, 1)?.contiguous()?;
        for unit in &self.stem {
            out = unit.forward(&out, branch, mode, None, true)?;
        }
        if self.stem_max_pool {
            out = max_pool_3x3_stride_2(&out)?;
        }
        for block in &self.blocks {
            out = block.forward(&out, branch, mode)?;
        }
        // Pooled in f32 (bf16 activations under `--precision bf16`): the features are f32.
        Ok(out.to_dtype(candle_core::DType::F32)?.mean((2, 3))?.t()?.contiguous()?)
    }

    /// Every conv layer, in construction order: the set SDCLR prunes globally.
    pub fn convs(&self) -> Vec<&Conv2d> {
        let mut convs: Vec<&Conv2d> = self.stem.iter().map(|unit| &unit.conv).collect();
        for block in &self.blocks {
            convs.extend(block.units.iter().map(|unit| &unit.conv));
            convs.extend(block.shortcut.iter().map(|unit| &unit.conv));
        }
        convs
    }
}

/// The four ResNet stages (64, 128, 256, 512 planes; stride 1, 2, 2, 2). `expansion` 1 builds
/// basic blocks, 4 bottlenecks.
/// `nn.MaxPool2d(3, stride=2, padding=1)` over the last two axes, composed of ops that candle
/// differentiates: candle's own max pool has no backward when its window and stride differ,
/// so a ResNet-50 could not train. The 3x3 maximum at every position is eight element-wise
/// maxima of shifted views; the stride keeps the even rows and columns, read through a reshape.
/// Zero padding equals PyTorch's -inf padding here: the input is post-ReLU, >= 0. Where a window
/// holds equal maxima, candle's maximum splits the gradient between them and PyTorch gives it to
/// one; post-ReLU such ties are zeros, whose gradient the ReLU stops either way.
pub(crate) fn max_pool_3x3_stride_2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (channels, batch, height, width) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut max = padded.narrow(2, 0, height)?.narrow(3, 0, width)?;
    for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))).skip(1) {
        max = max.maximum(&padded.narrow(2, dy, height)?.narrow(3, dx, width)?)?;
    }
    // Even sizes, so that rows and columns pair up; the added zero row or column is dropped.
    let max = max.pad_with_zeros(2, 0, height % 2)?.pad_with_zeros(3, 0, width % 2)?;
    let (rows, cols) = (height.div_ceil(2), width.div_ceil(2));
    max.reshape((channels, batch, rows, 2, cols, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((channels, batch, rows, cols))
}

fn resnet_stages(
    b: &mut Builder,
    blocks_per_stage: [usize; 4],
    expansion: usize,
) -> Result<Vec<ResidualBlock>, ModelError> {
    let mut blocks = Vec::new();
    let mut in_planes = 64;
    for (stage, (&count, planes)) in blocks_per_stage.iter().zip([64, 128, 256, 512]).enumerate() {
        for index in 0..count {
            let stride = if stage > 0 && index == 0 { 2 } else { 1 };
            let name = format!("backbone.layer{}.{index}", stage + 1);
            let out_planes = planes * expansion;
            let units = if expansion == 1 {
                vec![
                    b.unit(&format!("{name}.unit0"), in_planes, planes, 3, stride)?,
                    b.unit(&format!("{name}.unit1"), planes, planes, 3, 1)?,
                ]
            } else {
                vec![
                    b.unit(&format!("{name}.unit0"), in_planes, planes, 1, 1)?,
                    b.unit(&format!("{name}.unit1"), planes, planes, 3, stride)?,
                    b.unit(&format!("{name}.unit2"), planes, out_planes, 1, 1)?,
                ]
            };
            let shortcut = if stride != 1 || in_planes != out_planes {
                Some(b.unit(&format!("{name}.shortcut"), in_planes, out_planes, 1, stride)?)
            } else {
                None
            };
            blocks.push(ResidualBlock { units, shortcut });
            in_planes = out_planes;
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The composed pool equals candle's forward (even and odd sizes) and routes each window's
    /// gradient to its maximum, as PyTorch's does.
    #[test]
    fn the_stem_max_pool_matches_candles_forward_and_differentiates() {
        for size in [8, 7] {
            let x = Tensor::rand(0f32, 1.0, (2, 3, size, size), &Device::Cpu).unwrap();
            let want = x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
            let want = want.max_pool2d_with_stride(3, 2).unwrap();
            let got = max_pool_3x3_stride_2(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "size {size}");
            let var = Var::from_tensor(&x).unwrap();
            let grads = max_pool_3x3_stride_2(&var).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = grads.get(&var).unwrap();
            // Each output's unit gradient lands on one input, the window's maximum.
            let total = grad.sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(total, got.elem_count() as f32, "size {size}");
            let picked = (grad.ne(0f32).unwrap().to_dtype(candle_core::DType::F32).unwrap() * &x).unwrap();
            let maxima = picked.max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(maxima, x.max_all().unwrap().to_scalar::<f32>().unwrap());
        }
    }
}
