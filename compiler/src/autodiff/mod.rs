//! Reverse-mode automatic differentiation as an IR → IR transformation.
//!
//! [`differentiate`] copies a program and appends, in reverse order of the forward nodes, the
//! nodes that compute each adjoint; the result is an ordinary program whose extra outputs are
//! `grad_<input>`, so the same passes and back ends compile gradients and values alike. The
//! vector-Jacobian rule of every operation is in [`rules`], one per op.
//!
//! Only what the loss needs is differentiated: a node gets an adjoint when it depends on a
//! requested input through differentiable edges (not through `stopgrad`, a mask, an index or
//! an integer) and the loss depends on it. Gradients do not flow through `repeat`; a loop on
//! that path is rejected with a diagnostic pointing at it.

mod rules;

use crate::diag::Diagnostic;
use crate::ir::{
    BinaryOp, ConstDecl, Elem, Expr, Handle, InputDecl, Literal, Module, Output, Program, ReduceOp, Type, UnaryOp,
};
use crate::span::Span;
use std::collections::HashMap;

/// The name of the output holding d`of`/d`input`.
pub fn grad_output_name(input: &str) -> String {
    format!("grad_{input}")
}

/// A value the loss is differentiated with respect to: an embedding the encoder is trained
/// through, or a tensor the objective learns (`learn`), which the run's optimizer updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leaf {
    Input(Handle<InputDecl>),
    Learned(Handle<ConstDecl>),
}

impl Leaf {
    /// Every input, then every `learn` tensor, in declaration order: the order of the
    /// gradient outputs.
    pub fn every(module: &Module) -> Vec<Leaf> {
        let learned = module.consts.iter().filter(|(_, c)| c.learned).map(|(h, _)| Leaf::Learned(h));
        module.inputs.handles().map(Leaf::Input).chain(learned).collect()
    }

    /// The leaf an expression reads, if it is one (constants only when learned).
    fn of(module: &Module, e: &Expr) -> Option<Leaf> {
        match *e {
            Expr::Input(i) => Some(Leaf::Input(i)),
            Expr::Const(c) if module.consts[c].learned => Some(Leaf::Learned(c)),
            _ => None,
        }
    }

    pub fn name(self, module: &Module) -> &str {
        match self {
            Leaf::Input(i) => &module.inputs[i].name,
            Leaf::Learned(c) => &module.consts[c].name,
        }
    }

    fn ty(self, module: &Module) -> &Type {
        match self {
            Leaf::Input(i) => &module.inputs[i].ty,
            Leaf::Learned(c) => &module.consts[c].ty,
        }
    }

    fn span(self, module: &Module) -> Span {
        match self {
            Leaf::Input(i) => module.inputs[i].span,
            Leaf::Learned(c) => module.consts[c].span,
        }
    }
}

/// Appends to `forward` the gradient of its output `of` (a scalar) with respect to each leaf
/// in `wrt`, as outputs `grad_<name>`.
pub fn differentiate(module: &Module, forward: &Program, of: &str, wrt: &[Leaf]) -> Result<Program, Diagnostic> {
    differentiate_with(module, forward, of, wrt, &rules::vjp)
}

/// The adjoint contributions of one node: (operand, contribution) pairs.
pub(crate) type Contributions = Result<Vec<(Handle<Expr>, Handle<Expr>)>, Diagnostic>;

/// The shipped rules, for callers that swap one of them out (tests of the gradient checker).
pub(crate) fn standard_rule(g: &mut Grad, h: Handle<Expr>, adj: Handle<Expr>) -> Contributions {
    rules::vjp(g, h, adj)
}

/// A vector-Jacobian rule: the contributions of node `h`'s adjoint to its active operands.
pub(crate) type Rule =
    dyn Fn(&mut Grad, Handle<Expr>, Handle<Expr>) -> Result<Vec<(Handle<Expr>, Handle<Expr>)>, Diagnostic>;

/// [`differentiate`] with a replaceable rule set, so tests can prove that a wrong rule is caught.
pub(crate) fn differentiate_with(
    module: &Module,
    forward: &Program,
    of: &str,
    wrt: &[Leaf],
    rule: &Rule,
) -> Result<Program, Diagnostic> {
    let loss = forward
        .output(of)
        .ok_or_else(|| Diagnostic::new(format!("the program has no output `{of}` to differentiate")))?;
    if forward.ty(loss) != &crate::ir::Type::scalar(Elem::Real) {
        return Err(Diagnostic::new(format!("`{of}` must be a real scalar to be differentiated"))
            .at(forward.span(loss), "not a scalar"));
    }
    let active = active_nodes(module, forward, wrt);
    let needed = needed_nodes(forward, loss, &active)?;

    let mut g = Grad { module, prog: forward.clone(), active, tail: Vec::new() };
    let mut adjoint: HashMap<Handle<Expr>, Handle<Expr>> = HashMap::new();
    let mut grads: HashMap<Leaf, Handle<Expr>> = HashMap::new();
    let one = g.push(Expr::Literal(Literal::Real(1.0)), forward.span(loss))?;
    adjoint.insert(loss, one);

    for &h in forward.body.iter().rev() {
        if !needed[h.index()] {
            continue;
        }
        let Some(&adj) = adjoint.get(&h) else { continue };
        if let Some(leaf) = Leaf::of(module, &forward.exprs[h]) {
            let total = match grads.get(&leaf) {
                Some(&prev) => g.add(prev, adj, forward.span(h))?,
                None => adj,
            };
            grads.insert(leaf, total);
            continue;
        }
        for (operand, contribution) in rule(&mut g, h, adj)? {
            let total = match adjoint.get(&operand) {
                Some(&prev) => g.add(prev, contribution, forward.span(operand))?,
                None => contribution,
            };
            adjoint.insert(operand, total);
        }
    }

    for &leaf in wrt {
        let name = leaf.name(module);
        let value = match grads.get(&leaf) {
            Some(&v) => v,
            None => {
                // The loss does not depend on this leaf: its gradient is zero.
                let span = leaf.span(module);
                let shape = leaf.ty(module).shape.clone();
                let zero = g.push(Expr::Literal(Literal::Real(0.0)), span)?;
                g.push(Expr::Broadcast { arg: zero, shape }, span)?
            }
        };
        g.prog.outputs.push(Output { name: grad_output_name(name), value });
    }
    let mut prog = g.prog;
    prog.body.extend(g.tail);
    crate::valid::validate(module, &prog).map_err(|e| {
        Diagnostic::new(format!("internal compiler error in the gradient of `{}`: {e}", module.name))
            .hint("this is a bug in sslc's autodiff; please report it with the objective file")
    })?;
    Ok(prog)
}

/// Operands through which a gradient flows (masks, indices, counts and `stopgrad` stop it).
pub(crate) fn differentiable_operands(expr: &Expr) -> Vec<Handle<Expr>> {
    match expr {
        Expr::Unary { op: UnaryOp::Not, .. } => Vec::new(),
        Expr::Unary { arg, .. }
        | Expr::Broadcast { arg, .. }
        | Expr::ExpandDims { arg, .. }
        | Expr::Squeeze { arg, .. }
        | Expr::Transpose { arg }
        | Expr::Slice { arg, .. } => vec![*arg],
        Expr::Binary { op, lhs, rhs } if !op.is_comparison() && !op.is_logical() => vec![*lhs, *rhs],
        Expr::Select { on_true, on_false, .. } => vec![*on_true, *on_false],
        Expr::MatMul { lhs, rhs } => vec![*lhs, *rhs],
        Expr::Reduce { op, arg, .. } if *op != ReduceOp::ArgMax => vec![*arg],
        Expr::Concat { parts, .. } => parts.clone(),
        Expr::Gather { table, .. } => vec![*table],
        Expr::ScatterAdd { values, .. } => vec![*values],
        _ => Vec::new(),
    }
}

/// Nodes that depend on a requested leaf through differentiable edges.
fn active_nodes(module: &Module, p: &Program, wrt: &[Leaf]) -> Vec<bool> {
    let mut active = vec![false; p.exprs.len()];
    mark_active(module, p, &p.body, wrt, &mut active);
    active
}

fn mark_active(module: &Module, p: &Program, block: &[Handle<Expr>], wrt: &[Leaf], active: &mut Vec<bool>) {
    for &h in block {
        let e = &p.exprs[h];
        let real = p.ty(h).elem == Elem::Real;
        active[h.index()] = match e {
            Expr::Input(_) | Expr::Const(_) => Leaf::of(module, e).is_some_and(|leaf| wrt.contains(&leaf)),
            Expr::Loop { carried, body, .. } => {
                for c in carried {
                    active[c.param.index()] = active[c.init.index()];
                }
                // Iterate to a fixed point: a carried value becomes active once its next is.
                loop {
                    mark_active(module, p, body, wrt, active);
                    let mut changed = false;
                    for c in carried {
                        if active[c.next.index()] && !active[c.param.index()] {
                            active[c.param.index()] = true;
                            changed = true;
                        }
                    }
                    if !changed {
                        break;
                    }
                }
                carried.iter().any(|c| active[c.param.index()])
            }
            Expr::LoopOutput { looped, index } => match &p.exprs[*looped] {
                Expr::Loop { carried, .. } => active[carried[*index].param.index()],
                _ => false,
            },
            _ => real && differentiable_operands(e).iter().any(|o| active[o.index()]),
        };
    }
}

/// Active nodes the loss depends on; a loop among them is an error.
fn needed_nodes(p: &Program, loss: Handle<Expr>, active: &[bool]) -> Result<Vec<bool>, Diagnostic> {
    let mut needed = vec![false; p.exprs.len()];
    needed[loss.index()] = active[loss.index()];
    for &h in p.body.iter().rev() {
        if !needed[h.index()] {
            continue;
        }
        let e = &p.exprs[h];
        if let Expr::LoopOutput { looped, .. } = e {
            let diag = Diagnostic::new("the gradient would have to flow through a `repeat` loop");
            let diag = match p.call_sites.get(looped) {
                Some(&call) => diag
                    .at(call, "this call's result reaches the loss, and it is computed by a loop")
                    .also(p.span(*looped), "the loop"),
                None => diag.at(p.span(*looped), "this loop's result reaches the loss"),
            };
            return Err(diag.hint(
                "gradients do not flow through `repeat`: wrap the result in `stopgrad(...)` (as GH's Sinkhorn \
                 targets are), or compute it without a loop",
            ));
        }
        for o in differentiable_operands(e) {
            if active[o.index()] {
                needed[o.index()] = true;
            }
        }
    }
    Ok(needed)
}

/// Builds adjoint nodes: typed by the validation rules, appended after the forward program.
pub(crate) struct Grad<'m> {
    module: &'m Module,
    prog: Program,
    active: Vec<bool>,
    tail: Vec<Handle<Expr>>,
}

impl Grad<'_> {
    pub(crate) fn push(&mut self, expr: Expr, span: Span) -> Result<Handle<Expr>, Diagnostic> {
        let prog = &self.prog;
        let ty = crate::valid::infer(self.module, &expr, &|h| prog.ty(h).clone()).map_err(|e| {
            Diagnostic::new(format!("internal compiler error while differentiating: {e}"))
                .at(span, "differentiating this")
                .hint("this is a bug in sslc's autodiff; please report it with the objective file")
        })?;
        let h = self.prog.append(expr, ty, span);
        self.tail.push(h);
        Ok(h)
    }

    pub(crate) fn expr(&self, h: Handle<Expr>) -> &Expr {
        &self.prog.exprs[h]
    }
    pub(crate) fn ty(&self, h: Handle<Expr>) -> &crate::ir::Type {
        self.prog.ty(h)
    }
    pub(crate) fn span(&self, h: Handle<Expr>) -> Span {
        self.prog.span(h)
    }
    pub(crate) fn is_active(&self, h: Handle<Expr>) -> bool {
        self.active[h.index()]
    }
    pub(crate) fn binary(
        &mut self,
        op: BinaryOp,
        lhs: Handle<Expr>,
        rhs: Handle<Expr>,
        span: Span,
    ) -> Result<Handle<Expr>, Diagnostic> {
        self.push(Expr::Binary { op, lhs, rhs }, span)
    }
    pub(crate) fn add(&mut self, a: Handle<Expr>, b: Handle<Expr>, span: Span) -> Result<Handle<Expr>, Diagnostic> {
        self.binary(BinaryOp::Add, a, b, span)
    }
    /// A real constant with `like`'s shape.
    pub(crate) fn constant_like(
        &mut self,
        value: f64,
        like: Handle<Expr>,
        span: Span,
    ) -> Result<Handle<Expr>, Diagnostic> {
        let c = self.push(Expr::Literal(Literal::Real(value)), span)?;
        let shape = self.ty(like).shape.clone();
        if shape.is_empty() {
            return Ok(c);
        }
        self.push(Expr::Broadcast { arg: c, shape }, span)
    }
}
