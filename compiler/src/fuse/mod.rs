//! The back-end-neutral fusion stage: who reads each node and from which loop, what
//! recomputing a node costs, and the one inline-or-store rule every back end applies.
//!
//! A node that is *inlined* is never stored: each reader recomputes it at the index it needs,
//! inside its own loop (through views, which only remap indices). A node is stored when
//!
//! - it is an output, or a reader needs it in memory (a matrix product's operand on the CPU,
//!   a pairwise tile's operand everywhere) — the back end's [`Policy::reads_memory`];
//! - or it is read more than once, from another loop, or at repeated indices (through an
//!   expanding broadcast, as a gather's table or a product's operand), and recomputing it
//!   costs more than [`Policy::recompute_limit`] operations.
//!
//! The back ends differ only in that hook (what they can inline, what must be in memory, how
//! much recomputation is cheaper than a round trip through memory), as naga's writers share
//! one `bake_ref_count` rule; the pairwise fusion pass reads the same [`Uses`].

mod report;

pub use report::{report, Materialised, Report};

use crate::ir::{BuiltinValue, Expr, Handle, Program};

type H = Handle<Expr>;

/// Who reads each node, and where each node lives.
pub struct Uses {
    /// The distinct nodes reading each node (by handle index); a loop reads its count, the
    /// initial values of its carried variables, and their next values.
    pub consumers: Vec<Vec<H>>,
    /// The loop whose body holds each node (`None` at the top level); a carried variable
    /// lives in its loop's body.
    pub scope: Vec<Option<H>>,
    /// Whether each node is an output of the program.
    pub output: Vec<bool>,
}

/// The use and loop-scope analysis of `p`.
pub fn uses(p: &Program) -> Uses {
    let n = p.exprs.len();
    let mut u = Uses { consumers: vec![Vec::new(); n], scope: vec![None; n], output: vec![false; n] };
    fn walk(p: &Program, block: &[H], scope: Option<H>, u: &mut Uses) {
        for &h in block {
            u.scope[h.index()] = scope;
            let e = &p.exprs[h];
            for o in e.operands() {
                u.consumers[o.index()].push(h);
            }
            if let Expr::Loop { carried, body, .. } = e {
                for c in carried {
                    u.scope[c.param.index()] = Some(h);
                    u.consumers[c.next.index()].push(h);
                }
                walk(p, body, Some(h), u);
            }
        }
    }
    walk(p, &p.body, None, &mut u);
    for o in &p.outputs {
        u.output[o.value.index()] = true;
    }
    for list in &mut u.consumers {
        list.sort();
        list.dedup();
    }
    u
}

impl Uses {
    /// The loop in which `consumer` reads `h`: a loop reads its carried next values at the end
    /// of its body, everything else where it stands.
    fn read_scope(&self, p: &Program, consumer: H, h: H) -> Option<H> {
        match &p.exprs[consumer] {
            Expr::Loop { carried, .. } if carried.iter().any(|c| c.next == h) => Some(consumer),
            _ => self.scope[consumer.index()],
        }
    }
}

/// The indices at which a view reads its operand, given the indices `at` at which the view is
/// read (one per axis of the view); `None` for nodes that are not views. Generic over the
/// index type: the CPU back end composes coordinates, CUDA builds C expressions. `zero` is
/// index 0; `shift(i, d)` is `i + d`.
pub fn view_index<I: Clone>(
    p: &Program,
    expr: &Expr,
    at: &[I],
    zero: impl Fn() -> I,
    mut shift: impl FnMut(&I, &crate::ir::Dim) -> I,
) -> Option<Vec<I>> {
    Some(match expr {
        Expr::StopGrad { .. } => at.to_vec(),
        Expr::Transpose { .. } => vec![at[1].clone(), at[0].clone()],
        Expr::ExpandDims { axis, .. } => {
            at.iter().enumerate().filter(|(k, _)| k != axis).map(|(_, c)| c.clone()).collect()
        }
        Expr::Squeeze { axis, .. } => {
            let mut inner = at.to_vec();
            inner.insert(*axis, zero());
            inner
        }
        Expr::Slice { axis, start, .. } => {
            let mut inner = at.to_vec();
            inner[*axis] = shift(&inner[*axis], start);
            inner
        }
        // Aligned on the right; an axis of size 1 spread over a longer one reads index 0.
        Expr::Broadcast { arg, shape } => {
            let from = &p.ty(*arg).shape;
            let lead = shape.len() - from.len();
            from.iter()
                .enumerate()
                .map(|(k, d)| if d.is_one() && !shape[k + lead].is_one() { zero() } else { at[k + lead].clone() })
                .collect()
        }
        _ => return None,
    })
}

/// Whether a broadcast repeats elements (rather than only adding axes of size 1).
pub fn expands(p: &Program, e: &Expr) -> bool {
    match e {
        Expr::Broadcast { arg, shape } => {
            let from = &p.ty(*arg).shape;
            let strip = |s: &[crate::ir::Dim]| s.iter().filter(|d| !d.is_one()).cloned().collect::<Vec<_>>();
            strip(from) != strip(shape)
        }
        _ => false,
    }
}

/// Whether `consumer` reads each element of its operand `h` more than once.
fn repeats(p: &Program, consumer: &Expr, h: H) -> bool {
    match consumer {
        Expr::Gather { table, .. } => *table == h,
        Expr::MatMul { .. } | Expr::PairwiseReduce { .. } | Expr::PairwiseMatMul { .. } => true,
        e => expands(p, e),
    }
}

/// What a back end can do; the rule itself is [`plan`]'s.
pub struct Policy {
    /// The most operations a value may cost and still be recomputed by several readers, by a
    /// reader in another loop, or at repeated indices.
    pub recompute_limit: usize,
    /// Whether the back end can compute this node inside its readers (`uniform`: a scalar the
    /// host knows at launch).
    pub inlinable: fn(e: &Expr, uniform: bool) -> bool,
    /// Whether this consumer reads its operand `h` from memory.
    pub reads_memory: fn(consumer: &Expr, h: H) -> bool,
    /// Whether a view of a stored value can use that value's memory as it is (the CPU's
    /// buffers take any index map; CUDA's only dense ones).
    pub view_aliases: fn(&Expr) -> bool,
    /// Whether scalars the host computes (parameters, epochs, schedules, dimensions) are
    /// passed to kernels as values rather than stored.
    pub host_scalars: bool,
}

/// The fusion decisions for one program.
pub struct Fusion {
    /// Computed by its readers, never stored.
    pub inline: Vec<bool>,
    /// A scalar the host knows at launch (only with [`Policy::host_scalars`]).
    pub uniform: Vec<bool>,
    /// Reads no memory at all: literals, index grids, uniform scalars and what is computed
    /// from them (masks such as `eye`).
    pub invariant: Vec<bool>,
    /// Operations a reader repeats by recomputing the node (0 for stored nodes).
    pub cost: Vec<usize>,
}

/// How a node is read, looking through the views that alias it.
#[derive(Default)]
struct Reads {
    count: usize,
    other_scope: bool,
    repeated: bool,
    memory: bool,
    /// A view that needs memory of its own (always false for other nodes).
    stored_view: bool,
}

/// The most element-wise operations and views an inlined expression may nest. Back ends build
/// an inlined value as one expression tree (Cranelift values, a C expression), recursively; a
/// chain of 5,000 `let`s would otherwise become one tree 5,000 deep. Past this depth the value
/// is stored, which costs one buffer per 64 operations.
pub const MAX_INLINE_DEPTH: usize = 64;

/// Applies the inline-or-store rule to every node of `p`, in program order.
pub fn plan(p: &Program, u: &Uses, policy: &Policy) -> Fusion {
    let n = p.exprs.len();
    let mut f = Fusion { inline: vec![false; n], uniform: vec![false; n], invariant: vec![false; n], cost: vec![0; n] };
    let mut order = Vec::with_capacity(n);
    fn flatten(p: &Program, block: &[H], order: &mut Vec<H>) {
        for &h in block {
            order.push(h);
            if let Expr::Loop { body, .. } = &p.exprs[h] {
                flatten(p, body, order);
            }
        }
    }
    flatten(p, &p.body, &mut order);
    let reads = all_reads(p, u, policy, &order);
    // Nesting of the inlined tree rooted at each node (0 for stored nodes).
    let mut depth = vec![0usize; n];
    for h in order {
        let e = &p.exprs[h];
        let operands = e.operands();
        let scalar = p.ty(h).rank() == 0;
        let uniform = scalar
            && match e {
                Expr::Literal(_) => true,
                Expr::Param(_) | Expr::RunFraction(_) | Expr::DimSize(_) => policy.host_scalars,
                Expr::Builtin(b) => policy.host_scalars && *b != BuiltinValue::SampleIndex,
                e if e.is_arithmetic() || matches!(e, Expr::StopGrad { .. }) => {
                    operands.iter().all(|o| f.uniform[o.index()])
                }
                _ => false,
            };
        f.uniform[h.index()] = uniform;
        f.invariant[h.index()] = uniform
            || match e {
                Expr::Iota { .. } | Expr::Literal(_) => true,
                e if e.remaps_indices() || e.is_arithmetic() => operands.iter().all(|o| f.invariant[o.index()]),
                _ => false,
            };
        let cost = if f.invariant[h.index()] {
            0
        } else {
            let inputs = operands.iter().fold(0usize, |total, o| total.saturating_add(f.cost[o.index()]));
            match e {
                e if e.is_arithmetic() => inputs.saturating_add(1),
                e if e.remaps_indices() || matches!(e, Expr::Gather { .. }) => inputs,
                _ => usize::MAX,
            }
        };
        let nested = 1 + operands.iter().map(|o| depth[o.index()]).max().unwrap_or(0);
        let inline = nested <= MAX_INLINE_DEPTH
            && if e.view_arg().is_some() {
                !reads[h.index()].stored_view
            } else if !(policy.inlinable)(e, uniform) || u.output[h.index()] {
                false
            } else {
                let r = &reads[h.index()];
                !r.memory && (cost <= policy.recompute_limit || (r.count <= 1 && !r.other_scope && !r.repeated))
            };
        f.inline[h.index()] = inline;
        f.cost[h.index()] = if inline { cost } else { 0 };
        depth[h.index()] = if inline { nested } else { 0 };
    }
    f
}

/// How every node is read (see [`Reads`]), computed consumers first in reverse program order:
/// a view read through a chain of views then costs no recursion.
fn all_reads(p: &Program, u: &Uses, policy: &Policy, order: &[H]) -> Vec<Reads> {
    let mut all: Vec<Reads> = (0..p.exprs.len()).map(|_| Reads::default()).collect();
    for &h in order.iter().rev() {
        let mut r = Reads::default();
        for &c in &u.consumers[h.index()] {
            let e = &p.exprs[c];
            let other_scope = u.read_scope(p, c, h) != u.scope[h.index()];
            let through = &all[c.index()];
            if e.view_arg() == Some(h) && !through.stored_view {
                r.count += through.count;
                r.other_scope |= other_scope || through.other_scope;
                r.repeated |= expands(p, e) || through.repeated;
                // An output that is a view of `h` is `h` in memory.
                r.memory |= through.memory || u.output[c.index()];
            } else {
                r.count += 1;
                r.other_scope |= other_scope;
                r.repeated |= repeats(p, e, h);
                r.memory |= (policy.reads_memory)(e, h);
            }
        }
        // A view needs memory of its own when it is an output, or something reads it from
        // memory in a layout the back end cannot get by aliasing its operand.
        let e = &p.exprs[h];
        r.stored_view = e.view_arg().is_some() && !(policy.view_aliases)(e) && (u.output[h.index()] || r.memory);
        all[h.index()] = r;
    }
    all
}
