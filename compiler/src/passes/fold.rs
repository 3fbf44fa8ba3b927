//! Constant folding and algebraic simplification: scalar operations on literals are computed
//! now, and identities that autodiff and lowering leave behind (`transpose(transpose(x))`,
//! `squeeze(expand_dims(x))`, broadcasts of broadcasts, `x * 1`, `x + 0`, `--x`, casts to the
//! same type) disappear, so later passes see the simplest form. Passes run on gradient
//! programs, where `stopgrad` has done its work, so it is dropped too.

use super::{Action, Rebuilder};
use crate::ir::{BinaryOp, Elem, Expr, Handle, Literal, Module, Program, UnaryOp};

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
        Expr::Unary { op: UnaryOp::Neg, arg } => match rb.new_expr(arg) {
            Expr::Unary { op: UnaryOp::Neg, arg: inner } => Some(*inner),
            Expr::Literal(Literal::Real(v)) => {
                let v = -*v;
                Some(rb.push(Expr::Literal(Literal::Real(v)), span))
            }
            _ => None,
        },
        Expr::Cast { arg, to: Elem::Real } => match rb.new_expr(arg) {
            Expr::Literal(Literal::Int(v)) => {
                let v = *v as f64;
                Some(rb.push(Expr::Literal(Literal::Real(v)), span))
            }
            _ => None,
        },
        Expr::Binary { op, lhs, rhs } => {
            let (l, r) = (real(rb, lhs), real(rb, rhs));
            let scalar = rb.new_ty(lhs).rank() == 0;
            if let (Some(a), Some(b), true) = (l, r, scalar) {
                let v = match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Max => a.max(b),
                    BinaryOp::Min => a.min(b),
                    _ => return None,
                };
                return Some(rb.push(Expr::Literal(Literal::Real(v)), span));
            }
            match (op, l, r) {
                (BinaryOp::Mul, _, Some(1.0))
                | (BinaryOp::Div, _, Some(1.0))
                | (BinaryOp::Add, _, Some(0.0))
                | (BinaryOp::Sub, _, Some(0.0)) => Some(lhs),
                (BinaryOp::Mul, Some(1.0), _) | (BinaryOp::Add, Some(0.0), _) => Some(rhs),
                _ => None,
            }
        }
        _ => None,
    }
}
