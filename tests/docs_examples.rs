//! Every ```ssl example in docs/language.md compiles: the reference stays true.

use sslc_compiler::diag::Sources;
use std::path::Path;

#[test]
fn language_reference_examples_compile() {
    let doc = std::fs::read_to_string("docs/language.md").expect("docs/language.md");
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```ssl") => current = Some(String::new()),
            (Some(text), "```") => {
                examples.push(std::mem::take(text));
                current = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(examples.len() >= 10, "found {} examples", examples.len());
    for (i, text) in examples.into_iter().enumerate() {
        let mut sources = Sources::new();
        // As if saved in objectives/, so `import "lib/..."` resolves.
        let path = Path::new("objectives").join(format!("docs_example_{i}.ssl"));
        if let Err(diags) = sslc_compiler::compile_text(&path, text.clone(), &mut sources) {
            let rendered: Vec<String> = diags.iter().map(|d| d.render(&sources)).collect();
            panic!("example {i} does not compile:\n{text}\n{}", rendered.join("\n"));
        }
    }
}
