//! From a [`Plan`] to machine code: one Cranelift function per top-level kernel (called by the
//! runtime over ranges of its units, on several threads when it is large), one per top-level
//! loop (the whole `repeat`, its body kernels inline), and `main`, which runs the steps in
//! order. The functions are JIT-compiled together; their Cranelift IR is kept for
//! `sslc emit --stage clif`.

use super::builder::{signature_of, Callee, Emitter, Shared, Width};
use super::element::Point;
use super::kernels::{product_kind, Product};
use super::plan::{Axis, Buffer, Plan, Step};
use super::runtime;
use super::sizes::SizeTable;
use crate::ir::Elem;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Function, InstBuilder, Signature, StackSlotData, StackSlotKind, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module, ModuleReloc};
use rayon::prelude::*;
use std::collections::HashMap;

/// JIT-compiled code of one plan.
pub(crate) struct Generated {
    pub module: JITModule,
    pub main: *const u8,
    /// Every function as built (before Cranelift's optimisations), for `sslc emit --stage clif`.
    pub functions: Vec<Function>,
    pub sizes: SizeTable,
}

/// The host's instruction set, with Cranelift tuned for speed.
pub(crate) fn host_isa() -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, name: &str, value: &str| {
        f.set(name, value).map_err(|e| format!("cranelift setting {name}: {e}"))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
    let isa = cranelift_native::builder().map_err(|e| format!("this machine is not supported by Cranelift: {e}"))?;
    isa.finish(settings::Flags::new(flags)).map_err(|e| format!("cranelift: {e}"))
}

/// The host ISA as text, for cache keys: the target triple and the features in use.
pub(crate) fn isa_description(isa: &OwnedTargetIsa) -> String {
    let features: Vec<String> = isa.isa_flags().iter().map(|f| f.to_string()).collect();
    format!("{} {}", isa.triple(), features.join(" "))
}

/// What a generated function does.
enum Body<'p> {
    Kernel(&'p Step),
    Loop(&'p Step),
    /// The tile function of a pairwise step.
    Tile(&'p Step),
    Main,
}

pub(crate) fn generate(plan: &Plan, isa: OwnedTargetIsa) -> Result<Generated, String> {
    let call_conv = isa.default_call_conv();
    let mut jit = JITBuilder::with_isa(isa, default_libcall_names());
    let symbols = runtime::symbols();
    for s in &symbols {
        jit.symbol(s.name, s.address);
    }
    let mut module = JITModule::new(jit);
    let fail = |e: cranelift_module::ModuleError| format!("cranelift: {e:?}");

    let mut callees = HashMap::new();
    for s in &symbols {
        let mut signature = Signature::new(call_conv);
        signature.params.extend(s.params.iter().map(|&t| AbiParam::new(t)));
        signature.returns.extend(s.returns.iter().map(|&t| AbiParam::new(t)));
        let id = module.declare_function(s.name, Linkage::Import, &signature).map_err(fail)?;
        callees.insert(s.name.to_string(), Callee { id: id.as_u32(), signature, local: false });
    }

    let mut functions: Vec<(String, Body)> = Vec::new();
    for (k, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Loop { .. } => functions.push((format!("loop{k}"), Body::Loop(step))),
            Step::Concurrent { loops } => {
                functions.extend(loops.iter().enumerate().map(|(m, l)| (format!("loop{k}_{m}"), Body::Loop(l))));
            }
            Step::Pairwise { .. } => functions.push((format!("pairwise{k}"), Body::Tile(step))),
            Step::MatMul { m, n, .. } if product_kind(m, n) == Product::General => {}
            _ => functions.push((format!("kernel{k}"), Body::Kernel(step))),
        }
    }
    functions.push(("main".to_string(), Body::Main));
    let mut ids = Vec::new();
    for (name, body) in &functions {
        let params = match body {
            Body::Kernel(_) => 3,
            Body::Tile(_) => 8,
            Body::Loop(_) | Body::Main => 1,
        };
        let signature = signature_of(call_conv, params);
        let id = module.declare_function(name, Linkage::Local, &signature).map_err(fail)?;
        callees.insert(name.clone(), Callee { id: id.as_u32(), signature, local: true });
        ids.push(id);
    }

    // The functions are built one after another (they share the size table), then compiled
    // to machine code on the thread pool, and the code handed to the JIT module.
    let mut sizes = SizeTable::default();
    let mut builder_ctx = FunctionBuilderContext::new();
    let mut built = Vec::with_capacity(functions.len());
    for (name, body) in &functions {
        let mut func =
            Function::with_name_signature(UserFuncName::testcase(name.as_str()), callees[name].signature.clone());
        let mut fb = FunctionBuilder::new(&mut func, &mut builder_ctx);
        let entry = fb.create_block();
        fb.append_block_params_for_function_params(entry);
        fb.switch_to_block(entry);
        let params = fb.block_params(entry).to_vec();
        let mut em = Emitter::new(fb, params[0], Shared { sizes: &mut sizes, callees: &callees });
        match body {
            Body::Kernel(step) => em.kernel(&plan.buffers, step, params[1], params[2]),
            Body::Loop(step) => em.inline_step(&plan.buffers, step),
            Body::Tile(step) => em.pairwise_tile(&plan.buffers, step, &params),
            Body::Main => em.main(plan),
        }
        let mut fb = em.finish();
        fb.ins().return_(&[]);
        fb.seal_all_blocks();
        fb.finalize(module.target_config());
        built.push(func);
    }
    let isa = module.isa();
    let machine_code = built
        .par_iter()
        .zip(&ids)
        .map(|(func, &id)| {
            let mut ctx = Context::for_function(func.clone());
            let alignment = ctx
                .compile(isa, &mut ControlPlane::default())
                .map_err(|e| format!("cranelift rejected `{}`: {:?}", func.name, e.inner))?
                .buffer
                .alignment;
            let code = ctx.compiled_code().ok_or("cranelift kept no code")?;
            let relocs: Vec<ModuleReloc> =
                code.buffer.relocs().iter().map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id)).collect();
            Ok((u64::from(alignment), code.code_buffer().to_vec(), relocs))
        })
        .collect::<Result<Vec<_>, String>>()?;
    for ((alignment, bytes, relocs), &id) in machine_code.iter().zip(&ids) {
        module.define_function_bytes(id, *alignment, bytes, relocs).map_err(fail)?;
    }
    module.finalize_definitions().map_err(fail)?;
    let main = module.get_finalized_function(*ids.last().ok_or("no functions were generated")?);
    Ok(Generated { module, main, functions: built, sizes })
}

/// Cranelift IR as `sslc emit --stage clif` prints it: every function, one after another.
pub(crate) struct ClifText<'a>(pub &'a [Function]);

impl std::fmt::Display for ClifText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for func in self.0 {
            writeln!(f, "{}", func.display())?;
        }
        Ok(())
    }
}

impl Emitter<'_, '_> {
    /// `main`: every top-level step in order; kernels go through the runtime's thread split.
    fn main(&mut self, plan: &Plan) {
        let frame = self.frame;
        for (k, step) in plan.steps.iter().enumerate() {
            match step {
                Step::Loop { .. } => {
                    self.call(&format!("loop{k}"), &[frame]);
                }
                Step::Pairwise { .. } => self.pairwise_call(&plan.buffers, step, &format!("pairwise{k}")),
                Step::Concurrent { loops } => {
                    let names: Vec<String> = (0..loops.len()).map(|m| format!("loop{k}_{m}")).collect();
                    self.concurrent_call(&names);
                }
                Step::MatMul { out, lhs, rhs, m, k: inner, n } if product_kind(m, n) == Product::General => {
                    self.gemm_call(&plan.buffers, out, lhs, rhs, [m, inner, n]);
                }
                _ => {
                    if let Some(units) = self.units(step) {
                        let kernel = self.function_address(&format!("kernel{k}"));
                        let grain = self.int(units.grain);
                        self.call("sslc_parallel_for", &[frame, kernel, units.total, grain, units.work]);
                    }
                }
            }
        }
    }

    /// Runs the loop functions `names` through the runtime, side by side: their addresses go
    /// in an array on the stack.
    fn concurrent_call(&mut self, names: &[String]) {
        let size = (names.len() * 8) as u32;
        let slot = self.fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, size, 3));
        for (m, name) in names.iter().enumerate() {
            let f = self.function_address(name);
            self.fb.ins().stack_store(I64, f, slot, (m * 8) as i32);
        }
        let array = self.fb.ins().stack_addr(I64, slot, 0);
        let count = self.int(names.len() as i64);
        let frame = self.frame;
        self.call("sslc_concurrent", &[frame, array, count]);
    }

    /// A step run whole, here: kernels over all their units, products, and loops.
    fn inline_step(&mut self, buffers: &[Buffer], step: &Step) {
        match step {
            Step::Loop { count, body, update } => {
                let zero = self.int(0);
                let origin = Point { row: zero, col: zero, inner: Axis::Col, width: Width::One, tile: None };
                let n = self.load_access(buffers, count, Elem::Int, &origin);
                let n = self.fb.ins().sextend(I64, n);
                self.for_range(zero, n, 1, |em, _| {
                    for s in body.iter().chain(update) {
                        em.inline_step(buffers, s);
                    }
                });
            }
            Step::MatMul { out, lhs, rhs, m, k, n } if product_kind(m, n) == Product::General => {
                self.gemm_call(buffers, out, lhs, rhs, [m, k, n]);
            }
            _ => {
                if let Some(units) = self.units(step) {
                    let zero = self.int(0);
                    self.kernel(buffers, step, zero, units.total);
                }
            }
        }
    }
}
