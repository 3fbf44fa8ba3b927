//! Validation: the typing rules of every IR node, in one place.
//!
//! [`infer`] gives a node's type from its operands' types; lowering uses it to type nodes as it
//! builds them, and [`validate`] re-checks whole programs after any pass (autodiff, fusion), so a
//! pass that builds ill-typed or ill-ordered IR is caught at its source instead of in a back end.

use crate::ir::{
    display_shape, Block, Dim, Elem, Expr, Handle, KernelNode, Literal, Module, PairwiseLoad, PairwiseOperands,
    Program, ReduceOp, Type,
};
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TypeError {
    #[error("`{op}` needs operands of the same shape, got {lhs} and {rhs}")]
    ShapeMismatch { op: String, lhs: String, rhs: String },
    #[error("`{op}` needs {expected} operands, got {found}")]
    ElemMismatch { op: String, expected: String, found: String },
    #[error("matrix product of {lhs} and {rhs}: inner dimensions differ")]
    MatMulInner { lhs: String, rhs: String },
    #[error("`{op}` needs a tensor of rank {expected}, got rank {found}")]
    Rank { op: String, expected: String, found: usize },
    #[error("axis {axis} is out of range for rank {rank}")]
    Axis { axis: usize, rank: usize },
    #[error("cannot broadcast {from} to {to}")]
    Broadcast { from: String, to: String },
    #[error("{0}")]
    Other(String),
}

fn shape_text(module: &Module, t: &Type) -> String {
    t.display(&module.dims).to_string()
}

/// The type of `expr` given the types of its operands (`ty`) and the module's declarations.
pub fn infer(module: &Module, expr: &Expr, ty: &dyn Fn(Handle<Expr>) -> Type) -> Result<Type, TypeError> {
    let text = |t: &Type| shape_text(module, t);
    Ok(match expr {
        Expr::Literal(Literal::Real(_)) | Expr::RunFraction(_) => Type::scalar(Elem::Real),
        Expr::Literal(Literal::Int(_)) | Expr::DimSize(_) => Type::scalar(Elem::Int),
        Expr::Literal(Literal::Bool(_)) => Type::scalar(Elem::Bool),
        Expr::Param(p) => Type::scalar(module.params[*p].elem()),
        Expr::Input(i) => module.inputs[*i].ty.clone(),
        Expr::Const(c) => module.consts[*c].ty.clone(),
        Expr::State(s) => module.states[*s].ty.clone(),
        Expr::Builtin(b) => match b {
            crate::ir::BuiltinValue::SampleIndex => {
                let batch = module
                    .batch_dim()
                    .ok_or_else(|| TypeError::Other("`index` needs a batch dimension: declare an `input`".into()))?;
                Type::tensor(Elem::Int, vec![Dim::symbol(batch)])
            }
            _ => Type::scalar(Elem::Real),
        },
        Expr::Forward(i) => {
            let out = module.loss.outputs.get(*i).ok_or_else(|| TypeError::Other(format!("no loss output #{i}")))?;
            module.loss.ty(out.value).clone()
        }
        Expr::Iota { shape, axis } => {
            if *axis >= shape.len() {
                return Err(TypeError::Axis { axis: *axis, rank: shape.len() });
            }
            Type::tensor(Elem::Int, shape.clone())
        }
        Expr::Unary { op, arg } => {
            let t = ty(*arg);
            expect_domain(op.name(), t.elem, op.domain())?;
            t
        }
        Expr::Binary { op, lhs, rhs } => {
            let (l, r) = (ty(*lhs), ty(*rhs));
            let name = op.name();
            if l.shape != r.shape {
                return Err(TypeError::ShapeMismatch { op: name.into(), lhs: text(&l), rhs: text(&r) });
            }
            if l.elem != r.elem {
                return Err(TypeError::ElemMismatch {
                    op: name.into(),
                    expected: l.elem.name().into(),
                    found: r.elem.name().into(),
                });
            }
            expect_domain(name, l.elem, op.domain())?;
            Type::tensor(op.result_elem(l.elem), l.shape)
        }
        Expr::Select { cond, on_true, on_false } => {
            let (c, a, b) = (ty(*cond), ty(*on_true), ty(*on_false));
            expect_elem("select", &c, Elem::Bool)?;
            if a != b {
                return Err(TypeError::ShapeMismatch { op: "select".into(), lhs: text(&a), rhs: text(&b) });
            }
            if c.shape != a.shape {
                return Err(TypeError::ShapeMismatch { op: "select".into(), lhs: text(&c), rhs: text(&a) });
            }
            a
        }
        Expr::Cast { arg, to } => Type::tensor(*to, ty(*arg).shape),
        Expr::Broadcast { arg, shape } => {
            let t = ty(*arg);
            let target = Type::tensor(t.elem, shape.clone());
            if !broadcastable(&t.shape, shape) {
                return Err(TypeError::Broadcast { from: text(&t), to: text(&target) });
            }
            target
        }
        Expr::ExpandDims { arg, axis } => {
            let mut t = ty(*arg);
            if *axis > t.rank() {
                return Err(TypeError::Axis { axis: *axis, rank: t.rank() });
            }
            t.shape.insert(*axis, Dim::constant(1));
            t
        }
        Expr::Squeeze { arg, axis } => {
            let mut t = ty(*arg);
            if *axis >= t.rank() {
                return Err(TypeError::Axis { axis: *axis, rank: t.rank() });
            }
            if !t.shape[*axis].is_one() {
                return Err(TypeError::Other(format!(
                    "squeeze of axis {axis} of {}: the axis is not of size 1",
                    text(&t)
                )));
            }
            t.shape.remove(*axis);
            t
        }
        Expr::Transpose { arg } => {
            let mut t = ty(*arg);
            if t.rank() != 2 {
                return Err(TypeError::Rank { op: ".T".into(), expected: "2".into(), found: t.rank() });
            }
            t.shape.swap(0, 1);
            t
        }
        Expr::MatMul { lhs, rhs } => {
            let (l, r) = (ty(*lhs), ty(*rhs));
            for t in [&l, &r] {
                if t.rank() != 2 {
                    return Err(TypeError::Rank { op: "@".into(), expected: "2".into(), found: t.rank() });
                }
                expect_elem("@", t, Elem::Real)?;
            }
            if l.shape[1] != r.shape[0] {
                return Err(TypeError::MatMulInner { lhs: text(&l), rhs: text(&r) });
            }
            Type::tensor(Elem::Real, vec![l.shape[0].clone(), r.shape[1].clone()])
        }
        Expr::Reduce { op, arg, axis } => {
            let mut t = ty(*arg);
            if *axis >= t.rank() {
                return Err(TypeError::Axis { axis: *axis, rank: t.rank() });
            }
            match op {
                ReduceOp::LogSumExp => expect_elem("logsumexp", &t, Elem::Real)?,
                _ if t.elem == Elem::Bool => {
                    return Err(TypeError::ElemMismatch {
                        op: format!("{op:?}").to_lowercase(),
                        expected: "numeric".into(),
                        found: "bool".into(),
                    })
                }
                _ => {}
            }
            t.shape.remove(*axis);
            if *op == ReduceOp::ArgMax {
                t.elem = Elem::Int;
            }
            t
        }
        Expr::Concat { parts, axis } => {
            let first = ty(*parts.first().ok_or_else(|| TypeError::Other("concat of nothing".into()))?);
            if *axis >= first.rank() {
                return Err(TypeError::Axis { axis: *axis, rank: first.rank() });
            }
            let mut total = Dim::constant(0);
            for p in parts {
                let t = ty(*p);
                let same_elsewhere = t.rank() == first.rank()
                    && t.elem == first.elem
                    && t.shape.iter().zip(&first.shape).enumerate().all(|(i, (a, b))| i == *axis || a == b);
                if !same_elsewhere {
                    return Err(TypeError::ShapeMismatch { op: "concat".into(), lhs: text(&first), rhs: text(&t) });
                }
                total = total.add(&t.shape[*axis]);
            }
            let mut out = first;
            out.shape[*axis] = total;
            out
        }
        Expr::Slice { arg, axis, start, len } => {
            let mut t = ty(*arg);
            if *axis >= t.rank() {
                return Err(TypeError::Axis { axis: *axis, rank: t.rank() });
            }
            let size = &t.shape[*axis];
            let over = start.add(len).sub(size).as_constant().is_some_and(|c| c > 0);
            let negative = start.as_constant().is_some_and(|c| c < 0) || len.as_constant().is_some_and(|c| c < 0);
            if over || negative {
                return Err(TypeError::Other(format!(
                    "slice [{}:{}] is outside axis {axis} of size {}",
                    start.display(&module.dims),
                    start.add(len).display(&module.dims),
                    size.display(&module.dims)
                )));
            }
            t.shape[*axis] = len.clone();
            t
        }
        Expr::Gather { table, indices } => {
            let (t, i) = (ty(*table), ty(*indices));
            row_indices(module, "gather", &i)?;
            if t.rank() == 0 {
                return Err(TypeError::Rank { op: "gather".into(), expected: "at least 1".into(), found: 0 });
            }
            let mut out = t;
            out.shape[0] = i.shape[0].clone();
            out
        }
        Expr::ScatterAdd { values, indices, rows } => {
            let (v, i) = (ty(*values), ty(*indices));
            row_indices(module, "scatter-add", &i)?;
            if v.rank() == 0 || v.elem != Elem::Real || v.shape[0] != i.shape[0] {
                return Err(TypeError::Other(format!(
                    "a scatter-add adds real rows, one per index: {} values for {} indices",
                    text(&v),
                    text(&i)
                )));
            }
            let mut out = v;
            out.shape[0] = rows.clone();
            out
        }
        Expr::StopGrad { arg } => ty(*arg),
        Expr::LoopParam => return Err(TypeError::Other("a loop parameter's type is that of its initial value".into())),
        Expr::Loop { count, .. } => {
            let c = ty(*count);
            if c != Type::scalar(Elem::Int) {
                return Err(TypeError::ElemMismatch {
                    op: "repeat".into(),
                    expected: "an int count".into(),
                    found: text(&c),
                });
            }
            // A loop node itself has no value; its results are `LoopOutput`s.
            Type::scalar(Elem::Int)
        }
        Expr::LoopOutput { .. } => {
            return Err(TypeError::Other("a loop output's type is that of its carried value".into()))
        }
        Expr::PairwiseReduce { pairwise, op, axis } => {
            let (m, p) = pairwise_dims(module, pairwise, ty)?;
            if *op == ReduceOp::ArgMax {
                return Err(TypeError::Other("a pairwise reduction cannot be an argmax".into()));
            }
            Type::tensor(Elem::Real, vec![if *axis == 1 { m } else { p }])
        }
        Expr::PairwiseMatMul { pairwise, v, axis } => {
            let (m, p) = pairwise_dims(module, pairwise, ty)?;
            let t = ty(*v);
            let (summed, kept) = if *axis == 1 { (p, m) } else { (m, p) };
            if t.rank() != 2 || t.elem != Elem::Real || t.shape[0] != summed {
                return Err(TypeError::Other(format!(
                    "pairwise matmul: v is {}, expected [{}, E]",
                    text(&t),
                    summed.display(&module.dims)
                )));
            }
            Type::tensor(Elem::Real, vec![kept, t.shape[1].clone()])
        }
    })
}

/// The rows a gather or scatter-add picks must be an `int[M]` vector.
fn row_indices(module: &Module, op: &str, i: &Type) -> Result<(), TypeError> {
    if i.rank() != 1 || i.elem != Elem::Int {
        return Err(TypeError::ElemMismatch {
            op: op.into(),
            expected: "int[M] indices".into(),
            found: shape_text(module, i),
        });
    }
    Ok(())
}

/// Checks a pairwise node's operands and kernel; returns its `(M, P)`.
fn pairwise_dims(
    module: &Module,
    pw: &PairwiseOperands,
    ty: &dyn Fn(Handle<Expr>) -> Type,
) -> Result<(Dim, Dim), TypeError> {
    let text = |t: &Type| shape_text(module, t);
    let (x, y) = (ty(pw.x), ty(pw.y));
    if x.rank() != 2 || y.rank() != 2 || x.elem != Elem::Real || y.elem != Elem::Real || x.shape[1] != y.shape[1] {
        return Err(TypeError::Other(format!(
            "pairwise: x is {} and y is {}, expected [M, D] and [P, D]",
            text(&x),
            text(&y)
        )));
    }
    let (m, p) = (x.shape[0].clone(), y.shape[0].clone());
    let vector = |h: &Handle<Expr>, len: &Dim| {
        let t = ty(*h);
        if t.rank() == 1 && t.shape[0] == *len {
            Ok(t.elem)
        } else {
            Err(TypeError::Other(format!(
                "pairwise: operand {h} is {}, expected a vector of {}",
                text(&t),
                len.display(&module.dims)
            )))
        }
    };
    let rows = pw.rows.iter().map(|h| vector(h, &m)).collect::<Result<Vec<_>, _>>()?;
    let cols = pw.cols.iter().map(|h| vector(h, &p)).collect::<Result<Vec<_>, _>>()?;
    let mut scalars = Vec::new();
    for h in &pw.scalars {
        let t = ty(*h);
        if t.rank() != 0 {
            return Err(TypeError::Other(format!("pairwise: scalar operand {h} is {}", text(&t))));
        }
        scalars.push(t.elem);
    }
    let k = &pw.kernel;
    if k.result >= k.ops.len() || k.elem(k.result) != Elem::Real {
        return Err(TypeError::Other("pairwise kernel: malformed result".into()));
    }
    for (i, (n, recorded)) in k.ops.iter().enumerate() {
        let earlier = |a: usize| {
            if a < i {
                Ok(k.elem(a))
            } else {
                Err(TypeError::Other(format!("pairwise kernel: node {i} reads a later node")))
            }
        };
        let elem = match n {
            KernelNode::Dot => Elem::Real,
            KernelNode::Load(PairwiseLoad::Row(r)) => {
                *rows.get(*r).ok_or_else(|| TypeError::Other(format!("pairwise kernel: no row operand {r}")))?
            }
            KernelNode::Load(PairwiseLoad::Col(c)) => {
                *cols.get(*c).ok_or_else(|| TypeError::Other(format!("pairwise kernel: no column operand {c}")))?
            }
            KernelNode::Load(PairwiseLoad::Scalar(c)) => {
                *scalars.get(*c).ok_or_else(|| TypeError::Other(format!("pairwise kernel: no scalar operand {c}")))?
            }
            KernelNode::Index(_) => Elem::Int,
            KernelNode::Literal(Literal::Real(_)) => Elem::Real,
            KernelNode::Literal(Literal::Int(_)) => Elem::Int,
            KernelNode::Literal(Literal::Bool(_)) => Elem::Bool,
            KernelNode::Unary(op, a) => {
                let ea = earlier(*a)?;
                expect_domain(op.name(), ea, op.domain())?;
                ea
            }
            KernelNode::Binary(op, a, b) => {
                let (ea, eb) = (earlier(*a)?, earlier(*b)?);
                if ea != eb {
                    return Err(TypeError::Other(format!(
                        "pairwise kernel: node {i} mixes {} and {}",
                        ea.name(),
                        eb.name()
                    )));
                }
                expect_domain(op.name(), ea, op.domain())?;
                op.result_elem(ea)
            }
            KernelNode::Select(c, a, b) => {
                expect_kernel(earlier(*c)?, Elem::Bool)?;
                let (ea, eb) = (earlier(*a)?, earlier(*b)?);
                if ea != eb {
                    return Err(TypeError::Other(format!(
                        "pairwise kernel: node {i} selects between {} and {}",
                        ea.name(),
                        eb.name()
                    )));
                }
                ea
            }
            KernelNode::Cast(a) => {
                earlier(*a)?;
                *recorded
            }
        };
        if elem != *recorded {
            return Err(TypeError::Other(format!(
                "pairwise kernel: node {i} is {} but recorded {}",
                elem.name(),
                recorded.name()
            )));
        }
    }
    Ok((m, p))
}

fn expect_kernel(found: Elem, want: Elem) -> Result<Elem, TypeError> {
    if found == want {
        Ok(found)
    } else {
        Err(TypeError::Other(format!("pairwise kernel: expected {}, found {}", want.name(), found.name())))
    }
}

/// An operand's element type against an op's domain (from the op table).
fn expect_domain(op: &str, elem: Elem, domain: crate::ops::Domain) -> Result<(), TypeError> {
    if !domain.accepts(elem) {
        return Err(TypeError::ElemMismatch {
            op: op.into(),
            expected: domain.describe().into(),
            found: elem.name().into(),
        });
    }
    Ok(())
}

fn expect_elem(op: &str, t: &Type, elem: Elem) -> Result<(), TypeError> {
    if t.elem != elem {
        return Err(TypeError::ElemMismatch {
            op: op.into(),
            expected: elem.name().into(),
            found: t.elem.name().into(),
        });
    }
    Ok(())
}

/// Numpy's rule: align on the right; each source axis equals the target's or is 1.
pub fn broadcastable(from: &[Dim], to: &[Dim]) -> bool {
    from.len() <= to.len() && from.iter().rev().zip(to.iter().rev()).all(|(f, t)| f == t || f.is_one())
}

/// The broadcast shape of two shapes, if any.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i < a.len()).then(|| &a[a.len() - 1 - i]);
        let db = (i < b.len()).then(|| &b[b.len() - 1 - i]);
        out.push(match (da, db) {
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            (Some(_), Some(_)) => return None,
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => unreachable!("i < rank"),
        });
    }
    out.reverse();
    Some(out)
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("node {node} reads {operand}, which is not computed before it")]
    UseBeforeDef { node: String, operand: String },
    #[error("node {node} has recorded type {recorded} but its operands give {inferred}")]
    WrongType { node: String, recorded: String, inferred: String },
    #[error("node {node}: {error}")]
    Type { node: String, error: TypeError },
    #[error("node {node} appears in more than one block")]
    Duplicate { node: String },
    #[error("loop {node}: {message}")]
    Loop { node: String, message: String },
    #[error("output `{name}` refers to a node that is never computed")]
    Output { name: String },
}

/// Checks a whole program: every node is computed once, after its operands, with the type its
/// operands give; loops bind their parameters consistently; outputs are computed.
pub fn validate(module: &Module, program: &Program) -> Result<(), ValidationError> {
    let mut defined: HashSet<Handle<Expr>> = HashSet::new();
    validate_block(module, program, &program.body, &mut defined)?;
    for out in &program.outputs {
        if !defined.contains(&out.value) {
            return Err(ValidationError::Output { name: out.name.clone() });
        }
    }
    Ok(())
}

fn validate_block(
    module: &Module,
    program: &Program,
    block: &Block,
    defined: &mut HashSet<Handle<Expr>>,
) -> Result<(), ValidationError> {
    for &h in block {
        let expr = &program.exprs[h];
        let node = h.to_string();
        if defined.contains(&h) {
            return Err(ValidationError::Duplicate { node });
        }
        if let Expr::Loop { count, carried, body } = expr {
            let check = |o: Handle<Expr>| {
                if defined.contains(&o) {
                    Ok(())
                } else {
                    Err(ValidationError::UseBeforeDef { node: node.clone(), operand: o.to_string() })
                }
            };
            check(*count)?;
            for c in carried {
                check(c.init)?;
            }
            for c in carried {
                if program.exprs[c.param] != Expr::LoopParam {
                    return Err(ValidationError::Loop {
                        node,
                        message: format!("{} is not a loop parameter", c.param),
                    });
                }
                if program.ty(c.param) != program.ty(c.init) {
                    return Err(ValidationError::Loop {
                        node,
                        message: format!("parameter {} and its initial value differ in type", c.param),
                    });
                }
                defined.insert(c.param);
            }
            validate_block(module, program, body, defined)?;
            for c in carried {
                if !defined.contains(&c.next) {
                    return Err(ValidationError::Loop {
                        node,
                        message: format!("next value {} is not computed in the body", c.next),
                    });
                }
                if program.ty(c.next) != program.ty(c.init) {
                    return Err(ValidationError::Loop {
                        node,
                        message: format!(
                            "carried value changes type from {} to {}",
                            program.ty(c.init).display(&module.dims),
                            program.ty(c.next).display(&module.dims)
                        ),
                    });
                }
            }
            // Body values are not visible after the loop, except through LoopOutput.
            for b in body {
                defined.remove(b);
            }
            for c in carried {
                defined.remove(&c.param);
            }
            defined.insert(h);
            continue;
        }
        for o in expr.operands() {
            if !defined.contains(&o) {
                return Err(ValidationError::UseBeforeDef { node, operand: o.to_string() });
            }
        }
        let recorded = program.ty(h).clone();
        let inferred = match expr {
            Expr::LoopParam => {
                return Err(ValidationError::Loop {
                    node,
                    message: "loop parameter outside its loop's carried list".into(),
                })
            }
            Expr::LoopOutput { looped, index } => match &program.exprs[*looped] {
                Expr::Loop { carried, .. } if *index < carried.len() => program.ty(carried[*index].init).clone(),
                _ => {
                    return Err(ValidationError::Loop {
                        node,
                        message: format!("{looped} has no carried value #{index}"),
                    })
                }
            },
            _ => infer(module, expr, &|o| program.ty(o).clone())
                .map_err(|error| ValidationError::Type { node: node.clone(), error })?,
        };
        if inferred != recorded {
            return Err(ValidationError::WrongType {
                node,
                recorded: recorded.display(&module.dims).to_string(),
                inferred: inferred.display(&module.dims).to_string(),
            });
        }
        defined.insert(h);
    }
    Ok(())
}

/// Shape text for messages.
pub fn shape_string(module: &Module, shape: &[Dim]) -> String {
    display_shape(shape, &module.dims).to_string()
}
