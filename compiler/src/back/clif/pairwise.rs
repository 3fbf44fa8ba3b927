//! Pairwise nodes in generated code: the tile function the runtime's tiled loop
//! ([`super::tiles`]) calls for each tile of dot products, and the call in `main` that hands
//! the node to that loop.

use super::builder::{Emitter, Hoisted, LoadStride, Width};
use super::element::{needs_scalar, Point, TileCursor};
use super::kernels::{combine, lanes, Run};
use super::plan::{Axis, Buffer, ElementProgram, Sink, Step};
use super::tiles::{PairwiseArgs, SinkCode};
use crate::ir::Elem;
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value};
use std::mem::offset_of;

impl Emitter<'_, '_> {
    /// The body of a tile function `(frame, tile, stride, row0, row1, col0, col1, acc)`: for
    /// the tile's rows, `w(i, j)` from the dot products, either folded into `acc[i - row0]`
    /// (reductions) or written over the tile (products, which the runtime then multiplies into
    /// `v`).
    pub fn pairwise_tile(&mut self, buffers: &[Buffer], step: &Step, params: &[Value]) {
        let Step::Pairwise { kernel, sink, .. } = step else {
            unreachable!("tile functions are generated for pairwise steps")
        };
        let [_, base, stride, r0, r1, c0, c1, acc] = params[..] else {
            unreachable!("tile functions take eight parameters")
        };
        self.buffers_invariant = true;
        let tile = Some(TileCursor { base, stride, row0: r0, col0: c0 });
        let width = if needs_scalar(kernel) { Width::One } else { Width::Lanes };
        self.for_range(r0, r1, 1, |em, r| {
            let row_start = Point { row: r, col: c0, inner: Axis::Col, width, tile };
            em.hoist_invariants(buffers, kernel, &row_start, Axis::Col);
            em.tile_row(buffers, kernel, sink, width, tile, [r, r0, c0, c1, acc]);
            em.hoisted = Hoisted::default();
        });
    }

    /// One row `r` of a tile: columns `[c0, c1)`.
    fn tile_row(
        &mut self,
        buffers: &[Buffer],
        kernel: &ElementProgram,
        sink: &Sink,
        width: Width,
        tile: Option<TileCursor>,
        [r, r0, c0, c1, acc]: [Value; 5],
    ) {
        let em = self;
        match sink {
            Sink::Reduce { op, .. } => {
                let run = Run { op: *op, elem: Elem::Real, width, inner: Axis::Col, tile };
                let partial = em.reduce_run(buffers, kernel, &run, r, c0, c1);
                let offset = em.fb.ins().isub(r, r0);
                let addr = em.element_address(acc, offset);
                let old = em.load(Elem::Real, Width::One, addr, LoadStride::Contiguous);
                let new = combine(em, *op, old, partial);
                em.store(new, addr);
            }
            Sink::MatMul { .. } => {
                em.for_range(c0, c1, lanes(width), |em, c| {
                    let at = Point { row: r, col: c, inner: Axis::Col, width, tile };
                    let w = em.evaluate(buffers, kernel, &at);
                    let addr = em.tile_address(&at);
                    em.store(w, addr);
                });
            }
        }
    }

    /// Runs a pairwise step through the runtime's tiled loop with tile function `tile_fn`.
    pub fn pairwise_call(&mut self, buffers: &[Buffer], step: &Step, tile_fn: &str) {
        let Step::Pairwise { a, b, rows, cols, depth, sink, .. } = step else {
            unreachable!("pairwise calls are generated for pairwise steps")
        };
        let zero = self.int(0);
        let origin = Point { row: zero, col: zero, inner: Axis::Col, width: Width::One, tile: None };
        let mut fields: Vec<(usize, Value)> = Vec::new();
        let tile = self.function_address(tile_fn);
        fields.push((offset_of!(PairwiseArgs, tile), tile));
        let matrix = |em: &mut Self, access, offsets: [usize; 3], fields: &mut Vec<(usize, Value)>| {
            let (addr, _) = em.address(buffers, access, &origin);
            let (rs, cs) = em.strides(buffers, access);
            fields.extend(offsets.into_iter().zip([addr, rs, cs]));
        };
        matrix(
            self,
            a,
            [offset_of!(PairwiseArgs, a), offset_of!(PairwiseArgs, a_rs), offset_of!(PairwiseArgs, a_cs)],
            &mut fields,
        );
        matrix(
            self,
            b,
            [offset_of!(PairwiseArgs, b), offset_of!(PairwiseArgs, b_rs), offset_of!(PairwiseArgs, b_cs)],
            &mut fields,
        );
        let sizes = [
            (offset_of!(PairwiseArgs, rows), rows),
            (offset_of!(PairwiseArgs, cols), cols),
            (offset_of!(PairwiseArgs, depth), depth),
        ];
        for (offset, d) in sizes {
            let v = self.dim(d);
            fields.push((offset, v));
        }
        let (code, out, v_and_width) = match sink {
            Sink::Reduce { op, out } => (SinkCode::reduce(*op), out, None),
            Sink::MatMul { v, width, out, symmetric } => {
                (if *symmetric { SinkCode::SymmetricProduct } else { SinkCode::Product }, out, Some((v, width)))
            }
        };
        let code = self.int(code.code());
        fields.push((offset_of!(PairwiseArgs, sink), code));
        matrix(
            self,
            out,
            [offset_of!(PairwiseArgs, out), offset_of!(PairwiseArgs, out_rs), offset_of!(PairwiseArgs, out_cs)],
            &mut fields,
        );
        if let Some((v, width)) = v_and_width {
            matrix(
                self,
                v,
                [offset_of!(PairwiseArgs, v), offset_of!(PairwiseArgs, v_rs), offset_of!(PairwiseArgs, v_cs)],
                &mut fields,
            );
            let w = self.dim(width);
            fields.push((offset_of!(PairwiseArgs, width), w));
        }
        let size = std::mem::size_of::<PairwiseArgs>() as u32;
        let slot = self.fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, size, 3));
        // Fields a reduction does not use are zero.
        for offset in (0..size as usize).step_by(8) {
            let value = fields.iter().find(|(o, _)| *o == offset).map_or(zero, |(_, v)| *v);
            self.fb.ins().stack_store(cranelift_codegen::ir::types::I64, value, slot, offset as i32);
        }
        let args = self.fb.ins().stack_addr(cranelift_codegen::ir::types::I64, slot, 0);
        let frame = self.frame;
        self.call("sslc_pairwise", &[frame, args]);
    }
}
