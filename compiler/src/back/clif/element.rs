//! Code for one point of a kernel's iteration space: the addresses of the operands an
//! [`Access`] reads, and the evaluation of an [`ElementProgram`] there, one element or one
//! vector of them at a time.

use super::builder::{reg_type, Emitter, Hoisted, LoadStride, Width};
use super::math;
use super::plan::{Access, Axis, Buffer, Coord, ElementProgram, Op, RowStride, LANES};
use crate::ir::{BinaryOp, Elem, Literal, UnaryOp};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, Value};

/// Where a kernel is: its loop indices (`i64`; along the vectorised axis, the first lane's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    pub row: Value,
    pub col: Value,
    /// The axis whose consecutive elements share a vector.
    pub inner: Axis,
    pub width: Width,
    /// The pairwise tile being read by [`Op::Dot`], if any.
    pub tile: Option<TileCursor>,
}

/// A tile of dot products in memory: entry `(row, col)` of the iteration space is at
/// `base + ((row - row0) * stride + (col - col0)) * 4`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileCursor {
    pub base: Value,
    pub stride: Value,
    pub row0: Value,
    pub col0: Value,
}

impl Point {
    fn index(&self, axis: Axis) -> Value {
        match axis {
            Axis::Row => self.row,
            Axis::Col => self.col,
        }
    }
}

/// Whether `buffer` can be stored to (or loaded from) as whole vectors along `inner` through
/// `access`.
pub(crate) fn contiguous_along(buffers: &[Buffer], access: &Access, inner: Axis) -> bool {
    let row = access.row.follows == Some(inner);
    let col = access.col.follows == Some(inner);
    match (row, col) {
        (false, true) => true,
        (true, false) => buffers[access.buffer].row_stride() == RowStride::One,
        _ => false,
    }
}

impl Emitter<'_, '_> {
    fn coord_value(&mut self, c: &Coord<Axis>, p: &Point) -> Value {
        let offset = self.dim(&c.offset);
        match c.follows {
            Some(axis) => self.fb.ins().iadd(p.index(axis), offset),
            None => offset,
        }
    }

    /// A buffer's row stride in elements.
    pub fn row_stride(&mut self, buffers: &[Buffer], buffer: usize) -> Value {
        match buffers[buffer].row_stride() {
            RowStride::One => self.int(1),
            RowStride::Padded(d) => self.padded(&d),
        }
    }

    /// The address `access` reads at `p`, and how its lanes lie along `p.inner`.
    pub fn address(&mut self, buffers: &[Buffer], access: &Access, p: &Point) -> (Value, LoadStride) {
        let rs = self.row_stride(buffers, access.buffer);
        let r = self.coord_value(&access.row, p);
        let c = self.coord_value(&access.col, p);
        let row_start = self.fb.ins().imul(r, rs);
        let index = self.fb.ins().iadd(row_start, c);
        let base = self.buffer_base(access.buffer);
        let addr = self.element_address(base, index);
        let stride = self.stride_along(buffers, access, p.inner, rs);
        (addr, stride)
    }

    fn stride_along(&mut self, buffers: &[Buffer], access: &Access, axis: Axis, rs: Value) -> LoadStride {
        let row = access.row.follows == Some(axis);
        let col = access.col.follows == Some(axis);
        match (row, col) {
            (false, false) => LoadStride::Uniform,
            _ if contiguous_along(buffers, access, axis) => LoadStride::Contiguous,
            (true, false) => LoadStride::Elements(rs),
            _ => LoadStride::Elements(self.fb.ins().iadd_imm_s(rs, 1)),
        }
    }

    /// Elements between consecutive rows and consecutive columns of `access` (a strided view
    /// for library calls).
    pub fn strides(&mut self, buffers: &[Buffer], access: &Access) -> (Value, Value) {
        let rs = self.row_stride(buffers, access.buffer);
        let along = |em: &mut Self, axis: Axis| {
            let mut s = em.int(0);
            if access.row.follows == Some(axis) {
                s = em.fb.ins().iadd(s, rs);
            }
            if access.col.follows == Some(axis) {
                s = em.fb.ins().iadd_imm_s(s, 1);
            }
            s
        };
        let row = along(self, Axis::Row);
        let col = along(self, Axis::Col);
        (row, col)
    }

    pub fn load_access(&mut self, buffers: &[Buffer], access: &Access, elem: Elem, p: &Point) -> Value {
        let (addr, stride) = self.address(buffers, access, p);
        self.load_buffer(elem, p.width, addr, stride)
    }

    /// `count` consecutive vectors along `p.inner` from `p` (which is `Width::Lanes`): from one
    /// address with immediate offsets when they lie contiguously, which spares a register
    /// and an address computation per vector in unrolled loops.
    pub fn load_vectors(
        &mut self,
        buffers: &[Buffer],
        access: &Access,
        elem: Elem,
        p: &Point,
        count: usize,
    ) -> Vec<Value> {
        let (addr, stride) = self.address(buffers, access, p);
        if matches!(stride, LoadStride::Contiguous) {
            return (0..count).map(|u| self.load_buffer_vector_at(elem, addr, (u as i64 * LANES * 4) as i32)).collect();
        }
        (0..count)
            .map(|u| {
                let shift = |em: &mut Self, v: Value, axis: Axis| {
                    if axis == p.inner {
                        em.fb.ins().iadd_imm_s(v, u as i64 * LANES)
                    } else {
                        v
                    }
                };
                let (row, col) = (shift(self, p.row, Axis::Row), shift(self, p.col, Axis::Col));
                self.load_access(buffers, access, elem, &Point { row, col, ..*p })
            })
            .collect()
    }

    /// Stores `value` where `access` points at `p` (contiguous along `p.inner`, or one element).
    pub fn store_access(&mut self, buffers: &[Buffer], access: &Access, p: &Point, value: Value) {
        let (addr, _) = self.address(buffers, access, p);
        self.store(value, addr);
    }

    /// Evaluates `prog` at `p`.
    pub fn evaluate(&mut self, buffers: &[Buffer], prog: &ElementProgram, p: &Point) -> Value {
        let vals = self.evaluate_all(buffers, prog, p);
        vals.get(prog.result).copied().unwrap_or_else(|| self.constant(Elem::Real, p.width, 0.0))
    }

    /// Every op of `prog` at `p`.
    fn evaluate_all(&mut self, buffers: &[Buffer], prog: &ElementProgram, p: &Point) -> Vec<Value> {
        let w = p.width;
        let mut vals: Vec<Value> = Vec::with_capacity(prog.ops.len());
        for (k, (op, elem)) in prog.ops.iter().enumerate() {
            if let Some(&Some(v)) = self.hoisted.values.get(k) {
                vals.push(v);
                continue;
            }
            let elem = *elem;
            let v = match op {
                Op::Load(a) => self.load_access(buffers, a, elem, p),
                Op::Literal(Literal::Real(v)) => self.constant(elem, w, *v),
                Op::Literal(Literal::Int(v)) => self.constant(elem, w, *v as f64),
                Op::Literal(Literal::Bool(v)) => self.constant(elem, w, f64::from(u8::from(*v))),
                Op::Index(c) => {
                    let base = self.coord_value(c, p);
                    self.index_value(base, w, c.follows == Some(p.inner))
                }
                Op::Dot => self.tile_entry(p),
                Op::Unary(op, a) => self.unary(*op, vals[*a], elem, w),
                Op::Binary(BinaryOp::Div, a, b) if self.hoisted.reciprocals.get(*b).is_some_and(Option::is_some) => {
                    // A multiply by the hoisted reciprocal (within an ulp of the quotient).
                    let reciprocal = self.hoisted.reciprocals[*b].expect("checked above");
                    self.fb.ins().fmul(vals[*a], reciprocal)
                }
                Op::Binary(op, a, b) => {
                    let operand = prog.ops[*a].1;
                    self.binary(*op, vals[*a], vals[*b], operand, w)
                }
                Op::Select(c, a, b) => self.select(vals[*c], vals[*a], vals[*b], w),
                Op::Cast(a) => self.cast(vals[*a], prog.elem(*a), elem, w),
            };
            vals.push(v);
        }
        vals
    }

    /// The address of the tile entry at `p`.
    pub fn tile_address(&mut self, p: &Point) -> Value {
        let Some(t) = p.tile else {
            unreachable!("tile entries are only read by pairwise tile kernels, which set the cursor")
        };
        let r = self.fb.ins().isub(p.row, t.row0);
        let c = self.fb.ins().isub(p.col, t.col0);
        let row_start = self.fb.ins().imul(r, t.stride);
        let index = self.fb.ins().iadd(row_start, c);
        self.element_address(t.base, index)
    }

    /// Tiles are iterated along their rows, so a tile's vectors are contiguous.
    fn tile_entry(&mut self, p: &Point) -> Value {
        let addr = self.tile_address(p);
        self.load(Elem::Real, p.width, addr, LoadStride::Contiguous)
    }

    fn unary(&mut self, op: UnaryOp, a: Value, elem: Elem, w: Width) -> Value {
        match (op, elem) {
            (UnaryOp::Neg, Elem::Real) => self.fb.ins().fneg(a),
            (UnaryOp::Neg, _) => self.fb.ins().ineg(a),
            (UnaryOp::Exp, _) => math::exp(self, a, w),
            (UnaryOp::Log, _) => math::log(self, a, w),
            (UnaryOp::Sqrt, _) => self.fb.ins().sqrt(a),
            (UnaryOp::Abs, Elem::Real) => self.fb.ins().fabs(a),
            (UnaryOp::Abs, _) => self.fb.ins().iabs(a),
            // Kernels with `cos` are generated one element at a time (see `needs_scalar`).
            (UnaryOp::Cos, _) => self.call("sslc_cosf", &[a])[0],
            (UnaryOp::Not, _) => self.fb.ins().bnot(a),
            (UnaryOp::Log1p, _) => math::log1p(self, a, w),
            (UnaryOp::Expm1, _) => math::expm1(self, a, w),
            (UnaryOp::Softplus, _) => math::softplus(self, a, w),
            (UnaryOp::Square, Elem::Real) => self.fb.ins().fmul(a, a),
            (UnaryOp::Square, _) => self.fb.ins().imul(a, a),
        }
    }

    fn binary(&mut self, op: BinaryOp, a: Value, b: Value, operand: Elem, w: Width) -> Value {
        use BinaryOp::*;
        match operand {
            Elem::Real => match op {
                Add => self.fb.ins().fadd(a, b),
                Sub => self.fb.ins().fsub(a, b),
                Mul => self.fb.ins().fmul(a, b),
                Div => self.fb.ins().fdiv(a, b),
                Pow => math::pow(self, a, b, w),
                // Python's sign convention: a - b * floor(a / b).
                Rem => {
                    let q = self.fb.ins().fdiv(a, b);
                    let f = self.fb.ins().floor(q);
                    let m = self.fb.ins().fmul(b, f);
                    self.fb.ins().fsub(a, m)
                }
                Max => self.fb.ins().fmax(a, b),
                Min => self.fb.ins().fmin(a, b),
                Lt => self.fcmp(FloatCC::LessThan, a, b, w),
                Le => self.fcmp(FloatCC::LessThanOrEqual, a, b, w),
                Gt => self.fcmp(FloatCC::GreaterThan, a, b, w),
                Ge => self.fcmp(FloatCC::GreaterThanOrEqual, a, b, w),
                Eq => self.fcmp(FloatCC::Equal, a, b, w),
                Ne => self.fcmp(FloatCC::NotEqual, a, b, w),
                And | Or => unreachable!("validated programs apply logic to bools only"),
            },
            Elem::Int | Elem::Bool => match op {
                Add => self.fb.ins().iadd(a, b),
                Sub => self.fb.ins().isub(a, b),
                Mul => self.fb.ins().imul(a, b),
                Rem => math::int_rem(self, a, b),
                Max => self.fb.ins().smax(a, b),
                Min => self.fb.ins().smin(a, b),
                Lt => self.icmp(IntCC::SignedLessThan, a, b, w),
                Le => self.icmp(IntCC::SignedLessThanOrEqual, a, b, w),
                Gt => self.icmp(IntCC::SignedGreaterThan, a, b, w),
                Ge => self.icmp(IntCC::SignedGreaterThanOrEqual, a, b, w),
                Eq => self.icmp(IntCC::Equal, a, b, w),
                Ne => self.icmp(IntCC::NotEqual, a, b, w),
                And => self.fb.ins().band(a, b),
                Or => self.fb.ins().bor(a, b),
                Div | Pow => unreachable!("validated programs divide and exponentiate reals only"),
            },
        }
    }

    fn cast(&mut self, a: Value, from: Elem, to: Elem, w: Width) -> Value {
        match (from, to) {
            _ if from == to => a,
            (Elem::Real, Elem::Int) => self.fb.ins().fcvt_to_sint_sat(reg_type(Elem::Int, w), a),
            (Elem::Real, Elem::Bool) => {
                let zero = self.constant(Elem::Real, w, 0.0);
                self.fcmp(FloatCC::NotEqual, a, zero, w)
            }
            (Elem::Int, Elem::Real) => self.fb.ins().fcvt_from_sint(reg_type(Elem::Real, w), a),
            (Elem::Int, Elem::Bool) => {
                let zero = self.constant(Elem::Int, w, 0.0);
                self.icmp(IntCC::NotEqual, a, zero, w)
            }
            (Elem::Bool, _) => {
                let one = self.constant(to, w, 1.0);
                let zero = self.constant(to, w, 0.0);
                self.select(a, one, zero, w)
            }
            _ => unreachable!("every pair of distinct element types is handled above"),
        }
    }
}

impl Emitter<'_, '_> {
    /// Evaluates, at `p`, the ops of `prog` that do not vary along `axis`, and keeps them in
    /// [`Emitter::hoisted`] so that evaluations inside a loop over `axis` reuse them (until
    /// it is reset): the row's values and the scalars of a tile function are computed once per
    /// row, not once per vector.
    pub fn hoist_invariants(&mut self, buffers: &[Buffer], prog: &ElementProgram, p: &Point, axis: Axis) {
        let mut varies = vec![false; prog.ops.len()];
        for (k, (op, _)) in prog.ops.iter().enumerate() {
            let along = |c: &Coord<Axis>| c.follows == Some(axis);
            varies[k] = match op {
                Op::Dot => true,
                Op::Index(c) => along(c),
                Op::Load(a) => along(&a.row) || along(&a.col),
                Op::Literal(_) => false,
                Op::Unary(_, a) | Op::Cast(a) => varies[*a],
                Op::Binary(_, a, b) => varies[*a] || varies[*b],
                Op::Select(c, a, b) => varies[*c] || varies[*a] || varies[*b],
            };
        }
        // Evaluating the whole program once defines every op; only the invariant ones are kept.
        self.hoisted = Hoisted::default();
        let mut invariant = ElementProgram::default();
        let mut kept = Vec::new();
        for (k, (op, elem)) in prog.ops.iter().enumerate() {
            if !varies[k] {
                invariant.ops.push((op.clone(), *elem));
                kept.push(k);
            } else {
                // A placeholder the invariant ops never read (they depend on invariant ops only).
                invariant.ops.push((Op::Literal(Literal::Int(0)), Elem::Int));
            }
        }
        let values = self.evaluate_all(buffers, &invariant, p);
        let mut hoisted = Hoisted { values: vec![None; prog.ops.len()], reciprocals: vec![None; prog.ops.len()] };
        let mut computed = Vec::new();
        for k in kept {
            hoisted.values[k] = Some(values[k]);
            if !matches!(prog.ops[k].0, Op::Literal(_)) {
                computed.push(values[k]);
            }
        }
        // Divisions of varying values by invariant ones become multiplications.
        for (k, (op, elem)) in prog.ops.iter().enumerate() {
            if let (Op::Binary(BinaryOp::Div, _, b), Elem::Real, true) = (op, elem, varies[k]) {
                if !varies[*b] && hoisted.reciprocals[*b].is_none() {
                    let one = self.constant(Elem::Real, p.width, 1.0);
                    let r = self.fb.ins().fdiv(one, values[*b]);
                    hoisted.reciprocals[*b] = Some(r);
                    computed.push(r);
                }
            }
        }
        self.anchor(&computed);
        self.hoisted = hoisted;
    }
}

/// Whether `prog` needs one-element code: `cos` is a call per element, and integer `%` has no
/// vector instruction.
pub(crate) fn needs_scalar(prog: &ElementProgram) -> bool {
    prog.ops.iter().any(|(op, _)| match op {
        Op::Unary(UnaryOp::Cos, _) => true,
        Op::Binary(BinaryOp::Rem, a, _) => prog.ops[*a].1 != Elem::Real,
        _ => false,
    })
}
