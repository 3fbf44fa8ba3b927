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
    c_type, Body, Buffer, BufferId, BufferSource, HostScalar, KernelPlan, Plan, Reducer, Scalar, ScalarId, Step, Use,
};
use super::{CudaError, Precision};
use crate::ir::{
    BinaryOp, BuiltinValue, Dim, Elem, Expr, Handle, Literal, Module, Program, ReduceOp, Shape, UnaryOp,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

type H = Handle<Expr>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// Recomputed by its readers.
    Inline,
    Buffer(BufferId),
    /// Shares another node's buffer (a loop's final value is its carried variable's).
    Alias(H),
}

pub fn lower(module: &Module, program: &Program, precision: Precision) -> Result<Plan, CudaError> {
    let mut l = Lowering {
        module,
        p: program,
        users: vec![BTreeSet::new(); program.exprs.len()],
        loop_of: vec![None; program.exprs.len()],
        uniform: vec![false; program.exprs.len()],
        place: vec![Place::Inline; program.exprs.len()],
        outputs: program.outputs.iter().map(|o| o.value).collect(),
        plan: Plan { buffers: Vec::new(), scalars: Vec::new(), kernels: Vec::new(), outputs: Vec::new(), precision },
        externals: HashMap::new(),
    };
    l.analyse(&program.body, None)?;
    l.place_block(&program.body)?;
    for &h in &program.body {
        l.generate(h)?;
    }
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
    /// Distinct nodes reading each node (a loop reads its carried `next` values).
    users: Vec<BTreeSet<H>>,
    /// The loop whose body holds each node.
    loop_of: Vec<Option<H>>,
    /// Scalars the host knows at launch: computed inline wherever they are used.
    uniform: Vec<bool>,
    place: Vec<Place>,
    outputs: Vec<H>,
    plan: Plan,
    externals: HashMap<BufferSource, BufferId>,
}

impl Lowering<'_> {
    // ---- analysis ------------------------------------------------------------------------

    fn analyse(&mut self, block: &[H], enclosing: Option<H>) -> Result<(), CudaError> {
        for &h in block {
            self.loop_of[h.index()] = enclosing;
            let e = &self.p.exprs[h];
            for o in e.operands() {
                self.users[o.index()].insert(h);
            }
            self.uniform[h.index()] = self.p.ty(h).rank() == 0
                && match e {
                    Expr::Literal(_) | Expr::Param(_) | Expr::RunFraction(_) | Expr::DimSize(_) => true,
                    Expr::Builtin(b) => *b != BuiltinValue::SampleIndex,
                    Expr::Unary { .. } | Expr::Binary { .. } | Expr::Select { .. } | Expr::Cast { .. } | Expr::StopGrad { .. } => {
                        e.operands().iter().all(|o| self.uniform[o.index()])
                    }
                    _ => false,
                };
            if let Expr::Loop { carried, body, .. } = e {
                if enclosing.is_some() {
                    return Err(CudaError::Unsupported("a `repeat` loop inside another loop".into()));
                }
                for c in carried {
                    self.loop_of[c.param.index()] = Some(h);
                    self.users[c.next.index()].insert(h);
                }
                self.analyse(body, Some(h))?;
            }
        }
        Ok(())
    }

    // ---- placement -----------------------------------------------------------------------

    fn place_block(&mut self, block: &[H]) -> Result<(), CudaError> {
        for &h in block {
            let place = self.place_of(h)?;
            self.place[h.index()] = place;
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
            Expr::Input(i) => external(self, BufferSource::Input(i.index()), format!("in_{}", self.module.inputs[*i].name)),
            Expr::Const(k) => external(self, BufferSource::Const(k.index()), format!("const_{}", self.module.consts[*k].name)),
            Expr::State(s) => external(self, BufferSource::State(s.index()), format!("state_{}", self.module.states[*s].name)),
            Expr::Builtin(BuiltinValue::SampleIndex) => external(self, BufferSource::SampleIndex, "sample_index".into()),
            Expr::Forward(_) => {
                return Err(CudaError::Unsupported("outputs of the loss program (read by `on step` handlers)".into()))
            }
            Expr::Loop { .. } | Expr::LoopParam => Place::Inline,
            Expr::LoopOutput { looped, index } => match &self.p.exprs[*looped] {
                Expr::Loop { carried, .. } => Place::Alias(carried[*index].param),
                _ => unreachable!("validated programs only take outputs of loops"),
            },
            Expr::Reduce { .. } | Expr::MatMul { .. } => Place::Buffer(self.temp(h, "t")),
            _ if self.uniform[h.index()] && !self.outputs.contains(&h) => Place::Inline,
            _ if self.must_store(h) => Place::Buffer(self.temp(h, "t")),
            _ => Place::Inline,
        })
    }

    fn must_store(&self, h: H) -> bool {
        if self.outputs.contains(&h) {
            return self.view_buffer(h).is_none();
        }
        let cheap = self.cheap(h);
        let users = &self.users[h.index()];
        if users.len() >= 2 && !cheap {
            return true;
        }
        users.iter().any(|&u| {
            let read_in_loop = self.loop_of[u.index()].is_some() && self.loop_of[u.index()] != self.loop_of[h.index()];
            let repeated_read = match &self.p.exprs[u] {
                Expr::Broadcast { shape, .. } => numel_differs(&self.p.ty(h).shape, shape),
                Expr::Gather { table, .. } => *table == h,
                Expr::MatMul { .. } => true,
                _ => false,
            };
            (read_in_loop || repeated_read) && !cheap
        })
    }

    /// Whether reading the node inline costs no more than loading a stored copy: index
    /// remapping and loads only.
    fn cheap(&self, h: H) -> bool {
        let stored_or_cheap = |o: H| match self.place[o.index()] {
            Place::Buffer(_) | Place::Alias(_) => true,
            Place::Inline => self.cheap(o),
        };
        if self.uniform[h.index()] {
            return true;
        }
        match &self.p.exprs[h] {
            Expr::Iota { .. } | Expr::Literal(_) => true,
            e @ (Expr::Broadcast { .. }
            | Expr::ExpandDims { .. }
            | Expr::Squeeze { .. }
            | Expr::Transpose { .. }
            | Expr::Slice { .. }
            | Expr::StopGrad { .. }
            | Expr::Concat { .. }
            | Expr::Gather { .. }
            | Expr::Cast { .. }) => e.operands().into_iter().all(stored_or_cheap),
            _ => false,
        }
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
            Expr::StopGrad { arg } | Expr::ExpandDims { arg, .. } | Expr::Squeeze { arg, .. } => self.dense_buffer(*arg),
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
        if let Some(step) = self.step_for(h, &mut uses)? {
            let kind = step_kind(&step);
            self.push_kernel(kind, h, Body::Grid(step), uses);
        }
        Ok(())
    }

    fn push_kernel(&mut self, kind: String, h: H, body: Body, uses: KernelUses) {
        let n = self.plan.kernels.len();
        let name = match self.p.names.get(&h) {
            Some(label) => format!("k{n:02}_{kind}_{}", identifier(label)),
            None => format!("k{n:02}_{kind}"),
        };
        let ty = self.p.ty(h);
        let doc = format!("{kind} -> %{} {}", h.index(), ty.display(&self.module.dims));
        self.plan.kernels.push(KernelPlan {
            name,
            doc,
            body,
            buffers: uses.buffers.into_iter().collect(),
            scalars: uses.scalars.into_iter().collect(),
        });
    }

    /// The step computing node `h` into its buffer; `None` when the node needs no step.
    fn step_for(&mut self, h: H, uses: &mut KernelUses) -> Result<Option<Step>, CudaError> {
        let Place::Buffer(out) = self.place[h.index()] else { return Ok(None) };
        if self.plan.buffers[out].source != BufferSource::Temp || matches!(self.p.exprs[h], Expr::LoopParam) {
            return Ok(None);
        }
        uses.write(out);
        let ty = self.p.ty(h).clone();
        Ok(Some(match self.p.exprs[h].clone() {
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
                let value = e.finish(&[(CType::LongLong, "o"), (CType::LongLong, "k")], CStmt::Return(c::binary(COp::Mul, a, b)));
                Step::Reduce { reducer: Reducer { op: ReduceOp::Sum, elem: Elem::Real }, out, outputs, length, value }
            }
            _ => self.fill(out, &ty.shape, uses, &mut |e, idx| e.compute(h, idx)),
        }))
    }

    fn loop_kernel(&mut self, h: H) -> Result<(), CudaError> {
        let Expr::Loop { count, carried, body } = self.p.exprs[h].clone() else { unreachable!() };
        let mut uses = KernelUses::default();
        let params: Vec<BufferId> = carried.iter().map(|c| self.dense_buffer(c.param).expect("carried variables are stored")).collect();
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
            if let Some(step) = self.step_for(b, &mut uses)? {
                steps.push(step);
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
        self.push_kernel("loop".into(), h, Body::Loop { init, count, body: steps }, uses);
        Ok(())
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

fn numel_differs(a: &[Dim], b: &[Dim]) -> bool {
    let strip = |s: &[Dim]| s.iter().filter(|d| !d.is_one()).cloned().collect::<Vec<_>>();
    strip(a) != strip(b)
}

fn step_kind(step: &Step) -> String {
    match step {
        Step::Map { .. } => "map".into(),
        Step::Reduce { reducer, .. } => format!("reduce_{}", reduce_name(reducer.op)),
        Step::Pairwise { product: super::plan::PairwiseProduct::Reduce(r), .. } => format!("pairwise_{}", reduce_name(r.op)),
        Step::Pairwise { .. } => "pairwise_matmul".into(),
    }
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
            let term = if coefficient == 1 { c::var(name) } else { c::binary(COp::Mul, CExpr::Int(coefficient), c::var(name)) };
            e = Some(match e {
                None => term,
                Some(prev) => c::binary(COp::Add, prev, term),
            });
        }
        match (e, constant) {
            (None, k) => CExpr::Int(k),
            (Some(e), 0) => e,
            (Some(e), k) => c::binary(COp::Add, e, CExpr::Int(k)),
        }
    }

    fn numel(&mut self, shape: &[Dim]) -> CExpr {
        let mut total: Option<CExpr> = None;
        for d in shape {
            let size = self.dim(d);
            total = Some(match total {
                None => size,
                Some(t) => c::binary(COp::Mul, t, size),
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
            idx[axis] = self.bind(format!("{base}{axis}"), CType::LongLong, c::binary(COp::Rem, rest.clone(), size.clone()));
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
                    c::binary(COp::Add, c::binary(COp::Mul, o, size), i.clone())
                }
            });
        }
        c::index(c::var(self.low.plan.buffers[b].name.clone()), offset.unwrap_or(CExpr::Int(0)))
    }

    /// Node `h` at index `idx`, from wherever it lives.
    fn value(&mut self, h: H, idx: &[CExpr]) -> CExpr {
        if self.low.uniform[h.index()] {
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
            Expr::StopGrad { arg } => return self.value(arg, idx),
            Expr::Param(param) => {
                let decl = &self.low.module.params[param];
                let name = format!("param_{}", identifier(&decl.name));
                return self.host(HostScalar::Param(param), c_type(decl.elem()), name);
            }
            Expr::Builtin(b) => {
                let (value, name) = match b {
                    BuiltinValue::Epoch => (HostScalar::Epoch, "epoch"),
                    BuiltinValue::Epochs => (HostScalar::Epochs, "epochs"),
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
            Expr::Broadcast { arg, .. } => {
                let arg_shape = p.ty(arg).shape.clone();
                let lead = idx.len() - arg_shape.len();
                let inner: Vec<CExpr> =
                    arg_shape.iter().enumerate().map(|(k, d)| if d.is_one() { CExpr::Int(0) } else { idx[lead + k].clone() }).collect();
                return self.value(arg, &inner);
            }
            Expr::ExpandDims { arg, axis } => {
                let mut inner = idx.to_vec();
                inner.remove(axis);
                return self.value(arg, &inner);
            }
            Expr::Squeeze { arg, axis } => {
                let mut inner = idx.to_vec();
                inner.insert(axis, CExpr::Int(0));
                return self.value(arg, &inner);
            }
            Expr::Transpose { arg } => return self.value(arg, &[idx[1].clone(), idx[0].clone()]),
            Expr::Slice { arg, axis, start, .. } => {
                let mut inner = idx.to_vec();
                let offset = self.dim(&start);
                inner[axis] = c::binary(COp::Add, idx[axis].clone(), offset);
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
            inner[axis] = c::binary(COp::Sub, idx[axis].clone(), offset);
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

// ---- scalar operations, shared by IR nodes and pairwise kernels -------------------------------

pub(super) fn literal(l: Literal) -> CExpr {
    match l {
        Literal::Real(v) => CExpr::Float(v as f32),
        Literal::Int(v) => CExpr::Int(v),
        Literal::Bool(v) => CExpr::Bool(v),
    }
}

pub(super) fn unary(op: UnaryOp, elem: Elem, a: CExpr) -> CExpr {
    let math = |name: &str| c::call(name, vec![a.clone()]);
    match (op, elem) {
        (UnaryOp::Neg, _) => CExpr::Neg(Box::new(a)),
        (UnaryOp::Not, _) => CExpr::Not(Box::new(a)),
        (UnaryOp::Abs, Elem::Int) => math("llabs"),
        (UnaryOp::Exp, _) => math("expf"),
        (UnaryOp::Log, _) => math("logf"),
        (UnaryOp::Sqrt, _) => math("sqrtf"),
        (UnaryOp::Abs, _) => math("fabsf"),
        (UnaryOp::Cos, _) => math("cosf"),
    }
}

/// `a op b` for operands of element type `elem`.
pub(super) fn binary(op: BinaryOp, elem: Elem, a: CExpr, b: CExpr) -> CExpr {
    let helper = |name: &str| c::call(name, vec![a.clone(), b.clone()]);
    let c_op = |o: COp| c::binary(o, a.clone(), b.clone());
    match (op, elem) {
        (BinaryOp::Add, _) => c_op(COp::Add),
        (BinaryOp::Sub, _) => c_op(COp::Sub),
        (BinaryOp::Mul, _) => c_op(COp::Mul),
        (BinaryOp::Div, Elem::Int) => helper("sslc::div_ref"),
        (BinaryOp::Div, _) => c_op(COp::Div),
        (BinaryOp::Pow, _) => helper("sslc::pow_ref"),
        (BinaryOp::Rem, _) => helper("sslc::rem_ref"),
        (BinaryOp::Max, Elem::Bool) | (BinaryOp::Or, _) => c_op(COp::Or),
        (BinaryOp::Min, Elem::Bool) | (BinaryOp::And, _) => c_op(COp::And),
        (BinaryOp::Max, _) => helper("sslc::maximum"),
        (BinaryOp::Min, _) => helper("sslc::minimum"),
        (BinaryOp::Lt, _) => c_op(COp::Lt),
        (BinaryOp::Le, _) => c_op(COp::Le),
        (BinaryOp::Gt, _) => c_op(COp::Gt),
        (BinaryOp::Ge, _) => c_op(COp::Ge),
        (BinaryOp::Eq, _) => c_op(COp::Eq),
        (BinaryOp::Ne, _) => c_op(COp::Ne),
    }
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
