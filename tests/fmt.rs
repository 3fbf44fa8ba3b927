//! `sslc fmt` on every shipped `.ssl` file: already in the canonical layout, idempotent, and
//! independent of how the code was spaced; no comment and no token is ever lost.

use sslc_compiler::fmt::format;
use std::path::PathBuf;

fn shipped() -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = ["objectives", "objectives/lib"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ssl"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 20, "the shipped objectives are found");
    out
}

fn fmt(path: &std::path::Path, text: &str) -> String {
    format(text, 0).unwrap_or_else(|d| panic!("{}: {}", path.display(), d.message))
}

/// The comments, in order, and the code with its whitespace and optional trailing commas
/// removed: what formatting must preserve. Read without the formatter's own lexer.
fn substance(text: &str) -> (Vec<String>, String) {
    let mut comments = Vec::new();
    let mut code = String::new();
    for line in text.lines() {
        let (c, comment) = match line.find("//") {
            Some(k) => (&line[..k], Some(line[k..].trim_end().to_string())),
            None => (line, None),
        };
        code.extend(c.chars().filter(|c| !c.is_whitespace()));
        comments.extend(comment);
    }
    (comments, code.replace(",)", ")").replace(",]", "]"))
}

#[test]
fn shipped_files_are_formatted_and_formatting_is_idempotent() {
    for (path, text) in shipped() {
        let once = fmt(&path, &text);
        assert_eq!(fmt(&path, &once), once, "{}: a second pass changes the text", path.display());
        assert_eq!(substance(&once), substance(&text), "{}: comments or tokens changed", path.display());
        assert!(once == text, "{}: not formatted; run `sslc fmt {}`", path.display(), path.display());
    }
}

/// Every code line re-spaced (indentation removed, each space doubled, a space after every
/// bracket) formats back to the shipped text: the layout depends on the tokens only. Lines with
/// a comment are kept, since a trailing comment keeps its column.
#[test]
fn the_layout_does_not_depend_on_the_input_spacing() {
    for (path, text) in shipped() {
        let scrambled: String = text
            .lines()
            .map(|l| {
                if l.contains("//") || l.contains('"') {
                    return format!("{l}\n");
                }
                let spaced = l.trim_start().replace(' ', "  ").replace('(', "( ").replace('[', "[ ").replace(',', " ,");
                format!("{spaced}\n")
            })
            .collect();
        assert_ne!(scrambled, text);
        let out = fmt(&path, &scrambled);
        assert_eq!(substance(&out), substance(&text), "{}", path.display());
        assert_eq!(out, text, "{}: the re-spaced text formats differently", path.display());
    }
}
