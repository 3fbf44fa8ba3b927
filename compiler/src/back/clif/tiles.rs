//! The runtime side of pairwise nodes: the tiled loop. Row blocks of the iteration space are
//! spread over the thread pool; for each block and each column block, the `gemm` crate's
//! micro-kernel computes the tile of dot products `a_i · b_j` into a small per-thread buffer,
//! and the generated tile function turns it into `w(i, j)` and folds it into the running row
//! reductions, or (for products) the library multiplies the tile into `v`. Only one tile per
//! thread ever exists, so memory stays O(rows · depth).

use super::frame::Frame;
use super::plan::LANES;
use super::runtime::SharedFrame;
use crate::ir::ReduceOp;
use rayon::prelude::*;

/// What generated code passes to [`pairwise`]: addresses and strides in elements, all `i64`.
#[repr(C)]
pub(crate) struct PairwiseArgs {
    /// The tile function: `(frame, tile, stride, row0, row1, col0, col1)`.
    pub tile: i64,
    pub a: i64,
    pub a_rs: i64,
    pub a_cs: i64,
    pub b: i64,
    pub b_rs: i64,
    pub b_cs: i64,
    pub rows: i64,
    pub cols: i64,
    pub depth: i64,
    /// The reduction (see [`reduce_code`]), or [`PRODUCT`] for a product with `v`.
    pub sink: i64,
    /// `[rows]` for reductions (`out_rs` apart), `[rows, width]` for products.
    pub out: i64,
    pub out_rs: i64,
    pub out_cs: i64,
    pub v: i64,
    pub v_rs: i64,
    pub v_cs: i64,
    pub width: i64,
}

pub(crate) const PRODUCT: i64 = -1;

pub(crate) fn reduce_code(op: ReduceOp) -> i64 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
        ReduceOp::LogSumExp => 3,
        ReduceOp::ArgMax => 4,
    }
}

/// The value a row's reduction starts from.
fn identity(code: i64) -> f32 {
    match code {
        1 | 3 => f32::NEG_INFINITY,
        2 => f32::INFINITY,
        _ => 0.0,
    }
}

type TileFn = extern "C" fn(*const Frame, *mut f32, i64, i64, i64, i64, i64);

/// Rows per block: one block's tiles stay in the core's L2 cache.
const ROW_BLOCK: i64 = 64;
/// Columns per tile (a multiple of the SIMD width, so tile rows are whole vectors).
const COL_BLOCK: i64 = 256;

/// `f32` element `k` after `base` (`k` may be negative for reversed strides).
fn at(base: i64, k: i64) -> *mut f32 {
    (base as *mut f32).wrapping_offset(k as isize)
}

pub(crate) extern "C" fn pairwise(frame: *const Frame, args: *const PairwiseArgs) {
    // SAFETY: generated code passes the address of a filled argument block on its stack.
    let args = unsafe { &*args };
    // SAFETY: `tile` is the address of a generated function of type `TileFn`.
    let tile_fn = unsafe { std::mem::transmute::<*const u8, TileFn>(args.tile as *const u8) };
    let frame = SharedFrame(frame);
    let blocks = (args.rows + ROW_BLOCK - 1) / ROW_BLOCK;
    let scratch = || vec![0f32; (ROW_BLOCK * COL_BLOCK + LANES) as usize];
    let run = |tile: &mut Vec<f32>, block: i64| row_block(frame, args, tile_fn, tile, block);
    if blocks <= 1 || rayon::current_num_threads() <= 1 {
        let mut tile = scratch();
        (0..blocks).for_each(|b| run(&mut tile, b));
    } else {
        (0..blocks).into_par_iter().for_each_init(scratch, run);
    }
}

fn row_block(frame: SharedFrame, args: &PairwiseArgs, tile_fn: TileFn, tile: &mut [f32], block: i64) {
    let r0 = block * ROW_BLOCK;
    let r1 = (r0 + ROW_BLOCK).min(args.rows);
    let product = args.sink == PRODUCT;
    // SAFETY (all the raw accesses below): the argument block describes this evaluation's
    // buffers; this block writes only rows [r0, r1) of `out`.
    for r in r0..r1 {
        if product {
            for e in 0..args.width {
                unsafe { *at(args.out, r * args.out_rs + e * args.out_cs) = 0.0 };
            }
        } else {
            unsafe { *at(args.out, r * args.out_rs) = identity(args.sink) };
        }
    }
    let mut c0 = 0;
    while c0 < args.cols {
        let c1 = (c0 + COL_BLOCK).min(args.cols);
        unsafe {
            gemm::gemm(
                (r1 - r0) as usize,
                (c1 - c0) as usize,
                args.depth as usize,
                tile.as_mut_ptr(),
                1,
                COL_BLOCK as isize,
                false,
                at(args.a, r0 * args.a_rs),
                args.a_cs as isize,
                args.a_rs as isize,
                at(args.b, c0 * args.b_rs),
                args.b_rs as isize,
                args.b_cs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        tile_fn(frame.get(), tile.as_mut_ptr(), COL_BLOCK, r0, r1, c0, c1);
        if product {
            unsafe {
                gemm::gemm(
                    (r1 - r0) as usize,
                    args.width as usize,
                    (c1 - c0) as usize,
                    at(args.out, r0 * args.out_rs),
                    args.out_cs as isize,
                    args.out_rs as isize,
                    true,
                    tile.as_ptr(),
                    1,
                    COL_BLOCK as isize,
                    at(args.v, c0 * args.v_rs),
                    args.v_cs as isize,
                    args.v_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        c0 = c1;
    }
}
