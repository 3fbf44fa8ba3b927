//! 2-d convolution of channel-major activations on the CPU as one candle custom op: forward
//! and both backward products go straight to the `gemm` crate, over the patch matrix of a few
//! images at a time built in a reused workspace (im2col) and summed back (col2im).
//!
//! The composition it replaced (an im2col op, reshapes and candle's matmul) kept an
//! activation-sized patch matrix per conv alive for the backward pass, and candle's backward
//! allocated a zeroed gradient for every node and added into it single-threaded: for ResNet-18
//! on 32x32 images, about a hundred megabytes per 3x3 conv of the first stage, each way.
//! A 1x1 stride-1 conv needs no patch matrix: it is the channel-major input itself.
//!
//! Results do not depend on the number of threads: the chunks of images run in a fixed order,
//! col2im sums per channel in a fixed order, and `gemm` splits its work over the output only.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Patch-matrix entries per chunk of images (16 MiB of f32): big enough for `gemm` to run at
/// full speed, small enough to stay in the last-level cache's neighbourhood. Unit tests use
/// tiny chunks, so that their small images still span several.
const CHUNK_ENTRIES: usize = if cfg!(test) { 64 } else { 1 << 22 };

thread_local! {
    /// The patch matrix of one chunk, allocated once per thread and size.
    static WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's workspace (a fresh one if it is in use further up the stack).
fn with_workspace<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut workspace) => f(&mut workspace),
        Err(_) => f(&mut Vec::new()),
    })
}

pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{op} needs a contiguous input")))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Geometry of one convolution over channel-major input `[C, N, H, W]` with weight `[O, C, K, K]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Patches {
    pub channels: usize,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_channels: usize,
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

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }

    fn in_plane(&self) -> usize {
        self.height * self.width
    }

    /// Whether the patch matrix is the input itself (a 1x1 conv, stride 1, no padding).
    fn pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Images per chunk: a fixed count for a shape, whatever the number of threads.
    fn chunk(&self) -> usize {
        (CHUNK_ENTRIES / (self.rows() * self.out_plane()).max(1)).clamp(1, self.batch.max(1))
    }

    /// Input coordinate read by output coordinate `out` at kernel offset `offset`, if inside.
    fn source(&self, out: usize, offset: usize, size: usize) -> Option<usize> {
        (out * self.stride + offset).checked_sub(self.padding).filter(|&position| position < size)
    }

    /// The output coordinates whose input at kernel offset `offset` lies inside an axis of
    /// `size` inputs and `out_size` outputs: `out·stride + offset - padding` in `0..size`. The
    /// patch loops copy that range without a bounds test per element (they were a third of a
    /// ResNet step) and fill the rest with zeros.
    fn inside(&self, offset: usize, size: usize, out_size: usize) -> Range<usize> {
        let (stride, padding) = (self.stride, self.padding);
        let hi = if size + padding > offset { ((size + padding - offset - 1) / stride + 1).min(out_size) } else { 0 };
        let lo = if padding > offset { (padding - offset).div_ceil(stride) } else { 0 };
        lo.min(hi)..hi
    }

    /// The patch matrix `[C·K·K, images·OH·OW]` of `images`, zero where a patch overhangs.
    fn im2col(&self, input: &[f32], images: Range<usize>, out: &mut [f32]) {
        let (out_height, out_width) = (self.out_height(), self.out_width());
        let columns = images.len() * self.out_plane();
        let plane = self.batch * self.in_plane();
        out[..self.rows() * columns].par_chunks_mut(columns).enumerate().for_each(|(row, out)| {
            let (channel, ky, kx) =
                (row / (self.kernel * self.kernel), row / self.kernel % self.kernel, row % self.kernel);
            let source = &input[channel * plane..(channel + 1) * plane];
            let xs = self.inside(kx, self.width, out_width);
            for (slot, n) in images.clone().enumerate() {
                for oy in 0..out_height {
                    let out = &mut out[(slot * out_height + oy) * out_width..][..out_width];
                    let Some(iy) = self.source(oy, ky, self.height) else {
                        out.fill(0.0);
                        continue;
                    };
                    let line = &source[(n * self.height + iy) * self.width..][..self.width];
                    out[..xs.start].fill(0.0);
                    out[xs.end..].fill(0.0);
                    if xs.is_empty() {
                        continue;
                    }
                    // The first input the range reads; then every `stride`th.
                    let first = xs.start * self.stride + kx - self.padding;
                    let inside = &mut out[xs.clone()];
                    if self.stride == 1 {
                        inside.copy_from_slice(&line[first..first + inside.len()]);
                    } else {
                        let read = line[first..].iter().step_by(self.stride);
                        inside.iter_mut().zip(read).for_each(|(value, &x)| *value = x);
                    }
                }
            }
        });
    }

    /// The adjoint of [`Patches::im2col`]: adds each patch entry of `images` onto the pixel of
    /// `image` (`[C, N, H, W]`) it was read from. One task per channel, each summing in a
    /// fixed order.
    fn col2im(&self, patches: &[f32], images: Range<usize>, image: &mut [f32]) {
        let (out_height, out_width) = (self.out_height(), self.out_width());
        let columns = images.len() * self.out_plane();
        let plane = self.batch * self.in_plane();
        image.par_chunks_mut(plane).enumerate().for_each(|(channel, out)| {
            for ky in 0..self.kernel {
                for kx in 0..self.kernel {
                    let row = (channel * self.kernel + ky) * self.kernel + kx;
                    let source = &patches[row * columns..(row + 1) * columns];
                    let xs = self.inside(kx, self.width, out_width);
                    for (slot, n) in images.clone().enumerate() {
                        for oy in 0..out_height {
                            let Some(iy) = self.source(oy, ky, self.height) else { continue };
                            let line = &mut out[(n * self.height + iy) * self.width..][..self.width];
                            let entries = &source[(slot * out_height + oy) * out_width..][xs.clone()];
                            if entries.is_empty() {
                                continue;
                            }
                            let first = xs.start * self.stride + kx - self.padding;
                            let written = line[first..].iter_mut().step_by(self.stride);
                            written.zip(entries).for_each(|(pixel, &entry)| *pixel += entry);
                        }
                    }
                }
            }
        });
    }

    /// The patch matrix of `images` as a matrix view: the input itself when pointwise, else
    /// built in `workspace`.
    fn columns<'a>(&self, input: &'a [f32], images: Range<usize>, workspace: &'a mut Vec<f32>) -> Matrix<'a> {
        let columns = images.len() * self.out_plane();
        if self.pointwise() {
            let total = self.batch * self.in_plane();
            return Matrix {
                data: &input[images.start * self.in_plane()..],
                rows: self.channels,
                cols: columns,
                rs: total,
                cs: 1,
            };
        }
        workspace.resize(self.rows() * columns, 0.0);
        self.im2col(input, images, workspace);
        Matrix { data: workspace, rows: self.rows(), cols: columns, rs: columns, cs: 1 }
    }

    /// The chunks of images, in order.
    fn chunks(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.batch).step_by(self.chunk()).map(|start| start..(start + self.chunk()).min(self.batch))
    }

    fn weight<'a>(&self, weight: &'a [f32]) -> Matrix<'a> {
        Matrix { data: weight, rows: self.out_channels, cols: self.rows(), rs: self.rows(), cs: 1 }
    }

    /// `y [O, N·OH·OW] = W [O, C·K·K] · patches`.
    fn forward(&self, input: &[f32], weight: &[f32]) -> candle_core::Result<Vec<f32>> {
        let total = self.batch * self.out_plane();
        let mut out = vec![0f32; self.out_channels * total];
        with_workspace(|workspace| {
            for images in self.chunks() {
                let start = images.start * self.out_plane();
                let columns = self.columns(input, images, workspace);
                gemm_into(&mut out[start..], total, self.weight(weight), columns, false)?;
            }
            Ok(out)
        })
    }

    /// `(dx, dW)`: `dW = Σ dy · patchesᵀ` over the chunks in order, and `dx` the col2im of
    /// `Wᵀ · dy` (written straight into `dx` when pointwise).
    fn backward(&self, grad: &[f32], input: &[f32], weight: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let total = self.batch * self.out_plane();
        let mut d_input = vec![0f32; self.channels * self.batch * self.in_plane()];
        let mut d_weight = vec![0f32; self.out_channels * self.rows()];
        let weight_t = self.weight(weight).t();
        with_workspace(|workspace| {
            for (index, images) in self.chunks().enumerate() {
                let columns = images.len() * self.out_plane();
                let grad = Matrix {
                    data: &grad[images.start * self.out_plane()..],
                    rows: self.out_channels,
                    cols: columns,
                    rs: total,
                    cs: 1,
                };
                let patches = self.columns(input, images.clone(), workspace);
                gemm_into(&mut d_weight, self.rows(), grad, patches.t(), index > 0)?;
                if self.pointwise() {
                    gemm_into(&mut d_input[images.start * self.in_plane()..], total, weight_t, grad, false)?;
                } else {
                    gemm_into(workspace, columns, weight_t, grad, false)?;
                    self.col2im(workspace, images, &mut d_input);
                }
            }
            Ok((d_input, d_weight))
        })
    }
}

/// A strided matrix in a slice, from its first element.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl Matrix<'_> {
    fn t(self) -> Self {
        Matrix { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
}

/// Elements from the first to the last of a `rows × cols` matrix with strides `rs`, `cs`.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (+)= a · b`, `dst` with row stride `dst_rs` and unit column stride, by the `gemm` crate
/// on the current thread pool.
fn gemm_into(dst: &mut [f32], dst_rs: usize, a: Matrix, b: Matrix, accumulate: bool) -> candle_core::Result<()> {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if b.rows != k
        || a.data.len() < extent(m, k, a.rs, a.cs)
        || b.data.len() < extent(k, n, b.rs, b.cs)
        || dst.len() < extent(m, n, dst_rs, 1)
    {
        return Err(candle_core::Error::Msg(format!(
            "conv: a {m}x{k} by {}x{n} product does not fit its buffers",
            b.rows
        )));
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the check above keeps every element `gemm` reads inside `a.data` and `b.data` and
    // every element it writes inside `dst`, which is borrowed mutably and so overlaps neither.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Convolution of channel-major `x` `[C, N, H, W]` by `weight` `[O, C, K, K]` to `[O, N, OH, OW]`.
pub(crate) struct Conv(pub Patches);

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.0;
        let out = p.forward(contiguous_f32(x, xl, self.name())?, contiguous_f32(w, wl, self.name())?)?;
        Ok((CpuStorage::F32(out), Shape::from((p.out_channels, p.batch, p.out_height(), p.out_width()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let op = ConvBackward { patches: self.0, d_weight: Mutex::new(Vec::new()) };
        let dx = grad.contiguous()?.apply_op3_no_bwd(x, w, &op)?;
        let d_weight = op.d_weight.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        Ok((Some(dx), Some(Tensor::from_vec(d_weight, w.shape(), w.device())?)))
    }
}

/// [`Conv`]'s backward, applied to `(grad, x, weight)`: `dx`, with `dW` left in `d_weight`.
struct ConvBackward {
    patches: Patches,
    d_weight: Mutex<Vec<f32>>,
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "conv2d-cpu-backward"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = self.patches;
        let name = self.name();
        let (d_input, d_weight) = p.backward(
            contiguous_f32(grad, grad_layout, name)?,
            contiguous_f32(x, x_layout, name)?,
            contiguous_f32(w, w_layout, name)?,
        )?;
        if let Ok(mut saved) = self.d_weight.lock() {
            *saved = d_weight;
        }
        Ok((CpuStorage::F32(d_input), Shape::from((p.channels, p.batch, p.height, p.width))))
    }
}
