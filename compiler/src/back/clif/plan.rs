//! From the optimised IR to a plan: which values get a buffer, and the kernels (loops over a
//! 2-D iteration space) that fill them. This is where element-wise chains are grouped: a
//! node whose only consumer is element-wise (or a reduction, or a concatenation) is not
//! stored but evaluated inside its consumer's loop, through any views (broadcasts, slices,
//! transposes) in between, so a chain such as `where(eye, -inf, sim) * scale` is one loop.
//!
//! Every tensor is seen as 2-D: a scalar is `[1, 1]`, a vector `[1, n]`, a matrix itself. A
//! buffer stores its rows one after another, each padded to a multiple of [`LANES`] so that
//! SIMD loops may write whole vectors; a buffer with exactly one column is stored densely.
//! Views never copy: an operand is read through an [`Access`], the composition of the views
//! between it and its buffer.

use super::Unsupported;
use crate::fuse;
use crate::ir::{
    BuiltinValue, Dim, Elem, Expr, Handle, PairwiseLoad, PairwiseOperands, Program, ReduceOp, ScalarOp, ScalarProgram,
    Shape, Type,
};
use std::collections::HashMap;

/// f32 lanes in one Cranelift SIMD value (128 bits, the widest Cranelift lowers on x86-64).
pub(crate) const LANES: i64 = 4;

pub(crate) type BufferId = usize;

pub(crate) use crate::ir::Axis;

/// One coordinate of an accessed value, as a function of some indices `A`: index `follows`
/// (none along a broadcast axis) plus `offset` (from slices and concatenation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Coord<A> {
    pub follows: Option<A>,
    pub offset: Dim,
}

impl<A: Clone> Coord<A> {
    pub fn index(axis: A) -> Self {
        Coord { follows: Some(axis), offset: Dim::constant(0) }
    }
    pub fn zero() -> Self {
        Coord { follows: None, offset: Dim::constant(0) }
    }
    fn shifted(&self, by: &Dim) -> Self {
        Coord { follows: self.follows.clone(), offset: self.offset.add(by) }
    }
    /// This coordinate, with its index replaced by what `at` says that index is.
    fn compose<B: Clone>(&self, at: impl Fn(&A) -> Coord<B>) -> Coord<B> {
        match &self.follows {
            Some(a) => at(a).shifted(&self.offset),
            None => Coord { follows: None, offset: self.offset.clone() },
        }
    }
}

/// Element `(row, col)` of a buffer, as a function of a kernel's loop indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Access {
    pub buffer: BufferId,
    pub row: Coord<Axis>,
    pub col: Coord<Axis>,
}

/// Where a stored value's elements are: its buffer's (row, col) as a function of the value's
/// own axes (by position).
#[derive(Clone, Debug)]
struct Placement {
    buffer: BufferId,
    row: Coord<usize>,
    col: Coord<usize>,
}

impl Placement {
    fn identity(buffer: BufferId, rank: usize) -> Placement {
        let (row, col) = match rank {
            0 => (Coord::zero(), Coord::zero()),
            1 => (Coord::zero(), Coord::index(0)),
            _ => (Coord::index(0), Coord::index(1)),
        };
        Placement { buffer, row, col }
    }
    /// The placement of a view whose axis `k` reads this value at `coords[k]`.
    fn through(&self, coords: &[Coord<usize>]) -> Placement {
        Placement {
            buffer: self.buffer,
            row: self.row.compose(|&a| coords[a].clone()),
            col: self.col.compose(|&a| coords[a].clone()),
        }
    }
    fn access(&self, at: &[Coord<Axis>]) -> Access {
        Access {
            buffer: self.buffer,
            row: self.row.compose(|&a| at[a].clone()),
            col: self.col.compose(|&a| at[a].clone()),
        }
    }
}

/// A value the driver writes into its buffer before running: the objective's leaves.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Leaf {
    Input(usize),
    Const(usize),
    State(usize),
    Param(usize),
    Builtin(BuiltinValue),
    Forward(usize),
    RunFraction(f64),
    DimSize(Dim),
}

#[derive(Clone, Debug)]
pub(crate) struct Buffer {
    pub elem: Elem,
    pub rows: Dim,
    pub cols: Dim,
    pub leaf: Option<Leaf>,
}

impl Buffer {
    /// Elements between consecutive rows: dense for one column, else padded to whole vectors.
    pub fn row_stride(&self) -> RowStride {
        if self.cols.is_one() {
            RowStride::One
        } else {
            RowStride::Padded(self.cols.clone())
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RowStride {
    One,
    /// `cols` rounded up to a multiple of [`LANES`].
    Padded(Dim),
}

/// One operation of an [`ElementProgram`].
pub(crate) type Op = ScalarOp<Access, Coord<Axis>>;

/// The shared scalar program form ([`crate::ir::ScalarProgram`]) with buffer accesses as
/// operands and coordinates as indices: what every loop of the generated code evaluates at
/// each point of its iteration space.
pub(crate) type ElementProgram = ScalarProgram<Access, Coord<Axis>>;

/// A kernel: one loop nest of the generated code.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// `out[row, col] = body(row, col)` over `rows × cols`.
    Map { out: Access, rows: Dim, cols: Dim, body: ElementProgram },
    /// `out[k] = reduce over the axis `along` of body(row, col)`, where `k` is the other index;
    /// `out` is read at the kept index.
    Reduce { out: Access, op: ReduceOp, along: Axis, rows: Dim, cols: Dim, body: ElementProgram },
    /// `out = lhs @ rhs`, `[m, k] @ [k, n]`.
    MatMul { out: Access, lhs: Access, rhs: Access, m: Dim, k: Dim, n: Dim },
    /// Rows (or, for a vector table, entries) of `table` picked by the `int` vector `indices`;
    /// `rows × cols` is the result's extent.
    Gather { out: Access, table: Access, table_rows: Dim, indices: Access, rows: Dim, cols: Dim },
    /// [`Expr::ScatterAdd`]: `out` (`rows × cols`) zeroed, then row `m < count` of `values`
    /// added to row `indices[m]` (entry, when `vector`), one column per unit and in increasing
    /// `m`, so the sums are the same for any thread count.
    ScatterAdd { out: Access, values: Access, indices: Access, count: Dim, rows: Dim, cols: Dim, vector: bool },
    /// Runs `body` then `update` (which copies each carried value's next into its buffer)
    /// `count` times.
    Loop { count: Access, body: Vec<Step>, update: Vec<Step> },
    /// A pairwise node, tile by tile: for each row `i` of `a` and row `j` of `b` (both
    /// `[·, depth]`), `kernel` (reading [`ScalarOp::Dot`] for `a_i · b_j`, row `i` and column `j`
    /// of the iteration space) gives `w(i, j)`, which `sink` consumes; the `rows × cols`
    /// matrix is never stored.
    Pairwise { a: Access, b: Access, rows: Dim, cols: Dim, depth: Dim, kernel: ElementProgram, sink: Sink },
    /// Top-level [`Step::Loop`]s that share no written buffer, run on separate threads (see
    /// the `schedule` module, which runs after planning).
    Concurrent { loops: Vec<Step> },
}

/// What a [`Step::Pairwise`] does with `w(i, j)`.
#[derive(Clone, Debug)]
pub(crate) enum Sink {
    /// `out[i] = reduce_j w(i, j)`.
    Reduce { op: ReduceOp, out: Access },
    /// `out[i, :] = sum_j w(i, j) v[j, :]` (`v`: `[cols, width]`); `symmetric` when
    /// `w(i, j) = w(j, i)` (see [`crate::ir::PairwiseOperands::is_symmetric`]).
    MatMul { v: Access, width: Dim, out: Access, symmetric: bool },
}

/// The plan of a whole program.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    /// Each output of the program: its name, type and where to read it.
    pub outputs: Vec<(String, Type, Access)>,
}

/// 2-D extent of a shape: `[]` is `[1, 1]`, `[n]` is `[1, n]`.
pub(crate) fn extent(shape: &Shape) -> Result<(Dim, Dim), Unsupported> {
    match shape.len() {
        0 => Ok((Dim::constant(1), Dim::constant(1))),
        1 => Ok((Dim::constant(1), shape[0].clone())),
        2 => Ok((shape[0].clone(), shape[1].clone())),
        r => Err(Unsupported(format!("tensors of rank {r} (the CPU back end handles scalars, vectors and matrices)"))),
    }
}

/// The kernel coordinates of a value of rank `rank` iterated over its own extent.
fn identity_coords(rank: usize) -> Vec<Coord<Axis>> {
    match rank {
        0 => Vec::new(),
        1 => vec![Coord::index(Axis::Col)],
        _ => vec![Coord::index(Axis::Row), Coord::index(Axis::Col)],
    }
}

/// The coordinates at which a view reads its argument, given the coordinates `at` at which
/// the view itself is read (one per axis of the view); `None` for nodes that are not views.
fn view_coords<A: Clone>(p: &Program, expr: &Expr, at: &[Coord<A>]) -> Option<Vec<Coord<A>>> {
    fuse::view_index(p, expr, at, Coord::zero, |c, d| c.shifted(d))
}

/// The CPU back end's fusion hook: element-wise chains are computed inside the loop of their
/// one reader, when it is element-wise, a reduction or a concatenation (each has a loop over
/// its own elements); everything read by anything else (products, gathers, tiles, loops) is
/// in a buffer. Recomputing is free only for values that read no memory.
pub(crate) const POLICY: fuse::Policy = fuse::Policy {
    recompute_limit: 0,
    inlinable: |e, _| e.is_elementwise(),
    reads_memory: |e, _| {
        !(e.is_elementwise() || e.view_arg().is_some() || matches!(e, Expr::Reduce { .. } | Expr::Concat { .. }))
    },
    view_aliases: |_| true,
    host_scalars: false,
};

/// How a node's value is available while planning.
#[derive(Clone, Debug)]
enum Val {
    Stored(Placement),
    /// Computed inside each consumer's loop.
    Inline,
}

struct Planner<'a> {
    p: &'a Program,
    /// How many loops enclose the node being planned.
    loop_depth: usize,
    inline: Vec<bool>,
    vals: Vec<Option<Val>>,
    buffers: Vec<Buffer>,
}

/// Plans `program` (of `module`).
pub(crate) fn plan(program: &Program) -> Result<Plan, Unsupported> {
    let inline = fuse::plan(program, &fuse::uses(program), &POLICY).inline;
    let mut planner =
        Planner { p: program, loop_depth: 0, inline, vals: vec![None; program.exprs.len()], buffers: Vec::new() };
    let mut steps = Vec::new();
    planner.block(&program.body, &mut steps)?;
    let mut outputs = Vec::new();
    for o in &program.outputs {
        let ty = program.ty(o.value).clone();
        let placement = planner.stored(o.value, &mut steps)?;
        outputs.push((o.name.clone(), ty.clone(), placement.access(&identity_coords(ty.rank()))));
    }
    Ok(Plan { buffers: planner.buffers, steps, outputs })
}

impl Planner<'_> {
    fn new_buffer(&mut self, ty: &Type, leaf: Option<Leaf>) -> Result<BufferId, Unsupported> {
        let (rows, cols) = extent(&ty.shape)?;
        self.buffers.push(Buffer { elem: ty.elem, rows, cols, leaf });
        Ok(self.buffers.len() - 1)
    }

    fn leaf(&mut self, h: Handle<Expr>, leaf: Leaf) -> Result<(), Unsupported> {
        let ty = self.p.ty(h).clone();
        let b = self.new_buffer(&ty, Some(leaf))?;
        self.vals[h.index()] = Some(Val::Stored(Placement::identity(b, ty.rank())));
        Ok(())
    }

    fn block(&mut self, block: &[Handle<Expr>], steps: &mut Vec<Step>) -> Result<(), Unsupported> {
        for &h in block {
            self.node(h, steps)?;
        }
        Ok(())
    }

    fn node(&mut self, h: Handle<Expr>, steps: &mut Vec<Step>) -> Result<(), Unsupported> {
        let p = self.p;
        let e = &p.exprs[h];
        let ty = p.ty(h).clone();
        extent(&ty.shape)?;
        // A view of a stored value is stored; a view of an inline one is inline, unless the
        // inlined tree got too deep (fuse::MAX_INLINE_DEPTH): then it is computed into a buffer.
        let view_of_stored = e.view_arg().and_then(|arg| match &self.vals[arg.index()] {
            Some(Val::Stored(pl)) => Some(pl.clone()),
            _ => None,
        });
        if let Some(pl) = view_of_stored {
            let own: Vec<Coord<usize>> = (0..ty.rank()).map(Coord::index).collect();
            let coords = view_coords(p, e, &own).expect("view_arg is set only for views");
            self.vals[h.index()] = Some(Val::Stored(pl.through(&coords)));
            return Ok(());
        }
        if self.inline[h.index()] {
            self.vals[h.index()] = Some(Val::Inline);
            return Ok(());
        }
        match e {
            Expr::Input(i) => return self.leaf(h, Leaf::Input(i.index())),
            Expr::Const(c) => return self.leaf(h, Leaf::Const(c.index())),
            Expr::State(s) => return self.leaf(h, Leaf::State(s.index())),
            Expr::Param(q) => return self.leaf(h, Leaf::Param(q.index())),
            Expr::Builtin(b) => return self.leaf(h, Leaf::Builtin(*b)),
            Expr::Forward(i) => return self.leaf(h, Leaf::Forward(*i)),
            Expr::RunFraction(f) => return self.leaf(h, Leaf::RunFraction(*f)),
            Expr::DimSize(d) => return self.leaf(h, Leaf::DimSize(d.clone())),
            // Loop parameters get their buffers from their loop.
            Expr::LoopParam => return Ok(()),
            _ => {}
        }
        if let Expr::Loop { count, carried, body } = e {
            return self.looped(*count, carried, body, steps);
        }
        if let Expr::LoopOutput { looped, index } = e {
            let Expr::Loop { carried, .. } = &p.exprs[*looped] else {
                return Err(Unsupported("a loop output of something that is not a loop".into()));
            };
            self.vals[h.index()] = self.vals[carried[*index].param.index()].clone();
            return Ok(());
        }
        let out = self.new_buffer(&ty, None)?;
        let placement = Placement::identity(out, ty.rank());
        let (rows, cols) = extent(&ty.shape)?;
        match e {
            _ if e.is_elementwise() || e.view_arg().is_some() => {
                // The node's own expression is the body of the loop that stores it.
                self.vals[h.index()] = Some(Val::Inline);
                let body = self.element_program(h, &identity_coords(ty.rank()))?;
                steps.push(Step::Map { out: placement.access(&identity_coords(ty.rank())), rows, cols, body });
            }
            Expr::Reduce { op, arg, axis } => {
                let arg_ty = p.ty(*arg);
                let (arg_rows, arg_cols) = extent(&arg_ty.shape)?;
                let along = if arg_ty.rank() == 2 && *axis == 0 { Axis::Row } else { Axis::Col };
                let kept = match along {
                    Axis::Row => Coord::index(Axis::Col),
                    Axis::Col => Coord::index(Axis::Row),
                };
                let out_access = Access { buffer: out, row: Coord::zero(), col: kept };
                let body = self.element_program(*arg, &identity_coords(arg_ty.rank()))?;
                steps.push(Step::Reduce { out: out_access, op: *op, along, rows: arg_rows, cols: arg_cols, body });
            }
            Expr::MatMul { lhs, rhs } => {
                let (m, k) = extent(&p.ty(*lhs).shape)?;
                let at = identity_coords(2);
                let lhs = self.stored(*lhs, steps)?.access(&at);
                let rhs = self.stored(*rhs, steps)?.access(&at);
                steps.push(Step::MatMul { out: placement.access(&at), lhs, rhs, m, k, n: cols });
            }
            Expr::Concat { parts, axis } => {
                let mut start = Dim::constant(0);
                for &part in parts {
                    let part_ty = p.ty(part).clone();
                    let (part_rows, part_cols) = extent(&part_ty.shape)?;
                    let mut at = identity_coords(ty.rank());
                    at[*axis] = at[*axis].shifted(&start);
                    let body = self.element_program(part, &identity_coords(ty.rank()))?;
                    steps.push(Step::Map { out: placement.access(&at), rows: part_rows, cols: part_cols, body });
                    start = start.add(&part_ty.shape[*axis]);
                }
            }
            Expr::Gather { table, indices } => {
                let table_ty = p.ty(*table).clone();
                let table_rows = table_ty.shape[0].clone();
                let table = self.stored(*table, steps)?.access(&identity_coords(table_ty.rank()));
                let indices = self.stored(*indices, steps)?.access(&identity_coords(1));
                let out = placement.access(&identity_coords(ty.rank()));
                steps.push(Step::Gather { out, table, table_rows, indices, rows, cols });
            }
            Expr::ScatterAdd { values, indices, .. } => {
                let values_ty = p.ty(*values).clone();
                let count = values_ty.shape[0].clone();
                let values = self.stored(*values, steps)?.access(&identity_coords(values_ty.rank()));
                let indices = self.stored(*indices, steps)?.access(&identity_coords(1));
                let out = placement.access(&identity_coords(ty.rank()));
                let vector = ty.rank() == 1;
                steps.push(Step::ScatterAdd { out, values, indices, count, rows, cols, vector });
            }
            Expr::PairwiseReduce { pairwise, op, axis } => {
                let (a, b, kernel) = self.pairwise(pairwise, *axis, steps)?;
                let out = Access { buffer: out, row: Coord::zero(), col: Coord::index(Axis::Row) };
                steps.push(Step::Pairwise {
                    a: a.0,
                    b: b.0,
                    rows: a.1,
                    cols: b.1,
                    depth: a.2,
                    kernel,
                    sink: Sink::Reduce { op: *op, out },
                });
            }
            Expr::PairwiseMatMul { pairwise, v, axis } => {
                let (a, b, kernel) = self.pairwise(pairwise, *axis, steps)?;
                let width = p.ty(*v).shape[1].clone();
                let v = self.stored(*v, steps)?.access(&identity_coords(2));
                let out = placement.access(&identity_coords(2));
                let symmetric = pairwise.is_symmetric();
                steps.push(Step::Pairwise {
                    a: a.0,
                    b: b.0,
                    rows: a.1,
                    cols: b.1,
                    depth: a.2,
                    kernel,
                    sink: Sink::MatMul { v, width, out, symmetric },
                });
            }
            other => return Err(Unsupported(format!("the IR node {other:?}"))),
        }
        self.vals[h.index()] = Some(Val::Stored(placement));
        Ok(())
    }

    fn looped(
        &mut self,
        count: Handle<Expr>,
        carried: &[crate::ir::Carried],
        body: &[Handle<Expr>],
        steps: &mut Vec<Step>,
    ) -> Result<(), Unsupported> {
        let count = self.stored(count, steps)?.access(&[]);
        let mut params = Vec::new();
        for c in carried {
            let ty = self.p.ty(c.init).clone();
            let buffer = self.new_buffer(&ty, None)?;
            let at = identity_coords(ty.rank());
            let (rows, cols) = extent(&ty.shape)?;
            let init = self.element_program(c.init, &at)?;
            let placement = Placement::identity(buffer, ty.rank());
            steps.push(Step::Map { out: placement.access(&at), rows, cols, body: init });
            self.vals[c.param.index()] = Some(Val::Stored(placement.clone()));
            params.push((placement, ty));
        }
        let mut inner = Vec::new();
        self.loop_depth += 1;
        self.block(body, &mut inner)?;
        self.loop_depth -= 1;
        // Every next value goes to a buffer of its own before any parameter is overwritten,
        // so one carried value's update never reads another's new value.
        let mut staged = Vec::new();
        for c in carried {
            let ty = self.p.ty(c.next).clone();
            let at = identity_coords(ty.rank());
            let (rows, cols) = extent(&ty.shape)?;
            let stage = self.new_buffer(&ty, None)?;
            let body = self.element_program(c.next, &at)?;
            inner.push(Step::Map { out: Placement::identity(stage, ty.rank()).access(&at), rows, cols, body });
            staged.push(stage);
        }
        let mut update = Vec::new();
        for ((placement, ty), stage) in params.iter().zip(staged) {
            let at = identity_coords(ty.rank());
            let (rows, cols) = extent(&ty.shape)?;
            let mut body = ElementProgram::default();
            body.push(Op::Load(Placement::identity(stage, ty.rank()).access(&at)), ty.elem);
            update.push(Step::Map { out: placement.access(&at), rows, cols, body });
        }
        steps.push(Step::Loop { count, body: inner, update });
        Ok(())
    }

    /// The two matrices of a pairwise node, each with its rows and depth, ordered so that the
    /// node reduces along the iteration's columns (`axis = 0` swaps `x` and `y`), and its
    /// kernel as an element program of that iteration.
    #[allow(clippy::type_complexity)]
    fn pairwise(
        &mut self,
        pw: &PairwiseOperands,
        axis: usize,
        steps: &mut Vec<Step>,
    ) -> Result<((Access, Dim, Dim), (Access, Dim, Dim), ElementProgram), Unsupported> {
        if self.loop_depth > 0 {
            // The optimiser never fuses inside loops; the runtime's tiled loop runs from `main`.
            return Err(Unsupported("a pairwise node inside a `repeat` loop".into()));
        }
        let (i, j) = if axis == 1 { (Axis::Row, Axis::Col) } else { (Axis::Col, Axis::Row) };
        let mut matrix = |h: Handle<Expr>, steps: &mut Vec<Step>| -> Result<(Access, Dim, Dim), Unsupported> {
            let (rows, depth) = extent(&self.p.ty(h).shape)?;
            Ok((self.stored(h, steps)?.access(&identity_coords(2)), rows, depth))
        };
        let x = matrix(pw.x, steps)?;
        let y = matrix(pw.y, steps)?;
        let mut vector =
            |hs: &[Handle<Expr>], along: Option<Axis>, steps: &mut Vec<Step>| -> Result<Vec<Access>, Unsupported> {
                let at: Vec<Coord<Axis>> = along.map(Coord::index).into_iter().collect();
                hs.iter().map(|&h| Ok(self.stored(h, steps)?.access(&at))).collect()
            };
        let rows = vector(&pw.rows, Some(i), steps)?;
        let cols = vector(&pw.cols, Some(j), steps)?;
        let scalars = vector(&pw.scalars, None, steps)?;
        let prog = pw.kernel.map(
            |load| match load {
                PairwiseLoad::Row(n) => rows[*n].clone(),
                PairwiseLoad::Col(n) => cols[*n].clone(),
                PairwiseLoad::Scalar(n) => scalars[*n].clone(),
            },
            |index| Coord::index(if *index == Axis::Row { i } else { j }),
        );
        Ok(if axis == 1 { (x, y, prog) } else { (y, x, prog) })
    }

    /// `h` in a buffer, copying it into one if it is computed inline.
    fn stored(&mut self, h: Handle<Expr>, steps: &mut Vec<Step>) -> Result<Placement, Unsupported> {
        if let Some(Val::Stored(pl)) = &self.vals[h.index()] {
            return Ok(pl.clone());
        }
        let ty = self.p.ty(h).clone();
        let out = self.new_buffer(&ty, None)?;
        let at = identity_coords(ty.rank());
        let (rows, cols) = extent(&ty.shape)?;
        let body = self.element_program(h, &at)?;
        let placement = Placement::identity(out, ty.rank());
        steps.push(Step::Map { out: placement.access(&at), rows, cols, body });
        self.vals[h.index()] = Some(Val::Stored(placement.clone()));
        Ok(placement)
    }

    /// The element program computing `h` at kernel coordinates `at` (one per axis of `h`).
    fn element_program(&self, h: Handle<Expr>, at: &[Coord<Axis>]) -> Result<ElementProgram, Unsupported> {
        let mut prog = ElementProgram::default();
        let mut memo = HashMap::new();
        self.emit(h, at, &mut prog, &mut memo)?;
        Ok(prog)
    }

    fn emit(
        &self,
        h: Handle<Expr>,
        at: &[Coord<Axis>],
        prog: &mut ElementProgram,
        memo: &mut HashMap<(Handle<Expr>, Vec<Coord<Axis>>), usize>,
    ) -> Result<usize, Unsupported> {
        if let Some(&k) = memo.get(&(h, at.to_vec())) {
            return Ok(k);
        }
        let p = self.p;
        let e = &p.exprs[h];
        let elem = p.ty(h).elem;
        let op = match &self.vals[h.index()] {
            Some(Val::Stored(pl)) => Op::Load(pl.access(at)),
            None => return Err(Unsupported(format!("node {h} is read before it is computed"))),
            Some(Val::Inline) => {
                if let (Some(arg), Some(coords)) = (e.view_arg(), view_coords(p, e, at)) {
                    let k = self.emit(arg, &coords, prog, memo)?;
                    memo.insert((h, at.to_vec()), k);
                    return Ok(k);
                }
                let mut operand = |x: Handle<Expr>, prog: &mut ElementProgram| self.emit(x, at, prog, memo);
                match e {
                    Expr::Literal(l) => Op::Literal(*l),
                    Expr::Iota { axis, .. } => Op::Index(at[*axis].clone()),
                    Expr::Unary { op, arg } => Op::Unary(*op, operand(*arg, prog)?),
                    Expr::Binary { op, lhs, rhs } => {
                        let l = operand(*lhs, prog)?;
                        Op::Binary(*op, l, operand(*rhs, prog)?)
                    }
                    Expr::Select { cond, on_true, on_false } => {
                        let c = operand(*cond, prog)?;
                        let t = operand(*on_true, prog)?;
                        Op::Select(c, t, operand(*on_false, prog)?)
                    }
                    Expr::Cast { arg, .. } => Op::Cast(operand(*arg, prog)?),
                    other => return Err(Unsupported(format!("inline evaluation of {other:?}"))),
                }
            }
        };
        let k = prog.push(op, elem);
        memo.insert((h, at.to_vec()), k);
        Ok(k)
    }
}
