//! A reverse-mode automatic differentiator over f64 scalars, for the independent
//! implementations of the objective zoo (`common::zoo`): each paper's loss is written as plain
//! loops over [`V`]s and this tape gives its exact gradient, sharing nothing with the compiler's
//! autodiff (which differentiates tensor programs, not scalar traces).

use std::cell::RefCell;

/// One recorded operation: up to two parents and the partial derivative towards each.
#[derive(Clone, Copy)]
struct Node {
    parents: [(usize, f64); 2],
}

/// The record of every operation of one evaluation.
#[derive(Default)]
pub struct Tape {
    nodes: RefCell<Vec<Node>>,
}

/// A scalar on a tape.
#[derive(Clone, Copy)]
pub struct V<'t> {
    tape: &'t Tape,
    index: usize,
    pub value: f64,
}

impl Tape {
    pub fn new() -> Tape {
        Tape::default()
    }

    fn push(&self, value: f64, parents: [(usize, f64); 2]) -> V<'_> {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node { parents });
        V { tape: self, index: nodes.len() - 1, value }
    }

    /// An independent variable (or a constant: its gradient is simply not read).
    pub fn var(&self, value: f64) -> V<'_> {
        self.push(value, [(0, 0.0), (0, 0.0)])
    }

    /// A matrix of variables, row-major.
    pub fn vars(&self, values: &[f64]) -> Vec<V<'_>> {
        values.iter().map(|&v| self.var(v)).collect()
    }

    /// d output / d every node, by one reverse sweep.
    pub fn gradient(&self, output: V<'_>) -> Vec<f64> {
        let nodes = self.nodes.borrow();
        let mut adjoint = vec![0.0; nodes.len()];
        adjoint[output.index] = 1.0;
        for i in (0..=output.index).rev() {
            let a = adjoint[i];
            if a != 0.0 {
                for (parent, partial) in nodes[i].parents {
                    adjoint[parent] += a * partial;
                }
            }
        }
        adjoint
    }
}

impl<'t> V<'t> {
    /// The gradient entries of `vars` in `gradient` (from [`Tape::gradient`]).
    pub fn pick(gradient: &[f64], vars: &[V<'t>]) -> Vec<f64> {
        vars.iter().map(|v| gradient[v.index]).collect()
    }

    fn unary(self, value: f64, partial: f64) -> V<'t> {
        self.tape.push(value, [(self.index, partial), (0, 0.0)])
    }

    fn binary(self, other: V<'t>, value: f64, da: f64, db: f64) -> V<'t> {
        self.tape.push(value, [(self.index, da), (other.index, db)])
    }

    pub fn exp(self) -> V<'t> {
        let e = self.value.exp();
        self.unary(e, e)
    }

    pub fn ln(self) -> V<'t> {
        self.unary(self.value.ln(), 1.0 / self.value)
    }

    pub fn sqrt(self) -> V<'t> {
        let s = self.value.sqrt();
        self.unary(s, 0.5 / s)
    }

    /// `self^p` for a positive base.
    pub fn powf(self, p: f64) -> V<'t> {
        self.unary(self.value.powf(p), p * self.value.powf(p - 1.0))
    }

    pub fn square(self) -> V<'t> {
        self * self
    }

    pub fn relu(self) -> V<'t> {
        if self.value > 0.0 {
            self.unary(self.value, 1.0)
        } else {
            self.unary(0.0, 0.0)
        }
    }

    pub fn constant(self, value: f64) -> V<'t> {
        self.tape.var(value)
    }
}

/// Σ terms (a balanced sum would round better; these sums are short).
pub fn sum<'t>(terms: impl IntoIterator<Item = V<'t>>) -> V<'t> {
    let mut it = terms.into_iter();
    let first = it.next().expect("a sum of at least one term");
    it.fold(first, |acc, t| acc + t)
}

/// log Σ exp(terms), shifted by the largest term (a constant shift leaves the gradient exact).
pub fn logsumexp<'t>(terms: &[V<'t>]) -> V<'t> {
    let m = terms.iter().fold(f64::NEG_INFINITY, |m, t| m.max(t.value));
    sum(terms.iter().map(|&t| (t - m).exp())).ln() + m
}

macro_rules! binary_ops {
    ($($trait:ident $method:ident |$a:ident, $b:ident| $value:expr, $da:expr, $db:expr;)*) => {$(
        impl<'t> std::ops::$trait for V<'t> {
            type Output = V<'t>;
            fn $method(self, other: V<'t>) -> V<'t> {
                let ($a, $b) = (self.value, other.value);
                self.binary(other, $value, $da, $db)
            }
        }
        impl<'t> std::ops::$trait<f64> for V<'t> {
            type Output = V<'t>;
            fn $method(self, other: f64) -> V<'t> {
                let ($a, $b) = (self.value, other);
                self.unary($value, $da)
            }
        }
        impl<'t> std::ops::$trait<V<'t>> for f64 {
            type Output = V<'t>;
            fn $method(self, other: V<'t>) -> V<'t> {
                let ($a, $b) = (self, other.value);
                other.unary($value, $db)
            }
        }
    )*};
}

binary_ops! {
    Add add |a, b| a + b, 1.0, 1.0;
    Sub sub |a, b| a - b, 1.0, -1.0;
    Mul mul |a, b| a * b, b, a;
    Div div |a, b| a / b, 1.0 / b, -a / (b * b);
}

impl<'t> std::ops::Neg for V<'t> {
    type Output = V<'t>;
    fn neg(self) -> V<'t> {
        self.unary(-self.value, -1.0)
    }
}
