//! What generated code runs with: the functions it calls (splitting a kernel across threads,
//! the GEMM library, reporting a bad index), and the driver that lays out the buffers of one
//! evaluation, writes the leaves (inputs, parameters, ...) into them, runs `main` and reads
//! the outputs back.

use super::frame::{Frame, SharedFrame};
use super::matmul::{gemm_into, View};
use super::plan::{Access, Axis, Buffer, Coord, Leaf, RowStride, LANES};
use super::sizes::{round_up, SizeTable};
use crate::eval::{Bindings, EvalError};
use crate::ir::{BuiltinValue, Dim, Elem, Handle, Module, Type};
use candle_core::{DType, Device, Tensor};
use cranelift_codegen::ir::types::{F32, I64};
use cranelift_codegen::ir::Type as ClifType;
use rayon::prelude::*;
use std::sync::atomic::{AtomicI64, Ordering};

/// A kernel's entry point: `(frame, begin, end)` over its units.
type KernelFn = extern "C" fn(*const Frame, i64, i64);

/// Work (elements times operations) below which a kernel runs on the calling thread: splitting
/// smaller kernels costs more than it saves.
const PARALLEL_WORK: i64 = 1 << 15;

/// Runs `kernel` over `[0, total)`, split into ranges of whole `grain`s across the thread pool
/// when the work is large enough.
extern "C" fn parallel_for(frame: *const Frame, kernel: KernelFn, total: i64, grain: i64, work: i64) {
    let threads = rayon::current_num_threads() as i64;
    let grain = grain.max(1);
    let grains = (total + grain - 1) / grain;
    if threads <= 1 || grains <= 1 || total.saturating_mul(work.max(1)) < PARALLEL_WORK {
        kernel(frame, 0, total);
        return;
    }
    // A few ranges per thread, so an uneven split still keeps every thread busy.
    let pieces = grains.min(threads * 4);
    let per_piece = (grains + pieces - 1) / pieces * grain;
    let frame = SharedFrame(frame);
    (0..pieces).into_par_iter().for_each(|k| {
        let begin = k * per_piece;
        let end = (begin + per_piece).min(total);
        if begin < end {
            kernel(frame.get(), begin, end);
        }
    });
}

/// A generated loop function: `(frame)`.
type LoopFn = extern "C" fn(*const Frame);

/// Runs the `count` loop functions at `functions` side by side on the thread pool (they share
/// no buffer they write; see `schedule`).
///
/// # Safety
///
/// `functions` must point to `count` addresses of generated functions of type [`LoopFn`] (an
/// array generated code keeps on its stack), and `frame` to the frame they run with.
unsafe extern "C" fn concurrent(frame: *const Frame, functions: *const i64, count: i64) {
    let loops: Vec<LoopFn> = (0..count as usize)
        // SAFETY: entry `m < count` of the array, the address of a `LoopFn` (see above).
        .map(|m| unsafe { std::mem::transmute::<*const u8, LoopFn>(*functions.add(m) as *const u8) })
        .collect();
    let frame = SharedFrame(frame);
    if rayon::current_num_threads() <= 1 {
        loops.iter().for_each(|f| f(frame.get()));
    } else {
        loops.par_iter().for_each(|f| f(frame.get()));
    }
}

/// `out = lhs @ rhs` for strided `f32` matrices (addresses and strides in elements), on the
/// current thread pool when the product is large.
///
/// # Safety
///
/// As [`gemm_into`]: `lhs` and `rhs` must be `m × k` and `k × n` matrices and `out` an
/// `m × n` one laid out as their strides say (generated code passes buffers of the current
/// evaluation), `out` not overlapping the operands.
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn gemm_f32(
    m: i64,
    n: i64,
    k: i64,
    out: *mut f32,
    out_rs: i64,
    out_cs: i64,
    lhs: *const f32,
    lhs_rs: i64,
    lhs_cs: i64,
    rhs: *const f32,
    rhs_rs: i64,
    rhs_cs: i64,
) {
    let parallelism = if m * n * k >= 1 << 18 && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    let (lhs, rhs) = (View::new(lhs as i64, lhs_rs, lhs_cs), View::new(rhs as i64, rhs_rs, rhs_cs));
    // SAFETY: the caller passes matrices as `gemm_into` needs them (see above).
    unsafe { gemm_into([m, n, k], out, out_rs as isize, out_cs as isize, lhs, rhs, false, parallelism) };
}

/// Records the first index out of range; the driver turns it into an error.
///
/// # Safety
///
/// `frame` must point to a live frame, with a live `bad_index` slot (generated code passes
/// the frame it was called with).
unsafe extern "C" fn index_error(frame: *const Frame, index: i64, _limit: i64) {
    // SAFETY: both pointers are live (see above).
    let slot = unsafe { &*(*frame).bad_index };
    let _ = slot.compare_exchange(i64::MIN, index, Ordering::Relaxed, Ordering::Relaxed);
}

extern "C" fn cosf(x: f32) -> f32 {
    x.cos()
}

/// A runtime function generated code may call.
pub(crate) struct Symbol {
    pub name: &'static str,
    pub address: *const u8,
    pub params: Vec<ClifType>,
    pub returns: Vec<ClifType>,
}

pub(crate) fn symbols() -> Vec<Symbol> {
    let ints = |n: usize| vec![I64; n];
    vec![
        Symbol { name: "sslc_parallel_for", address: parallel_for as *const u8, params: ints(5), returns: vec![] },
        Symbol { name: "sslc_gemm", address: gemm_f32 as *const u8, params: ints(12), returns: vec![] },
        Symbol {
            name: "sslc_pairwise",
            address: super::tiles::pairwise as *const u8,
            params: ints(2),
            returns: vec![],
        },
        Symbol { name: "sslc_concurrent", address: concurrent as *const u8, params: ints(3), returns: vec![] },
        Symbol { name: "sslc_index_error", address: index_error as *const u8, params: ints(3), returns: vec![] },
        Symbol { name: "sslc_cosf", address: cosf as *const u8, params: vec![F32], returns: vec![F32] },
    ]
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("{0}")]
    Eval(Box<EvalError>),
    #[error("{0}")]
    Other(String),
}

impl From<EvalError> for RunError {
    fn from(e: EvalError) -> Self {
        RunError::Eval(Box::new(e))
    }
}

impl From<candle_core::Error> for RunError {
    fn from(e: candle_core::Error) -> Self {
        RunError::Other(e.to_string())
    }
}

/// The buffers of one evaluation, in one allocation.
pub(crate) struct Memory {
    storage: Vec<f32>,
    /// Where each buffer starts in `storage`.
    offsets: Vec<usize>,
    /// Each buffer's row stride.
    strides: Vec<usize>,
    /// The size table's values.
    pub sizes: Vec<i64>,
}

/// Buffers start on 64-byte boundaries (16 elements), a cache line each.
const ALIGN_ELEMENTS: usize = 16;

impl Memory {
    /// Lays the buffers out in `storage` (a previous evaluation's, or empty), zeroed.
    pub fn new(buffers: &[Buffer], table: &SizeTable, dims: &[i64], storage: Vec<f32>) -> Result<Memory, RunError> {
        let size_of = |s: crate::ir::DimSym| dims.get(s.index()).copied();
        let sizes = table
            .values(&size_of)
            .ok_or_else(|| RunError::Other("a dimension has no size, or a negative one".into()))?;
        let eval = |d: &Dim| -> Result<usize, RunError> {
            let v = d.eval(&size_of).ok_or_else(|| RunError::Other("a dimension has no size".into()))?;
            usize::try_from(v).map_err(|_| RunError::Other(format!("a size evaluates to {v}")))
        };
        let mut offsets = Vec::with_capacity(buffers.len());
        let mut strides = Vec::with_capacity(buffers.len());
        let mut total = 0usize;
        for b in buffers {
            let stride = match b.row_stride() {
                RowStride::One => 1,
                RowStride::Padded(d) => round_up(eval(&d)? as i64) as usize,
            };
            let len = eval(&b.rows)?
                .checked_mul(stride)
                .and_then(|l| l.checked_add(LANES as usize))
                .ok_or_else(|| RunError::Other("a buffer would not fit in memory".into()))?;
            total = total.div_ceil(ALIGN_ELEMENTS) * ALIGN_ELEMENTS;
            offsets.push(total);
            strides.push(stride);
            total =
                total.checked_add(len).ok_or_else(|| RunError::Other("the buffers would not fit in memory".into()))?;
        }
        // Extra room to start the first buffer on a boundary whatever the allocator returns,
        // and for the last vector of a padded row read through a transposed view: up to
        // LANES - 1 rows past a buffer's end (only padding lanes, never results, come from
        // there).
        let widest = strides.iter().copied().max().unwrap_or(1);
        let mut storage = storage;
        storage.clear();
        storage.resize(total + ALIGN_ELEMENTS + LANES as usize * widest, 0.0);
        let shift = storage.as_ptr().align_offset(ALIGN_ELEMENTS * 4);
        let offsets = offsets.into_iter().map(|o| o + shift).collect();
        Ok(Memory { storage, offsets, strides, sizes })
    }

    /// The storage, for the next evaluation to reuse.
    pub fn into_storage(self) -> Vec<f32> {
        self.storage
    }

    /// Every buffer's address, for the frame.
    pub fn addresses(&mut self) -> Vec<*mut f32> {
        let base = self.storage.as_mut_ptr();
        // SAFETY: every offset lies within `storage` (see `new`).
        self.offsets.iter().map(|&o| unsafe { base.add(o) }).collect()
    }

    /// Writes `values` (row-major, `cols` to a row) into buffer `id`, one padded row at a time.
    fn write(&mut self, id: usize, cols: usize, values: &[f32]) {
        let (start, stride) = (self.offsets[id], self.strides[id]);
        for (r, row) in values.chunks(cols.max(1)).enumerate() {
            self.storage[start + r * stride..][..row.len()].copy_from_slice(row);
        }
    }

    /// The `rows × cols` elements `access` reads, row-major, as their bits.
    fn read(&self, access: &Access, rows: usize, cols: usize, dims: &[i64]) -> Vec<f32> {
        let offset = |c: &Coord<Axis>| c.offset.eval(&|s| dims.get(s.index()).copied()).unwrap_or(0).max(0) as usize;
        let follows = |c: &Coord<Axis>, axis: Axis| usize::from(c.follows == Some(axis));
        let stride = self.strides[access.buffer];
        let start = self.offsets[access.buffer] + offset(&access.row) * stride + offset(&access.col);
        // Elements between consecutive rows and columns of the value, in storage.
        let step = |axis: Axis| follows(&access.row, axis) * stride + follows(&access.col, axis);
        let (down, across) = (step(Axis::Row), step(Axis::Col));
        (0..rows).flat_map(|r| (0..cols).map(move |c| self.storage[start + r * down + c * across])).collect()
    }
}

/// What a leaf holds: a bound tensor or one number.
enum LeafValue<'b> {
    Tensor(&'b Tensor),
    Number(f64),
}

fn leaf_value<'b>(leaf: &Leaf, module: &Module, b: &'b Bindings) -> Result<LeafValue<'b>, RunError> {
    Ok(match leaf {
        Leaf::Input(i) => LeafValue::Tensor(&b.inputs[*i]),
        Leaf::Const(i) => LeafValue::Tensor(&b.consts[*i]),
        Leaf::State(i) => LeafValue::Tensor(&b.states[*i]),
        Leaf::Forward(i) => LeafValue::Tensor(b.forward.get(*i).ok_or(EvalError::NoForward(*i))?),
        Leaf::Builtin(BuiltinValue::SampleIndex) => LeafValue::Tensor(b.index.as_ref().ok_or(EvalError::NoIndex)?),
        Leaf::Param(p) => LeafValue::Number(b.param(module, Handle::new(*p))),
        Leaf::Builtin(BuiltinValue::Epoch) => LeafValue::Number(b.epoch as f64),
        Leaf::Builtin(BuiltinValue::Epochs) => LeafValue::Number(b.epochs as f64),
        Leaf::Builtin(BuiltinValue::Iteration) => LeafValue::Number(b.iteration as f64),
        Leaf::Builtin(BuiltinValue::Iterations) => LeafValue::Number(b.iterations as f64),
        Leaf::Builtin(BuiltinValue::BaseLr) => LeafValue::Number(b.base_lr),
        Leaf::RunFraction(f) => LeafValue::Number(b.run_fraction(*f) as f64),
        Leaf::DimSize(d) => LeafValue::Number(b.size(module, d) as f64),
    })
}

/// Writes every leaf buffer from the bindings. Reals are copied as `f32` straight from their
/// tensors; ints and bools (indices, flags: small) go through `f64`.
pub(crate) fn write_leaves(
    memory: &mut Memory,
    buffers: &[Buffer],
    module: &Module,
    b: &Bindings,
) -> Result<(), RunError> {
    for (id, buffer) in buffers.iter().enumerate() {
        let Some(leaf) = &buffer.leaf else { continue };
        let expected = b.size(module, &buffer.rows) * b.size(module, &buffer.cols);
        let bits = match (leaf_value(leaf, module, b)?, buffer.elem) {
            (LeafValue::Tensor(t), Elem::Real) => {
                sized(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?, expected)?
            }
            (LeafValue::Tensor(t), elem) => {
                encode(sized(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?, expected)?, elem)?
            }
            (LeafValue::Number(v), elem) => encode(vec![v], elem)?,
        };
        memory.write(id, b.size(module, &buffer.cols), &bits);
    }
    Ok(())
}

fn sized<T>(values: Vec<T>, expected: usize) -> Result<Vec<T>, RunError> {
    if values.len() != expected {
        return Err(RunError::Other(format!("a value has {} elements where {expected} were expected", values.len())));
    }
    Ok(values)
}

/// Numbers as the bits generated code reads: `f32`, `i32`, or an all-ones mask for true.
fn encode(values: Vec<f64>, elem: Elem) -> Result<Vec<f32>, RunError> {
    values
        .into_iter()
        .map(|v| match elem {
            Elem::Real => Ok(v as f32),
            Elem::Int if v.abs() >= f64::from(i32::MAX) => {
                Err(RunError::Other(format!("the integer {v} is too large for the CPU back end's 32-bit ints")))
            }
            Elem::Int => Ok(f32::from_bits(v as i32 as u32)),
            Elem::Bool => Ok(f32::from_bits(if v != 0.0 { u32::MAX } else { 0 })),
        })
        .collect()
}

/// Reads an output into a tensor of its type.
pub(crate) fn read_output(
    memory: &Memory,
    access: &Access,
    ty: &Type,
    module: &Module,
    b: &Bindings,
) -> Result<Tensor, RunError> {
    let shape = b.shape(module, &ty.shape);
    let (rows, cols) = match shape.len() {
        0 => (1, 1),
        1 => (1, shape[0]),
        _ => (shape[0], shape[1]),
    };
    let bits = memory.read(access, rows, cols, &b.dims);
    let device = Device::Cpu;
    let tensor = match ty.elem {
        Elem::Real => Tensor::from_vec(bits, shape.as_slice(), &device)?,
        Elem::Int => Tensor::from_vec(
            bits.iter().map(|v| i64::from(v.to_bits() as i32)).collect::<Vec<i64>>(),
            shape.as_slice(),
            &device,
        )?,
        Elem::Bool => Tensor::from_vec(
            bits.iter().map(|v| u8::from(v.to_bits() != 0)).collect::<Vec<u8>>(),
            shape.as_slice(),
            &device,
        )?,
    };
    Ok(tensor)
}

/// The slot where kernels report a bad index, fresh for each evaluation.
pub(crate) fn fresh_index_report() -> AtomicI64 {
    AtomicI64::new(i64::MIN)
}
