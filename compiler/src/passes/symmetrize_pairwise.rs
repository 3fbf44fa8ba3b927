//! `W V + Wᵀ V` as one product. The gradient of a similarity matrix `Z Zᵀ` reaches `Z` twice,
//! through its rows and through its columns; pairwise fusion turns them into two products
//! with the same kernel. Over one matrix, they are one product whose kernel
//! `w(i, j) + w(j, i)` is symmetric, which back ends compute from half the tiles.

use super::{Action, Rebuilder};
use crate::ir::{BinaryOp, Expr, Handle, Module, Program};

pub(super) fn run(module: &Module, program: &Program) -> Program {
    Rebuilder::new(module, program).run(&mut |rb, old, expr| {
        let Expr::Binary { op: BinaryOp::Add, lhs, rhs } = expr else { return Action::Keep };
        match merged(rb, lhs, rhs).or_else(|| merged(rb, rhs, lhs)) {
            Some(e) => Action::Replace(rb.push(e, rb.old.span(old))),
            None => Action::Keep,
        }
    })
}

/// The single product standing for `by_rows + by_cols` (`W V` and `Wᵀ V` over one matrix), if
/// that is what they are.
fn merged(rb: &Rebuilder, by_rows: Handle<Expr>, by_cols: Handle<Expr>) -> Option<Expr> {
    let (Expr::PairwiseMatMul { pairwise: a, v: va, axis: 1 }, Expr::PairwiseMatMul { pairwise: b, v: vb, axis: 0 }) =
        (rb.new_expr(by_rows), rb.new_expr(by_cols))
    else {
        return None;
    };
    (a == b && va == vb && a.x == a.y).then(|| Expr::PairwiseMatMul {
        pairwise: Box::new(a.symmetrized()),
        v: *va,
        axis: 1,
    })
}
