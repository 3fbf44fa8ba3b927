//! The initial values of `const`, `learn` and `state` declarations, and a `learn` tensor's
//! optimizer options: all are literals the compiler evaluates itself, so they have a module
//! of their own, apart from the lowering of programs.

use super::dim_expr;
use crate::diag::Diagnostic;
use crate::front::ast::{self, ExprKind, UnaryOp};
use crate::ir::{ConstInit, Dim, DimKind, Elem, LearnOptions, Module, StateInit, Type};
use crate::span::Span;

/// The value of a constant initialiser — `zeros`, `ones`, `full(v)` or a number — if `e` is one.
fn fill_value(e: &ast::Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Name(n) if n == "zeros" => Some(0.0),
        ExprKind::Name(n) if n == "ones" => Some(1.0),
        ExprKind::Call { callee, args } if matches!(&callee.kind, ExprKind::Name(n) if n == "full") => {
            match &args[..] {
                [a] if a.name.is_none() => number(&a.value),
                _ => None,
            }
        }
        _ => number(e),
    }
}

/// A finite number literal, possibly negated.
fn number(e: &ast::Expr) -> Option<f64> {
    let v = match &e.kind {
        ExprKind::Number(v) => *v,
        ExprKind::Int(v) => *v as f64,
        ExprKind::Unary { op: UnaryOp::Neg, arg } => -number(arg)?,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

pub(super) fn const_init(e: &ast::Expr, ty: &Type, module: &Module, diags: &mut Vec<Diagnostic>) -> Option<ConstInit> {
    let hint = "constants are built by the compiler: `etf(K, D)` (a simplex ETF), `randn(seed)`, or `zeros`, \
                `ones`, `full(v)`; `labels` is the training set's classes, `[samples]`";
    if let Some(v) = fill_value(e) {
        if ty.elem != Elem::Real {
            diags.push(
                Diagnostic::new("constant tensors built by the compiler are real")
                    .at(e.span, "not a real tensor")
                    .hint("declare it real, e.g. `learn log_scale: [1] = zeros`"),
            );
            return None;
        }
        return Some(ConstInit::Fill(v));
    }
    if matches!(&e.kind, ExprKind::Name(n) if n == "labels") {
        let per_sample = ty.rank() == 1
            && ty.elem == Elem::Real
            && ty.shape[0].as_symbol().is_some_and(|s| module.dims[s].kind == DimKind::Samples);
        if !per_sample {
            diags.push(
                Diagnostic::new("`labels` holds one class per training sample: declare it `[samples]`")
                    .at(e.span, "the declared shape is not `[samples]`")
                    .hint("write `const y: [samples] = labels`, then `y[index]` is the batch's classes"),
            );
            return None;
        }
        return Some(ConstInit::Labels);
    }
    let ExprKind::Call { callee, args } = &e.kind else {
        diags.push(
            Diagnostic::new("unsupported constant")
                .at(e.span, "expected `etf(...)`, `randn(...)`, `zeros`, `ones`, `full(v)` or `labels`")
                .hint(hint),
        );
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

pub(super) fn state_init(e: &ast::Expr, ty: &Type, diags: &mut Vec<Diagnostic>) -> Option<StateInit> {
    let init = match &e.kind {
        _ if fill_value(e).is_some() => fill_value(e).map(StateInit::Fill),
        ExprKind::Name(n) if n == "uniform" && ty.rank() > 0 => Some(StateInit::Uniform),
        ExprKind::Call { callee, args } if matches!(&callee.kind, ExprKind::Name(n) if n == "randn") => {
            match args.iter().map(|a| (&a.name, &a.value.kind)).collect::<Vec<_>>()[..] {
                [] => Some(StateInit::Randn { seed: 0 }),
                [(None, ExprKind::Int(seed))] if *seed >= 0 => Some(StateInit::Randn { seed: *seed as u64 }),
                _ => None,
            }
        }
        _ => None,
    };
    if init.is_none() || ty.elem != Elem::Real {
        diags.push(
            Diagnostic::new("unsupported state initialiser")
                .at(e.span, "expected `zeros`, `ones`, `full(v)`, `uniform`, `randn(seed)` or a number")
                .hint(
                    "state is a real tensor: `state pi: [K] = uniform`, `state e: [samples, K] = zeros`, \
                     `state queue: [Q, D] = randn(1)`",
                ),
        );
    }
    init
}

/// A `learn` tensor's optimizer options, `decay=` and `lr_scale=`, each a non-negative number;
/// a `const` takes none.
pub(super) fn learn_options(options: &[ast::Arg], learned: bool, diags: &mut Vec<Diagnostic>) -> Option<LearnOptions> {
    let hint = "a `learn` tensor takes `decay=` (a factor on the run's weight decay; 0 keeps it out) and \
                `lr_scale=` (a factor on the learning rate): `learn log_scale: [1] = zeros, decay=0, lr_scale=0.1`";
    let mut out = LearnOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    for a in options {
        let Some(key) = &a.name else {
            diags
                .push(Diagnostic::new("an optimizer option needs a name").at(a.value.span, "which option?").hint(hint));
            return None;
        };
        if !learned {
            diags.push(
                Diagnostic::new("only a `learn` tensor has optimizer options")
                    .at(key.span, "a `const` is not trained")
                    .hint(hint),
            );
            return None;
        }
        let slot = match key.name.as_str() {
            "decay" => &mut out.decay,
            "lr_scale" => &mut out.lr_scale,
            other => {
                diags.push(
                    Diagnostic::new(format!("unknown optimizer option `{other}`"))
                        .at(key.span, "not an option")
                        .hint(hint),
                );
                return None;
            }
        };
        if seen.contains(&key.name.as_str()) {
            diags.push(Diagnostic::new(format!("`{}` is given twice", key.name)).at(key.span, "again here").hint(hint));
            return None;
        }
        seen.push(&key.name);
        match number(&a.value) {
            Some(v) if v >= 0.0 => *slot = v,
            _ => {
                diags.push(
                    Diagnostic::new(format!("`{}` must be a non-negative number", key.name))
                        .at(a.value.span, "not a non-negative number literal")
                        .hint(hint),
                );
                return None;
            }
        }
    }
    Some(out)
}
