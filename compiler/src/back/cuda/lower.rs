//! Lowering an IR program to a [`Plan`]: which values live in device buffers, and the steps
//! that compute them.
//!
//! Element-wise work is fused by *inlining*: a node that is not stored is recomputed inside
//! every kernel that reads it, at the index the reader needs (through broadcasts, slices,
//! transposes and concatenations, which only remap indices). A value is stored when it is an
//! output, a reduction or product, read by several nodes, expanded by a broadcast, read densely
//! (tile operands), or read inside a loop it is not part of — unless recomputing it costs no
//! more than loading it. Everything is decided from the IR's structure alone.

use super::c::{self, CExpr, COp, CStmt, CType, Lambda};
use super::plan::{
    c_type, Body, Buffer, BufferId, BufferSource, HostScalar, KernelPlan, PairwiseProduct, Plan, Reducer, Scalar,
    ScalarId, Step, Tiles, Use,
};
use super::{CudaError, Precision};
use crate::fuse;
use crate::ir::{
    Axis, BinaryOp, BuiltinValue, Dim, Elem, Expr, Handle, KernelNode, Literal, Module, PairwiseLoad, PairwiseOperands,
    Program, ReduceOp, Shape, UnaryOp,
};
use crate::ops::Prim;
use std::collections::{BTreeMap, BTreeSet, HashMap};

type H = Handle<Expr>;

/// The most arithmetic a reader recomputes rather than load a stored value.
const CHEAP_OPERATIONS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// Recomputed by its readers.
    Inline,
    Buffer(BufferId),
    /// Shares another node's buffer (a loop's final value is its carried variable's).
    Alias(H),
}

pub fn lower(module: &Module, program: &Program, precision: Precision) -> Result<Plan, CudaError> {
    check_loops(program, &program.body, false)?;
    let fusion = fuse::plan(program, &fuse::uses(program), &POLICY);
    let mut l = Lowering {
        module,
        p: program,
        fusion,
        place: vec![Place::Inline; program.exprs.len()],
        units: Vec::new(),
        outputs: program.outputs.iter().map(|o| o.value).collect(),
        plan: Plan { buffers: Vec::new(), scalars: Vec::new(), kernels: Vec::new(), outputs: Vec::new(), precision },
        externals: HashMap::new(),
    };
    l.place_block(&program.body)?;
    for &h in &program.body {
        l.generate(h)?;
    }
    l.schedule();
    l.plan.outputs = program
        .outputs
        .iter()
        .map(|o| (o.name.clone(), l.dense_buffer(o.value).expect("outputs are stored")))
        .collect();
    Ok(l.plan)
}

struct Lowering<'a> {
    module: &'a Module,
    p: &'a Program,
    /// The shared stage's inline-or-store decisions, uniform scalars and costs.
    fusion: fuse::Fusion,
    /// The work of each computed node, in program order, before it is grouped into kernels.
    units: Vec<Unit>,
    place: Vec<Place>,
    outputs: Vec<H>,
    plan: Plan,
    externals: HashMap<BufferSource, BufferId>,
}

impl Lowering<'_> {
    // ---- placement -----------------------------------------------------------------------

    fn place_block(&mut self, block: &[H]) -> Result<(), CudaError> {
        for &h in block {
            self.place[h.index()] = self.place_of(h)?;
            if let Expr::Loop { carried, body, .. } = &self.p.exprs[h] {
                for c in carried {
                    let b = self.temp(c.param, "carried");
                    self.place[c.param.index()] = Place::Buffer(b);
                }
                self.place_block(body)?;
            }
        }
        Ok(())
    }

    fn place_of(&mut self, h: H) -> Result<Place, CudaError> {
        let external = |l: &mut Self, source: BufferSource, name: String| Place::Buffer(l.external(h, source, name));
        Ok(match &self.p.exprs[h] {
            Expr::Input(i) => {
                external(self, BufferSource::Input(i.index()), format!("in_{}", self.module.inputs[*i].name))
            }
            Expr::Const(k) => {
                external(self, BufferSource::Const(k.index()), format!("const_{}", self.module.consts[*k].name))
            }
            Expr::State(s) => {
                external(self, BufferSource::State(s.index()), format!("state_{}", self.module.states[*s].name))
            }
            Expr::Builtin(BuiltinValue::SampleIndex) => {
                external(self, BufferSource::SampleIndex, "sample_index".into())
            }
            Expr::Forward(_) => {
                return Err(CudaError::Unsupported("outputs of the loss program (read by `on step` handlers)".into()))
            }
            Expr::Loop { .. } | Expr::LoopParam => Place::Inline,
            Expr::LoopOutput { looped, index } => match &self.p.exprs[*looped] {
                Expr::Loop { carried, .. } => Place::Alias(carried[*index].param),
                _ => unreachable!("validated programs only take outputs of loops"),
            },
            Expr::Reduce { .. } | Expr::MatMul { .. } | Expr::PairwiseReduce { .. } | Expr::PairwiseMatMul { .. } => {
                Place::Buffer(self.temp(h, "t"))
            }
            _ if self.fusion.inline[h.index()] => Place::Inline,
            // An output that only renames or reshapes a stored value shares its buffer.
            _ if self.outputs.contains(&h) && self.view_buffer(h).is_some() => Place::Inline,
            _ => Place::Buffer(self.temp(h, "t")),
        })
    }

    /// The buffer holding the node's elements in row-major order, if there is one: its own,
    /// or that of the value it only renames or reshapes.
    fn dense_buffer(&self, h: H) -> Option<BufferId> {
        match self.place[h.index()] {
            Place::Buffer(b) => Some(b),
            Place::Alias(a) => self.dense_buffer(a),
            Place::Inline => self.view_buffer(h),
        }
    }

    fn view_buffer(&self, h: H) -> Option<BufferId> {
        match &self.p.exprs[h] {
            Expr::StopGrad { arg } | Expr::ExpandDims { arg, .. } | Expr::Squeeze { arg, .. } => {
                self.dense_buffer(*arg)
            }
            _ => None,
        }
    }

    fn external(&mut self, h: H, source: BufferSource, name: String) -> BufferId {
        if let Some(&b) = self.externals.get(&source) {
            return b;
        }
        let ty = self.p.ty(h);
        let b = self.add_buffer(Buffer { name, elem: ty.elem, shape: ty.shape.clone(), source });
        self.externals.insert(source, b);
        b
    }

    fn temp(&mut self, h: H, prefix: &str) -> BufferId {
        let ty = self.p.ty(h).clone();
        let name = match self.p.names.get(&h) {
            Some(n) => format!("{prefix}{}_{}", h.index(), identifier(n)),
            None => format!("{prefix}{}", h.index()),
        };
        self.add_buffer(Buffer { name, elem: ty.elem, shape: ty.shape, source: BufferSource::Temp })
    }

    fn add_buffer(&mut self, b: Buffer) -> BufferId {
        self.plan.buffers.push(b);
        self.plan.buffers.len() - 1
    }

    // ---- kernels -------------------------------------------------------------------------

    fn generate(&mut self, h: H) -> Result<(), CudaError> {
        if let Expr::Loop { .. } = self.p.exprs[h] {
            return self.loop_kernel(h);
        }
        let mut uses = KernelUses::default();
        if let Some(body) = self.work_for(h, &mut uses)? {
            self.units.push(Unit { node: h, body, uses });
        }
        Ok(())
    }

    /// Groups the units into kernels: each runs after the units whose results it reads, and
    /// the grid steps that could run at the same point share one launch.
    fn schedule(&mut self) {
        let mut producer: HashMap<BufferId, usize> = HashMap::new();
        let mut level = Vec::with_capacity(self.units.len());
        for (k, unit) in self.units.iter().enumerate() {
            let reads = unit.uses.buffers.iter().filter(|(_, u)| u.read).filter_map(|(b, _)| producer.get(b));
            level.push(reads.map(|&p: &usize| level[p] + 1).max().unwrap_or(0));
            producer.extend(unit.uses.buffers.iter().filter(|(_, u)| u.written).map(|(&b, _)| (b, k)));
        }
        let units = std::mem::take(&mut self.units);
        let depth = level.iter().copied().max().map_or(0, |d| d + 1);
        let mut by_level: Vec<Vec<Unit>> = (0..depth).map(|_| Vec::new()).collect();
        for (unit, l) in units.into_iter().zip(level) {
            by_level[l].push(unit);
        }
        for members in by_level {
            let (grid, alone): (Vec<Unit>, Vec<Unit>) =
                members.into_iter().partition(|u| matches!(u.body, Body::Grid(_)));
            if !grid.is_empty() {
                self.push_kernel(grid);
            }
            for unit in alone {
                self.push_kernel(vec![unit]);
            }
        }
    }

    fn push_kernel(&mut self, units: Vec<Unit>) {
        let n = self.plan.kernels.len();
        let kinds: Vec<String> = units.iter().map(|u| unit_kind(&u.body)).collect();
        let name = match (units.as_slice(), self.p.names.get(&units[0].node)) {
            ([_], Some(label)) => format!("k{n:02}_{}_{}", kinds[0], identifier(label)),
            _ => {
                let mut distinct: Vec<&str> = Vec::new();
                for kind in &kinds {
                    if !distinct.contains(&kind.as_str()) {
                        distinct.push(kind);
                    }
                }
                format!("k{n:02}_{}", distinct.join("_"))
            }
        };
        let doc: Vec<String> = units
            .iter()
            .zip(&kinds)
            .map(|(u, kind)| format!("{kind} -> %{} {}", u.node.index(), self.p.ty(u.node).display(&self.module.dims)))
            .collect();
        let mut uses = KernelUses::default();
        let mut steps = Vec::new();
        let mut body = None;
        for unit in units {
            for (b, u) in unit.uses.buffers {
                let merged = uses.buffers.entry(b).or_default();
                merged.read |= u.read;
                merged.written |= u.written;
            }
            uses.scalars.extend(unit.uses.scalars);
            match unit.body {
                Body::Grid(s) => steps.extend(s),
                other => body = Some(other),
            }
        }
        self.plan.kernels.push(KernelPlan {
            name,
            doc: doc.join("\n"),
            body: body.unwrap_or(Body::Grid(steps)),
            buffers: uses.buffers.into_iter().collect(),
            scalars: uses.scalars.into_iter().collect(),
        });
    }

    /// The work computing node `h` into its buffer; `None` when the node needs none.
    fn work_for(&mut self, h: H, uses: &mut KernelUses) -> Result<Option<Body>, CudaError> {
        let Place::Buffer(out) = self.place[h.index()] else { return Ok(None) };
        if self.plan.buffers[out].source != BufferSource::Temp || matches!(self.p.exprs[h], Expr::LoopParam) {
            return Ok(None);
        }
        uses.write(out);
        let ty = self.p.ty(h).clone();
        let step = match self.p.exprs[h].clone() {
            Expr::PairwiseReduce { pairwise, op, axis } => {
                return Ok(Some(Body::Tiles(self.tiles(&pairwise, None, op, axis, out, uses))));
            }
            Expr::PairwiseMatMul { pairwise, v, axis } => {
                return Ok(Some(Body::Tiles(self.tiles(&pairwise, Some(v), ReduceOp::Sum, axis, out, uses))));
            }
            Expr::Reduce { op, arg, axis } => {
                let arg_shape = self.p.ty(arg).shape.clone();
                let mut e = Emitter::new(self, uses);
                let outputs = e.numel(&ty.shape);
                let length = e.dim(&arg_shape[axis]);
                let mut idx = e.unflatten(c::var("o"), &ty.shape);
                idx.insert(axis, c::var("k"));
                let v = e.value(arg, &idx);
                let value = e.finish(&[(CType::LongLong, "o"), (CType::LongLong, "k")], CStmt::Return(v));
                Step::Reduce { reducer: Reducer { op, elem: self.p.ty(arg).elem }, out, outputs, length, value }
            }
            Expr::MatMul { lhs, rhs } => {
                let inner = self.p.ty(lhs).shape[1].clone();
                let mut e = Emitter::new(self, uses);
                let outputs = e.numel(&ty.shape);
                let length = e.dim(&inner);
                let idx = e.unflatten(c::var("o"), &ty.shape);
                let a = e.value(lhs, &[idx[0].clone(), c::var("k")]);
                let b = e.value(rhs, &[c::var("k"), idx[1].clone()]);
                let value = e.finish(
                    &[(CType::LongLong, "o"), (CType::LongLong, "k")],
                    CStmt::Return(c::binary(COp::Mul, a, b)),
                );
                Step::Reduce { reducer: Reducer { op: ReduceOp::Sum, elem: Elem::Real }, out, outputs, length, value }
            }
            Expr::ScatterAdd { values, indices, .. } => self.scatter_add(values, indices, &ty.shape, out, uses),
            _ => self.fill(out, &ty.shape, uses, &mut |e, idx| e.compute(h, idx)),
        };
        Ok(Some(Body::Grid(vec![step])))
    }

    /// [`Expr::ScatterAdd`] as a reduction with no atomics: entry `(r, c)` sums, over every
    /// `k`, `values[k, c]` where `indices[k] == r`, so each sum has one fixed order. The values
    /// are computed inside the branch that reads them, so only picked rows cost anything.
    fn scatter_add(&mut self, values: H, indices: H, shape: &Shape, out: BufferId, uses: &mut KernelUses) -> Step {
        let count = self.p.ty(values).shape[0].clone();
        let mut e = Emitter::new(self, uses);
        let outputs = e.numel(shape);
        let length = e.dim(&count);
        let idx = e.unflatten(c::var("o"), shape);
        let picked = e.value(indices, &[c::var("k")]);
        let mut at = idx.clone();
        at[0] = c::var("k");
        e.conditional += 1;
        let v = e.value(values, &at);
        e.conditional -= 1;
        let hit = c::binary(COp::Eq, picked, idx[0].clone());
        let value = e.finish(
            &[(CType::LongLong, "o"), (CType::LongLong, "k")],
            CStmt::Return(c::ternary(hit, v, CExpr::Float(0.0))),
        );
        Step::Reduce { reducer: Reducer { op: ReduceOp::Sum, elem: Elem::Real }, out, outputs, length, value }
    }

    fn loop_kernel(&mut self, h: H) -> Result<(), CudaError> {
        let Expr::Loop { count, carried, body } = self.p.exprs[h].clone() else { unreachable!() };
        let mut uses = KernelUses::default();
        let params: Vec<BufferId> =
            carried.iter().map(|c| self.dense_buffer(c.param).expect("carried variables are stored")).collect();
        let mut init = Vec::new();
        for (c, &param) in carried.iter().zip(&params) {
            let shape = self.p.ty(c.param).shape.clone();
            init.push(self.fill(param, &shape, &mut uses, &mut |e, idx| e.value(c.init, idx)));
        }
        let mut steps = Vec::new();
        for &b in &body {
            if matches!(self.p.exprs[b], Expr::Loop { .. }) {
                return Err(CudaError::Unsupported("a `repeat` loop inside another loop".into()));
            }
            match self.work_for(b, &mut uses)? {
                Some(Body::Grid(s)) => steps.extend(s),
                Some(_) => return Err(CudaError::Unsupported("a pairwise product inside a `repeat` loop".into())),
                None => {}
            }
        }
        // Every next value is complete before any carried variable is overwritten.
        let mut copies = Vec::new();
        for (c, &param) in carried.iter().zip(&params) {
            let shape = self.p.ty(c.param).shape.clone();
            let source = match self.dense_buffer(c.next) {
                Some(b) if !params.contains(&b) => b,
                _ => {
                    let staged = self.temp(c.next, "next");
                    steps.push(self.fill(staged, &shape, &mut uses, &mut |e, idx| e.value(c.next, idx)));
                    staged
                }
            };
            copies.push(self.fill(param, &shape, &mut uses, &mut |e, idx| e.load(source, &shape, idx)));
        }
        steps.extend(copies);
        let count = Emitter::new(self, &mut uses).value(count, &[]);
        self.units.push(Unit { node: h, body: Body::Loop { init, count, body: steps }, uses });
        Ok(())
    }

    /// A tile step: outer rows are those the result is indexed by (`x`'s for axis 1), inner
    /// rows those reduced over; `w(i, j)` is the kernel's SSA nodes, one `const` each.
    fn tiles(
        &mut self,
        pw: &PairwiseOperands,
        v: Option<H>,
        op: ReduceOp,
        axis: usize,
        out: BufferId,
        uses: &mut KernelUses,
    ) -> Tiles {
        let (outer, inner) = if axis == 1 { (pw.x, pw.y) } else { (pw.y, pw.x) };
        let stored = |l: &Self, h: H| l.dense_buffer(h).expect("tile operands are stored");
        let (outer_buffer, inner_buffer) = (stored(self, outer), stored(self, inner));
        let v = v.map(|v| (stored(self, v), self.p.ty(v).shape[1].clone()));
        uses.read(outer_buffer);
        uses.read(inner_buffer);
        let (outer_rows, inner_rows, dim) =
            (self.p.ty(outer).shape[0].clone(), self.p.ty(inner).shape[0].clone(), self.p.ty(pw.x).shape[1].clone());
        let mut e = Emitter::new(self, uses);
        let (i, j) = if axis == 1 { (c::var("o"), c::var("n")) } else { (c::var("n"), c::var("o")) };
        let kernel = &pw.kernel;
        let mut w: Vec<CExpr> = Vec::with_capacity(kernel.ops.len());
        for (k, (node, elem)) in kernel.ops.iter().enumerate() {
            let expr = match *node {
                KernelNode::Dot => c::var("dot"),
                KernelNode::Load(PairwiseLoad::Row(r)) => e.value(pw.rows[r], std::slice::from_ref(&i)),
                KernelNode::Load(PairwiseLoad::Col(r)) => e.value(pw.cols[r], std::slice::from_ref(&j)),
                KernelNode::Load(PairwiseLoad::Scalar(r)) => e.value(pw.scalars[r], &[]),
                KernelNode::Index(Axis::Row) => i.clone(),
                KernelNode::Index(Axis::Col) => j.clone(),
                KernelNode::Literal(l) => literal(l),
                KernelNode::Unary(op, a) => unary(op, kernel.elem(a), w[a].clone()),
                KernelNode::Binary(op, a, b) => binary(op, kernel.elem(a), w[a].clone(), w[b].clone()),
                KernelNode::Select(cond, a, b) => c::ternary(w[cond].clone(), w[a].clone(), w[b].clone()),
                KernelNode::Cast(a) => cast(kernel.elem(a), *elem, w[a].clone()),
            };
            let bound = e.bind(format!("w{k}"), c_type(*elem), expr);
            w.push(bound);
        }
        let (outer_count, inner_count, dim) = (e.dim(&outer_rows), e.dim(&inner_rows), e.dim(&dim));
        let product = match &v {
            Some((buffer, width)) => {
                e.uses.read(*buffer);
                PairwiseProduct::MatMul { v: *buffer, width: e.dim(width) }
            }
            None => PairwiseProduct::Reduce(Reducer { op, elem: Elem::Real }),
        };
        let weight = e.finish(
            &[(CType::LongLong, "o"), (CType::LongLong, "n"), (CType::Float, "dot")],
            CStmt::Return(w[kernel.result].clone()),
        );
        Tiles { outer: outer_buffer, inner: inner_buffer, outer_count, inner_count, dim, out, weight, product }
    }

    /// A step storing `value(idx)` into every element of `buffer` (of `shape`).
    fn fill(
        &mut self,
        buffer: BufferId,
        shape: &Shape,
        uses: &mut KernelUses,
        value: &mut dyn FnMut(&mut Emitter, &[CExpr]) -> CExpr,
    ) -> Step {
        uses.write(buffer);
        let mut e = Emitter::new(self, uses);
        let count = e.numel(shape);
        let idx = e.unflatten(c::var("i"), shape);
        let v = value(&mut e, &idx);
        let target = c::index(c::var(e.low.plan.buffers[buffer].name.clone()), c::var("i"));
        let body = e.finish(&[(CType::LongLong, "i")], CStmt::Store { target, value: v });
        Step::Map { count, body }
    }

    fn scalar(&mut self, value: HostScalar, ty: CType, name: String) -> ScalarId {
        if let Some(k) = self.plan.scalars.iter().position(|s| s.value == value) {
            return k;
        }
        self.plan.scalars.push(Scalar { name, ty, value });
        self.plan.scalars.len() - 1
    }
}

/// The CUDA back end's fusion hook: anything element-wise, any remapping of indices (nested
/// conditionals for concatenations) and gathers are computed where they are read; only the
/// pairwise tiles read their operands from memory (row-major matrices and vectors; their
/// scalars are kernel arguments). A few
/// arithmetic operations on loads cost less than a kernel boundary and a round trip through
/// memory, so up to three are recomputed rather than stored.
const POLICY: fuse::Policy = fuse::Policy {
    recompute_limit: CHEAP_OPERATIONS,
    inlinable: |e, uniform| uniform || e.is_elementwise() || e.remaps_indices() || matches!(e, Expr::Gather { .. }),
    reads_memory: |e, h| match e {
        Expr::PairwiseReduce { pairwise, .. } | Expr::PairwiseMatMul { pairwise, .. } => !pairwise.scalars.contains(&h),
        _ => false,
    },
    view_aliases: |e| matches!(e, Expr::StopGrad { .. } | Expr::ExpandDims { .. } | Expr::Squeeze { .. }),
    host_scalars: true,
};

/// Loops hold no loops: a loop is one launch whose body is grid steps.
fn check_loops(p: &Program, block: &[H], inside: bool) -> Result<(), CudaError> {
    for &h in block {
        if let Expr::Loop { body, .. } = &p.exprs[h] {
            if inside {
                return Err(CudaError::Unsupported("a `repeat` loop inside another loop".into()));
            }
            check_loops(p, body, true)?;
        }
    }
    Ok(())
}

fn unit_kind(body: &Body) -> String {
    match body {
        Body::Grid(steps) => match &steps[0] {
            Step::Map { .. } => "map".into(),
            Step::Reduce { reducer, .. } => format!("reduce_{}", reduce_name(reducer.op)),
        },
        Body::Tiles(Tiles { product: PairwiseProduct::Reduce(r), .. }) => format!("pairwise_{}", reduce_name(r.op)),
        Body::Tiles(_) => "pairwise_matmul".into(),
        Body::Loop { .. } => "loop".into(),
    }
}

/// A kernel's worth of work before scheduling: the node it computes, and what it reads and
/// writes.
struct Unit {
    node: H,
    body: Body,
    uses: KernelUses,
}

fn reduce_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Max => "max",
        ReduceOp::Min => "min",
        ReduceOp::LogSumExp => "logsumexp",
        ReduceOp::ArgMax => "argmax",
    }
}

/// A C identifier from a user's name.
fn identifier(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The buffers and scalars a kernel reads and writes: its parameters.
#[derive(Default)]
pub(super) struct KernelUses {
    buffers: BTreeMap<BufferId, Use>,
    scalars: BTreeSet<ScalarId>,
}

impl KernelUses {
    fn read(&mut self, b: BufferId) {
        self.buffers.entry(b).or_default().read = true;
    }
    fn write(&mut self, b: BufferId) {
        self.buffers.entry(b).or_default().written = true;
    }
}

// ---- element expressions ---------------------------------------------------------------------

/// Builds one lambda: the statements computing values at symbolic indices. Nodes evaluated at
/// the same index are bound once (`const float v12 = ...`), except inside the branches of a
/// concatenation, which are evaluated only when chosen and so stay nested expressions.
struct Emitter<'l, 'a> {
    low: &'l mut Lowering<'a>,
    uses: &'l mut KernelUses,
    stmts: Vec<CStmt>,
    memo: HashMap<(H, String), CExpr>,
    conditional: usize,
}

impl<'l, 'a> Emitter<'l, 'a> {
    fn new(low: &'l mut Lowering<'a>, uses: &'l mut KernelUses) -> Self {
        Emitter { low, uses, stmts: Vec::new(), memo: HashMap::new(), conditional: 0 }
    }

    fn finish(mut self, params: &[(CType, &str)], last: CStmt) -> Lambda {
        self.stmts.push(last);
        Lambda { params: params.iter().map(|(t, n)| (*t, n.to_string())).collect(), body: self.stmts }
    }

    fn bind(&mut self, name: String, ty: CType, init: CExpr) -> CExpr {
        self.stmts.push(CStmt::Let { ty, name: name.clone(), init });
        c::var(name)
    }

    /// A dimension's size, from the host's `dim_` scalars.
    fn dim(&mut self, d: &Dim) -> CExpr {
        let constant = d.eval(&|_| Some(0)).unwrap_or(0);
        let mut e: Option<CExpr> = None;
        for s in d.symbols().collect::<Vec<_>>() {
            let coefficient = d.eval(&|x| Some(i64::from(x == s))).unwrap_or(0) - constant;
            let name = format!("dim_{}", identifier(&self.low.module.dims[s].name));
            let id = self.low.scalar(HostScalar::Dim(s), CType::LongLong, name.clone());
            self.uses.scalars.insert(id);
            let term = mul(CExpr::Int(coefficient), c::var(name));
            e = Some(match e {
                None => term,
                Some(prev) => add(prev, term),
            });
        }
        match e {
            None => CExpr::Int(constant),
            Some(e) => add(e, CExpr::Int(constant)),
        }
    }

    fn numel(&mut self, shape: &[Dim]) -> CExpr {
        let mut total: Option<CExpr> = None;
        for d in shape {
            let size = self.dim(d);
            total = Some(match total {
                None => size,
                Some(t) => mul(t, size),
            });
        }
        total.unwrap_or(CExpr::Int(1))
    }

    /// The coordinates of the row-major flat index `flat` in `shape`, bound as `i0, i1, ...`
    /// (named after `flat`).
    fn unflatten(&mut self, flat: CExpr, shape: &[Dim]) -> Vec<CExpr> {
        let base = flat.to_string();
        let mut idx = vec![CExpr::Int(0); shape.len()];
        let mut rest = flat;
        for axis in (0..shape.len()).rev() {
            if shape[axis].is_one() {
                continue;
            }
            if axis == 0 {
                idx[0] = rest.clone();
                break;
            }
            let size = self.dim(&shape[axis]);
            idx[axis] =
                self.bind(format!("{base}{axis}"), CType::LongLong, c::binary(COp::Rem, rest.clone(), size.clone()));
            rest = self.bind(format!("{base}{axis}_rest"), CType::LongLong, c::binary(COp::Div, rest, size));
        }
        idx
    }

    fn load(&mut self, b: BufferId, shape: &Shape, idx: &[CExpr]) -> CExpr {
        self.uses.read(b);
        let mut offset: Option<CExpr> = None;
        for (d, i) in shape.iter().zip(idx) {
            offset = Some(match offset {
                None => i.clone(),
                Some(o) => {
                    let size = self.dim(d);
                    add(mul(o, size), i.clone())
                }
            });
        }
        c::index(c::var(self.low.plan.buffers[b].name.clone()), offset.unwrap_or(CExpr::Int(0)))
    }

    /// Node `h` at index `idx`, from wherever it lives.
    fn value(&mut self, h: H, idx: &[CExpr]) -> CExpr {
        if self.low.fusion.uniform[h.index()] {
            return self.compute(h, &[]);
        }
        match self.low.place[h.index()] {
            Place::Buffer(b) => {
                let shape = self.low.p.ty(h).shape.clone();
                self.load(b, &shape, idx)
            }
            Place::Alias(a) => self.value(a, idx),
            Place::Inline => self.compute(h, idx),
        }
    }

    /// Node `h`'s own computation at `idx`, from its operands.
    fn compute(&mut self, h: H, idx: &[CExpr]) -> CExpr {
        let key = (h, idx.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
        if let Some(v) = self.memo.get(&key) {
            return v.clone();
        }
        let p = self.low.p;
        let elem = p.ty(h).elem;
        let elem_of = |o: H| p.ty(o).elem;
        let e = match p.exprs[h].clone() {
            Expr::Literal(l) => return literal(l),
            Expr::Iota { axis, .. } => return idx[axis].clone(),
            Expr::Param(param) => {
                let decl = &self.low.module.params[param];
                let name = format!("param_{}", identifier(&decl.name));
                return self.host(HostScalar::Param(param), c_type(decl.elem()), name);
            }
            Expr::Builtin(b) => {
                let (value, name) = match b {
                    BuiltinValue::Epoch => (HostScalar::Epoch, "epoch"),
                    BuiltinValue::Epochs => (HostScalar::Epochs, "epochs"),
                    BuiltinValue::Iteration => (HostScalar::Iteration, "iteration"),
                    BuiltinValue::Iterations => (HostScalar::Iterations, "iterations"),
                    BuiltinValue::BaseLr => (HostScalar::BaseLr, "base_lr"),
                    BuiltinValue::SampleIndex => unreachable!("sample indices are a buffer"),
                };
                return self.host(value, CType::Float, name.into());
            }
            Expr::RunFraction(f) => {
                let n = self.low.plan.scalars.len();
                return self.host(HostScalar::RunFraction(f), CType::Float, format!("run_fraction{n}"));
            }
            Expr::DimSize(d) => return self.dim(&d),
            Expr::Unary { op, arg } => {
                let a = self.value(arg, idx);
                unary(op, elem_of(arg), a)
            }
            Expr::Binary { op, lhs, rhs } => {
                let (a, b) = (self.value(lhs, idx), self.value(rhs, idx));
                binary(op, elem_of(lhs), a, b)
            }
            Expr::Select { cond, on_true, on_false } => {
                let (c0, a, b) = (self.value(cond, idx), self.value(on_true, idx), self.value(on_false, idx));
                c::ternary(c0, a, b)
            }
            Expr::Cast { arg, to } => {
                let a = self.value(arg, idx);
                cast(elem_of(arg), to, a)
            }
            e if e.view_arg().is_some() => {
                let arg = e.view_arg().expect("a view");
                let inner = fuse::view_index(
                    p,
                    &e,
                    idx,
                    || CExpr::Int(0),
                    |i, d| {
                        let offset = self.dim(d);
                        add(i.clone(), offset)
                    },
                )
                .expect("views remap indices");
                return self.value(arg, &inner);
            }
            Expr::Concat { parts, axis } => return self.concat(&parts, axis, idx),
            Expr::Gather { table, indices } => {
                let row = self.value(indices, &idx[..1]);
                let mut inner = idx.to_vec();
                inner[0] = row;
                return self.value(table, &inner);
            }
            other => unreachable!("{other:?} is always stored"),
        };
        if self.conditional > 0 {
            return e;
        }
        let v = self.bind(format!("v{}_{}", h.index(), self.memo.len()), c_type(elem), e);
        self.memo.insert(key, v.clone());
        v
    }

    fn host(&mut self, value: HostScalar, ty: CType, name: String) -> CExpr {
        let id = self.low.scalar(value, ty, name);
        self.uses.scalars.insert(id);
        c::var(self.low.plan.scalars[id].name.clone())
    }

    /// The part holding the index along `axis`, chosen by nested conditionals.
    fn concat(&mut self, parts: &[H], axis: usize, idx: &[CExpr]) -> CExpr {
        self.conditional += 1;
        let mut start = Dim::constant(0);
        let mut branches = Vec::new();
        for &part in parts {
            let offset = self.dim(&start);
            let mut inner = idx.to_vec();
            inner[axis] = sub(idx[axis].clone(), offset);
            let v = self.value(part, &inner);
            start = start.add(&self.low.p.ty(part).shape[axis]);
            let end = self.dim(&start);
            branches.push((end, v));
        }
        self.conditional -= 1;
        let (_, last) = branches.pop().expect("a concatenation has parts");
        branches
            .into_iter()
            .rev()
            .fold(last, |acc, (end, v)| c::ternary(c::binary(COp::Lt, idx[axis].clone(), end), v, acc))
    }
}

// ---- index arithmetic, folding the zeros and ones of constant dimensions ----------------------

fn add(a: CExpr, b: CExpr) -> CExpr {
    match (&a, &b) {
        (CExpr::Int(0), _) => b,
        (_, CExpr::Int(0)) => a,
        _ => c::binary(COp::Add, a, b),
    }
}

fn sub(a: CExpr, b: CExpr) -> CExpr {
    match b {
        CExpr::Int(0) => a,
        _ => c::binary(COp::Sub, a, b),
    }
}

fn mul(a: CExpr, b: CExpr) -> CExpr {
    match (&a, &b) {
        (CExpr::Int(0), _) | (_, CExpr::Int(0)) => CExpr::Int(0),
        (CExpr::Int(1), _) => b,
        (_, CExpr::Int(1)) => a,
        _ => c::binary(COp::Mul, a, b),
    }
}

// ---- scalar operations, shared by IR nodes and pairwise kernels -------------------------------

pub(super) fn literal(l: Literal) -> CExpr {
    match l {
        Literal::Real(v) => CExpr::Float(v as f32),
        Literal::Int(v) => CExpr::Int(v),
        Literal::Bool(v) => CExpr::Bool(v),
    }
}

pub(super) fn unary(op: UnaryOp, elem: Elem, a: CExpr) -> CExpr {
    c::prim(Prim::Unary(op), elem, vec![a])
}

/// `a op b` for operands of element type `elem`.
pub(super) fn binary(op: BinaryOp, elem: Elem, a: CExpr, b: CExpr) -> CExpr {
    c::prim(Prim::Binary(op), elem, vec![a, b])
}

/// Conversions with the reference's rules: non-zero is true, reals truncate toward zero.
pub(super) fn cast(from: Elem, to: Elem, a: CExpr) -> CExpr {
    match to {
        _ if from == to => a,
        Elem::Bool => {
            let zero = literal(match from {
                Elem::Real => Literal::Real(0.0),
                Elem::Int => Literal::Int(0),
                Elem::Bool => Literal::Bool(false),
            });
            c::binary(COp::Ne, a, zero)
        }
        _ => c::cast(c_type(to), a),
    }
}
