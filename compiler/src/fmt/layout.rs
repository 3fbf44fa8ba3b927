//! One logical line (a declaration or statement) laid out within [`super::WIDTH`].
//!
//! Flat first; a line too wide is broken before the operators of its loosest top-level chain
//! when every operand then fits, otherwise inside its widest top-level bracket (one element per
//! line, a trailing comma where the grammar allows one), recursively.

use super::lex::{is_keyword, Kind, Token};
use super::{Structure, WIDTH};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Arguments of a call or parameters of a function: named arguments are tight.
    Call,
    Paren,
    Index,
    List,
    /// A tensor type: `[2*N, D]`, operators tight.
    Type,
    /// `{ ... }` of an `if` value.
    Brace,
}

struct Line<'a> {
    src: &'a str,
    tokens: &'a [Token],
    /// For an opening bracket, the index of its closer.
    close: Vec<Option<usize>>,
    group: Vec<Option<Group>>,
    /// Precedence of a binary operator (1 = `or` ... 6 = `**`), 0 for anything else.
    prec: Vec<u8>,
    /// Whether a space precedes the token when the line is flat.
    space: Vec<bool>,
    /// `width[k]`: flat width of tokens `0..k`, spaces included.
    width: Vec<usize>,
    lines: Vec<String>,
    cur: String,
}

pub(super) fn layout(src: &str, tokens: &[Token], structure: &Structure, indent: usize) -> Vec<String> {
    let mut line = Line::new(src, tokens, structure);
    line.cur = " ".repeat(indent);
    line.put(0, tokens.len(), indent);
    line.lines.push(std::mem::take(&mut line.cur));
    line.lines
}

fn binary_prec(text: &str) -> u8 {
    match text {
        "or" => 1,
        "and" => 2,
        "==" | "!=" | "<" | "<=" | ">" | ">=" => 3,
        "+" | "-" => 4,
        "*" | "/" | "%" | "@" => 5,
        "**" => 6,
        _ => 0,
    }
}

impl<'a> Line<'a> {
    fn new(src: &'a str, tokens: &'a [Token], structure: &Structure) -> Self {
        let n = tokens.len();
        let text = |k: usize| &src[tokens[k].start..tokens[k].end];
        // A value ends before this token: what follows `(` or `[` is a call or an index.
        let ends_value = |k: usize| match tokens[k].kind {
            Kind::Word => !is_keyword(text(k)),
            Kind::Punct => matches!(text(k), ")" | "]" | "}" | ".T"),
            Kind::Number | Kind::Percent | Kind::Str => true,
            Kind::Comment => false,
        };
        let mut close = vec![None; n];
        let mut group = vec![None; n];
        let mut prec = vec![0; n];
        let mut inside = vec![None; n];
        let mut stack: Vec<usize> = Vec::new();
        for k in 0..n {
            inside[k] = stack.last().and_then(|&o| group[o]);
            let t = text(k);
            let after_value = k > 0 && ends_value(k - 1);
            match t {
                "(" | "[" | "{" if !structure.body_open.contains(&tokens[k].start) => {
                    group[k] = Some(match t {
                        "(" if after_value => Group::Call,
                        "(" => Group::Paren,
                        "[" if structure.type_open.contains(&tokens[k].start) => Group::Type,
                        "[" if after_value => Group::Index,
                        "[" => Group::List,
                        _ => Group::Brace,
                    });
                    stack.push(k);
                }
                ")" | "]" | "}" if !structure.body_close.contains(&tokens[k].start) => {
                    if let Some(o) = stack.pop() {
                        close[o] = Some(k);
                    }
                }
                _ => {
                    let unary = t == "-" && !after_value;
                    if !unary && tokens[k].kind != Kind::Str {
                        prec[k] = binary_prec(t);
                    }
                }
            }
        }
        let mut line = Line {
            src,
            tokens,
            close,
            group,
            prec,
            space: vec![false; n],
            width: vec![0; n + 1],
            lines: Vec::new(),
            cur: String::new(),
        };
        for (k, &group) in inside.iter().enumerate().take(n) {
            line.space[k] = k > 0 && line.space_before(k, group);
            let w = if line.dropped(k) { 0 } else { text(k).chars().count() + usize::from(line.space[k]) };
            line.width[k + 1] = line.width[k] + w;
        }
        line
    }

    fn text(&self, k: usize) -> &'a str {
        &self.src[self.tokens[k].start..self.tokens[k].end]
    }

    /// The spacing rules, between token `k - 1` and token `k` inside a bracket of kind `inside`.
    fn space_before(&self, k: usize, inside: Option<Group>) -> bool {
        let (p, n) = (self.text(k - 1), self.text(k));
        let unary_before = p == "-" && self.prec[k - 1] == 0;
        if matches!(n, "," | ")" | "]" | ".T") || matches!(p, "(" | "[") || unary_before {
            return false;
        }
        if n == "}" || p == "{" || p == "," {
            return true;
        }
        if n == ":" || p == ":" {
            return p == ":" && inside != Some(Group::Index);
        }
        if n == "=" || p == "=" {
            return inside != Some(Group::Call);
        }
        match self.group[k] {
            Some(Group::Call | Group::Index) => return false,
            Some(Group::Type) => return self.tokens[k - 1].kind != Kind::Word || is_keyword(p),
            _ => {}
        }
        if self.prec[k] > 0 || self.prec[k - 1] > 0 {
            let symbol = self.tokens[k].kind == Kind::Punct || self.tokens[k - 1].kind == Kind::Punct;
            return !(inside == Some(Group::Type) && symbol);
        }
        true
    }

    /// A trailing comma: left out of flat lines, written back after the last element of a
    /// broken call or list.
    fn dropped(&self, k: usize) -> bool {
        self.text(k) == "," && k + 1 < self.tokens.len() && matches!(self.text(k + 1), ")" | "]")
    }

    /// Flat width of tokens `lo..hi`, without the space before `lo`.
    fn flat_width(&self, lo: usize, hi: usize) -> usize {
        (self.width[hi] - self.width[lo]).saturating_sub(usize::from(self.space[lo] && !self.dropped(lo)))
    }

    fn column(&self) -> usize {
        self.cur.chars().count()
    }

    fn at_line_start(&self) -> bool {
        self.cur.trim().is_empty()
    }

    /// Whether `lo..hi` fits flat on the current line.
    fn fits(&self, lo: usize, hi: usize) -> bool {
        let gap = usize::from(self.space[lo] && !self.at_line_start());
        self.column() + gap + self.flat_width(lo, hi) <= WIDTH
    }

    fn put_flat(&mut self, lo: usize, hi: usize) {
        for k in lo..hi {
            if self.dropped(k) {
                continue;
            }
            if self.space[k] && !(k == lo && self.at_line_start()) {
                self.cur.push(' ');
            }
            self.cur.push_str(self.text(k));
        }
    }

    fn newline(&mut self, indent: usize) {
        let done = std::mem::replace(&mut self.cur, " ".repeat(indent));
        self.lines.push(done.trim_end().to_string());
    }

    fn put(&mut self, lo: usize, hi: usize, indent: usize) {
        if lo >= hi {
            return;
        }
        if self.fits(lo, hi) {
            return self.put_flat(lo, hi);
        }
        let chain = self.chain(lo, hi);
        let group = self.widest_group(lo, hi);
        if let Some(ops) = &chain {
            let operands_fit = ops.iter().enumerate().all(|(j, &op)| {
                let end = ops.get(j + 1).copied().unwrap_or(hi);
                indent + 4 + self.flat_width(op, end) <= WIDTH
            });
            if operands_fit && self.fits(lo, ops[0]) {
                return self.put_chain(lo, hi, ops, indent);
            }
        }
        if let Some(open) = group {
            if self.fits(lo, open + 1) {
                return self.put_group(lo, open, hi, indent);
            }
        }
        match (chain, group) {
            (Some(ops), _) => self.put_chain(lo, hi, &ops, indent),
            (None, Some(open)) => self.put_group(lo, open, hi, indent),
            (None, None) => self.put_flat(lo, hi),
        }
    }

    /// Positions of the loosest binary operators at the top level of `lo..hi` (not the first
    /// token), unless an `if` value sits there too: its condition is no chain to break.
    fn chain(&self, lo: usize, hi: usize) -> Option<Vec<usize>> {
        let mut ops: Vec<usize> = Vec::new();
        let mut loosest = u8::MAX;
        let mut k = lo;
        while k < hi {
            if self.text(k) == "if" {
                return None;
            }
            let p = self.prec[k];
            if k > lo && p > 0 {
                if p < loosest {
                    loosest = p;
                    ops.clear();
                }
                if p == loosest {
                    ops.push(k);
                }
            }
            k = self.close[k].map_or(k + 1, |c| c + 1);
        }
        (!ops.is_empty()).then_some(ops)
    }

    fn widest_group(&self, lo: usize, hi: usize) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        let mut k = lo;
        while k < hi {
            match self.close[k] {
                Some(c) if c < hi => {
                    let w = self.flat_width(k, c + 1);
                    if c > k + 1 && best.is_none_or(|(bw, _)| w > bw) {
                        best = Some((w, k));
                    }
                    k = c + 1;
                }
                _ => k += 1,
            }
        }
        best.map(|(_, k)| k)
    }

    fn put_chain(&mut self, lo: usize, hi: usize, ops: &[usize], indent: usize) {
        self.put(lo, ops[0], indent);
        for (j, &op) in ops.iter().enumerate() {
            let end = ops.get(j + 1).copied().unwrap_or(hi);
            self.newline(indent + 4);
            self.put(op, end, indent + 4);
        }
    }

    /// Breaks the bracket opening at `open`: its elements one per line, then the rest.
    fn put_group(&mut self, lo: usize, open: usize, hi: usize, indent: usize) {
        let close = self.close[open].unwrap_or(hi);
        self.put(lo, open + 1, indent);
        let mut elements = Vec::new();
        let mut start = open + 1;
        let mut k = start;
        while k < close {
            if self.text(k) == "," {
                elements.push((start, k));
                start = k + 1;
            }
            k = self.close[k].map_or(k + 1, |c| c + 1);
        }
        if start < close {
            elements.push((start, close));
        }
        let trailing = matches!(self.group[open], Some(Group::Call | Group::List));
        for (j, &(a, b)) in elements.iter().enumerate() {
            self.newline(indent + 4);
            self.put(a, b, indent + 4);
            if j + 1 < elements.len() || trailing {
                self.cur.push(',');
            }
        }
        self.newline(indent);
        self.put(close, hi, indent);
    }
}
