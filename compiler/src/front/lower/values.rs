//! Values: turning a lowered [`Value`] into a node, a size or a scalar of the wanted kind, and
//! unifying shapes for element-wise operations.

use super::{Lower, Value, R};
use crate::diag::Diagnostic;
use crate::ir::{Dim, Elem, Expr, Handle, Literal};
use crate::span::Span;
use crate::valid;

impl<'a> Lower<'a> {
    /// The value as a node (sizes become `int` scalars).
    pub(super) fn node(&mut self, v: Value, span: Span) -> R<Handle<Expr>> {
        match v {
            Value::Node(h) => Ok(h),
            Value::Dim(d) => match d.as_constant() {
                Some(c) => self.push(Expr::Literal(Literal::Int(c)), span),
                None => self.push(Expr::DimSize(d), span),
            },
            Value::List(_) => Err(self.error(
                Diagnostic::new("a list is not a tensor")
                    .at(span, "list here")
                    .hint("lists only give shapes, as in `full([N], 1.0)`"),
            )),
        }
    }

    /// The value converted to `elem` (`int` → `f32` casts; integer literals become real literals).
    pub(super) fn node_as(&mut self, v: Value, span: Span, elem: Elem) -> R<Handle<Expr>> {
        if let (Value::Dim(d), Elem::Real) = (&v, elem) {
            if let Some(c) = d.as_constant() {
                return self.push(Expr::Literal(Literal::Real(c as f64)), span);
            }
        }
        let h = self.node(v, span)?;
        let have = self.ty(h).elem;
        if have == elem {
            return Ok(h);
        }
        match (have, elem) {
            (Elem::Int, Elem::Real) => self.push(Expr::Cast { arg: h, to: Elem::Real }, span),
            _ => {
                let found = self.shape_text(&self.ty(h).clone());
                Err(self.error(
                    Diagnostic::new(format!("expected {} values, found {found}", elem.name()))
                        .at(span, format!("this is {found}"))
                        .hint(match elem {
                            Elem::Bool => "compare values to get a mask, e.g. `x > 0`",
                            _ => "convert explicitly with `float(...)`",
                        }),
                ))
            }
        }
    }

    /// A compile-time size.
    pub(super) fn dim(&mut self, v: &Value, span: Span) -> R<Dim> {
        match v {
            Value::Dim(d) => Ok(d.clone()),
            _ => Err(self.error(
                Diagnostic::new("expected a size known when the objective is compiled")
                    .at(span, "not a size")
                    .hint("sizes are dimension names, integers, or `+`, `-`, `*` of those, e.g. `2*N`"),
            )),
        }
    }

    /// A compile-time integer constant (axis numbers, ...).
    pub(super) fn int_const(&mut self, v: &Value, span: Span, what: &str) -> R<i64> {
        match v {
            Value::Dim(d) if d.as_constant().is_some() => Ok(d.as_constant().expect("checked")),
            _ => Err(self.error(
                Diagnostic::new(format!("{what} must be an integer literal"))
                    .at(span, "not an integer literal")
                    .hint(format!("write e.g. `{what}=1`")),
            )),
        }
    }

    pub(super) fn scalar_of(&mut self, v: Value, span: Span, elem: Elem, what: &str) -> R<Handle<Expr>> {
        let h = self.node_as(v, span, elem)?;
        if self.ty(h).rank() != 0 {
            let t = self.shape_text(&self.ty(h).clone());
            return Err(self.error(
                Diagnostic::new(format!("{what} must be a scalar, got {t}"))
                    .at(span, format!("this is {t}"))
                    .hint("reduce it, e.g. with `mean(...)` or `sum(...)`"),
            ));
        }
        Ok(h)
    }

    pub(super) fn scalar_real(&mut self, v: Value, span: Span, what: &str) -> R<Handle<Expr>> {
        self.scalar_of(v, span, Elem::Real, what)
    }

    /// A real scalar or a real `[N]` vector over the batch.
    pub(super) fn per_sample_real(&mut self, v: Value, span: Span) -> R<Handle<Expr>> {
        let h = self.node_as(v, span, Elem::Real)?;
        let t = self.ty(h).clone();
        let batch = self.module.batch_dim().map(Dim::symbol);
        if t.rank() == 0 || (t.rank() == 1 && Some(&t.shape[0]) == batch.as_ref()) {
            return Ok(h);
        }
        let text = self.shape_text(&t);
        Err(self.error(
            Diagnostic::new(format!("expected a scalar or one value per sample, got {text}"))
                .at(span, format!("this is {text}"))
                .hint("per-sample values have the batch's shape, e.g. `w[index]`"),
        ))
    }

    pub(super) fn check_output(&mut self, name: &str, v: Value, span: Span) -> R<Handle<Expr>> {
        match name {
            "per_sample" => {
                let h = self.node_as(v, span, Elem::Real)?;
                let t = self.ty(h).clone();
                let batch = self.module.batch_dim().map(Dim::symbol);
                if t.rank() == 1 && Some(&t.shape[0]) == batch.as_ref() {
                    Ok(h)
                } else {
                    let text = self.shape_text(&t);
                    Err(self.error(
                        Diagnostic::new(format!("`per_sample` must have one value per sample, got {text}"))
                            .at(span, format!("this is {text}"))
                            .hint("`per_sample` is the base loss of each sample before the batch mean, `[N]`"),
                    ))
                }
            }
            _ => self.scalar_real(v, span, &format!("`{name}`")),
        }
    }

    /// Makes two values the same element type and shape, for an element-wise operator.
    pub(super) fn unify(
        &mut self,
        a: Value,
        a_span: Span,
        b: Value,
        b_span: Span,
        op: &str,
        op_span: Span,
    ) -> R<(Handle<Expr>, Handle<Expr>)> {
        // Decide the element type before materialising, so `x + 1` gets a real literal.
        let elem_of = |this: &Self, v: &Value| match v {
            Value::Node(h) => this.ty(*h).elem,
            _ => Elem::Int,
        };
        let (ea, eb) = (elem_of(self, &a), elem_of(self, &b));
        let elem = match (ea, eb) {
            (x, y) if x == y => x,
            (Elem::Int, Elem::Real) | (Elem::Real, Elem::Int) => Elem::Real,
            _ => {
                return Err(self.error(
                    Diagnostic::new(format!("`{op}` cannot combine {} and {}", ea.name(), eb.name()))
                        .at(a_span, format!("this is {}", ea.name()))
                        .also(b_span, format!("this is {}", eb.name()))
                        .hint("masks combine with `and`/`or`; use `where(mask, a, b)` to pick values"),
                ))
            }
        };
        let a = self.node_as(a, a_span, elem)?;
        let b = self.node_as(b, b_span, elem)?;
        let (sa, sb) = (self.ty(a).shape.clone(), self.ty(b).shape.clone());
        if sa == sb {
            return Ok((a, b));
        }
        let Some(shape) = valid::broadcast_shapes(&sa, &sb) else {
            let (ta, tb) = (self.shape_text(&self.ty(a).clone()), self.shape_text(&self.ty(b).clone()));
            return Err(self.error(
                Diagnostic::new(format!("`{op}` of {ta} and {tb}: the shapes do not broadcast"))
                    .at(op_span, "incompatible shapes")
                    .also(a_span, format!("this is {ta}"))
                    .also(b_span, format!("this is {tb}"))
                    .hint("shapes broadcast when, aligned on the right, each pair of sizes is equal or one of them is 1; add an axis with `x[:, None]`"),
            ));
        };
        let a = self.broadcast(a, &shape, a_span)?;
        let b = self.broadcast(b, &shape, b_span)?;
        Ok((a, b))
    }

    pub(super) fn broadcast(&mut self, h: Handle<Expr>, shape: &[Dim], span: Span) -> R<Handle<Expr>> {
        if self.ty(h).shape == shape {
            return Ok(h);
        }
        self.push(Expr::Broadcast { arg: h, shape: shape.to_vec() }, span)
    }
}
