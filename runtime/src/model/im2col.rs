//! im2col and its adjoint col2im as candle custom ops on the CPU. Building the patch matrix
//! from candle's slicing ops costs nine zero-padded full-size temporaries per 3x3 conv in the
//! backward pass; these two loops write each value once.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of one convolution over channel-major input `[C, N, H, W]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Patches {
    pub channels: usize,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Patches {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Rows of the patch matrix: one per (channel, ky, kx), in the weight's `[O, C, K, K]` order.
    fn rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Columns of the patch matrix: one per (image, oy, ox).
    fn columns(&self) -> usize {
        self.batch * self.out_height() * self.out_width()
    }

    /// Input coordinate read by output coordinate `out` at kernel offset `offset`, if inside.
    fn source(&self, out: usize, offset: usize, size: usize) -> Option<usize> {
        (out * self.stride + offset).checked_sub(self.padding).filter(|&position| position < size)
    }

    /// Calls `visit(patch_position, input_position)` for every input pixel that kernel offset
    /// `(ky, kx)` reads in image `n`; positions index one channel's slice of each side.
    fn for_each_pair(&self, n: usize, ky: usize, kx: usize, mut visit: impl FnMut(usize, usize)) {
        let (out_height, out_width) = (self.out_height(), self.out_width());
        for oy in 0..out_height {
            let Some(iy) = self.source(oy, ky, self.height) else { continue };
            let patch_row = (n * out_height + oy) * out_width;
            let input_row = (n * self.height + iy) * self.width;
            for ox in 0..out_width {
                if let Some(ix) = self.source(ox, kx, self.width) {
                    visit(patch_row + ox, input_row + ix);
                }
            }
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op} needs a contiguous input")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// `[C, N, H, W]` to the patch matrix `[C*K*K, N*OH*OW]` (zero where a patch overhangs).
pub(crate) struct Im2Col(pub Patches);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let input = contiguous_f32(storage, layout, self.name())?;
        let plane = p.batch * p.height * p.width;
        let mut patches = vec![0f32; p.rows() * p.columns()];
        patches.par_chunks_mut(p.columns()).enumerate().for_each(|(row, out)| {
            let (channel, ky, kx) = (row / (p.kernel * p.kernel), row / p.kernel % p.kernel, row % p.kernel);
            let source = &input[channel * plane..(channel + 1) * plane];
            for n in 0..p.batch {
                p.for_each_pair(n, ky, kx, |patch, pixel| out[patch] = source[pixel]);
            }
        });
        Ok((CpuStorage::F32(patches), Shape::from((p.rows(), p.columns()))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: sums each patch entry back onto the pixel it was read from.
struct Col2Im(Patches);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let patches = contiguous_f32(storage, layout, self.name())?;
        let plane = p.batch * p.height * p.width;
        let mut image = vec![0f32; p.channels * plane];
        // One task per channel: each owns its output plane, so the sums need no locking and
        // always run in the same order.
        image.par_chunks_mut(plane).enumerate().for_each(|(channel, out)| {
            for ky in 0..p.kernel {
                for kx in 0..p.kernel {
                    let row = (channel * p.kernel + ky) * p.kernel + kx;
                    let source = &patches[row * p.columns()..(row + 1) * p.columns()];
                    for n in 0..p.batch {
                        p.for_each_pair(n, ky, kx, |patch, pixel| out[pixel] += source[patch]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(image), Shape::from((p.channels, p.batch, p.height, p.width))))
    }
}
