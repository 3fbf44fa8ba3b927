//! Objectives: the entry point [`lower`], which checks every function on its own and lowers each
//! objective of the root file — its bases merged in, then its declarations, loss, schedules,
//! views and handlers.

use super::initialisers::{const_init, learn_options, state_init};
use super::{dim_expr, elem_of, Context, Functions, Lower, LoweredFile, ObjName, ObjectiveScope, Value};
use crate::diag::Diagnostic;
use crate::front::ast::{self, ExprKind, Member, Stmt, TypeExpr, TypeKind};
use crate::front::ParsedFile;
use crate::ir::{
    BinaryOp, ConstDecl, ConstInit, Dim, DimDecl, DimKind, Elem, EncoderSource, Event, Expr, Handle, Handler,
    InputDecl, Module, Momentum, Output, ParamDecl, ParamValue, ScheduleDecl, StateDecl, Type, ViewsDecl,
    DEFAULT_PREDICTOR_HIDDEN,
};
use crate::span::Span;
use std::collections::{HashMap, HashSet};

pub fn lower(files: &[ParsedFile]) -> Result<LoweredFile, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    for file in files {
        if file.ast.functions.is_empty() && file.ast.objectives.is_empty() {
            diags.push(
                Diagnostic::new(format!(
                    "`{}` declares nothing",
                    file.path
                        .file_name()
                        .map_or_else(|| file.path.display().to_string(), |n| n.to_string_lossy().into_owned())
                ))
                .at(Span::new(file.id, 0, 0), "no `fn`, `objective` or `mixin` in this file")
                .hint("an objective file declares an `objective`; a library declares `fn`s (see docs/language.md)"),
            );
        }
    }
    let mut functions: Functions = HashMap::new();
    for file in files {
        for f in &file.ast.functions {
            if super::builtins::is_builtin(&f.name.name) {
                diags.push(
                    Diagnostic::new(format!("`{}` is a built-in function and cannot be redefined", f.name.name))
                        .at(f.name.span, "redefined here")
                        .hint("give your function another name"),
                );
            } else if let Some(prev) = functions.insert(f.name.name.clone(), f) {
                diags.push(
                    Diagnostic::new(format!("function `{}` is defined twice", f.name.name))
                        .at(f.name.span, "second definition")
                        .also(prev.name.span, "first definition")
                        .hint("rename one of them"),
                );
            }
        }
    }
    let mut checked: Vec<(Module, crate::ir::Program)> = Vec::new();
    for f in functions.values() {
        checked.extend(check_function(f, &functions, &mut diags));
    }
    let mut objectives: HashMap<String, &ast::Objective> = HashMap::new();
    for file in files {
        for o in &file.ast.objectives {
            if let Some(prev) = objectives.insert(o.name.name.clone(), o) {
                diags.push(
                    Diagnostic::new(format!("`{}` is defined twice", o.name.name))
                        .at(o.name.span, "second definition")
                        .also(prev.name.span, "first definition")
                        .hint("objectives and mixins share one namespace; rename one"),
                );
            }
        }
    }
    let mut modules = Vec::new();
    if let Some(root) = files.last() {
        for obj in root.ast.objectives.iter().filter(|o| !o.is_mixin) {
            let Some(members) = flatten(obj, &objectives, &mut Vec::new(), &mut diags) else { continue };
            let members = apply_overrides(members);
            if let Some(m) = lower_objective(obj, &members, &functions, &mut diags) {
                modules.push(m);
            }
        }
    }
    let mut seen = HashSet::new();
    diags.retain(|d| seen.insert((d.message.clone(), d.primary.as_ref().map(|p| p.0))));
    diags.sort_by_key(|d| d.primary.as_ref().map(|p| (p.0.file, p.0.start)));
    if diags.is_empty() {
        Ok(LoweredFile { modules, functions: checked })
    } else {
        Err(diags)
    }
}

/// Checks a function on its own: parameter shapes become fresh symbolic dimensions. Returns
/// the program so built, with the module holding its dimensions.
fn check_function(
    f: &ast::Function,
    functions: &Functions,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Module, crate::ir::Program)> {
    let mut module = Module { name: f.name.name.clone(), ..Module::default() };
    let mut param_values = Vec::new();
    let mut ok = true;
    for p in &f.params {
        let ty = declare_type(&mut module, &p.ty, DimKind::Free, diags);
        match ty {
            Some(ty) => {
                let h = module.inputs.append(InputDecl {
                    name: p.name.name.clone(),
                    ty,
                    source: EncoderSource::online(0),
                    doc: String::new(),
                    span: p.name.span,
                });
                param_values.push((p.name.name.clone(), h, p.name.span));
            }
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let mut lw = Lower::new(&module, functions, None, Context::Function);
    let mut args = Vec::new();
    for (_, h, span) in &param_values {
        if let Ok(node) = lw.push(Expr::Input(*h), *span) {
            args.push((Value::Node(node), *span));
        }
    }
    let dims: HashMap<String, Dim> = module.dims.iter().map(|(h, d)| (d.name.clone(), Dim::symbol(h))).collect();
    let _ = lw.inline_body(f, args, dims, f.span);
    let (program, found) = lw.finish();
    diags.extend(found);
    Some((module, program))
}

/// Turns a declared type into an IR type, creating dimensions for names not yet known.
fn declare_type(module: &mut Module, te: &TypeExpr, new_kind: DimKind, diags: &mut Vec<Diagnostic>) -> Option<Type> {
    match &te.kind {
        TypeKind::Scalar(k) => Some(Type::scalar(elem_of(*k))),
        TypeKind::Tensor { elem, dims } => {
            let mut shape = Vec::new();
            for d in dims {
                let mut lookup = |name: &str, _span: Span| -> Option<Dim> {
                    let sym = match module.dim_named(name) {
                        Some(s) => s,
                        None => {
                            module.dims.append(DimDecl { name: name.to_string(), kind: new_kind.clone(), span: d.span })
                        }
                    };
                    Some(Dim::symbol(sym))
                };
                match dim_expr(d, &mut lookup) {
                    Ok(dim) => shape.push(dim),
                    Err(diag) => {
                        diags.push(diag);
                        return None;
                    }
                }
            }
            Some(Type::tensor(elem_of(*elem), shape))
        }
    }
}

/// The members of `obj` with those of its bases first (bases in order, recursively), each
/// tagged with the objective it was written in.
fn flatten<'o>(
    obj: &'o ast::Objective,
    table: &HashMap<String, &'o ast::Objective>,
    stack: &mut Vec<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(&'o str, Member)>> {
    stack.push(obj.name.name.clone());
    let mut members = Vec::new();
    for base in &obj.extends {
        let Some(b) = table.get(&base.name) else {
            diags.push(
                Diagnostic::new(format!("unknown objective or mixin `{}`", base.name))
                    .at(base.span, "not found")
                    .hint("import the file that defines it"),
            );
            return None;
        };
        if stack.contains(&base.name) {
            diags.push(
                Diagnostic::new(format!("`{}` extends itself: {} → {}", obj.name.name, stack.join(" → "), base.name))
                    .at(base.span, "cyclic extension")
                    .hint("an objective cannot be its own base"),
            );
            return None;
        }
        members.extend(flatten(b, table, stack, diags)?);
    }
    stack.pop();
    members.extend(obj.members.iter().map(|m| (obj.name.name.as_str(), m.clone())));
    Some(members)
}

/// A declaration in a derived objective replaces the base's declaration of the same name;
/// `loss =` replaces the bases' loss terms, `loss +=` adds one; handlers all stay. Two
/// declarations of a name in the same objective both stay, to be reported as a duplicate.
fn apply_overrides(members: Vec<(&str, Member)>) -> Vec<Member> {
    let mut out: Vec<Option<(&str, Member)>> = Vec::new();
    let mut by_name: HashMap<String, (usize, &str)> = HashMap::new();
    for (origin, m) in members {
        let key = match &m {
            Member::Param { name, .. }
            | Member::Dim { name, .. }
            | Member::Input { name, .. }
            | Member::Const { name, .. }
            | Member::State { name, .. }
            | Member::Schedule { name, .. }
            | Member::Metric { name, .. }
            | Member::Let { name, .. } => Some(name.name.clone()),
            Member::Output { name, add: false, .. } if name.name != "loss" => Some(name.name.clone()),
            Member::Views { .. } => Some(" views".to_string()),
            Member::Output { add: false, .. } => {
                for slot in out.iter_mut() {
                    let inherited_loss =
                        matches!(slot, Some((o, Member::Output { name, .. })) if name.name == "loss" && *o != origin);
                    if inherited_loss {
                        *slot = None;
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(key) = key {
            if let Some((prev, prev_origin)) = by_name.insert(key, (out.len(), origin)) {
                if prev_origin != origin {
                    out[prev] = None;
                }
            }
        }
        out.push(Some((origin, m)));
    }
    out.into_iter().flatten().map(|(_, m)| m).collect()
}

fn declare<'a>(scope: &mut ObjectiveScope<'a>, diags: &mut Vec<Diagnostic>, name: &ast::Ident, what: ObjName<'a>) {
    if let Some((_, prev)) = scope.names.get(&name.name) {
        diags.push(
            Diagnostic::new(format!("`{}` is declared twice", name.name))
                .at(name.span, "second declaration")
                .also(*prev, "first declaration")
                .hint("each name in an objective is declared once"),
        );
        return;
    }
    if super::builtins::is_builtin(&name.name) || super::builtins::builtin_value(&name.name).is_some() {
        diags.push(
            Diagnostic::new(format!("`{}` is a built-in name", name.name))
                .at(name.span, "shadows a built-in")
                .hint("pick another name"),
        );
        return;
    }
    scope.names.insert(name.name.clone(), (what, name.span));
}

fn lower_objective<'a>(
    obj: &ast::Objective,
    members: &'a [Member],
    functions: &'a Functions<'a>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Module> {
    let mut module = Module { name: obj.name.name.clone(), doc: obj.doc.clone(), ..Module::default() };
    let mut scope = ObjectiveScope { names: HashMap::new() };
    let before = diags.len();
    // Phase 1: parameters, dimensions, views' names.
    let mut views_member = None;
    for m in members {
        match m {
            Member::Param { doc, name, value, span } => match param_value(value) {
                Ok(default) => {
                    let h = module.params.append(ParamDecl {
                        name: name.name.clone(),
                        default,
                        doc: doc.clone(),
                        span: *span,
                    });
                    declare(&mut scope, diags, name, ObjName::Param(h));
                }
                Err(d) => diags.push(d),
            },
            Member::Dim { doc: _, name, value, span } => match &value.kind {
                ExprKind::Int(v) if *v > 0 => {
                    let h =
                        module.dims.append(DimDecl { name: name.name.clone(), kind: DimKind::Fixed(*v), span: *span });
                    declare(&mut scope, diags, name, ObjName::Dim(h));
                }
                _ => diags.push(
                    Diagnostic::new("a `dim` needs a positive integer size")
                        .at(value.span, "not a positive integer")
                        .hint("write e.g. `dim K = 100`; override it at run time with `--set K=50`"),
                ),
            },
            Member::Views { names, span, .. } => {
                if let Some(Member::Views { span: prev_span, .. }) = views_member.replace(m) {
                    diags.push(
                        Diagnostic::new("`views` is declared twice")
                            .at(*span, "second declaration")
                            .also(*prev_span, "first declaration")
                            .hint("an objective has one pair of views"),
                    );
                }
                for (i, n) in names.iter().enumerate() {
                    declare(&mut scope, diags, n, ObjName::View(i));
                }
            }
            _ => {}
        }
    }

    // Phase 2: inputs (their shapes introduce the batch and free dimensions). A target
    // encoder's momentum may name a schedule, lowered later.
    let schedule_names: Vec<&str> = members
        .iter()
        .filter_map(|m| match m {
            Member::Schedule { name, .. } => Some(name.name.as_str()),
            _ => None,
        })
        .collect();
    for m in members {
        if let Member::Input { doc, name, ty, source, span } = m {
            let is_first = module.inputs.is_empty();
            let Some(t) = declare_type(&mut module, ty, DimKind::Free, diags) else { continue };
            // The encoder yields one embedding row per image: anything but `[batch, width]`
            // would pass the checks and fail at the first training step.
            if t.elem != Elem::Real || t.rank() != 2 {
                diags.push(
                    Diagnostic::new("an input is a batch of embeddings: a real matrix `[N, D]`")
                        .at(ty.span, "not a batch of embeddings")
                        .hint(
                            "write e.g. `input z1: [N, D] = encoder(x1)`; derive vectors in the body, \
                             e.g. `let w = sum(z1, axis=1)`",
                        ),
                );
                continue;
            }
            let first = t.shape[0].as_symbol();
            match (first, module.batch_dim()) {
                (Some(sym), None) if is_first => module.dims[sym].kind = DimKind::Batch,
                (Some(sym), Some(batch)) if sym == batch => {}
                _ => {
                    diags.push(
                        Diagnostic::new("every input's first axis must be the batch dimension")
                            .at(ty.span, "first axis is not the batch")
                            .hint("inputs share the batch: `input z2: [N, D]` where the first input is `[N, D]`"),
                    );
                    continue;
                }
            }
            let Some(src) = encoder_source(source, &scope, &module, &schedule_names, diags) else { continue };
            let h = module.inputs.append(InputDecl {
                name: name.name.clone(),
                ty: t,
                source: src,
                doc: doc.clone(),
                span: *span,
            });
            declare(&mut scope, diags, name, ObjName::Input(h));
        }
    }
    if module.inputs.is_empty() {
        diags.push(
            Diagnostic::new(format!("objective `{}` has no `input`", obj.name.name))
                .at(obj.name.span, "declares no embeddings")
                .hint("declare the embeddings the loss reads, e.g. `input z1: [N, D] = encoder(x1)`"),
        );
    }

    // Phase 3: constants and state.
    for m in members {
        match m {
            Member::Const { doc, name, ty, init, learned, options, span } => {
                let Some(t) = declare_type_known(&mut module, ty, diags) else { continue };
                if *learned && t.elem != Elem::Real {
                    diags.push(
                        Diagnostic::new("a `learn` tensor is trained by gradient descent, so it must be real")
                            .at(ty.span, "not a real tensor")
                            .hint("declare it real, e.g. `learn C: [K, D] = randn(0)`"),
                    );
                    continue;
                }
                let Some(init) = const_init(init, &t, &module, diags) else { continue };
                let Some(optimizer) = learn_options(options, *learned, diags) else { continue };
                if *learned && init == ConstInit::Labels {
                    diags.push(
                        Diagnostic::new("the labels are data, not a tensor to learn")
                            .at(*span, "`learn` of `labels`")
                            .hint("declare them `const y: [samples] = labels`"),
                    );
                    continue;
                }
                let h = module.consts.append(ConstDecl {
                    name: name.name.clone(),
                    ty: t,
                    init,
                    learned: *learned,
                    optimizer,
                    doc: doc.clone(),
                    span: *span,
                });
                declare(&mut scope, diags, name, ObjName::Const(h));
            }
            Member::State { doc, name, ty, init, span } => {
                let Some(t) = declare_type_known(&mut module, ty, diags) else { continue };
                let Some(init) = state_init(init, &t, diags) else { continue };
                let h = module.states.append(StateDecl {
                    name: name.name.clone(),
                    ty: t,
                    init,
                    doc: doc.clone(),
                    span: *span,
                });
                declare(&mut scope, diags, name, ObjName::State(h));
            }
            _ => {}
        }
    }

    // Phase 4: names of the loss program's values, and the order of its outputs: `loss` first,
    // `per_sample` second when present, then metrics in declaration order.
    let mut loss_terms: Vec<&ast::Expr> = Vec::new();
    let mut added = 0;
    let mut named: Vec<(String, &ast::Expr, Span)> = Vec::new();
    for m in members {
        match m {
            Member::Output { name, value, add, span } if name.name == "loss" => {
                if !add && loss_terms.len() > added {
                    diags.push(
                        Diagnostic::new("`loss` is assigned twice")
                            .at(*span, "second assignment")
                            .hint("sum the terms into one `loss = ...`, or add one with `loss += ...`"),
                    );
                }
                added += usize::from(*add);
                loss_terms.push(value);
            }
            Member::Output { name, value, add: true, .. } => diags.push(
                Diagnostic::new(format!("`{} +=` only adds loss terms", name.name))
                    .at(value.span, "not a loss term")
                    .hint("write `per_sample = ...`"),
            ),
            Member::Output { name, value, span, .. } => named.insert(0, (name.name.clone(), value, *span)),
            Member::Metric { name, value, span } => named.push((name.name.clone(), value, *span)),
            Member::Let { name, value, .. } => declare(&mut scope, diags, name, ObjName::Let(value)),
            _ => {}
        }
    }
    for (i, (n, value, span)) in named.iter().enumerate() {
        let ident = ast::Ident { name: n.clone(), span: *span };
        declare(&mut scope, diags, &ident, ObjName::Output(i + 1, value));
    }
    if loss_terms.is_empty() {
        diags.push(
            Diagnostic::new(format!("objective `{}` never assigns `loss`", obj.name.name))
                .at(obj.name.span, "no `loss = ...`")
                .hint("add `loss = mean(per_sample)` or another scalar"),
        );
    }
    if diags.len() > before {
        return None;
    }

    // The batch and the widths the inputs' shapes introduce (`N`, `D`) are values in the body,
    // as `dim` declarations are (`eye(N)`, `x / D`); a declaration of the same name wins.
    for (h, d) in module.dims.iter() {
        if matches!(d.kind, DimKind::Batch | DimKind::Free) {
            scope.names.entry(d.name.clone()).or_insert((ObjName::Dim(h), d.span));
        }
    }

    // Phase 5: programs.
    let mut lw = Lower::new(&module, functions, Some(&scope), Context::Loss);
    let mut total: Option<(Handle<Expr>, Span)> = None;
    for term in &loss_terms {
        let Ok(v) = lw.expr(term) else { continue };
        let Ok(h) = lw.check_output("loss", v, term.span) else { continue };
        total = Some(match total {
            None => (h, term.span),
            Some((acc, s)) => {
                match lw.elementwise(BinaryOp::Add, Value::Node(acc), s, Value::Node(h), term.span, "+=", term.span) {
                    Ok(sum) => (sum, s.to(term.span)),
                    Err(_) => continue,
                }
            }
        });
    }
    if let Some((h, _)) = total {
        lw.prog.outputs.push(Output { name: "loss".into(), value: h });
    }
    for (name, value, span) in &named {
        if let Ok(v) = lw.objective_value(name, value, *span) {
            if let Ok(node) = lw.check_output(name, v, *span) {
                lw.prog.outputs.push(Output { name: name.clone(), value: node });
            }
        }
    }
    for m in members {
        if let Member::Let { name, value, .. } = m {
            let _ = lw.objective_value(&name.name, value, name.span);
        }
    }
    let (loss, d) = lw.finish();
    diags.extend(d);
    module.loss = loss;

    let mut views = None;
    let mut schedules = Vec::new();
    let mut handlers = Vec::new();
    for m in members {
        match m {
            Member::Views { names, pipeline, span } => {
                views = lower_views(names, pipeline, *span, &module, functions, &scope, diags);
            }
            Member::Schedule { name, value, span } => {
                let mut lw = Lower::new(&module, functions, Some(&scope), Context::Schedule);
                if let Ok(v) = lw.expr(value) {
                    if let Ok(node) = lw.scalar_real(v, value.span, "a schedule") {
                        lw.prog.outputs.push(Output { name: "value".into(), value: node });
                    }
                }
                let (program, d) = lw.finish();
                diags.extend(d);
                schedules.push(ScheduleDecl { name: name.name.clone(), program, span: *span });
            }
            Member::OnStep { body, span } => {
                handlers.push(lower_handler(Event::Step, None, body, *span, &module, functions, &scope, diags))
            }
            Member::OnEpoch { when, body, span } => handlers.push(lower_handler(
                Event::Epoch,
                when.as_ref(),
                body,
                *span,
                &module,
                functions,
                &scope,
                diags,
            )),
            _ => {}
        }
    }
    // A `views` that failed to lower has its own diagnostic.
    if views.is_none() && !members.iter().any(|m| matches!(m, Member::Views { .. })) {
        diags.push(
            Diagnostic::new(format!("objective `{}` declares no `views`", obj.name.name))
                .at(obj.name.span, "no views")
                .hint("add `views x1, x2 = simclr_augment(x)`"),
        );
    }
    module.views = views;
    module.schedules = schedules;
    module.handlers = handlers.into_iter().flatten().collect();
    (diags.len() == before).then_some(module)
}

/// A declared type whose dimensions must already exist (const and state shapes), except the
/// built-in `samples`, created on first use.
fn declare_type_known(module: &mut Module, te: &TypeExpr, diags: &mut Vec<Diagnostic>) -> Option<Type> {
    if let TypeKind::Tensor { dims, .. } = &te.kind {
        for d in dims {
            let mut unknown = None;
            let mut probe = |name: &str, span: Span| {
                if name != "samples" && module.dim_named(name).is_none() && unknown.is_none() {
                    unknown = Some((name.to_string(), span));
                }
                Some(Dim::constant(1))
            };
            if dim_expr(d, &mut probe).is_ok() {
                if let Some((name, span)) = unknown {
                    diags.push(
                        Diagnostic::new(format!("unknown dimension `{name}`"))
                            .at(span, "not declared")
                            .hint(format!("declare it with `dim {name} = ...`, or use a dimension of an input")),
                    );
                    return None;
                }
            }
        }
    }
    declare_type(module, te, DimKind::Samples, diags)
}

fn param_value(e: &ast::Expr) -> Result<ParamValue, Diagnostic> {
    let (negate, inner) = match &e.kind {
        ExprKind::Unary { op: ast::UnaryOp::Neg, arg } => (true, arg.as_ref()),
        _ => (false, e),
    };
    let sign = if negate { -1.0 } else { 1.0 };
    match &inner.kind {
        ExprKind::Number(v) => Ok(ParamValue::Real(sign * v)),
        ExprKind::Int(v) => Ok(ParamValue::Int(if negate { -v } else { *v })),
        ExprKind::Percent(v) if !negate => Ok(ParamValue::RunFraction(*v)),
        _ => Err(Diagnostic::new("a parameter's default must be a number or a percentage of the run")
            .at(e.span, "not a literal")
            .hint("write e.g. `param tau = 0.2`, `param iters = 300` or `param warm_up = 50%`")),
    }
}

fn encoder_source(
    e: &ast::Expr,
    scope: &ObjectiveScope,
    module: &Module,
    schedules: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Option<EncoderSource> {
    let hint = "write `encoder(x1)`; `encoder(x2, pruned=prune_percent)` for SDCLR's pruned branch, \
                `encoder(x2, ema=momentum)` for a momentum target encoder, `predictor(encoder(x1))` for the \
                online predictor head";
    let ExprKind::Call { callee, args } = &e.kind else {
        diags.push(Diagnostic::new("an input comes from the encoder").at(e.span, "expected `encoder(...)`").hint(hint));
        return None;
    };
    if matches!(&callee.kind, ExprKind::Name(n) if n == "predictor") {
        return predictor_source(e, args, scope, module, schedules, diags);
    }
    if !matches!(&callee.kind, ExprKind::Name(n) if n == "encoder") {
        diags.push(Diagnostic::new("an input comes from the encoder").at(callee.span, "expected `encoder`").hint(hint));
        return None;
    }
    let mut view = None;
    let mut pruned = None;
    let mut ema = None;
    let not_a_parameter = |n: &str, span: Span, example: &str| {
        Diagnostic::new(format!("`{n}` is not a parameter"))
            .at(span, "expected a parameter")
            .hint(format!("declare it: `{example}`"))
    };
    for a in args {
        match (&a.name, &a.value.kind) {
            (None, ExprKind::Name(n)) if view.is_none() => match scope.names.get(n) {
                Some((ObjName::View(i), _)) => view = Some(*i),
                _ => {
                    diags.push(
                        Diagnostic::new(format!("`{n}` is not a view"))
                            .at(a.value.span, "expected a view name")
                            .hint("name one of the views declared by `views x1, x2 = ...` (declare them first)"),
                    );
                    return None;
                }
            },
            (Some(k), ExprKind::Name(n)) if k.name == "pruned" => match module.param_named(n) {
                Some(p) => pruned = Some(p),
                None => {
                    diags.push(not_a_parameter(n, a.value.span, "param prune_percent = 0.9"));
                    return None;
                }
            },
            (Some(k), ExprKind::Name(n)) if k.name == "ema" => {
                ema = match (module.param_named(n), schedules.contains(&n.as_str())) {
                    (Some(p), _) => Some(Momentum::Param(p)),
                    (None, true) => Some(Momentum::Schedule(n.clone())),
                    (None, false) => {
                        diags.push(
                            Diagnostic::new(format!("`{n}` is neither a parameter nor a schedule"))
                                .at(a.value.span, "expected the target encoder's momentum")
                                .hint(
                                    "declare a constant momentum, `param momentum = 0.99`, or one that changes each \
                                     epoch, `schedule momentum = 1 - 0.004 * (cos(3.141592653589793 * epoch / \
                                     epochs) + 1) / 2`",
                                ),
                        );
                        return None;
                    }
                };
            }
            _ => {
                diags
                    .push(Diagnostic::new("unexpected encoder argument").at(a.value.span, "not understood").hint(hint));
                return None;
            }
        }
    }
    if let (Some(_), Some(_)) = (pruned, &ema) {
        diags.push(
            Diagnostic::new("an embedding comes from either the pruned branch or the target encoder, not both")
                .at(e.span, "both `pruned` and `ema`")
                .hint("the momentum target encoder is a copy of the dense network; drop one of the two"),
        );
        return None;
    }
    match view {
        Some(view) => Some(EncoderSource { view, pruned, ema, predictor: None }),
        None => {
            diags.push(Diagnostic::new("`encoder` needs a view").at(e.span, "which view?").hint(hint));
            None
        }
    }
}

/// `predictor(encoder(x1))` or `predictor(encoder(x1), hidden=1024)`: the online predictor
/// head (BYOL, SimSiam) on an online embedding.
fn predictor_source(
    e: &ast::Expr,
    args: &[ast::Arg],
    scope: &ObjectiveScope,
    module: &Module,
    schedules: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Option<EncoderSource> {
    let hint =
        "write `predictor(encoder(x1))`, or `predictor(encoder(x1), hidden=1024)` to set the head's hidden width";
    let mut inner = None;
    let mut hidden = DEFAULT_PREDICTOR_HIDDEN;
    for a in args {
        match (&a.name, &a.value.kind) {
            (None, _) if inner.is_none() => inner = Some(&a.value),
            (Some(k), ExprKind::Int(v)) if k.name == "hidden" && (1..=1 << 20).contains(v) => hidden = *v as u32,
            _ => {
                diags.push(
                    Diagnostic::new("unexpected predictor argument").at(a.value.span, "not understood").hint(hint),
                );
                return None;
            }
        }
    }
    let Some(inner) = inner else {
        diags.push(Diagnostic::new("`predictor` needs an embedding").at(e.span, "of what?").hint(hint));
        return None;
    };
    let mut source = encoder_source(inner, scope, module, schedules, diags)?;
    if source.predictor.is_some() || source.pruned.is_some() || source.ema.is_some() {
        diags.push(
            Diagnostic::new("the predictor head reads the online encoder's embedding")
                .at(inner.span, "not the plain online encoder")
                .hint(
                    "BYOL and SimSiam put the predictor on the online branch only: `predictor(encoder(x1))`; the \
                     target `encoder(x2, ema=m)` has none",
                ),
        );
        return None;
    }
    source.predictor = Some(hidden);
    Some(source)
}

/// Small crops an objective may ask for (SwAV's ImageNet recipe uses 6).
const MAX_SMALL_CROPS: usize = 8;

#[allow(clippy::too_many_arguments)]
fn lower_views(
    names: &[ast::Ident],
    pipeline: &ast::Expr,
    span: Span,
    module: &Module,
    functions: &Functions,
    scope: &ObjectiveScope,
    diags: &mut Vec<Diagnostic>,
) -> Option<ViewsDecl> {
    if names.len() == 1 || names.len() > 2 + MAX_SMALL_CROPS {
        diags.push(
            Diagnostic::new(format!("{} views; an objective has two global views and at most {MAX_SMALL_CROPS} small crops", names.len()))
                .at(span, "here")
                .hint("write `views x1, x2 = simclr_augment(x)`, or name small crops after the two global views: `views x1, x2, s1, s2 = simclr_augment(x)`"),
        );
        return None;
    }
    let mut calls = Vec::new();
    flatten_plus(pipeline, &mut calls);
    let mut out = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let ExprKind::Call { callee, args } = &call.kind else {
            diags.push(
                Diagnostic::new("views are built by augmentation calls joined with `+`")
                    .at(call.span, "not a call")
                    .hint("write `views x1, x2 = simclr_augment(x) + randaugment(p=..., strength=...)`"),
            );
            return None;
        };
        let name = match &callee.kind {
            ExprKind::Name(n) => n.clone(),
            _ => String::new(),
        };
        let Some(spec) = super::builtins::augmentation(&name) else {
            diags.push(
                Diagnostic::new(format!("unknown augmentation `{name}`")).at(callee.span, "not an augmentation").hint(
                    format!(
                        "known augmentations: {}",
                        super::builtins::AUGMENTATIONS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                    ),
                ),
            );
            return None;
        };
        if spec.base != (i == 0) {
            diags.push(
                Diagnostic::new(if spec.base {
                    "a base pipeline must come first"
                } else {
                    "the pipeline must start with a base augmentation of `x`"
                })
                .at(call.span, "misplaced")
                .hint("write `simclr_augment(x)` first, then `+ extra(...)` augmentations"),
            );
            return None;
        }
        let mut lowered_args = Vec::new();
        if spec.base {
            if !matches!(args.as_slice(), [a] if a.name.is_none() && matches!(&a.value.kind, ExprKind::Name(n) if n == "x"))
            {
                diags.push(
                    Diagnostic::new(format!("`{name}` takes the dataset image `x`"))
                        .at(call.span, "expected one argument `x`")
                        .hint(format!("write `{name}(x)`")),
                );
                return None;
            }
        } else {
            for a in args {
                let Some(arg_name) = &a.name else {
                    diags.push(
                        Diagnostic::new("augmentation arguments are named")
                            .at(a.value.span, "unnamed")
                            .hint(format!("`{name}` takes {}", spec.args.join(", "))),
                    );
                    return None;
                };
                if !spec.args.contains(&arg_name.name.as_str()) {
                    diags.push(
                        Diagnostic::new(format!("`{name}` has no argument `{}`", arg_name.name))
                            .at(arg_name.span, "unknown argument")
                            .hint(format!("`{name}` takes {}", spec.args.join(", "))),
                    );
                    return None;
                }
                let mut lw = Lower::new(module, functions, Some(scope), Context::ViewArg);
                if let Ok(v) = lw.expr(&a.value) {
                    if let Ok(node) = lw.per_sample_real(v, a.value.span) {
                        lw.prog.outputs.push(Output { name: "value".into(), value: node });
                    }
                }
                let (program, d) = lw.finish();
                let failed = !d.is_empty();
                diags.extend(d);
                if failed {
                    return None;
                }
                lowered_args.push((arg_name.name.clone(), program));
            }
            for required in spec.args {
                if !lowered_args.iter().any(|(n, _)| n == required) {
                    diags.push(
                        Diagnostic::new(format!("`{name}` needs the argument `{required}`"))
                            .at(call.span, "missing argument")
                            .hint(format!("`{name}` takes {}", spec.args.join(", "))),
                    );
                    return None;
                }
            }
        }
        out.push(crate::ir::Augmentation { name, args: lowered_args, span: call.span });
    }
    Some(ViewsDecl { names: names.iter().map(|n| n.name.clone()).collect(), pipeline: out, span })
}

fn flatten_plus<'a>(e: &'a ast::Expr, out: &mut Vec<&'a ast::Expr>) {
    match &e.kind {
        ExprKind::Binary { op: ast::BinaryOp::Add, lhs, rhs } => {
            flatten_plus(lhs, out);
            flatten_plus(rhs, out);
        }
        _ => out.push(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn lower_handler(
    event: Event,
    when: Option<&ast::Expr>,
    body: &[Stmt],
    span: Span,
    module: &Module,
    functions: &Functions,
    scope: &ObjectiveScope,
    diags: &mut Vec<Diagnostic>,
) -> Option<Handler> {
    let context = if event == Event::Step { Context::Step } else { Context::Epoch };
    let mut lw = Lower::new(module, functions, Some(scope), context);
    let condition = when.and_then(|w| {
        let v = lw.expr(w).ok()?;
        lw.scalar_of(v, w.span, Elem::Bool, "a `when` condition").ok()
    });
    lw.scopes.push(HashMap::new());
    for s in body {
        let _ = lw.stmt(s, false);
    }
    let updates = std::mem::take(&mut lw.updates);
    let (program, d) = lw.finish();
    let failed = !d.is_empty();
    diags.extend(d);
    (!failed).then_some(Handler { event, program, condition, updates, span })
}
