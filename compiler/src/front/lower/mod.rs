//! AST → IR: name resolution, function inlining, shape checking.
//!
//! Lowering is where a user's mistakes are found, so every error is a [`Diagnostic`] pointing at
//! the offending text (and, inside an inlined function, at the call that instantiated it).
//! Functions are checked twice: once generically with their own symbolic dimensions (so a
//! library file checks on its own), and again at every call with the caller's shapes.
//!
//! One file per part of the work: [`objectives`] lowers a file's objectives and their
//! declarations; the program builder [`Lower`] (below) is extended by [`values`],
//! [`expressions`], [`names`], [`calls`] and [`statements`], and by [`builtins`], the table of
//! built-in names and how each lowers; [`initialisers`] reads the literal initial values of
//! constants, learned tensors and state. The shared types live here, so the builtins and the
//! sections import from this module and it imports from none of them.

mod builtins;
mod calls;
mod expressions;
mod initialisers;
mod names;
mod objectives;
mod statements;
mod values;

pub use objectives::lower;

use crate::diag::Diagnostic;
use crate::front::ast::{self, ExprKind, ScalarKind};
use crate::ir::{
    Block, ConstDecl, Dim, Elem, Expr, Handle, InputDecl, Module, ParamDecl, Program, StateDecl, StateUpdate, Type,
};
use crate::span::Span;
use crate::valid;
use std::collections::{HashMap, HashSet};

/// The result of lowering one root file: one module per objective it declares.
pub struct LoweredFile {
    pub modules: Vec<Module>,
    /// Every function checked on its own (parameter shapes as declared), with the module that
    /// holds its symbolic dimensions: what an editor shows inside a library's functions.
    pub functions: Vec<(Module, Program)>,
}

/// An error has been recorded in the lowerer's diagnostics; the caller abandons the construct.
#[derive(Debug)]
pub(super) struct Reported;
pub(super) type R<T> = Result<T, Reported>;

/// A value during lowering. Sizes stay symbolic (`Dim`) as long as they can, so `eye(2*N)`
/// has shape `[2*N, 2*N]`; everything else is an IR node.
#[derive(Clone, Debug)]
pub(super) enum Value {
    Node(Handle<Expr>),
    Dim(Dim),
    List(Vec<(Value, Span)>),
}

type Functions<'a> = HashMap<String, &'a ast::Function>;

/// What a name at objective level refers to.
#[derive(Clone, Copy)]
enum ObjName<'a> {
    Param(Handle<ParamDecl>),
    Dim(crate::ir::DimSym),
    Input(Handle<InputDecl>),
    Const(Handle<ConstDecl>),
    State(Handle<StateDecl>),
    View(usize),
    Let(&'a ast::Expr),
    /// A loss-program output (`per_sample`, a metric) and its position among the outputs.
    Output(usize, &'a ast::Expr),
}

struct ObjectiveScope<'a> {
    names: HashMap<String, (ObjName<'a>, Span)>,
}

/// Where a program runs decides which names it may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Function,
    Loss,
    Step,
    Epoch,
    ViewArg,
    Schedule,
}

impl Context {
    fn describe(self) -> &'static str {
        match self {
            Context::Function => "a function body",
            Context::Loss => "the loss",
            Context::Step => "`on step`",
            Context::Epoch => "`on epoch`",
            Context::ViewArg => "an augmentation argument",
            Context::Schedule => "a schedule",
        }
    }
}

fn elem_of(k: ScalarKind) -> Elem {
    match k {
        ScalarKind::F32 => Elem::Real,
        ScalarKind::Int => Elem::Int,
        ScalarKind::Bool => Elem::Bool,
    }
}

/// Evaluates a dimension expression (`N`, `2*N`, `N + 1`, `100`) to an affine [`Dim`].
fn dim_expr(e: &ast::Expr, lookup: &mut dyn FnMut(&str, Span) -> Option<Dim>) -> Result<Dim, Diagnostic> {
    let bad = || {
        Diagnostic::new("not a dimension")
            .at(e.span, "expected a size")
            .hint("a dimension is a name, an integer, or `+`, `-`, `*` of those (e.g. `2*N`)")
    };
    match &e.kind {
        ExprKind::Int(v) => Ok(Dim::constant(*v)),
        ExprKind::Name(n) => lookup(n, e.span).ok_or_else(|| {
            Diagnostic::new(format!("unknown dimension `{n}`"))
                .at(e.span, "not a dimension in scope")
                .hint("dimensions are introduced by the shapes of inputs and function parameters, or by `dim K = 100`")
        }),
        ExprKind::Binary { op, lhs, rhs } => {
            let l = dim_expr(lhs, lookup)?;
            let r = dim_expr(rhs, lookup)?;
            match op {
                ast::BinaryOp::Add => Ok(l.add(&r)),
                ast::BinaryOp::Sub => Ok(l.sub(&r)),
                ast::BinaryOp::Mul => match (l.as_constant(), r.as_constant()) {
                    (Some(c), _) => Ok(r.scale(c)),
                    (_, Some(c)) => Ok(l.scale(c)),
                    _ => Err(bad().hint("a product of two dimensions is not supported; one factor must be an integer")),
                },
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

// ---- the program builder -----------------------------------------------------------------

#[derive(Clone, Debug)]
struct Local {
    value: Value,
    mutable: bool,
    span: Span,
}

pub(super) struct Lower<'a> {
    pub(super) module: &'a Module,
    functions: &'a Functions<'a>,
    objective: Option<&'a ObjectiveScope<'a>>,
    context: Context,
    pub(super) prog: Program,
    blocks: Vec<Block>,
    scopes: Vec<HashMap<String, Local>>,
    /// Active function calls, outermost first, for recursion checks and error context.
    calls: Vec<(String, Span)>,
    /// Objective-level names already lowered in this program.
    cache: HashMap<String, Value>,
    in_progress: HashSet<String>,
    updates: Vec<StateUpdate>,
    pub(super) diags: Vec<Diagnostic>,
}

impl<'a> Lower<'a> {
    fn new(
        module: &'a Module,
        functions: &'a Functions<'a>,
        objective: Option<&'a ObjectiveScope<'a>>,
        context: Context,
    ) -> Self {
        Lower {
            module,
            functions,
            objective,
            context,
            prog: Program::default(),
            blocks: vec![Vec::new()],
            scopes: Vec::new(),
            calls: Vec::new(),
            cache: HashMap::new(),
            in_progress: HashSet::new(),
            updates: Vec::new(),
            diags: Vec::new(),
        }
    }

    fn finish(mut self) -> (Program, Vec<Diagnostic>) {
        self.prog.body = self.blocks.pop().unwrap_or_default();
        (self.prog, self.diags)
    }

    /// Records an error, adding the chain of calls that led to it.
    pub(super) fn error(&mut self, mut d: Diagnostic) -> Reported {
        for (name, span) in self.calls.iter().rev() {
            d = d.also(*span, format!("in this call to `{name}`"));
        }
        self.diags.push(d);
        Reported
    }

    /// Appends a node, typing it with the validation rules; a type error is reported at `span`.
    pub(super) fn push(&mut self, expr: Expr, span: Span) -> R<Handle<Expr>> {
        let ty = {
            let prog = &self.prog;
            valid::infer(self.module, &expr, &|h| prog.ty(h).clone())
        };
        match ty {
            Ok(ty) => Ok(self.push_typed(expr, ty, span)),
            Err(e) => Err(self.error(Diagnostic::new(e.to_string()).at(span, "here").hint(type_hint(&e)))),
        }
    }

    fn push_typed(&mut self, expr: Expr, ty: Type, span: Span) -> Handle<Expr> {
        let h = self.prog.append(expr, ty, span);
        if let Some((_, call)) = self.calls.first() {
            self.prog.call_sites.insert(h, *call);
        }
        self.blocks.last_mut().expect("a block is always open").push(h);
        h
    }

    pub(super) fn ty(&self, h: Handle<Expr>) -> &Type {
        self.prog.ty(h)
    }

    pub(super) fn shape_text(&self, t: &Type) -> String {
        t.display(&self.module.dims).to_string()
    }
}

fn type_hint(e: &valid::TypeError) -> String {
    match e {
        valid::TypeError::ShapeMismatch { .. } => "make the shapes equal, or broadcast one with `x[:, None]`".into(),
        valid::TypeError::MatMulInner { .. } => "the inner sizes must agree; transpose one operand with `.T`".into(),
        valid::TypeError::Axis { .. } => "axes count from 0; -1 is the last".into(),
        valid::TypeError::Rank { .. } => "check the tensor's rank".into(),
        _ => "check the operands' shapes and types".into(),
    }
}
