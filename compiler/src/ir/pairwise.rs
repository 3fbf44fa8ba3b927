//! Pairwise kernels under the exchange of `i` and `j`. When `x` and `y` are one matrix `Z`,
//! the dot product is symmetric (`s_ij = s_ji`), so `w(j, i)` is computable from the same
//! tile as `w(i, j)`: the optimiser merges `W V + Wᵀ V` into one product with the kernel
//! `w(i, j) + w(j, i)`, and back ends that know a kernel is symmetric compute half the tiles.

use super::{
    Axis, BinaryOp, Elem, Expr, Handle, KernelNode, Literal, PairwiseKernel, PairwiseLoad, PairwiseOperands, UnaryOp,
};
use std::collections::HashMap;

/// A kernel node with its operands replaced by canonical ids, and vectors named by the value
/// they read and the index they are read at: equal terms compute equal values.
#[derive(PartialEq, Eq, Hash)]
enum Term {
    Dot,
    /// A vector read at `i` (`true`) or at `j`.
    Vector(Handle<Expr>, bool),
    Scalar(Handle<Expr>),
    /// The index `i` (`true`) or `j`.
    Index(bool),
    Real(u64),
    Int(i64),
    Bool(bool),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Select(usize, usize, usize),
    Cast(usize, Elem),
}

/// Row `i` becomes column `j` and the other way round.
fn swap(axis: Axis) -> Axis {
    match axis {
        Axis::Row => Axis::Col,
        Axis::Col => Axis::Row,
    }
}

/// Whether `op(a, b) = op(b, a)`.
fn commutes(op: BinaryOp) -> bool {
    use BinaryOp::*;
    matches!(op, Add | Mul | Max | Min | Eq | Ne | And | Or)
}

/// Hash-consing of terms: one id per distinct value.
#[derive(Default)]
struct Terms(HashMap<Term, usize>);

impl Terms {
    fn id(&mut self, t: Term) -> usize {
        let next = self.0.len();
        *self.0.entry(t).or_insert(next)
    }

    /// The canonical id of every node of `pw`'s kernel, with `i` and `j` exchanged when
    /// `swapped` (which needs `x = y`, so that the dot product stays the same).
    fn of(&mut self, pw: &PairwiseOperands, swapped: bool) -> Vec<usize> {
        let mut ids: Vec<usize> = Vec::with_capacity(pw.kernel.ops.len());
        for (node, elem) in &pw.kernel.ops {
            let term = match *node {
                KernelNode::Dot => Term::Dot,
                KernelNode::Load(PairwiseLoad::Row(k)) => Term::Vector(pw.rows[k], !swapped),
                KernelNode::Load(PairwiseLoad::Col(k)) => Term::Vector(pw.cols[k], swapped),
                KernelNode::Load(PairwiseLoad::Scalar(k)) => Term::Scalar(pw.scalars[k]),
                KernelNode::Index(axis) => Term::Index((axis == Axis::Row) != swapped),
                KernelNode::Literal(Literal::Real(v)) => Term::Real(v.to_bits()),
                KernelNode::Literal(Literal::Int(v)) => Term::Int(v),
                KernelNode::Literal(Literal::Bool(v)) => Term::Bool(v),
                KernelNode::Unary(op, a) => Term::Unary(op, ids[a]),
                KernelNode::Binary(op, a, b) if commutes(op) => {
                    Term::Binary(op, ids[a].min(ids[b]), ids[a].max(ids[b]))
                }
                KernelNode::Binary(op, a, b) => Term::Binary(op, ids[a], ids[b]),
                KernelNode::Select(c, a, b) => Term::Select(ids[c], ids[a], ids[b]),
                KernelNode::Cast(a) => Term::Cast(ids[a], *elem),
            };
            ids.push(self.id(term));
        }
        ids
    }
}

impl PairwiseOperands {
    /// Whether `w(i, j) = w(j, i)` for all `i`, `j`, as far as the kernel's structure shows:
    /// `x` and `y` are one matrix, and exchanging `i` and `j` gives the same expression up to
    /// the order of commutative operands.
    pub fn is_symmetric(&self) -> bool {
        if self.x != self.y {
            return false;
        }
        let mut terms = Terms::default();
        let direct = terms.of(self, false);
        let swapped = terms.of(self, true);
        direct[self.kernel.result] == swapped[self.kernel.result]
    }

    /// The same node with the kernel `w(i, j) + w(j, i)`; `x` and `y` must be one matrix.
    pub fn symmetrized(&self) -> PairwiseOperands {
        debug_assert_eq!(self.x, self.y, "only a kernel over one matrix can be symmetrized");
        let mut out = PairwiseOperands { kernel: PairwiseKernel::default(), ..self.clone() };
        // Canonical id to node of the new kernel: nodes both copies compute (scalars,
        // literals, the dot product, ...) are emitted once.
        let mut interned: HashMap<usize, usize> = HashMap::new();
        let mut terms = Terms::default();
        let mut results = [0; 2];
        for (copy, swapped) in [false, true].into_iter().enumerate() {
            let ids = terms.of(self, swapped);
            let mut at: Vec<usize> = Vec::with_capacity(self.kernel.ops.len());
            for (k, (node, elem)) in self.kernel.ops.iter().enumerate() {
                let node = match (node.clone(), swapped) {
                    (KernelNode::Load(PairwiseLoad::Row(r)), true) => {
                        KernelNode::Load(PairwiseLoad::Col(position(&mut out.cols, self.rows[r])))
                    }
                    (KernelNode::Load(PairwiseLoad::Col(c)), true) => {
                        KernelNode::Load(PairwiseLoad::Row(position(&mut out.rows, self.cols[c])))
                    }
                    (KernelNode::Index(axis), true) => KernelNode::Index(swap(axis)),
                    (KernelNode::Unary(op, a), _) => KernelNode::Unary(op, at[a]),
                    (KernelNode::Binary(op, a, b), _) => KernelNode::Binary(op, at[a], at[b]),
                    (KernelNode::Select(c, a, b), _) => KernelNode::Select(at[c], at[a], at[b]),
                    (KernelNode::Cast(a), _) => KernelNode::Cast(at[a]),
                    (leaf, _) => leaf,
                };
                let index = *interned.entry(ids[k]).or_insert_with(|| {
                    out.kernel.ops.push((node, *elem));
                    out.kernel.ops.len() - 1
                });
                at.push(index);
            }
            results[copy] = at[self.kernel.result];
        }
        out.kernel.push(KernelNode::Binary(BinaryOp::Add, results[0], results[1]), Elem::Real);
        out
    }
}

/// Where `h` is in `list`, appending it if absent.
fn position(list: &mut Vec<Handle<Expr>>, h: Handle<Expr>) -> usize {
    list.iter().position(|&x| x == h).unwrap_or_else(|| {
        list.push(h);
        list.len() - 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x = y = %0`, one row vector `%1`, one scalar `%2`, and the given kernel.
    fn operands(nodes: Vec<KernelNode>, y: usize) -> PairwiseOperands {
        let result = nodes.len() - 1;
        let ops = nodes
            .into_iter()
            .map(|n| {
                let elem = if matches!(n, KernelNode::Index(_)) { Elem::Int } else { Elem::Real };
                (n, elem)
            })
            .collect();
        PairwiseOperands {
            x: Handle::new(0),
            y: Handle::new(y),
            rows: vec![Handle::new(1)],
            cols: vec![],
            scalars: vec![Handle::new(2)],
            kernel: PairwiseKernel { ops, result },
        }
    }

    #[test]
    fn symmetry_is_judged_on_structure() {
        use crate::ir::ScalarOp::*;
        let (row, i, j) = (Load(PairwiseLoad::Row(0)), Index(Axis::Row), Index(Axis::Col));
        let scalar0 = Load(PairwiseLoad::Scalar(0));
        // dot / scalar, masked on the diagonal: symmetric.
        let masked = vec![
            i.clone(),
            j.clone(),
            Binary(BinaryOp::Eq, 0, 1),
            Literal(super::Literal::Real(0.0)),
            Dot,
            scalar0,
            Binary(BinaryOp::Div, 4, 5),
            Select(2, 3, 6),
        ];
        assert!(operands(masked.clone(), 0).is_symmetric());
        // Over two matrices the dot product itself is not.
        assert!(!operands(masked, 3).is_symmetric());
        // A row vector times the dot product depends on i alone: not symmetric...
        let weighted = vec![row, Dot, Binary(BinaryOp::Mul, 0, 1)];
        assert!(!operands(weighted.clone(), 0).is_symmetric());
        // ...nor is i - j.
        assert!(!operands(vec![i, j, Binary(BinaryOp::Sub, 0, 1)], 0).is_symmetric());
        // ...until symmetrized, which reads the vector at j too, and shares the dot product.
        let sym = operands(weighted, 0).symmetrized();
        assert!(sym.is_symmetric());
        assert_eq!(sym.cols, vec![Handle::new(1)]);
        assert_eq!(sym.kernel.ops.iter().filter(|(n, _)| matches!(n, Dot)).count(), 1);
        assert!(matches!(sym.kernel.ops[sym.kernel.result].0, Binary(BinaryOp::Add, _, _)));
    }
}
