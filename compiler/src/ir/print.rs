//! The textual form of the IR (`sslc emit --stage ir`), also used by snapshot tests.

use super::{
    display_shape, Axis, BuiltinValue, ConstInit, DimKind, Event, Expr, Handle, KernelNode, Literal, Module, Momentum,
    PairwiseLoad, PairwiseOperands, ParamValue, Program, StateInit,
};
use std::fmt::Write;

pub fn print_module(m: &Module) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "objective {}", m.name);
    for (_, d) in m.dims.iter() {
        let kind = match &d.kind {
            DimKind::Batch => "batch".to_string(),
            DimKind::Free => "from the inputs".to_string(),
            DimKind::Fixed(v) => format!("= {v}"),
            DimKind::Samples => "dataset size".to_string(),
        };
        let _ = writeln!(w, "dim {} {kind}", d.name);
    }
    for (_, p) in m.params.iter() {
        let v = match p.default {
            ParamValue::Real(v) => format!("{v:?}"),
            ParamValue::Int(v) => v.to_string(),
            ParamValue::RunFraction(f) => format!("{}% of the run", f * 100.0),
        };
        let _ = writeln!(w, "param {}: {} = {v}", p.name, p.elem().name());
    }
    if let Some(v) = &m.views {
        let stages: Vec<String> = v
            .pipeline
            .iter()
            .map(|a| {
                if a.args.is_empty() {
                    format!("{}(x)", a.name)
                } else {
                    let args: Vec<String> = a.args.iter().map(|(n, _)| format!("{n}=<program {n}>")).collect();
                    format!("{}({})", a.name, args.join(", "))
                }
            })
            .collect();
        let _ = writeln!(w, "views {} = {}", v.names.join(", "), stages.join(" + "));
    }
    for (_, i) in m.inputs.iter() {
        let view =
            m.views.as_ref().map_or_else(|| format!("view{}", i.source.view), |v| v.names[i.source.view].clone());
        let pruned = i.source.pruned.map_or(String::new(), |p| format!(", pruned={}", m.params[p].name));
        let ema = match &i.source.ema {
            None => String::new(),
            Some(Momentum::Param(p)) => format!(", ema={}", m.params[*p].name),
            Some(Momentum::Schedule(s)) => format!(", ema={s}"),
        };
        let encoder = format!("encoder({view}{pruned}{ema})");
        let source = match i.source.predictor {
            Some(hidden) => format!("predictor({encoder}, hidden={hidden})"),
            None => encoder,
        };
        let _ = writeln!(w, "input {}: {} = {source}", i.name, i.ty.display(&m.dims));
    }
    for (_, c) in m.consts.iter() {
        let init = match &c.init {
            ConstInit::Etf { k, d, seed } => {
                format!("etf({}, {}, seed={seed})", k.display(&m.dims), d.display(&m.dims))
            }
            ConstInit::Randn { seed } => format!("randn(seed={seed})"),
            ConstInit::Fill(v) => format!("full({v:?})"),
            ConstInit::Labels => "labels".to_string(),
        };
        let keyword = if c.learned { "learn" } else { "const" };
        let mut options = String::new();
        if c.optimizer.decay != 1.0 {
            options += &format!(", decay={:?}", c.optimizer.decay);
        }
        if c.optimizer.lr_scale != 1.0 {
            options += &format!(", lr_scale={:?}", c.optimizer.lr_scale);
        }
        let _ = writeln!(w, "{keyword} {}: {} = {init}{options}", c.name, c.ty.display(&m.dims));
    }
    for (_, s) in m.states.iter() {
        let init = match s.init {
            StateInit::Fill(v) => format!("{v:?}"),
            StateInit::Uniform => "uniform".to_string(),
            StateInit::Randn { seed } => format!("randn(seed={seed})"),
        };
        let _ = writeln!(w, "state {}: {} = {init}", s.name, s.ty.display(&m.dims));
    }
    if let Some(v) = &m.views {
        for a in &v.pipeline {
            for (n, p) in &a.args {
                let _ = writeln!(w, "\naugmentation {}.{n} {{", a.name);
                print_program(m, p, w);
                let _ = writeln!(w, "}}");
            }
        }
    }
    for s in &m.schedules {
        let _ = writeln!(w, "\nschedule {} {{", s.name);
        print_program(m, &s.program, w);
        let _ = writeln!(w, "}}");
    }
    let _ = writeln!(w, "\nloss {{");
    print_program(m, &m.loss, w);
    let _ = writeln!(w, "}}");
    for h in &m.handlers {
        let event = match h.event {
            Event::Step => "step",
            Event::Epoch => "epoch",
        };
        let when = h.condition.map_or(String::new(), |c| format!(" when {c}"));
        let _ = writeln!(w, "\non {event}{when} {{");
        print_program(m, &h.program, w);
        for u in &h.updates {
            let rows = u.rows.map_or(String::new(), |r| format!("[{r}]"));
            let _ = writeln!(w, "  -> {}{rows} = {}", u.target.name(m), u.value);
        }
        let _ = writeln!(w, "}}");
    }
    out
}

/// Prints a program's blocks and outputs, two spaces deep per nesting level.
pub fn print_program(m: &Module, p: &Program, w: &mut String) {
    print_block(m, p, &p.body, 1, w);
    for o in &p.outputs {
        let _ = writeln!(w, "  -> {} = {}", o.name, o.value);
    }
}

fn print_block(m: &Module, p: &Program, block: &[Handle<Expr>], depth: usize, w: &mut String) {
    let pad = "  ".repeat(depth);
    for &h in block {
        let e = &p.exprs[h];
        if let Expr::Loop { count, carried, body } = e {
            let vars: Vec<String> = carried
                .iter()
                .map(|c| format!("{}: {} = {} -> {}", c.param, p.ty(c.param).display(&m.dims), c.init, c.next))
                .collect();
            let _ = writeln!(w, "{pad}{h} = repeat {count} times ({}) {{", vars.join(", "));
            print_block(m, p, body, depth + 1, w);
            let _ = writeln!(w, "{pad}}}");
            continue;
        }
        let _ = write!(w, "{pad}");
        node_line(m, p, h, w);
        w.push('\n');
    }
}

/// One node as the printer shows it: `%h: type = op operands  // name`.
pub fn node_line(m: &Module, p: &Program, h: Handle<Expr>, w: &mut String) {
    let ty = p.ty(h).display(&m.dims).to_string();
    let name = p.names.get(&h).map_or(String::new(), |n| format!("  // {n}"));
    let _ = write!(w, "{h}: {ty} = {}{name}", describe(m, &p.exprs[h]));
}

/// What kind of node `e` is, in words, for diagnostics.
pub fn expr_kind(e: &Expr) -> &'static str {
    match e {
        Expr::Reduce { .. } => "a reduction",
        Expr::MatMul { .. } => "a matrix product",
        Expr::Gather { .. } => "a gather",
        Expr::ScatterAdd { .. } => "a scatter-add",
        Expr::Concat { .. } => "a concatenation",
        Expr::Slice { .. } => "a slice",
        Expr::Broadcast { .. } => "a broadcast",
        Expr::Transpose { .. } => "a transpose",
        Expr::ExpandDims { .. } | Expr::Squeeze { .. } => "a reshape",
        Expr::Loop { .. } => "a `repeat` loop",
        Expr::Unary { .. } | Expr::Binary { .. } | Expr::Select { .. } | Expr::Cast { .. } => "element-wise work",
        _ => "a node",
    }
}

fn describe(m: &Module, e: &Expr) -> String {
    let list = |hs: &[Handle<Expr>]| hs.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ");
    match e {
        Expr::Literal(Literal::Real(v)) => format!("{v:?}"),
        Expr::Literal(Literal::Int(v)) => format!("{v}"),
        Expr::Literal(Literal::Bool(v)) => format!("{v}"),
        Expr::Param(h) => format!("param {}", m.params[*h].name),
        Expr::Input(h) => format!("input {}", m.inputs[*h].name),
        Expr::Const(h) => format!("{} {}", if m.consts[*h].learned { "learn" } else { "const" }, m.consts[*h].name),
        Expr::State(h) => format!("state {}", m.states[*h].name),
        Expr::Builtin(b) => match b {
            BuiltinValue::Epoch => "epoch".into(),
            BuiltinValue::Epochs => "epochs".into(),
            BuiltinValue::Iteration => "iteration".into(),
            BuiltinValue::Iterations => "iterations".into(),
            BuiltinValue::BaseLr => "base_lr".into(),
            BuiltinValue::SampleIndex => "index".into(),
        },
        Expr::Forward(i) => format!("loss.{}", m.loss.outputs.get(*i).map_or("?", |o| o.name.as_str())),
        Expr::RunFraction(f) => format!("{}% of epochs", f * 100.0),
        Expr::DimSize(d) => format!("size {}", d.display(&m.dims)),
        Expr::Iota { shape, axis } => format!("iota {} axis={axis}", display_shape(shape, &m.dims)),
        Expr::Unary { op, arg } => format!("{} {arg}", op.name()),
        Expr::Binary { op, lhs, rhs } => format!("{} {lhs}, {rhs}", op.name()),
        Expr::Select { cond, on_true, on_false } => format!("select {cond}, {on_true}, {on_false}"),
        Expr::Cast { arg, to } => format!("cast {arg} to {}", to.name()),
        Expr::Broadcast { arg, shape } => format!("broadcast {arg} to {}", display_shape(shape, &m.dims)),
        Expr::ExpandDims { arg, axis } => format!("expand_dims {arg} axis={axis}"),
        Expr::Squeeze { arg, axis } => format!("squeeze {arg} axis={axis}"),
        Expr::Transpose { arg } => format!("transpose {arg}"),
        Expr::MatMul { lhs, rhs } => format!("matmul {lhs}, {rhs}"),
        Expr::Reduce { op, arg, axis } => format!("reduce.{} {arg} axis={axis}", format!("{op:?}").to_lowercase()),
        Expr::Concat { parts, axis } => format!("concat {} axis={axis}", list(parts)),
        Expr::Slice { arg, axis, start, len } => {
            format!("slice {arg} axis={axis} [{}:{}]", start.display(&m.dims), start.add(len).display(&m.dims))
        }
        Expr::Gather { table, indices } => format!("gather {table}[{indices}]"),
        Expr::ScatterAdd { values, indices, rows } => {
            format!("scatter_add {values} at {indices} into {} rows", rows.display(&m.dims))
        }
        Expr::StopGrad { arg } => format!("stopgrad {arg}"),
        Expr::LoopParam => "loop parameter".into(),
        Expr::Loop { .. } => "loop".into(),
        Expr::LoopOutput { looped, index } => format!("output {index} of {looped}"),
        Expr::PairwiseReduce { pairwise, op, axis } => {
            format!("pairwise.reduce.{} axis={axis} {}", format!("{op:?}").to_lowercase(), pairwise_text(pairwise))
        }
        Expr::PairwiseMatMul { pairwise, v, axis } => {
            format!("pairwise.matmul axis={axis} v={v} {}", pairwise_text(pairwise))
        }
    }
}

fn pairwise_text(pw: &PairwiseOperands) -> String {
    let list = |hs: &[Handle<Expr>]| hs.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ");
    let nodes: Vec<String> = pw
        .kernel
        .ops
        .iter()
        .enumerate()
        .map(|(i, (n, elem))| {
            let body = match n {
                KernelNode::Dot => "dot".to_string(),
                KernelNode::Load(PairwiseLoad::Row(k)) => format!("row{k}[i]"),
                KernelNode::Load(PairwiseLoad::Col(k)) => format!("col{k}[j]"),
                KernelNode::Load(PairwiseLoad::Scalar(k)) => format!("scalar{k}"),
                KernelNode::Index(Axis::Row) => "i".to_string(),
                KernelNode::Index(Axis::Col) => "j".to_string(),
                KernelNode::Literal(Literal::Real(v)) => format!("{v:?}"),
                KernelNode::Literal(Literal::Int(v)) => v.to_string(),
                KernelNode::Literal(Literal::Bool(v)) => v.to_string(),
                KernelNode::Unary(op, a) => format!("{} k{a}", op.name()),
                KernelNode::Binary(op, a, b) => format!("{} k{a}, k{b}", op.name()),
                KernelNode::Select(c, a, b) => format!("select k{c}, k{a}, k{b}"),
                KernelNode::Cast(a) => format!("cast k{a} to {}", elem.name()),
            };
            format!("k{i} = {body}")
        })
        .collect();
    format!(
        "x={} y={} rows=[{}] cols=[{}] scalars=[{}] {{ {}; -> k{} }}",
        pw.x,
        pw.y,
        list(&pw.rows),
        list(&pw.cols),
        list(&pw.scalars),
        nodes.join("; "),
        pw.kernel.result
    )
}
