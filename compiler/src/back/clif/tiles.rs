//! The runtime side of pairwise nodes: the tiled loop. For each tile of the iteration space,
//! the `gemm` crate's micro-kernel computes the dot products `a_i · b_j` into a small
//! per-thread buffer, and the generated tile function turns them into `w(i, j)` and folds them
//! into running row reductions, or (for products) writes them over the tile, which the
//! library then multiplies into `v`. Only a few tiles per thread ever exist, so memory stays
//! O(rows · depth).
//!
//! When both matrices are the same (`Z Zᵀ`, as in every contrastive loss) the dot products
//! are symmetric: only the tiles on and above the diagonal are computed, and each also serves
//! the mirrored tile, transposed in memory, so the tile function sees `w(j, i)` with the
//! dot product it needs. That halves the dot-product work. A kernel that is symmetric itself
//! ([`SinkCode::SymmetricProduct`], such as the merged `W V + Wᵀ V` of a similarity
//! matrix's gradient) is evaluated on those tiles only, its lower tiles being the transposes
//! of the upper ones.

use super::frame::{Frame, SharedFrame};
use super::matmul::{gemm_into, View};
use super::plan::LANES;
use crate::ir::ReduceOp;
use rayon::prelude::*;

/// What generated code passes to [`pairwise`]: addresses and strides in elements, all `i64`.
#[repr(C)]
pub(crate) struct PairwiseArgs {
    /// The tile function (see [`TileFn`]).
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
    /// A [`SinkCode`], as its `i64` value: generated code may store any `i64` here, so the
    /// runtime reads it back with [`SinkCode::try_from`] rather than as the enum.
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

/// What a pairwise node does with its `w(i, j)`: fold them into row reductions, or multiply
/// them into `v`. Generated code passes the code in [`PairwiseArgs::sink`] as an `i64`, so the
/// discriminants are part of the ABI between generated code and this loop (the Cranelift IR
/// snapshots show them) and must not change.
#[repr(i64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SinkCode {
    Sum = 0,
    Max = 1,
    Min = 2,
    LogSumExp = 3,
    /// `out = W v`.
    Product = -1,
    /// `out = W v` where `w(i, j) = w(j, i)` (`a = b`): the tiles below the diagonal are the
    /// transposes of those above.
    SymmetricProduct = -2,
}

impl SinkCode {
    /// Every code, for [`SinkCode::try_from`].
    const ALL: [SinkCode; 6] = [
        SinkCode::Sum,
        SinkCode::Max,
        SinkCode::Min,
        SinkCode::LogSumExp,
        SinkCode::Product,
        SinkCode::SymmetricProduct,
    ];

    /// The code of a pairwise reduction by `op`.
    pub(crate) fn reduce(op: ReduceOp) -> SinkCode {
        match op {
            ReduceOp::Sum => SinkCode::Sum,
            ReduceOp::Max => SinkCode::Max,
            ReduceOp::Min => SinkCode::Min,
            ReduceOp::LogSumExp => SinkCode::LogSumExp,
            ReduceOp::ArgMax => unreachable!("the IR has no pairwise argmax"),
        }
    }

    /// The value generated code stores in [`PairwiseArgs::sink`].
    pub(crate) fn code(self) -> i64 {
        self as i64
    }

    fn is_product(self) -> bool {
        match self {
            SinkCode::Sum | SinkCode::Max | SinkCode::Min | SinkCode::LogSumExp => false,
            SinkCode::Product | SinkCode::SymmetricProduct => true,
        }
    }

    /// The value a row's result starts from.
    fn identity(self) -> f32 {
        match self {
            SinkCode::Max | SinkCode::LogSumExp => f32::NEG_INFINITY,
            SinkCode::Min => f32::INFINITY,
            SinkCode::Sum | SinkCode::Product | SinkCode::SymmetricProduct => 0.0,
        }
    }

    /// Two partial results of the same row as one: partial products add; in reductions NaN
    /// wins, as in the generated code.
    fn merge(self, a: f32, b: f32) -> f32 {
        match self {
            SinkCode::Product | SinkCode::SymmetricProduct => a + b,
            SinkCode::Sum | SinkCode::Max | SinkCode::Min | SinkCode::LogSumExp if a.is_nan() || b.is_nan() => f32::NAN,
            SinkCode::Sum => a + b,
            SinkCode::Max => a.max(b),
            SinkCode::Min => a.min(b),
            SinkCode::LogSumExp => {
                let m = a.max(b);
                if m == f32::NEG_INFINITY {
                    m
                } else {
                    m + ((a - m).exp() + (b - m).exp()).ln()
                }
            }
        }
    }
}

impl TryFrom<i64> for SinkCode {
    /// The unknown code.
    type Error = i64;
    fn try_from(code: i64) -> Result<SinkCode, i64> {
        SinkCode::ALL.into_iter().find(|s| s.code() == code).ok_or(code)
    }
}

/// A generated tile function: `(frame, tile, stride, row0, row1, col0, col1, acc)`. Entry
/// `(r, c)` of the iteration space is at `tile[(r - row0) * stride + c - col0]`; reductions
/// fold row `r`'s part into `acc[r - row0]`, products overwrite the tile with `w`.
type TileFn = extern "C" fn(*const Frame, *mut f32, i64, i64, i64, i64, i64, *mut f32);

/// Rows per block of the rectangular loop: one block's tiles stay in the core's L2 cache.
const ROW_BLOCK: i64 = 64;
/// Columns per tile of the rectangular loop (a multiple of the SIMD width, so tile rows are
/// whole vectors).
const COL_BLOCK: i64 = 256;
/// The side of the square tiles of the symmetric loop: two of them and their operands stay
/// in L2.
const SQUARE: i64 = 128;
/// Runs the symmetric loop's tiles are split into, whatever the thread count: each run sums
/// its rows in its own buffer and the buffers are merged in order, so a split that depends on
/// nothing but the size keeps the floating-point order, and so the results, the same on any
/// number of threads (split per thread, `--threads 1` and `--threads 2` trained differently).
const SYMMETRIC_RUNS: i64 = 16;

/// `f32` element `k` after `base` (`k` may be negative for reversed strides).
fn at(base: i64, k: i64) -> *mut f32 {
    (base as *mut f32).wrapping_offset(k as isize)
}

/// A product of tiles, on this thread (the tiled loop's threads are the parallelism).
///
/// # Safety
///
/// As [`gemm_into`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile_gemm(
    m: i64,
    n: i64,
    k: i64,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    // SAFETY: the caller's guarantee.
    unsafe { gemm_into([m, n, k], dst, dst_rs, dst_cs, lhs, rhs, accumulate, gemm::Parallelism::None) };
}

/// One pairwise node's evaluation, as the threads share it.
struct Job<'a> {
    frame: SharedFrame,
    args: &'a PairwiseArgs,
    sink: SinkCode,
    tile_fn: TileFn,
    a: View,
    b: View,
    v: View,
}

// SAFETY: the job only reads its operands; each thread writes its own scratch memory, and
// results reach `out` after the threads have joined (or per disjoint row block).
unsafe impl Sync for Job<'_> {}

/// The tiled loop of one pairwise node: generated code's `sslc_pairwise`.
///
/// # Safety
///
/// `args` must point to a filled [`PairwiseArgs`] (generated code keeps it on its stack):
/// `tile` the address of a generated [`TileFn`], `sink` a [`SinkCode`], `a` and `b` readable
/// as `rows × depth` and `cols × depth` matrices, `v` as a `cols × width` one (products), and
/// `out` writable as `[rows]` or `[rows, width]`, not overlapping them, all laid out as their
/// strides say; `frame` must be the frame the tile function runs with. An unknown sink code
/// (a compiler bug) aborts.
pub(crate) unsafe extern "C" fn pairwise(frame: *const Frame, args: *const PairwiseArgs) {
    // SAFETY: `args` points to a filled argument block (see above).
    let args = unsafe { &*args };
    let sink = SinkCode::try_from(args.sink)
        .unwrap_or_else(|code| panic!("internal error: the pairwise sink code {code} is unknown"));
    // SAFETY: `tile` is the address of a generated function of type `TileFn`.
    let tile_fn = unsafe { std::mem::transmute::<*const u8, TileFn>(args.tile as *const u8) };
    let job = Job {
        frame: SharedFrame(frame),
        args,
        sink,
        tile_fn,
        a: View::new(args.a, args.a_rs, args.a_cs),
        b: View::new(args.b, args.b_rs, args.b_cs),
        v: View::new(args.v, args.v_rs, args.v_cs),
    };
    let same = args.a == args.b && args.a_rs == args.b_rs && args.a_cs == args.b_cs && args.rows == args.cols;
    if same {
        job.symmetric();
    } else {
        debug_assert_ne!(sink, SinkCode::SymmetricProduct, "a symmetric product needs one matrix");
        job.rectangular();
    }
}

impl Job<'_> {
    fn call_tile(&self, tile: &mut [f32], stride: i64, rows: (i64, i64), cols: (i64, i64), acc: *mut f32) {
        (self.tile_fn)(self.frame.get(), tile.as_mut_ptr(), stride, rows.0, rows.1, cols.0, cols.1, acc);
    }

    /// Row blocks spread over the threads, each sweeping all column tiles and writing its own
    /// rows of `out`.
    fn rectangular(&self) {
        let blocks = (self.args.rows + ROW_BLOCK - 1) / ROW_BLOCK;
        let scratch = || vec![0f32; (ROW_BLOCK * COL_BLOCK + LANES) as usize];
        let run = |tile: &mut Vec<f32>, block: i64| self.row_block(tile, block);
        if blocks <= 1 || rayon::current_num_threads() <= 1 {
            let mut tile = scratch();
            (0..blocks).for_each(|b| run(&mut tile, b));
        } else {
            (0..blocks).into_par_iter().for_each_init(scratch, run);
        }
    }

    fn row_block(&self, tile: &mut [f32], block: i64) {
        let args = self.args;
        let r0 = block * ROW_BLOCK;
        let r1 = (r0 + ROW_BLOCK).min(args.rows);
        let product = self.sink.is_product();
        let mut acc = vec![self.sink.identity(); (r1 - r0) as usize];
        if product {
            for r in r0..r1 {
                for e in 0..args.width {
                    // SAFETY: this block writes only rows [r0, r1) of `out`, which is
                    // `[rows, width]`.
                    unsafe { *at(args.out, r * args.out_rs + e * args.out_cs) = 0.0 };
                }
            }
        }
        let mut c0 = 0;
        while c0 < args.cols {
            let c1 = (c0 + COL_BLOCK).min(args.cols);
            // SAFETY: `tile` holds ROW_BLOCK × COL_BLOCK elements; rows [r0, r1) of `a` and
            // [c0, c1) of `b` are theirs (see `pairwise`).
            unsafe {
                tile_gemm(
                    r1 - r0,
                    c1 - c0,
                    args.depth,
                    tile.as_mut_ptr(),
                    COL_BLOCK as isize,
                    1,
                    self.a.rows_from(r0),
                    self.b.rows_from(c0).transposed(),
                    false,
                )
            };
            self.call_tile(tile, COL_BLOCK, (r0, r1), (c0, c1), acc.as_mut_ptr());
            if product {
                let out = at(args.out, r0 * args.out_rs);
                let w = View { base: tile.as_ptr(), rs: COL_BLOCK as isize, cs: 1 };
                // SAFETY: this block's rows [r0, r1) of the `[rows, width]` output, the
                // `(r1 - r0) × (c1 - c0)` tile just written, and rows [c0, c1) of `v`.
                unsafe {
                    tile_gemm(
                        r1 - r0,
                        args.width,
                        c1 - c0,
                        out,
                        args.out_rs as isize,
                        args.out_cs as isize,
                        w,
                        self.v.rows_from(c0),
                        true,
                    )
                };
            }
            c0 = c1;
        }
        if !product {
            for (r, value) in (r0..r1).zip(acc) {
                // SAFETY: as above, rows [r0, r1) of the `[rows]` output.
                unsafe { *at(args.out, r * args.out_rs) = value };
            }
        }
    }

    /// Tiles on and above the diagonal, split into [`SYMMETRIC_RUNS`] contiguous runs of about
    /// equal work, spread over the threads; each run accumulates into its own copy of the
    /// output, and the copies are merged in run order.
    fn symmetric(&self) {
        let args = self.args;
        let blocks = (args.rows + SQUARE - 1) / SQUARE;
        let pairs: Vec<(i64, i64)> = (0..blocks).flat_map(|i| (i..blocks).map(move |j| (i, j))).collect();
        let count = SYMMETRIC_RUNS.clamp(1, pairs.len().max(1) as i64);
        // Off-diagonal tiles serve two blocks of rows; diagonal ones one.
        let cost = |&(i, j): &(i64, i64)| if i == j { 1 } else { 2 };
        let total: i64 = pairs.iter().map(cost).sum();
        let mut runs = vec![Vec::new(); count as usize];
        let mut done = 0;
        for p in &pairs {
            let t = (done * count / total.max(1)).min(count - 1);
            runs[t as usize].push(*p);
            done += cost(p);
        }
        // Two runs per thread at a time, each batch merged in run order into the total: the
        // same sums in the same order as merging all runs at once, with two copies per thread
        // alive instead of one per run (measured: half the memory, and faster at N = 4096;
        // batches of one run per thread waited more at N = 512).
        let threads = rayon::current_num_threads().max(1);
        let mut merged: Option<Vec<f32>> = None;
        for batch in runs.chunks(2 * threads) {
            let partials: Vec<Vec<f32>> = if threads == 1 {
                batch.iter().map(|run| self.symmetric_run(run)).collect()
            } else {
                batch.par_iter().map(|run| self.symmetric_run(run)).collect()
            };
            merged = self.merge(merged.into_iter().chain(partials));
        }
        if let Some(total) = merged {
            self.write_out(total);
        }
    }

    /// The runs' outputs merged in order.
    fn merge(&self, partials: impl IntoIterator<Item = Vec<f32>>) -> Option<Vec<f32>> {
        partials.into_iter().reduce(|mut total, partial| {
            for (t, x) in total.iter_mut().zip(partial) {
                *t = self.sink.merge(*t, x);
            }
            total
        })
    }

    /// The output (`[rows]` or `[rows, width]`, dense) of the tiles in `run`.
    fn symmetric_run(&self, run: &[(i64, i64)]) -> Vec<f32> {
        let args = self.args;
        let width = args.width.max(1);
        let product = self.sink.is_product();
        let mut out = if product {
            vec![0f32; (args.rows * width) as usize]
        } else {
            vec![self.sink.identity(); args.rows as usize]
        };
        let side = (SQUARE * SQUARE + LANES) as usize;
        let (mut direct, mut mirror) = (vec![0f32; side], vec![0f32; side]);
        for &(bi, bj) in run {
            let rows = (bi * SQUARE, ((bi + 1) * SQUARE).min(args.rows));
            let cols = (bj * SQUARE, ((bj + 1) * SQUARE).min(args.rows));
            let (m, n) = (rows.1 - rows.0, cols.1 - cols.0);
            // SAFETY: `direct` holds SQUARE × SQUARE elements; both row ranges lie in `a`'s
            // `rows` (see `pairwise`).
            unsafe {
                tile_gemm(
                    m,
                    n,
                    args.depth,
                    direct.as_mut_ptr(),
                    SQUARE as isize,
                    1,
                    self.a.rows_from(rows.0),
                    self.a.rows_from(cols.0).transposed(),
                    false,
                )
            };
            let off_diagonal = bi != bj;
            // The mirrored tile `w(j, i)` needs evaluating unless the kernel is symmetric.
            let mirror_needed = off_diagonal && self.sink != SinkCode::SymmetricProduct;
            if mirror_needed {
                transpose(&direct, &mut mirror, m, n);
            }
            let acc_of = |out: &mut Vec<f32>, r0: i64| {
                if product {
                    std::ptr::null_mut()
                } else {
                    out[r0 as usize..].as_mut_ptr()
                }
            };
            let acc = acc_of(&mut out, rows.0);
            self.call_tile(&mut direct, SQUARE, rows, cols, acc);
            if mirror_needed {
                let acc = acc_of(&mut out, cols.0);
                self.call_tile(&mut mirror, SQUARE, cols, rows, acc);
            }
            if !product {
                continue;
            }
            let w = |t: &[f32]| View { base: t.as_ptr(), rs: SQUARE as isize, cs: 1 };
            let out_rows = |out: &mut Vec<f32>, r0: i64| out[(r0 * width) as usize..].as_mut_ptr();
            let (v_rows, v_cols) = (self.v.rows_from(rows.0), self.v.rows_from(cols.0));
            // SAFETY: rows `rows` of this run's dense `[rows, width]` output, the `m × n` tile,
            // and rows `cols` of `v`.
            unsafe {
                tile_gemm(m, args.width, n, out_rows(&mut out, rows.0), width as isize, 1, w(&direct), v_cols, true)
            };
            if off_diagonal {
                // A symmetric kernel's mirrored tile is the transpose of this one.
                let mirrored =
                    if self.sink == SinkCode::SymmetricProduct { w(&direct).transposed() } else { w(&mirror) };
                // SAFETY: as above, with the `n × m` mirrored tile, output rows `cols` and
                // rows `rows` of `v`.
                unsafe {
                    tile_gemm(n, args.width, m, out_rows(&mut out, cols.0), width as isize, 1, mirrored, v_rows, true)
                };
            }
        }
        out
    }

    /// Writes the merged output (laid out as [`Self::symmetric_run`] lays it out) into `out`.
    fn write_out(&self, total: Vec<f32>) {
        let args = self.args;
        let product = self.sink.is_product();
        let (columns, stride) = if product { (args.width, args.width.max(1)) } else { (1, 1) };
        for r in 0..args.rows {
            for e in 0..columns {
                // SAFETY: `out` is this node's `[rows]` or `[rows, width]` output buffer.
                unsafe { *at(args.out, r * args.out_rs + e * args.out_cs) = total[(r * stride + e) as usize] };
            }
        }
    }
}

/// `to[c][r] = from[r][c]` for an `m × n` tile (both with row stride [`SQUARE`]).
fn transpose(from: &[f32], to: &mut [f32], m: i64, n: i64) {
    const STEP: usize = 8;
    let (m, n, s) = (m as usize, n as usize, SQUARE as usize);
    for r0 in (0..m).step_by(STEP) {
        for c0 in (0..n).step_by(STEP) {
            for r in r0..(r0 + STEP).min(m) {
                for c in c0..(c0 + STEP).min(n) {
                    to[c * s + r] = from[r * s + c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SinkCode;

    #[test]
    fn sink_codes_round_trip_and_unknown_ones_are_refused() {
        for sink in SinkCode::ALL {
            assert_eq!(SinkCode::try_from(sink.code()), Ok(sink));
        }
        for code in [4, 5, -3, i64::MIN, i64::MAX] {
            assert_eq!(SinkCode::try_from(code), Err(code));
        }
    }
}
