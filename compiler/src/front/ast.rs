//! The spanned syntax tree of one `.ssl` file, exactly as written (no names resolved yet).

use crate::span::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub imports: Vec<Import>,
    pub functions: Vec<Function>,
    /// Objectives and mixins, in file order.
    pub objectives: Vec<Objective>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    pub path: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub doc: String,
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: TypeExpr,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: TypeExpr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    F32,
    Int,
    Bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    Scalar(ScalarKind),
    /// `[N, D]` (f32), `int[N]`, `bool[N, N]`; dimensions are expressions over dim names.
    Tensor {
        elem: ScalarKind,
        dims: Vec<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let { name: Ident, ty: Option<TypeExpr>, value: Expr, mutable: bool, span: Span },
    Assign { target: Ident, index: Option<Expr>, value: Expr, span: Span },
    Repeat { count: Expr, body: Vec<Stmt>, span: Span },
    Return { value: Expr, span: Span },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub doc: String,
    pub name: Ident,
    /// A mixin is only a fragment for others to extend; it is never compiled on its own.
    pub is_mixin: bool,
    /// Objectives and mixins whose members come first, in order.
    pub extends: Vec<Ident>,
    pub members: Vec<Member>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    Param {
        doc: String,
        name: Ident,
        value: Expr,
        span: Span,
    },
    Dim {
        doc: String,
        name: Ident,
        value: Expr,
        span: Span,
    },
    Views {
        /// Two global views, then any small crops (multi-crop).
        names: Vec<Ident>,
        pipeline: Expr,
        span: Span,
    },
    Input {
        doc: String,
        name: Ident,
        ty: TypeExpr,
        source: Expr,
        span: Span,
    },
    /// `const`, or with `learned` a `learn` tensor: built the same way, then trained.
    Const {
        doc: String,
        name: Ident,
        ty: TypeExpr,
        init: Expr,
        learned: bool,
        /// A `learn` tensor's optimizer options after its initialiser (`, decay=0`).
        options: Vec<Arg>,
        span: Span,
    },
    State {
        doc: String,
        name: Ident,
        ty: TypeExpr,
        init: Expr,
        span: Span,
    },
    Schedule {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Metric {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Let {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
        span: Span,
    },
    /// `loss = ...`, `per_sample = ...`, or `loss += ...` (`add`).
    Output {
        name: Ident,
        value: Expr,
        add: bool,
        span: Span,
    },
    OnStep {
        body: Vec<Stmt>,
        span: Span,
    },
    OnEpoch {
        when: Option<Expr>,
        body: Vec<Stmt>,
        span: Span,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    MatMul,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Pow => "**",
            BinaryOp::MatMul => "@",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    /// `a:b`, either bound optional.
    Slice { start: Option<Expr>, end: Option<Expr>, span: Span },
    /// `None`: a new axis of size 1.
    NewAxis(Span),
    /// A single expression: an integer picks one entry, an `int` tensor gathers rows.
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Number(f64),
    Int(i64),
    /// `50%`: a fraction of the run (0.5).
    Percent(f64),
    Bool(bool),
    Name(String),
    Unary {
        op: UnaryOp,
        arg: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Index {
        base: Box<Expr>,
        items: Vec<IndexItem>,
    },
    Transpose(Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    List(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}
