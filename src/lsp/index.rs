//! Names in the syntax trees of a file and its imports: which declaration a word refers to at
//! a place, which names are in scope there, and the outline of a file.

use sslc_compiler::front::ast::{self, Expr, Function, Member, Objective, Stmt, TypeExpr};
use sslc_compiler::front::ParsedFile;
use sslc_compiler::span::{FileId, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefKind {
    Function,
    FnParam,
    Local,
    Objective,
    Mixin,
    Param,
    Dim,
    View,
    Input,
    Const,
    Learn,
    State,
    Schedule,
    Metric,
    Let,
    Output,
}

/// A declaration: the span of its name, of all of it, and what hover shows about it.
#[derive(Clone, Copy)]
pub struct Def<'a> {
    pub name: &'a str,
    pub kind: DefKind,
    pub name_span: Span,
    pub span: Span,
    pub doc: &'a str,
    pub ty: Option<&'a TypeExpr>,
    pub value: Option<&'a Expr>,
}

fn def<'a>(id: &'a ast::Ident, kind: DefKind, span: Span) -> Def<'a> {
    Def { name: &id.name, kind, name_span: id.span, span, doc: "", ty: None, value: None }
}

pub struct Index<'a> {
    pub files: &'a [ParsedFile],
}

fn contains(span: Span, file: FileId, offset: usize) -> bool {
    span.file == file && (span.start as usize) <= offset && offset <= span.end as usize
}

impl<'a> Index<'a> {
    pub fn functions(&self) -> impl Iterator<Item = &'a Function> {
        self.files.iter().flat_map(|f| f.ast.functions.iter())
    }

    fn objective(&self, name: &str) -> Option<&'a Objective> {
        self.files.iter().flat_map(|f| f.ast.objectives.iter()).find(|o| o.name.name == name)
    }

    /// Every name visible at `offset` of `file`, innermost first (a later entry of the same
    /// name is shadowed).
    pub fn scope(&self, file: FileId, offset: usize) -> Vec<Def<'a>> {
        let mut out = Vec::new();
        let Some(parsed) = self.files.iter().find(|f| f.id == file) else { return out };
        for f in parsed.ast.functions.iter().filter(|f| contains(f.span, file, offset)) {
            locals(&f.body, &mut out);
            out.extend(f.params.iter().map(|p| Def { ty: Some(&p.ty), ..def(&p.name, DefKind::FnParam, p.name.span) }));
        }
        for o in parsed.ast.objectives.iter().filter(|o| contains(o.span, file, offset)) {
            for m in &o.members {
                if let Member::OnStep { body, .. } | Member::OnEpoch { body, .. } = m {
                    locals(body, &mut out);
                }
            }
            self.members(o, &mut out, 0);
        }
        out.extend(self.functions().map(|f| Def {
            doc: &f.doc,
            ty: Some(&f.ret),
            ..def(&f.name, DefKind::Function, f.span)
        }));
        for o in self.files.iter().flat_map(|f| f.ast.objectives.iter()) {
            let kind = if o.is_mixin { DefKind::Mixin } else { DefKind::Objective };
            out.push(Def { doc: &o.doc, ..def(&o.name, kind, o.span) });
        }
        out
    }

    /// The members of `o` and of its bases (a member of `o` first, then later bases first).
    fn members(&self, o: &'a Objective, out: &mut Vec<Def<'a>>, depth: usize) {
        out.extend(o.members.iter().flat_map(member_defs));
        if depth < 32 {
            for base in o.extends.iter().rev() {
                if let Some(b) = self.objective(&base.name) {
                    self.members(b, out, depth + 1);
                }
            }
        }
    }

    /// The declaration the word `name` at `offset` refers to.
    pub fn resolve(&self, file: FileId, offset: usize, name: &str) -> Option<Def<'a>> {
        self.scope(file, offset).into_iter().find(|d| d.name == name)
    }

    /// The file an import at `offset` names.
    pub fn import_at(&self, file: FileId, offset: usize) -> Option<&'a ParsedFile> {
        let parsed = self.files.iter().find(|f| f.id == file)?;
        let import = parsed.ast.imports.iter().find(|i| contains(i.span, file, offset))?;
        let dir = parsed.path.parent()?;
        let target = dir.join(&import.path).canonicalize().ok()?;
        self.files.iter().find(|f| f.path == target)
    }
}

fn locals<'a>(body: &'a [Stmt], out: &mut Vec<Def<'a>>) {
    for s in body {
        match s {
            Stmt::Let { name, ty, value, span, .. } => {
                out.push(Def { ty: ty.as_ref(), value: Some(value), ..def(name, DefKind::Local, *span) })
            }
            Stmt::Repeat { body, .. } => locals(body, out),
            Stmt::Assign { .. } | Stmt::Return { .. } => {}
        }
    }
}

/// The names a member declares.
pub fn member_defs(m: &Member) -> Vec<Def<'_>> {
    let value = |kind, name, value, span, doc| vec![Def { doc, value: Some(value), ..def(name, kind, span) }];
    let typed =
        |kind, name, ty, value, span, doc| vec![Def { doc, ty: Some(ty), value: Some(value), ..def(name, kind, span) }];
    match m {
        Member::Param { doc, name, value: v, span } => value(DefKind::Param, name, v, *span, doc.as_str()),
        Member::Dim { doc, name, value: v, span } => value(DefKind::Dim, name, v, *span, doc.as_str()),
        Member::Views { names, pipeline, span } => {
            names.iter().map(|n| Def { value: Some(pipeline), ..def(n, DefKind::View, *span) }).collect()
        }
        Member::Input { doc, name, ty, source, span } => typed(DefKind::Input, name, ty, source, *span, doc.as_str()),
        Member::Const { doc, name, ty, init, learned, span, options: _ } => {
            let kind = if *learned { DefKind::Learn } else { DefKind::Const };
            typed(kind, name, ty, init, *span, doc.as_str())
        }
        Member::State { doc, name, ty, init, span } => typed(DefKind::State, name, ty, init, *span, doc.as_str()),
        Member::Schedule { name, value: v, span } => value(DefKind::Schedule, name, v, *span, ""),
        Member::Metric { name, value: v, span } => value(DefKind::Metric, name, v, *span, ""),
        Member::Let { name, ty, value: v, span } => {
            vec![Def { ty: ty.as_ref(), value: Some(v), ..def(name, DefKind::Let, *span) }]
        }
        Member::Output { name, value: v, add, span } if !*add => value(DefKind::Output, name, v, *span, ""),
        Member::Output { .. } | Member::OnStep { .. } | Member::OnEpoch { .. } => Vec::new(),
    }
}
