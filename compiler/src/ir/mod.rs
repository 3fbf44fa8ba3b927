//! The intermediate representation.
//!
//! An objective compiles to a [`Module`]: declarations (dims, params, inputs, constants, state,
//! views, schedules) plus [`Program`]s — the loss program and one program per event handler.
//! A program is a dataflow graph in an arena of [`Expr`] nodes addressed by typed handles;
//! the order of evaluation is its [`Block`], and loops own nested blocks. Every node's type
//! and source span sit in side tables, so passes that build new nodes keep them by construction.
//! User functions are inlined during lowering: each call is checked against the shapes it is
//! given, and the IR that later stages see is one flat program per entry point.

mod arena;
mod dim;
mod pairwise;
mod print;
mod scalar;

pub use crate::ops::{BinaryOp, UnaryOp};
pub use arena::{Arena, Handle};
pub use dim::{display_shape, Dim, DimSym, Shape};
pub use print::{expr_kind, node_line, print_module, print_program};
pub use scalar::{Axis, ScalarOp, ScalarProgram};

use crate::span::Span;
use std::collections::HashMap;

/// Element type of a tensor. `Real` is f32 on the fast back ends and f32 or f64 on the
/// reference evaluator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Elem {
    Real,
    Int,
    Bool,
}

impl Elem {
    pub fn name(self) -> &'static str {
        match self {
            Elem::Real => "f32",
            Elem::Int => "int",
            Elem::Bool => "bool",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Type {
    pub elem: Elem,
    pub shape: Shape,
}

impl Type {
    pub fn scalar(elem: Elem) -> Type {
        Type { elem, shape: Vec::new() }
    }
    pub fn tensor(elem: Elem, shape: Shape) -> Type {
        Type { elem, shape }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn display<'a>(&'a self, dims: &'a Arena<DimDecl>) -> impl std::fmt::Display + 'a {
        TypeDisplay { ty: self, dims }
    }
}

struct TypeDisplay<'a> {
    ty: &'a Type,
    dims: &'a Arena<DimDecl>,
}

impl std::fmt::Display for TypeDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ty.elem, self.ty.shape.is_empty()) {
            (elem, true) => f.write_str(elem.name()),
            (Elem::Real, false) => write!(f, "{}", display_shape(&self.ty.shape, self.dims)),
            (elem, false) => write!(f, "{}{}", elem.name(), display_shape(&self.ty.shape, self.dims)),
        }
    }
}

// ---- declarations ------------------------------------------------------------------------

/// Where a dimension's size comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DimKind {
    /// The batch: rows of every input, length of `index`.
    Batch,
    /// Taken from the inputs' shapes at run time (`D`).
    Free,
    /// Fixed by a `dim K = 100` declaration (overridable with `--set K=...`).
    Fixed(i64),
    /// The dataset's size, for per-sample state.
    Samples,
}

#[derive(Clone, Debug)]
pub struct DimDecl {
    pub name: String,
    pub kind: DimKind,
    pub span: Span,
}

/// A parameter's value: a number, or a fraction of the run (`50%`), resolved to epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    Real(f64),
    Int(i64),
    RunFraction(f64),
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: String,
    pub default: ParamValue,
    pub doc: String,
    pub span: Span,
}

impl ParamDecl {
    pub fn elem(&self) -> Elem {
        match self.default {
            ParamValue::Int(_) => Elem::Int,
            _ => Elem::Real,
        }
    }
}

/// How the training loop produces an embedding input.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderSource {
    /// Index into [`ViewsDecl::names`].
    pub view: usize,
    /// SDCLR's pruned branch: the parameter holding the pruned fraction.
    pub pruned: Option<Handle<ParamDecl>>,
    /// The momentum (EMA) target encoder (`encoder(x2, ema=m)`, MoCo, BYOL, DINO): where its
    /// momentum comes from. Its embeddings carry no gradient back to the encoder.
    pub ema: Option<Momentum>,
    /// The online predictor head on top of the projector (`predictor(encoder(x1))`, BYOL,
    /// SimSiam): its hidden width.
    pub predictor: Option<u32>,
}

impl EncoderSource {
    /// The plain online encoder on `view`.
    pub fn online(view: usize) -> Self {
        EncoderSource { view, pruned: None, ema: None, predictor: None }
    }
}

/// The momentum `m` of a target encoder, `θ_target ← m·θ_target + (1 − m)·θ`: a parameter
/// (constant, MoCo's 0.999) or a `schedule` evaluated each epoch (BYOL's and DINO's cosine
/// rise to 1).
#[derive(Clone, Debug, PartialEq)]
pub enum Momentum {
    Param(Handle<ParamDecl>),
    Schedule(String),
}

/// The predictor head's hidden width when `predictor(...)` does not give one.
pub const DEFAULT_PREDICTOR_HIDDEN: u32 = 512;

#[derive(Clone, Debug)]
pub struct InputDecl {
    pub name: String,
    pub ty: Type,
    pub source: EncoderSource,
    pub doc: String,
    pub span: Span,
}

/// Constants the compiler builds (or a user supplies from a file).
#[derive(Clone, Debug, PartialEq)]
pub enum ConstInit {
    /// Simplex equiangular tight frame of `k` unit vectors in `d` dimensions (METHOD.md §GH).
    Etf { k: Dim, d: Dim, seed: u64 },
    /// Standard normal entries.
    Randn { seed: u64 },
    /// Every entry the same (`zeros`, `ones`, `full(v)`): CLIP's learned log temperature.
    Fill(f64),
    /// The class of every training sample, `[samples]`, as numbers: supplied by `sslc run`;
    /// elsewhere (eval, gradcheck, bench), unless given, sample `i` gets class `i mod 4`.
    Labels,
}

#[derive(Clone, Debug)]
pub struct ConstDecl {
    pub name: String,
    pub ty: Type,
    pub init: ConstInit,
    /// Declared with `learn`: built like a constant, then trained with the encoder by the run's
    /// optimizer, so the autodiff differentiates the loss with respect to it too.
    pub learned: bool,
    /// How the run's optimizer treats a `learn` tensor (the defaults for constants).
    pub optimizer: LearnOptions,
    pub doc: String,
    pub span: Span,
}

/// Per-tensor optimizer options of a `learn` tensor (`learn t: [1] = zeros, decay=0`), as a
/// PyTorch parameter group would set them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearnOptions {
    /// Multiplies the run's weight decay: 0 keeps the tensor out of it (CLIP's temperature).
    pub decay: f64,
    /// Multiplies the learning rate (SimSiam's fixed predictor rate, a slower temperature).
    pub lr_scale: f64,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions { decay: 1.0, lr_scale: 1.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StateInit {
    Fill(f64),
    /// Each vector along the last axis sums to one.
    Uniform,
    /// Standard normal entries, as the constant `randn(seed)` (MoCo's random initial queue; a
    /// `learn` tensor's EMA copy starts equal to it from the same seed).
    Randn {
        seed: u64,
    },
}

#[derive(Clone, Debug)]
pub struct StateDecl {
    pub name: String,
    pub ty: Type,
    pub init: StateInit,
    pub doc: String,
    pub span: Span,
}

/// One augmentation applied to every view, with per-sample arguments computed by programs
/// (BCL: `randaugment(p=w[index], strength=...)`).
#[derive(Clone, Debug)]
pub struct Augmentation {
    pub name: String,
    /// Argument name and the program computing it; each program's single output is `[N]`
    /// or a scalar.
    pub args: Vec<(String, Program)>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ViewsDecl {
    /// The two global views, then the small crops of multi-crop (SwAV, DINO), if any.
    pub names: Vec<String>,
    /// Applied in order to the dataset image `x`; the first is the base pipeline.
    pub pipeline: Vec<Augmentation>,
    pub span: Span,
}

/// A named scalar schedule evaluated once per epoch (`schedule lr = ...`).
#[derive(Clone, Debug)]
pub struct ScheduleDecl {
    pub name: String,
    pub program: Program,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// After every optimizer step, with the batch's values.
    Step,
    /// Between epochs; `epoch` is the number of epochs completed.
    Epoch,
}

/// What a handler assigns: state, or a `learn` tensor (SwAV renormalising its prototypes
/// after each step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigned {
    State(Handle<StateDecl>),
    Learned(Handle<ConstDecl>),
}

impl Assigned {
    pub fn name(self, m: &Module) -> &str {
        match self {
            Assigned::State(s) => &m.states[s].name,
            Assigned::Learned(c) => &m.consts[c].name,
        }
    }
}

/// A state assignment: `pi = ...` or `e[index] = ...`; or a `learn` tensor's, `C = ...`.
#[derive(Clone, Debug)]
pub struct StateUpdate {
    pub target: Assigned,
    /// Rows to overwrite (an `int[M]` node); whole state when `None`.
    pub rows: Option<Handle<Expr>>,
    pub value: Handle<Expr>,
    pub span: Span,
}

/// An `on step` / `on epoch` block. All updates read the state as it was before the handler.
#[derive(Clone, Debug)]
pub struct Handler {
    pub event: Event,
    pub program: Program,
    pub condition: Option<Handle<Expr>>,
    pub updates: Vec<StateUpdate>,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct Module {
    pub name: String,
    pub doc: String,
    pub dims: Arena<DimDecl>,
    pub params: Arena<ParamDecl>,
    pub inputs: Arena<InputDecl>,
    pub consts: Arena<ConstDecl>,
    pub states: Arena<StateDecl>,
    pub views: Option<ViewsDecl>,
    pub schedules: Vec<ScheduleDecl>,
    /// Outputs `loss` (scalar), `per_sample` (`[N]`) and one per `metric`.
    pub loss: Program,
    pub handlers: Vec<Handler>,
}

impl Module {
    pub fn batch_dim(&self) -> Option<DimSym> {
        self.dims.iter().find(|(_, d)| d.kind == DimKind::Batch).map(|(h, _)| h)
    }
    pub fn param_named(&self, name: &str) -> Option<Handle<ParamDecl>> {
        self.params.iter().find(|(_, p)| p.name == name).map(|(h, _)| h)
    }
    pub fn input_named(&self, name: &str) -> Option<Handle<InputDecl>> {
        self.inputs.iter().find(|(_, p)| p.name == name).map(|(h, _)| h)
    }
    pub fn const_named(&self, name: &str) -> Option<Handle<ConstDecl>> {
        self.consts.iter().find(|(_, p)| p.name == name).map(|(h, _)| h)
    }
    pub fn state_named(&self, name: &str) -> Option<Handle<StateDecl>> {
        self.states.iter().find(|(_, p)| p.name == name).map(|(h, _)| h)
    }
    pub fn dim_named(&self, name: &str) -> Option<DimSym> {
        self.dims.iter().find(|(_, p)| p.name == name).map(|(h, _)| h)
    }
    pub fn schedule_named(&self, name: &str) -> Option<&ScheduleDecl> {
        self.schedules.iter().find(|s| s.name == name)
    }
}

// ---- programs ----------------------------------------------------------------------------

pub type Block = Vec<Handle<Expr>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// `log(sum(exp(x)))`, evaluated stably.
    LogSumExp,
    /// Index of the first maximum, as `int`.
    ArgMax,
}

/// Values the training loop provides to every program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinValue {
    /// Epochs completed before the current one (0-based epoch number), `f32`.
    Epoch,
    /// Epochs in the whole run, `f32`.
    Epochs,
    /// Optimizer steps completed before the current one, over the whole run, `f32`: what a
    /// schedule that advances every step (BYOL's and DINO's momentum) reads.
    Iteration,
    /// Optimizer steps in the whole run, `f32`.
    Iterations,
    /// The learning rate the user asked for (`--lr`), `f32`.
    BaseLr,
    /// Dataset indices of the batch's samples, `int[N]`.
    SampleIndex,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Literal {
    Real(f64),
    Int(i64),
    Bool(bool),
}

/// Literals are the op table's scalars in f64: folding computes on them directly.
impl From<Literal> for crate::ops::Scalar<f64> {
    fn from(l: Literal) -> Self {
        match l {
            Literal::Real(v) => crate::ops::Scalar::Real(v),
            Literal::Int(v) => crate::ops::Scalar::Int(v),
            Literal::Bool(v) => crate::ops::Scalar::Bool(v),
        }
    }
}

impl From<crate::ops::Scalar<f64>> for Literal {
    fn from(s: crate::ops::Scalar<f64>) -> Self {
        match s {
            crate::ops::Scalar::Real(v) => Literal::Real(v),
            crate::ops::Scalar::Int(v) => Literal::Int(v),
            crate::ops::Scalar::Bool(v) => Literal::Bool(v),
        }
    }
}

/// A value carried around a loop: starts as `init`, is `param` inside the body, becomes `next`.
#[derive(Clone, Debug, PartialEq)]
pub struct Carried {
    pub init: Handle<Expr>,
    pub param: Handle<Expr>,
    pub next: Handle<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Literal(Literal),
    Param(Handle<ParamDecl>),
    Input(Handle<InputDecl>),
    Const(Handle<ConstDecl>),
    State(Handle<StateDecl>),
    Builtin(BuiltinValue),
    /// An output of the loss program, read by an `on step` handler (by position).
    Forward(usize),
    /// A fraction of the run in epochs: `round(fraction * epochs)`, at least 1 when positive.
    RunFraction(f64),
    /// The size of a dimension, as `int`.
    DimSize(Dim),
    /// `int` tensor of `shape` whose entries are their coordinate along `axis`.
    Iota {
        shape: Shape,
        axis: usize,
    },
    Unary {
        op: UnaryOp,
        arg: Handle<Expr>,
    },
    /// Operands have equal shapes (lowering inserts explicit broadcasts).
    Binary {
        op: BinaryOp,
        lhs: Handle<Expr>,
        rhs: Handle<Expr>,
    },
    Select {
        cond: Handle<Expr>,
        on_true: Handle<Expr>,
        on_false: Handle<Expr>,
    },
    Cast {
        arg: Handle<Expr>,
        to: Elem,
    },
    /// Numpy broadcasting to `shape`: axes are aligned on the right; the argument's axes are
    /// either equal to the target's or 1.
    Broadcast {
        arg: Handle<Expr>,
        shape: Shape,
    },
    /// Inserts an axis of size 1 before `axis`.
    ExpandDims {
        arg: Handle<Expr>,
        axis: usize,
    },
    /// Removes `axis`, whose size is 1.
    Squeeze {
        arg: Handle<Expr>,
        axis: usize,
    },
    /// Swaps the two axes of a matrix.
    Transpose {
        arg: Handle<Expr>,
    },
    /// Matrix product of `[a, b] @ [b, c]`.
    MatMul {
        lhs: Handle<Expr>,
        rhs: Handle<Expr>,
    },
    /// Reduces `axis` away.
    Reduce {
        op: ReduceOp,
        arg: Handle<Expr>,
        axis: usize,
    },
    Concat {
        parts: Vec<Handle<Expr>>,
        axis: usize,
    },
    Slice {
        arg: Handle<Expr>,
        axis: usize,
        start: Dim,
        len: Dim,
    },
    /// Rows of `table` picked by the `int[M]` vector `indices`.
    Gather {
        table: Handle<Expr>,
        indices: Handle<Expr>,
    },
    /// A zero `[rows, ...]` tensor to which each row `m` of `values` is added at row
    /// `indices[m]`, in increasing `m` (so the sums are the same for any thread count): the
    /// adjoint of [`Expr::Gather`]. Indices outside `0..rows` add nothing.
    ScatterAdd {
        values: Handle<Expr>,
        indices: Handle<Expr>,
        rows: Dim,
    },
    /// The value unchanged; no gradient flows through it.
    StopGrad {
        arg: Handle<Expr>,
    },
    /// The current value of a carried loop variable; bound by exactly one [`Expr::Loop`].
    LoopParam,
    /// Runs `body` `count` times (an `int` scalar node).
    Loop {
        count: Handle<Expr>,
        carried: Vec<Carried>,
        body: Block,
    },
    /// The final value of carried variable `index` of `looped`.
    LoopOutput {
        looped: Handle<Expr>,
        index: usize,
    },
    /// Fused by `passes::fuse_pairwise`: `reduce_j w(i, j)` for `axis = 1` (shape `[M]`), or
    /// `reduce_i w(i, j)` for `axis = 0` (shape `[P]`), without storing the `[M, P]` matrix.
    PairwiseReduce {
        pairwise: Box<PairwiseOperands>,
        op: ReduceOp,
        axis: usize,
    },
    /// Fused by `passes::fuse_pairwise`: `Σ_j w(i, j) v[j]` for `axis = 1` (`v: [P, E]`, shape
    /// `[M, E]`), or `Σ_i w(i, j) v[i]` for `axis = 0` (`v: [M, E]`, shape `[P, E]`).
    PairwiseMatMul {
        pairwise: Box<PairwiseOperands>,
        v: Handle<Expr>,
        axis: usize,
    },
}

impl Expr {
    /// One operation per element: the value at an index is computed from the operands'
    /// values at that same index.
    pub fn is_arithmetic(&self) -> bool {
        matches!(self, Expr::Unary { .. } | Expr::Binary { .. } | Expr::Select { .. } | Expr::Cast { .. })
    }

    /// Element-wise: arithmetic, literals, and index grids (whose value is the index itself).
    pub fn is_elementwise(&self) -> bool {
        self.is_arithmetic() || matches!(self, Expr::Literal(_) | Expr::Iota { .. })
    }

    /// The one operand of a view: a node whose elements are that operand's elements at other
    /// indices (or the same ones, for `stopgrad`), so it never needs storage of its own.
    pub fn view_arg(&self) -> Option<Handle<Expr>> {
        match self {
            Expr::StopGrad { arg }
            | Expr::Transpose { arg }
            | Expr::ExpandDims { arg, .. }
            | Expr::Squeeze { arg, .. }
            | Expr::Slice { arg, .. }
            | Expr::Broadcast { arg, .. } => Some(*arg),
            _ => None,
        }
    }

    /// Views and concatenations: every element is one operand's element at a remapped index.
    pub fn remaps_indices(&self) -> bool {
        self.view_arg().is_some() || matches!(self, Expr::Concat { .. })
    }

    /// Every node this one reads, loop bodies included (a loop's body nodes are its operands).
    pub fn operands(&self) -> Vec<Handle<Expr>> {
        match self {
            Expr::Literal(_)
            | Expr::Param(_)
            | Expr::Input(_)
            | Expr::Const(_)
            | Expr::State(_)
            | Expr::Builtin(_)
            | Expr::Forward(_)
            | Expr::RunFraction(_)
            | Expr::DimSize(_)
            | Expr::Iota { .. }
            | Expr::LoopParam => Vec::new(),
            Expr::Unary { arg, .. }
            | Expr::Cast { arg, .. }
            | Expr::Broadcast { arg, .. }
            | Expr::ExpandDims { arg, .. }
            | Expr::Squeeze { arg, .. }
            | Expr::Transpose { arg }
            | Expr::Reduce { arg, .. }
            | Expr::Slice { arg, .. }
            | Expr::StopGrad { arg } => vec![*arg],
            Expr::Binary { lhs, rhs, .. } | Expr::MatMul { lhs, rhs } => vec![*lhs, *rhs],
            Expr::Select { cond, on_true, on_false } => vec![*cond, *on_true, *on_false],
            Expr::Concat { parts, .. } => parts.clone(),
            Expr::Gather { table, indices } => vec![*table, *indices],
            Expr::ScatterAdd { values, indices, .. } => vec![*values, *indices],
            Expr::Loop { count, carried, .. } => {
                let mut ops = vec![*count];
                ops.extend(carried.iter().map(|c| c.init));
                ops
            }
            Expr::LoopOutput { looped, .. } => vec![*looped],
            Expr::PairwiseReduce { pairwise, .. } => pairwise.handles(),
            Expr::PairwiseMatMul { pairwise, v, .. } => {
                let mut hs = pairwise.handles();
                hs.push(*v);
                hs
            }
        }
    }

    /// Rewrites every operand handle through `f` (loop bodies and carried values included).
    pub fn map_operands(&self, f: &mut dyn FnMut(Handle<Expr>) -> Handle<Expr>) -> Expr {
        let mut e = self.clone();
        match &mut e {
            Expr::Literal(_)
            | Expr::Param(_)
            | Expr::Input(_)
            | Expr::Const(_)
            | Expr::State(_)
            | Expr::Builtin(_)
            | Expr::Forward(_)
            | Expr::RunFraction(_)
            | Expr::DimSize(_)
            | Expr::Iota { .. }
            | Expr::LoopParam => {}
            Expr::Unary { arg, .. }
            | Expr::Cast { arg, .. }
            | Expr::Broadcast { arg, .. }
            | Expr::ExpandDims { arg, .. }
            | Expr::Squeeze { arg, .. }
            | Expr::Transpose { arg }
            | Expr::Reduce { arg, .. }
            | Expr::Slice { arg, .. }
            | Expr::StopGrad { arg } => *arg = f(*arg),
            Expr::Binary { lhs, rhs, .. } | Expr::MatMul { lhs, rhs } => {
                *lhs = f(*lhs);
                *rhs = f(*rhs);
            }
            Expr::Select { cond, on_true, on_false } => {
                *cond = f(*cond);
                *on_true = f(*on_true);
                *on_false = f(*on_false);
            }
            Expr::Concat { parts, .. } => parts.iter_mut().for_each(|p| *p = f(*p)),
            Expr::Gather { table, indices } => {
                *table = f(*table);
                *indices = f(*indices);
            }
            Expr::ScatterAdd { values, indices, .. } => {
                *values = f(*values);
                *indices = f(*indices);
            }
            Expr::Loop { count, carried, body } => {
                *count = f(*count);
                for c in carried.iter_mut() {
                    c.init = f(c.init);
                    c.param = f(c.param);
                    c.next = f(c.next);
                }
                body.iter_mut().for_each(|b| *b = f(*b));
            }
            Expr::LoopOutput { looped, .. } => *looped = f(*looped),
            Expr::PairwiseReduce { pairwise, .. } => pairwise.map(f),
            Expr::PairwiseMatMul { pairwise, v, .. } => {
                pairwise.map(f);
                *v = f(*v);
            }
        }
        e
    }
}

/// What a pairwise kernel reads: `rows[k][i]`, `cols[k][j]` or `scalars[k]` of its
/// [`PairwiseOperands`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairwiseLoad {
    Row(usize),
    Col(usize),
    Scalar(usize),
}

/// One operation of a pairwise kernel.
pub type KernelNode = ScalarOp<PairwiseLoad, Axis>;

/// The element-wise function `w(i, j)` of a pairwise node, computed per entry and never
/// stored: a [`ScalarProgram`] whose result is always real.
pub type PairwiseKernel = ScalarProgram<PairwiseLoad, Axis>;

/// The operands a pairwise node reads: `x: [M, D]` and `y: [P, D]` (the entry `s_ij` of
/// `x @ y.T`), per-row vectors `[M]`, per-column vectors `[P]`, and scalars.
#[derive(Clone, Debug, PartialEq)]
pub struct PairwiseOperands {
    pub x: Handle<Expr>,
    pub y: Handle<Expr>,
    pub rows: Vec<Handle<Expr>>,
    pub cols: Vec<Handle<Expr>>,
    pub scalars: Vec<Handle<Expr>>,
    pub kernel: PairwiseKernel,
}

impl PairwiseOperands {
    fn handles(&self) -> Vec<Handle<Expr>> {
        let mut hs = vec![self.x, self.y];
        hs.extend(&self.rows);
        hs.extend(&self.cols);
        hs.extend(&self.scalars);
        hs
    }
    fn map(&mut self, f: &mut dyn FnMut(Handle<Expr>) -> Handle<Expr>) {
        self.x = f(self.x);
        self.y = f(self.y);
        for h in self.rows.iter_mut().chain(self.cols.iter_mut()).chain(self.scalars.iter_mut()) {
            *h = f(*h);
        }
    }
}

/// A named result of a program.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: Handle<Expr>,
}

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub exprs: Arena<Expr>,
    /// Type of each node, by handle index.
    pub types: Vec<Type>,
    /// Source span of each node, by handle index.
    pub spans: Vec<Span>,
    /// Names users gave to values (`let a = ...`), for printing and back-end symbols.
    pub names: HashMap<Handle<Expr>, String>,
    /// For nodes lowered from a function's body: the span of the outermost call, the one in
    /// the objective, so a diagnostic found after inlining (the autodiff's) can point at the
    /// user's own code as well as into the library.
    pub call_sites: HashMap<Handle<Expr>, Span>,
    /// The value each `let` name was bound to, by the span of the name: what an editor shows
    /// when hovering the name (a function's `let` appears once per call, with its shapes there).
    pub bindings: Vec<(Span, Handle<Expr>)>,
    pub body: Block,
    pub outputs: Vec<Output>,
}

impl Program {
    /// Appends a node whose type is already known; the caller places it in a block.
    pub fn append(&mut self, expr: Expr, ty: Type, span: Span) -> Handle<Expr> {
        let h = self.exprs.append(expr);
        self.types.push(ty);
        self.spans.push(span);
        h
    }
    pub fn ty(&self, h: Handle<Expr>) -> &Type {
        &self.types[h.index()]
    }
    pub fn span(&self, h: Handle<Expr>) -> Span {
        self.spans[h.index()]
    }
    pub fn output(&self, name: &str) -> Option<Handle<Expr>> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.value)
    }
}
