//! The one scalar program form: what a fused kernel computes at each point of its iteration
//! space, in SSA form. The IR's pairwise kernels and the CPU back end's fused loops are both
//! [`ScalarProgram`]s; they differ only in how an operand is named (`L`: a pairwise node's
//! row/column/scalar operand, or a CPU buffer access) and how an index is named (`I`: an axis
//! of the tile, or a coordinate with an offset). A back end turns a pairwise kernel into its own
//! form with one [`ScalarProgram::map`], and prints or generates code from the same ops.

use super::{BinaryOp, Elem, Literal, UnaryOp};

/// An axis of a kernel's 2-D iteration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    Row,
    Col,
}

/// One operation; operands are positions of earlier operations.
#[derive(Clone, Debug, PartialEq)]
pub enum ScalarOp<L, I> {
    /// An operand's element at the current point.
    Load(L),
    Literal(Literal),
    /// The index itself, as an `int`.
    Index(I),
    /// The entry `x_i · y_j` of the similarity matrix a pairwise kernel never stores.
    Dot,
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Select(usize, usize, usize),
    /// The operand converted to this operation's element type.
    Cast(usize),
}

/// Operations with their element types; `result` is the value the program computes.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarProgram<L, I> {
    pub ops: Vec<(ScalarOp<L, I>, Elem)>,
    pub result: usize,
}

impl<L, I> Default for ScalarProgram<L, I> {
    fn default() -> Self {
        ScalarProgram { ops: Vec::new(), result: 0 }
    }
}

impl<L, I> ScalarProgram<L, I> {
    /// Appends an operation, which becomes the result.
    pub fn push(&mut self, op: ScalarOp<L, I>, elem: Elem) -> usize {
        self.ops.push((op, elem));
        self.result = self.ops.len() - 1;
        self.result
    }

    pub fn elem(&self, k: usize) -> Elem {
        self.ops[k].1
    }

    pub fn result_elem(&self) -> Elem {
        self.ops.get(self.result).map_or(Elem::Real, |(_, e)| *e)
    }

    /// The same program with operands and indices renamed.
    pub fn map<M, J>(&self, mut load: impl FnMut(&L) -> M, mut index: impl FnMut(&I) -> J) -> ScalarProgram<M, J> {
        let ops = self
            .ops
            .iter()
            .map(|(op, elem)| {
                let op = match op {
                    ScalarOp::Load(l) => ScalarOp::Load(load(l)),
                    ScalarOp::Index(i) => ScalarOp::Index(index(i)),
                    ScalarOp::Literal(l) => ScalarOp::Literal(*l),
                    ScalarOp::Dot => ScalarOp::Dot,
                    ScalarOp::Unary(o, a) => ScalarOp::Unary(*o, *a),
                    ScalarOp::Binary(o, a, b) => ScalarOp::Binary(*o, *a, *b),
                    ScalarOp::Select(c, a, b) => ScalarOp::Select(*c, *a, *b),
                    ScalarOp::Cast(a) => ScalarOp::Cast(*a),
                };
                (op, *elem)
            })
            .collect();
        ScalarProgram { ops, result: self.result }
    }
}

impl<L: PartialEq, I: PartialEq> ScalarProgram<L, I> {
    /// Appends an operation, computing it now when its operands are literals (with the op
    /// table's semantics) and reusing an identical earlier operation; returns its position.
    /// It becomes the result.
    pub fn push_folded(&mut self, op: ScalarOp<L, I>, elem: Elem) -> usize {
        let op = self.folded(&op, elem).map_or(op, ScalarOp::Literal);
        match self.ops.iter().position(|(o, e)| *o == op && *e == elem) {
            Some(k) => {
                self.result = k;
                k
            }
            None => self.push(op, elem),
        }
    }

    fn folded(&self, op: &ScalarOp<L, I>, elem: Elem) -> Option<Literal> {
        let literal = |k: usize| match self.ops[k].0 {
            ScalarOp::Literal(l) => Some(crate::ops::Scalar::<f64>::from(l)),
            _ => None,
        };
        let v = match *op {
            ScalarOp::Unary(o, a) => o.eval(literal(a)?),
            ScalarOp::Binary(o, a, b) => o.eval(literal(a)?, literal(b)?),
            ScalarOp::Cast(a) => literal(a)?.cast(elem),
            _ => return None,
        };
        Some(v.into())
    }
}
