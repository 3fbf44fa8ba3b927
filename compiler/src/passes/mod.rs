//! Optimisation passes over IR programs, one per file. [`optimize`] lists the order; every
//! pass produces a fresh, validated program, so a pass never sees another's leftovers.
//!
//! Passes rebuild programs through [`Rebuilder`]: nodes are copied in block order into a new
//! arena with their operands remapped, and a pass may replace any node on the way.

mod cse;
mod dce;
mod fold;
pub(crate) mod fuse_pairwise;
mod symmetrize_pairwise;

use crate::diag::Diagnostic;
use crate::ir::{Block, Carried, Expr, Handle, Module, Program, Type};
use crate::span::Span;

/// The pass pipeline: common subexpressions, constant folding, dead code, then pairwise
/// fusion (which relies on the first three having merged and simplified the similarity
/// matrix's uses), folding (which settles the transposes fusion leaves), the merging of
/// paired products, then CSE and dead code again.
pub fn optimize(module: &Module, program: &Program) -> Result<Program, Diagnostic> {
    let mut p = program.clone();
    for (name, pass) in [
        ("cse", cse::run as fn(&Module, &Program) -> Program),
        ("fold", fold::run),
        ("dce", dce::run),
        ("fuse_pairwise", fuse_pairwise::run),
        ("fold", fold::run),
        ("symmetrize_pairwise", symmetrize_pairwise::run),
        ("cse", cse::run),
        ("dce", dce::run),
    ] {
        p = pass(module, &p);
        crate::valid::validate(module, &p).map_err(|e| {
            Diagnostic::new(format!("internal compiler error after the `{name}` pass on `{}`: {e}", module.name))
                .hint("this is a bug in sslc's optimiser; please report it with the objective file")
        })?;
    }
    Ok(p)
}

/// What a pass does with one node whose operands are already remapped.
pub(crate) enum Action {
    /// Copy the node (with remapped operands).
    Keep,
    /// Use an existing node of the new program instead.
    Replace(Handle<Expr>),
    /// Drop the node; nothing may use it.
    Drop,
}

/// Copies a program into a fresh arena, letting a pass rewrite nodes as they are copied.
pub(crate) struct Rebuilder<'a> {
    pub module: &'a Module,
    pub old: &'a Program,
    pub new: Program,
    map: Vec<Option<Handle<Expr>>>,
    blocks: Vec<Block>,
    block_ids: Vec<usize>,
    next_block_id: usize,
}

impl<'a> Rebuilder<'a> {
    pub fn new(module: &'a Module, old: &'a Program) -> Self {
        Rebuilder {
            module,
            old,
            new: Program::default(),
            map: vec![None; old.exprs.len()],
            blocks: vec![Vec::new()],
            block_ids: vec![0],
            next_block_id: 1,
        }
    }

    /// The new handle of an old node.
    pub fn mapped(&self, old: Handle<Expr>) -> Handle<Expr> {
        self.map[old.index()].expect("operands are copied before their users")
    }

    /// Appends a new node (typed by the validation rules) to the current block.
    pub fn push(&mut self, expr: Expr, span: Span) -> Handle<Expr> {
        let prog = &self.new;
        let ty = crate::valid::infer(self.module, &expr, &|h| prog.ty(h).clone())
            .unwrap_or_else(|e| panic!("a pass built an ill-typed node {expr:?}: {e}"));
        self.push_typed(expr, ty, span)
    }

    fn push_typed(&mut self, expr: Expr, ty: Type, span: Span) -> Handle<Expr> {
        let h = self.new.append(expr, ty, span);
        self.blocks.last_mut().expect("a block is open").push(h);
        h
    }

    /// The blocks enclosing the node being copied, outermost first, each with a unique id.
    pub fn block_path(&self) -> &[usize] {
        &self.block_ids
    }

    pub fn new_expr(&self, h: Handle<Expr>) -> &Expr {
        &self.new.exprs[h]
    }
    pub fn new_ty(&self, h: Handle<Expr>) -> &Type {
        self.new.ty(h)
    }

    /// Rebuilds the whole program; `rewrite` sees each old node with its operands remapped.
    pub fn run(mut self, rewrite: &mut dyn FnMut(&mut Rebuilder, Handle<Expr>, Expr) -> Action) -> Program {
        let body = self.old.body.clone();
        self.block(&body, rewrite);
        self.new.body = self.blocks.pop().expect("root block");
        self.new.outputs = self
            .old
            .outputs
            .iter()
            .map(|o| crate::ir::Output { name: o.name.clone(), value: self.mapped(o.value) })
            .collect();
        self.new
    }

    fn block(&mut self, block: &[Handle<Expr>], rewrite: &mut dyn FnMut(&mut Rebuilder, Handle<Expr>, Expr) -> Action) {
        for &h in block {
            let old_expr = self.old.exprs[h].clone();
            if let Expr::Loop { count, carried, body } = &old_expr {
                let count = self.mapped(*count);
                let mut params = Vec::new();
                for c in carried {
                    let init = self.mapped(c.init);
                    let ty = self.old.ty(c.param).clone();
                    let param = self.new.append(Expr::LoopParam, ty, self.old.span(c.param));
                    if let Some(n) = self.old.names.get(&c.param) {
                        self.new.names.insert(param, n.clone());
                    }
                    self.map[c.param.index()] = Some(param);
                    params.push((init, param));
                }
                self.blocks.push(Vec::new());
                self.block_ids.push(self.next_block_id);
                self.next_block_id += 1;
                self.block(body, rewrite);
                self.block_ids.pop();
                let new_body = self.blocks.pop().expect("pushed above");
                let carried = carried
                    .iter()
                    .zip(params)
                    .map(|(c, (init, param))| Carried { init, param, next: self.mapped(c.next) })
                    .collect();
                let ty = self.old.ty(h).clone();
                let new = self.push_typed(Expr::Loop { count, carried, body: new_body }, ty, self.old.span(h));
                self.map[h.index()] = Some(new);
                continue;
            }
            if self.old.exprs[h] == Expr::LoopParam {
                continue;
            }
            let expr = old_expr.map_operands(&mut |o| self.map[o.index()].unwrap_or(o));
            match rewrite(self, h, expr.clone()) {
                Action::Keep => {
                    let ty = self.old.ty(h).clone();
                    let new = self.push_typed(expr, ty, self.old.span(h));
                    if let Some(n) = self.old.names.get(&h) {
                        self.new.names.insert(new, n.clone());
                    }
                    self.map[h.index()] = Some(new);
                }
                Action::Replace(new) => {
                    if let Some(n) = self.old.names.get(&h) {
                        self.new.names.entry(new).or_insert_with(|| n.clone());
                    }
                    self.map[h.index()] = Some(new);
                }
                Action::Drop => {}
            }
        }
    }
}
