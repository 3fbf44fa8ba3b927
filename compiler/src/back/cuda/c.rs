//! A small CUDA C++ syntax tree: the generated part of every kernel is built as these values
//! and printed by their `Display` impls, so the structure (not string pasting) decides what is
//! emitted, and the CPU emulator ([`super::emulate`]) can interpret the very same expressions.
//! Expressions print fully parenthesised: generated code is read in review, never by hand-edit.

use crate::ir::Elem;
use crate::ops::{Prim, Scalar, Spelling};
use std::fmt::{self, Display, Formatter, Write};

/// A C type of a value or a kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CType {
    Float,
    /// Every index, size and `int` value: sizes of `[2N, 2N]` matrices overflow 32 bits.
    LongLong,
    Bool,
}

impl Display for CType {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CType::Float => "float",
            CType::LongLong => "long long",
            CType::Bool => "bool",
        })
    }
}

impl CType {
    /// `sizeof` the type on the device (NVRTC's x86-64-compatible layout): what the driver
    /// copies into a kernel's parameter space for a scalar parameter of this type.
    pub fn size(self) -> usize {
        match self {
            CType::Float => 4,
            CType::LongLong => 8,
            CType::Bool => 1,
        }
    }

    /// A host value converted to this type, as a C cast would (`bool`: non-zero is true).
    pub fn value(self, real: f64) -> Scalar<f32> {
        match self {
            CType::Float => Scalar::Real(real as f32),
            CType::LongLong => Scalar::Int(real as i64),
            CType::Bool => Scalar::Bool(real != 0.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum COp {
    Add,
    Sub,
    Mul,
    Div,
    /// Integer remainder, for index arithmetic only.
    Rem,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl COp {
    fn symbol(self) -> &'static str {
        match self {
            COp::Add => "+",
            COp::Sub => "-",
            COp::Mul => "*",
            COp::Div => "/",
            COp::Rem => "%",
            COp::Lt => "<",
            COp::Le => "<=",
            COp::Gt => ">",
            COp::Ge => ">=",
            COp::Eq => "==",
            COp::Ne => "!=",
            COp::And => "&&",
            COp::Or => "||",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CExpr {
    Var(String),
    Float(f32),
    Int(i64),
    Bool(bool),
    /// An element-wise primitive of the op table on operands of type `Elem`, spelled as the
    /// table says; the emulator evaluates it with the table's semantics.
    Prim(Prim, Elem, Vec<CExpr>),
    /// Index arithmetic and the comparisons of conversions to `bool`.
    Binary(COp, Box<CExpr>, Box<CExpr>),
    /// `c ? a : b`; only the chosen branch is evaluated (concatenation relies on it).
    Ternary(Box<CExpr>, Box<CExpr>, Box<CExpr>),
    /// A prelude template taking a lambda (`sslc::map`); never part of an element computation.
    Call(String, Vec<CExpr>),
    /// `base[offset]`.
    Index(Box<CExpr>, Box<CExpr>),
    Cast(CType, Box<CExpr>),
    Lambda(Lambda),
}

/// A by-reference closure: how a kernel hands its generated element computation to a prelude
/// template that owns the thread mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Lambda {
    pub params: Vec<(CType, String)>,
    pub body: Vec<CStmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CStmt {
    /// `const T name = init;`
    Let {
        ty: CType,
        name: String,
        init: CExpr,
    },
    /// `target = value;` (a store through [`CExpr::Index`]).
    Store {
        target: CExpr,
        value: CExpr,
    },
    Expr(CExpr),
    Return(CExpr),
    /// `for (long long var = 0; var < count; ++var) { body }`
    Repeat {
        var: String,
        count: CExpr,
        body: Vec<CStmt>,
    },
    SyncThreads,
    /// `const T ctx{};`: the thread mapping (`sslc::Grid` or `sslc::Block`) of the steps.
    Context(&'static str),
}

/// A kernel parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Scalar {
        ty: CType,
        name: String,
    },
    /// A device buffer; `written` buffers lose `const`, and `__restrict__` is kept only when a
    /// buffer is either read or written by the kernel, never both.
    Buffer {
        ty: CType,
        name: String,
        read: bool,
        written: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub doc: String,
    pub threads: u32,
    pub params: Vec<Param>,
    pub body: Vec<CStmt>,
}

/// One complete CUDA C++ source: the fixed device library followed by the generated kernels.
pub struct TranslationUnit<'a> {
    pub header: String,
    pub prelude: &'a str,
    pub kernels: &'a [Kernel],
}

// ---- constructors ------------------------------------------------------------------------

pub fn var(name: impl Into<String>) -> CExpr {
    CExpr::Var(name.into())
}

pub fn binary(op: COp, a: CExpr, b: CExpr) -> CExpr {
    CExpr::Binary(op, Box::new(a), Box::new(b))
}

pub fn index(base: CExpr, offset: CExpr) -> CExpr {
    CExpr::Index(Box::new(base), Box::new(offset))
}

pub fn ternary(c: CExpr, a: CExpr, b: CExpr) -> CExpr {
    CExpr::Ternary(Box::new(c), Box::new(a), Box::new(b))
}

/// `prim` applied to `args`, whose element type is `elem`.
pub fn prim(prim: Prim, elem: Elem, args: Vec<CExpr>) -> CExpr {
    debug_assert_eq!(args.len(), if matches!(prim, Prim::Unary(_)) { 1 } else { 2 }, "{prim:?} takes its arity");
    CExpr::Prim(prim, elem, args)
}

pub fn call(name: impl Into<String>, args: Vec<CExpr>) -> CExpr {
    CExpr::Call(name.into(), args)
}

pub fn cast(ty: CType, e: CExpr) -> CExpr {
    CExpr::Cast(ty, Box::new(e))
}

// ---- printing ----------------------------------------------------------------------------

impl Display for CExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            CExpr::Var(name) => f.write_str(name),
            CExpr::Float(v) => write_float(f, *v),
            CExpr::Int(v) => write!(f, "{v}LL"),
            CExpr::Bool(v) => write!(f, "{v}"),
            CExpr::Prim(prim, elem, args) => match (prim.cuda(*elem), args.as_slice()) {
                (Spelling::Prefix(s), [a]) => write!(f, "({s}{a})"),
                (Spelling::Infix(s), [a, b]) => write!(f, "({a} {s} {b})"),
                (Spelling::Call(name), _) => write_call(f, name, args),
                // Built only by `prim`, which checks the arity.
                (_, _) => write_call(f, "sslc::bad_arity", args),
            },
            CExpr::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            CExpr::Ternary(c, a, b) => write!(f, "({c} ? {a} : {b})"),
            CExpr::Call(name, args) => write_call(f, name, args),
            CExpr::Index(base, offset) => write!(f, "{base}[{offset}]"),
            CExpr::Cast(ty, a) => write!(f, "(({ty}){a})"),
            CExpr::Lambda(l) => write!(f, "{}", Indented { item: l, depth: 0 }),
        }
    }
}

fn write_call(f: &mut Formatter<'_>, name: &str, args: &[CExpr]) -> fmt::Result {
    write!(f, "{name}(")?;
    for (k, a) in args.iter().enumerate() {
        if k > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{a}")?;
    }
    f.write_str(")")
}

/// Exact f32 literals: shortest round-trip digits, and the prelude's constants for infinities.
fn write_float(f: &mut Formatter<'_>, v: f32) -> fmt::Result {
    if v.is_nan() {
        f.write_str("sslc::nan()")
    } else if v.is_infinite() {
        f.write_str(if v > 0.0 { "sslc::inf()" } else { "(-sslc::inf())" })
    } else {
        let text = format!("{v:?}");
        if v < 0.0 {
            write!(f, "({text}f)")
        } else {
            write!(f, "{text}f")
        }
    }
}

/// Prints an item at an indentation depth (four spaces per level).
struct Indented<'a, T> {
    item: &'a T,
    depth: usize,
}

fn pad(f: &mut Formatter<'_>, depth: usize) -> fmt::Result {
    for _ in 0..depth {
        f.write_str("    ")?;
    }
    Ok(())
}

impl Display for Indented<'_, Lambda> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("[&](")?;
        for (k, (ty, name)) in self.item.params.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ty} {name}")?;
        }
        f.write_str(") {\n")?;
        for s in &self.item.body {
            writeln!(f, "{}", Indented { item: s, depth: self.depth + 1 })?;
        }
        pad(f, self.depth)?;
        f.write_str("}")
    }
}

impl Display for Indented<'_, CStmt> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let depth = self.depth;
        pad(f, depth)?;
        match self.item {
            CStmt::Let { ty, name, init } => write!(f, "const {ty} {name} = {};", ExprAt { expr: init, depth }),
            CStmt::Store { target, value } => write!(f, "{target} = {};", ExprAt { expr: value, depth }),
            CStmt::Expr(e) => write!(f, "{};", ExprAt { expr: e, depth }),
            CStmt::Return(e) => write!(f, "return {};", ExprAt { expr: e, depth }),
            CStmt::Repeat { var, count, body } => {
                writeln!(f, "for (long long {var} = 0; {var} < {count}; ++{var}) {{")?;
                for s in body {
                    writeln!(f, "{}", Indented { item: s, depth: depth + 1 })?;
                }
                pad(f, depth)?;
                f.write_str("}")
            }
            CStmt::SyncThreads => f.write_str("__syncthreads();"),
            CStmt::Context(ty) => write!(f, "const {ty} ctx{{}};"),
        }
    }
}

/// An expression printed inside a statement at `depth`: lambdas among a call's arguments are
/// laid out over several lines, indented with the statement.
struct ExprAt<'a> {
    expr: &'a CExpr,
    depth: usize,
}

impl Display for ExprAt<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.expr {
            CExpr::Lambda(l) => write!(f, "{}", Indented { item: l, depth: self.depth }),
            CExpr::Call(name, args) => {
                write!(f, "{name}(")?;
                for (k, a) in args.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", ExprAt { expr: a, depth: self.depth })?;
                }
                f.write_str(")")
            }
            other => write!(f, "{other}"),
        }
    }
}

impl Display for Param {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Param::Scalar { ty, name } => write!(f, "const {ty} {name}"),
            Param::Buffer { ty, name, read, written } => {
                let constness = if *written { "" } else { "const " };
                let restrict = if *read && *written { "" } else { " __restrict__" };
                write!(f, "{constness}{ty}*{restrict} {name}")
            }
        }
    }
}

impl Display for Kernel {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for line in self.doc.lines() {
            writeln!(f, "// {line}")?;
        }
        // At least one block per multiprocessor: ptxas may then give the tile kernels the ~130
        // registers they need instead of spilling to fit a guessed occupancy.
        write!(f, "extern \"C\" __global__ void __launch_bounds__({}, 1) {}(", self.threads, self.name)?;
        for (k, p) in self.params.iter().enumerate() {
            f.write_str(if k == 0 { "\n    " } else { ",\n    " })?;
            write!(f, "{p}")?;
        }
        f.write_str(") {\n")?;
        for s in &self.body {
            writeln!(f, "{}", Indented { item: s, depth: 1 })?;
        }
        f.write_str("}\n")
    }
}

impl Display for TranslationUnit<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for line in self.header.lines() {
            writeln!(f, "// {line}")?;
        }
        f.write_char('\n')?;
        f.write_str(self.prelude)?;
        for k in self.kernels {
            write!(f, "\n{k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_exactly_and_infinities_through_the_prelude() {
        assert_eq!(CExpr::Float(0.2).to_string(), "0.2f");
        assert_eq!(CExpr::Float(-1.5).to_string(), "(-1.5f)");
        assert_eq!(CExpr::Float(1e-12).to_string(), "1e-12f");
        assert_eq!(CExpr::Float(f32::NEG_INFINITY).to_string(), "(-sslc::inf())");
        let parsed: f32 = format!("{:?}", 0.1f32).parse().unwrap();
        assert_eq!(parsed, 0.1f32);
    }

    #[test]
    fn buffers_are_restrict_only_when_read_or_written_not_both() {
        let p = |read, written| Param::Buffer { ty: CType::Float, name: "b".into(), read, written }.to_string();
        assert_eq!(p(true, false), "const float* __restrict__ b");
        assert_eq!(p(false, true), "float* __restrict__ b");
        assert_eq!(p(true, true), "float* b");
    }

    #[test]
    fn expressions_print_parenthesised() {
        let e = binary(COp::Add, var("a"), binary(COp::Mul, var("b"), CExpr::Int(2)));
        assert_eq!(e.to_string(), "(a + (b * 2LL))");
        assert_eq!(
            ternary(
                var("c"),
                CExpr::Bool(true),
                prim(Prim::Unary(crate::ops::UnaryOp::Not), Elem::Bool, vec![var("d")])
            )
            .to_string(),
            "(c ? true : (!d))"
        );
    }
}
