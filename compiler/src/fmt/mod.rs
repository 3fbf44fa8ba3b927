//! `sslc fmt`: one canonical layout for `.ssl` text, also the language server's formatting.
//!
//! The layout is decided by the grammar's structure and the text's tokens, never by how the
//! user spaced them: every import, declaration and statement starts a line, indented four
//! spaces per block; tokens are spaced by one rule each (binary operators spaced, `axis=1`
//! tight, `[2*N, D]` tight inside a shape); a line wider than [`WIDTH`] is broken before the
//! operators of its loosest chain or inside its widest bracket, one element per line. Comments
//! are tokens too, so none can be lost: a comment alone on its line stays alone (re-indented),
//! a trailing comment keeps its column (at least two spaces after the code) so aligned columns
//! survive, and a statement with a comment inside it is left as written. Blank lines are kept,
//! at most one in a row. Before anything is returned the output is parsed again and its tokens
//! and comments compared with the input's, so a formatter bug refuses to write instead of
//! changing a program.

mod layout;
mod lex;

use crate::diag::Diagnostic;
use crate::front::parse::{Rule, SslParser};
use crate::span::FileId;
use lex::{Kind, Token};
use pest::Parser as _;
use std::collections::HashSet;

/// The line width the layout aims for; a line is wider only when nothing in it can break.
pub const WIDTH: usize = 100;

/// Formats `src`, or returns the syntax error that stops it (formatting needs a parse).
pub fn format(src: &str, file: FileId) -> Result<String, Diagnostic> {
    crate::front::parse(src, file)?;
    let tokens = lex::lex(src);
    let structure =
        Structure::of(src, &tokens).ok_or_else(|| internal("the grammar refused text the parser accepted"))?;
    let out = Printer::new(src, &tokens, &structure).run();
    verify(src, &out)?;
    Ok(out)
}

fn internal(what: &str) -> Diagnostic {
    Diagnostic::new(format!("internal formatter error: {what}; the file was left as it is"))
        .hint("this is a bug in `sslc fmt`; please report it with the file")
}

/// The output must parse and hold the input's tokens and comments, in order.
fn verify(before: &str, after: &str) -> Result<(), Diagnostic> {
    if crate::front::parse(after, 0).is_err() {
        return Err(internal("the formatted text no longer parses"));
    }
    if significant(before) != significant(after) {
        return Err(internal("the formatted text has different tokens or comments"));
    }
    Ok(())
}

/// Tokens and comments as text, without the optional trailing commas the layout adds or drops.
fn significant(src: &str) -> Vec<&str> {
    let tokens = lex::lex(src);
    let mut out = Vec::new();
    for (k, t) in tokens.iter().enumerate() {
        let text = &src[t.start..t.end];
        let next_code = tokens[k + 1..].iter().find(|n| n.kind != Kind::Comment).map(|n| &src[n.start..n.end]);
        if text == "," && matches!(next_code, Some(")" | "]")) {
            continue;
        }
        out.push(text.trim_end());
    }
    out
}

/// Where the grammar puts line structure, as byte offsets of tokens.
pub(crate) struct Structure {
    /// Tokens that start a line: imports, items, members and statements (after their docs).
    starts: HashSet<usize>,
    /// `{` and `}` of bodies (functions, objectives, handlers, `repeat`), not of `if` values.
    body_open: HashSet<usize>,
    body_close: HashSet<usize>,
    /// `[` opening a tensor type such as `[2*N, D]`.
    type_open: HashSet<usize>,
}

impl Structure {
    fn of(src: &str, tokens: &[Token]) -> Option<Structure> {
        let root = SslParser::parse(Rule::file, src).ok()?;
        let first_code_at = |offset: usize| {
            let k = tokens.partition_point(|t| t.start < offset);
            tokens[k..].iter().find(|t| t.kind != Kind::Comment).map(|t| t.start)
        };
        let first_text_at = |offset: usize, text: &str| {
            let k = tokens.partition_point(|t| t.start < offset);
            tokens[k..].iter().find(|t| &src[t.start..t.end] == text).map(|t| t.start)
        };
        let mut s = Structure {
            starts: HashSet::new(),
            body_open: HashSet::new(),
            body_close: HashSet::new(),
            type_open: HashSet::new(),
        };
        for pair in root.flatten() {
            let span = pair.as_span();
            match pair.as_rule() {
                Rule::import
                | Rule::function
                | Rule::objective
                | Rule::mixin
                | Rule::param_decl
                | Rule::dim_decl
                | Rule::views_decl
                | Rule::input_decl
                | Rule::const_decl
                | Rule::learn_decl
                | Rule::state_decl
                | Rule::schedule_decl
                | Rule::metric_decl
                | Rule::on_step
                | Rule::on_epoch
                | Rule::output_stmt
                | Rule::let_stmt
                | Rule::var_stmt
                | Rule::assign_stmt
                | Rule::repeat_stmt
                | Rule::return_stmt => {
                    let docs_end = pair.clone().into_inner().take_while(|p| p.as_rule() == Rule::doc).last();
                    let after_docs = docs_end.map_or(span.start(), |d| d.as_span().end());
                    s.starts.extend(first_code_at(after_docs));
                    if matches!(pair.as_rule(), Rule::objective | Rule::mixin) {
                        let head =
                            pair.clone().into_inner().filter(|p| matches!(p.as_rule(), Rule::ident | Rule::extends));
                        let head_end = head.map(|p| p.as_span().end()).max().unwrap_or(span.start());
                        s.body_open.extend(first_text_at(head_end, "{"));
                        s.body_close.insert(span.end() - 1);
                    }
                }
                Rule::block => {
                    s.body_open.insert(span.start());
                    s.body_close.insert(span.end() - 1);
                }
                Rule::tensor_ty => s.type_open.extend(first_text_at(span.start(), "[")),
                _ => {}
            }
        }
        Some(s)
    }
}

/// Walks the tokens line by line: comments, body braces and the logical lines between them.
struct Printer<'a> {
    src: &'a str,
    tokens: &'a [Token],
    structure: &'a Structure,
    lines: Vec<String>,
    depth: usize,
    /// The last line opened a body: no blank line may follow it.
    opened: bool,
}

impl<'a> Printer<'a> {
    fn new(src: &'a str, tokens: &'a [Token], structure: &'a Structure) -> Self {
        Printer { src, tokens, structure, lines: Vec::new(), depth: 0, opened: false }
    }

    fn run(mut self) -> String {
        let mut i = 0;
        while i < self.tokens.len() {
            let t = self.tokens[i];
            if t.kind == Kind::Comment {
                self.comment(i);
                i += 1;
            } else if self.structure.body_close.contains(&t.start) {
                self.depth = self.depth.saturating_sub(1);
                self.push(format!("{}}}", self.indent()), false);
                i += 1;
            } else {
                i = self.logical_line(i);
            }
        }
        let mut out = self.lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    fn indent(&self) -> String {
        " ".repeat(4 * self.depth)
    }

    fn push(&mut self, line: String, blank_before: bool) {
        if blank_before && !self.opened && self.lines.last().is_some_and(|l| !l.is_empty()) {
            self.lines.push(String::new());
        }
        self.lines.push(line.trim_end().to_string());
        self.opened = false;
    }

    fn comment(&mut self, i: usize) {
        let t = self.tokens[i];
        let text = self.src[t.start..t.end].trim_end();
        if t.newlines_before == 0 && i > 0 {
            if let Some(last) = self.lines.last_mut() {
                // A trailing comment keeps its column, so columns aligned by hand survive.
                let line_start = self.src[..t.start].rfind('\n').map_or(0, |k| k + 1);
                let column = self.src[line_start..t.start].chars().count();
                let code_end = last.chars().count();
                let pad = column.max(code_end + 2) - code_end;
                last.push_str(&" ".repeat(pad));
                last.push_str(text);
                return;
            }
        }
        let line = format!("{}{text}", self.indent());
        self.push(line, t.newlines_before >= 2);
        // A comment right after a body's `{` does not make room for a blank line either.
    }

    /// Lays out the line starting at token `i`; returns the index after it.
    fn logical_line(&mut self, i: usize) -> usize {
        let s = self.structure;
        let mut last = i;
        for k in i + 1..self.tokens.len() {
            let t = self.tokens[k];
            if t.kind == Kind::Comment {
                continue;
            }
            if s.starts.contains(&t.start)
                || s.body_close.contains(&t.start)
                || s.body_open.contains(&self.tokens[last].start)
            {
                break;
            }
            last = k;
        }
        let range = &self.tokens[i..=last];
        let indent = 4 * self.depth;
        let lines = if range.iter().any(|t| t.kind == Kind::Comment) {
            self.verbatim(range, indent)
        } else {
            layout::layout(self.src, range, s, indent)
        };
        for (k, line) in lines.into_iter().enumerate() {
            self.push(line, k == 0 && range[0].newlines_before >= 2);
        }
        if s.body_open.contains(&self.tokens[last].start) {
            self.depth += 1;
            self.opened = true;
        }
        last + 1
    }

    /// A line with a comment inside it, as written: only its first line is re-indented.
    fn verbatim(&self, range: &[Token], indent: usize) -> Vec<String> {
        let text = &self.src[range[0].start..range[range.len() - 1].end];
        text.lines()
            .enumerate()
            .map(|(k, l)| if k == 0 { format!("{}{l}", " ".repeat(indent)) } else { l.trim_end().to_string() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        format(s, 0).unwrap_or_else(|d| panic!("{}: {s}", d.message))
    }

    #[test]
    fn spaces_tokens_by_rule() {
        let src = "fn f(a:[2 * N,D],b:int[N])->[N]{\nlet x=sum(a*2,axis=1)+-b[ 1: ,None]+b[None,:]\n  return x .T}\n";
        assert_eq!(
            fmt(src),
            "fn f(a: [2*N, D], b: int[N]) -> [N] {\n    let x = sum(a * 2, axis=1) + -b[1:, None] + b[None, :]\n    return x.T\n}\n"
        );
    }

    #[test]
    fn breaks_long_lines_and_keeps_comments() {
        let long = (0..12).map(|k| format!("argument_{k}")).collect::<Vec<_>>().join(", ");
        let src = format!("// head\n\n\n/// doc\nfn f(x: [N]) -> [N] {{ // trailing\n  return g({long})\n}}\n");
        let out = fmt(&src);
        assert!(out.starts_with("// head\n\n/// doc\nfn f(x: [N]) -> [N] {  // trailing\n    return g(\n"), "{out}");
        assert!(out.contains("        argument_11,\n    )\n}\n"), "{out}");
        assert_eq!(fmt(&out), out, "idempotent");
    }

    #[test]
    fn a_comment_inside_a_statement_leaves_it_as_written() {
        let src = "fn f(x: [N]) -> [N] {\n  return x +   // why\n     x\n}\n";
        assert_eq!(fmt(src), "fn f(x: [N]) -> [N] {\n    return x +   // why\n     x\n}\n");
    }

    #[test]
    fn refuses_text_that_does_not_parse() {
        assert!(format("fn f( -> {", 0).is_err());
    }
}
