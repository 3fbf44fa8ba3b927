//! Positions and addresses as the protocol writes them: lines and UTF-16 columns, `file://`
//! URIs; and the word under the cursor.

use lsp_types::{Position, Range, Uri};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The protocol position of byte `offset` in `text` (clamped to the text).
pub fn position(text: &str, offset: usize) -> Position {
    let offset = floor_char(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |k| k + 1);
    let character = before[line_start..].encode_utf16().count();
    Position { line: line as u32, character: character as u32 }
}

pub fn range(text: &str, span: std::ops::Range<usize>) -> Range {
    Range { start: position(text, span.start), end: position(text, span.end) }
}

/// The byte offset of a protocol position (clamped to its line and to the text).
pub fn offset(text: &str, pos: Position) -> usize {
    let mut line_start = 0;
    for _ in 0..pos.line {
        match text[line_start..].find('\n') {
            Some(k) => line_start += k + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..].find('\n').map_or(text.len(), |k| line_start + k);
    let mut units = 0;
    for (k, c) in text[line_start..line_end].char_indices() {
        if units >= pos.character as usize {
            return line_start + k;
        }
        units += c.len_utf16();
    }
    line_end
}

fn floor_char(text: &str, mut k: usize) -> usize {
    while !text.is_char_boundary(k) {
        k -= 1;
    }
    k
}

/// The identifier containing or ending at `offset`, with its byte range.
pub fn word_at(text: &str, offset: usize) -> Option<(&str, std::ops::Range<usize>)> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let offset = floor_char(text, offset.min(text.len()));
    let start = text[..offset].rfind(|c: char| !is_word(c)).map_or(0, |k| k + 1);
    let end = text[offset..].find(|c: char| !is_word(c)).map_or(text.len(), |k| offset + k);
    let word = &text[start..end];
    (!word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit())).then_some((word, start..end))
}

/// The path of a `file://` URI; other schemes are used as they are, as a relative path.
pub fn uri_to_path(uri: &Uri) -> PathBuf {
    let s = uri.as_str();
    let Some(rest) = s.strip_prefix("file://") else { return PathBuf::from(s) };
    let mut bytes = Vec::new();
    let raw = rest.as_bytes();
    let mut k = 0;
    while k < raw.len() {
        let hex = raw
            .get(k + 1..k + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[k], hex) {
            (b'%', Some(b)) => {
                bytes.push(b);
                k += 3;
            }
            (b, _) => {
                bytes.push(b);
                k += 1;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn path_to_uri(path: &Path) -> Option<Uri> {
    let path = std::path::absolute(path).ok()?;
    let mut s = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    Uri::from_str(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_utf16_units_and_round_trip() {
        let text = "let a = 1\nlet ‖x‖ = b\n";
        let at = text.find('b').unwrap();
        let p = position(text, at);
        assert_eq!((p.line, p.character), (1, 10));
        assert_eq!(offset(text, p), at);
        assert_eq!(offset(text, Position { line: 9, character: 0 }), text.len());
    }

    #[test]
    fn words_and_uris() {
        assert_eq!(word_at("f(abc_1)", 4).map(|w| w.0), Some("abc_1"));
        assert_eq!(word_at("f(abc_1)", 7).map(|w| w.0), Some("abc_1"));
        assert!(word_at("1.5 + ", 1).is_none());
        let uri = path_to_uri(Path::new("/tmp/a b/x.ssl")).unwrap();
        assert_eq!(uri.as_str(), "file:///tmp/a%20b/x.ssl");
        assert_eq!(uri_to_path(&uri), PathBuf::from("/tmp/a b/x.ssl"));
    }
}
