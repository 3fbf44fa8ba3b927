//! Constant folding and algebraic simplification: scalar operations on literals are computed
//! now with the op table's semantics, small integer powers become products, and identities that autodiff and lowering leave behind (`transpose(transpose(x))`,
//! `squeeze(expand_dims(x))`, broadcasts of broadcasts, `x * 1`, `x + 0`, `--x`, casts to the
//! same type) disappear, so later passes see the simplest form. Passes run on gradient
//! programs, where `stopgrad` has done its work, so it is dropped too.

use super::{Action, Rebuilder};
use crate::ir::{BinaryOp, Expr, Handle, Literal, Module, Program, UnaryOp};
use crate::ops::Scalar;

pub(super) fn run(module: &Module, program: &Program) -> Program {
    Rebuilder::new(module, program).run(&mut |rb, old, expr| match simplify(rb, &expr, rb.old.span(old)) {
        Some(h) => Action::Replace(h),
        None => Action::Keep,
    })
}

/// A literal scalar, or the literal a broadcast spreads.
fn literal(rb: &Rebuilder, h: Handle<Expr>) -> Option<Literal> {
    match rb.new_expr(h) {
        Expr::Literal(l) => Some(*l),
        Expr::Broadcast { arg, .. } => literal(rb, *arg),
        _ => None,
    }
}

/// A folded value as a node of `shape`: the literal, broadcast when `shape` is not a scalar.
fn spread(rb: &mut Rebuilder, v: Scalar<f64>, shape: crate::ir::Shape, span: crate::span::Span) -> Handle<Expr> {
    let h = rb.push(Expr::Literal(v.into()), span);
    if shape.is_empty() {
        h
    } else {
        rb.push(Expr::Broadcast { arg: h, shape }, span)
    }
}

fn real(rb: &Rebuilder, h: Handle<Expr>) -> Option<f64> {
    match literal(rb, h)? {
        Literal::Real(v) => Some(v),
        _ => None,
    }
}

fn simplify(rb: &mut Rebuilder, expr: &Expr, span: crate::span::Span) -> Option<Handle<Expr>> {
    match *expr {
        Expr::Transpose { arg } => match rb.new_expr(arg) {
            Expr::Transpose { arg: inner } => Some(*inner),
            _ => None,
        },
        Expr::Squeeze { arg, axis } => match rb.new_expr(arg) {
            Expr::ExpandDims { arg: inner, axis: a } if *a == axis => Some(*inner),
            _ => None,
        },
        Expr::Broadcast { arg, ref shape } => {
            if rb.new_ty(arg).shape == *shape {
                return Some(arg);
            }
            match rb.new_expr(arg) {
                Expr::Broadcast { arg: inner, .. } => {
                    let inner = *inner;
                    Some(rb.push(Expr::Broadcast { arg: inner, shape: shape.clone() }, span))
                }
                _ => None,
            }
        }
        Expr::Cast { arg, to } if rb.new_ty(arg).elem == to => Some(arg),
        Expr::StopGrad { arg } => Some(arg),
        Expr::Unary { op: UnaryOp::Neg, arg } if matches!(rb.new_expr(arg), Expr::Unary { op: UnaryOp::Neg, .. }) => {
            match rb.new_expr(arg) {
                Expr::Unary { arg: inner, .. } => Some(*inner),
                _ => None,
            }
        }
        Expr::Cast { arg, to } => {
            let v = literal(rb, arg)?;
            let shape = rb.new_ty(arg).shape.clone();
            Some(spread(rb, Scalar::from(v).cast(to), shape, span))
        }
        Expr::Unary { op, arg } => {
            let v = literal(rb, arg)?;
            let shape = rb.new_ty(arg).shape.clone();
            Some(spread(rb, op.eval(Scalar::from(v)), shape, span))
        }
        Expr::Binary { op, lhs, rhs } => {
            if let (Some(a), Some(b)) = (literal(rb, lhs), literal(rb, rhs)) {
                let shape = rb.new_ty(lhs).shape.clone();
                return Some(spread(rb, op.eval(Scalar::from(a), Scalar::from(b)), shape, span));
            }
            let (l, r) = (real(rb, lhs), real(rb, rhs));
            let square = |rb: &mut Rebuilder, arg| rb.push(Expr::Unary { op: UnaryOp::Square, arg }, span);
            match (op, l, r) {
                (BinaryOp::Mul, _, Some(1.0))
                | (BinaryOp::Div, _, Some(1.0))
                | (BinaryOp::Add, _, Some(0.0))
                | (BinaryOp::Sub, _, Some(0.0))
                | (BinaryOp::Pow, _, Some(1.0)) => Some(lhs),
                (BinaryOp::Mul, Some(1.0), _) | (BinaryOp::Add, Some(0.0), _) => Some(rhs),
                // Small integer powers become products: exact, several times faster than
                // `exp(y log x)`, and `**`'s rules for signs and zeros agree with them.
                (BinaryOp::Pow, _, Some(2.0)) => Some(square(rb, lhs)),
                (BinaryOp::Pow, _, Some(3.0)) => {
                    let sq = square(rb, lhs);
                    Some(rb.push(Expr::Binary { op: BinaryOp::Mul, lhs: sq, rhs: lhs }, span))
                }
                (BinaryOp::Pow, _, Some(4.0)) => {
                    let sq = square(rb, lhs);
                    Some(square(rb, sq))
                }
                _ => None,
            }
        }
        _ => None,
    }
}
