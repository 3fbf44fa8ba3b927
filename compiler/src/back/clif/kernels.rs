//! The loop nests of each kind of [`Step`]: maps, reductions, matrix products and gathers.
//! Each kernel covers a range `[begin, end)` of its *units* (rows, or columns for kernels
//! that run down columns), so the runtime can split a kernel across threads and loops can
//! run it whole.

use super::builder::{Emitter, Width};
use super::element::{contiguous_along, needs_scalar, Point, TileCursor};
use super::math;
use super::plan::{Access, Axis, Buffer, ElementProgram, Step, LANES};
use crate::ir::{Dim, Elem, ReduceOp};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

/// Columns a vector-matrix product handles per pass: eight vectors, for eight independent
/// multiply-add chains (enough to keep two FMA units busy through their latency).
const VECMAT_BLOCK: i64 = 8 * LANES;

/// The axis a kernel over `rows × cols` vectorises: columns, unless there is just one.
pub(crate) fn inner_axis(rows: &Dim, cols: &Dim) -> Axis {
    if cols.is_one() && !rows.is_one() {
        Axis::Row
    } else {
        Axis::Col
    }
}

fn other(axis: Axis) -> Axis {
    match axis {
        Axis::Row => Axis::Col,
        Axis::Col => Axis::Row,
    }
}

fn along<'d>(axis: Axis, rows: &'d Dim, cols: &'d Dim) -> &'d Dim {
    match axis {
        Axis::Row => rows,
        Axis::Col => cols,
    }
}

/// A point given the index along the outer and the inner axis.
pub(crate) fn point(outer: Value, inner_index: Value, inner: Axis, width: Width) -> Point {
    let (row, col) = match inner {
        Axis::Col => (outer, inner_index),
        Axis::Row => (inner_index, outer),
    };
    Point { row, col, inner, width, tile: None }
}

/// How a kernel's work is split: `total` units in multiples of `grain`.
pub(crate) struct Units {
    pub total: Value,
    pub grain: i64,
    /// Rough cost of one unit, in elements touched, for deciding whether threads pay off.
    pub work: Value,
}

/// Whether a matrix product is a vector-matrix (`[1, k] @ [k, n]`) or matrix-vector
/// (`[m, k] @ [k, 1]`) product, which are generated inline, or a general one for the GEMM
/// library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Product {
    VectorMatrix,
    MatrixVector,
    General,
}

pub(crate) fn product_kind(m: &Dim, n: &Dim) -> Product {
    if m.is_one() {
        Product::VectorMatrix
    } else if n.is_one() {
        Product::MatrixVector
    } else {
        Product::General
    }
}

/// Whole-vector stores may run past the extent into the row's padding. That is only harmless
/// where the store starts at the row's first element: a concatenation's later part (stored at
/// an offset) would overwrite the next row's first elements.
fn map_width(buffers: &[Buffer], out: &Access, rows: &Dim, cols: &Dim, body: &ElementProgram) -> Width {
    let inner = inner_axis(rows, cols);
    let offset = [&out.row, &out.col].into_iter().find(|c| c.follows == Some(inner)).map(|c| &c.offset);
    let at_row_start = offset.is_none_or(|o| o.as_constant() == Some(0));
    if needs_scalar(body)
        || along(inner, rows, cols).is_one()
        || !contiguous_along(buffers, out, inner)
        || !at_row_start
    {
        Width::One
    } else {
        Width::Lanes
    }
}

fn reduce_width(op: ReduceOp, rows: &Dim, cols: &Dim, body: &ElementProgram) -> Width {
    let inner = inner_axis(rows, cols);
    if needs_scalar(body) || op == ReduceOp::ArgMax || along(inner, rows, cols).is_one() {
        Width::One
    } else {
        Width::Lanes
    }
}

pub(crate) fn lanes(width: Width) -> i64 {
    match width {
        Width::One => 1,
        Width::Lanes => LANES,
    }
}

impl Emitter<'_, '_> {
    /// The units of a kernel step; `None` for steps that are not kernels (loops, GEMM calls).
    pub fn units(&mut self, step: &Step) -> Option<Units> {
        let ops = |body: &ElementProgram| body.ops.len() as i64 + 1;
        Some(match step {
            Step::Map { rows, cols, body, .. } => {
                let inner = inner_axis(rows, cols);
                let inner_extent = self.dim(along(inner, rows, cols));
                let work = self.fb.ins().imul_imm_s(inner_extent, ops(body));
                Units { total: self.dim(along(other(inner), rows, cols)), grain: 1, work }
            }
            Step::Reduce { op, along: axis, rows, cols, body, .. } => {
                let inner = inner_axis(rows, cols);
                let across = self.dim(along(*axis, rows, cols));
                let work = self.fb.ins().imul_imm_s(across, ops(body));
                if *axis == inner {
                    Units { total: self.dim(along(other(inner), rows, cols)), grain: 1, work }
                } else {
                    let width = reduce_width(*op, rows, cols, body);
                    let extent = along(inner, rows, cols);
                    let total = if width == Width::Lanes { self.padded(extent) } else { self.dim(extent) };
                    Units { total, grain: lanes(width), work }
                }
            }
            Step::MatMul { m, k, n, .. } => match product_kind(m, n) {
                Product::VectorMatrix => Units { total: self.padded(n), grain: VECMAT_BLOCK, work: self.dim(k) },
                Product::MatrixVector => Units { total: self.dim(m), grain: 1, work: self.dim(k) },
                Product::General => return None,
            },
            Step::Gather { rows, cols, .. } => {
                let (total, work) =
                    if rows.is_one() { (self.dim(cols), self.int(1)) } else { (self.dim(rows), self.dim(cols)) };
                Units { total, grain: 1, work }
            }
            // One column per unit: a column's rows are summed by one thread, in order.
            Step::ScatterAdd { count, cols, vector, .. } => {
                let total = if *vector { self.int(1) } else { self.dim(cols) };
                Units { total, grain: 1, work: self.dim(count) }
            }
            Step::Loop { .. } | Step::Pairwise { .. } | Step::Concurrent { .. } => return None,
        })
    }

    /// The code of a kernel step over units `[begin, end)`.
    pub fn kernel(&mut self, buffers: &[Buffer], step: &Step, begin: Value, end: Value) {
        match step {
            Step::Map { out, rows, cols, body } => self.map(buffers, out, rows, cols, body, begin, end),
            Step::Reduce { out, op, along: axis, rows, cols, body } => {
                let width = reduce_width(*op, rows, cols, body);
                let shape = ReduceShape { rows, cols, along: *axis, width };
                self.reduce(buffers, out, *op, &shape, body, begin, end)
            }
            Step::MatMul { out, lhs, rhs, m, k, n } => match product_kind(m, n) {
                Product::VectorMatrix => self.vector_matrix(buffers, out, lhs, rhs, k, begin, end),
                Product::MatrixVector => self.matrix_vector(buffers, out, lhs, rhs, k, begin, end),
                Product::General => unreachable!("general products are library calls, not kernels"),
            },
            Step::Gather { out, table, table_rows, indices, rows, cols } => {
                self.gather(buffers, out, table, table_rows, indices, rows, cols, begin, end)
            }
            Step::ScatterAdd { .. } => self.scatter_add(buffers, step, begin, end),
            Step::Loop { .. } | Step::Pairwise { .. } | Step::Concurrent { .. } => {
                unreachable!("loops and pairwise steps are generated by the caller")
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        buffers: &[Buffer],
        out: &Access,
        rows: &Dim,
        cols: &Dim,
        body: &ElementProgram,
        begin: Value,
        end: Value,
    ) {
        let width = map_width(buffers, out, rows, cols, body);
        let inner = inner_axis(rows, cols);
        let inner_extent = self.dim(along(inner, rows, cols));
        let zero = self.int(0);
        self.for_range(begin, end, 1, |em, o| {
            em.for_range(zero, inner_extent, lanes(width), |em, i| {
                let p = point(o, i, inner, width);
                let v = em.evaluate(buffers, body, &p);
                em.store_access(buffers, out, &p, v);
            });
        });
    }

    /// A general product `out = lhs @ rhs` by the GEMM library.
    pub fn gemm_call(&mut self, buffers: &[Buffer], out: &Access, lhs: &Access, rhs: &Access, dims: [&Dim; 3]) {
        let origin = {
            let zero = self.int(0);
            Point { row: zero, col: zero, inner: Axis::Col, width: Width::One, tile: None }
        };
        let [m, k, n] = dims.map(|d| self.dim(d));
        let mut args = vec![m, n, k];
        for a in [out, lhs, rhs] {
            let (addr, _) = self.address(buffers, a, &origin);
            let (rs, cs) = self.strides(buffers, a);
            args.extend([addr, rs, cs]);
        }
        self.call("sslc_gemm", &args);
    }

    /// `out[0, j] = sum_p lhs[0, p] rhs[p, j]` for columns `[begin, end)`: four vectors of
    /// columns at a time, then one.
    #[allow(clippy::too_many_arguments)]
    fn vector_matrix(
        &mut self,
        buffers: &[Buffer],
        out: &Access,
        lhs: &Access,
        rhs: &Access,
        k: &Dim,
        begin: Value,
        end: Value,
    ) {
        let k = self.dim(k);
        let blocks_end = self.fb.ins().iadd_imm_s(end, 1 - VECMAT_BLOCK);
        let span = self.fb.ins().isub(end, begin);
        let whole = self.fb.ins().band_imm_s(span, !(VECMAT_BLOCK - 1));
        let rest_begin = self.fb.ins().iadd(begin, whole);
        for (first, last, vectors) in [(begin, blocks_end, VECMAT_BLOCK / LANES), (rest_begin, end, 1)] {
            self.for_range(first, last, vectors * LANES, |em, j| {
                let zero_acc = em.constant(Elem::Real, Width::Lanes, 0.0);
                let accs: Vec<Variable> =
                    (0..vectors).map(|_| em.local(cranelift_codegen::ir::types::F32X4, zero_acc)).collect();
                let zero = em.int(0);
                em.for_range(zero, k, 1, |em, p| {
                    // `lhs[0, p]` multiplies every column: one element, in every lane.
                    let a = em.load_access(
                        buffers,
                        lhs,
                        Elem::Real,
                        &Point { row: zero, col: p, inner: Axis::Col, width: Width::One, tile: None },
                    );
                    let a = em.widen(a, Elem::Real, Width::Lanes);
                    let row = Point { row: p, col: j, inner: Axis::Col, width: Width::Lanes, tile: None };
                    let bs = em.load_vectors(buffers, rhs, Elem::Real, &row, accs.len());
                    for (acc, b) in accs.iter().zip(bs) {
                        let sum = em.fb.use_var(*acc);
                        let sum = em.accumulate_product(sum, a, b);
                        em.fb.def_var(*acc, sum);
                    }
                });
                for (u, acc) in accs.iter().enumerate() {
                    let col = em.fb.ins().iadd_imm_s(j, u as i64 * LANES);
                    let v = em.fb.use_var(*acc);
                    em.store_access(
                        buffers,
                        out,
                        &Point { row: zero, col, inner: Axis::Col, width: Width::Lanes, tile: None },
                        v,
                    );
                }
            });
        }
    }

    /// `out[i, 0] = sum_p lhs[i, p] rhs[p, 0]` for rows `[begin, end)`: two rows at a time,
    /// sharing the loads of `rhs`, with four vector accumulators each (eight independent
    /// multiply-add chains), then one, then a masked last vector; an odd last row alone.
    #[allow(clippy::too_many_arguments)]
    fn matrix_vector(
        &mut self,
        buffers: &[Buffer],
        out: &Access,
        lhs: &Access,
        rhs: &Access,
        k: &Dim,
        begin: Value,
        end: Value,
    ) {
        let k = self.dim(k);
        let span = self.fb.ins().isub(end, begin);
        let pairs = self.fb.ins().band_imm_s(span, !1);
        let pairs_end = self.fb.ins().iadd(begin, pairs);
        self.for_range(begin, pairs_end, 2, |em, i| {
            let next = em.fb.ins().iadd_imm_s(i, 1);
            em.dot_rows(buffers, out, lhs, rhs, k, &[i, next]);
        });
        let odd = self.fb.ins().icmp(IntCC::SignedLessThan, pairs_end, end);
        self.when(odd, |em| em.dot_rows(buffers, out, lhs, rhs, k, &[pairs_end]));
    }

    /// The dot products of `rows` of `lhs` with the vector `rhs` (`k` long) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn dot_rows(&mut self, buffers: &[Buffer], out: &Access, lhs: &Access, rhs: &Access, k: Value, rows: &[Value]) {
        const CHAINS: usize = 4;
        let zero_acc = self.constant(Elem::Real, Width::Lanes, 0.0);
        let accs: Vec<[Variable; CHAINS]> = rows
            .iter()
            .map(|_| std::array::from_fn(|_| self.local(cranelift_codegen::ir::types::F32X4, zero_acc)))
            .collect();
        let zero = self.int(0);
        // Multiplies the vectors at `p` into chain `chain` of every row; `valid` masks lanes.
        let step = |em: &mut Self, p: Value, chain: usize, valid: Option<Value>| {
            let b = em.load_access(
                buffers,
                rhs,
                Elem::Real,
                &Point { row: p, col: zero, inner: Axis::Row, width: Width::Lanes, tile: None },
            );
            for (&i, acc) in rows.iter().zip(&accs) {
                let a = em.load_access(
                    buffers,
                    lhs,
                    Elem::Real,
                    &Point { row: i, col: p, inner: Axis::Col, width: Width::Lanes, tile: None },
                );
                let sum = em.fb.use_var(acc[chain]);
                let sum = match valid {
                    None => em.accumulate_product(sum, a, b),
                    Some(mask) => {
                        let ab = em.fb.ins().fmul(a, b);
                        let zero = em.constant(Elem::Real, Width::Lanes, 0.0);
                        let ab = em.select(mask, ab, zero, Width::Lanes);
                        em.fb.ins().fadd(sum, ab)
                    }
                };
                em.fb.def_var(acc[chain], sum);
            }
        };
        let block = CHAINS as i64 * LANES;
        let blocks_end = self.fb.ins().iadd_imm_s(k, 1 - block);
        self.for_range(zero, blocks_end, block, |em, p| {
            let bs = em.load_vectors(
                buffers,
                rhs,
                Elem::Real,
                &Point { row: p, col: zero, inner: Axis::Row, width: Width::Lanes, tile: None },
                CHAINS,
            );
            for (&i, acc) in rows.iter().zip(&accs) {
                let row = Point { row: i, col: p, inner: Axis::Col, width: Width::Lanes, tile: None };
                let a_s = em.load_vectors(buffers, lhs, Elem::Real, &row, CHAINS);
                for ((a, b), chain) in a_s.into_iter().zip(&bs).zip(acc) {
                    let sum = em.fb.use_var(*chain);
                    let sum = em.accumulate_product(sum, a, *b);
                    em.fb.def_var(*chain, sum);
                }
            }
        });
        let whole_blocks = self.fb.ins().band_imm_s(k, !(block - 1));
        let whole_vectors = self.fb.ins().band_imm_s(k, !(LANES - 1));
        self.for_range(whole_blocks, whole_vectors, LANES, |em, p| step(em, p, 0, None));
        let partial = self.fb.ins().icmp(IntCC::SignedLessThan, whole_vectors, k);
        self.when(partial, |em| {
            let valid = em.valid_lanes(whole_vectors, k);
            step(em, whole_vectors, 1, Some(valid));
        });
        for (&i, acc) in rows.iter().zip(&accs) {
            let mut total = self.fb.use_var(acc[0]);
            for chain in &acc[1..] {
                let v = self.fb.use_var(*chain);
                total = self.fb.ins().fadd(total, v);
            }
            let dot = self.across_lanes(total, Width::Lanes, |em, a, b| em.fb.ins().fadd(a, b));
            self.store_access(
                buffers,
                out,
                &Point { row: i, col: zero, inner: Axis::Col, width: Width::One, tile: None },
                dot,
            );
        }
    }

    /// `sum + a b` for a running sum. A multiply then an add, not a fused multiply-add:
    /// Cranelift's x86 FMA overwrites a factor, so a loop-carried sum would move between
    /// registers every iteration, and the add's shorter latency suits a dependent chain.
    fn accumulate_product(&mut self, sum: Value, a: Value, b: Value) -> Value {
        let product = self.fb.ins().fmul(a, b);
        self.fb.ins().fadd(sum, product)
    }

    /// Lanes `start + l` below `end` (both `i64`), as a mask.
    fn valid_lanes(&mut self, start: Value, end: Value) -> Value {
        let first = self.index_value(start, Width::Lanes, true);
        let narrow_end = self.fb.ins().ireduce(I32, end);
        let limit = self.widen(narrow_end, Elem::Int, Width::Lanes);
        self.icmp(IntCC::SignedLessThan, first, limit, Width::Lanes)
    }

    /// Rows (or entries, for a vector table) of `table` at `indices`; an index out of range
    /// is reported to the runtime and reads row 0.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &mut self,
        buffers: &[Buffer],
        out: &Access,
        table: &Access,
        table_rows: &Dim,
        indices: &Access,
        rows: &Dim,
        cols: &Dim,
        begin: Value,
        end: Value,
    ) {
        let limit = self.dim(table_rows);
        let vector_table = rows.is_one();
        let cols_value = self.dim(cols);
        self.for_range(begin, end, 1, |em, r| {
            let zero = em.int(0);
            let at = Point { row: zero, col: r, inner: Axis::Col, width: Width::One, tile: None };
            let raw = em.load_access(buffers, indices, Elem::Int, &at);
            let index = em.fb.ins().sextend(I64, raw);
            let in_range = em.fb.ins().icmp(IntCC::UnsignedLessThan, index, limit);
            let frame = em.frame;
            let out_of_range = em.fb.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, index, limit);
            em.when(out_of_range, |em| {
                em.call("sslc_index_error", &[frame, index, limit]);
            });
            let index = em.fb.ins().select(in_range, index, zero);
            if vector_table {
                let v = em.load_access(
                    buffers,
                    table,
                    Elem::Real,
                    &Point { row: zero, col: index, inner: Axis::Col, width: Width::One, tile: None },
                );
                em.store_access(buffers, out, &at, v);
            } else {
                let width = Width::Lanes;
                em.for_range(zero, cols_value, LANES, |em, c| {
                    let v = em.load_access(
                        buffers,
                        table,
                        buffers[table.buffer].elem,
                        &Point { row: index, col: c, inner: Axis::Col, width, tile: None },
                    );
                    em.store_access(buffers, out, &Point { row: r, col: c, inner: Axis::Col, width, tile: None }, v);
                });
            }
        });
    }
}

impl Emitter<'_, '_> {
    /// The columns `[begin, end)` of a [`Step::ScatterAdd`]: each zeroed, then every row of
    /// `values` added in order (entries outside the output are skipped; a gather of them has
    /// already reported the error).
    fn scatter_add(&mut self, buffers: &[Buffer], step: &Step, begin: Value, end: Value) {
        let Step::ScatterAdd { out, values, indices, count, rows, cols, vector } = step else {
            unreachable!("called with scatter-adds only")
        };
        let vector = *vector;
        let zero = self.int(0);
        let limit = self.dim(if vector { cols } else { rows });
        let count = self.dim(count);
        let elem = buffers[out.buffer].elem;
        let at = |row: Value, col: Value| Point { row, col, inner: Axis::Col, width: Width::One, tile: None };
        // Row `r` of column `c`; a vector's entry `r`.
        let entry = move |r: Value, c: Value| if vector { at(zero, r) } else { at(r, c) };
        self.for_range(begin, end, 1, |em, c| {
            let nothing = em.constant(elem, Width::One, 0.0);
            em.for_range(zero, limit, 1, |em, r| em.store_access(buffers, out, &entry(r, c), nothing));
            em.for_range(zero, count, 1, |em, m| {
                let raw = em.load_access(buffers, indices, Elem::Int, &at(zero, m));
                let index = em.fb.ins().sextend(I64, raw);
                let in_range = em.fb.ins().icmp(IntCC::UnsignedLessThan, index, limit);
                em.when(in_range, |em| {
                    let v = em.load_access(buffers, values, elem, &entry(m, c));
                    let sum = em.load_access(buffers, out, elem, &entry(index, c));
                    let sum = em.fb.ins().fadd(sum, v);
                    em.store_access(buffers, out, &entry(index, c), sum);
                });
            });
        });
    }
}

/// The iteration space of a reduction and the axis it reduces.
pub(crate) struct ReduceShape<'d> {
    pub rows: &'d Dim,
    pub cols: &'d Dim,
    pub along: Axis,
    pub width: Width,
}

/// The running state of a reduction, per lane: one value, or (maximum, sum of `exp(x - max)`)
/// for logsumexp, or (best value, its index) for argmax.
pub(crate) struct Accumulator {
    op: ReduceOp,
    elem: Elem,
    width: Width,
    vars: [Variable; 2],
}

impl Accumulator {
    pub fn new(em: &mut Emitter, op: ReduceOp, elem: Elem, width: Width) -> Accumulator {
        let first = em.constant(elem, width, identity(op, elem));
        let second = match op {
            ReduceOp::ArgMax => em.constant(Elem::Int, width, 0.0),
            _ => em.constant(elem, width, 0.0),
        };
        let ty0 = em.fb.func.dfg.value_type(first);
        let ty1 = em.fb.func.dfg.value_type(second);
        Accumulator { op, elem, width, vars: [em.local(ty0, first), em.local(ty1, second)] }
    }

    /// Folds `x` in; lanes outside `valid` (a mask) are left out. `index` is `x`'s position
    /// along the reduced axis (argmax only).
    pub fn update(&self, em: &mut Emitter, x: Value, valid: Option<Value>, index: Value) {
        let w = self.width;
        let x = match valid {
            Some(mask) => {
                let neutral = em.constant(self.elem, w, identity(self.op, self.elem));
                em.select(mask, x, neutral, w)
            }
            None => x,
        };
        let acc = em.fb.use_var(self.vars[0]);
        let real = self.elem == Elem::Real;
        let next = match self.op {
            ReduceOp::Sum if real => em.fb.ins().fadd(acc, x),
            ReduceOp::Sum => em.fb.ins().iadd(acc, x),
            ReduceOp::Max if real => em.fb.ins().fmax(acc, x),
            ReduceOp::Max => em.fb.ins().smax(acc, x),
            ReduceOp::Min if real => em.fb.ins().fmin(acc, x),
            ReduceOp::Min => em.fb.ins().smin(acc, x),
            ReduceOp::LogSumExp => {
                // One exp per element: of the two rescalings exp(m - max) and exp(x - max),
                // one is exp(0) = 1 and the other exp(-|x - m|).
                let s = em.fb.use_var(self.vars[1]);
                let bigger = em.fcmp(FloatCC::GreaterThan, x, acc, w);
                let diff = em.fb.ins().fsub(x, acc);
                let gap = em.fb.ins().fabs(diff);
                let neg_gap = em.fb.ins().fneg(gap);
                let d = math::exp(em, neg_gap, w);
                let one = em.constant(Elem::Real, w, 1.0);
                let rescaled = em.fb.ins().fma(s, d, one);
                let added = em.fb.ins().fadd(s, d);
                let s_next = em.select(bigger, rescaled, added, w);
                // x = -inf adds nothing (and would make the gap NaN when m is -inf too).
                let neg_inf = em.constant(Elem::Real, w, f64::NEG_INFINITY);
                let skip = em.fcmp(FloatCC::Equal, x, neg_inf, w);
                let s_next = em.select(skip, s, s_next, w);
                em.fb.def_var(self.vars[1], s_next);
                em.select(bigger, x, acc, w)
            }
            ReduceOp::ArgMax => {
                let best_index = em.fb.use_var(self.vars[1]);
                let bigger = if real {
                    em.fcmp(FloatCC::GreaterThan, x, acc, w)
                } else {
                    em.icmp(IntCC::SignedGreaterThan, x, acc, w)
                };
                let at = em.index_value(index, w, true);
                let next_index = em.select(bigger, at, best_index, w);
                em.fb.def_var(self.vars[1], next_index);
                em.select(bigger, x, acc, w)
            }
        };
        em.fb.def_var(self.vars[0], next);
    }

    /// The result of each lane on its own.
    pub fn per_lane(&self, em: &mut Emitter) -> Value {
        let acc = em.fb.use_var(self.vars[0]);
        let second = em.fb.use_var(self.vars[1]);
        match self.op {
            ReduceOp::LogSumExp => {
                let l = math::log(em, second, self.width);
                em.fb.ins().fadd(acc, l)
            }
            ReduceOp::ArgMax => second,
            _ => acc,
        }
    }

    /// The result over all lanes, as one element.
    pub fn across(&self, em: &mut Emitter) -> Value {
        let w = self.width;
        let acc = em.fb.use_var(self.vars[0]);
        let real = self.elem == Elem::Real;
        match self.op {
            ReduceOp::Sum if real => em.across_lanes(acc, w, |em, a, b| em.fb.ins().fadd(a, b)),
            ReduceOp::Sum => em.across_lanes(acc, w, |em, a, b| em.fb.ins().iadd(a, b)),
            ReduceOp::Max if real => em.across_lanes(acc, w, |em, a, b| em.fb.ins().fmax(a, b)),
            ReduceOp::Max => em.across_lanes(acc, w, |em, a, b| em.fb.ins().smax(a, b)),
            ReduceOp::Min if real => em.across_lanes(acc, w, |em, a, b| em.fb.ins().fmin(a, b)),
            ReduceOp::Min => em.across_lanes(acc, w, |em, a, b| em.fb.ins().smin(a, b)),
            ReduceOp::LogSumExp => {
                let m = em.across_lanes(acc, w, |em, a, b| em.fb.ins().fmax(a, b));
                let s = em.fb.use_var(self.vars[1]);
                let wide_m = em.widen(m, Elem::Real, w);
                let shift = em.fb.ins().fsub(acc, wide_m);
                let scale = math::exp(em, shift, w);
                let scaled = em.fb.ins().fmul(s, scale);
                // Lanes that saw only -inf hold s = 0 but a NaN scale when m is -inf too.
                let neg_inf = em.constant(Elem::Real, w, f64::NEG_INFINITY);
                let empty = em.fcmp(FloatCC::Equal, acc, neg_inf, w);
                let zero = em.constant(Elem::Real, w, 0.0);
                let scaled = em.select(empty, zero, scaled, w);
                let total = em.across_lanes(scaled, w, |em, a, b| em.fb.ins().fadd(a, b));
                let l = math::log(em, total, Width::One);
                em.fb.ins().fadd(m, l)
            }
            ReduceOp::ArgMax => em.fb.use_var(self.vars[1]),
        }
    }
}

/// The value that leaves a reduction unchanged.
fn identity(op: ReduceOp, elem: Elem) -> f64 {
    let int = elem != Elem::Real;
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max | ReduceOp::ArgMax | ReduceOp::LogSumExp if int => f64::from(i32::MIN),
        ReduceOp::Max | ReduceOp::ArgMax | ReduceOp::LogSumExp => f64::NEG_INFINITY,
        ReduceOp::Min if int => f64::from(i32::MAX),
        ReduceOp::Min => f64::INFINITY,
    }
}

impl Emitter<'_, '_> {
    /// A reduction over units `[begin, end)`: rows reduced across (horizontally, with a masked
    /// last vector) when it reduces the vectorised axis, else vectors of columns reduced down.
    #[allow(clippy::too_many_arguments)]
    pub fn reduce(
        &mut self,
        buffers: &[Buffer],
        out: &Access,
        op: ReduceOp,
        shape: &ReduceShape,
        body: &ElementProgram,
        begin: Value,
        end: Value,
    ) {
        let ReduceShape { rows, cols, along: axis, width } = *shape;
        let inner = inner_axis(rows, cols);
        let elem = body.result_elem();
        let zero = self.int(0);
        if axis == inner {
            let extent = self.dim(along(inner, rows, cols));
            self.for_range(begin, end, 1, |em, o| {
                let run = Run { op, elem, width, inner, tile: None };
                let result = em.reduce_run(buffers, body, &run, o, zero, extent);
                em.store_access(buffers, out, &point(o, zero, inner, Width::One), result);
            });
        } else {
            let extent = self.dim(along(axis, rows, cols));
            self.for_range(begin, end, lanes(width), |em, i| {
                let acc = Accumulator::new(em, op, elem, width);
                em.for_range(zero, extent, 1, |em, o| {
                    let x = em.evaluate(buffers, body, &point(o, i, inner, width));
                    acc.update(em, x, None, o);
                });
                let result = acc.per_lane(em);
                em.store_access(buffers, out, &point(zero, i, inner, width), result);
            });
        }
    }

    /// Reduces `body` at outer index `o` over inner indices `[from, to)`: whole vectors, then a
    /// masked last one. The result is one element.
    pub fn reduce_run(
        &mut self,
        buffers: &[Buffer],
        body: &ElementProgram,
        run: &Run,
        o: Value,
        from: Value,
        to: Value,
    ) -> Value {
        let Run { op, elem, width, inner, tile } = *run;
        let acc = Accumulator::new(self, op, elem, width);
        let span = self.fb.ins().isub(to, from);
        let whole = match width {
            Width::One => span,
            Width::Lanes => self.fb.ins().band_imm_s(span, !(LANES - 1)),
        };
        let whole_end = self.fb.ins().iadd(from, whole);
        let at = |i: Value, width: Width| Point { tile, ..point(o, i, inner, width) };
        self.for_range(from, whole_end, lanes(width), |em, i| {
            let x = em.evaluate(buffers, body, &at(i, width));
            acc.update(em, x, None, i);
        });
        if width == Width::Lanes {
            let partial = self.fb.ins().icmp(IntCC::SignedLessThan, whole_end, to);
            self.when(partial, |em| {
                let x = em.evaluate(buffers, body, &at(whole_end, width));
                let valid = em.valid_lanes(whole_end, to);
                acc.update(em, x, Some(valid), whole_end);
            });
        }
        acc.across(self)
    }
}

/// How a run of a reduction is generated.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub op: ReduceOp,
    /// The reduced values' element type.
    pub elem: Elem,
    pub width: Width,
    pub inner: Axis,
    pub tile: Option<TileCursor>,
}

/// Folds the reduction `new` of more elements into the running result `old` (reals, one
/// element each): how the partial results of successive tiles of a row combine.
pub(crate) fn combine(em: &mut Emitter, op: ReduceOp, old: Value, new: Value) -> Value {
    match op {
        ReduceOp::Sum => em.fb.ins().fadd(old, new),
        ReduceOp::Max => em.fb.ins().fmax(old, new),
        ReduceOp::Min => em.fb.ins().fmin(old, new),
        ReduceOp::LogSumExp => {
            // log(e^old + e^new), shifted by the larger; -inf when both are.
            let m = em.fb.ins().fmax(old, new);
            let a = em.fb.ins().fsub(old, m);
            let b = em.fb.ins().fsub(new, m);
            let ea = math::exp(em, a, Width::One);
            let eb = math::exp(em, b, Width::One);
            let sum = em.fb.ins().fadd(ea, eb);
            let l = math::log(em, sum, Width::One);
            let r = em.fb.ins().fadd(m, l);
            let neg_inf = em.constant(Elem::Real, Width::One, f64::NEG_INFINITY);
            let empty = em.fcmp(FloatCC::Equal, m, neg_inf, Width::One);
            em.select(empty, neg_inf, r, Width::One)
        }
        ReduceOp::ArgMax => unreachable!("pairwise nodes reduce with sum, max, min or logsumexp"),
    }
}
