//! Calls: user functions are inlined at each call with the caller's shapes; built-ins go to
//! [`super::builtins`].

use super::{dim_expr, elem_of, Context, Local, Lower, Reported, Value, R};
use crate::diag::Diagnostic;
use crate::front::ast::{self, ExprKind, Stmt, TypeKind};
use crate::ir::{Dim, Elem};
use crate::span::Span;
use std::collections::HashMap;

impl<'a> Lower<'a> {
    pub(super) fn call(&mut self, callee: &ast::Expr, args: &[ast::Arg], span: Span) -> R<Value> {
        let ExprKind::Name(name) = &callee.kind else {
            return Err(self.error(
                Diagnostic::new("only named functions can be called")
                    .at(callee.span, "not a function name")
                    .hint("call a function by its name: `f(x)`"),
            ));
        };
        let mut lowered = Vec::new();
        for a in args {
            // Shapes and axes may be symbolic; everything else is lowered to nodes by the callee.
            let v = self.expr(&a.value)?;
            lowered.push(super::builtins::CallArg { name: a.name.clone(), value: v, span: a.value.span });
        }
        if let Some(f) = self.functions.get(name.as_str()).copied() {
            return self.user_call(f, lowered, span);
        }
        if let Some(result) = self.builtin_call(name, lowered, span, callee.span) {
            return result;
        }
        let mut d = Diagnostic::new(format!("unknown function `{name}`")).at(callee.span, "not defined");
        d = d.hint(match self.similar_name(name) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "define it with `fn`, or import the file that does".to_string(),
        });
        Err(self.error(d))
    }

    fn user_call(&mut self, f: &'a ast::Function, args: Vec<super::builtins::CallArg>, span: Span) -> R<Value> {
        if let Some(pos) = self.calls.iter().position(|(n, _)| *n == f.name.name) {
            let chain: Vec<&str> =
                self.calls[pos..].iter().map(|(n, _)| n.as_str()).chain([f.name.name.as_str()]).collect();
            return Err(self.error(
                Diagnostic::new(format!("recursive call: {}", chain.join(" → ")))
                    .at(span, "recursion")
                    .hint("functions are inlined, so they cannot call themselves; use `repeat` for iteration"),
            ));
        }
        // Match arguments to parameters, by position then by name.
        let mut slots: Vec<Option<(Value, Span)>> = vec![None; f.params.len()];
        let mut next = 0;
        for a in args {
            let idx = match &a.name {
                None => {
                    let i = next;
                    next += 1;
                    i
                }
                Some(n) => match f.params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => i,
                    None => {
                        return Err(self.error(
                            Diagnostic::new(format!("`{}` has no parameter `{}`", f.name.name, n.name))
                                .at(n.span, "unknown parameter")
                                .also(f.name.span, "defined here")
                                .hint(format!(
                                    "parameters: {}",
                                    f.params.iter().map(|p| p.name.name.as_str()).collect::<Vec<_>>().join(", ")
                                )),
                        ))
                    }
                },
            };
            if idx >= f.params.len() {
                return Err(self.arity(f, span));
            }
            if slots[idx].is_some() {
                return Err(self.error(
                    Diagnostic::new(format!("parameter `{}` is given twice", f.params[idx].name.name))
                        .at(a.span, "given again")
                        .hint("pass each argument once"),
                ));
            }
            slots[idx] = Some((a.value, a.span));
        }
        if slots.iter().any(Option::is_none) {
            return Err(self.arity(f, span));
        }
        let given: Vec<(Value, Span)> = slots.into_iter().map(|s| s.expect("checked")).collect();

        // Bind the function's dimension names by unifying declared shapes with actual ones.
        let mut dims: HashMap<String, Dim> = HashMap::new();
        let mut values = Vec::new();
        for (p, (v, vspan)) in f.params.iter().zip(given) {
            values.push(self.bind_param(f, p, v, vspan, &mut dims, span)?);
        }
        self.calls.push((f.name.name.clone(), span));
        let result = self.inline_body(f, values, dims, span);
        self.calls.pop();
        result
    }

    fn arity(&mut self, f: &ast::Function, span: Span) -> Reported {
        let sig: Vec<&str> = f.params.iter().map(|p| p.name.name.as_str()).collect();
        self.error(
            Diagnostic::new(format!(
                "`{}` takes {} argument{}",
                f.name.name,
                f.params.len(),
                if f.params.len() == 1 { "" } else { "s" }
            ))
            .at(span, "wrong number of arguments")
            .also(f.name.span, "defined here")
            .hint(format!("call it as `{}({})`", f.name.name, sig.join(", "))),
        )
    }

    /// Checks one argument against its declared type and binds the dimension names it fixes.
    fn bind_param(
        &mut self,
        f: &ast::Function,
        p: &ast::FnParam,
        v: Value,
        vspan: Span,
        dims: &mut HashMap<String, Dim>,
        call: Span,
    ) -> R<(Value, Span)> {
        match &p.ty.kind {
            TypeKind::Scalar(k) => {
                let elem = elem_of(*k);
                if let (Elem::Int, Value::Dim(_)) = (elem, &v) {
                    return Ok((v, vspan));
                }
                let h = self.scalar_of(v, vspan, elem, &format!("argument `{}`", p.name.name))?;
                Ok((Value::Node(h), vspan))
            }
            TypeKind::Tensor { elem, dims: declared } => {
                let h = self.node_as(v, vspan, elem_of(*elem))?;
                let actual = self.ty(h).shape.clone();
                let mismatch = |this: &mut Self, detail: String| {
                    let have = this.shape_text(&this.ty(h).clone());
                    this.error(
                        Diagnostic::new(format!(
                            "argument `{}` of `{}` has shape {have}, {detail}",
                            p.name.name, f.name.name
                        ))
                        .at(vspan, format!("this is {have}"))
                        .also(p.ty.span, "declared here")
                        .also(call, "in this call")
                        .hint("pass a tensor of the declared shape, or reshape it (`x[:, None]`, `.T`, slices)"),
                    )
                };
                if declared.len() != actual.len() {
                    return Err(mismatch(self, format!("but the parameter has rank {}", declared.len())));
                }
                // Plain names first, so `[N, 2*N]` can be checked once `N` is known.
                for (d, a) in declared.iter().zip(&actual) {
                    if let ExprKind::Name(n) = &d.kind {
                        match dims.get(n) {
                            Some(prev) if prev != a => {
                                let prev = prev.display(&self.module.dims).to_string();
                                return Err(mismatch(self, format!("but `{n}` is already {prev}")));
                            }
                            Some(_) => {}
                            None => {
                                dims.insert(n.clone(), a.clone());
                            }
                        }
                    }
                }
                for (d, a) in declared.iter().zip(&actual) {
                    solve_single_name(d, a, dims);
                    let mut lookup = |n: &str, _s: Span| dims.get(n).cloned();
                    match dim_expr(d, &mut lookup) {
                        Ok(want) if want == *a => {}
                        Ok(want) => {
                            let want = want.display(&self.module.dims).to_string();
                            return Err(mismatch(self, format!("but the parameter needs {want} there")));
                        }
                        Err(diag) => return Err(self.error(diag)),
                    }
                }
                Ok((Value::Node(h), vspan))
            }
        }
    }

    /// Lowers a function body with its parameters bound, checking the declared return type.
    pub(super) fn inline_body(
        &mut self,
        f: &ast::Function,
        args: Vec<(Value, Span)>,
        dims: HashMap<String, Dim>,
        call: Span,
    ) -> R<Value> {
        let mut scope: HashMap<String, Local> = HashMap::new();
        for (name, d) in &dims {
            scope.insert(name.clone(), Local { value: Value::Dim(d.clone()), mutable: false, span: call });
        }
        for (p, (v, _)) in f.params.iter().zip(args) {
            scope.insert(p.name.name.clone(), Local { value: v, mutable: false, span: p.name.span });
        }
        let saved_scopes = std::mem::replace(&mut self.scopes, vec![scope]);
        let saved_context = std::mem::replace(&mut self.context, Context::Function);
        let saved_objective = self.objective.take();
        let result = self.function_statements(f, &dims);
        self.scopes = saved_scopes;
        self.context = saved_context;
        self.objective = saved_objective;
        result
    }

    fn function_statements(&mut self, f: &ast::Function, dims: &HashMap<String, Dim>) -> R<Value> {
        let Some((last, rest)) = f.body.split_last() else {
            return Err(self.missing_return(f));
        };
        for s in rest {
            if let Stmt::Return { span, .. } = s {
                return Err(self.error(
                    Diagnostic::new("`return` must be the last statement")
                        .at(*span, "code after this is unreachable")
                        .hint("move the `return` to the end of the function"),
                ));
            }
            self.stmt(s, true)?;
        }
        let Stmt::Return { value, span } = last else {
            return Err(self.missing_return(f));
        };
        let v = self.expr(value)?;
        // Check the declared return type.
        match &f.ret.kind {
            TypeKind::Scalar(k) => {
                if let (Elem::Int, Value::Dim(_)) = (elem_of(*k), &v) {
                    return Ok(v);
                }
                let h = self.scalar_of(v, value.span, elem_of(*k), &format!("the result of `{}`", f.name.name))?;
                Ok(Value::Node(h))
            }
            TypeKind::Tensor { elem, dims: declared } => {
                let h = self.node_as(v, value.span, elem_of(*elem))?;
                let mut want = Vec::new();
                for d in declared {
                    let mut lookup = |n: &str, _s: Span| dims.get(n).cloned();
                    match dim_expr(d, &mut lookup) {
                        Ok(x) => want.push(x),
                        Err(diag) => return Err(self.error(diag)),
                    }
                }
                if self.ty(h).shape != want {
                    let have = self.shape_text(&self.ty(h).clone());
                    let want = crate::ir::display_shape(&want, &self.module.dims).to_string();
                    return Err(self.error(
                        Diagnostic::new(format!("`{}` returns {have}, but is declared to return {want}", f.name.name))
                            .at(*span, format!("this is {have}"))
                            .also(f.ret.span, "declared here")
                            .hint("fix the declared return type or the returned expression"),
                    ));
                }
                Ok(Value::Node(h))
            }
        }
    }

    fn missing_return(&mut self, f: &ast::Function) -> Reported {
        self.error(
            Diagnostic::new(format!("`{}` does not end with `return`", f.name.name))
                .at(f.name.span, "no result")
                .hint("end the body with `return <expression>`"),
        )
    }
}

/// Binds the one unbound name of a declared dimension like `2*N` from the actual size, when
/// the division is exact.
fn solve_single_name(declared: &ast::Expr, actual: &Dim, dims: &mut HashMap<String, Dim>) {
    let mut names = Vec::new();
    collect_names(declared, &mut names);
    names.retain(|n| !dims.contains_key(n));
    names.dedup();
    let [name] = names.as_slice() else { return };
    let at = |v: i64| {
        let mut lookup = |n: &str, _s: Span| if n == name { Some(Dim::constant(v)) } else { dims.get(n).cloned() };
        dim_expr(declared, &mut lookup).ok().and_then(|d| d.as_constant())
    };
    let (Some(k), Some(ck)) = (at(0), at(1)) else { return };
    if let Some(solution) = actual.sub(&Dim::constant(k)).div_exact(ck - k) {
        dims.insert(name.clone(), solution);
    }
}

fn collect_names(e: &ast::Expr, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Name(n) => out.push(n.clone()),
        ExprKind::Binary { lhs, rhs, .. } => {
            collect_names(lhs, out);
            collect_names(rhs, out);
        }
        ExprKind::Unary { arg, .. } => collect_names(arg, out),
        _ => {}
    }
}
