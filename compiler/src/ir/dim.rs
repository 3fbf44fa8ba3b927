//! Symbolic dimensions. A dimension is an affine combination of dimension symbols
//! (`2*N`, `N + 1`, `100`): enough for concatenation and slicing to keep shapes exact
//! (`concat(a, b)` of two `[N, D]` is `[2*N, D]`, and `l[N:]` of that is `[N]`).

use super::{Arena, DimDecl, Handle};
use std::collections::BTreeMap;
use std::fmt;

pub type DimSym = Handle<DimDecl>;

#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub struct Dim {
    /// Symbol coefficients; never holds a zero coefficient.
    terms: BTreeMap<DimSym, i64>,
    constant: i64,
}

impl Dim {
    pub fn constant(value: i64) -> Dim {
        Dim { terms: BTreeMap::new(), constant: value }
    }
    pub fn symbol(sym: DimSym) -> Dim {
        Dim { terms: [(sym, 1)].into_iter().collect(), constant: 0 }
    }
    pub fn as_constant(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }
    /// The symbol itself when the dimension is exactly one symbol (`N`, not `2*N`).
    pub fn as_symbol(&self) -> Option<DimSym> {
        match (self.terms.len(), self.constant) {
            (1, 0) => self.terms.iter().next().filter(|(_, &c)| c == 1).map(|(&s, _)| s),
            _ => None,
        }
    }
    pub fn symbols(&self) -> impl Iterator<Item = DimSym> + '_ {
        self.terms.keys().copied()
    }
    pub fn is_one(&self) -> bool {
        self.as_constant() == Some(1)
    }

    pub fn add(&self, other: &Dim) -> Dim {
        let mut out = self.clone();
        for (&s, &c) in &other.terms {
            let entry = out.terms.entry(s).or_insert(0);
            *entry += c;
            if *entry == 0 {
                out.terms.remove(&s);
            }
        }
        out.constant += other.constant;
        out
    }
    pub fn scale(&self, factor: i64) -> Dim {
        if factor == 0 {
            return Dim::constant(0);
        }
        Dim { terms: self.terms.iter().map(|(&s, &c)| (s, c * factor)).collect(), constant: self.constant * factor }
    }
    /// `self / divisor` when every coefficient divides exactly (`2*N / 2 = N`).
    pub fn div_exact(&self, divisor: i64) -> Option<Dim> {
        if divisor == 0 || self.constant % divisor != 0 || self.terms.values().any(|c| c % divisor != 0) {
            return None;
        }
        Some(Dim {
            terms: self.terms.iter().map(|(&s, &c)| (s, c / divisor)).collect(),
            constant: self.constant / divisor,
        })
    }
    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.scale(-1))
    }

    /// Replaces every symbol by the dimension `map` gives it (symbols it leaves alone stay).
    pub fn substitute(&self, map: &dyn Fn(DimSym) -> Option<Dim>) -> Dim {
        let mut out = Dim::constant(self.constant);
        for (&s, &c) in &self.terms {
            let term = map(s).unwrap_or_else(|| Dim::symbol(s));
            out = out.add(&term.scale(c));
        }
        out
    }

    /// The value once every symbol has a size; `None` when one has none.
    pub fn eval(&self, size_of: &dyn Fn(DimSym) -> Option<i64>) -> Option<i64> {
        let mut total = self.constant;
        for (&s, &c) in &self.terms {
            total += c * size_of(s)?;
        }
        Some(total)
    }

    pub fn display<'a>(&'a self, dims: &'a Arena<DimDecl>) -> impl fmt::Display + 'a {
        DimDisplay { dim: self, dims }
    }
}

struct DimDisplay<'a> {
    dim: &'a Dim,
    dims: &'a Arena<DimDecl>,
}

impl fmt::Display for DimDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (&s, &c) in &self.dim.terms {
            let name = &self.dims[s].name;
            let (sign, mag) = if c < 0 { ("-", -c) } else { ("+", c) };
            if first {
                if c < 0 {
                    f.write_str("-")?;
                }
            } else {
                write!(f, " {sign} ")?;
            }
            if mag == 1 {
                f.write_str(name)?;
            } else {
                write!(f, "{mag}*{name}")?;
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.dim.constant)
        } else if self.dim.constant > 0 {
            write!(f, " + {}", self.dim.constant)
        } else if self.dim.constant < 0 {
            write!(f, " - {}", -self.dim.constant)
        } else {
            Ok(())
        }
    }
}

/// A shape: one dimension per axis; rank 0 is a scalar.
pub type Shape = Vec<Dim>;

pub fn display_shape<'a>(shape: &'a [Dim], dims: &'a Arena<DimDecl>) -> impl fmt::Display + 'a {
    ShapeDisplay { shape, dims }
}

struct ShapeDisplay<'a> {
    shape: &'a [Dim],
    dims: &'a Arena<DimDecl>,
}

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", d.display(self.dims))?;
        }
        f.write_str("]")
    }
}
