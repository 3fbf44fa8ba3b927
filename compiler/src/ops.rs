//! The op table: every element-wise primitive of the IR, declared once.
//!
//! Each op's row says its name (as `.ssl` source and the IR printer spell it), which element
//! types it accepts and returns, its scalar semantics, and its CUDA spelling. Everything that
//! only needs those facts reads them from here: the front end's built-in names, validation,
//! constant folding, the reference evaluator and the CUDA emulator. What cannot be a table
//! entry — the vector-Jacobian product (IR it builds, `autodiff/rules.rs`) and the Cranelift
//! instructions (`back/clif/element.rs`) — is an exhaustive `match` there, so adding an op
//! without them does not compile. The semantics are generic over [`Real`] so that folding (in
//! f64), the reference evaluator (f32 or f64) and the emulator (f32, as the GPU computes) run
//! the very same definition. See docs/compiler.md, "Adding an op".

use crate::ir::Elem;

/// Declares an op enum together with `ALL`, the list of its variants, so that no list of ops
/// can miss one.
macro_rules! ops {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }
        impl $name {
            /// Every op, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
        }
    };
}

ops! {
/// An element-wise operation of one operand.
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Cos,
    Not,
    /// `log(1 + x)`, accurate for tiny `x`.
    Log1p,
    /// `exp(x) - 1`, accurate for tiny `x`.
    Expm1,
    /// `log(1 + exp(x))`, without overflow for large `x`.
    Softplus,
    /// `x * x`: what `x ** 2` becomes.
    Square,
}
}

ops! {
/// An element-wise operation of two operands of equal shape and element type.
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Rem,
    Max,
    Min,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}
}

/// The element types an op accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// `f32` only (an `int` argument is converted by the front end).
    Real,
    /// `f32` or `int`.
    Numeric,
    /// `bool` only.
    Bool,
    /// Any element type.
    Any,
}

impl Domain {
    pub fn accepts(self, elem: Elem) -> bool {
        match self {
            Domain::Real => elem == Elem::Real,
            Domain::Numeric => elem != Elem::Bool,
            Domain::Bool => elem == Elem::Bool,
            Domain::Any => true,
        }
    }
    /// What a type error says was expected.
    pub fn describe(self) -> &'static str {
        match self {
            Domain::Real => "f32",
            Domain::Numeric => "numeric",
            Domain::Bool => "bool",
            Domain::Any => "any",
        }
    }
}

/// How CUDA C spells an op applied to operands of one element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// `-a`, `!a`.
    Prefix(&'static str),
    /// `a + b`.
    Infix(&'static str),
    /// `expf(a)`, `sslc::pow_ref(a, b)`: a CUDA math function or a helper of `prelude.cu`.
    Call(&'static str),
}

/// One row of the unary table.
struct UnaryRow {
    name: &'static str,
    /// Callable from `.ssl` as `name(x)`.
    builtin: bool,
    domain: Domain,
    /// The CUDA spelling for real operands, and for `int` ones where it differs.
    cuda: Spelling,
    cuda_int: Option<Spelling>,
}

impl UnaryOp {
    fn row(self) -> UnaryRow {
        use Spelling::*;
        let row = |name, builtin, domain, cuda, cuda_int| UnaryRow { name, builtin, domain, cuda, cuda_int };
        match self {
            UnaryOp::Neg => row("neg", false, Domain::Numeric, Prefix("-"), None),
            UnaryOp::Exp => row("exp", true, Domain::Real, Call("expf"), None),
            UnaryOp::Log => row("log", true, Domain::Real, Call("logf"), None),
            UnaryOp::Sqrt => row("sqrt", true, Domain::Real, Call("sqrtf"), None),
            UnaryOp::Abs => row("abs", true, Domain::Numeric, Call("fabsf"), Some(Call("llabs"))),
            UnaryOp::Cos => row("cos", true, Domain::Real, Call("cosf"), None),
            UnaryOp::Not => row("not", false, Domain::Bool, Prefix("!"), None),
            UnaryOp::Log1p => row("log1p", true, Domain::Real, Call("log1pf"), None),
            UnaryOp::Expm1 => row("expm1", true, Domain::Real, Call("expm1f"), None),
            UnaryOp::Softplus => row("softplus", true, Domain::Real, Call("sslc::softplus"), None),
            UnaryOp::Square => row("square", true, Domain::Real, Call("sslc::square"), None),
        }
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }
    pub fn domain(self) -> Domain {
        self.row().domain
    }
    /// The op a built-in function of this name stands for.
    pub fn builtin(name: &str) -> Option<UnaryOp> {
        Self::ALL.iter().copied().find(|op| op.row().builtin && op.name() == name)
    }
    /// Names of the ops callable as built-in functions.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().filter(|op| op.row().builtin).map(|op| op.name())
    }
    pub fn cuda(self, operand: Elem) -> Spelling {
        let row = self.row();
        match (operand, row.cuda_int) {
            (Elem::Int, Some(s)) => s,
            _ => row.cuda,
        }
    }

    /// The op's value at `x`; arguments outside the domain (which validation rejects) are
    /// converted, never a panic.
    pub fn eval<F: Real>(self, x: Scalar<F>) -> Scalar<F> {
        use Scalar::{Bool, Int, Real as R};
        let real = |f: fn(F) -> F| R(f(x.real()));
        match self {
            UnaryOp::Neg => match x {
                Int(i) => Int(i.wrapping_neg()),
                _ => R(-x.real()),
            },
            UnaryOp::Abs => match x {
                Int(i) => Int(i.wrapping_abs()),
                _ => R(x.real().abs()),
            },
            UnaryOp::Not => Bool(!x.truth()),
            UnaryOp::Exp => real(F::exp),
            UnaryOp::Log => real(F::ln),
            UnaryOp::Sqrt => real(F::sqrt),
            UnaryOp::Cos => real(F::cos),
            UnaryOp::Log1p => real(F::ln_1p),
            UnaryOp::Expm1 => real(F::exp_m1),
            // max(x, 0) + log1p(exp(-|x|)): exact for large |x|, no overflow.
            UnaryOp::Softplus => real(|v| v.max(F::from_f64(0.0)) + (-v.abs()).exp().ln_1p()),
            UnaryOp::Square => real(|v| v * v),
        }
    }
}

/// How a binary op types its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Result has the operands' type.
    Arithmetic,
    /// Result is `bool`.
    Comparison,
}

struct BinaryRow {
    name: &'static str,
    /// The operator in `.ssl` source, where there is one.
    symbol: Option<&'static str>,
    domain: Domain,
    kind: Kind,
    cuda: Spelling,
    cuda_int: Option<Spelling>,
}

impl BinaryOp {
    fn row(self) -> BinaryRow {
        use Domain::*;
        use Kind::*;
        use Spelling::*;
        let row = |name, symbol, domain, kind, cuda| BinaryRow { name, symbol, domain, kind, cuda, cuda_int: None };
        match self {
            BinaryOp::Add => row("add", Some("+"), Numeric, Arithmetic, Infix("+")),
            BinaryOp::Sub => row("sub", Some("-"), Numeric, Arithmetic, Infix("-")),
            BinaryOp::Mul => row("mul", Some("*"), Numeric, Arithmetic, Infix("*")),
            BinaryOp::Div => BinaryRow {
                cuda_int: Some(Call("sslc::div_ref")),
                ..row("div", Some("/"), Real, Arithmetic, Infix("/"))
            },
            BinaryOp::Pow => row("pow", Some("**"), Real, Arithmetic, Call("sslc::pow_ref")),
            BinaryOp::Rem => row("rem", Some("%"), Numeric, Arithmetic, Call("sslc::rem_ref")),
            BinaryOp::Max => row("max", None, Numeric, Arithmetic, Call("sslc::maximum")),
            BinaryOp::Min => row("min", None, Numeric, Arithmetic, Call("sslc::minimum")),
            BinaryOp::Lt => row("lt", Some("<"), Numeric, Comparison, Infix("<")),
            BinaryOp::Le => row("le", Some("<="), Numeric, Comparison, Infix("<=")),
            BinaryOp::Gt => row("gt", Some(">"), Numeric, Comparison, Infix(">")),
            BinaryOp::Ge => row("ge", Some(">="), Numeric, Comparison, Infix(">=")),
            BinaryOp::Eq => row("eq", Some("=="), Any, Comparison, Infix("==")),
            BinaryOp::Ne => row("ne", Some("!="), Any, Comparison, Infix("!=")),
            BinaryOp::And => row("and", Some("and"), Bool, Arithmetic, Infix("&&")),
            BinaryOp::Or => row("or", Some("or"), Bool, Arithmetic, Infix("||")),
        }
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }
    /// The source operator (`+`, `**`), or the name for ops written as functions.
    pub fn symbol(self) -> &'static str {
        let row = self.row();
        row.symbol.unwrap_or(row.name)
    }
    pub fn domain(self) -> Domain {
        self.row().domain
    }
    pub fn is_comparison(self) -> bool {
        self.row().kind == Kind::Comparison
    }
    pub fn is_logical(self) -> bool {
        self.row().domain == Domain::Bool
    }
    /// The element type of the result for operands of type `operand`.
    pub fn result_elem(self, operand: Elem) -> Elem {
        match self.row().kind {
            Kind::Comparison => Elem::Bool,
            Kind::Arithmetic => operand,
        }
    }
    pub fn cuda(self, operand: Elem) -> Spelling {
        let row = self.row();
        match (operand, row.cuda_int) {
            (Elem::Int, Some(s)) => s,
            _ => row.cuda,
        }
    }

    /// The op's value at `(a, b)`, with the reference's conventions: Python's signs for `%`,
    /// PyTorch's for `**` (see [`pow`]), integer division truncating toward zero, and every
    /// comparison with NaN false but `!=`.
    pub fn eval<F: Real>(self, a: Scalar<F>, b: Scalar<F>) -> Scalar<F> {
        use std::cmp::Ordering;
        let compare = |test: fn(Ordering) -> bool| Scalar::Bool(a.partial_cmp(&b).is_some_and(test));
        match self {
            BinaryOp::Add => arithmetic(a, b, |x, y| x + y, i64::wrapping_add),
            BinaryOp::Sub => arithmetic(a, b, |x, y| x - y, i64::wrapping_sub),
            BinaryOp::Mul => arithmetic(a, b, |x, y| x * y, i64::wrapping_mul),
            BinaryOp::Div => arithmetic(a, b, |x, y| x / y, |x, y| int_via_f64(x, y, |x, y| x / y)),
            BinaryOp::Pow => arithmetic(a, b, pow, |x, y| int_via_f64(x, y, pow)),
            BinaryOp::Rem => arithmetic(a, b, rem, |x, y| int_via_f64(x, y, rem)),
            BinaryOp::Max => arithmetic(a, b, F::max, i64::max),
            BinaryOp::Min => arithmetic(a, b, F::min, i64::min),
            BinaryOp::Lt => compare(Ordering::is_lt),
            BinaryOp::Le => compare(Ordering::is_le),
            BinaryOp::Gt => compare(Ordering::is_gt),
            BinaryOp::Ge => compare(Ordering::is_ge),
            BinaryOp::Eq => compare(Ordering::is_eq),
            BinaryOp::Ne => Scalar::Bool(!a.partial_cmp(&b).is_some_and(Ordering::is_eq)),
            BinaryOp::And => Scalar::Bool(a.truth() && b.truth()),
            BinaryOp::Or => Scalar::Bool(a.truth() || b.truth()),
        }
    }
}

/// An arithmetic op on two operands of one type (`bool` computed as 0/1).
fn arithmetic<F: Real>(a: Scalar<F>, b: Scalar<F>, real: fn(F, F) -> F, int: fn(i64, i64) -> i64) -> Scalar<F> {
    match (a, b) {
        (Scalar::Int(x), Scalar::Int(y)) => Scalar::Int(int(x, y)),
        (Scalar::Bool(x), Scalar::Bool(y)) => Scalar::Bool(int(i64::from(x), i64::from(y)) != 0),
        _ => Scalar::Real(real(a.real(), b.real())),
    }
}

/// An integer op computed in f64, as the reference computes integers (exact for every size
/// an objective uses); truncated toward zero, and 0 where the real result is not finite.
fn int_via_f64(x: i64, y: i64, f: fn(f64, f64) -> f64) -> i64 {
    let v = f(x as f64, y as f64);
    if v.is_finite() {
        v as i64
    } else {
        0
    }
}

/// Python's remainder: the sign of the divisor.
fn rem<F: Real>(x: F, y: F) -> F {
    x - y * (x / y).floor()
}

/// `x ** y` as PyTorch computes it where `exp(y log x)` would give NaN: `x ** 0 = 1`, `0 ** y
/// = 0` for `y > 0`, and negative bases with odd integer exponents keep their sign.
fn pow<F: Real>(x: F, y: F) -> F {
    let (zero, one, two, half) = (F::from_f64(0.0), F::from_f64(1.0), F::from_f64(2.0), F::from_f64(0.5));
    if y == zero {
        return one;
    }
    let magnitude = (x.abs().ln() * y).exp();
    let odd = (y - (y * half).floor() * two).abs() == one;
    if x < zero && odd {
        -magnitude
    } else {
        magnitude
    }
}

/// An element-wise primitive: what the reference evaluator and the CUDA emulator apply and
/// the CUDA printer spells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prim {
    Unary(UnaryOp),
    Binary(BinaryOp),
}

impl Prim {
    /// The value at `args` (one per operand).
    pub fn eval<F: Real>(self, args: &[Scalar<F>]) -> Scalar<F> {
        match (self, args) {
            (Prim::Unary(op), [a, ..]) => op.eval(*a),
            (Prim::Binary(op), [a, b, ..]) => op.eval(*a, *b),
            // Arity is checked when the expression is built; a missing operand reads as 0.
            (Prim::Unary(op), []) => op.eval(Scalar::Int(0)),
            (Prim::Binary(op), _) => op.eval(args.first().copied().unwrap_or(Scalar::Int(0)), Scalar::Int(0)),
        }
    }
    /// The result's element type for operands of type `operand`.
    pub fn result_elem(self, operand: Elem) -> Elem {
        match self {
            Prim::Unary(_) => operand,
            Prim::Binary(op) => op.result_elem(operand),
        }
    }
    pub fn cuda(self, operand: Elem) -> Spelling {
        match self {
            Prim::Unary(op) => op.cuda(operand),
            Prim::Binary(op) => op.cuda(operand),
        }
    }
}

/// One element of any type; reals are `F`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar<F> {
    Real(F),
    Int(i64),
    Bool(bool),
}

impl<F: Real> Scalar<F> {
    /// The value as a real (ints converted, `true` is 1).
    pub fn real(self) -> F {
        match self {
            Scalar::Real(v) => v,
            Scalar::Int(i) => F::from_f64(i as f64),
            Scalar::Bool(b) => F::from_f64(f64::from(u8::from(b))),
        }
    }
    /// Non-zero is true.
    pub fn truth(self) -> bool {
        match self {
            Scalar::Real(v) => v != F::from_f64(0.0),
            Scalar::Int(i) => i != 0,
            Scalar::Bool(b) => b,
        }
    }
    pub fn int(self) -> i64 {
        match self {
            Scalar::Int(i) => i,
            Scalar::Bool(b) => i64::from(b),
            // Truncation toward zero, saturating, as `int(x)`.
            Scalar::Real(v) => v.to_f64() as i64,
        }
    }
    /// The value converted to `elem` with the reference's rules.
    pub fn cast(self, elem: Elem) -> Scalar<F> {
        match elem {
            Elem::Real => Scalar::Real(self.real()),
            Elem::Int => Scalar::Int(self.int()),
            Elem::Bool => Scalar::Bool(self.truth()),
        }
    }
    pub fn elem(self) -> Elem {
        match self {
            Scalar::Real(_) => Elem::Real,
            Scalar::Int(_) => Elem::Int,
            Scalar::Bool(_) => Elem::Bool,
        }
    }
}

impl<F: Real> PartialOrd for Scalar<F> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => Some(a.cmp(b)),
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            _ => self.real().partial_cmp(&other.real()),
        }
    }
}

/// The real types the semantics run in: f64 to fold constants, f32 or f64 in the reference
/// evaluator, f32 in the CUDA emulator. Each method is the standard library's.
pub trait Real:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn cos(self) -> Self;
    fn ln_1p(self) -> Self;
    fn exp_m1(self) -> Self;
    fn floor(self) -> Self;
    fn trunc(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn min(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn trunc(self) -> Self {
                <$t>::trunc(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
        }
    };
}
real!(f32);
real!(f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<&str> = UnaryOp::ALL.iter().map(|o| o.name()).collect();
        names.extend(BinaryOp::ALL.iter().map(|o| o.name()));
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "every op has its own name");
        for op in UnaryOp::ALL {
            if op.row().builtin {
                assert_eq!(UnaryOp::builtin(op.name()), Some(*op));
            }
        }
    }

    #[test]
    fn new_ops_are_accurate_where_the_naive_forms_are_not() {
        let r = |op: UnaryOp, x: f64| UnaryOp::eval(op, Scalar::Real(x)).real();
        assert_eq!(r(UnaryOp::Log1p, 1e-20), 1e-20);
        assert_eq!(r(UnaryOp::Expm1, 1e-20), 1e-20);
        assert_eq!(r(UnaryOp::Softplus, 1000.0), 1000.0);
        assert!((r(UnaryOp::Softplus, 0.0) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(r(UnaryOp::Softplus, -1000.0), 0.0);
        assert_eq!(r(UnaryOp::Square, -3.0), 9.0);
    }

    #[test]
    fn pow_and_rem_follow_the_reference_conventions() {
        let b = |op: BinaryOp, x: f64, y: f64| op.eval(Scalar::Real(x), Scalar::Real(y)).real();
        assert!((b(BinaryOp::Pow, -2.0, 3.0) + 8.0).abs() < 1e-12);
        assert_eq!(b(BinaryOp::Pow, 0.0, 0.0), 1.0);
        assert_eq!(b(BinaryOp::Pow, 0.0, 2.0), 0.0);
        assert_eq!(b(BinaryOp::Rem, -1.0, 3.0), 2.0);
        let i = |op: BinaryOp, x: i64, y: i64| op.eval::<f64>(Scalar::Int(x), Scalar::Int(y));
        assert_eq!(i(BinaryOp::Rem, -1, 3), Scalar::Int(2));
        assert_eq!(i(BinaryOp::Div, -7, 2), Scalar::Int(-3));
        assert_eq!(i(BinaryOp::Div, 1, 0), Scalar::Int(0));
        let nan = BinaryOp::Ne.eval(Scalar::Real(f64::NAN), Scalar::Real(f64::NAN));
        assert_eq!(nan, Scalar::Bool(true));
        assert_eq!(BinaryOp::Lt.eval(Scalar::Real(f64::NAN), Scalar::Real(1.0)), Scalar::Bool(false));
    }
}
