//! Names: locals, objective-level declarations (lowered on first use) and built-in values,
//! with "did you mean" hints for the rest.

use super::{Context, Lower, ObjName, Reported, Value, R};
use crate::diag::Diagnostic;
use crate::front::ast;
use crate::ir::{BuiltinValue, Dim, DimKind, Expr, Literal};
use crate::span::Span;
use std::collections::HashSet;

impl<'a> Lower<'a> {
    pub(super) fn name(&mut self, n: &str, span: Span) -> R<Value> {
        for scope in self.scopes.iter().rev() {
            if let Some(local) = scope.get(n) {
                return Ok(local.value.clone());
            }
        }
        if let Some(obj) = self.objective {
            if let Some(&(what, decl_span)) = obj.names.get(n) {
                return self.objective_name(n, what, span, decl_span);
            }
        }
        if let Some(b) = super::builtins::builtin_value(n) {
            return self.builtin_value(n, b, span);
        }
        if self.functions.contains_key(n) || super::builtins::is_builtin(n) {
            return Err(self.error(
                Diagnostic::new(format!("`{n}` is a function"))
                    .at(span, "used as a value")
                    .hint(format!("call it: `{n}(...)`")),
            ));
        }
        let mut d = Diagnostic::new(format!("unknown name `{n}`")).at(span, "not found");
        d = d.hint(match self.similar_name(n) {
            Some(s) => format!("did you mean `{s}`?"),
            None if self.context == Context::Function => {
                "functions see only their parameters and local names; pass what you need as an argument".to_string()
            }
            None => "declare it (`param`, `input`, `const`, `learn`, `state`, `let`) before using it".to_string(),
        });
        Err(self.error(d))
    }

    pub(super) fn similar_name(&self, n: &str) -> Option<String> {
        let mut candidates: Vec<String> = self.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
        if let Some(obj) = self.objective {
            candidates.extend(obj.names.keys().cloned());
        }
        candidates.extend(self.functions.keys().cloned());
        candidates.extend(super::builtins::builtin_names().map(str::to_string));
        candidates
            .into_iter()
            .filter(|c| c != n)
            .map(|c| (edit_distance(&c, n), c))
            .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < n.len().max(2))
            .min()
            .map(|(_, c)| c)
    }

    fn unavailable(&mut self, n: &str, span: Span, why: &str) -> Reported {
        let ctx = self.context.describe();
        self.error(
            Diagnostic::new(format!("`{n}` is not available in {ctx}"))
                .at(span, "not available here")
                .hint(why.to_string()),
        )
    }

    fn objective_name(&mut self, n: &str, what: ObjName<'a>, span: Span, decl_span: Span) -> R<Value> {
        let ctx = self.context;
        match what {
            ObjName::Param(p) => Ok(Value::Node(self.push(Expr::Param(p), span)?)),
            ObjName::Dim(d) => Ok(Value::Dim(Dim::symbol(d))),
            ObjName::Input(i) => {
                if !matches!(ctx, Context::Loss | Context::Step) {
                    return Err(self.unavailable(
                        n,
                        span,
                        "embeddings exist only during a training step: the loss and `on step`",
                    ));
                }
                Ok(Value::Node(self.push(Expr::Input(i), span)?))
            }
            ObjName::Const(c) => Ok(Value::Node(self.push(Expr::Const(c), span)?)),
            ObjName::State(s) => {
                if ctx == Context::Schedule {
                    return Err(self.unavailable(n, span, "schedules depend on parameters and the epoch only"));
                }
                Ok(Value::Node(self.push(Expr::State(s), span)?))
            }
            ObjName::View(_) => Err(self.error(
                Diagnostic::new(format!("`{n}` is a view (images), not a tensor"))
                    .at(span, "a view")
                    .also(decl_span, "declared here")
                    .hint("views feed the encoder: `input z1: [N, D] = encoder(x1)`; use the input instead"),
            )),
            ObjName::Output(pos, expr) if ctx == Context::Step => {
                let _ = expr;
                Ok(Value::Node(self.push(Expr::Forward(pos), span)?))
            }
            ObjName::Output(_, expr) | ObjName::Let(expr) => {
                if ctx != Context::Loss && matches!(what, ObjName::Output(..)) {
                    return Err(self.unavailable(
                        n,
                        span,
                        "the loss's values exist only during a step: use them in the loss or `on step`",
                    ));
                }
                self.objective_value(n, expr, decl_span)
            }
        }
    }

    /// Lowers an objective-level binding once per program (names may be used before the line
    /// that defines them; a definition in terms of itself is an error).
    pub(super) fn objective_value(&mut self, n: &str, expr: &'a ast::Expr, decl_span: Span) -> R<Value> {
        if let Some(v) = self.cache.get(n) {
            return Ok(v.clone());
        }
        if !self.in_progress.insert(n.to_string()) {
            return Err(self.error(
                Diagnostic::new(format!("`{n}` is defined in terms of itself"))
                    .at(decl_span, "cyclic definition")
                    .hint("break the cycle: a value cannot depend on itself"),
            ));
        }
        // Objective-level expressions see no function locals.
        let saved_scopes = std::mem::take(&mut self.scopes);
        let saved_calls = std::mem::take(&mut self.calls);
        let v = self.lower_uses_first(expr).and_then(|()| self.expr(expr));
        self.scopes = saved_scopes;
        self.calls = saved_calls;
        self.in_progress.remove(n);
        let v = v?;
        if let Value::Node(h) = v {
            self.prog.names.entry(h).or_insert_with(|| n.to_string());
            self.prog.bindings.push((decl_span, h));
        }
        self.cache.insert(n.to_string(), v.clone());
        Ok(v)
    }

    /// Lowers the objective-level values `expr` uses (and theirs), deepest first, with an explicit
    /// stack: lowering each one then finds its own uses already lowered, so a chain of 5,000
    /// `let`s costs no recursion. Names being lowered are skipped; the lazy path reports the cycle.
    fn lower_uses_first(&mut self, expr: &'a ast::Expr) -> R<()> {
        let Some(obj) = self.objective else { return Ok(()) };
        let mut seen = HashSet::new();
        let mut stack: Vec<(&'a str, bool)> = Vec::new();
        let push_uses = |stack: &mut Vec<(&'a str, bool)>, e: &'a ast::Expr, lower: &Self| {
            for n in value_names(e) {
                let pending = matches!(obj.names.get(n), Some((ObjName::Let(_), _)))
                    || matches!(obj.names.get(n), Some((ObjName::Output(..), _)) if lower.context == Context::Loss);
                if pending && !lower.cache.contains_key(n) && !lower.in_progress.contains(n) {
                    stack.push((n, false));
                }
            }
        };
        push_uses(&mut stack, expr, self);
        while let Some((n, expanded)) = stack.pop() {
            if self.cache.contains_key(n) || self.in_progress.contains(n) {
                continue;
            }
            let &(what, decl_span) = obj.names.get(n).expect("pushed names are declared");
            if expanded {
                self.objective_name(n, what, decl_span, decl_span)?;
            } else if seen.insert(n) {
                stack.push((n, true));
                if let ObjName::Let(e) | ObjName::Output(_, e) = what {
                    push_uses(&mut stack, e, self);
                }
            }
        }
        Ok(())
    }

    fn builtin_value(&mut self, n: &str, b: super::builtins::BuiltinName, span: Span) -> R<Value> {
        use super::builtins::BuiltinName;
        let expr = match b {
            BuiltinName::Value(BuiltinValue::SampleIndex) => {
                if !matches!(self.context, Context::Loss | Context::Step | Context::ViewArg) {
                    return Err(self.unavailable(
                        n,
                        span,
                        "`index` is the batch's sample indices; it exists during a step",
                    ));
                }
                if self.module.batch_dim().is_none() {
                    return Err(self.unavailable(n, span, "`index` needs a batch: declare an input"));
                }
                Expr::Builtin(BuiltinValue::SampleIndex)
            }
            BuiltinName::Value(v) => Expr::Builtin(v),
            BuiltinName::Infinity => Expr::Literal(Literal::Real(f64::INFINITY)),
            BuiltinName::Samples => {
                let sym = self.module.dims.iter().find(|(_, d)| d.kind == DimKind::Samples).map(|(h, _)| h);
                match sym {
                    Some(s) => return Ok(Value::Dim(Dim::symbol(s))),
                    None => {
                        return Err(self.unavailable(
                            n,
                            span,
                            "`samples` is the dataset size; it exists once a state uses it",
                        ))
                    }
                }
            }
        };
        Ok(Value::Node(self.push(expr, span)?))
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The names `e` reads as values (not the functions it calls), found without recursion.
fn value_names(e: &ast::Expr) -> Vec<&str> {
    use ast::{ExprKind, IndexItem};
    let (mut names, mut todo) = (Vec::new(), vec![e]);
    while let Some(e) = todo.pop() {
        match &e.kind {
            ExprKind::Name(n) => names.push(n.as_str()),
            ExprKind::Number(_) | ExprKind::Int(_) | ExprKind::Percent(_) | ExprKind::Bool(_) => {}
            ExprKind::Unary { arg, .. } | ExprKind::Transpose(arg) => todo.push(arg),
            ExprKind::Binary { lhs, rhs, .. } => todo.extend([&**lhs, &**rhs]),
            ExprKind::Call { callee, args } => {
                if !matches!(callee.kind, ExprKind::Name(_)) {
                    todo.push(callee);
                }
                todo.extend(args.iter().map(|a| &a.value));
            }
            ExprKind::Index { base, items } => {
                todo.push(base);
                for item in items {
                    match item {
                        IndexItem::Slice { start, end, .. } => todo.extend(start.iter().chain(end.iter())),
                        IndexItem::NewAxis(_) => {}
                        IndexItem::Expr(e) => todo.push(e),
                    }
                }
            }
            ExprKind::If { cond, then, otherwise } => todo.extend([&**cond, &**then, &**otherwise]),
            ExprKind::List(items) => todo.extend(items.iter()),
        }
    }
    names
}
