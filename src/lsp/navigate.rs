//! The answers that walk every identifier of the buffer and its imports and ask the index what
//! each one names: find references, semantic tokens; and signature help, which reads the call
//! around the cursor.

use super::analysis::Analysis;
use super::builtins;
use super::index::{DefKind, Index};
use super::text;
use lsp_types::{
    Documentation, Location, ParameterInformation, ParameterLabel, SemanticToken, SemanticTokenModifier,
    SemanticTokenType, SemanticTokens, SemanticTokensLegend, SignatureHelp, SignatureInformation,
};
use std::ops::Range;

/// Byte ranges of the identifiers of `src`, outside comments, strings and numbers.
pub fn identifiers(src: &str) -> Vec<Range<usize>> {
    let bytes = src.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut k = 0;
    while k < bytes.len() {
        let start = k;
        match bytes[k] {
            b'/' if bytes.get(k + 1) == Some(&b'/') => k = src[k..].find('\n').map_or(bytes.len(), |n| k + n),
            b'"' => k = src[k + 1..].find(['"', '\n']).map_or(bytes.len(), |n| k + n + 2),
            // A number, its exponent and suffix included (`1e-3` reads `e` as part of it).
            b if b.is_ascii_digit() => {
                while k < bytes.len() && (word(bytes[k]) || bytes[k] == b'.') {
                    k += 1;
                }
            }
            b if word(b) => {
                while k < bytes.len() && word(bytes[k]) {
                    k += 1;
                }
                out.push(start..k);
            }
            _ => k += 1,
        }
    }
    out
}

/// Every use of the declaration the word at `offset` names, in the buffer and its imports
/// (files that import the buffer are not searched: the buffer does not know them).
pub fn references(a: &Analysis, offset: usize, include_declaration: bool) -> Vec<Location> {
    let Some(root) = a.root else { return Vec::new() };
    let index = Index { files: &a.files };
    let Some((word, _)) = text::word_at(a.text(root), offset) else { return Vec::new() };
    let Some(target) = index.resolve(root, offset, word) else { return Vec::new() };
    let mut out = Vec::new();
    for file in &a.files {
        let src = a.text(file.id);
        for range in identifiers(src).into_iter().filter(|r| &src[r.clone()] == word) {
            let is_declaration = range.start == target.name_span.start as usize && file.id == target.name_span.file;
            let same = index.resolve(file.id, range.start, word).is_some_and(|d| d.name_span == target.name_span);
            if same && (include_declaration || !is_declaration) {
                out.extend(a.uri(file.id).map(|uri| Location { uri, range: text::range(src, range) }));
            }
        }
    }
    out
}

/// The call whose argument list holds `offset`: the function's name and the index of the
/// argument the cursor is in.
fn enclosing_call(src: &str, offset: usize) -> Option<(&str, u32)> {
    let before = src.get(..offset)?;
    let (mut depth, mut commas) = (0usize, 0u32);
    for (k, c) in before.char_indices().rev() {
        match c {
            ')' | ']' => depth += 1,
            '[' if depth > 0 => depth -= 1,
            '(' if depth > 0 => depth -= 1,
            '(' => {
                let name_end = before[..k].trim_end().len();
                let (name, range) = text::word_at(before, name_end)?;
                return (range.end == name_end).then_some((name, commas));
            }
            ',' if depth == 0 => commas += 1,
            '{' | '}' | '[' => return None,
            _ => {}
        }
    }
    None
}

/// The parameters of a signature written `name(a, b=1, c=f(x, y))`, as byte ranges of it.
fn parameter_ranges(label: &str) -> Vec<[u32; 2]> {
    let Some(open) = label.find('(') else { return Vec::new() };
    let (mut out, mut depth, mut start) = (Vec::new(), 0usize, open + 1);
    for (k, c) in label.char_indices().skip_while(|(k, _)| *k <= open) {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' if depth > 0 => depth -= 1,
            ',' | ')' if depth == 0 => {
                let part = &label[start..k];
                let lead = part.len() - part.trim_start().len();
                if !part.trim().is_empty() {
                    out.push([(start + lead) as u32, (start + part.trim_end().len()) as u32]);
                }
                if c == ')' {
                    break;
                }
                start = k + 1;
            }
            _ => {}
        }
    }
    out
}

fn signature(label: String, doc: String) -> SignatureInformation {
    let parameters = parameter_ranges(&label)
        .into_iter()
        .map(|[start, end]| ParameterInformation {
            label: ParameterLabel::LabelOffsets([start, end]),
            documentation: None,
        })
        .collect();
    SignatureInformation {
        label,
        documentation: (!doc.is_empty()).then_some(Documentation::String(doc)),
        parameters: Some(parameters),
        active_parameter: None,
    }
}

/// The signatures of the function called around `offset`: a built-in's from the manual (one
/// per form it documents), a user function's from its declaration.
pub fn signature_help(a: &Analysis, offset: usize) -> Option<SignatureHelp> {
    let root = a.root?;
    let src = a.text(root);
    let (name, argument) = enclosing_call(src, offset)?;
    let index = Index { files: &a.files };
    let signatures: Vec<SignatureInformation> = match index.resolve(root, offset, name) {
        Some(d) if d.kind == DefKind::Function => {
            let file_text = a.text(d.span.file);
            let end = d.ty.map_or(d.name_span.end, |t| t.span.end) as usize;
            let label =
                file_text.get(d.name_span.start as usize..end)?.split_whitespace().collect::<Vec<_>>().join(" ");
            vec![signature(label.replace("( ", "(").replace(" )", ")"), d.doc.to_string())]
        }
        Some(_) => return None,
        None => builtins::functions()
            .iter()
            .filter(|b| b.name == name)
            .map(|b| signature(b.signature.clone(), b.doc.clone()))
            .collect(),
    };
    (!signatures.is_empty()).then_some(SignatureHelp {
        signatures,
        active_signature: Some(0),
        active_parameter: Some(argument),
    })
}

/// The token types semantic tokens use, in the legend's order.
const TOKEN_TYPES: [SemanticTokenType; 7] = [
    SemanticTokenType::FUNCTION,
    SemanticTokenType::PARAMETER,
    SemanticTokenType::VARIABLE,
    SemanticTokenType::PROPERTY,
    SemanticTokenType::CLASS,
    SemanticTokenType::INTERFACE,
    SemanticTokenType::KEYWORD,
];

/// Modifier bits: `readonly` (params, dims, consts), `defaultLibrary` (built-ins),
/// `declaration` (the name a declaration introduces).
const TOKEN_MODIFIERS: [SemanticTokenModifier; 3] =
    [SemanticTokenModifier::READONLY, SemanticTokenModifier::DEFAULT_LIBRARY, SemanticTokenModifier::DECLARATION];
const READONLY: u32 = 1;
const DEFAULT_LIBRARY: u32 = 2;
const DECLARATION: u32 = 4;

pub fn legend() -> SemanticTokensLegend {
    SemanticTokensLegend { token_types: TOKEN_TYPES.to_vec(), token_modifiers: TOKEN_MODIFIERS.to_vec() }
}

/// A declaration kind's token type (an index into [`TOKEN_TYPES`]) and modifiers.
fn token_of(kind: DefKind) -> (u32, u32) {
    match kind {
        DefKind::Function => (0, 0),
        DefKind::FnParam => (1, 0),
        DefKind::Local | DefKind::Let | DefKind::Output => (2, 0),
        DefKind::Param | DefKind::Dim | DefKind::Const => (2, READONLY),
        DefKind::View | DefKind::Input | DefKind::Learn | DefKind::State | DefKind::Schedule | DefKind::Metric => {
            (3, 0)
        }
        DefKind::Objective => (4, 0),
        DefKind::Mixin => (5, 0),
    }
}

/// Every identifier of the buffer by what it names, for highlighting that knows a parameter
/// from a built-in; keywords too, so that a theme without the grammar still shows them.
pub fn semantic_tokens(a: &Analysis, src: &str) -> SemanticTokens {
    let index = Index { files: &a.files };
    let mut data = Vec::new();
    let (mut last_line, mut last_start) = (0u32, 0u32);
    for range in identifiers(src) {
        let word = &src[range.clone()];
        let resolved = a.root.and_then(|root| index.resolve(root, range.start, word));
        let token = match resolved {
            Some(d) => {
                let (kind, modifiers) = token_of(d.kind);
                let declares = d.name_span.start as usize == range.start && Some(d.name_span.file) == a.root;
                Some((kind, modifiers | if declares { DECLARATION } else { 0 }))
            }
            None if builtins::functions().iter().any(|b| b.name == word) => Some((0, DEFAULT_LIBRARY)),
            None if builtins::VALUES.iter().any(|(name, _)| *name == word) => Some((2, READONLY | DEFAULT_LIBRARY)),
            None if builtins::KEYWORDS.contains(&word) => Some((6, 0)),
            None => None,
        };
        let Some((token_type, token_modifiers_bitset)) = token else { continue };
        let start = text::position(src, range.start);
        let length = word.encode_utf16().count() as u32;
        let delta_start = if start.line == last_line { start.character - last_start } else { start.character };
        data.push(SemanticToken {
            delta_line: start.line - last_line,
            delta_start,
            length,
            token_type,
            token_modifiers_bitset,
        });
        (last_line, last_start) = (start.line, start.character);
    }
    SemanticTokens { result_id: None, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_skip_comments_strings_and_numbers() {
        let src = "import \"lib/a.ssl\" // x y\nlet z = 1e-3 * w_2 /// doc\n";
        let words: Vec<&str> = identifiers(src).into_iter().map(|r| &src[r]).collect();
        assert_eq!(words, ["import", "let", "z", "w_2"]);
    }

    #[test]
    fn the_enclosing_call_and_its_argument() {
        let src = "let y = normalize(a @ b[0, :], axis=";
        assert_eq!(enclosing_call(src, src.len()), Some(("normalize", 1)));
        assert_eq!(enclosing_call("f(g(x), ", 8), Some(("f", 1)));
        assert_eq!(enclosing_call("f(g(x", 5), Some(("g", 0)));
        assert_eq!(enclosing_call("let y = (a + b", 14), None);
        assert_eq!(parameter_ranges("normalize(x, axis=-1, eps=f(1, 2))"), [[10, 11], [13, 20], [22, 33]]);
    }
}
