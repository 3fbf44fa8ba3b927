//! AST → IR: name resolution, function inlining, shape checking.
//!
//! Lowering is where a user's mistakes are found, so every error is a [`Diagnostic`] pointing at
//! the offending text (and, inside an inlined function, at the call that instantiated it).
//! Functions are checked twice: once generically with their own symbolic dimensions (so a
//! library file checks on its own), and again at every call with the caller's shapes.

use super::ast::{self, ExprKind, IndexItem, Member, ScalarKind, Stmt, TypeExpr, TypeKind};
use super::ParsedFile;
use crate::diag::Diagnostic;
use crate::ir::{
    BinaryOp, Block, BuiltinValue, Carried, ConstDecl, ConstInit, Dim, DimDecl, DimKind, Elem, EncoderSource, Event,
    Expr, Handle, Handler, InputDecl, Literal, Module, Output, ParamDecl, ParamValue, Program, ScheduleDecl, StateDecl,
    StateInit, StateUpdate, Type, UnaryOp, ViewsDecl,
};
use crate::span::Span;
use crate::valid;
use std::collections::{HashMap, HashSet};

/// The result of lowering one root file: one module per objective it declares.
pub struct LoweredFile {
    pub modules: Vec<Module>,
}

/// An error has been recorded in the lowerer's diagnostics; the caller abandons the construct.
#[derive(Debug)]
pub(super) struct Reported;
pub(super) type R<T> = Result<T, Reported>;

/// A value during lowering. Sizes stay symbolic (`Dim`) as long as they can, so `eye(2*N)`
/// has shape `[2*N, 2*N]`; everything else is an IR node.
#[derive(Clone, Debug)]
pub(super) enum Value {
    Node(Handle<Expr>),
    Dim(Dim),
    List(Vec<(Value, Span)>),
}

type Functions<'a> = HashMap<String, &'a ast::Function>;

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
    for f in functions.values() {
        check_function(f, &functions, &mut diags);
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
        Ok(LoweredFile { modules })
    } else {
        Err(diags)
    }
}

/// Checks a function on its own: parameter shapes become fresh symbolic dimensions.
fn check_function(f: &ast::Function, functions: &Functions, diags: &mut Vec<Diagnostic>) {
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
                    source: EncoderSource { view: 0, pruned: None },
                    doc: String::new(),
                    span: p.name.span,
                });
                param_values.push((p.name.name.clone(), h, p.name.span));
            }
            None => ok = false,
        }
    }
    if !ok {
        return;
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
    diags.extend(lw.diags);
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

fn elem_of(k: ScalarKind) -> Elem {
    match k {
        ScalarKind::F32 => Elem::Real,
        ScalarKind::Int => Elem::Int,
        ScalarKind::Bool => Elem::Bool,
    }
}

/// Evaluates a dimension expression (`N`, `2*N`, `N + 1`, `100`) to an affine [`Dim`].
fn dim_expr(e: &ast::Expr, lookup: &mut dyn FnMut(&str, Span) -> Option<Dim>) -> Result<Dim, Diagnostic> {
    let bad = || {
        Diagnostic::new("not a dimension")
            .at(e.span, "expected a size")
            .hint("a dimension is a name, an integer, or `+`, `-`, `*` of those (e.g. `2*N`)")
    };
    match &e.kind {
        ExprKind::Int(v) => Ok(Dim::constant(*v)),
        ExprKind::Name(n) => lookup(n, e.span).ok_or_else(|| {
            Diagnostic::new(format!("unknown dimension `{n}`"))
                .at(e.span, "not a dimension in scope")
                .hint("dimensions are introduced by the shapes of inputs and function parameters, or by `dim K = 100`")
        }),
        ExprKind::Binary { op, lhs, rhs } => {
            let l = dim_expr(lhs, lookup)?;
            let r = dim_expr(rhs, lookup)?;
            match op {
                ast::BinaryOp::Add => Ok(l.add(&r)),
                ast::BinaryOp::Sub => Ok(l.sub(&r)),
                ast::BinaryOp::Mul => match (l.as_constant(), r.as_constant()) {
                    (Some(c), _) => Ok(r.scale(c)),
                    (_, Some(c)) => Ok(l.scale(c)),
                    _ => Err(bad().hint("a product of two dimensions is not supported; one factor must be an integer")),
                },
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

// ---- objectives --------------------------------------------------------------------------

/// What a name at objective level refers to.
#[derive(Clone, Copy)]
enum ObjName<'a> {
    Param(Handle<ParamDecl>),
    Dim(crate::ir::DimSym),
    Input(Handle<InputDecl>),
    Const(Handle<ConstDecl>),
    State(Handle<StateDecl>),
    View(usize),
    Let(&'a ast::Expr),
    /// A loss-program output (`per_sample`, a metric) and its position among the outputs.
    Output(usize, &'a ast::Expr),
}

struct ObjectiveScope<'a> {
    names: HashMap<String, (ObjName<'a>, Span)>,
}

/// Where a program runs decides which names it may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Function,
    Loss,
    Step,
    Epoch,
    ViewArg,
    Schedule,
}

impl Context {
    fn describe(self) -> &'static str {
        match self {
            Context::Function => "a function body",
            Context::Loss => "the loss",
            Context::Step => "`on step`",
            Context::Epoch => "`on epoch`",
            Context::ViewArg => "an augmentation argument",
            Context::Schedule => "a schedule",
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
                if let Some(prev) = views_member.replace(m) {
                    if let Member::Views { span: prev_span, .. } = prev {
                        diags.push(
                            Diagnostic::new("`views` is declared twice")
                                .at(*span, "second declaration")
                                .also(*prev_span, "first declaration")
                                .hint("an objective has one pair of views"),
                        );
                    }
                }
                for (i, n) in names.iter().enumerate() {
                    declare(&mut scope, diags, n, ObjName::View(i));
                }
            }
            _ => {}
        }
    }

    // Phase 2: inputs (their shapes introduce the batch and free dimensions).
    for m in members {
        if let Member::Input { doc, name, ty, source, span } = m {
            let is_first = module.inputs.is_empty();
            let Some(t) = declare_type(&mut module, ty, DimKind::Free, diags) else { continue };
            if t.elem != Elem::Real || t.rank() == 0 {
                diags.push(
                    Diagnostic::new("an input is a real tensor whose first axis is the batch")
                        .at(ty.span, "not a batch of embeddings")
                        .hint("write e.g. `input z1: [N, D] = encoder(x1)`"),
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
            let Some(src) = encoder_source(source, &scope, &module, diags) else { continue };
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
            Member::Const { doc, name, ty, init, span } => {
                let Some(t) = declare_type_known(&mut module, ty, diags) else { continue };
                let Some(init) = const_init(init, &t, &module, diags) else { continue };
                let h = module.consts.append(ConstDecl {
                    name: name.name.clone(),
                    ty: t,
                    init,
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
    if views.is_none() {
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
    diags: &mut Vec<Diagnostic>,
) -> Option<EncoderSource> {
    let hint = "write `encoder(x1)`, or `encoder(x2, pruned=prune_percent)` for SDCLR's pruned branch";
    let ExprKind::Call { callee, args } = &e.kind else {
        diags.push(Diagnostic::new("an input comes from the encoder").at(e.span, "expected `encoder(...)`").hint(hint));
        return None;
    };
    if !matches!(&callee.kind, ExprKind::Name(n) if n == "encoder") {
        diags.push(Diagnostic::new("an input comes from the encoder").at(callee.span, "expected `encoder`").hint(hint));
        return None;
    }
    let mut view = None;
    let mut pruned = None;
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
                    diags.push(
                        Diagnostic::new(format!("`{n}` is not a parameter"))
                            .at(a.value.span, "expected a parameter")
                            .hint("declare it: `param prune_percent = 0.9`"),
                    );
                    return None;
                }
            },
            _ => {
                diags
                    .push(Diagnostic::new("unexpected encoder argument").at(a.value.span, "not understood").hint(hint));
                return None;
            }
        }
    }
    match view {
        Some(view) => Some(EncoderSource { view, pruned }),
        None => {
            diags.push(Diagnostic::new("`encoder` needs a view").at(e.span, "which view?").hint(hint));
            None
        }
    }
}

fn const_init(e: &ast::Expr, ty: &Type, module: &Module, diags: &mut Vec<Diagnostic>) -> Option<ConstInit> {
    let hint = "constants are built by the compiler: `etf(K, D)` (a simplex ETF) or `randn(seed)`";
    let ExprKind::Call { callee, args } = &e.kind else {
        diags
            .push(Diagnostic::new("unsupported constant").at(e.span, "expected `etf(...)` or `randn(...)`").hint(hint));
        return None;
    };
    let name = match &callee.kind {
        ExprKind::Name(n) => n.as_str(),
        _ => "",
    };
    let mut lookup = |n: &str, _s: Span| module.dim_named(n).map(Dim::symbol);
    match name {
        "etf" => {
            if args.len() != 2 || ty.rank() != 2 || ty.elem != Elem::Real {
                diags.push(
                    Diagnostic::new("`etf(K, D)` takes two dimensions and builds a `[K, D]` constant")
                        .at(e.span, "here")
                        .hint(hint),
                );
                return None;
            }
            let k = dim_expr(&args[0].value, &mut lookup).map_err(|d| diags.push(d)).ok()?;
            let d = dim_expr(&args[1].value, &mut lookup).map_err(|d| diags.push(d)).ok()?;
            if ty.shape != [k.clone(), d.clone()] {
                diags.push(
                    Diagnostic::new(format!(
                        "`etf({}, {})` builds {}, but the constant is declared {}",
                        k.display(&module.dims),
                        d.display(&module.dims),
                        crate::ir::display_shape(&[k.clone(), d.clone()], &module.dims),
                        ty.display(&module.dims)
                    ))
                    .at(e.span, "shape differs from the declaration")
                    .hint("make the declared shape match the arguments"),
                );
                return None;
            }
            let size = |dim: &Dim| {
                dim.eval(&|s| match module.dims[s].kind {
                    DimKind::Fixed(v) => Some(v),
                    _ => None,
                })
            };
            if let (Some(kv), Some(dv)) = (size(&k), size(&d)) {
                if kv > dv + 1 {
                    diags.push(
                        Diagnostic::new(format!(
                            "a simplex ETF of {kv} vectors needs at least {} dimensions, got {dv}",
                            kv - 1
                        ))
                        .at(e.span, "K > D + 1")
                        .hint("use fewer anchors (K <= D + 1)"),
                    );
                    return None;
                }
            }
            Some(ConstInit::Etf { k, d, seed: 0 })
        }
        "randn" => {
            let seed = match args.first().map(|a| &a.value.kind) {
                None => 0,
                Some(ExprKind::Int(s)) if *s >= 0 => *s as u64,
                _ => {
                    diags.push(Diagnostic::new("`randn` takes an optional integer seed").at(e.span, "here").hint(hint));
                    return None;
                }
            };
            Some(ConstInit::Randn { seed })
        }
        _ => {
            diags.push(
                Diagnostic::new(format!("`{name}` cannot build a constant")).at(e.span, "unsupported").hint(hint),
            );
            None
        }
    }
}

fn state_init(e: &ast::Expr, ty: &Type, diags: &mut Vec<Diagnostic>) -> Option<StateInit> {
    let init = match &e.kind {
        ExprKind::Name(n) if n == "zeros" => Some(StateInit::Fill(0.0)),
        ExprKind::Name(n) if n == "ones" => Some(StateInit::Fill(1.0)),
        ExprKind::Name(n) if n == "uniform" && ty.rank() > 0 => Some(StateInit::Uniform),
        ExprKind::Number(v) => Some(StateInit::Fill(*v)),
        ExprKind::Int(v) => Some(StateInit::Fill(*v as f64)),
        _ => None,
    };
    if init.is_none() || ty.elem != Elem::Real {
        diags.push(
            Diagnostic::new("unsupported state initialiser")
                .at(e.span, "expected `zeros`, `ones`, `uniform` or a number")
                .hint("state is a real tensor: `state pi: [K] = uniform`, `state e: [samples, K] = zeros`"),
        );
    }
    init
}

#[allow(clippy::too_many_arguments)]
fn lower_views(
    names: &[ast::Ident; 2],
    pipeline: &ast::Expr,
    span: Span,
    module: &Module,
    functions: &Functions,
    scope: &ObjectiveScope,
    diags: &mut Vec<Diagnostic>,
) -> Option<ViewsDecl> {
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
    Some(ViewsDecl { names: [names[0].name.clone(), names[1].name.clone()], pipeline: out, span })
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

// ---- the program builder -----------------------------------------------------------------

#[derive(Clone, Debug)]
struct Local {
    value: Value,
    mutable: bool,
    span: Span,
}

pub(super) struct Lower<'a> {
    pub(super) module: &'a Module,
    functions: &'a Functions<'a>,
    objective: Option<&'a ObjectiveScope<'a>>,
    context: Context,
    pub(super) prog: Program,
    blocks: Vec<Block>,
    scopes: Vec<HashMap<String, Local>>,
    /// Active function calls, outermost first, for recursion checks and error context.
    calls: Vec<(String, Span)>,
    /// Objective-level names already lowered in this program.
    cache: HashMap<String, Value>,
    in_progress: HashSet<String>,
    updates: Vec<StateUpdate>,
    pub(super) diags: Vec<Diagnostic>,
}

impl<'a> Lower<'a> {
    fn new(
        module: &'a Module,
        functions: &'a Functions<'a>,
        objective: Option<&'a ObjectiveScope<'a>>,
        context: Context,
    ) -> Self {
        Lower {
            module,
            functions,
            objective,
            context,
            prog: Program::default(),
            blocks: vec![Vec::new()],
            scopes: Vec::new(),
            calls: Vec::new(),
            cache: HashMap::new(),
            in_progress: HashSet::new(),
            updates: Vec::new(),
            diags: Vec::new(),
        }
    }

    fn finish(mut self) -> (Program, Vec<Diagnostic>) {
        self.prog.body = self.blocks.pop().unwrap_or_default();
        (self.prog, self.diags)
    }

    /// Records an error, adding the chain of calls that led to it.
    pub(super) fn error(&mut self, mut d: Diagnostic) -> Reported {
        for (name, span) in self.calls.iter().rev() {
            d = d.also(*span, format!("in this call to `{name}`"));
        }
        self.diags.push(d);
        Reported
    }

    /// Appends a node, typing it with the validation rules; a type error is reported at `span`.
    pub(super) fn push(&mut self, expr: Expr, span: Span) -> R<Handle<Expr>> {
        let ty = {
            let prog = &self.prog;
            valid::infer(self.module, &expr, &|h| prog.ty(h).clone())
        };
        match ty {
            Ok(ty) => Ok(self.push_typed(expr, ty, span)),
            Err(e) => Err(self.error(Diagnostic::new(e.to_string()).at(span, "here").hint(type_hint(&e)))),
        }
    }

    fn push_typed(&mut self, expr: Expr, ty: Type, span: Span) -> Handle<Expr> {
        let h = self.prog.append(expr, ty, span);
        self.blocks.last_mut().expect("a block is always open").push(h);
        h
    }

    pub(super) fn ty(&self, h: Handle<Expr>) -> &Type {
        self.prog.ty(h)
    }

    pub(super) fn shape_text(&self, t: &Type) -> String {
        t.display(&self.module.dims).to_string()
    }

    // ---- values ----

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

    fn scalar_real(&mut self, v: Value, span: Span, what: &str) -> R<Handle<Expr>> {
        self.scalar_of(v, span, Elem::Real, what)
    }

    /// A real scalar or a real `[N]` vector over the batch.
    fn per_sample_real(&mut self, v: Value, span: Span) -> R<Handle<Expr>> {
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

    fn check_output(&mut self, name: &str, v: Value, span: Span) -> R<Handle<Expr>> {
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

    // ---- expressions ----

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

    /// An element-wise binary operator with promotion and broadcasting.
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
    fn matmul(&mut self, l: Value, ls: Span, r: Value, rs: Span, span: Span) -> R<Handle<Expr>> {
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

    // ---- names ----

    fn name(&mut self, n: &str, span: Span) -> R<Value> {
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
            None => "declare it (`param`, `input`, `const`, `state`, `let`) before using it".to_string(),
        });
        Err(self.error(d))
    }

    fn similar_name(&self, n: &str) -> Option<String> {
        let mut candidates: Vec<String> = self.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
        if let Some(obj) = self.objective {
            candidates.extend(obj.names.keys().cloned());
        }
        candidates.extend(self.functions.keys().cloned());
        candidates.extend(super::builtins::BUILTIN_NAMES.iter().map(|s| s.to_string()));
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
    fn objective_value(&mut self, n: &str, expr: &ast::Expr, decl_span: Span) -> R<Value> {
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
        let v = self.expr(expr);
        self.scopes = saved_scopes;
        self.calls = saved_calls;
        self.in_progress.remove(n);
        let v = v?;
        if let Value::Node(h) = v {
            self.prog.names.entry(h).or_insert_with(|| n.to_string());
        }
        self.cache.insert(n.to_string(), v.clone());
        Ok(v)
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

    // ---- calls ----

    fn call(&mut self, callee: &ast::Expr, args: &[ast::Arg], span: Span) -> R<Value> {
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
    fn inline_body(
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

    // ---- statements ----

    /// Lowers a statement; `in_function` decides what assignments may target.
    fn stmt(&mut self, s: &Stmt, in_function: bool) -> R<()> {
        match s {
            Stmt::Let { name, ty, value, mutable, span } => {
                let v = self.expr(value)?;
                let v = match ty {
                    Some(te) => self.annotate(v, value.span, te)?,
                    None => v,
                };
                if let Value::Node(h) = &v {
                    self.prog.names.entry(*h).or_insert_with(|| name.name.clone());
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
        let state = self.objective.and_then(|o| match o.names.get(&target.name) {
            Some((ObjName::State(s), _)) => Some(*s),
            _ => None,
        });
        let Some(state) = state.filter(|_| !in_function && matches!(self.context, Context::Step | Context::Epoch))
        else {
            return Err(self.error(
                Diagnostic::new(format!("cannot assign `{}`", target.name))
                    .at(target.span, "not assignable here")
                    .hint("assign `var` locals in functions, and `state` in `on step` / `on epoch` handlers"),
            ));
        };
        if self.blocks.len() > 1 {
            return Err(self.error(
                Diagnostic::new("state cannot be assigned inside `repeat`")
                    .at(span, "inside a loop")
                    .hint("compute the value in the loop with a `var`, then assign the state after it"),
            ));
        }
        if let Some(prev) = self.updates.iter().find(|u| u.state == state) {
            let prev = prev.span;
            return Err(self.error(
                Diagnostic::new(format!("state `{}` is assigned twice in this handler", target.name))
                    .at(span, "second assignment")
                    .also(prev, "first assignment")
                    .hint("combine the updates into one expression"),
            ));
        }
        let st = self.module.states[state].ty.clone();
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
                    .also(self.module.states[state].span, "state declared here")
                    .hint("the new value must have the state's shape (rows of it for `state[index] = ...`)"),
            ));
        }
        self.updates.push(StateUpdate { state, rows, value: h, span });
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
                    let h = self.node(other, span)?;
                    h
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

fn collect_assigned(body: &[Stmt], out: &mut Vec<String>) {
    for s in body {
        match s {
            Stmt::Assign { target, .. } => out.push(target.name.clone()),
            Stmt::Repeat { body, .. } => collect_assigned(body, out),
            _ => {}
        }
    }
}

fn type_hint(e: &valid::TypeError) -> String {
    match e {
        valid::TypeError::ShapeMismatch { .. } => "make the shapes equal, or broadcast one with `x[:, None]`".into(),
        valid::TypeError::MatMulInner { .. } => "the inner sizes must agree; transpose one operand with `.T`".into(),
        valid::TypeError::Axis { .. } => "axes count from 0; -1 is the last".into(),
        valid::TypeError::Rank { .. } => "check the tensor's rank".into(),
        _ => "check the operands' shapes and types".into(),
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
