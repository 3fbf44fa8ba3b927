//! Pairwise fusion: the FlashAttention-style rewrite that keeps contrastive losses in
//! O(N·D) memory.
//!
//! A *seed* is a matrix product `x @ yᵀ` whose `[M, P]` result feeds only element-wise work —
//! the similarity matrix, masked by `eye`, scaled by a temperature, exponentiated, combined
//! with per-row and per-column vectors — that ends in *sinks*: row or column reductions
//! (`sum`, `max`, `logsumexp`), or products with a matrix (`W @ V`, `Wᵀ @ V`, as the gradient
//! of a similarity matrix is). When every use of the seed's element-wise region ends in a
//! sink, each sink becomes a [`Expr::PairwiseReduce`] or [`Expr::PairwiseMatMul`] that
//! recomputes `w(i, j)` tile by tile from `x`, `y` and the vectors, and the `[M, P]` matrices
//! are never stored. Patterns are matched on the IR's structure only, so any objective with
//! this shape (another mask, weighting or temperature) is fused the same way.

use super::{Action, Rebuilder};
use crate::ir::{
    Axis, BinaryOp, Dim, Elem, Expr, Handle, KernelNode, Literal, Module, PairwiseKernel, PairwiseLoad,
    PairwiseOperands, Program, ReduceOp,
};
use std::collections::HashMap;

pub(super) fn run(module: &Module, program: &Program) -> Program {
    let sinks = plan(program);
    if sinks.is_empty() {
        return program.clone();
    }
    Rebuilder::new(module, program).run(&mut |rb, old, _| match sinks.get(&old) {
        Some(sink) => Action::Replace(build(rb, sink)),
        None => Action::Keep,
    })
}

/// How an element-wise `[M, P]` node relates to the seeds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Region {
    /// Computed from one seed (and leaves).
    Of(Handle<Expr>),
    /// Computed from leaves only: broadcast vectors and scalars, index grids.
    Leaves,
    /// Anything else: it would have to be stored.
    Opaque,
}

/// Where a fused node's vector operand comes from in the old program.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Source {
    Node(Handle<Expr>),
    /// A dimension's size (the offsets of concatenated blocks), as an `int` scalar.
    Dim(Dim),
    /// The node with size-1 axis `axis` removed.
    Squeeze(Handle<Expr>, usize),
    /// A `[1, 1]` node as a scalar.
    SqueezeBoth(Handle<Expr>),
}

#[derive(Clone, Debug)]
enum SinkKind {
    Reduce {
        op: ReduceOp,
        axis: usize,
    },
    /// `W @ V` (`axis = 1`) or `Wᵀ @ V` (`axis = 0`).
    MatMul {
        v: Source,
        axis: usize,
        transpose_v: bool,
        transpose_result: bool,
    },
}

#[derive(Clone, Debug)]
struct Sink {
    seed: Handle<Expr>,
    /// The region node the sink consumes.
    input: Handle<Expr>,
    kind: SinkKind,
}

fn plan(p: &Program) -> HashMap<Handle<Expr>, Sink> {
    analyse(p).into_values().filter_map(Result::ok).flatten().collect()
}

/// Why a matrix product was not fused: the node that needs the `[M, P]` matrix stored.
#[derive(Clone, Debug)]
pub(crate) struct Spoiler {
    pub at: Handle<Expr>,
    pub why: String,
}

/// The products of `p` that pairwise fusion leaves stored, each with the reason.
pub(crate) fn unfused(p: &Program) -> Vec<(Handle<Expr>, Spoiler)> {
    let mut out: Vec<_> = analyse(p).into_iter().filter_map(|(seed, r)| r.err().map(|e| (seed, e))).collect();
    out.sort_by_key(|(seed, _)| *seed);
    out
}

/// For every seed, its sinks (placed at the nodes they replace), or what spoils it.
#[allow(clippy::type_complexity)]
fn analyse(p: &Program) -> HashMap<Handle<Expr>, Result<Vec<(Handle<Expr>, Sink)>, Spoiler>> {
    let mut region: HashMap<Handle<Expr>, Region> = HashMap::new();
    for &h in &p.body {
        let r = classify(p, h, &region);
        region.insert(h, r);
    }
    let uses = crate::fuse::uses(p);
    let users = &uses.consumers;
    let outputs: Vec<Handle<Expr>> = p.outputs.iter().map(|o| o.value).collect();

    // Group the region nodes by seed and collect their sinks; one unfusable use spoils a seed.
    let mut sinks_of: HashMap<Handle<Expr>, Result<Vec<(Handle<Expr>, Sink)>, Spoiler>> = HashMap::new();
    for &h in &p.body {
        let Region::Of(seed) = region[&h] else { continue };
        let entry = sinks_of.entry(seed).or_insert_with(|| Ok(Vec::new()));
        let Ok(list) = entry else { continue };
        if outputs.contains(&h) {
            *entry = Err(Spoiler { at: h, why: "the matrix is an output of the program".into() });
            continue;
        }
        for &u in &users[h.index()] {
            if region.get(&u) == Some(&Region::Of(seed)) {
                continue;
            }
            match sinks_for_use(p, h, u, users, &outputs, &region) {
                Some(found) => list.extend(found.into_iter().map(|(at, kind)| (at, Sink { seed, input: h, kind }))),
                None => {
                    *entry = Err(Spoiler { at: u, why: spoiled_by(p, u, &uses, &region) });
                    break;
                }
            }
        }
    }
    sinks_of
}

/// Why the use `u` of a region node needs the whole matrix.
fn spoiled_by(
    p: &Program,
    u: Handle<Expr>,
    uses: &crate::fuse::Uses,
    region: &HashMap<Handle<Expr>, Region>,
) -> String {
    let e = &p.exprs[u];
    if uses.scope[u.index()].is_some() {
        return "it is read inside a `repeat` loop".into();
    }
    match e {
        Expr::Reduce { op: ReduceOp::ArgMax, .. } => {
            "`argmax` reads it (only sum, max, min and logsumexp reductions are fused)".into()
        }
        Expr::MatMul { .. } => "it is multiplied with another similarity matrix or itself".into(),
        e if e.is_arithmetic() && region.get(&u) == Some(&Region::Opaque) => {
            let other =
                e.operands().into_iter().find(|&o| !matches!(region.get(&o), Some(Region::Of(_) | Region::Leaves)));
            match other {
                Some(o) => format!(
                    "it is combined with %{}, which is neither a broadcast row or column vector, a scalar, \
                     nor a mask built from index grids",
                    o.index()
                ),
                None => "it is combined element-wise with another similarity matrix".into(),
            }
        }
        Expr::Transpose { .. } => "its transpose is read by something other than a matrix product".into(),
        e => format!(
            "{} reads it whole (a fused matrix may only end in row or column reductions and products with a matrix)",
            crate::ir::expr_kind(e)
        ),
    }
}

fn is_pairwise_shape(p: &Program, h: Handle<Expr>) -> bool {
    let t = p.ty(h);
    t.rank() == 2
}

fn classify(p: &Program, h: Handle<Expr>, region: &HashMap<Handle<Expr>, Region>) -> Region {
    if !is_pairwise_shape(p, h) {
        return Region::Opaque;
    }
    let of = |o: &Handle<Expr>| region.get(o).copied().unwrap_or(Region::Opaque);
    let shape = &p.ty(h).shape;
    match &p.exprs[h] {
        Expr::MatMul { .. } => Region::Of(h),
        Expr::Iota { .. } => Region::Leaves,
        // Blocks of index masks (`concat(eye(N), eye(N))`): each entry picks its block by
        // comparing its index with the block boundaries.
        Expr::Concat { parts, .. } if parts.iter().all(|&q| index_only(p, q)) => Region::Leaves,
        Expr::Slice { arg, .. } if index_only(p, *arg) => Region::Leaves,
        Expr::Broadcast { arg, .. } if leaf_source(p, *arg, shape).is_some() => Region::Leaves,
        e if e.is_arithmetic() => {
            let mut seed = None;
            for o in e.operands() {
                if p.ty(o).shape != *shape {
                    return Region::Opaque;
                }
                match of(&o) {
                    Region::Opaque => return Region::Opaque,
                    Region::Leaves => {}
                    Region::Of(s) if seed.is_none_or(|x| x == s) => seed = Some(s),
                    Region::Of(_) => return Region::Opaque,
                }
            }
            seed.map_or(Region::Leaves, Region::Of)
        }
        _ => Region::Opaque,
    }
}

/// Whether a matrix is computed from its indices and scalars alone (an `eye` mask, blocks of
/// them joined or cut out), so that it can be evaluated at any shifted index inside a kernel.
fn index_only(p: &Program, h: Handle<Expr>) -> bool {
    let e = &p.exprs[h];
    p.ty(h).rank() == 2
        && match e {
            Expr::Iota { .. } => true,
            Expr::Broadcast { arg, .. } => p.ty(*arg).rank() == 0,
            Expr::Concat { parts, .. } => parts.iter().all(|&q| index_only(p, q)),
            Expr::Slice { arg, .. } => index_only(p, *arg),
            e if e.is_arithmetic() => e.operands().iter().all(|&o| index_only(p, o)),
            _ => false,
        }
}

/// What a broadcast into an `[M, P]` shape reads per entry: a row vector, a column vector or
/// a scalar.
#[derive(Clone, Debug)]
enum Leaf {
    Row(Source),
    Col(Source),
    Scalar(Source),
    Literal(Literal),
}

fn leaf_source(p: &Program, arg: Handle<Expr>, target: &[crate::ir::Dim]) -> Option<Leaf> {
    let t = p.ty(arg);
    match t.rank() {
        0 => Some(match p.exprs[arg] {
            Expr::Literal(l) => Leaf::Literal(l),
            _ => Leaf::Scalar(Source::Node(arg)),
        }),
        // Aligned on the right: a vector is indexed by the column.
        1 if t.shape[0] == target[1] => Some(Leaf::Col(Source::Node(arg))),
        2 => match (t.shape[0].is_one(), t.shape[1].is_one()) {
            (true, true) => Some(Leaf::Scalar(Source::SqueezeBoth(arg))),
            (false, true) if t.shape[0] == target[0] => Some(Leaf::Row(match p.exprs[arg] {
                Expr::ExpandDims { arg: v, axis: 1 } => Source::Node(v),
                _ => Source::Squeeze(arg, 1),
            })),
            (true, false) if t.shape[1] == target[1] => Some(Leaf::Col(match p.exprs[arg] {
                Expr::ExpandDims { arg: v, axis: 0 } => Source::Node(v),
                _ => Source::Squeeze(arg, 0),
            })),
            _ => None,
        },
        _ => None,
    }
}

/// The sinks a use of region node `h` by `u` becomes, placed at the nodes they replace;
/// `None` when the use needs the matrix stored.
fn sinks_for_use(
    p: &Program,
    h: Handle<Expr>,
    u: Handle<Expr>,
    users: &[Vec<Handle<Expr>>],
    outputs: &[Handle<Expr>],
    region: &HashMap<Handle<Expr>, Region>,
) -> Option<Vec<(Handle<Expr>, SinkKind)>> {
    // The other factor of a product must be an ordinary tensor, not another fused region.
    let plain = |v: Handle<Expr>| !matches!(region.get(&v), Some(Region::Of(_)));
    let matmul_sink = |at: Handle<Expr>,
                       lhs: Handle<Expr>,
                       rhs: Handle<Expr>,
                       w_is_transposed: bool|
     -> Option<(Handle<Expr>, SinkKind)> {
        // W @ V → axis 1; Wᵀ @ V → axis 0; L @ W = (Wᵀ Lᵀ)ᵀ → axis 0; L @ Wᵀ = (W Lᵀ)ᵀ → axis 1.
        let w_node = if w_is_transposed {
            p.exprs[at].operands().into_iter().find(|&o| matches!(p.exprs[o], Expr::Transpose { arg } if arg == h))
        } else {
            Some(h)
        };
        let w_node = w_node?;
        if lhs == w_node && rhs != w_node && plain(rhs) {
            Some((
                at,
                SinkKind::MatMul {
                    v: Source::Node(rhs),
                    axis: if w_is_transposed { 0 } else { 1 },
                    transpose_v: false,
                    transpose_result: false,
                },
            ))
        } else if rhs == w_node && lhs != w_node && plain(lhs) {
            Some((
                at,
                SinkKind::MatMul {
                    v: Source::Node(lhs),
                    axis: if w_is_transposed { 1 } else { 0 },
                    transpose_v: true,
                    transpose_result: true,
                },
            ))
        } else {
            None
        }
    };
    match p.exprs[u] {
        Expr::Reduce { op, axis, .. } if op != ReduceOp::ArgMax => Some(vec![(u, SinkKind::Reduce { op, axis })]),
        Expr::MatMul { lhs, rhs } => matmul_sink(u, lhs, rhs, false).map(|s| vec![s]),
        Expr::Transpose { .. } => {
            if outputs.contains(&u) {
                return None;
            }
            let mut out = Vec::new();
            for &v in &users[u.index()] {
                match p.exprs[v] {
                    Expr::MatMul { lhs, rhs } => out.push(matmul_sink(v, lhs, rhs, true)?),
                    _ => return None,
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// Builds the fused node replacing `sink` in the new program.
fn build(rb: &mut Rebuilder, sink: &Sink) -> Handle<Expr> {
    let span = rb.old.span(sink.input);
    let (x_old, b_old) = match rb.old.exprs[sink.seed] {
        Expr::MatMul { lhs, rhs } => (lhs, rhs),
        _ => unreachable!("seeds are matrix products"),
    };
    let x = rb.mapped(x_old);
    // s_ij = x_i · y_j needs y's rows: the right operand transposed.
    let y = match rb.old.exprs[b_old] {
        Expr::Transpose { arg } => rb.mapped(arg),
        _ => {
            let b = rb.mapped(b_old);
            rb.push(Expr::Transpose { arg: b }, span)
        }
    };
    let mut k = KernelBuilder {
        rb,
        seed: sink.seed,
        operands: Operands::default(),
        memo: HashMap::new(),
        kernel: PairwiseKernel::default(),
    };
    let result = k.node(sink.input);
    let KernelBuilder { rb, operands, mut kernel, .. } = k;
    kernel.result = result;
    let pairwise = Box::new(PairwiseOperands {
        x,
        y,
        rows: operands.rows.iter().map(|s| materialise(rb, s.clone(), span)).collect(),
        cols: operands.cols.iter().map(|s| materialise(rb, s.clone(), span)).collect(),
        scalars: operands.scalars.iter().map(|s| materialise(rb, s.clone(), span)).collect(),
        kernel,
    });
    match &sink.kind {
        SinkKind::Reduce { op, axis } => rb.push(Expr::PairwiseReduce { pairwise, op: *op, axis: *axis }, span),
        SinkKind::MatMul { v, axis, transpose_v, transpose_result } => {
            let mut v = materialise(rb, v.clone(), span);
            if *transpose_v {
                v = match *rb.new_expr(v) {
                    Expr::Transpose { arg } => arg,
                    _ => rb.push(Expr::Transpose { arg: v }, span),
                };
            }
            let fused = rb.push(Expr::PairwiseMatMul { pairwise, v, axis: *axis }, span);
            if *transpose_result {
                rb.push(Expr::Transpose { arg: fused }, span)
            } else {
                fused
            }
        }
    }
}

fn materialise(rb: &mut Rebuilder, s: Source, span: crate::span::Span) -> Handle<Expr> {
    match s {
        Source::Node(h) => rb.mapped(h),
        Source::Dim(d) => rb.push(Expr::DimSize(d), span),
        Source::Squeeze(h, axis) => {
            let arg = rb.mapped(h);
            rb.push(Expr::Squeeze { arg, axis }, span)
        }
        Source::SqueezeBoth(h) => {
            let arg = rb.mapped(h);
            let once = rb.push(Expr::Squeeze { arg, axis: 1 }, span);
            rb.push(Expr::Squeeze { arg: once, axis: 0 }, span)
        }
    }
}

#[derive(Default)]
struct Operands {
    rows: Vec<Source>,
    cols: Vec<Source>,
    scalars: Vec<Source>,
}

fn index_of(list: &mut Vec<Source>, s: Source) -> usize {
    list.iter().position(|x| *x == s).unwrap_or_else(|| {
        list.push(s);
        list.len() - 1
    })
}

/// The kernel nodes holding a row and a column index.
type IndexPair = (usize, usize);

/// Translates a region node of the old program into kernel nodes. Nodes are evaluated at an
/// index pair (the kernel nodes holding the row and column index): `(i, j)` itself, or shifted
/// into a block of a concatenation.
struct KernelBuilder<'r, 'a> {
    rb: &'r mut Rebuilder<'a>,
    seed: Handle<Expr>,
    operands: Operands,
    memo: HashMap<(Handle<Expr>, Option<IndexPair>), usize>,
    kernel: PairwiseKernel,
}

impl KernelBuilder<'_, '_> {
    /// Appends a kernel node, folding operations on literals (with the op table's semantics)
    /// and reusing an identical earlier node.
    fn emit(&mut self, n: KernelNode, elem: Elem) -> usize {
        self.kernel.push_folded(n, elem)
    }

    /// `h` at `(i, j)`.
    fn node(&mut self, h: Handle<Expr>) -> usize {
        self.at(h, None)
    }

    /// `h` at the index pair `at` (kernel nodes of the row and column index; `None` is
    /// `(i, j)`). Only index-only nodes are ever evaluated at shifted indices.
    fn at(&mut self, h: Handle<Expr>, at: Option<(usize, usize)>) -> usize {
        if let Some(&i) = self.memo.get(&(h, at)) {
            return i;
        }
        let p = self.rb.old;
        let elem = p.ty(h).elem;
        let shape = p.ty(h).shape.clone();
        let i = if h == self.seed {
            self.emit(KernelNode::Dot, Elem::Real)
        } else {
            match p.exprs[h].clone() {
                Expr::Iota { axis, .. } => {
                    let (row, col) = self.index_pair(at);
                    if axis == 0 {
                        row
                    } else {
                        col
                    }
                }
                Expr::Concat { parts, axis } => self.concat(&parts, axis, at, elem),
                // A block of a larger mask: the mask read at the index shifted by the start.
                Expr::Slice { arg, axis, start, .. } => {
                    let (row, col) = self.index_pair(at);
                    let index = if axis == 0 { row } else { col };
                    let shifted = if start.as_constant() == Some(0) {
                        index
                    } else {
                        let offset = self.size(&start);
                        self.emit(KernelNode::Binary(BinaryOp::Add, index, offset), Elem::Int)
                    };
                    self.at(arg, Some(if axis == 0 { (shifted, col) } else { (row, shifted) }))
                }
                Expr::Broadcast { arg, .. } => {
                    let leaf = leaf_source(p, arg, &shape).expect("classified as a leaf");
                    let leaf_elem = p.ty(arg).elem;
                    match leaf {
                        Leaf::Literal(l) => self.emit(KernelNode::Literal(l), elem),
                        Leaf::Row(s) => {
                            let k = index_of(&mut self.operands.rows, s);
                            self.emit(KernelNode::Load(PairwiseLoad::Row(k)), leaf_elem)
                        }
                        Leaf::Col(s) => {
                            let k = index_of(&mut self.operands.cols, s);
                            self.emit(KernelNode::Load(PairwiseLoad::Col(k)), leaf_elem)
                        }
                        Leaf::Scalar(s) => {
                            let k = index_of(&mut self.operands.scalars, s);
                            self.emit(KernelNode::Load(PairwiseLoad::Scalar(k)), leaf_elem)
                        }
                    }
                }
                Expr::Unary { op, arg } => {
                    let a = self.at(arg, at);
                    self.emit(KernelNode::Unary(op, a), elem)
                }
                Expr::Binary { op, lhs, rhs } => {
                    let (a, b) = (self.at(lhs, at), self.at(rhs, at));
                    self.emit(KernelNode::Binary(op, a, b), elem)
                }
                Expr::Select { cond, on_true, on_false } => {
                    let (c, a, b) = (self.at(cond, at), self.at(on_true, at), self.at(on_false, at));
                    self.emit(KernelNode::Select(c, a, b), elem)
                }
                Expr::Cast { arg, to } => {
                    let a = self.at(arg, at);
                    self.emit(KernelNode::Cast(a), to)
                }
                e => unreachable!("classified as element-wise: {e:?}"),
            }
        };
        self.memo.insert((h, at), i);
        i
    }

    fn index_pair(&mut self, at: Option<(usize, usize)>) -> (usize, usize) {
        match at {
            Some(pair) => pair,
            None => {
                (self.emit(KernelNode::Index(Axis::Row), Elem::Int), self.emit(KernelNode::Index(Axis::Col), Elem::Int))
            }
        }
    }

    /// A dimension's size as a kernel node (a literal when it is constant).
    fn size(&mut self, d: &Dim) -> usize {
        match d.as_constant() {
            Some(v) => self.emit(KernelNode::Literal(Literal::Int(v)), Elem::Int),
            None => {
                let k = index_of(&mut self.operands.scalars, Source::Dim(d.clone()));
                self.emit(KernelNode::Load(PairwiseLoad::Scalar(k)), Elem::Int)
            }
        }
    }

    /// The block of a concatenation holding the index along `axis`, chosen by comparing that
    /// index with the blocks' ends, each block read at the index shifted to its start.
    fn concat(&mut self, parts: &[Handle<Expr>], axis: usize, at: Option<(usize, usize)>, elem: Elem) -> usize {
        let (row, col) = self.index_pair(at);
        let index = if axis == 0 { row } else { col };
        let mut start = Dim::constant(0);
        let mut blocks = Vec::new();
        for &part in parts {
            let value = if start.as_constant() == Some(0) {
                self.at(part, Some((row, col)))
            } else {
                let offset = self.size(&start);
                let shifted = self.emit(KernelNode::Binary(BinaryOp::Sub, index, offset), Elem::Int);
                let pair = if axis == 0 { (shifted, col) } else { (row, shifted) };
                self.at(part, Some(pair))
            };
            start = start.add(&self.rb.old.ty(part).shape[axis]);
            blocks.push((start.clone(), value));
        }
        let (_, mut value) = blocks.pop().expect("a concatenation has parts");
        for (end, block) in blocks.into_iter().rev() {
            let end = self.size(&end);
            let inside = self.emit(KernelNode::Binary(BinaryOp::Lt, index, end), Elem::Bool);
            value = self.emit(KernelNode::Select(inside, block, value), elem);
        }
        value
    }
}
