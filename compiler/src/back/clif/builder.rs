//! The layer between kernels and Cranelift: an [`Emitter`] wraps a `FunctionBuilder` with the
//! few shapes of code kernels are made of (counted loops, accumulators, frame reads, typed
//! loads and stores, lane-generic arithmetic), so kernel code reads as what it computes and
//! every function is built through the same calls.
//!
//! Values have an element type ([`Elem`]) and a [`Width`]: one element, or a SIMD vector of
//! [`LANES`]. Reals are `f32`; ints are `i32`; bools are `i32` masks (all ones is true), the
//! form vector comparisons produce, so scalar and vector code share one representation.

use super::frame;
use super::plan::LANES;
use super::sizes::{round_up, SizeTable};
use crate::ir::{Dim, Elem};
use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{
    AbiParam, Block, ConstantData, Endianness, ExtFuncData, ExternalName, FuncRef, InstBuilder, MemFlagsData,
    Signature, StackSlot, StackSlotData, StackSlotKind, Type, UserExternalName, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    One,
    Lanes,
}

/// The register type of `elem` at `width`.
pub(crate) fn reg_type(elem: Elem, width: Width) -> Type {
    match (elem, width) {
        (Elem::Real, Width::One) => F32,
        (Elem::Real, Width::Lanes) => F32X4,
        (_, Width::One) => I32,
        (_, Width::Lanes) => I32X4,
    }
}

/// A function the generated code calls: one the runtime registers, or another generated one.
#[derive(Clone, Debug)]
pub(crate) struct Callee {
    /// Its index among the JIT module's function declarations.
    pub id: u32,
    pub signature: Signature,
    /// Defined in the same module (a direct call) rather than found by symbol.
    pub local: bool,
}

/// What every function of one compilation shares: the size table and the functions to call.
pub(crate) struct Shared<'a> {
    pub sizes: &'a mut SizeTable,
    pub callees: &'a HashMap<String, Callee>,
}

pub(crate) struct Emitter<'f, 's> {
    pub fb: FunctionBuilder<'f>,
    /// The `*const Frame` every generated function receives first.
    pub frame: Value,
    shared: Shared<'s>,
    imported: HashMap<String, FuncRef>,
    /// The entry block, where every value read from the frame is loaded, once.
    entry: Block,
    /// Those values: (offset of the frame's table, index in it) to the loaded value.
    frame_values: HashMap<(i32, usize), Value>,
    /// Whether no buffer changes while this function runs (tile functions write only their
    /// tile and accumulators), so buffer reads may be hoisted out of loops.
    pub buffers_invariant: bool,
    /// What [`Self::hoist_invariants`] computed outside the current loop for the element
    /// program being evaluated.
    pub hoisted: Hoisted,
    /// The stack slot [`Self::anchor`] stores into, once made.
    anchor_slot: Option<StackSlot>,
}

/// Values of an element program computed outside the loop that evaluates it, by op index:
/// [`Emitter::evaluate`] reuses them instead of recomputing.
#[derive(Default)]
pub(crate) struct Hoisted {
    pub values: Vec<Option<Value>>,
    /// The reciprocals of hoisted divisors, to multiply by instead.
    pub reciprocals: Vec<Option<Value>>,
}

/// Flags for reads of the frame's tables: they never change while generated code runs, so
/// Cranelift may merge them and hoist them out of loops.
fn invariant() -> MemFlagsData {
    MemFlagsData::trusted().with_readonly().with_can_move()
}

/// Vector bitcasts must name a lane order; x86-64 is little-endian.
fn lanes_flags() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'f, 's> Emitter<'f, 's> {
    /// An emitter for the function being built in `fb`, whose current block is its entry.
    pub fn new(mut fb: FunctionBuilder<'f>, frame: Value, shared: Shared<'s>) -> Self {
        let entry = fb.current_block().expect("the entry block is current");
        // Frame values are inserted into it directly, so it must be in the layout already.
        fb.ensure_inserted_block();
        Emitter {
            fb,
            frame,
            shared,
            imported: HashMap::new(),
            entry,
            frame_values: HashMap::new(),
            buffers_invariant: false,
            hoisted: Hoisted::default(),
            anchor_slot: None,
        }
    }

    pub fn finish(self) -> FunctionBuilder<'f> {
        self.fb
    }

    pub fn int(&mut self, v: i64) -> Value {
        self.fb.ins().iconst(I64, v)
    }

    /// The run-time value of a dimension (`i64`).
    pub fn dim(&mut self, d: &Dim) -> Value {
        match d.as_constant() {
            Some(c) => self.int(c),
            None => {
                let slot = self.shared.sizes.exact(d);
                self.size_slot(slot)
            }
        }
    }

    /// A dimension rounded up to whole vectors.
    pub fn padded(&mut self, d: &Dim) -> Value {
        match d.as_constant() {
            Some(c) => self.int(round_up(c)),
            None => {
                let slot = self.shared.sizes.padded(d);
                self.size_slot(slot)
            }
        }
    }

    fn size_slot(&mut self, slot: usize) -> Value {
        self.frame_value(frame::SIZES, slot)
    }

    /// The address of buffer `buffer`'s first element.
    pub fn buffer_base(&mut self, buffer: usize) -> Value {
        self.frame_value(frame::BUFFERS, buffer)
    }

    /// Entry `index` of the frame's table at `table`, loaded at the top of the entry block the
    /// first time it is asked for: that dominates every use, so kernels do not reload it in
    /// their loops, and Cranelift has far less code to optimise away.
    fn frame_value(&mut self, table: i32, index: usize) -> Value {
        if let Some(&v) = self.frame_values.get(&(table, index)) {
            return v;
        }
        let frame = self.frame;
        let slot = self.anchor_slot();
        let mut pos = FuncCursor::new(self.fb.func).at_first_insertion_point(self.entry);
        let address = pos.ins().load(I64, invariant(), frame, table);
        let v = pos.ins().load(I64, invariant(), address, (index * 8) as i32);
        pos.ins().stack_store(I64, v, slot, 0);
        self.frame_values.insert((table, index), v);
        v
    }

    /// Keeps `values` computed where they are now. Cranelift places pure values at their
    /// first use in dominator order and does not move them out of loops itself, so a value
    /// computed before a loop but used only inside it would be recomputed on every iteration;
    /// storing it to a scratch stack slot here makes this its first use.
    pub fn anchor(&mut self, values: &[Value]) {
        let slot = self.anchor_slot();
        for &v in values {
            self.fb.ins().stack_store(I64, v, slot, 0);
        }
    }

    fn anchor_slot(&mut self) -> StackSlot {
        *self.anchor_slot.get_or_insert_with(|| {
            self.fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4))
        })
    }

    /// `base + index * 4`: the address of element `index` (all elements are 4 bytes).
    pub fn element_address(&mut self, base: Value, index: Value) -> Value {
        let bytes = self.fb.ins().ishl_imm_u(index, 2);
        self.fb.ins().iadd(base, bytes)
    }

    /// `for i in (start..end).step_by(step) { body(i) }`.
    pub fn for_range(&mut self, start: Value, end: Value, step: i64, body: impl FnOnce(&mut Self, Value)) {
        let counter = self.fb.declare_var(I64);
        self.fb.def_var(counter, start);
        let header = self.fb.create_block();
        let inside = self.fb.create_block();
        let exit = self.fb.create_block();
        self.fb.ins().jump(header, &[]);
        self.fb.switch_to_block(header);
        let i = self.fb.use_var(counter);
        let more = self.fb.ins().icmp(IntCC::SignedLessThan, i, end);
        self.fb.ins().brif(more, inside, &[], exit, &[]);
        self.fb.switch_to_block(inside);
        body(self, i);
        let next = self.fb.ins().iadd_imm_s(i, step);
        self.fb.def_var(counter, next);
        self.fb.ins().jump(header, &[]);
        self.fb.switch_to_block(exit);
    }

    /// `if cond != 0 { body() }`.
    pub fn when(&mut self, cond: Value, body: impl FnOnce(&mut Self)) {
        let then = self.fb.create_block();
        let after = self.fb.create_block();
        self.fb.ins().brif(cond, then, &[], after, &[]);
        self.fb.switch_to_block(then);
        body(self);
        self.fb.ins().jump(after, &[]);
        self.fb.switch_to_block(after);
    }

    /// A mutable local: Cranelift builds the SSA form of its uses.
    pub fn local(&mut self, ty: Type, init: Value) -> cranelift_frontend::Variable {
        let v = self.fb.declare_var(ty);
        self.fb.def_var(v, init);
        v
    }

    /// A function by name, imported into this function once.
    fn import(&mut self, name: &str) -> FuncRef {
        if let Some(&f) = self.imported.get(name) {
            return f;
        }
        let callee =
            self.shared.callees.get(name).unwrap_or_else(|| panic!("internal error: callee `{name}` is not declared"));
        let signature = self.fb.import_signature(callee.signature.clone());
        let user = self.fb.func.declare_imported_user_function(UserExternalName { namespace: 0, index: callee.id });
        let f = self.fb.import_function(ExtFuncData {
            name: ExternalName::user(user),
            signature,
            colocated: callee.local,
            patchable: false,
        });
        self.imported.insert(name.to_string(), f);
        f
    }

    /// Calls a runtime or generated function by name.
    pub fn call(&mut self, name: &str, args: &[Value]) -> Vec<Value> {
        let f = self.import(name);
        let call = self.fb.ins().call(f, args);
        self.fb.inst_results(call).to_vec()
    }

    /// The address of a generated function, for the runtime to call back.
    pub fn function_address(&mut self, name: &str) -> Value {
        let f = self.import(name);
        self.fb.ins().func_addr(I64, f)
    }

    // ---- typed values -------------------------------------------------------------------

    /// A constant of `elem` at `width` (`v` is converted: reals to f32, ints to i32, bools
    /// to masks).
    pub fn constant(&mut self, elem: Elem, width: Width, v: f64) -> Value {
        let scalar = match elem {
            Elem::Real => self.fb.ins().f32const(v as f32),
            Elem::Int => self.fb.ins().iconst(I32, i32_immediate(v as i64)),
            Elem::Bool => self.fb.ins().iconst(I32, i32_immediate(if v != 0.0 { -1 } else { 0 })),
        };
        self.widen(scalar, elem, width)
    }

    /// A scalar repeated across the lanes of `width`.
    pub fn widen(&mut self, scalar: Value, elem: Elem, width: Width) -> Value {
        match width {
            Width::One => scalar,
            Width::Lanes => self.fb.ins().splat(reg_type(elem, Width::Lanes), scalar),
        }
    }

    /// `[0, 1, 2, 3]` as an `i32x4`.
    pub fn lane_numbers(&mut self) -> Value {
        let bytes: Vec<u8> = (0..LANES as i32).flat_map(|k| k.to_le_bytes()).collect();
        let c = self.fb.func.dfg.constants.insert(ConstantData::from(bytes));
        self.fb.ins().vconst(I32X4, c)
    }

    /// An `i64` index as an `int` element, plus the lane number in vectors when `per_lane`.
    pub fn index_value(&mut self, index: Value, width: Width, per_lane: bool) -> Value {
        let narrow = self.fb.ins().ireduce(I32, index);
        let v = self.widen(narrow, Elem::Int, width);
        if per_lane && width == Width::Lanes {
            let lanes = self.lane_numbers();
            self.fb.ins().iadd(v, lanes)
        } else {
            v
        }
    }

    /// Loads `elem` at `addr`: one element, a whole vector, or lanes `stride` elements apart.
    pub fn load(&mut self, elem: Elem, width: Width, addr: Value, stride: LoadStride) -> Value {
        self.load_flagged(elem, width, addr, stride, MemFlagsData::trusted())
    }

    /// Loads a buffer element: as [`Self::load`], hoistable when buffers are invariant.
    pub fn load_buffer(&mut self, elem: Elem, width: Width, addr: Value, stride: LoadStride) -> Value {
        let flags = if self.buffers_invariant { invariant() } else { MemFlagsData::trusted() };
        self.load_flagged(elem, width, addr, stride, flags)
    }

    /// The vector `bytes` after `addr` in a buffer: the offset goes in the instruction.
    pub fn load_buffer_vector_at(&mut self, elem: Elem, addr: Value, bytes: i32) -> Value {
        let flags = if self.buffers_invariant { invariant() } else { MemFlagsData::trusted() };
        self.fb.ins().load(reg_type(elem, Width::Lanes), flags, addr, bytes)
    }

    fn load_flagged(
        &mut self,
        elem: Elem,
        width: Width,
        addr: Value,
        stride: LoadStride,
        flags: MemFlagsData,
    ) -> Value {
        let scalar_ty = reg_type(elem, Width::One);
        match (width, stride) {
            (Width::One, _) => self.fb.ins().load(scalar_ty, flags, addr, 0),
            (Width::Lanes, LoadStride::Uniform) => {
                let s = self.fb.ins().load(scalar_ty, flags, addr, 0);
                self.widen(s, elem, width)
            }
            (Width::Lanes, LoadStride::Contiguous) => self.fb.ins().load(reg_type(elem, width), flags, addr, 0),
            (Width::Lanes, LoadStride::Elements(step)) => {
                let bytes = self.fb.ins().ishl_imm_u(step, 2);
                let first = self.fb.ins().load(scalar_ty, flags, addr, 0);
                let mut v = self.widen(first, elem, width);
                let mut at = addr;
                for lane in 1..LANES as u8 {
                    at = self.fb.ins().iadd(at, bytes);
                    let x = self.fb.ins().load(scalar_ty, flags, at, 0);
                    v = self.fb.ins().insertlane(v, x, lane);
                }
                v
            }
        }
    }

    pub fn store(&mut self, value: Value, addr: Value) {
        self.fb.ins().store(MemFlagsData::trusted(), value, addr, 0);
    }

    // ---- lane-generic arithmetic ---------------------------------------------------------

    /// Reinterprets a mask (`i32` lanes) as reals with the same bits, or back.
    pub fn as_real_bits(&mut self, v: Value, width: Width) -> Value {
        self.fb.ins().bitcast(reg_type(Elem::Real, width), lanes_flags_for(width), v)
    }
    pub fn as_int_bits(&mut self, v: Value, width: Width) -> Value {
        self.fb.ins().bitcast(reg_type(Elem::Int, width), lanes_flags_for(width), v)
    }

    /// A comparison's result as a mask of `width`.
    pub fn fcmp(&mut self, cc: FloatCC, a: Value, b: Value, width: Width) -> Value {
        let c = self.fb.ins().fcmp(cc, a, b);
        self.mask_of(c, width)
    }
    pub fn icmp(&mut self, cc: IntCC, a: Value, b: Value, width: Width) -> Value {
        let c = self.fb.ins().icmp(cc, a, b);
        self.mask_of(c, width)
    }
    /// Scalar comparisons give `i8` 0/1; vector ones are already masks.
    fn mask_of(&mut self, c: Value, width: Width) -> Value {
        match width {
            Width::One => self.fb.ins().bmask(I32, c),
            Width::Lanes => c,
        }
    }

    /// `mask ? a : b` per lane; `a` and `b` share a type.
    pub fn select(&mut self, mask: Value, a: Value, b: Value, width: Width) -> Value {
        match width {
            Width::One => self.fb.ins().select(mask, a, b),
            Width::Lanes => {
                let ty = self.fb.func.dfg.value_type(a);
                let m = if ty == I32X4 { mask } else { self.fb.ins().bitcast(ty, lanes_flags(), mask) };
                self.fb.ins().bitselect(m, a, b)
            }
        }
    }

    /// Combines the lanes of a vector with `op` (a no-op on one element).
    pub fn across_lanes(
        &mut self,
        v: Value,
        width: Width,
        mut op: impl FnMut(&mut Self, Value, Value) -> Value,
    ) -> Value {
        if width == Width::One {
            return v;
        }
        let mut acc = self.fb.ins().extractlane(v, 0);
        for lane in 1..LANES as u8 {
            let x = self.fb.ins().extractlane(v, lane);
            acc = op(self, acc, x);
        }
        acc
    }
}

fn lanes_flags_for(width: Width) -> MemFlagsData {
    match width {
        Width::One => MemFlagsData::new(),
        Width::Lanes => lanes_flags(),
    }
}

/// How the lanes of a vector load lie in memory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LoadStride {
    /// Every lane reads the same element.
    Uniform,
    Contiguous,
    /// Lanes this many elements apart (an `i64` value).
    Elements(Value),
}

/// An `i32` constant as Cranelift stores it: the value's 32 bits, zero-extended.
fn i32_immediate(v: i64) -> i64 {
    i64::from(v as i32 as u32)
}

/// A function signature of pointer-sized integer parameters and no results (every generated
/// function and runtime entry point has this form).
pub(crate) fn signature_of(call_conv: cranelift_codegen::isa::CallConv, params: usize) -> Signature {
    let mut s = Signature::new(call_conv);
    s.params.extend((0..params).map(|_| AbiParam::new(I64)));
    s
}
