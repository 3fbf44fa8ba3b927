//! The CPU back end: the optimised gradient program compiled to native code with Cranelift.
//!
//! The stages, one file each:
//! 1. [`plan`] — decide which values get a buffer and group element-wise chains into the
//!    loops of their consumers (the fusion of element-wise code); every tensor is 2-D. Then
//!    [`schedule`] groups independent `repeat` loops to run side by side.
//! 2. [`codegen`] — build Cranelift functions for the plan's kernels through the [`builder`]
//!    layer: [`kernels`] (maps, reductions, products, gathers) and [`element`] (one point of
//!    a kernel, SIMD where possible, [`math`] for `exp`/`log`/`pow`), [`pairwise`] (tile
//!    functions of the fused pairwise nodes), [`sizes`] for the sizes read at run time; then
//!    JIT-compile them.
//! 3. [`runtime`] — the functions generated code calls (threads, GEMM) and the driver that
//!    fills the buffers, runs the code and reads the outputs; [`tiles`] is the tiled loop of
//!    pairwise nodes; [`matmul`] is the one call into the GEMM library, which both use;
//!    [`frame`] is what generated code and runtime share.
//!
//! Code is shape-generic (sizes are read at run time), so one compilation serves every batch
//! size, and [`cache`] keeps it for the life of the process.

mod builder;
mod cache;
mod codegen;
mod element;
mod frame;
mod kernels;
mod math;
mod matmul;
mod pairwise;
mod plan;
pub(crate) use plan::POLICY as FUSION_POLICY;
mod runtime;
mod schedule;
mod sizes;
mod tiles;

use super::{Backend, BackendError};
use crate::eval::Bindings;
use crate::ir::Type;
use crate::objective::{Evaluation, Executable};
use frame::Frame;
use plan::{Access, Plan};
use sizes::SizeTable;
use std::sync::Arc;

const NAME: &str = "cpu";

/// Something the CPU back end does not implement.
#[derive(Debug)]
pub(crate) struct Unsupported(pub String);

/// The JIT-compiled code of one optimised program, with what its driver needs.
pub(crate) struct Compiled {
    /// Owns the code memory `main` points into.
    _module: cranelift_jit::JITModule,
    main: extern "C" fn(*const Frame),
    plan: Plan,
    sizes: SizeTable,
    functions: Vec<cranelift_codegen::ir::Function>,
}

// SAFETY: the JIT module is never modified after `finalize_definitions`; its code is
// immutable and reentrant (every evaluation has its own frame and buffers).
unsafe impl Send for Compiled {}
// SAFETY: as above.
unsafe impl Sync for Compiled {}

fn compile(program: &crate::ir::Program) -> Result<Arc<Compiled>, BackendError> {
    let unsupported = |why: String| BackendError::Unsupported { backend: NAME, why };
    let isa = codegen::host_isa().map_err(unsupported)?;
    let key = cache::key(program, &codegen::isa_description(&isa));
    cache::get_or_compile(key, || {
        let mut plan = plan::plan(program).map_err(|u| unsupported(u.0))?;
        plan.steps = schedule::concurrent_loops(std::mem::take(&mut plan.steps));
        let generated =
            codegen::generate(&plan, isa).map_err(|e| unsupported(format!("internal compiler error: {e}")))?;
        // SAFETY: `main` was generated with the signature `fn(*const Frame)`.
        let main = unsafe { std::mem::transmute::<*const u8, extern "C" fn(*const Frame)>(generated.main) };
        Ok(Compiled { _module: generated.module, main, plan, sizes: generated.sizes, functions: generated.functions })
    })
}

/// An objective compiled for the CPU.
pub struct Cpu {
    executable: Arc<Executable>,
    compiled: Arc<Compiled>,
    /// The last evaluation's storage, reused by the next: a fresh allocation of that size is
    /// mapped anew by the OS and faults in page by page (SwAV at K = 3000 spent a quarter of
    /// its time there).
    spare: std::sync::Mutex<Vec<f32>>,
}

impl Cpu {
    /// Compiles the optimised gradient program of `executable` (or reuses code compiled
    /// before for the same optimised program).
    pub fn new(executable: Arc<Executable>) -> Result<Cpu, BackendError> {
        let compiled = compile(&executable.optimized)?;
        Ok(Cpu { executable, compiled, spare: Default::default() })
    }

    /// The Cranelift IR of every generated function.
    pub fn clif(&self) -> impl std::fmt::Display + '_ {
        codegen::ClifText(&self.compiled.functions)
    }

    fn run(&self, b: &Bindings) -> Result<Vec<candle_core::Tensor>, runtime::RunError> {
        let c = &self.compiled;
        let module = &self.executable.module;
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        let mut memory = runtime::Memory::new(&c.plan.buffers, &c.sizes, &b.dims, spare)?;
        runtime::write_leaves(&mut memory, &c.plan.buffers, module, b)?;
        let addresses = memory.addresses();
        let bad_index = runtime::fresh_index_report();
        let frame = Frame { buffers: addresses.as_ptr(), sizes: memory.sizes.as_ptr(), bad_index: &bad_index };
        (c.main)(&frame);
        let bad = bad_index.load(std::sync::atomic::Ordering::Relaxed);
        if bad != i64::MIN {
            return Err(runtime::RunError::Other(format!(
                "an index ({bad}) is out of range for the rows it selects from"
            )));
        }
        let outputs = c
            .plan
            .outputs
            .iter()
            .map(|(_, ty, access): &(String, Type, Access)| runtime::read_output(&memory, access, ty, module, b))
            .collect();
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = memory.into_storage();
        outputs
    }
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        NAME
    }
    fn evaluate(&self, bindings: &Bindings) -> Result<Evaluation, BackendError> {
        let outputs = self.run(bindings).map_err(|e| match e {
            runtime::RunError::Eval(e) => BackendError::Eval(e),
            runtime::RunError::Other(why) => BackendError::Run { backend: NAME, why },
        })?;
        self.executable.collect(&outputs).map_err(|e| BackendError::Run { backend: NAME, why: e.to_string() })
    }
}
