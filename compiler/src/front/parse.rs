//! Text → [`ast::File`]: pest recognises the grammar in `grammar/ssl.pest`, a Pratt parser
//! applies operator precedence, and syntax errors become diagnostics that say what was found,
//! what would have been accepted there, and a hint.

use super::ast::{
    self, Arg, BinaryOp, Expr, ExprKind, IndexItem, Member, ScalarKind, Stmt, TypeExpr, TypeKind, UnaryOp,
};
use crate::diag::Diagnostic;
use crate::span::{FileId, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/ssl.pest"]
pub(crate) struct SslParser;

/// Brackets nested deeper than this are refused before parsing: the parser and the lowering
/// recurse once per level, and no objective needs more.
const MAX_NESTING: usize = 128;

/// Operators on the path from an expression's root to its deepest leaf (`-`, `not`, `.T`, calls,
/// indexing, infix operators, `else if` branches), summed over nested brackets. Every pass that
/// walks a syntax tree recurses once per level, so an unbracketed chain of 20,000 `+` would
/// overflow the stack; refusing it here, with its span, bounds them all. No objective needs more.
pub const MAX_EXPR_DEPTH: usize = 256;

pub fn parse(source: &str, file: FileId) -> Result<ast::File, Diagnostic> {
    check_nesting(source, file)?;
    pest::set_error_detail(true);
    let mut pairs = SslParser::parse(Rule::file, source).map_err(|e| syntax_error(e, source, file))?;
    let root = pairs.next().expect("the file rule always yields one pair");
    let cx = Cx { file, depth: Cell::new(0), too_deep: RefCell::new(None) };
    let mut out = ast::File { imports: Vec::new(), functions: Vec::new(), objectives: Vec::new() };
    for item in root.into_inner() {
        match item.as_rule() {
            Rule::import => {
                let span = cx.span(&item);
                let lit = item.into_inner().next().expect("import has a string");
                out.imports.push(ast::Import { path: unquote(lit.as_str()), span });
            }
            Rule::function => out.functions.push(cx.function(item)),
            Rule::objective | Rule::mixin => out.objectives.push(cx.objective(item)),
            Rule::EOI => {}
            r => unreachable!("grammar yields no {r:?} at top level"),
        }
    }
    match cx.too_deep.into_inner() {
        Some(d) => Err(d),
        None => Ok(out),
    }
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

fn check_nesting(source: &str, file: FileId) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in source.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '/' if source[i..].starts_with("//") => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::new(format!("brackets nested more than {MAX_NESTING} deep"))
                        .at(Span::new(file, i, i + 1), "too deep")
                        .hint("split the expression with `let` bindings"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn syntax_error(e: pest::error::Error<Rule>, source: &str, file: FileId) -> Diagnostic {
    let mut pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected = Expected::default();
    if let Some(attempts) = e.parse_attempts() {
        pos = attempts.max_position;
        for token in attempts.expected_tokens() {
            expected.token(&token.to_string());
        }
        for stack in attempts.call_stacks() {
            if let Some(rule) = stack.deepest.get_rule().or(stack.parent.as_ref()) {
                expected.rule(*rule);
            }
        }
    } else if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        positives.iter().for_each(|r| expected.rule(*r));
    }
    // Report the next real token, not the whitespace before it.
    while source[pos.min(source.len())..].starts_with(|c: char| c.is_whitespace()) {
        pos += source[pos..].chars().next().map_or(1, char::len_utf8);
    }
    let found = token_at(source, pos);
    let span = Span::new(file, pos, (pos + found.len().max(1)).min(source.len()).max(pos));
    let what = expected.describe();
    let previous_word =
        source[..pos].trim_end().rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
    let shown = if found.is_empty() { "end of file".to_string() } else { format!("`{found}`") };
    Diagnostic::new(format!("syntax error: expected {what}, found {shown}"))
        .at(span, format!("expected {what}"))
        .hint(expected.hint(&found, previous_word))
}

/// The token starting at `pos`: a word, a number, or one character.
fn token_at(source: &str, pos: usize) -> String {
    let rest = source.get(pos..).unwrap_or("");
    match rest.chars().next() {
        None => String::new(),
        Some(c) if c.is_alphanumeric() || c == '_' => {
            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect()
        }
        Some(c) => c.to_string(),
    }
}

/// What the parser would have accepted where it stopped, in words a user knows.
#[derive(Default)]
struct Expected {
    items: Vec<String>,
    operator: bool,
}

impl Expected {
    fn push(&mut self, s: &str) {
        if !self.items.iter().any(|i| i == s) {
            self.items.push(s.to_string());
        }
    }

    fn token(&mut self, token: &str) {
        const OPERATORS: &[&str] =
            &["+", "-", "*", "/", "%", "**", "@", "==", "!=", "<", "<=", ">", ">=", "and", "or", "(", ".", "+="];
        const IGNORED: &[&str] = &[" ", "\t", "\r", "\n", "\t", "\n", "\r", "//", "///", "\"", "\t"];
        if OPERATORS.contains(&token) {
            self.operator = true;
        } else if token.trim().is_empty()
            || ["_", "[", "e", "E"].contains(&token)
            || IGNORED.contains(&token)
            || token.contains("..")
            || token.len() > 12
        {
            // whitespace, comments and character ranges say nothing useful
        } else {
            self.push(&format!("`{token}`"));
        }
    }

    fn rule(&mut self, rule: Rule) {
        let name = match rule {
            Rule::expr
            | Rule::primary
            | Rule::prefix
            | Rule::neg
            | Rule::not
            | Rule::number
            | Rule::percent
            | Rule::ident
            | Rule::if_expr
            | Rule::list
            | Rule::boolean
            | Rule::slice_start
            | Rule::slice_end => "an expression",
            Rule::infix
            | Rule::add
            | Rule::sub
            | Rule::mul
            | Rule::div
            | Rule::pow
            | Rule::rem
            | Rule::matmul
            | Rule::eq
            | Rule::ne
            | Rule::lt
            | Rule::le
            | Rule::gt
            | Rule::ge
            | Rule::and
            | Rule::or
            | Rule::postfix
            | Rule::call
            | Rule::index
            | Rule::transpose => {
                self.operator = true;
                return;
            }
            Rule::ty | Rule::scalar_ty | Rule::tensor_ty | Rule::elem_prefix => "a type such as `[N, D]` or `f32`",
            Rule::block => "`{`",
            Rule::string => "a quoted path",
            Rule::fn_param | Rule::fn_params => "a parameter `name: type`",
            Rule::import | Rule::function | Rule::objective | Rule::mixin | Rule::doc => {
                "`import`, `fn`, `objective` or `mixin`"
            }
            Rule::param_decl
            | Rule::dim_decl
            | Rule::views_decl
            | Rule::input_decl
            | Rule::const_decl
            | Rule::state_decl
            | Rule::schedule_decl
            | Rule::metric_decl
            | Rule::on_step
            | Rule::on_epoch
            | Rule::output_stmt
            | Rule::output_name
            | Rule::add_assign => "an objective member",
            Rule::let_stmt
            | Rule::var_stmt
            | Rule::assign_stmt
            | Rule::repeat_stmt
            | Rule::return_stmt
            | Rule::place => "a statement",
            Rule::extends | Rule::kw_extends => "`extends`",
            Rule::kw_step | Rule::kw_epoch => "`step` or `epoch`",
            Rule::EOI => "end of file",
            Rule::slice | Rule::new_axis => "an index",
            Rule::arg => "an argument",
            _ => return,
        };
        self.push(name);
    }

    fn describe(&self) -> String {
        // Closing brackets and separators first: they are what a user most often forgot.
        let rank = |s: &str| match s {
            "`}`" | "`)`" | "`]`" | "`,`" => 0,
            "`->`" | "`=`" | "`:`" | "`{`" => 1,
            s if !s.starts_with('`') => 2,
            _ => 3,
        };
        let mut items: Vec<&str> = self.items.iter().map(String::as_str).collect();
        items.sort_by_key(|s| rank(s));
        items.truncate(7);
        if self.operator {
            items.push("an operator");
        }
        match items.as_slice() {
            [] => "something else".to_string(),
            [one] => one.to_string(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }

    fn hint(&self, found: &str, previous_word: &str) -> String {
        let has = |s: &str| self.items.iter().any(|i| i == s);
        let keywords =
            ["let", "var", "fn", "objective", "mixin", "repeat", "return", "if", "else", "import", "and", "or", "not"];
        if keywords.contains(&previous_word) && (found == ":" || found == "=" || found == ",") {
            format!("`{previous_word}` is a keyword and cannot be used as a name")
        } else if found == ";" {
            "`.ssl` needs no semicolons: end the statement with a newline".into()
        } else if found.is_empty() {
            "the file ended early: is a `}` or `)` missing?".into()
        } else if found == "=" {
            "use `==` to compare; `=` binds a name at the start of a statement, or names an argument (`axis=1`)".into()
        } else if has("`->`") {
            "a function declares its result type: `fn f(x: [N, D]) -> [N] { ... }`".into()
        } else if keywords.contains(&found) {
            format!("`{found}` is a keyword and cannot be used as a name")
        } else if has("`)`") || has("`]`") || has("`}`") {
            "check that every `(`, `[` and `{` is closed".into()
        } else if has("`{`") {
            "a body in braces `{ ... }` must follow here".into()
        } else {
            "statements start with `let`, `var`, `repeat`, `return` or `name =`; objective members with `param`, `dim`, \
             `views`, `input`, `const`, `learn`, `state`, `schedule`, `metric`, `let`, `loss =`, `per_sample =` or `on`"
                .into()
        }
    }
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
            .op(Op::infix(Rule::pow, Assoc::Right))
            .op(Op::postfix(Rule::call) | Op::postfix(Rule::index) | Op::postfix(Rule::transpose))
    })
}

struct Cx {
    file: FileId,
    /// Operators on the path to the expression being built (see [`MAX_EXPR_DEPTH`]).
    depth: Cell<usize>,
    /// The first expression that went past [`MAX_EXPR_DEPTH`]; parsing stops descending there.
    too_deep: RefCell<Option<Diagnostic>>,
}

impl Cx {
    /// The pair's span without the whitespace and comments a rule may have swallowed at its end.
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        let mut text = s.as_str();
        loop {
            let trimmed = text.trim_end();
            // A trailing line comment: drop it and trim again.
            let cut = match trimmed.rfind('\n') {
                Some(nl) if trimmed[nl..].trim_start().starts_with("//") => &trimmed[..nl],
                _ => trimmed,
            };
            if cut.len() == text.len() {
                break;
            }
            text = cut;
        }
        Span::new(self.file, s.start(), s.start() + text.len())
    }

    fn ident(&self, pair: Pair<Rule>) -> ast::Ident {
        ast::Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    /// Leading `///` lines, joined.
    fn docs<'a>(&self, inner: &mut std::iter::Peekable<pest::iterators::Pairs<'a, Rule>>) -> String {
        let mut lines = Vec::new();
        while let Some(p) = inner.peek() {
            if p.as_rule() != Rule::doc {
                break;
            }
            let p = inner.next().expect("peeked");
            lines.push(p.as_str().trim_start_matches("///").trim().to_string());
        }
        lines.join("\n")
    }

    fn function(&self, pair: Pair<Rule>) -> ast::Function {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().peekable();
        let doc = self.docs(&mut inner);
        let name = self.ident(inner.next().expect("fn name"));
        let params = inner
            .next()
            .expect("fn params")
            .into_inner()
            .map(|p| {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("param name"));
                let ty = self.ty(it.next().expect("param type"));
                ast::FnParam { name, ty }
            })
            .collect();
        let ret = self.ty(inner.next().expect("return type"));
        let body = self.block(inner.next().expect("fn body"));
        ast::Function { doc, name, params, ret, body, span }
    }

    fn ty(&self, pair: Pair<Rule>) -> TypeExpr {
        let span = self.span(&pair);
        let inner = pair.into_inner().next().expect("type has one alternative");
        let kind = match inner.as_rule() {
            Rule::scalar_ty => TypeKind::Scalar(scalar_kind(inner.as_str())),
            Rule::tensor_ty => {
                let mut elem = ScalarKind::F32;
                let mut dims = Vec::new();
                for p in inner.into_inner() {
                    match p.as_rule() {
                        Rule::elem_prefix => elem = scalar_kind(p.as_str()),
                        _ => dims.push(self.expr(p)),
                    }
                }
                TypeKind::Tensor { elem, dims }
            }
            r => unreachable!("no type alternative {r:?}"),
        };
        TypeExpr { kind, span }
    }

    fn block(&self, pair: Pair<Rule>) -> Vec<Stmt> {
        pair.into_inner().map(|p| self.stmt(p)).collect()
    }

    fn stmt(&self, pair: Pair<Rule>) -> Stmt {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        match rule {
            Rule::let_stmt | Rule::var_stmt => {
                inner.next(); // keyword
                let name = self.ident(inner.next().expect("let name"));
                let mut next = inner.next().expect("let value");
                let ty = if next.as_rule() == Rule::ty {
                    let t = self.ty(next);
                    next = inner.next().expect("let value");
                    Some(t)
                } else {
                    None
                };
                Stmt::Let { name, ty, value: self.expr(next), mutable: rule == Rule::var_stmt, span }
            }
            Rule::assign_stmt => {
                let mut place = inner.next().expect("place").into_inner();
                let target = self.ident(place.next().expect("target"));
                let index = place.next().map(|p| self.expr(p));
                let value = self.expr(inner.next().expect("value"));
                Stmt::Assign { target, index, value, span }
            }
            Rule::repeat_stmt => {
                inner.next();
                let count = self.expr(inner.next().expect("count"));
                let body = self.block(inner.next().expect("body"));
                Stmt::Repeat { count, body, span }
            }
            Rule::return_stmt => {
                inner.next();
                Stmt::Return { value: self.expr(inner.next().expect("value")), span }
            }
            r => unreachable!("no statement {r:?}"),
        }
    }

    fn objective(&self, pair: Pair<Rule>) -> ast::Objective {
        let span = self.span(&pair);
        let is_mixin = pair.as_rule() == Rule::mixin;
        let mut inner = pair.into_inner().peekable();
        let doc = self.docs(&mut inner);
        inner.next(); // `objective` or `mixin`
        let name = self.ident(inner.next().expect("objective name"));
        let mut extends = Vec::new();
        if inner.peek().is_some_and(|p| p.as_rule() == Rule::extends) {
            let list = inner.next().expect("peeked");
            extends = list.into_inner().filter(|p| p.as_rule() == Rule::ident).map(|p| self.ident(p)).collect();
        }
        let members = inner.map(|m| self.member(m)).collect();
        ast::Objective { doc, name, is_mixin, extends, members, span }
    }

    fn member(&self, pair: Pair<Rule>) -> Member {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        if rule == Rule::let_stmt {
            return match self.stmt(pair) {
                Stmt::Let { name, ty, value, span, .. } => Member::Let { name, ty, value, span },
                _ => unreachable!("let_stmt lowers to Stmt::Let"),
            };
        }
        let mut inner = pair.into_inner().peekable();
        let doc = self.docs(&mut inner);
        match rule {
            Rule::output_stmt => {
                let name = self.ident(inner.next().expect("output name"));
                let mut next = inner.next().expect("value");
                let add = next.as_rule() == Rule::add_assign;
                if add {
                    next = inner.next().expect("value");
                }
                Member::Output { name, value: self.expr(next), add, span }
            }
            Rule::on_step => {
                inner.next();
                inner.next();
                Member::OnStep { body: self.block(inner.next().expect("body")), span }
            }
            Rule::on_epoch => {
                inner.next();
                inner.next();
                let mut next = inner.next().expect("when or body");
                let when = if next.as_rule() == Rule::kw_when {
                    let cond = self.expr(inner.next().expect("condition"));
                    next = inner.next().expect("body");
                    Some(cond)
                } else {
                    None
                };
                Member::OnEpoch { when, body: self.block(next), span }
            }
            _ => {
                inner.next(); // keyword
                let name = self.ident(inner.next().expect("member name"));
                match rule {
                    Rule::param_decl => {
                        Member::Param { doc, name, value: self.expr(inner.next().expect("value")), span }
                    }
                    Rule::dim_decl => Member::Dim { doc, name, value: self.expr(inner.next().expect("value")), span },
                    Rule::views_decl => {
                        let mut names = vec![name];
                        let mut rest: Vec<_> = inner.collect();
                        let pipeline = self.expr(rest.pop().expect("pipeline"));
                        names.extend(rest.into_iter().map(|p| self.ident(p)));
                        Member::Views { names, pipeline, span }
                    }
                    Rule::input_decl | Rule::const_decl | Rule::learn_decl | Rule::state_decl => {
                        let ty = self.ty(inner.next().expect("type"));
                        let value = self.expr(inner.next().expect("value"));
                        match rule {
                            Rule::input_decl => Member::Input { doc, name, ty, source: value, span },
                            Rule::const_decl | Rule::learn_decl => {
                                let options = inner.map(|p| self.arg(p)).collect();
                                let learned = rule == Rule::learn_decl;
                                Member::Const { doc, name, ty, init: value, learned, options, span }
                            }
                            _ => Member::State { doc, name, ty, init: value, span },
                        }
                    }
                    Rule::schedule_decl => {
                        Member::Schedule { name, value: self.expr(inner.next().expect("value")), span }
                    }
                    Rule::metric_decl => Member::Metric { name, value: self.expr(inner.next().expect("value")), span },
                    r => unreachable!("no member {r:?}"),
                }
            }
        }
    }

    /// Adds `levels` to the depth of the expression being built, or records why it is too deep
    /// (the caller then builds a placeholder and parsing fails at the end).
    /// `level(k)` is the span of the k-th new level: the operator that went past the limit is
    /// the one marked.
    fn descend(&self, levels: usize, level: impl FnOnce(usize) -> Span) -> bool {
        let depth = self.depth.get() + levels;
        if depth > MAX_EXPR_DEPTH {
            let mut slot = self.too_deep.borrow_mut();
            if slot.is_none() {
                let span = level(MAX_EXPR_DEPTH - self.depth.get());
                *slot = Some(
                    Diagnostic::new(format!("expression nested more than {MAX_EXPR_DEPTH} operators deep"))
                        .at(span, "too deep")
                        .hint("split the expression with `let` bindings"),
                );
            }
            return false;
        }
        self.depth.set(depth);
        true
    }

    fn expr(&self, pair: Pair<Rule>) -> Expr {
        debug_assert_eq!(pair.as_rule(), Rule::expr);
        let span = self.span(&pair);
        let operators = pair.clone().into_inner().filter(|p| !is_primary(p.as_rule())).count();
        let nth_operator = |k| {
            let op = pair.clone().into_inner().filter(|p| !is_primary(p.as_rule())).nth(k);
            op.map_or(span, |op| self.span(&op))
        };
        if !self.descend(operators, nth_operator) {
            return Expr { kind: ExprKind::Number(0.0), span };
        }
        let e = self.pratt_expr(pair);
        self.depth.set(self.depth.get() - operators);
        e
    }

    fn pratt_expr(&self, pair: Pair<Rule>) -> Expr {
        pratt()
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, arg| {
                let span = self.span(&op).to(arg.span);
                let op = if op.as_rule() == Rule::neg { UnaryOp::Neg } else { UnaryOp::Not };
                Expr { kind: ExprKind::Unary { op, arg: Box::new(arg) }, span }
            })
            .map_postfix(|base, op| {
                let span = base.span.to(self.span(&op));
                let kind = match op.as_rule() {
                    Rule::call => {
                        ExprKind::Call { callee: Box::new(base), args: op.into_inner().map(|a| self.arg(a)).collect() }
                    }
                    Rule::index => ExprKind::Index {
                        base: Box::new(base),
                        items: op.into_inner().map(|i| self.index_item(i)).collect(),
                    },
                    _ => ExprKind::Transpose(Box::new(base)),
                };
                Expr { kind, span }
            })
            .map_infix(|lhs, op, rhs| {
                let span = lhs.span.to(rhs.span);
                let op = match op.as_rule() {
                    Rule::add => BinaryOp::Add,
                    Rule::sub => BinaryOp::Sub,
                    Rule::mul => BinaryOp::Mul,
                    Rule::div => BinaryOp::Div,
                    Rule::rem => BinaryOp::Rem,
                    Rule::pow => BinaryOp::Pow,
                    Rule::matmul => BinaryOp::MatMul,
                    Rule::lt => BinaryOp::Lt,
                    Rule::le => BinaryOp::Le,
                    Rule::gt => BinaryOp::Gt,
                    Rule::ge => BinaryOp::Ge,
                    Rule::eq => BinaryOp::Eq,
                    Rule::ne => BinaryOp::Ne,
                    Rule::and => BinaryOp::And,
                    _ => BinaryOp::Or,
                };
                Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span }
            })
            .parse(pair.into_inner())
    }

    fn arg(&self, pair: Pair<Rule>) -> Arg {
        let mut inner: Vec<Pair<Rule>> = pair.into_inner().collect();
        let value = self.expr(inner.pop().expect("argument value"));
        let name = inner.pop().map(|p| self.ident(p));
        Arg { name, value }
    }

    fn index_item(&self, pair: Pair<Rule>) -> IndexItem {
        match pair.as_rule() {
            Rule::new_axis => IndexItem::NewAxis(self.span(&pair)),
            Rule::slice => {
                let span = self.span(&pair);
                let (mut start, mut end) = (None, None);
                for bound in pair.into_inner() {
                    let rule = bound.as_rule();
                    let e = self.expr(bound.into_inner().next().expect("bound expr"));
                    if rule == Rule::slice_start {
                        start = Some(e);
                    } else {
                        end = Some(e);
                    }
                }
                IndexItem::Slice { start, end, span }
            }
            _ => IndexItem::Expr(self.expr(pair)),
        }
    }

    fn primary(&self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::number => {
                let text = pair.as_str();
                if text.chars().all(|c| c.is_ascii_digit()) {
                    match text.parse::<i64>() {
                        Ok(v) => ExprKind::Int(v),
                        Err(_) => ExprKind::Number(text.parse().unwrap_or(f64::INFINITY)),
                    }
                } else {
                    ExprKind::Number(text.parse().unwrap_or(f64::INFINITY))
                }
            }
            Rule::percent => {
                ExprKind::Percent(pair.as_str().trim_end_matches('%').parse::<f64>().unwrap_or(f64::INFINITY) / 100.0)
            }
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::ident => ExprKind::Name(pair.as_str().to_string()),
            Rule::list => ExprKind::List(pair.into_inner().map(|p| self.expr(p)).collect()),
            Rule::if_expr => {
                // `if c1 {a} else if c2 {b} else {c}` arrives flat; it nests as If(c1, a, If(c2, b, c)),
                // each inner `if` spanning from its keyword to the end.
                let inner: Vec<Pair<Rule>> = pair.into_inner().collect();
                // Each `if` keyword is followed by its condition and value.
                let ifs: Vec<usize> = (0..inner.len()).filter(|&k| inner[k].as_rule() == Rule::kw_if).collect();
                if !self.descend(ifs.len(), |k| self.span(&inner[ifs[k]])) {
                    return Expr { kind: ExprKind::Number(0.0), span };
                }
                let mut arms = Vec::with_capacity(ifs.len());
                for &k in &ifs {
                    let (cond, then) = (self.expr(inner[k + 1].clone()), self.expr(inner[k + 2].clone()));
                    arms.push((self.span(&inner[k]).start, cond, then));
                }
                let mut otherwise = self.expr(inner[inner.len() - 1].clone());
                self.depth.set(self.depth.get() - ifs.len());
                let (first_start, cond, then) = arms.remove(0);
                for (start, cond, then) in arms.into_iter().rev() {
                    let span = Span::new(self.file, start as usize, span.end as usize);
                    otherwise = Expr {
                        kind: ExprKind::If {
                            cond: Box::new(cond),
                            then: Box::new(then),
                            otherwise: Box::new(otherwise),
                        },
                        span,
                    };
                }
                debug_assert_eq!(first_start, span.start);
                ExprKind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) }
            }
            Rule::expr => return self.expr(pair),
            r => unreachable!("no primary {r:?}"),
        };
        Expr { kind, span }
    }
}

fn scalar_kind(text: &str) -> ScalarKind {
    match text {
        "int" => ScalarKind::Int,
        "bool" => ScalarKind::Bool,
        _ => ScalarKind::F32,
    }
}

/// The rules that stand for an operand in a flat `expr`; every other child is an operator.
fn is_primary(rule: Rule) -> bool {
    matches!(rule, Rule::if_expr | Rule::percent | Rule::number | Rule::boolean | Rule::list | Rule::expr | Rule::ident)
}
