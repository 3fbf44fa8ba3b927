//! Statements: `let`, assignment, type annotations and `repeat` loops.

use super::{dim_expr, elem_of, Context, Local, Lower, ObjName, Value, R};
use crate::diag::Diagnostic;
use crate::front::ast::{self, Stmt, TypeExpr, TypeKind};
use crate::ir::{Assigned, Carried, Dim, Elem, Expr, StateUpdate};
use crate::span::Span;
use crate::valid;
use std::collections::HashMap;

impl<'a> Lower<'a> {
    /// Lowers a statement; `in_function` decides what assignments may target.
    pub(super) fn stmt(&mut self, s: &Stmt, in_function: bool) -> R<()> {
        match s {
            Stmt::Let { name, ty, value, mutable, span } => {
                let v = self.expr(value)?;
                let v = match ty {
                    Some(te) => self.annotate(v, value.span, te)?,
                    None => v,
                };
                if let Value::Node(h) = &v {
                    self.prog.names.entry(*h).or_insert_with(|| name.name.clone());
                    self.prog.bindings.push((name.span, *h));
                }
                if let Some(scope) = self.scopes.last_mut() {
                    scope.insert(name.name.clone(), Local { value: v, mutable: *mutable, span: *span });
                }
                Ok(())
            }
            Stmt::Assign { target, index, value, span } => {
                self.assign(target, index.as_ref(), value, *span, in_function)
            }
            Stmt::Repeat { count, body, span } => self.repeat(count, body, *span, in_function),
            Stmt::Return { span, .. } => Err(self.error(
                Diagnostic::new("`return` is only allowed at the end of a function")
                    .at(*span, "not in a function")
                    .hint("handlers update state with `name = ...`"),
            )),
        }
    }

    /// Checks a `let x: T = ...` annotation.
    fn annotate(&mut self, v: Value, span: Span, te: &TypeExpr) -> R<Value> {
        let dims: HashMap<String, Dim> = self
            .scopes
            .iter()
            .flat_map(|s| s.iter())
            .filter_map(|(n, l)| match &l.value {
                Value::Dim(d) => Some((n.clone(), d.clone())),
                _ => None,
            })
            .chain(self.module.dims.iter().map(|(h, d)| (d.name.clone(), Dim::symbol(h))))
            .collect();
        let (elem, want) = match &te.kind {
            TypeKind::Scalar(k) => (elem_of(*k), Vec::new()),
            TypeKind::Tensor { elem, dims: ds } => {
                let mut want = Vec::new();
                for d in ds {
                    let mut lookup = |n: &str, _s: Span| dims.get(n).cloned();
                    want.push(dim_expr(d, &mut lookup).map_err(|diag| self.error(diag))?);
                }
                (elem_of(*elem), want)
            }
        };
        let h = self.node_as(v, span, elem)?;
        if self.ty(h).shape != want {
            let have = self.shape_text(&self.ty(h).clone());
            let want = crate::ir::display_shape(&want, &self.module.dims).to_string();
            return Err(self.error(
                Diagnostic::new(format!("value has shape {have}, annotated {want}"))
                    .at(span, format!("this is {have}"))
                    .also(te.span, "annotation")
                    .hint("fix the annotation or the expression"),
            ));
        }
        Ok(Value::Node(h))
    }

    fn assign(
        &mut self,
        target: &ast::Ident,
        index: Option<&ast::Expr>,
        value: &ast::Expr,
        span: Span,
        in_function: bool,
    ) -> R<()> {
        // A mutable local (`var`) in any enclosing scope.
        let local = self.scopes.iter().rposition(|s| s.contains_key(&target.name));
        if let Some(level) = local {
            let old = self.scopes[level][&target.name].clone();
            if !old.mutable {
                return Err(self.error(
                    Diagnostic::new(format!("`{}` is immutable", target.name))
                        .at(target.span, "assigned here")
                        .also(old.span, "declared with `let`")
                        .hint("declare it with `var` to assign it again"),
                ));
            }
            if index.is_some() {
                return Err(self.error(
                    Diagnostic::new("indexed assignment is only for state rows")
                        .at(span, "not state")
                        .hint("compute the whole new value instead"),
                ));
            }
            let v = self.expr(value)?;
            let new = self.same_type_as(old.value.clone(), v, value.span, target)?;
            self.scopes[level].get_mut(&target.name).expect("exists").value = new;
            return Ok(());
        }
        let assigned = self.objective.and_then(|o| match o.names.get(&target.name) {
            Some((ObjName::State(s), _)) => Some(Assigned::State(*s)),
            Some((ObjName::Const(c), _)) if self.module.consts[*c].learned => Some(Assigned::Learned(*c)),
            _ => None,
        });
        let Some(state) = assigned.filter(|_| !in_function && matches!(self.context, Context::Step | Context::Epoch))
        else {
            return Err(self.error(
                Diagnostic::new(format!("cannot assign `{}`", target.name))
                    .at(target.span, "not assignable here")
                    .hint(
                        "assign `var` locals in functions, and `state` and `learn` tensors in `on step` / `on epoch` \
                         handlers",
                    ),
            ));
        };
        if let (Assigned::Learned(_), Some(e)) = (state, index) {
            return Err(self.error(
                Diagnostic::new(format!("`{}` is a `learn` tensor: it is assigned whole", target.name))
                    .at(e.span, "rows of it")
                    .hint(format!("write `{} = ...` with the whole new value", target.name)),
            ));
        }
        if self.blocks.len() > 1 {
            return Err(self.error(
                Diagnostic::new("state cannot be assigned inside `repeat`")
                    .at(span, "inside a loop")
                    .hint("compute the value in the loop with a `var`, then assign the state after it"),
            ));
        }
        if let Some(prev) = self.updates.iter().find(|u| u.target == state) {
            let prev = prev.span;
            return Err(self.error(
                Diagnostic::new(format!("`{}` is assigned twice in this handler", target.name))
                    .at(span, "second assignment")
                    .also(prev, "first assignment")
                    .hint("combine the updates into one expression"),
            ));
        }
        let (st, declared) = match state {
            Assigned::State(s) => (self.module.states[s].ty.clone(), self.module.states[s].span),
            Assigned::Learned(c) => (self.module.consts[c].ty.clone(), self.module.consts[c].span),
        };
        let rows = match index {
            None => None,
            Some(e) => {
                let v = self.expr(e)?;
                let idx = self.node(v, e.span)?;
                let t = self.ty(idx).clone();
                if t.elem != Elem::Int || t.rank() != 1 || st.rank() == 0 {
                    let text = self.shape_text(&t);
                    return Err(self.error(
                        Diagnostic::new(format!("state rows are selected by an `int` vector, got {text}"))
                            .at(e.span, format!("this is {text}"))
                            .hint("write `state[index] = ...` with the batch's `index`"),
                    ));
                }
                Some(idx)
            }
        };
        let mut want = st.shape.clone();
        if let Some(r) = rows {
            want[0] = self.ty(r).shape[0].clone();
        }
        let v = self.expr(value)?;
        let h = self.node_as(v, value.span, Elem::Real)?;
        let h = if valid::broadcastable(&self.ty(h).shape, &want) { self.broadcast(h, &want, value.span)? } else { h };
        if self.ty(h).shape != want {
            let (have, want) =
                (self.shape_text(&self.ty(h).clone()), crate::ir::display_shape(&want, &self.module.dims).to_string());
            return Err(self.error(
                Diagnostic::new(format!("`{}` needs a value of shape {want}, got {have}", target.name))
                    .at(value.span, format!("this is {have}"))
                    .also(declared, "declared here")
                    .hint("the new value must have the declared shape (rows of it for `state[index] = ...`)"),
            ));
        }
        self.updates.push(StateUpdate { target: state, rows, value: h, span });
        Ok(())
    }

    /// A reassigned `var` keeps its type (integers may become reals only if it was real).
    fn same_type_as(&mut self, old: Value, new: Value, span: Span, target: &ast::Ident) -> R<Value> {
        let old_h = self.node(old, target.span)?;
        let want = self.ty(old_h).clone();
        let h = self.node_as(new, span, want.elem)?;
        let h = if valid::broadcastable(&self.ty(h).shape, &want.shape) {
            self.broadcast(h, &want.shape, span)?
        } else {
            h
        };
        if *self.ty(h) != want {
            let (have, want) = (self.shape_text(&self.ty(h).clone()), self.shape_text(&want));
            return Err(self.error(
                Diagnostic::new(format!("`{}` is {want}, but is assigned {have}", target.name))
                    .at(span, format!("this is {have}"))
                    .hint("a `var` keeps the shape it was declared with"),
            ));
        }
        Ok(Value::Node(h))
    }

    fn repeat(&mut self, count: &ast::Expr, body: &[Stmt], span: Span, in_function: bool) -> R<()> {
        let c = self.expr(count)?;
        let count_node = self.scalar_of(c, count.span, Elem::Int, "a `repeat` count")?;
        // Variables assigned in the body are carried around the loop.
        let mut assigned = Vec::new();
        collect_assigned(body, &mut assigned);
        let mut carried_names = Vec::new();
        for n in assigned {
            if carried_names.contains(&n) {
                continue;
            }
            if let Some(level) = self.scopes.iter().rposition(|s| s.contains_key(&n)) {
                if self.scopes[level][&n].mutable {
                    carried_names.push(n);
                }
            }
        }
        let mut carried = Vec::new();
        for n in &carried_names {
            let level = self.scopes.iter().rposition(|s| s.contains_key(n)).expect("found above");
            let local = self.scopes[level][n].clone();
            let init = self.node(local.value, local.span)?;
            let ty = self.ty(init).clone();
            let param = self.prog.append(Expr::LoopParam, ty, local.span);
            self.prog.names.insert(param, n.clone());
            self.scopes[level].get_mut(n).expect("exists").value = Value::Node(param);
            carried.push((level, n.clone(), init, param));
        }
        self.blocks.push(Vec::new());
        self.scopes.push(HashMap::new());
        let mut result = Ok(());
        for s in body {
            if let Err(e) = self.stmt(s, in_function) {
                result = Err(e);
                break;
            }
        }
        self.scopes.pop();
        let body_block = self.blocks.pop().expect("pushed above");
        let mut loop_carried = Vec::new();
        for (level, n, init, param) in &carried {
            let next = match &self.scopes[*level][n].value {
                Value::Node(h) => *h,
                other => {
                    let other = other.clone();
                    self.node(other, span)?
                }
            };
            loop_carried.push(Carried { init: *init, param: *param, next });
        }
        result?;
        let looped = self.push(Expr::Loop { count: count_node, carried: loop_carried, body: body_block }, span)?;
        for (i, (level, n, init, _)) in carried.iter().enumerate() {
            let ty = self.ty(*init).clone();
            let out = self.push_typed(Expr::LoopOutput { looped, index: i }, ty, span);
            self.prog.names.insert(out, n.clone());
            self.scopes[*level].get_mut(n).expect("exists").value = Value::Node(out);
        }
        Ok(())
    }
}

fn collect_assigned(body: &[Stmt], out: &mut Vec<String>) {
    for s in body {
        match s {
            Stmt::Assign { target, .. } => out.push(target.name.clone()),
            Stmt::Repeat { body, .. } => collect_assigned(body, out),
            _ => {}
        }
    }
}
