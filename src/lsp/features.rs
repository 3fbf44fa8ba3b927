//! The answers to the editor's questions about a buffer: hover, definition, completion, the
//! outline and formatting.

use super::analysis::Analysis;
use super::builtins;
use super::index::{member_defs, Def, DefKind, Index};
use super::text;
use lsp_types::{
    CompletionItem, CompletionItemKind, DocumentSymbol, Location, MarkupContent, MarkupKind, Range, SymbolKind,
    TextEdit,
};
use sslc_compiler::span::Span;

fn code(s: &str) -> String {
    format!("```ssl\n{s}\n```")
}

/// Markdown for the hover at `offset` of the analysed buffer.
pub fn hover(a: &Analysis, offset: usize) -> Option<MarkupContent> {
    let root = a.root?;
    let src = a.text(root);
    let index = Index { files: &a.files };
    let value = if let Some(file) = index.import_at(root, offset) {
        format!("imports `{}`", file.path.display())
    } else if let Some((word, range)) = text::word_at(src, offset) {
        match index.resolve(root, offset, word) {
            Some(d) => describe(a, &d),
            None => builtin(a, word, Span::new(root, range.start, range.start))?,
        }
    } else {
        let span = a.smallest_node(root, offset)?;
        code(&a.node_types(span).join(" | "))
    };
    Some(MarkupContent { kind: MarkupKind::Markdown, value })
}

fn builtin(a: &Analysis, word: &str, at: Span) -> Option<String> {
    if let Some((_, doc)) = builtins::VALUES.iter().find(|(n, _)| *n == word) {
        return Some(format!("{}\n\nbuilt-in value: {doc}", code(word)));
    }
    let rows: Vec<_> = builtins::functions().iter().filter(|b| b.name == word).collect();
    if rows.is_empty() {
        return None;
    }
    let mut out = String::new();
    // The call's own node starts where its name does: its type is the result's.
    let call = a.smallest_node(at.file, at.start as usize).filter(|s| s.start == at.start);
    if let Some(span) = call {
        out.push_str(&code(&format!("{word}(...): {}", a.node_types(span).join(" | "))));
        out.push_str("\n\n");
    }
    for b in rows {
        out.push_str(&format!("`{}`: {}\n\n", b.signature, b.doc));
    }
    Some(out.trim_end().to_string())
}

/// What hover says about a declaration: its type or shape, its declaration, its doc.
fn describe(a: &Analysis, d: &Def) -> String {
    let src = a.text(d.span.file);
    let slice = |s: Span| src.get(s.range()).unwrap_or("").trim();
    let first_line = |s: Span| slice(s).lines().next().unwrap_or("").trim_end_matches('{').trim().to_string();
    let mut shapes = a.binding_types(d.name_span);
    if shapes.is_empty() {
        if let Some(v) = d.value {
            shapes = a.node_types(v.span);
        }
    }
    if shapes.is_empty() && matches!(d.kind, DefKind::Output | DefKind::Metric) {
        shapes = a.output_types(d.name);
    }
    if shapes.is_empty() {
        shapes = a.node_types(d.name_span);
    }
    let shape = shapes.join(" | ");
    let head = match d.kind {
        DefKind::Function => {
            let ret_end = d.ty.map_or(d.name_span.end, |t| t.span.end);
            format!("fn {}", slice(Span { start: d.name_span.start, end: ret_end, ..d.span }))
        }
        DefKind::FnParam => format!("{}: {}", d.name, d.ty.map_or("", |t| slice(t.span))),
        DefKind::Param => format!("param {} = {}", d.name, d.value.map_or("", |v| slice(v.span))),
        DefKind::Local | DefKind::Let | DefKind::Output | DefKind::Metric | DefKind::Schedule if !shape.is_empty() => {
            format!("{}: {shape}", d.name)
        }
        DefKind::Objective | DefKind::Mixin => first_line(Span { start: d.name_span.start, ..d.span }),
        _ => first_line(d.span),
    };
    let mut out = code(&head);
    let declared =
        matches!(d.kind, DefKind::FnParam | DefKind::Input | DefKind::Const | DefKind::Learn | DefKind::State);
    if declared && !shape.is_empty() && d.ty.is_some_and(|t| slice(t.span) != shape) {
        out.push_str(&format!("\n\nshape: `{shape}`"));
    }
    if matches!(d.kind, DefKind::Param) {
        out.push_str(&format!(
            "\n\ndefault `{}`; set another with `--param {}=VALUE`",
            d.value.map_or("", |v| slice(v.span)),
            d.name
        ));
    }
    if !d.doc.is_empty() {
        out.push_str(&format!("\n\n{}", d.doc));
    }
    out
}

pub fn definition(a: &Analysis, offset: usize) -> Option<Location> {
    let root = a.root?;
    let index = Index { files: &a.files };
    if let Some(file) = index.import_at(root, offset) {
        return Some(Location { uri: a.uri(file.id)?, range: Range::default() });
    }
    let (word, _) = text::word_at(a.text(root), offset)?;
    a.location(index.resolve(root, offset, word)?.name_span)
}

fn completion_kind(k: DefKind) -> CompletionItemKind {
    match k {
        DefKind::Function => CompletionItemKind::FUNCTION,
        DefKind::Objective | DefKind::Mixin => CompletionItemKind::CLASS,
        DefKind::Param | DefKind::Dim | DefKind::Const => CompletionItemKind::CONSTANT,
        DefKind::FnParam | DefKind::Local | DefKind::Let | DefKind::Output => CompletionItemKind::VARIABLE,
        DefKind::View | DefKind::Input | DefKind::Learn | DefKind::State => CompletionItemKind::FIELD,
        DefKind::Schedule | DefKind::Metric => CompletionItemKind::PROPERTY,
    }
}

/// Names in scope at `offset` (from `a`, or from the last buffer that parsed), then the
/// built-ins and keywords.
pub fn completion(a: &Analysis, offset: usize) -> Vec<CompletionItem> {
    let mut items: Vec<CompletionItem> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |label: &str, kind, detail: String| {
        if seen.insert(label.to_string()) {
            items.push(CompletionItem {
                label: label.into(),
                kind: Some(kind),
                detail: Some(detail),
                ..Default::default()
            });
        }
    };
    if let Some(root) = a.root {
        for d in (Index { files: &a.files }).scope(root, offset) {
            add(d.name, completion_kind(d.kind), format!("{:?}", d.kind).to_lowercase());
        }
    }
    for b in builtins::functions() {
        add(&b.name, CompletionItemKind::FUNCTION, b.signature.clone());
    }
    for (name, doc) in builtins::VALUES {
        add(name, CompletionItemKind::VALUE, doc.to_string());
    }
    for k in builtins::KEYWORDS {
        add(k, CompletionItemKind::KEYWORD, "keyword".into());
    }
    items
}

fn symbol_kind(k: DefKind) -> SymbolKind {
    match k {
        DefKind::Function => SymbolKind::FUNCTION,
        DefKind::Objective => SymbolKind::CLASS,
        DefKind::Mixin => SymbolKind::INTERFACE,
        DefKind::Param | DefKind::Dim | DefKind::Const => SymbolKind::CONSTANT,
        DefKind::Input | DefKind::Learn | DefKind::View => SymbolKind::FIELD,
        DefKind::FnParam | DefKind::Local | DefKind::Let | DefKind::Output | DefKind::State => SymbolKind::VARIABLE,
        DefKind::Schedule | DefKind::Metric => SymbolKind::PROPERTY,
    }
}

#[allow(deprecated)] // `DocumentSymbol::deprecated` must be written, though the protocol deprecates it.
fn symbol(a: &Analysis, d: &Def, children: Vec<DocumentSymbol>) -> DocumentSymbol {
    let src = a.text(d.span.file);
    DocumentSymbol {
        name: d.name.to_string(),
        detail: Some(format!("{:?}", d.kind).to_lowercase()),
        kind: symbol_kind(d.kind),
        tags: None,
        deprecated: None,
        range: text::range(src, d.span.range()),
        selection_range: text::range(src, d.name_span.range()),
        children: (!children.is_empty()).then_some(children),
    }
}

/// The outline: functions, and objectives and mixins with their members.
pub fn symbols(a: &Analysis) -> Vec<DocumentSymbol> {
    let Some(file) = a.files.iter().find(|f| Some(f.id) == a.root) else { return Vec::new() };
    let index = Index { files: &a.files };
    let mut out: Vec<(u32, DocumentSymbol)> = Vec::new();
    for d in index.scope(file.id, usize::MAX).iter().filter(|d| d.span.file == file.id) {
        let children = match d.kind {
            DefKind::Objective | DefKind::Mixin => {
                let o = file.ast.objectives.iter().find(|o| o.name.span == d.name_span);
                let members = o.map(|o| o.members.iter().flat_map(member_defs).collect::<Vec<_>>()).unwrap_or_default();
                members.iter().map(|m| symbol(a, m, Vec::new())).collect()
            }
            _ => Vec::new(),
        };
        if matches!(d.kind, DefKind::Function | DefKind::Objective | DefKind::Mixin) {
            out.push((d.span.start, symbol(a, d, children)));
        }
    }
    out.sort_by_key(|(start, _)| *start);
    out.into_iter().map(|(_, s)| s).collect()
}

/// The whole buffer in `sslc fmt`'s layout, as one edit; none when it is already formatted
/// or does not parse (its diagnostics say why).
pub fn formatting(text: &str) -> Vec<TextEdit> {
    match sslc_compiler::fmt::format(text, 0) {
        Ok(f) if f != text => vec![TextEdit { range: text::range(text, 0..text.len()), new_text: f }],
        _ => Vec::new(),
    }
}
