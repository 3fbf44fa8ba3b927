//! Pairwise kernels under the exchange of `i` and `j`. When `x` and `y` are one matrix `Z`,
//! the dot product is symmetric (`s_ij = s_ji`), so `w(j, i)` is computable from the same
//! tile as `w(i, j)`: the optimiser merges `W V + Wᵀ V` into one product with the kernel
//! `w(i, j) + w(j, i)`, and back ends that know a kernel is symmetric compute half the tiles.

use super::{BinaryOp, Elem, Expr, Handle, KernelNode, Literal, PairwiseKernel, PairwiseOperands, UnaryOp};
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
        let mut ids: Vec<usize> = Vec::with_capacity(pw.kernel.nodes.len());
        for node in &pw.kernel.nodes {
            let term = match *node {
                KernelNode::Dot => Term::Dot,
                KernelNode::Row(k) => Term::Vector(pw.rows[k], !swapped),
                KernelNode::Col(k) => Term::Vector(pw.cols[k], swapped),
                KernelNode::Scalar(k) => Term::Scalar(pw.scalars[k]),
                KernelNode::RowIndex => Term::Index(!swapped),
                KernelNode::ColIndex => Term::Index(swapped),
                KernelNode::Literal(Literal::Real(v)) => Term::Real(v.to_bits()),
                KernelNode::Literal(Literal::Int(v)) => Term::Int(v),
                KernelNode::Literal(Literal::Bool(v)) => Term::Bool(v),
                KernelNode::Unary(op, a) => Term::Unary(op, ids[a]),
                KernelNode::Binary(op, a, b) if commutes(op) => {
                    Term::Binary(op, ids[a].min(ids[b]), ids[a].max(ids[b]))
                }
                KernelNode::Binary(op, a, b) => Term::Binary(op, ids[a], ids[b]),
                KernelNode::Select(c, a, b) => Term::Select(ids[c], ids[a], ids[b]),
                KernelNode::Cast(a, to) => Term::Cast(ids[a], to),
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
        let mut out = PairwiseOperands {
            kernel: PairwiseKernel { nodes: Vec::new(), elems: Vec::new(), result: 0 },
            ..self.clone()
        };
        // Canonical id to node of the new kernel: nodes both copies compute (scalars,
        // literals, the dot product, ...) are emitted once.
        let mut interned: HashMap<usize, usize> = HashMap::new();
        let mut terms = Terms::default();
        let mut results = [0; 2];
        for (copy, swapped) in [false, true].into_iter().enumerate() {
            let ids = terms.of(self, swapped);
            let mut at: Vec<usize> = Vec::with_capacity(self.kernel.nodes.len());
            for (k, node) in self.kernel.nodes.iter().enumerate() {
                let node = match (node.clone(), swapped) {
                    (KernelNode::Row(r), true) => KernelNode::Col(position(&mut out.cols, self.rows[r])),
                    (KernelNode::Col(c), true) => KernelNode::Row(position(&mut out.rows, self.cols[c])),
                    (KernelNode::RowIndex, true) => KernelNode::ColIndex,
                    (KernelNode::ColIndex, true) => KernelNode::RowIndex,
                    (KernelNode::Unary(op, a), _) => KernelNode::Unary(op, at[a]),
                    (KernelNode::Binary(op, a, b), _) => KernelNode::Binary(op, at[a], at[b]),
                    (KernelNode::Select(c, a, b), _) => KernelNode::Select(at[c], at[a], at[b]),
                    (KernelNode::Cast(a, to), _) => KernelNode::Cast(at[a], to),
                    (leaf, _) => leaf,
                };
                let index = *interned.entry(ids[k]).or_insert_with(|| {
                    out.kernel.nodes.push(node);
                    out.kernel.elems.push(self.kernel.elems[k]);
                    out.kernel.nodes.len() - 1
                });
                at.push(index);
            }
            results[copy] = at[self.kernel.result];
        }
        out.kernel.nodes.push(KernelNode::Binary(BinaryOp::Add, results[0], results[1]));
        out.kernel.elems.push(Elem::Real);
        out.kernel.result = out.kernel.nodes.len() - 1;
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
        let elems = nodes
            .iter()
            .map(|n| if matches!(n, KernelNode::RowIndex | KernelNode::ColIndex) { Elem::Int } else { Elem::Real })
            .collect();
        let result = nodes.len() - 1;
        PairwiseOperands {
            x: Handle::new(0),
            y: Handle::new(y),
            rows: vec![Handle::new(1)],
            cols: vec![],
            scalars: vec![Handle::new(2)],
            kernel: PairwiseKernel { nodes, elems, result },
        }
    }

    #[test]
    fn symmetry_is_judged_on_structure() {
        use KernelNode::*;
        // dot / scalar, masked on the diagonal: symmetric.
        let masked = vec![
            RowIndex,
            ColIndex,
            Binary(BinaryOp::Eq, 0, 1),
            Literal(super::Literal::Real(0.0)),
            Dot,
            Scalar(0),
            Binary(BinaryOp::Div, 4, 5),
            Select(2, 3, 6),
        ];
        assert!(operands(masked.clone(), 0).is_symmetric());
        // Over two matrices the dot product itself is not.
        assert!(!operands(masked, 3).is_symmetric());
        // A row vector times the dot product depends on i alone: not symmetric...
        let weighted = vec![Row(0), Dot, Binary(BinaryOp::Mul, 0, 1)];
        assert!(!operands(weighted.clone(), 0).is_symmetric());
        // ...nor is i - j.
        assert!(!operands(vec![RowIndex, ColIndex, Binary(BinaryOp::Sub, 0, 1)], 0).is_symmetric());
        // ...until symmetrized, which reads the vector at j too, and shares the dot product.
        let sym = operands(weighted, 0).symmetrized();
        assert!(sym.is_symmetric());
        assert_eq!(sym.cols, vec![Handle::new(1)]);
        assert_eq!(sym.kernel.nodes.iter().filter(|n| matches!(n, Dot)).count(), 1);
        assert!(matches!(sym.kernel.nodes[sym.kernel.result], Binary(BinaryOp::Add, _, _)));
    }
}
