//! What one evaluation costs, whatever the back end: the floating-point operations of the
//! optimised gradient program and the bytes it must move at the least (every leaf read once,
//! every output written once). Their ratio places an objective on a roofline; `sslc bench`
//! divides both by the measured time, to compare with a machine's peak FLOP/s and bandwidth
//! without running PyTorch.

use crate::eval::Bindings;
use crate::ir::{Expr, Handle, Literal, Module, Program};
use std::collections::HashSet;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Floating-point operations. A product `[m, k] @ [k, n]` counts `2mkn`; a fused pairwise
    /// node `rows · cols` times (`2 · depth` for its dot product, one per kernel operation, one
    /// for its reduction, `2 · width` for its product); an arithmetic element-wise operation or
    /// a reduced element one (a transcendental too, as rooflines count); views, gathers and
    /// concatenations move data and count nothing. A loop counts its body once per iteration.
    pub flops: f64,
    /// Bytes of the leaves (inputs, constants, state) and of the outputs, each once, at the
    /// bindings' element size: the traffic no schedule can avoid.
    pub bytes: f64,
}

impl Cost {
    /// FLOPs per byte: under the machine's balance point (peak FLOP/s over bandwidth) the
    /// evaluation is bound by memory, above it by arithmetic.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes.max(1.0)
    }
}

/// The cost of evaluating `program` (the loss and every gradient) on `b`'s sizes.
pub fn cost(module: &Module, program: &Program, b: &Bindings) -> Cost {
    let elem_bytes = b.dtype.size_in_bytes() as f64;
    let elements = |h: Handle<Expr>| -> f64 { b.shape(module, &program.ty(h).shape).iter().product::<usize>() as f64 };
    let mut counter = Counter { module, program, b, elements: &elements, flops: 0.0, leaves: HashSet::new() };
    counter.block(&program.body, 1.0);
    let leaves: f64 = counter.leaves.iter().map(|&h| elements(h)).sum();
    let outputs: f64 = program.outputs.iter().map(|o| elements(o.value)).sum();
    Cost { flops: counter.flops, bytes: (leaves + outputs) * elem_bytes }
}

struct Counter<'a> {
    module: &'a Module,
    program: &'a Program,
    b: &'a Bindings,
    elements: &'a dyn Fn(Handle<Expr>) -> f64,
    flops: f64,
    leaves: HashSet<Handle<Expr>>,
}

impl Counter<'_> {
    fn block(&mut self, block: &[Handle<Expr>], times: f64) {
        for &h in block {
            self.node(h, times);
        }
    }

    fn node(&mut self, h: Handle<Expr>, times: f64) {
        let p = self.program;
        let rows = |x: Handle<Expr>| self.b.size(self.module, &p.ty(x).shape[0]) as f64;
        let cols = |x: Handle<Expr>| p.ty(x).shape.last().map_or(1.0, |d| self.b.size(self.module, d) as f64);
        let flops = match &p.exprs[h] {
            Expr::Input(_) | Expr::Const(_) | Expr::State(_) => {
                self.leaves.insert(h);
                0.0
            }
            e if e.is_arithmetic() => (self.elements)(h),
            Expr::Reduce { arg, .. } => (self.elements)(*arg),
            Expr::MatMul { lhs, rhs } => 2.0 * rows(*lhs) * cols(*lhs) * cols(*rhs),
            Expr::PairwiseReduce { pairwise, .. } => {
                let per_pair = 2.0 * cols(pairwise.x) + pairwise.kernel.ops.len() as f64 + 1.0;
                rows(pairwise.x) * rows(pairwise.y) * per_pair
            }
            Expr::PairwiseMatMul { pairwise, v, .. } => {
                let per_pair = 2.0 * cols(pairwise.x) + pairwise.kernel.ops.len() as f64 + 2.0 * cols(*v);
                rows(pairwise.x) * rows(pairwise.y) * per_pair
            }
            Expr::Loop { count, body, .. } => {
                let iterations = self.count(*count);
                self.block(body, times * iterations);
                0.0
            }
            _ => 0.0,
        };
        self.flops += flops * times;
    }

    /// A loop's iteration count when the program states it (a literal, a parameter, a
    /// dimension's size); 1 otherwise.
    fn count(&self, h: Handle<Expr>) -> f64 {
        match &self.program.exprs[h] {
            Expr::Literal(Literal::Int(n)) => *n as f64,
            Expr::Param(q) => self.b.param(self.module, *q),
            Expr::DimSize(d) => self.b.size(self.module, d) as f64,
            Expr::Cast { arg, .. } => self.count(*arg),
            _ => 1.0,
        }
        .max(0.0)
    }
}
