//! Runs a [`Plan`] on the CPU by interpreting the very C expressions the kernels are printed
//! from, with f32 arithmetic and the tile operands rounded to the plan's precision. CI has no
//! GPU: comparing this against the reference evaluator is how it checks the generated index
//! arithmetic, fusion, loops and pairwise kernels of every objective. What it cannot check is
//! the fixed prelude's thread mapping, which the GPU script covers.
//!
//! The launcher uses the same interpreter for launch sizes and scalar arguments.

use super::c::{CExpr, COp, CStmt, Lambda};
use super::plan::{Body, BufferSource, HostScalar, PairwiseProduct, Plan, Reducer, Step, Tiles};
use super::{CudaError, Precision};
use crate::eval::Bindings;
use crate::ir::{Elem, Module, ReduceOp};
use crate::ops::{BinaryOp, Scalar};
use candle_core::{DType, Device, Tensor};

/// A C value: `float`, `long long` or `bool`, as the op table's scalars in f32.
pub type Value = Scalar<f32>;

/// The value of every host scalar of the plan, in order, in its declared C type (a `bool`
/// parameter is a [`Value::Bool`], never an f32 that the launch would push as 4 bytes).
pub fn scalar_values(plan: &Plan, module: &Module, b: &Bindings) -> Vec<Value> {
    plan.scalars
        .iter()
        .map(|s| {
            let real = match s.value {
                HostScalar::Dim(d) => return Value::Int(b.dims[d.index()]),
                HostScalar::Param(p) => b.param(module, p),
                HostScalar::Epoch => b.epoch as f64,
                HostScalar::Epochs => b.epochs as f64,
                HostScalar::Iteration => b.iteration as f64,
                HostScalar::Iterations => b.iterations as f64,
                HostScalar::BaseLr => b.base_lr,
                HostScalar::RunFraction(f) => b.run_fraction(f) as f64,
            };
            // Typed as the kernel parameter declares it: the driver pushes what this holds.
            s.ty.value(real)
        })
        .collect()
}

/// A count or size expression evaluated on the host.
pub fn host_size(plan: &Plan, scalars: &[Value], e: &CExpr) -> Result<i64, CudaError> {
    let machine = Machine { plan, scalars, memory: Vec::new() };
    Ok(machine.eval(e, &mut Vec::new())?.int())
}

/// The element count of every buffer.
pub fn buffer_sizes(plan: &Plan, b: &Bindings) -> Vec<usize> {
    plan.buffers
        .iter()
        .map(|buf| {
            buf.shape.iter().map(|d| d.eval(&|s| Some(b.dims[s.index()])).unwrap_or(0).max(0) as usize).product()
        })
        .collect()
}

/// Host tensors of the external buffers `wanted` (by buffer id), as f32 (reals) or i64 (sample
/// indices); `None` for the others and for kernel-computed buffers.
pub fn external_data(
    plan: &Plan,
    b: &Bindings,
    wanted: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<Data>>, CudaError> {
    let f32s = |t: &Tensor| -> Result<Data, CudaError> {
        let v = t.flatten_all().and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec1::<f32>());
        Ok(Data::Float(v.map_err(|e| CudaError::Bind(e.to_string()))?))
    };
    plan.buffers
        .iter()
        .enumerate()
        .map(|(id, buf)| {
            if !wanted(id) {
                return Ok(None);
            }
            Ok(match buf.source {
                BufferSource::Input(i) => Some(f32s(&b.inputs[i])?),
                BufferSource::Const(i) => Some(f32s(&b.consts[i])?),
                BufferSource::State(i) => Some(f32s(&b.states[i])?),
                BufferSource::SampleIndex => {
                    let index = b
                        .index
                        .as_ref()
                        .ok_or_else(|| CudaError::Bind("`index` is needed but no sample indices were given".into()))?;
                    let v = index
                        .to_dtype(DType::I64)
                        .and_then(|t| t.to_vec1::<i64>())
                        .map_err(|e| CudaError::Bind(e.to_string()))?;
                    Some(Data::Int(v))
                }
                BufferSource::Temp => None,
            })
        })
        .collect()
}

/// The contents of a buffer.
#[derive(Clone, Debug)]
pub enum Data {
    Float(Vec<f32>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

impl Data {
    fn zeros(elem: Elem, n: usize) -> Data {
        match elem {
            Elem::Real => Data::Float(vec![0.0; n]),
            Elem::Int => Data::Int(vec![0; n]),
            Elem::Bool => Data::Bool(vec![false; n]),
        }
    }
    fn get(&self, i: usize) -> Value {
        match self {
            Data::Float(v) => Value::Real(v[i]),
            Data::Int(v) => Value::Int(v[i]),
            Data::Bool(v) => Value::Bool(v[i]),
        }
    }
    fn set(&mut self, i: usize, x: Value) {
        match self {
            Data::Float(v) => v[i] = x.real(),
            Data::Int(v) => v[i] = x.int(),
            Data::Bool(v) => v[i] = x.truth(),
        }
    }

    /// The first `n` elements (device buffers hold at least one).
    pub fn truncated(self, n: usize) -> Data {
        match self {
            Data::Float(mut v) => {
                v.truncate(n);
                Data::Float(v)
            }
            Data::Int(mut v) => {
                v.truncate(n);
                Data::Int(v)
            }
            Data::Bool(mut v) => {
                v.truncate(n);
                Data::Bool(v)
            }
        }
    }

    /// A host tensor of the given shape.
    pub fn tensor(&self, shape: &[usize]) -> candle_core::Result<Tensor> {
        match self {
            Data::Float(v) => Tensor::from_slice(v, shape, &Device::Cpu),
            Data::Int(v) => Tensor::from_slice(v, shape, &Device::Cpu),
            Data::Bool(v) => Tensor::from_vec(v.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>(), shape, &Device::Cpu),
        }
    }
}

/// The plan's outputs, computed on the CPU.
pub fn run(module: &Module, plan: &Plan, b: &Bindings) -> Result<Vec<Tensor>, CudaError> {
    super::check_sample_index(module, b)?;
    let scalars = scalar_values(plan, module, b);
    let sizes = buffer_sizes(plan, b);
    let memory = external_data(plan, b, &|_| true)?
        .into_iter()
        .zip(&plan.buffers)
        .zip(&sizes)
        .map(|((data, buf), &n)| data.unwrap_or_else(|| Data::zeros(buf.elem, n)))
        .collect();
    let mut machine = Machine { plan, scalars: &scalars, memory };
    for k in &plan.kernels {
        match &k.body {
            Body::Grid(steps) => {
                for s in steps {
                    machine.step(s)?;
                }
            }
            Body::Tiles(t) => machine.tiles(t)?,
            Body::Loop { init, count, body } => {
                for s in init {
                    machine.step(s)?;
                }
                for _ in 0..machine.eval(count, &mut Vec::new())?.int() {
                    for s in body {
                        machine.step(s)?;
                    }
                }
            }
        }
    }
    plan.outputs
        .iter()
        .map(|(_, id)| {
            let shape: Vec<usize> = plan.buffers[*id].shape.iter().map(|d| b.size(module, d)).collect();
            machine.memory[*id].tensor(&shape).map_err(|e| CudaError::Bind(e.to_string()))
        })
        .collect()
}

/// Rounds a tile operand as the tensor cores see it: TF32 keeps 10 mantissa bits (rounding to
/// nearest, ties away from zero, as `cvt.rna.tf32.f32`), BF16 keeps 7 (ties to even).
pub fn round_operand(precision: Precision, x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    match precision {
        Precision::F32 => x,
        Precision::Tf32 => f32::from_bits(bits.wrapping_add(0x1000) & !0x1fff),
        Precision::Bf16 => f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000),
    }
}

struct Machine<'a> {
    plan: &'a Plan,
    scalars: &'a [Value],
    memory: Vec<Data>,
}

type Locals = Vec<(String, Value)>;

impl Machine<'_> {
    fn buffer_id(&self, name: &str) -> usize {
        self.plan.buffers.iter().position(|b| b.name == name).expect("generated code names plan buffers")
    }

    fn eval(&self, e: &CExpr, locals: &mut Locals) -> Result<Value, CudaError> {
        Ok(match e {
            CExpr::Var(name) => match locals.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => *v,
                None => {
                    let k = self
                        .plan
                        .scalars
                        .iter()
                        .position(|s| &s.name == name)
                        .expect("generated code names declared values");
                    self.scalars[k]
                }
            },
            CExpr::Float(v) => Value::Real(*v),
            CExpr::Int(v) => Value::Int(*v),
            CExpr::Bool(v) => Value::Bool(*v),
            CExpr::Prim(prim, _, args) => {
                let args = args.iter().map(|a| self.eval(a, locals)).collect::<Result<Vec<_>, _>>()?;
                prim.eval(&args)
            }
            CExpr::Binary(op, a, b) => binary(*op, self.eval(a, locals)?, self.eval(b, locals)?),
            CExpr::Ternary(c, a, b) => {
                if self.eval(c, locals)?.truth() {
                    self.eval(a, locals)?
                } else {
                    self.eval(b, locals)?
                }
            }
            CExpr::Call(name, _) => {
                return Err(CudaError::Compiler(format!("internal error: `{name}` inside an element computation")))
            }
            CExpr::Index(base, offset) => {
                let CExpr::Var(name) = base.as_ref() else { unreachable!("loads index a buffer by name") };
                let i = self.eval(offset, locals)?.int();
                let data = &self.memory[self.buffer_id(name)];
                data.get(usize::try_from(i).map_err(|_| CudaError::Bind(format!("negative index {i} into `{name}`")))?)
            }
            CExpr::Cast(ty, a) => {
                let v = self.eval(a, locals)?;
                match ty {
                    super::c::CType::Float => Value::Real(v.real()),
                    super::c::CType::LongLong => Value::Int(v.int()),
                    super::c::CType::Bool => Value::Bool(v.truth()),
                }
            }
            CExpr::Lambda(_) => unreachable!("lambdas are called, not evaluated"),
        })
    }

    /// Runs a lambda's statements with its parameters bound; its return value, if any.
    fn call(&mut self, f: &Lambda, args: &[Value]) -> Result<Option<Value>, CudaError> {
        let mut locals: Locals = f.params.iter().map(|(_, n)| n.clone()).zip(args.iter().copied()).collect();
        for s in &f.body {
            match s {
                CStmt::Let { name, init, .. } => {
                    let v = self.eval(init, &mut locals)?;
                    locals.push((name.clone(), v));
                }
                CStmt::Store { target: CExpr::Index(base, offset), value } => {
                    let CExpr::Var(name) = base.as_ref() else { unreachable!("stores index a buffer by name") };
                    let i = self.eval(offset, &mut locals)?.int() as usize;
                    let v = self.eval(value, &mut locals)?;
                    let id = self.buffer_id(name);
                    self.memory[id].set(i, v);
                }
                CStmt::Return(e) => return Ok(Some(self.eval(e, &mut locals)?)),
                other => unreachable!("lambda bodies hold no {other:?}"),
            }
        }
        Ok(None)
    }

    fn size(&self, e: &CExpr) -> Result<i64, CudaError> {
        Ok(self.eval(e, &mut Vec::new())?.int())
    }

    fn step(&mut self, step: &Step) -> Result<(), CudaError> {
        match step {
            Step::Map { count, body } => {
                for i in 0..self.size(count)? {
                    self.call(body, &[Value::Int(i)])?;
                }
            }
            Step::Reduce { reducer, out, outputs, length, value } => {
                let length = self.size(length)?;
                for o in 0..self.size(outputs)? {
                    let mut r = Fold::new(*reducer);
                    for k in 0..length {
                        let v = self.call(value, &[Value::Int(o), Value::Int(k)])?.expect("reductions return values");
                        r.add(v, k);
                    }
                    self.memory[*out].set(o as usize, r.result());
                }
            }
        }
        Ok(())
    }

    /// The tile product, with its operands rounded to the plan's precision and f32 sums.
    fn tiles(&mut self, t: &Tiles) -> Result<(), CudaError> {
        let precision = self.plan.precision;
        let (outer_count, inner_count, dim) =
            (self.size(&t.outer_count)?, self.size(&t.inner_count)?, self.size(&t.dim)? as usize);
        let rows = |data: &Data, count: i64| -> Vec<Vec<f32>> {
            (0..count as usize)
                .map(|r| (0..dim).map(|k| round_operand(precision, data.get(r * dim + k).real())).collect())
                .collect()
        };
        let (outer_rows, inner_rows) =
            (rows(&self.memory[t.outer], outer_count), rows(&self.memory[t.inner], inner_count));
        let width = match &t.product {
            PairwiseProduct::MatMul { width, .. } => self.size(width)? as usize,
            PairwiseProduct::Reduce(_) => 0,
        };
        for (o, x) in outer_rows.iter().enumerate() {
            let mut acc = vec![0f32; width];
            let mut fold = match t.product {
                PairwiseProduct::Reduce(r) => Some(Fold::new(r)),
                PairwiseProduct::MatMul { .. } => None,
            };
            for (n, y) in inner_rows.iter().enumerate() {
                let dot = x.iter().zip(y).fold(0f32, |s, (a, b)| a.mul_add(*b, s));
                let args = [Value::Int(o as i64), Value::Int(n as i64), Value::Real(dot)];
                let w = self.call(&t.weight, &args)?.expect("weights are returned").real();
                match (&mut fold, &t.product) {
                    (Some(f), _) => f.add(Value::Real(w), n as i64),
                    (None, PairwiseProduct::MatMul { v, .. }) => {
                        let w = round_operand(precision, w);
                        for (e, a) in acc.iter_mut().enumerate() {
                            *a = w.mul_add(round_operand(precision, self.memory[*v].get(n * width + e).real()), *a);
                        }
                    }
                    (None, PairwiseProduct::Reduce(_)) => unreachable!("reductions fold"),
                }
            }
            match fold {
                Some(f) => self.memory[t.out].set(o, f.result()),
                None => {
                    for (e, a) in acc.into_iter().enumerate() {
                        self.memory[t.out].set(o * width + e, Value::Real(a));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A reduction folded one value at a time, as the prelude's reducers do.
struct Fold {
    reducer: Reducer,
    float: f32,
    int: i64,
    /// Log-sum-exp's running maximum; argmax's index.
    top: f32,
    at: i64,
}

impl Fold {
    fn new(reducer: Reducer) -> Fold {
        let (float, int) = match reducer.op {
            ReduceOp::Max => (f32::NEG_INFINITY, i64::MIN),
            ReduceOp::Min => (f32::INFINITY, i64::MAX),
            _ => (0.0, 0),
        };
        Fold { reducer, float, int, top: f32::NEG_INFINITY, at: -1 }
    }

    fn add(&mut self, v: Value, k: i64) {
        let int = self.reducer.elem == Elem::Int;
        match self.reducer.op {
            ReduceOp::Sum if int => self.int += v.int(),
            ReduceOp::Max if int => self.int = self.int.max(v.int()),
            ReduceOp::Min if int => self.int = self.int.min(v.int()),
            ReduceOp::Sum => self.float += v.real(),
            ReduceOp::Max => self.float = self.float.max(v.real()),
            ReduceOp::Min => self.float = self.float.min(v.real()),
            ReduceOp::LogSumExp => {
                let (x, m) = (v.real(), self.top.max(v.real()));
                if m != f32::NEG_INFINITY {
                    self.float = self.float * (self.top - m).exp() + (x - m).exp();
                    self.top = m;
                }
            }
            ReduceOp::ArgMax => {
                if self.at < 0 || v.real() > self.top {
                    self.top = v.real();
                    self.at = k;
                }
            }
        }
    }

    fn result(&self) -> Value {
        match (self.reducer.op, self.reducer.elem) {
            (ReduceOp::LogSumExp, _) => {
                Value::Real(if self.float > 0.0 { self.top + self.float.ln() } else { f32::NEG_INFINITY })
            }
            (ReduceOp::ArgMax, _) => Value::Int(self.at.max(0)),
            (_, Elem::Int) => Value::Int(self.int),
            _ => Value::Real(self.float),
        }
    }
}

/// C's operators by the op table's semantics: the same as C's on the values generated code
/// applies them to (`%` and `/` only ever see non-negative indices, where C's and Python's
/// conventions agree).
fn binary(op: COp, a: Value, b: Value) -> Value {
    let op = match op {
        COp::Add => BinaryOp::Add,
        COp::Sub => BinaryOp::Sub,
        COp::Mul => BinaryOp::Mul,
        COp::Div => BinaryOp::Div,
        COp::Rem => BinaryOp::Rem,
        COp::Lt => BinaryOp::Lt,
        COp::Le => BinaryOp::Le,
        COp::Gt => BinaryOp::Gt,
        COp::Ge => BinaryOp::Ge,
        COp::Eq => BinaryOp::Eq,
        COp::Ne => BinaryOp::Ne,
        COp::And => BinaryOp::And,
        COp::Or => BinaryOp::Or,
    };
    op.eval(a, b)
}
