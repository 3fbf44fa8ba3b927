//! What the CUDA back end runs: device buffers, host scalars and an ordered list of kernels,
//! each made of *steps* whose element computations are C expressions. One plan feeds three
//! consumers: the printer ([`Plan::kernels`], the `--stage cuda` text), the device launcher
//! ([`super::driver`]) and the CPU emulator ([`super::emulate`]), so the code that is printed is
//! the code that is tested.

use super::c::{self, CExpr, CStmt, CType, Kernel, Lambda, Param};
use super::Precision;
use crate::ir::{DimSym, Elem, Handle, ParamDecl, ReduceOp, Shape};

pub type BufferId = usize;
pub type ScalarId = usize;

/// Where a buffer's contents come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferSource {
    Input(usize),
    Const(usize),
    State(usize),
    /// The batch's dataset indices.
    SampleIndex,
    /// Computed by a kernel.
    Temp,
}

#[derive(Clone, Debug)]
pub struct Buffer {
    /// The C identifier of the kernel parameter.
    pub name: String,
    pub elem: Elem,
    pub shape: Shape,
    pub source: BufferSource,
}

/// A value the host knows at launch time, passed to the kernels that read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HostScalar {
    Dim(DimSym),
    Param(Handle<ParamDecl>),
    Epoch,
    Epochs,
    Iteration,
    Iterations,
    BaseLr,
    RunFraction(f64),
}

#[derive(Clone, Debug)]
pub struct Scalar {
    pub name: String,
    pub ty: CType,
    pub value: HostScalar,
}

/// A reduction and the element type it folds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reducer {
    pub op: ReduceOp,
    pub elem: Elem,
}

impl Reducer {
    /// The prelude's reducer type.
    pub fn c_type(self) -> String {
        let t = c_type(self.elem);
        match self.op {
            ReduceOp::Sum => format!("sslc::Sum<{t}>"),
            ReduceOp::Max => format!("sslc::Max<{t}>"),
            ReduceOp::Min => format!("sslc::Min<{t}>"),
            ReduceOp::LogSumExp => "sslc::LogSumExp".into(),
            ReduceOp::ArgMax => "sslc::ArgMax".into(),
        }
    }
}

pub fn c_type(elem: Elem) -> CType {
    match elem {
        Elem::Real => CType::Float,
        Elem::Int => CType::LongLong,
        Elem::Bool => CType::Bool,
    }
}

/// What a pairwise step does with the weights `w(o, n)` of each outer row.
#[derive(Clone, Debug)]
pub enum PairwiseProduct {
    Reduce(Reducer),
    /// `Σ_n w(o, n) v[n, :]`, with `v` of `width` columns.
    MatMul {
        v: BufferId,
        width: CExpr,
    },
}

/// One unit of grid-stride work. Counts are expressions of the host scalars.
#[derive(Clone, Debug)]
pub enum Step {
    /// `body(i)` for every `i < count`; the body stores its own results.
    Map { count: CExpr, body: Lambda },
    /// `out[o] = reduce_k value(o, k)` for `o < outputs`, `k < length`.
    Reduce { reducer: Reducer, out: BufferId, outputs: CExpr, length: CExpr, value: Lambda },
}

/// Tiles of `w(o, n, outer_o · inner_n)` over outer and inner rows, never stored: reduced
/// over `n`, or multiplied with the rows of `v`.
#[derive(Clone, Debug)]
pub struct Tiles {
    pub outer: BufferId,
    pub inner: BufferId,
    pub outer_count: CExpr,
    pub inner_count: CExpr,
    pub dim: CExpr,
    pub out: BufferId,
    pub weight: Lambda,
    pub product: PairwiseProduct,
}

/// How a kernel's work runs.
#[derive(Clone, Debug)]
pub enum Body {
    /// Independent steps over the whole grid, one after the other in one launch.
    Grid(Vec<Step>),
    /// One pairwise product; each block owns 64 outer rows.
    Tiles(Tiles),
    /// A `repeat` loop in one launch: one block runs `init`, then `body` `count` times, with
    /// `__syncthreads` between steps, so the loop's state never leaves the chip's caches.
    Loop { init: Vec<Step>, count: CExpr, body: Vec<Step> },
}

#[derive(Clone, Debug)]
pub struct KernelPlan {
    pub name: String,
    pub doc: String,
    pub body: Body,
    /// Parameters, in order: buffers with how the kernel uses them, then scalars.
    pub buffers: Vec<(BufferId, Use)>,
    pub scalars: Vec<ScalarId>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Use {
    pub read: bool,
    pub written: bool,
}

pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub scalars: Vec<Scalar>,
    pub kernels: Vec<KernelPlan>,
    /// The program's outputs, in order, and the buffers holding them.
    pub outputs: Vec<(String, BufferId)>,
    pub precision: Precision,
}

/// Threads per block of grid-wide steps and pairwise tiles (the prelude's `PAIR_THREADS`).
pub const GRID_THREADS: u32 = 256;
/// Threads of the single block that runs a loop.
pub const LOOP_THREADS: u32 = 1024;
/// Rows of a pairwise tile and columns of `v` per block (the prelude's `TILE`, `VCOLS`).
pub const PAIR_TILE: u64 = 64;
pub const PAIR_VCOLS: u64 = 128;

impl Body {
    pub fn threads(&self) -> u32 {
        match self {
            Body::Grid(_) | Body::Tiles(_) => GRID_THREADS,
            Body::Loop { .. } => LOOP_THREADS,
        }
    }
}

impl Plan {
    /// The kernels as CUDA C.
    pub fn kernels(&self) -> Vec<Kernel> {
        self.kernels.iter().map(|k| self.kernel(k)).collect()
    }

    fn kernel(&self, k: &KernelPlan) -> Kernel {
        let mut params: Vec<Param> = k
            .buffers
            .iter()
            .map(|&(b, u)| {
                let buf = &self.buffers[b];
                Param::Buffer { ty: c_type(buf.elem), name: buf.name.clone(), read: u.read, written: u.written }
            })
            .collect();
        params.extend(
            k.scalars.iter().map(|&s| Param::Scalar { ty: self.scalars[s].ty, name: self.scalars[s].name.clone() }),
        );
        let mut body = Vec::new();
        match &k.body {
            Body::Grid(steps) => {
                body.push(CStmt::Context("sslc::Grid"));
                body.extend(steps.iter().map(|s| self.step(s)));
            }
            Body::Tiles(t) => body.push(self.tiles(t)),
            Body::Loop { init, count, body: steps } => {
                body.push(CStmt::Context("sslc::Block"));
                for s in init {
                    body.push(self.step(s));
                    body.push(CStmt::SyncThreads);
                }
                let mut each = Vec::new();
                for s in steps {
                    each.push(self.step(s));
                    each.push(CStmt::SyncThreads);
                }
                body.push(CStmt::Repeat { var: "iteration".into(), count: count.clone(), body: each });
            }
        }
        Kernel { name: k.name.clone(), doc: k.doc.clone(), threads: k.body.threads(), params, body }
    }

    fn buffer(&self, b: BufferId) -> CExpr {
        c::var(self.buffers[b].name.clone())
    }

    fn step(&self, step: &Step) -> CStmt {
        let ctx = c::var("ctx");
        CStmt::Expr(match step {
            Step::Map { count, body } => c::call("sslc::map", vec![ctx, count.clone(), CExpr::Lambda(body.clone())]),
            Step::Reduce { reducer, out, outputs, length, value } => c::call(
                format!("sslc::reduce<{}>", reducer.c_type()),
                vec![ctx, self.buffer(*out), outputs.clone(), length.clone(), CExpr::Lambda(value.clone())],
            ),
        })
    }

    fn tiles(&self, t: &Tiles) -> CStmt {
        let precision = c::var(self.precision.c_tag());
        let (name, mut args) = match &t.product {
            PairwiseProduct::Reduce(r) => (format!("sslc::pairwise_reduce<{}>", r.c_type()), vec![precision]),
            PairwiseProduct::MatMul { .. } => ("sslc::pairwise_matmul".to_string(), vec![precision]),
        };
        args.extend([self.buffer(t.outer), self.buffer(t.inner)]);
        if let PairwiseProduct::MatMul { v, .. } = &t.product {
            args.push(self.buffer(*v));
        }
        args.extend([t.outer_count.clone(), t.inner_count.clone(), t.dim.clone()]);
        if let PairwiseProduct::MatMul { width, .. } = &t.product {
            args.push(width.clone());
        }
        args.extend([self.buffer(t.out), CExpr::Lambda(t.weight.clone())]);
        CStmt::Expr(c::call(name, args))
    }
}
