//! Sizes the generated code reads at run time. Code is compiled once per objective, for every
//! batch size and dimension, so each size it needs (a dimension, or a row stride padded to
//! whole vectors) has a slot in a table the driver fills from the bound dimensions.

use super::plan::LANES;
use crate::ir::{Dim, DimSym};
use std::collections::HashMap;

/// `n` rounded up to a multiple of [`LANES`]: the row stride of a padded buffer.
pub(crate) fn round_up(n: i64) -> i64 {
    (n + LANES - 1) / LANES * LANES
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SizeExpr {
    Exact(Dim),
    /// Rounded up to a multiple of the SIMD width.
    Padded(Dim),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SizeTable {
    entries: Vec<SizeExpr>,
    slots: HashMap<SizeExpr, usize>,
}

impl SizeTable {
    fn slot(&mut self, e: SizeExpr) -> usize {
        if let Some(&s) = self.slots.get(&e) {
            return s;
        }
        self.entries.push(e.clone());
        self.slots.insert(e, self.entries.len() - 1);
        self.entries.len() - 1
    }
    pub fn exact(&mut self, d: &Dim) -> usize {
        self.slot(SizeExpr::Exact(d.clone()))
    }
    pub fn padded(&mut self, d: &Dim) -> usize {
        self.slot(SizeExpr::Padded(d.clone()))
    }

    /// Every slot's value, given each dimension symbol's size; `None` when a dimension has
    /// no size or a size is negative.
    pub fn values(&self, size_of: &dyn Fn(DimSym) -> Option<i64>) -> Option<Vec<i64>> {
        self.entries
            .iter()
            .map(|e| {
                let v = match e {
                    SizeExpr::Exact(d) => d.eval(size_of)?,
                    SizeExpr::Padded(d) => round_up(d.eval(size_of)?),
                };
                (v >= 0).then_some(v)
            })
            .collect()
    }
}
