//! One vector-Jacobian rule per IR operation: given a node and the adjoint `g` of its value,
//! the contribution to the adjoint of each active operand. Every rule builds ordinary IR.

use super::Grad;
use crate::diag::Diagnostic;
use crate::ir::{BinaryOp, Dim, Elem, Expr, Handle, ReduceOp, UnaryOp};

use super::Contributions;

pub(super) fn vjp(b: &mut Grad, h: Handle<Expr>, g: Handle<Expr>) -> Contributions {
    let expr = b.expr(h).clone();
    let s = b.span(h);
    let mut out = Vec::new();
    let mut give = |b: &Grad, operand: Handle<Expr>, contribution: Handle<Expr>| {
        if b.is_active(operand) {
            out.push((operand, contribution));
        }
    };
    use BinaryOp::*;
    match expr {
        Expr::Unary { op, arg } => {
            let d = match op {
                UnaryOp::Neg => b.push(Expr::Unary { op: UnaryOp::Neg, arg: g }, s)?,
                // d exp(x) = exp(x) dx: reuse the forward value.
                UnaryOp::Exp => b.binary(Mul, g, h, s)?,
                UnaryOp::Log => b.binary(Div, g, arg, s)?,
                // d sqrt(x) = dx / (2 sqrt(x)); where no gradient arrives (g = 0) none leaves,
                // even at x = 0 — as for a zero row under `normalize`, whose `max(norm, eps)`
                // sends the gradient to `eps`.
                UnaryOp::Sqrt => {
                    let two = b.constant_like(2.0, h, s)?;
                    let denom = b.binary(Mul, two, h, s)?;
                    let d = b.binary(Div, g, denom, s)?;
                    let zero = b.constant_like(0.0, g, s)?;
                    let silent = b.binary(Eq, g, zero, s)?;
                    b.push(Expr::Select { cond: silent, on_true: zero, on_false: d }, s)?
                }
                UnaryOp::Abs => {
                    let sign = sign(b, arg, s)?;
                    b.binary(Mul, g, sign, s)?
                }
                // d cos(x) = -sin(x) dx, and sin(x) = cos(x - pi/2).
                UnaryOp::Cos => {
                    let quarter = b.constant_like(std::f64::consts::FRAC_PI_2, arg, s)?;
                    let shifted = b.binary(Sub, arg, quarter, s)?;
                    let sin = b.push(Expr::Unary { op: UnaryOp::Cos, arg: shifted }, s)?;
                    let prod = b.binary(Mul, g, sin, s)?;
                    b.push(Expr::Unary { op: UnaryOp::Neg, arg: prod }, s)?
                }
                UnaryOp::Not => return Ok(Vec::new()),
                // d log1p(x) = dx / (1 + x)
                UnaryOp::Log1p => {
                    let one = b.constant_like(1.0, arg, s)?;
                    let denom = b.binary(Add, one, arg, s)?;
                    b.binary(Div, g, denom, s)?
                }
                // d expm1(x) = exp(x) dx; not y + 1, which rounds to 0 where exp(x) is tiny.
                UnaryOp::Expm1 => {
                    let e = b.push(Expr::Unary { op: UnaryOp::Exp, arg }, s)?;
                    b.binary(Mul, g, e, s)?
                }
                // d softplus(x) = sigmoid(x) dx, and sigmoid(x) = 1 - exp(-y) = -expm1(-y):
                // from the forward value, accurate where sigmoid is near 0 or 1.
                UnaryOp::Softplus => {
                    let neg = b.push(Expr::Unary { op: UnaryOp::Neg, arg: h }, s)?;
                    let em1 = b.push(Expr::Unary { op: UnaryOp::Expm1, arg: neg }, s)?;
                    let sigmoid = b.push(Expr::Unary { op: UnaryOp::Neg, arg: em1 }, s)?;
                    b.binary(Mul, g, sigmoid, s)?
                }
                // d x² = 2 x dx
                UnaryOp::Square => {
                    let two = b.constant_like(2.0, arg, s)?;
                    let twice = b.binary(Mul, two, arg, s)?;
                    b.binary(Mul, g, twice, s)?
                }
            };
            give(b, arg, d);
        }
        Expr::Binary { op, lhs, rhs } => match op {
            Add => {
                give(b, lhs, g);
                give(b, rhs, g);
            }
            Sub => {
                give(b, lhs, g);
                if b.is_active(rhs) {
                    let n = b.push(Expr::Unary { op: UnaryOp::Neg, arg: g }, s)?;
                    give(b, rhs, n);
                }
            }
            Mul => {
                if b.is_active(lhs) {
                    let d = b.binary(Mul, g, rhs, s)?;
                    give(b, lhs, d);
                }
                if b.is_active(rhs) {
                    let d = b.binary(Mul, g, lhs, s)?;
                    give(b, rhs, d);
                }
            }
            // y = l / r: dl = g / r, dr = -g y / r
            Div => {
                if b.is_active(lhs) {
                    let d = b.binary(Div, g, rhs, s)?;
                    give(b, lhs, d);
                }
                if b.is_active(rhs) {
                    let gy = b.binary(Mul, g, h, s)?;
                    let q = b.binary(Div, gy, rhs, s)?;
                    let d = b.push(Expr::Unary { op: UnaryOp::Neg, arg: q }, s)?;
                    give(b, rhs, d);
                }
            }
            // y = l ** r: dl = g r l ** (r - 1), dr = g y log(l)
            Pow => {
                if b.is_active(lhs) {
                    let one = b.constant_like(1.0, rhs, s)?;
                    let rm1 = b.binary(Sub, rhs, one, s)?;
                    let p = b.binary(Pow, lhs, rm1, s)?;
                    let rp = b.binary(Mul, rhs, p, s)?;
                    let d = b.binary(Mul, g, rp, s)?;
                    give(b, lhs, d);
                }
                if b.is_active(rhs) {
                    let log = b.push(Expr::Unary { op: UnaryOp::Log, arg: lhs }, s)?;
                    let yl = b.binary(Mul, h, log, s)?;
                    let d = b.binary(Mul, g, yl, s)?;
                    give(b, rhs, d);
                }
            }
            // l - r floor(l / r): the remainder moves with l.
            Rem => {
                give(b, lhs, g);
                if b.is_active(rhs) {
                    return Err(Diagnostic::new("`%` is not differentiable with respect to its divisor")
                        .at(s, "the divisor depends on an input")
                        .hint("wrap the divisor in `stopgrad(...)`"));
                }
            }
            // The larger operand takes the gradient (the left one on ties).
            Max | Min => {
                let cmp = if op == Max { Ge } else { Le };
                let pick = b.binary(cmp, lhs, rhs, s)?;
                let zero = b.constant_like(0.0, g, s)?;
                if b.is_active(lhs) {
                    let d = b.push(Expr::Select { cond: pick, on_true: g, on_false: zero }, s)?;
                    give(b, lhs, d);
                }
                if b.is_active(rhs) {
                    let d = b.push(Expr::Select { cond: pick, on_true: zero, on_false: g }, s)?;
                    give(b, rhs, d);
                }
            }
            Lt | Le | Gt | Ge | Eq | Ne | And | Or => {}
        },
        Expr::Select { cond, on_true, on_false } => {
            let zero = b.constant_like(0.0, g, s)?;
            if b.is_active(on_true) {
                let d = b.push(Expr::Select { cond, on_true: g, on_false: zero }, s)?;
                give(b, on_true, d);
            }
            if b.is_active(on_false) {
                let d = b.push(Expr::Select { cond, on_true: zero, on_false: g }, s)?;
                give(b, on_false, d);
            }
        }
        Expr::Broadcast { arg, .. } => {
            let d = unbroadcast(b, g, arg, s)?;
            give(b, arg, d);
        }
        Expr::ExpandDims { arg, axis } => {
            let d = b.push(Expr::Squeeze { arg: g, axis }, s)?;
            give(b, arg, d);
        }
        Expr::Squeeze { arg, axis } => {
            let d = b.push(Expr::ExpandDims { arg: g, axis }, s)?;
            give(b, arg, d);
        }
        Expr::Transpose { arg } => {
            let d = b.push(Expr::Transpose { arg: g }, s)?;
            give(b, arg, d);
        }
        // y = A B: dA = g Bᵀ, dB = Aᵀ g
        Expr::MatMul { lhs, rhs } => {
            if b.is_active(lhs) {
                let bt = b.push(Expr::Transpose { arg: rhs }, s)?;
                let d = b.push(Expr::MatMul { lhs: g, rhs: bt }, s)?;
                give(b, lhs, d);
            }
            if b.is_active(rhs) {
                let at = b.push(Expr::Transpose { arg: lhs }, s)?;
                let d = b.push(Expr::MatMul { lhs: at, rhs: g }, s)?;
                give(b, rhs, d);
            }
        }
        Expr::Reduce { op, arg, axis } => {
            let shape = b.ty(arg).shape.clone();
            let spread = |b: &mut Grad, v: Handle<Expr>| -> Result<Handle<Expr>, Diagnostic> {
                let e = b.push(Expr::ExpandDims { arg: v, axis }, s)?;
                b.push(Expr::Broadcast { arg: e, shape: shape.clone() }, s)
            };
            let d = match op {
                ReduceOp::Sum => spread(b, g)?,
                // d lse = softmax(x) g
                ReduceOp::LogSumExp => {
                    let lse = spread(b, h)?;
                    let centred = b.binary(Sub, arg, lse, s)?;
                    let p = b.push(Expr::Unary { op: UnaryOp::Exp, arg: centred }, s)?;
                    let gs = spread(b, g)?;
                    b.binary(Mul, gs, p, s)?
                }
                // The gradient is shared evenly by the entries that attain the extreme, as
                // PyTorch's amax/amin do.
                ReduceOp::Max | ReduceOp::Min => {
                    let y = spread(b, h)?;
                    let hit = b.binary(Eq, arg, y, s)?;
                    let mask = b.push(Expr::Cast { arg: hit, to: Elem::Real }, s)?;
                    let count = b.push(Expr::Reduce { op: ReduceOp::Sum, arg: mask, axis }, s)?;
                    let share = b.binary(Div, g, count, s)?;
                    let share = spread(b, share)?;
                    b.binary(Mul, share, mask, s)?
                }
                ReduceOp::ArgMax => return Ok(Vec::new()),
            };
            give(b, arg, d);
        }
        Expr::Concat { parts, axis } => {
            let mut start = Dim::constant(0);
            for p in parts {
                let len = b.ty(p).shape[axis].clone();
                if b.is_active(p) {
                    let d = b.push(Expr::Slice { arg: g, axis, start: start.clone(), len: len.clone() }, s)?;
                    give(b, p, d);
                }
                start = start.add(&len);
            }
        }
        // The slice's adjoint, padded with zeros back to the argument's shape.
        Expr::Slice { arg, axis, start, len } => {
            let full = b.ty(arg).shape.clone();
            let after = full[axis].sub(&start).sub(&len);
            let mut pieces = Vec::new();
            for (size, is_g) in [(start.clone(), false), (len, true), (after, false)] {
                if is_g {
                    pieces.push(g);
                } else if size.as_constant() != Some(0) {
                    let mut shape = full.clone();
                    shape[axis] = size;
                    let zero = b.push(Expr::Literal(crate::ir::Literal::Real(0.0)), s)?;
                    pieces.push(b.push(Expr::Broadcast { arg: zero, shape }, s)?);
                }
            }
            let d = if pieces.len() == 1 { g } else { b.push(Expr::Concat { parts: pieces, axis }, s)? };
            give(b, arg, d);
        }
        // Each picked row's adjoint goes back to the row it came from, summed where a row is
        // picked several times.
        Expr::Gather { table, indices } => {
            let rows = b.ty(table).shape[0].clone();
            let d = b.push(Expr::ScatterAdd { values: g, indices, rows }, s)?;
            give(b, table, d);
        }
        Expr::ScatterAdd { values, indices, .. } => {
            let d = b.push(Expr::Gather { table: g, indices }, s)?;
            give(b, values, d);
        }
        // Leaves, masks, casts and stopped values pass no gradient on.
        _ => {}
    }
    Ok(out)
}

/// sign(x) as a real tensor: 1, -1 or 0.
fn sign(b: &mut Grad, x: Handle<Expr>, s: crate::span::Span) -> Result<Handle<Expr>, Diagnostic> {
    let zero = b.constant_like(0.0, x, s)?;
    let one = b.constant_like(1.0, x, s)?;
    let minus = b.constant_like(-1.0, x, s)?;
    let pos = b.binary(BinaryOp::Gt, x, zero, s)?;
    let neg = b.binary(BinaryOp::Lt, x, zero, s)?;
    let inner = b.push(Expr::Select { cond: neg, on_true: minus, on_false: zero }, s)?;
    b.push(Expr::Select { cond: pos, on_true: one, on_false: inner }, s)
}

/// Sums `g` (shaped like a broadcast result) back to the shape of `arg`: over the leading axes
/// broadcasting added, and over the axes where `arg` had size 1.
fn unbroadcast(
    b: &mut Grad,
    g: Handle<Expr>,
    arg: Handle<Expr>,
    s: crate::span::Span,
) -> Result<Handle<Expr>, Diagnostic> {
    let target = b.ty(arg).shape.clone();
    let mut d = g;
    while b.ty(d).rank() > target.len() {
        d = b.push(Expr::Reduce { op: ReduceOp::Sum, arg: d, axis: 0 }, s)?;
    }
    for (axis, want) in target.iter().enumerate() {
        if want.is_one() && !b.ty(d).shape[axis].is_one() {
            let r = b.push(Expr::Reduce { op: ReduceOp::Sum, arg: d, axis }, s)?;
            d = b.push(Expr::ExpandDims { arg: r, axis }, s)?;
        }
    }
    Ok(d)
}
