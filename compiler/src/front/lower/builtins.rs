//! Built-in functions and names. Every built-in lowers to the IR's few primitives (element-wise
//! ops, reductions, matmul, broadcasting, ...), so autodiff, fusion and the back ends never see
//! `softmax` or `normalize` — only what they are made of.
//!
//! A new function is one name in [`FUNCTIONS`] and one arm in `Lower::builtin`'s match. This is
//! a child of the lowerer: it imports only the shared types of its parent, whose sections call
//! it, so the imports go one way.

use super::{Lower, Reported, Value, R};
use crate::diag::Diagnostic;
use crate::front::ast::Ident;
use crate::ir::{BinaryOp, BuiltinValue, Dim, Elem, Expr, Handle, Literal, ReduceOp, UnaryOp};
use crate::span::Span;

/// Names that are values rather than functions.
#[derive(Clone, Copy, Debug)]
pub(super) enum BuiltinName {
    Value(BuiltinValue),
    Infinity,
    Samples,
}

/// The names of [`BuiltinName`]s.
const VALUES: &[(&str, BuiltinName)] = &[
    ("epoch", BuiltinName::Value(BuiltinValue::Epoch)),
    ("epochs", BuiltinName::Value(BuiltinValue::Epochs)),
    ("iteration", BuiltinName::Value(BuiltinValue::Iteration)),
    ("iterations", BuiltinName::Value(BuiltinValue::Iterations)),
    ("base_lr", BuiltinName::Value(BuiltinValue::BaseLr)),
    ("index", BuiltinName::Value(BuiltinValue::SampleIndex)),
    ("inf", BuiltinName::Infinity),
    ("samples", BuiltinName::Samples),
];

pub(super) fn builtin_value(name: &str) -> Option<BuiltinName> {
    VALUES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Functions usable in expressions, besides the element-wise primitives the op table marks as
/// built-ins (`exp`, `log1p`, ...: [`UnaryOp::builtin`]).
const FUNCTIONS: &[&str] = &[
    "sigmoid",
    "relu",
    "maximum",
    "minimum",
    "pow",
    "clamp",
    "where",
    "sum",
    "mean",
    "max",
    "min",
    "logsumexp",
    "argmax",
    "std",
    "variance",
    "diag",
    "arange",
    "sqdist",
    "softmax",
    "log_softmax",
    "normalize",
    "concat",
    "eye",
    "full",
    "zeros",
    "ones",
    "stopgrad",
    "one_hot",
    "histogram",
    "rows",
    "float",
    "int",
];

/// Functions that only make sense in one declaration.
const DECLARATION_ONLY: &[(&str, &str)] = &[
    ("etf", "`const M: [K, D] = etf(K, D)`"),
    ("randn", "`const W: [K, D] = randn(0)`"),
    ("encoder", "`input z1: [N, D] = encoder(x1)`"),
    ("simclr_augment", "`views x1, x2 = simclr_augment(x)`"),
    ("randaugment", "`views x1, x2 = simclr_augment(x) + randaugment(p=..., strength=...)`"),
];

/// Every built-in name usable in an expression, for "did you mean" hints: the op table's
/// element-wise built-ins and these.
pub(super) fn builtin_names() -> impl Iterator<Item = &'static str> {
    UnaryOp::builtin_names().chain(FUNCTIONS.iter().copied()).chain(VALUES.iter().map(|(n, _)| *n))
}

fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name) || UnaryOp::builtin(name).is_some()
}

pub(super) fn is_builtin(name: &str) -> bool {
    is_function(name) || DECLARATION_ONLY.iter().any(|(n, _)| *n == name)
}

/// An augmentation the runtime implements.
pub(super) struct AugmentationSpec {
    pub name: &'static str,
    /// Base pipelines take the image `x`; extras take per-sample arguments.
    pub base: bool,
    pub args: &'static [&'static str],
}

pub(super) const AUGMENTATIONS: &[AugmentationSpec] = &[
    AugmentationSpec { name: "simclr_augment", base: true, args: &[] },
    AugmentationSpec { name: "randaugment", base: false, args: &["p", "strength"] },
];

pub(super) fn augmentation(name: &str) -> Option<&'static AugmentationSpec> {
    AUGMENTATIONS.iter().find(|a| a.name == name)
}

pub(super) struct CallArg {
    pub name: Option<Ident>,
    pub value: Value,
    pub span: Span,
}

type Slot = Option<(Value, Span)>;

impl Lower<'_> {
    /// Lowers a call to a built-in; `None` when `name` is not one.
    pub(super) fn builtin_call(
        &mut self,
        name: &str,
        args: Vec<CallArg>,
        span: Span,
        name_span: Span,
    ) -> Option<R<Value>> {
        if let Some((_, usage)) = DECLARATION_ONLY.iter().find(|(n, _)| *n == name) {
            return Some(Err(self.error(
                Diagnostic::new(format!("`{name}` is only allowed in its declaration"))
                    .at(name_span, "not an expression")
                    .hint(format!("use it as {usage}")),
            )));
        }
        if !is_function(name) {
            return None;
        }
        Some(self.builtin(name, args, span))
    }

    fn builtin(&mut self, name: &str, args: Vec<CallArg>, span: Span) -> R<Value> {
        let node = |v: R<Handle<Expr>>| v.map(Value::Node);
        if let Some(op) = UnaryOp::builtin(name) {
            let [x] = self.args(name, args, &["x"], 1, span)?;
            let x = self.real(x)?;
            return node(self.push(Expr::Unary { op, arg: x }, span));
        }
        match name {
            "sigmoid" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let x = self.real(x)?;
                let neg = self.push(Expr::Unary { op: UnaryOp::Neg, arg: x }, span)?;
                let e = self.push(Expr::Unary { op: UnaryOp::Exp, arg: neg }, span)?;
                let one = self.literal(1.0, span)?;
                let denom = self.elementwise(BinaryOp::Add, Value::Node(one), span, Value::Node(e), span, "+", span)?;
                node(self.elementwise(BinaryOp::Div, Value::Node(one), span, Value::Node(denom), span, "/", span))
            }
            "relu" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let (xv, xs) = x.expect("required");
                let zero = self.literal(0.0, span)?;
                node(self.elementwise(BinaryOp::Max, xv, xs, Value::Node(zero), span, "relu", span))
            }
            "maximum" | "minimum" | "pow" => {
                let [a, b] = self.args(name, args, &["a", "b"], 2, span)?;
                let op = match name {
                    "maximum" => BinaryOp::Max,
                    "minimum" => BinaryOp::Min,
                    _ => BinaryOp::Pow,
                };
                let ((av, asp), (bv, bsp)) = (a.expect("required"), b.expect("required"));
                node(self.elementwise(op, av, asp, bv, bsp, name, span))
            }
            "clamp" => {
                let [x, lo, hi] = self.args(name, args, &["x", "lo", "hi"], 3, span)?;
                let ((xv, xs), (lv, ls), (hv, hs)) =
                    (x.expect("required"), lo.expect("required"), hi.expect("required"));
                let upper = self.elementwise(BinaryOp::Min, xv, xs, hv, hs, "clamp", span)?;
                node(self.elementwise(BinaryOp::Max, Value::Node(upper), span, lv, ls, "clamp", span))
            }
            "where" => {
                let [c, a, b] = self.args(name, args, &["cond", "a", "b"], 3, span)?;
                let ((cv, cs), (av, asp), (bv, bsp)) =
                    (c.expect("required"), a.expect("required"), b.expect("required"));
                let c = self.node_as(cv, cs, Elem::Bool)?;
                let (a, b) = self.unify(av, asp, bv, bsp, "where", span)?;
                let Some(shape) = crate::valid::broadcast_shapes(&self.ty(c).shape, &self.ty(a).shape) else {
                    let (ct, at) = (self.shape_text(&self.ty(c).clone()), self.shape_text(&self.ty(a).clone()));
                    return Err(self.error(
                        Diagnostic::new(format!("`where` mask {ct} does not broadcast with values {at}"))
                            .at(cs, format!("this is {ct}"))
                            .also(asp, format!("this is {at}"))
                            .hint("the mask and both values must broadcast to one shape"),
                    ));
                };
                let c = self.broadcast(c, &shape, cs)?;
                let a = self.broadcast(a, &shape, asp)?;
                let b = self.broadcast(b, &shape, bsp)?;
                node(self.push(Expr::Select { cond: c, on_true: a, on_false: b }, span))
            }
            "sum" | "mean" | "logsumexp" | "argmax" | "std" | "variance" => {
                let [x, axis, keepdim] = self.args(name, args, &["x", "axis", "keepdim"], 1, span)?;
                let keep = self.flag(keepdim)?;
                let (xv, xs) = x.expect("required");
                let x = if name == "argmax" { self.node(xv, xs)? } else { self.node_as(xv, xs, Elem::Real)? };
                let axis = self.axis(axis, self.ty(x).rank(), xs)?;
                if name == "argmax" && axis.is_none() && self.ty(x).rank() > 1 {
                    return Err(self.error(
                        Diagnostic::new("`argmax` of a matrix needs an axis")
                            .at(span, "which axis?")
                            .hint("write `argmax(x, axis=1)` for the index of each row's maximum"),
                    ));
                }
                let r = match name {
                    "sum" => self.reduce(ReduceOp::Sum, x, axis, span)?,
                    "logsumexp" => self.reduce(ReduceOp::LogSumExp, x, axis, span)?,
                    "argmax" => self.reduce(ReduceOp::ArgMax, x, axis, span)?,
                    "mean" => self.mean(x, axis, span)?,
                    "variance" => self.variance(x, axis, span)?,
                    _ => {
                        let v = self.variance(x, axis, span)?;
                        self.push(Expr::Unary { op: UnaryOp::Sqrt, arg: v }, span)?
                    }
                };
                node(self.keepdim(r, axis, keep, span))
            }
            "max" | "min" => {
                let op = if name == "max" { BinaryOp::Max } else { BinaryOp::Min };
                // Two tensors: element-wise, as Python's max(a, b); one: a reduction.
                let positional = args.iter().filter(|a| a.name.is_none()).count();
                if positional == 2 && args.len() == 2 {
                    let [a, b] = self.args(name, args, &["a", "b"], 2, span)?;
                    let ((av, asp), (bv, bsp)) = (a.expect("required"), b.expect("required"));
                    return node(self.elementwise(op, av, asp, bv, bsp, name, span));
                }
                let [x, axis, keepdim] = self.args(name, args, &["x", "axis", "keepdim"], 1, span)?;
                let keep = self.flag(keepdim)?;
                let (xv, xs) = x.expect("required");
                let x = self.node(xv, xs)?;
                let axis = self.axis(axis, self.ty(x).rank(), xs)?;
                let rop = if name == "max" { ReduceOp::Max } else { ReduceOp::Min };
                let r = self.reduce(rop, x, axis, span)?;
                node(self.keepdim(r, axis, keep, span))
            }
            "softmax" | "log_softmax" => {
                let [x, axis] = self.args(name, args, &["x", "axis"], 1, span)?;
                let x = self.real(x)?;
                let rank = self.ty(x).rank();
                let axis = self.axis(axis, rank, span)?.unwrap_or(rank.saturating_sub(1));
                let log_probs = self.log_softmax(x, axis, span)?;
                if name == "softmax" {
                    node(self.push(Expr::Unary { op: UnaryOp::Exp, arg: log_probs }, span))
                } else {
                    Ok(Value::Node(log_probs))
                }
            }
            "normalize" => {
                let [x, axis, eps] = self.args(name, args, &["x", "axis", "eps"], 1, span)?;
                let x = self.real(x)?;
                let rank = self.ty(x).rank();
                let axis = self.axis(axis, rank, span)?.unwrap_or(rank.saturating_sub(1));
                let eps = match eps {
                    Some(e) => self.real(Some(e))?,
                    None => self.literal(1e-12, span)?,
                };
                let sq = self.push(Expr::Binary { op: BinaryOp::Mul, lhs: x, rhs: x }, span)?;
                let ss = self.push(Expr::Reduce { op: ReduceOp::Sum, arg: sq, axis }, span)?;
                let norm = self.push(Expr::Unary { op: UnaryOp::Sqrt, arg: ss }, span)?;
                let denom = self.elementwise(
                    BinaryOp::Max,
                    Value::Node(norm),
                    span,
                    Value::Node(eps),
                    span,
                    "normalize",
                    span,
                )?;
                let denom = self.push(Expr::ExpandDims { arg: denom, axis }, span)?;
                let shape = self.ty(x).shape.clone();
                let denom = self.broadcast(denom, &shape, span)?;
                node(self.push(Expr::Binary { op: BinaryOp::Div, lhs: x, rhs: denom }, span))
            }
            "concat" => {
                let mut parts = Vec::new();
                let mut axis_arg = None;
                for a in args {
                    match &a.name {
                        Some(n) if n.name == "axis" => axis_arg = Some((a.value, a.span)),
                        Some(n) => return Err(self.unknown_arg(name, n, &["axis"])),
                        None => parts.push((a.value, a.span)),
                    }
                }
                if parts.is_empty() {
                    return Err(self.error(
                        Diagnostic::new("`concat` needs tensors to join")
                            .at(span, "nothing to join")
                            .hint("write `concat(a, b)`"),
                    ));
                }
                let mut nodes = Vec::new();
                for (v, s) in parts {
                    nodes.push(self.node(v, s)?);
                }
                let rank = self.ty(nodes[0]).rank();
                let axis = self.axis(axis_arg, rank, span)?.unwrap_or(0);
                // Parts of mixed int/f32 are joined as f32.
                if nodes.iter().any(|n| self.ty(*n).elem == Elem::Real) {
                    for n in nodes.iter_mut() {
                        *n = self.node_as(Value::Node(*n), span, Elem::Real)?;
                    }
                }
                node(self.push(Expr::Concat { parts: nodes, axis }, span))
            }
            "diag" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let (xv, xs) = x.expect("required");
                let x = self.node_as(xv, xs, Elem::Real)?;
                node(self.diag(x, xs, span))
            }
            "arange" => {
                let [n] = self.args(name, args, &["n"], 1, span)?;
                let (nv, ns) = n.expect("required");
                let n = self.dim(&nv, ns)?;
                node(self.push(Expr::Iota { shape: vec![n], axis: 0 }, span))
            }
            "sqdist" => {
                let [a, b] = self.args(name, args, &["a", "b"], 2, span)?;
                node(self.sqdist(a.expect("required"), b.expect("required"), span))
            }
            "eye" => {
                let [n] = self.args(name, args, &["n"], 1, span)?;
                let (nv, ns) = n.expect("required");
                let n = self.dim(&nv, ns)?;
                node(self.eye(n, span))
            }
            "full" | "zeros" | "ones" => {
                let (shape_slot, value) = if name == "full" {
                    let [s, v] = self.args(name, args, &["shape", "value"], 2, span)?;
                    (s, self.real(v)?)
                } else {
                    let [s] = self.args(name, args, &["shape"], 1, span)?;
                    (s, self.literal(if name == "ones" { 1.0 } else { 0.0 }, span)?)
                };
                let shape = self.shape(shape_slot.expect("required"))?;
                let value = self.scalar_of(Value::Node(value), span, Elem::Real, "the fill value")?;
                node(self.broadcast(value, &shape, span))
            }
            "stopgrad" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let (xv, xs) = x.expect("required");
                let x = self.node(xv, xs)?;
                node(self.push(Expr::StopGrad { arg: x }, span))
            }
            "one_hot" | "histogram" => {
                let [idx, k] = self.args(name, args, &["indices", "k"], 2, span)?;
                let ((iv, is), (kv, ks)) = (idx.expect("required"), k.expect("required"));
                let idx = self.node(iv, is)?;
                let k = self.dim(&kv, ks)?;
                let t = self.ty(idx).clone();
                if t.elem != Elem::Int || t.rank() != 1 {
                    let text = self.shape_text(&t);
                    return Err(self.error(
                        Diagnostic::new(format!("`{name}` takes an `int` vector, got {text}"))
                            .at(is, format!("this is {text}"))
                            .hint("pass class indices, e.g. `argmax(e, axis=1)`"),
                    ));
                }
                let shape = vec![t.shape[0].clone(), k];
                let cols = self.push(Expr::Iota { shape: shape.clone(), axis: 1 }, span)?;
                let col = self.push(Expr::ExpandDims { arg: idx, axis: 1 }, span)?;
                let idx = self.broadcast(col, &shape, span)?;
                let hit = self.push(Expr::Binary { op: BinaryOp::Eq, lhs: cols, rhs: idx }, span)?;
                let one_hot = self.push(Expr::Cast { arg: hit, to: Elem::Real }, span)?;
                if name == "one_hot" {
                    Ok(Value::Node(one_hot))
                } else {
                    node(self.push(Expr::Reduce { op: ReduceOp::Sum, arg: one_hot, axis: 0 }, span))
                }
            }
            "rows" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let (xv, xs) = x.expect("required");
                let x = self.node(xv, xs)?;
                match self.ty(x).shape.first() {
                    Some(d) => Ok(Value::Dim(d.clone())),
                    None => Err(self.error(
                        Diagnostic::new("`rows` of a scalar").at(xs, "a scalar has no rows").hint("pass a tensor"),
                    )),
                }
            }
            "float" | "int" => {
                let [x] = self.args(name, args, &["x"], 1, span)?;
                let (xv, xs) = x.expect("required");
                let x = self.node(xv, xs)?;
                let to = if name == "float" { Elem::Real } else { Elem::Int };
                if self.ty(x).elem == to {
                    return Ok(Value::Node(x));
                }
                node(self.push(Expr::Cast { arg: x, to }, span))
            }
            _ => unreachable!("FUNCTIONS lists only names handled above"),
        }
    }

    /// Matches arguments to named slots (positional first); `required` leading slots must be given.
    fn args<const K: usize>(
        &mut self,
        fname: &str,
        args: Vec<CallArg>,
        names: &[&str; K],
        required: usize,
        span: Span,
    ) -> R<[Slot; K]> {
        let mut slots: [Slot; K] = std::array::from_fn(|_| None);
        let mut next = 0;
        for a in args {
            let i = match &a.name {
                None => {
                    let i = next;
                    next += 1;
                    if i >= K {
                        return Err(self.error(
                            Diagnostic::new(format!(
                                "`{fname}` takes at most {K} argument{}",
                                if K == 1 { "" } else { "s" }
                            ))
                            .at(a.span, "extra argument")
                            .hint(format!("`{fname}({})`", names.join(", "))),
                        ));
                    }
                    i
                }
                Some(n) => match names.iter().position(|x| *x == n.name) {
                    Some(i) => i,
                    None => return Err(self.unknown_arg(fname, n, names)),
                },
            };
            if slots[i].is_some() {
                return Err(self.error(
                    Diagnostic::new(format!("argument `{}` of `{fname}` is given twice", names[i]))
                        .at(a.span, "given again")
                        .hint("pass each argument once"),
                ));
            }
            slots[i] = Some((a.value, a.span));
        }
        if let Some(missing) = slots.iter().take(required).position(Option::is_none) {
            return Err(self.error(
                Diagnostic::new(format!("`{fname}` needs the argument `{}`", names[missing]))
                    .at(span, "missing argument")
                    .hint(format!("`{fname}({})`", names.join(", "))),
            ));
        }
        Ok(slots)
    }

    fn unknown_arg(&mut self, fname: &str, n: &Ident, names: &[&str]) -> Reported {
        let hint = if n.name == "dim" && names.contains(&"axis") {
            format!("sslc calls PyTorch's `dim` `axis`: `{fname}(..., axis=1)`")
        } else {
            format!("`{fname}` takes {}", names.join(", "))
        };
        self.error(
            Diagnostic::new(format!("`{fname}` has no argument `{}`", n.name))
                .at(n.span, "unknown argument")
                .hint(hint),
        )
    }

    fn real(&mut self, slot: Slot) -> R<Handle<Expr>> {
        let (v, s) = slot.expect("required argument");
        self.node_as(v, s, Elem::Real)
    }

    fn literal(&mut self, v: f64, span: Span) -> R<Handle<Expr>> {
        self.push(Expr::Literal(Literal::Real(v)), span)
    }

    fn flag(&mut self, slot: Slot) -> R<bool> {
        let Some((v, s)) = slot else { return Ok(false) };
        let h = self.node(v, s)?;
        match self.prog.exprs[h] {
            Expr::Literal(Literal::Bool(b)) => Ok(b),
            _ => Err(self.error(
                Diagnostic::new("expected `true` or `false`")
                    .at(s, "not a boolean literal")
                    .hint("write `keepdim=true`"),
            )),
        }
    }

    /// A normalised axis (negative counts from the end); `None` when not given.
    fn axis(&mut self, slot: Slot, rank: usize, span: Span) -> R<Option<usize>> {
        let Some((v, s)) = slot else { return Ok(None) };
        let a = self.int_const(&v, s, "axis")?;
        let norm = if a < 0 { a + rank as i64 } else { a };
        if norm < 0 || norm >= rank as i64 {
            let _ = span;
            return Err(self.error(
                Diagnostic::new(format!("axis {a} is out of range for a tensor of rank {rank}"))
                    .at(s, "no such axis")
                    .hint(format!("axes are 0..{} (or -1 for the last)", rank.saturating_sub(1))),
            ));
        }
        Ok(Some(norm as usize))
    }

    fn shape(&mut self, (v, s): (Value, Span)) -> R<Vec<Dim>> {
        match v {
            Value::List(items) => {
                let mut out = Vec::new();
                for (item, is) in items {
                    out.push(self.dim(&item, is)?);
                }
                Ok(out)
            }
            _ => Err(self.error(
                Diagnostic::new("expected a shape")
                    .at(s, "not a list of sizes")
                    .hint("write a shape as a list, e.g. `[N, K]`"),
            )),
        }
    }

    /// Reduces one axis, or every axis when `axis` is `None`.
    fn reduce(&mut self, op: ReduceOp, x: Handle<Expr>, axis: Option<usize>, span: Span) -> R<Handle<Expr>> {
        match axis {
            Some(a) => self.push(Expr::Reduce { op, arg: x, axis: a }, span),
            None => {
                let mut h = x;
                for a in (0..self.ty(x).rank()).rev() {
                    h = self.push(Expr::Reduce { op, arg: h, axis: a }, span)?;
                }
                Ok(h)
            }
        }
    }

    /// The number of elements `axis` (or the whole tensor) holds, as an f32 scalar.
    fn count(&mut self, x: Handle<Expr>, axis: Option<usize>, span: Span) -> R<Handle<Expr>> {
        let dims: Vec<Dim> = match axis {
            Some(a) => vec![self.ty(x).shape[a].clone()],
            None => self.ty(x).shape.clone(),
        };
        let mut total = self.literal(1.0, span)?;
        for d in dims {
            let n = self.node_as(Value::Dim(d), span, Elem::Real)?;
            total = match self.prog.exprs[total] {
                Expr::Literal(Literal::Real(1.0)) => n,
                _ => self.push(Expr::Binary { op: BinaryOp::Mul, lhs: total, rhs: n }, span)?,
            };
        }
        Ok(total)
    }

    fn mean(&mut self, x: Handle<Expr>, axis: Option<usize>, span: Span) -> R<Handle<Expr>> {
        let s = self.reduce(ReduceOp::Sum, x, axis, span)?;
        let n = self.count(x, axis, span)?;
        let shape = self.ty(s).shape.clone();
        let n = self.broadcast(n, &shape, span)?;
        self.push(Expr::Binary { op: BinaryOp::Div, lhs: s, rhs: n }, span)
    }

    /// Sample standard deviation (divisor n − 1), as `torch.std`.
    /// The unbiased variance (divides by n − 1, as `torch.var`); `std` is its square root.
    fn variance(&mut self, x: Handle<Expr>, axis: Option<usize>, span: Span) -> R<Handle<Expr>> {
        let m = self.mean(x, axis, span)?;
        let m = self.keepdim(m, axis, true, span)?;
        let shape = self.ty(x).shape.clone();
        let m = self.broadcast(m, &shape, span)?;
        let d = self.push(Expr::Binary { op: BinaryOp::Sub, lhs: x, rhs: m }, span)?;
        let sq = self.push(Expr::Binary { op: BinaryOp::Mul, lhs: d, rhs: d }, span)?;
        let ss = self.reduce(ReduceOp::Sum, sq, axis, span)?;
        let n = self.count(x, axis, span)?;
        let one = self.literal(1.0, span)?;
        let dof = self.push(Expr::Binary { op: BinaryOp::Sub, lhs: n, rhs: one }, span)?;
        let shape = self.ty(ss).shape.clone();
        let dof = self.broadcast(dof, &shape, span)?;
        self.push(Expr::Binary { op: BinaryOp::Div, lhs: ss, rhs: dof }, span)
    }

    /// `bool[n, n]`, true on the diagonal: two index grids compared, which pairwise fusion
    /// recognises as a mask.
    fn eye(&mut self, n: Dim, span: Span) -> R<Handle<Expr>> {
        let shape = vec![n.clone(), n];
        let rows = self.push(Expr::Iota { shape: shape.clone(), axis: 0 }, span)?;
        let cols = self.push(Expr::Iota { shape, axis: 1 }, span)?;
        self.push(Expr::Binary { op: BinaryOp::Eq, lhs: rows, rhs: cols }, span)
    }

    /// `[N, N]` → `[N]`: the diagonal, as a row sum under the `eye` mask, which pairwise
    /// fusion recognises when the matrix is a product.
    fn diag(&mut self, x: Handle<Expr>, xs: Span, span: Span) -> R<Handle<Expr>> {
        let ty = self.ty(x).clone();
        if ty.rank() != 2 || ty.shape[0] != ty.shape[1] {
            let t = self.shape_text(&ty);
            return Err(self.error(
                Diagnostic::new(format!("`diag` of {t}"))
                    .at(xs, format!("this is {t}"))
                    .hint("`diag` takes a square matrix `[N, N]`"),
            ));
        }
        // diag(a @ bᵀ) is the row-wise dot product: O(N·D), and so is its gradient. Scalar
        // factors (`diag(a @ b.T / tau)`) move outside, to the `[N]` dot products.
        let mut factors = Vec::new();
        let mut core = x;
        while let Some((op, inner, scalar)) = self.scalar_factor(core) {
            factors.push((op, scalar));
            core = inner;
        }
        if let Expr::MatMul { lhs, rhs } = self.prog.exprs[core] {
            if let Expr::Transpose { arg } = self.prog.exprs[rhs] {
                if self.ty(lhs).shape == self.ty(arg).shape {
                    let products = self.push(Expr::Binary { op: BinaryOp::Mul, lhs, rhs: arg }, span)?;
                    let mut d = self.reduce(ReduceOp::Sum, products, Some(1), span)?;
                    for (op, scalar) in factors.into_iter().rev() {
                        let scalar = self.broadcast(scalar, &ty.shape[..1], span)?;
                        d = self.push(Expr::Binary { op, lhs: d, rhs: scalar }, span)?;
                    }
                    return Ok(d);
                }
            }
        }
        let on_diagonal = self.eye(ty.shape[0].clone(), span)?;
        let zero = self.literal(0.0, span)?;
        let zero = self.broadcast(zero, &ty.shape, span)?;
        let kept = self.push(Expr::Select { cond: on_diagonal, on_true: x, on_false: zero }, span)?;
        self.reduce(ReduceOp::Sum, kept, Some(1), span)
    }

    /// `x` as `inner * s`, `s * inner` or `inner / s` with a scalar `s` (broadcast by the
    /// operator): `(op, inner, s)` with the operator as applied to `inner`, for `diag`.
    fn scalar_factor(&self, x: Handle<Expr>) -> Option<(BinaryOp, Handle<Expr>, Handle<Expr>)> {
        let Expr::Binary { op, lhs, rhs } = self.prog.exprs[x] else { return None };
        let scalar = |h: Handle<Expr>| match self.prog.exprs[h] {
            Expr::Broadcast { arg, .. } if self.ty(arg).rank() == 0 && self.ty(arg).elem == Elem::Real => Some(arg),
            _ => None,
        };
        match op {
            BinaryOp::Mul => scalar(rhs).map(|s| (op, lhs, s)).or_else(|| scalar(lhs).map(|s| (op, rhs, s))),
            BinaryOp::Div => scalar(rhs).map(|s| (op, lhs, s)),
            _ => None,
        }
    }

    /// `[N, D]`, `[M, D]` → `[N, M]` squared Euclidean distances, `‖a‖² + ‖b‖² − 2 a bᵀ`
    /// (one matrix product, no `[N, M, D]` difference tensor), floored at 0 against rounding.
    fn sqdist(&mut self, (a, asp): (Value, Span), (b, bsp): (Value, Span), span: Span) -> R<Handle<Expr>> {
        let a = self.node_as(a, asp, Elem::Real)?;
        let b = self.node_as(b, bsp, Elem::Real)?;
        for (h, s) in [(a, asp), (b, bsp)] {
            if self.ty(h).rank() != 2 {
                let t = self.shape_text(&self.ty(h).clone());
                return Err(self.error(
                    Diagnostic::new(format!("`sqdist` of {t}"))
                        .at(s, format!("this is {t}"))
                        .hint("`sqdist(a, b)` takes two matrices of row vectors, `[N, D]` and `[M, D]`"),
                ));
            }
        }
        let bt = self.push(Expr::Transpose { arg: b }, bsp)?;
        let ab = self.matmul(Value::Node(a), asp, Value::Node(bt), bsp, span)?;
        let shape = self.ty(ab).shape.clone();
        let mut norms = Vec::new();
        for (h, axis) in [(a, 1), (b, 0)] {
            let sq = self.push(Expr::Binary { op: BinaryOp::Mul, lhs: h, rhs: h }, span)?;
            let n = self.reduce(ReduceOp::Sum, sq, Some(1), span)?;
            let n = self.push(Expr::ExpandDims { arg: n, axis }, span)?;
            norms.push(self.broadcast(n, &shape, span)?);
        }
        let sum = self.push(Expr::Binary { op: BinaryOp::Add, lhs: norms[0], rhs: norms[1] }, span)?;
        let two = self.literal(2.0, span)?;
        let two = self.broadcast(two, &shape, span)?;
        let cross = self.push(Expr::Binary { op: BinaryOp::Mul, lhs: two, rhs: ab }, span)?;
        let d = self.push(Expr::Binary { op: BinaryOp::Sub, lhs: sum, rhs: cross }, span)?;
        let zero = self.literal(0.0, span)?;
        let zero = self.broadcast(zero, &shape, span)?;
        self.push(Expr::Binary { op: BinaryOp::Max, lhs: d, rhs: zero }, span)
    }

    fn keepdim(&mut self, r: Handle<Expr>, axis: Option<usize>, keep: bool, span: Span) -> R<Handle<Expr>> {
        if !keep {
            return Ok(r);
        }
        match axis {
            Some(a) => self.push(Expr::ExpandDims { arg: r, axis: a }, span),
            None => Ok(r),
        }
    }

    /// `x - logsumexp(x, axis)`, broadcast back over `axis`.
    fn log_softmax(&mut self, x: Handle<Expr>, axis: usize, span: Span) -> R<Handle<Expr>> {
        let lse = self.push(Expr::Reduce { op: ReduceOp::LogSumExp, arg: x, axis }, span)?;
        let lse = self.push(Expr::ExpandDims { arg: lse, axis }, span)?;
        let shape = self.ty(x).shape.clone();
        let lse = self.broadcast(lse, &shape, span)?;
        self.push(Expr::Binary { op: BinaryOp::Sub, lhs: x, rhs: lse }, span)
    }
}
