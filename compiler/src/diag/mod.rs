//! Diagnostics: every user-facing error of every stage becomes a [`Diagnostic`] — a message,
//! labelled spans, and a hint — rendered by codespan-reporting with file:line:col and a caret.

use crate::span::{FileId, Span};
use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{
    self,
    termcolor::{ColorChoice, StandardStream, WriteColor},
};
use std::path::{Path, PathBuf};

/// Every source file the compiler has read, so diagnostics can quote them.
#[derive(Default)]
pub struct Sources {
    files: SimpleFiles<String, String>,
    paths: Vec<PathBuf>,
}

impl Sources {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, path: &Path, text: String) -> FileId {
        self.paths.push(path.to_path_buf());
        self.files.add(path.display().to_string(), text)
    }
    pub fn text(&self, file: FileId) -> &str {
        self.files.get(file).map(|f| f.source().as_str()).unwrap_or("")
    }
    pub fn path(&self, file: FileId) -> &Path {
        &self.paths[file]
    }
    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.paths.iter().position(|p| p == path)
    }
    /// `path:line:col` of a span's start, 1-based.
    pub fn location(&self, span: Span) -> String {
        let text = self.text(span.file);
        let start = (span.start as usize).min(text.len());
        let before = &text[..floor_char_boundary(text, start)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{}:{}", self.paths.get(span.file).map_or("?".into(), |p| p.display().to_string()), line, col)
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A user-facing error: what went wrong, where, and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// The primary location and its label.
    pub primary: Option<(Span, String)>,
    /// Further locations (the other operand, the declaration, the call site).
    pub secondary: Vec<(Span, String)>,
    pub hint: Option<String>,
    /// A diagnostic about a whole file (unreadable, not UTF-8) names it here.
    pub file: Option<PathBuf>,
    /// A warning reports something that works but costs (memory, time); an error stops.
    pub warning: bool,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            hint: None,
            file: None,
            warning: false,
        }
    }
    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic { warning: true, ..Diagnostic::new(message) }
    }
    pub fn at(mut self, span: Span, label: impl Into<String>) -> Self {
        self.primary = Some((span, label.into()));
        self
    }
    pub fn also(mut self, span: Span, label: impl Into<String>) -> Self {
        self.secondary.push((span, label.into()));
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn in_file(mut self, path: &Path) -> Self {
        self.file = Some(path.to_path_buf());
        self
    }

    /// Writes the diagnostic, with source excerpts, to `out`.
    pub fn emit(&self, sources: &Sources, out: &mut dyn WriteColor) {
        let mut labels = Vec::new();
        if let Some((span, label)) = &self.primary {
            labels.push(Label::primary(span.file, span.range()).with_message(label));
        }
        for (span, label) in &self.secondary {
            labels.push(Label::secondary(span.file, span.range()).with_message(label));
        }
        let mut message = self.message.clone();
        if let (None, Some(file)) = (&self.primary, &self.file) {
            message = format!("{}: {message}", file.display());
        }
        let d = if self.warning { CsDiagnostic::warning() } else { CsDiagnostic::error() };
        let mut d = d.with_message(message).with_labels(labels);
        if let Some(hint) = &self.hint {
            d = d.with_notes(vec![format!("hint: {hint}")]);
        }
        let config = term::Config::default();
        if term::emit_to_write_style(out, &config, &sources.files, &d).is_err() {
            // The source store cannot place the span (it should always can); fall back to text.
            let _ = writeln!(out, "{}: {}", if self.warning { "warning" } else { "error" }, self.message);
        }
    }

    /// The rendered diagnostic without colours (for tests and logs).
    pub fn render(&self, sources: &Sources) -> String {
        let mut buf = term::termcolor::NoColor::new(Vec::new());
        self.emit(sources, &mut buf);
        String::from_utf8_lossy(&buf.into_inner()).into_owned()
    }
}

/// A size in bytes for a message: GiB from one GiB up, MiB below.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
    } else {
        format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20))
    }
}

/// Prints diagnostics to stderr, in colour when stderr is a terminal.
pub fn print_all(diagnostics: &[Diagnostic], sources: &Sources) {
    let choice =
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ColorChoice::Auto } else { ColorChoice::Never };
    let mut stderr = StandardStream::stderr(choice);
    for d in diagnostics {
        d.emit(sources, &mut stderr);
    }
}
