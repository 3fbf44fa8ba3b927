//! What hover and completion say about built-ins, read from the language reference
//! (docs/language.md, the table under "Built-in functions"), so the editor and the manual
//! cannot disagree.

use std::sync::OnceLock;

const LANGUAGE_MD: &str = include_str!("../../docs/language.md");

pub struct Builtin {
    pub name: String,
    /// As the manual writes it: `normalize(x, axis=-1, eps=1e-12)`.
    pub signature: String,
    pub doc: String,
}

/// Names that are values, not functions.
pub const VALUES: &[(&str, &str)] = &[
    ("epoch", "`f32`: epochs completed so far"),
    ("epochs", "`f32`: epochs in the run"),
    ("iteration", "`f32`: optimizer steps completed in the run (schedules that read it run every step)"),
    ("iterations", "`f32`: optimizer steps in the run"),
    ("base_lr", "`f32`: the learning rate given with `--lr`"),
    ("index", "`int[N]`: the dataset indices of the batch's samples"),
    ("samples", "the dataset size, a dimension"),
    ("inf", "`f32`: infinity"),
];

/// Words the grammar reserves or reads as declarations.
pub const KEYWORDS: &[&str] = &[
    "fn",
    "let",
    "var",
    "repeat",
    "return",
    "objective",
    "mixin",
    "import",
    "if",
    "else",
    "and",
    "or",
    "not",
    "true",
    "false",
    "None",
    "extends",
    "param",
    "dim",
    "views",
    "input",
    "const",
    "learn",
    "state",
    "schedule",
    "metric",
    "on",
    "step",
    "epoch",
    "when",
    "loss",
    "per_sample",
    "f32",
    "int",
    "bool",
];

pub fn functions() -> &'static [Builtin] {
    static TABLE: OnceLock<Vec<Builtin>> = OnceLock::new();
    TABLE.get_or_init(|| parse_table(LANGUAGE_MD))
}

/// The rows of the table after the "## Built-in functions" heading: backticked names (with
/// their own arguments, or the row's shared `(...)`) and the row's description.
fn parse_table(md: &str) -> Vec<Builtin> {
    let Some(start) = md.find("## Built-in functions") else { return Vec::new() };
    let mut out = Vec::new();
    for line in md[start..].lines().skip(1).skip_while(|l| !l.starts_with('|')) {
        let Some(row) = line.strip_prefix('|') else { break };
        let cells: Vec<&str> = row.split(" | ").map(|c| c.trim().trim_end_matches('|').trim()).collect();
        let [first, doc, ..] = cells.as_slice() else { continue };
        let snippets: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
        let shared = snippets.iter().find(|s| s.starts_with('(')).copied().unwrap_or("");
        for s in &snippets {
            let name: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.is_empty() || name == "function" {
                continue;
            }
            let signature = if s.contains('(') { s.to_string() } else { format!("{name}{shared}") };
            out.push(Builtin { name, signature, doc: doc.to_string() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manual_documents_the_builtins() {
        let f = super::functions();
        let normalize = f.iter().find(|b| b.name == "normalize").expect("normalize is documented");
        assert_eq!(normalize.signature, "normalize(x, axis=-1, eps=1e-12)");
        let sum = f.iter().find(|b| b.name == "sum").expect("sum is documented");
        assert_eq!(sum.signature, "sum(x, axis=k, keepdim=false)");
        assert!(f.iter().any(|b| b.name == "exp" && b.doc == "element-wise"));
    }
}
