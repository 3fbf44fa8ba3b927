//! The reference evaluator: executes any IR program node by node on candle CPU tensors, in
//! f32 or f64. It is deliberately simple — no fusion, no cleverness — because it is the oracle
//! that every fast back end is tested against.

mod bind;
mod constants;
pub mod npy;

pub use bind::{check_fits, BindError, BindRequest, Bindings, Overrides};
pub(crate) use constants::gaussian;
pub use constants::{build_const, etf, initial_state};

use crate::ir::{
    Axis, BinaryOp, BuiltinValue, Elem, Expr, Handle, KernelNode, Literal, Module, PairwiseLoad, PairwiseOperands,
    Program, ReduceOp, UnaryOp,
};
use crate::ops::{Prim, Real, Scalar};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("node {node} ({what}): {source}")]
    Tensor { node: String, what: String, source: candle_core::Error },
    #[error("`index` is needed but no sample indices were given")]
    NoIndex,
    #[error("{indices} holds {value}, out of range for the {rows} rows of {table} (0 to {last})", last = *rows as i64 - 1)]
    IndexOutOfRange { indices: String, value: i64, table: String, rows: usize },
    #[error("loss output #{0} is needed but was not given")]
    NoForward(usize),
}

/// Runs `program` and returns its outputs, in order.
pub fn run(module: &Module, program: &Program, b: &Bindings) -> Result<Vec<Tensor>, EvalError> {
    Ok(run_traced(module, program, b, &HashMap::new())?.0)
}

/// Runs `program` with the nodes in `frozen` held at the given values (finite differences
/// hold `stopgrad` values fixed this way), and returns the outputs and every node's value.
pub fn run_traced(
    module: &Module,
    program: &Program,
    b: &Bindings,
    frozen: &HashMap<Handle<Expr>, Tensor>,
) -> Result<(Vec<Tensor>, Vec<Option<Tensor>>), EvalError> {
    let mut values: Vec<Option<Tensor>> = vec![None; program.exprs.len()];
    let live = live_nodes(program, frozen);
    let mut ev = Evaluator { module, program, b, values: &mut values, frozen, live: &live };
    ev.block(&program.body)?;
    let outputs = program
        .outputs
        .iter()
        .map(|o| ev.values[o.value.index()].clone().expect("validated programs compute their outputs"))
        .collect();
    Ok((outputs, values))
}

/// Nodes the outputs depend on without passing through a frozen node (loop bodies count as
/// their loop's operands).
fn live_nodes(program: &Program, frozen: &HashMap<Handle<Expr>, Tensor>) -> Vec<bool> {
    let mut live = vec![frozen.is_empty(); program.exprs.len()];
    if frozen.is_empty() {
        return live;
    }
    let mut stack: Vec<Handle<Expr>> = program.outputs.iter().map(|o| o.value).collect();
    while let Some(h) = stack.pop() {
        if live[h.index()] {
            continue;
        }
        live[h.index()] = true;
        if frozen.contains_key(&h) {
            continue;
        }
        let e = &program.exprs[h];
        stack.extend(e.operands());
        if let Expr::Loop { carried, body, .. } = e {
            stack.extend(body.iter().copied());
            stack.extend(carried.iter().flat_map(|c| [c.param, c.next]));
        }
    }
    live
}

struct Evaluator<'a> {
    module: &'a Module,
    program: &'a Program,
    b: &'a Bindings,
    values: &'a mut Vec<Option<Tensor>>,
    frozen: &'a HashMap<Handle<Expr>, Tensor>,
    /// Root nodes the outputs need; what only feeds frozen nodes is skipped.
    live: &'a [bool],
}

impl Evaluator<'_> {
    fn block(&mut self, block: &[Handle<Expr>]) -> Result<(), EvalError> {
        for &h in block {
            if let Some(v) = self.frozen.get(&h) {
                self.values[h.index()] = Some(v.clone());
                continue;
            }
            if !self.live[h.index()] {
                continue;
            }
            let v = self.node(h)?;
            if let Some(v) = v {
                self.values[h.index()] = Some(v);
            }
        }
        Ok(())
    }

    fn get(&self, h: Handle<Expr>) -> &Tensor {
        self.values[h.index()].as_ref().expect("validated programs compute operands first")
    }

    fn dtype(&self, elem: Elem) -> DType {
        match elem {
            Elem::Real => self.b.dtype,
            Elem::Int => DType::I64,
            Elem::Bool => DType::U8,
        }
    }

    fn scalar(&self, v: f64, elem: Elem) -> candle_core::Result<Tensor> {
        Tensor::new(v, &Device::Cpu)?.to_dtype(self.dtype(elem))
    }

    /// Evaluates one node; loops store their own outputs and return `None`.
    fn node(&mut self, h: Handle<Expr>) -> Result<Option<Tensor>, EvalError> {
        let expr = &self.program.exprs[h];
        let ty = self.program.ty(h).clone();
        let wrap = |source: candle_core::Error| EvalError::Tensor {
            node: h.to_string(),
            what: format!("{expr:?}").chars().take(60).collect(),
            source,
        };
        if let Expr::Loop { count, carried, body } = expr {
            let n = self.get(*count).to_dtype(DType::F64).and_then(|t| t.to_vec0::<f64>()).map_err(wrap)?;
            for c in carried {
                self.values[c.param.index()] = Some(self.get(c.init).clone());
            }
            for _ in 0..(n.max(0.0) as usize) {
                self.block(body)?;
                let next: Vec<Tensor> = carried.iter().map(|c| self.get(c.next).clone()).collect();
                for (c, v) in carried.iter().zip(next) {
                    self.values[c.param.index()] = Some(v);
                }
            }
            return Ok(Some(Tensor::new(0i64, &Device::Cpu).map_err(wrap)?));
        }
        self.compute(expr, &ty).map(Some).map_err(|e| match e {
            Failure::Tensor(t) => wrap(t),
            Failure::Eval(e) => e,
        })
    }

    /// Refuses a row gather whose indices leave the table, naming both as the user wrote them
    /// (candle's own error names neither).
    fn check_rows(&self, table: Handle<Expr>, indices: Handle<Expr>) -> Result<(), Failure> {
        let rows = self.get(table).dim(0)?;
        let values = self.get(indices).flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let Some(&value) = values.iter().find(|&&v| v < 0 || v >= rows as i64) else { return Ok(()) };
        let (indices, table) = (self.describe(indices), self.describe(table));
        Err(Failure::Eval(EvalError::IndexOutOfRange { indices, value, table, rows }))
    }

    /// How the user names a value: an input, state or constant by its name, `index`, a `let`
    /// by its name.
    fn describe(&self, h: Handle<Expr>) -> String {
        let module = self.module;
        match &self.program.exprs[h] {
            Expr::Input(i) => format!("input `{}`", module.inputs[*i].name),
            Expr::State(s) => format!("state `{}`", module.states[*s].name),
            Expr::Const(c) => format!("`{}`", module.consts[*c].name),
            Expr::Builtin(BuiltinValue::SampleIndex) => "`index` (the batch's sample indices)".into(),
            _ => match self.program.names.get(&h) {
                Some(name) => format!("`{name}`"),
                None => "a computed index".into(),
            },
        }
    }

    fn compute(&self, expr: &Expr, ty: &crate::ir::Type) -> Result<Tensor, Failure> {
        let b = self.b;
        Ok(match expr {
            Expr::Literal(Literal::Real(v)) => self.scalar(*v, Elem::Real)?,
            Expr::Literal(Literal::Int(v)) => Tensor::new(*v, &Device::Cpu)?,
            Expr::Literal(Literal::Bool(v)) => Tensor::new(u8::from(*v), &Device::Cpu)?,
            Expr::Param(p) => self.scalar(b.param(self.module, *p), self.module.params[*p].elem())?,
            Expr::Input(i) => b.inputs[i.index()].to_dtype(b.dtype)?,
            Expr::Const(c) => b.consts[c.index()].to_dtype(b.dtype)?,
            Expr::State(s) => b.states[s.index()].to_dtype(b.dtype)?,
            Expr::Builtin(v) => match v {
                BuiltinValue::Epoch => self.scalar(b.epoch as f64, Elem::Real)?,
                BuiltinValue::Epochs => self.scalar(b.epochs as f64, Elem::Real)?,
                BuiltinValue::Iteration => self.scalar(b.iteration as f64, Elem::Real)?,
                BuiltinValue::Iterations => self.scalar(b.iterations as f64, Elem::Real)?,
                BuiltinValue::BaseLr => self.scalar(b.base_lr, Elem::Real)?,
                BuiltinValue::SampleIndex => b.index.clone().ok_or(Failure::Eval(EvalError::NoIndex))?,
            },
            Expr::Forward(i) => b.forward.get(*i).cloned().ok_or(Failure::Eval(EvalError::NoForward(*i)))?,
            Expr::RunFraction(f) => self.scalar(b.run_fraction(*f) as f64, Elem::Real)?,
            Expr::DimSize(d) => Tensor::new(b.size(self.module, d) as i64, &Device::Cpu)?,
            Expr::Iota { shape, axis } => {
                let dims = b.shape(self.module, shape);
                let n = dims[*axis];
                let mut view = vec![1usize; dims.len()];
                view[*axis] = n;
                Tensor::arange(0i64, n as i64, &Device::Cpu)?.reshape(view)?.broadcast_as(dims)?.contiguous()?
            }
            Expr::Unary { op, arg } => unary(*op, self.get(*arg))?,
            Expr::Binary { op, lhs, rhs } => self.binary(*op, self.get(*lhs), self.get(*rhs))?,
            Expr::Select { cond, on_true, on_false } => {
                self.get(*cond).where_cond(self.get(*on_true), self.get(*on_false))?
            }
            Expr::Cast { arg, to } => self.cast(self.get(*arg), *to)?,
            Expr::Broadcast { arg, shape } => self.get(*arg).broadcast_as(b.shape(self.module, shape))?.contiguous()?,
            Expr::ExpandDims { arg, axis } => self.get(*arg).unsqueeze(*axis)?,
            Expr::Squeeze { arg, axis } => self.get(*arg).squeeze(*axis)?,
            Expr::Transpose { arg } => self.get(*arg).t()?.contiguous()?,
            Expr::MatMul { lhs, rhs } => self.get(*lhs).contiguous()?.matmul(&self.get(*rhs).contiguous()?)?,
            Expr::Reduce { op, arg, axis } => reduce(*op, self.get(*arg), *axis)?,
            Expr::Concat { parts, axis } => {
                let ts: Vec<&Tensor> = parts.iter().map(|p| self.get(*p)).collect();
                Tensor::cat(&ts, *axis)?
            }
            Expr::Slice { arg, axis, start, len } => {
                self.get(*arg).narrow(*axis, b.size(self.module, start), b.size(self.module, len))?.contiguous()?
            }
            Expr::Gather { table, indices } => {
                self.check_rows(*table, *indices)?;
                self.get(*table).index_select(self.get(*indices), 0)?
            }
            Expr::ScatterAdd { values, indices, rows } => {
                scatter_add(self.get(*values), self.get(*indices), b.size(self.module, rows))?
            }
            Expr::StopGrad { arg } => self.get(*arg).clone(),
            Expr::LoopParam => unreachable!("loop parameters are set by their loop"),
            Expr::Loop { .. } => unreachable!("loops are evaluated by `node`"),
            Expr::LoopOutput { looped, index } => match &self.program.exprs[*looped] {
                Expr::Loop { carried, .. } => self.get(carried[*index].param).clone(),
                _ => unreachable!("validated programs only take outputs of loops"),
            },
            Expr::PairwiseReduce { pairwise, op, axis } => reduce(*op, &self.pairwise_matrix(pairwise)?, *axis)?,
            Expr::PairwiseMatMul { pairwise, v, axis } => {
                let w = self.pairwise_matrix(pairwise)?;
                let w = if *axis == 1 { w } else { w.t()?.contiguous()? };
                w.matmul(&self.get(*v).contiguous()?)?
            }
        })
        .inspect(|t: &Tensor| {
            debug_assert_eq!(t.dims(), b.shape(self.module, &ty.shape).as_slice());
        })
    }

    /// The `[M, P]` matrix `w(i, j)` a pairwise node stands for. The oracle materialises it;
    /// the back ends never do.
    fn pairwise_matrix(&self, pw: &PairwiseOperands) -> candle_core::Result<Tensor> {
        let s = self.get(pw.x).contiguous()?.matmul(&self.get(pw.y).t()?.contiguous()?)?;
        let (m, p) = (s.dims()[0], s.dims()[1]);
        let mut values: Vec<Tensor> = Vec::with_capacity(pw.kernel.ops.len());
        for (node, elem) in &pw.kernel.ops {
            let v = match node {
                KernelNode::Dot => s.clone(),
                KernelNode::Load(PairwiseLoad::Row(k)) => {
                    self.get(pw.rows[*k]).unsqueeze(1)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Load(PairwiseLoad::Col(k)) => {
                    self.get(pw.cols[*k]).unsqueeze(0)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Load(PairwiseLoad::Scalar(k)) => {
                    self.get(pw.scalars[*k]).broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Index(Axis::Row) => {
                    Tensor::arange(0i64, m as i64, &Device::Cpu)?.unsqueeze(1)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Index(Axis::Col) => {
                    Tensor::arange(0i64, p as i64, &Device::Cpu)?.unsqueeze(0)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Literal(Literal::Real(v)) => {
                    self.scalar(*v, Elem::Real)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Literal(Literal::Int(v)) => {
                    Tensor::new(*v, &Device::Cpu)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Literal(Literal::Bool(v)) => {
                    Tensor::new(u8::from(*v), &Device::Cpu)?.broadcast_as((m, p))?.contiguous()?
                }
                KernelNode::Unary(op, a) => unary(*op, &values[*a])?,
                KernelNode::Binary(op, a, b) => self.binary(*op, &values[*a], &values[*b])?,
                KernelNode::Select(c, a, b) => values[*c].where_cond(&values[*a], &values[*b])?,
                KernelNode::Cast(a) => self.cast(&values[*a], *elem)?,
            };
            values.push(v);
        }
        Ok(values.swap_remove(pw.kernel.result))
    }

    fn cast(&self, x: &Tensor, to: Elem) -> candle_core::Result<Tensor> {
        match to {
            // Non-zero is true.
            Elem::Bool => x.ne(&0f64.to_dtype_of(x)?),
            // Truncation toward zero, as `int(x)` in Python.
            Elem::Int => x.to_dtype(DType::F64)?.to_dtype(DType::I64),
            Elem::Real => x.to_dtype(self.b.dtype),
        }
    }

    fn binary(&self, op: BinaryOp, l: &Tensor, r: &Tensor) -> candle_core::Result<Tensor> {
        elementwise(Prim::Binary(op), &[l, r])
    }
}

/// A primitive applied element by element with the op table's semantics, in the real type of
/// the operands (f32 or f64; f64 when none is real). Operands have one shape (lowering
/// broadcasts explicitly).
fn elementwise(prim: Prim, args: &[&Tensor]) -> candle_core::Result<Tensor> {
    if args.iter().any(|t| t.dtype() == DType::F32) {
        elementwise_in::<f32>(prim, args)
    } else {
        elementwise_in::<f64>(prim, args)
    }
}

fn elementwise_in<F: Real + candle_core::WithDType>(prim: Prim, args: &[&Tensor]) -> candle_core::Result<Tensor> {
    let shape = args[0].shape().clone();
    let operand = match args[0].dtype() {
        DType::I64 => Elem::Int,
        DType::U8 => Elem::Bool,
        _ => Elem::Real,
    };
    let columns = args.iter().map(|t| Column::<F>::of(t)).collect::<candle_core::Result<Vec<_>>>()?;
    let n = shape.elem_count();
    let mut row = Vec::with_capacity(args.len());
    let values = (0..n).map(|i| {
        row.clear();
        row.extend(columns.iter().map(|c| c.get(i)));
        prim.eval(&row)
    });
    let device = Device::Cpu;
    match prim.result_elem(operand) {
        Elem::Real => Tensor::from_vec(values.map(Scalar::real).collect::<Vec<F>>(), shape, &device),
        Elem::Int => Tensor::from_vec(values.map(Scalar::int).collect::<Vec<i64>>(), shape, &device),
        Elem::Bool => Tensor::from_vec(values.map(|v| u8::from(v.truth())).collect::<Vec<u8>>(), shape, &device),
    }
}

/// A tensor's elements, read once.
enum Column<F> {
    Real(Vec<F>),
    Int(Vec<i64>),
    Bool(Vec<u8>),
}

impl<F: Real + candle_core::WithDType> Column<F> {
    fn of(t: &Tensor) -> candle_core::Result<Column<F>> {
        let flat = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::I64 => Column::Int(flat.to_vec1()?),
            DType::U8 => Column::Bool(flat.to_vec1()?),
            _ => Column::Real(flat.to_dtype(F::DTYPE)?.to_vec1()?),
        })
    }
    fn get(&self, i: usize) -> Scalar<F> {
        match self {
            Column::Real(v) => Scalar::Real(v[i]),
            Column::Int(v) => Scalar::Int(v[i]),
            Column::Bool(v) => Scalar::Bool(v[i] != 0),
        }
    }
}

enum Failure {
    Tensor(candle_core::Error),
    Eval(EvalError),
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Failure::Tensor(e)
    }
}

trait ToDtypeOf {
    fn to_dtype_of(self, t: &Tensor) -> candle_core::Result<Tensor>;
}

impl ToDtypeOf for f64 {
    fn to_dtype_of(self, t: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::new(self, &Device::Cpu)?.to_dtype(t.dtype())?.broadcast_as(t.dims())
    }
}

fn unary(op: UnaryOp, x: &Tensor) -> candle_core::Result<Tensor> {
    elementwise(Prim::Unary(op), &[x])
}

/// [`Expr::ScatterAdd`] in the values' precision, rows added in increasing order as every
/// back end adds them.
fn scatter_add(values: &Tensor, indices: &Tensor, rows: usize) -> candle_core::Result<Tensor> {
    match values.dtype() {
        DType::F32 => scatter_add_as::<f32>(values, indices, rows),
        _ => scatter_add_as::<f64>(values, indices, rows),
    }
}

fn scatter_add_as<F: candle_core::WithDType + std::ops::AddAssign>(
    values: &Tensor,
    indices: &Tensor,
    rows: usize,
) -> candle_core::Result<Tensor> {
    let mut shape = values.dims().to_vec();
    let width: usize = shape[1..].iter().product();
    let v = values.flatten_all()?.to_vec1::<F>()?;
    let mut out = vec![F::from_f64(0.0); rows * width];
    for (m, r) in indices.to_vec1::<i64>()?.into_iter().enumerate() {
        let Some(r) = usize::try_from(r).ok().filter(|&r| r < rows) else { continue };
        for c in 0..width {
            out[r * width + c] += v[m * width + c];
        }
    }
    shape[0] = rows;
    Tensor::from_vec(out, shape, &Device::Cpu)
}

fn reduce(op: ReduceOp, x: &Tensor, axis: usize) -> candle_core::Result<Tensor> {
    match op {
        ReduceOp::Sum => x.sum(axis),
        ReduceOp::Max => x.max(axis),
        ReduceOp::Min => x.min(axis),
        ReduceOp::ArgMax => x.argmax(axis)?.to_dtype(DType::I64),
        ReduceOp::LogSumExp => {
            // Stable: subtract the maximum, which is replaced by 0 on rows that are all -inf.
            let m = x.max_keepdim(axis)?;
            let finite = m.abs()?.lt(&f64::INFINITY.to_dtype_of(&m)?)?;
            let m = finite.where_cond(&m, &0f64.to_dtype_of(&m)?)?;
            let s = x.broadcast_sub(&m)?.exp()?.sum_keepdim(axis)?;
            s.log()?.add(&m)?.squeeze(axis)
        }
    }
}
