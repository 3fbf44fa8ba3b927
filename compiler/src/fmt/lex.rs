//! The formatter's tokens: the words, literals and punctuation of `.ssl` text, with its comments
//! as tokens too, so that layout can move code around them and a check can prove none was lost.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A name or keyword.
    Word,
    Number,
    /// `50%`: a number and its percent sign, one token as in the grammar.
    Percent,
    Str,
    Punct,
    /// `// ...` or `/// ...`, up to the end of its line.
    Comment,
}

#[derive(Clone, Copy, Debug)]
pub struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    /// Line breaks between the previous token and this one (0: same line).
    pub newlines_before: usize,
}

/// Operators of two characters, longest match first (the grammar's `**`, `==`, `!=`, `<=`,
/// `>=`, `->`, `+=`).
const PAIRS: [&str; 7] = ["**", "==", "!=", "<=", ">=", "->", "+="];

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Splits `src` into tokens. Text the grammar would refuse still lexes (one character at a
/// time); the formatter only runs on text that parsed.
pub fn lex(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut newlines = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            newlines += usize::from(c == b'\n');
            i += 1;
            continue;
        }
        let (kind, end) = token_at(src, i);
        out.push(Token { kind, start: i, end, newlines_before: newlines });
        newlines = 0;
        i = end;
    }
    out
}

fn token_at(src: &str, i: usize) -> (Kind, usize) {
    let b = src.as_bytes();
    let c = b[i];
    let rest = &src[i..];
    if rest.starts_with("//") {
        return (Kind::Comment, i + rest.find('\n').unwrap_or(rest.len()));
    }
    if c.is_ascii_alphabetic() || c == b'_' {
        return (Kind::Word, scan(b, i, is_word_char));
    }
    if c.is_ascii_digit() {
        return number(b, i);
    }
    if c == b'"' {
        let close = rest[1..].find(['"', '\n']).map(|k| i + 1 + k);
        return match close {
            Some(k) if b[k] == b'"' => (Kind::Str, k + 1),
            Some(k) => (Kind::Str, k),
            None => (Kind::Str, b.len()),
        };
    }
    if rest.starts_with(".T") && !b.get(i + 2).copied().is_some_and(is_word_char) {
        return (Kind::Punct, i + 2);
    }
    if PAIRS.iter().any(|p| rest.starts_with(p)) {
        return (Kind::Punct, i + 2);
    }
    (Kind::Punct, i + rest.chars().next().map_or(1, char::len_utf8))
}

fn scan(b: &[u8], mut i: usize, ok: fn(u8) -> bool) -> usize {
    while i < b.len() && ok(b[i]) {
        i += 1;
    }
    i
}

/// A number as the grammar reads it (`1`, `0.5`, `1e-6`), and `%` right after it when the
/// grammar would read a percentage: not followed, on the same line, by an operand.
fn number(b: &[u8], i: usize) -> (Kind, usize) {
    let digit = |c: u8| c.is_ascii_digit();
    let mut end = scan(b, i, digit);
    if b.get(end) == Some(&b'.') {
        end = scan(b, end + 1, digit);
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut k = end + 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if b.get(k).copied().is_some_and(digit) {
            end = scan(b, k, digit);
        }
    }
    if b.get(end) == Some(&b'%') {
        let after = scan(b, end + 1, |c| c == b' ' || c == b'\t');
        let operand = b.get(after).is_some_and(|&c| is_word_char(c) || c == b'(');
        if !operand {
            return (Kind::Percent, end + 1);
        }
    }
    (Kind::Number, end)
}

/// Reserved words and the member keywords that read as keywords before a bracket
/// (`when (x)`, `repeat (n)`): a space separates them from what follows.
pub fn is_keyword(w: &str) -> bool {
    matches!(
        w,
        "fn" | "let"
            | "var"
            | "repeat"
            | "return"
            | "objective"
            | "mixin"
            | "import"
            | "if"
            | "else"
            | "and"
            | "or"
            | "not"
            | "when"
            | "extends"
    )
}
