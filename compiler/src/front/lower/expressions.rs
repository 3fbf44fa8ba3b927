//! Expressions: literals, operators, matrix products and indexing.

use super::{Lower, Reported, Value, R};
use crate::diag::Diagnostic;
use crate::front::ast::{self, ExprKind, IndexItem};
use crate::ir::{BinaryOp, Dim, Elem, Expr, Handle, Literal, UnaryOp};
use crate::span::Span;

impl<'a> Lower<'a> {
    pub(super) fn expr(&mut self, e: &ast::Expr) -> R<Value> {
        match &e.kind {
            ExprKind::Int(v) => Ok(Value::Dim(Dim::constant(*v))),
            ExprKind::Number(v) => Ok(Value::Node(self.push(Expr::Literal(Literal::Real(*v)), e.span)?)),
            ExprKind::Percent(f) => Ok(Value::Node(self.push(Expr::RunFraction(*f), e.span)?)),
            ExprKind::Bool(b) => Ok(Value::Node(self.push(Expr::Literal(Literal::Bool(*b)), e.span)?)),
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::List(items) => {
                let mut out = Vec::new();
                for i in items {
                    out.push((self.expr(i)?, i.span));
                }
                Ok(Value::List(out))
            }
            ExprKind::Unary { op, arg } => {
                let v = self.expr(arg)?;
                match op {
                    ast::UnaryOp::Neg => match v {
                        Value::Dim(d) => Ok(Value::Dim(d.scale(-1))),
                        v => {
                            let h = self.node(v, arg.span)?;
                            Ok(Value::Node(self.push(Expr::Unary { op: UnaryOp::Neg, arg: h }, e.span)?))
                        }
                    },
                    ast::UnaryOp::Not => {
                        let h = self.node_as(v, arg.span, Elem::Bool)?;
                        Ok(Value::Node(self.push(Expr::Unary { op: UnaryOp::Not, arg: h }, e.span)?))
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs)?;
                let r = self.expr(rhs)?;
                self.binary(*op, l, lhs.span, r, rhs.span, e.span)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span),
            ExprKind::Index { base, items } => {
                let v = self.expr(base)?;
                self.index(v, base.span, items, e.span)
            }
            ExprKind::Transpose(base) => {
                let v = self.expr(base)?;
                let h = self.node(v, base.span)?;
                Ok(Value::Node(self.push(Expr::Transpose { arg: h }, e.span)?))
            }
            ExprKind::If { cond, then, otherwise } => {
                let c = self.expr(cond)?;
                let c = self.scalar_of(c, cond.span, Elem::Bool, "an `if` condition")?;
                let t = self.expr(then)?;
                let o = self.expr(otherwise)?;
                let (t, o) = self.unify(t, then.span, o, otherwise.span, "if", e.span)?;
                let shape = self.ty(t).shape.clone();
                let c = self.broadcast(c, &shape, cond.span)?;
                Ok(Value::Node(self.push(Expr::Select { cond: c, on_true: t, on_false: o }, e.span)?))
            }
        }
    }

    fn binary(&mut self, op: ast::BinaryOp, l: Value, ls: Span, r: Value, rs: Span, span: Span) -> R<Value> {
        // Sizes stay sizes under `+`, `-` and `*` by an integer.
        if let (Value::Dim(a), Value::Dim(b)) = (&l, &r) {
            match op {
                ast::BinaryOp::Add => return Ok(Value::Dim(a.add(b))),
                ast::BinaryOp::Sub => return Ok(Value::Dim(a.sub(b))),
                ast::BinaryOp::Mul => match (a.as_constant(), b.as_constant()) {
                    (Some(c), _) => return Ok(Value::Dim(b.scale(c))),
                    (_, Some(c)) => return Ok(Value::Dim(a.scale(c))),
                    _ => {}
                },
                _ => {}
            }
        }
        let ir_op = match op {
            ast::BinaryOp::MatMul => return self.matmul(l, ls, r, rs, span).map(Value::Node),
            ast::BinaryOp::Add => BinaryOp::Add,
            ast::BinaryOp::Sub => BinaryOp::Sub,
            ast::BinaryOp::Mul => BinaryOp::Mul,
            ast::BinaryOp::Div => BinaryOp::Div,
            ast::BinaryOp::Rem => BinaryOp::Rem,
            ast::BinaryOp::Pow => BinaryOp::Pow,
            ast::BinaryOp::Lt => BinaryOp::Lt,
            ast::BinaryOp::Le => BinaryOp::Le,
            ast::BinaryOp::Gt => BinaryOp::Gt,
            ast::BinaryOp::Ge => BinaryOp::Ge,
            ast::BinaryOp::Eq => BinaryOp::Eq,
            ast::BinaryOp::Ne => BinaryOp::Ne,
            ast::BinaryOp::And => BinaryOp::And,
            ast::BinaryOp::Or => BinaryOp::Or,
        };
        self.elementwise(ir_op, l, ls, r, rs, op.symbol(), span).map(Value::Node)
    }

    /// An element-wise binary operator with promotion and broadcasting. Each operand comes
    /// with its span and the operator with its symbol, for the diagnostics.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn elementwise(
        &mut self,
        op: BinaryOp,
        l: Value,
        ls: Span,
        r: Value,
        rs: Span,
        symbol: &str,
        span: Span,
    ) -> R<Handle<Expr>> {
        let (mut a, mut b) = self.unify(l, ls, r, rs, symbol, span)?;
        let elem = self.ty(a).elem;
        if op.is_logical() && elem != Elem::Bool {
            return Err(self.error(
                Diagnostic::new(format!("`{symbol}` combines masks, got {}", elem.name()))
                    .at(span, "not bool")
                    .hint("compare values first, e.g. `a > 0 and b > 0`"),
            ));
        }
        if !op.is_logical() && elem == Elem::Bool && !matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
            return Err(self.error(
                Diagnostic::new(format!("`{symbol}` needs numbers, got masks"))
                    .at(span, "bool operands")
                    .hint("turn a mask into numbers with `where(mask, 1.0, 0.0)` or `float(mask)`"),
            ));
        }
        if matches!(op, BinaryOp::Div | BinaryOp::Pow) && elem == Elem::Int {
            a = self.node_as(Value::Node(a), ls, Elem::Real)?;
            b = self.node_as(Value::Node(b), rs, Elem::Real)?;
        }
        self.push(Expr::Binary { op, lhs: a, rhs: b }, span)
    }

    /// `@`: matrices, or a matrix and a vector (the vector gains and then loses an axis).
    pub(super) fn matmul(&mut self, l: Value, ls: Span, r: Value, rs: Span, span: Span) -> R<Handle<Expr>> {
        let a = self.node_as(l, ls, Elem::Real)?;
        let b = self.node_as(r, rs, Elem::Real)?;
        let (ta, tb) = (self.ty(a).clone(), self.ty(b).clone());
        let (ra, rb) = (ta.rank(), tb.rank());
        let inner_ok = match (ra, rb) {
            (2, 2) => ta.shape[1] == tb.shape[0],
            (2, 1) => ta.shape[1] == tb.shape[0],
            (1, 2) => ta.shape[0] == tb.shape[0],
            _ => {
                let (x, y) = (self.shape_text(&ta), self.shape_text(&tb));
                return Err(self.error(
                    Diagnostic::new(format!("`@` multiplies matrices and vectors, got {x} and {y}"))
                        .at(span, "unsupported ranks")
                        .also(ls, format!("this is {x}"))
                        .also(rs, format!("this is {y}"))
                        .hint("use `*` for element-wise products and `sum(..., axis=k)` for reductions"),
                ));
            }
        };
        if !inner_ok {
            let (x, y) = (self.shape_text(&ta), self.shape_text(&tb));
            let hint = if ra == 2 && rb == 2 && ta.shape[1] == tb.shape[1] {
                let t = crate::ir::display_shape(&[tb.shape[1].clone(), tb.shape[0].clone()], &self.module.dims)
                    .to_string();
                format!("the inner sizes must agree; did you mean `a @ b.T` ({x} @ {t})?")
            } else {
                "the last size of the left operand must equal the first size of the right one".to_string()
            };
            return Err(self.error(
                Diagnostic::new(format!("matrix product of {x} and {y}: inner dimensions differ"))
                    .at(span, "inner dimensions differ")
                    .also(ls, format!("this is {x}"))
                    .also(rs, format!("this is {y}"))
                    .hint(hint),
            ));
        }
        match (ra, rb) {
            (2, 2) => self.push(Expr::MatMul { lhs: a, rhs: b }, span),
            (2, 1) => {
                let col = self.push(Expr::ExpandDims { arg: b, axis: 1 }, rs)?;
                let m = self.push(Expr::MatMul { lhs: a, rhs: col }, span)?;
                self.push(Expr::Squeeze { arg: m, axis: 1 }, span)
            }
            _ => {
                let row = self.push(Expr::ExpandDims { arg: a, axis: 0 }, ls)?;
                let m = self.push(Expr::MatMul { lhs: row, rhs: b }, span)?;
                self.push(Expr::Squeeze { arg: m, axis: 0 }, span)
            }
        }
    }

    fn index(&mut self, v: Value, base_span: Span, items: &[IndexItem], span: Span) -> R<Value> {
        let mut h = self.node(v, base_span)?;
        let mut axis = 0usize;
        for (i, item) in items.iter().enumerate() {
            let rank = self.ty(h).rank();
            match item {
                IndexItem::NewAxis(s) => {
                    h = self.push(Expr::ExpandDims { arg: h, axis }, *s)?;
                    axis += 1;
                }
                IndexItem::Slice { start, end, span: s } => {
                    if axis >= rank {
                        return Err(self.too_many_indices(rank, *s));
                    }
                    let size = self.ty(h).shape[axis].clone();
                    let start = match start {
                        Some(e) => {
                            let v = self.expr(e)?;
                            self.dim(&v, e.span)?
                        }
                        None => Dim::constant(0),
                    };
                    let end = match end {
                        Some(e) => {
                            let v = self.expr(e)?;
                            self.dim(&v, e.span)?
                        }
                        None => size,
                    };
                    let len = end.sub(&start);
                    h = self.push(Expr::Slice { arg: h, axis, start, len }, *s)?;
                    axis += 1;
                }
                IndexItem::Expr(e) => {
                    let v = self.expr(e)?;
                    if let Value::Dim(d) = &v {
                        if axis >= rank {
                            return Err(self.too_many_indices(rank, e.span));
                        }
                        let one =
                            self.push(Expr::Slice { arg: h, axis, start: d.clone(), len: Dim::constant(1) }, e.span)?;
                        h = self.push(Expr::Squeeze { arg: one, axis }, e.span)?;
                        continue;
                    }
                    let idx = self.node(v, e.span)?;
                    let t = self.ty(idx).clone();
                    if t.elem != Elem::Int || t.rank() != 1 || i != 0 {
                        let text = self.shape_text(&t);
                        return Err(self.error(
                            Diagnostic::new(format!("cannot index with {text}"))
                                .at(e.span, format!("this is {text}"))
                                .hint("index rows with an `int` vector as the first index (`e[index]`), or use slices `a:b` and `None`"),
                        ));
                    }
                    h = self.push(Expr::Gather { table: h, indices: idx }, span)?;
                    axis += 1;
                }
            }
        }
        Ok(Value::Node(h))
    }

    fn too_many_indices(&mut self, rank: usize, span: Span) -> Reported {
        self.error(
            Diagnostic::new(format!("too many indices for a tensor of rank {rank}"))
                .at(span, "no axis left to index")
                .hint("one index per axis; `None` adds an axis"),
        )
    }
}
