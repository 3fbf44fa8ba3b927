//! One run of the compiler over an editor buffer: its diagnostics (those of `sslc check`), the
//! syntax trees of it and its imports, and the typed programs whose spans give hover its shapes.

use super::text;
use lsp_types::{DiagnosticRelatedInformation, DiagnosticSeverity, Location, Uri};
use sslc_compiler::diag::{Diagnostic, Sources};
use sslc_compiler::front::ParsedFile;
use sslc_compiler::ir::{Module, Program};
use sslc_compiler::span::{FileId, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Analysis {
    pub sources: Sources,
    pub root: Option<FileId>,
    /// The buffer and its imports, imports first; empty when the buffer did not parse.
    pub files: Vec<ParsedFile>,
    /// Typed programs with the module whose dimensions their shapes use.
    programs: Vec<(Module, Program)>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Analysis {
    /// Compiles `text` as the file at `path`, its imports read from `open` (the editor's
    /// other buffers, by canonical path, saved or not) or else from disk.
    pub fn new(path: &Path, text: String, open: &HashMap<PathBuf, String>) -> Analysis {
        let mut sources = Sources::new();
        let loaded = sslc_compiler::front::load_text_with(path, text, open, &mut sources);
        let root = sources.find(path);
        let mut a = Analysis { sources, root, files: Vec::new(), programs: Vec::new(), diagnostics: Vec::new() };
        match loaded {
            Err(d) => a.diagnostics = d,
            Ok(files) => {
                match sslc_compiler::compile_files(&files) {
                    Err(d) => a.diagnostics = d,
                    Ok(c) => {
                        a.diagnostics = sslc_compiler::check_warnings(c.modules.clone());
                        for m in c.modules {
                            let programs = std::iter::once(m.loss.clone())
                                .chain(m.handlers.iter().map(|h| h.program.clone()))
                                .chain(m.schedules.iter().map(|s| s.program.clone()));
                            let with_dims: Vec<_> = programs.map(|p| (m.clone(), p)).collect();
                            a.programs.extend(with_dims);
                        }
                        a.programs.extend(c.functions);
                    }
                }
                a.files = files;
            }
        }
        a
    }

    pub fn text(&self, file: FileId) -> &str {
        self.sources.text(file)
    }

    pub fn uri(&self, file: FileId) -> Option<Uri> {
        text::path_to_uri(self.sources.path(file))
    }

    pub fn location(&self, span: Span) -> Option<Location> {
        Some(Location { uri: self.uri(span.file)?, range: text::range(self.text(span.file), span.range()) })
    }

    /// The diagnostics as the protocol publishes them, by file; the buffer's own entry is
    /// always there (empty when it is clean) so that old ones are cleared.
    pub fn published(&self, root_uri: &Uri) -> HashMap<Uri, Vec<lsp_types::Diagnostic>> {
        let mut out: HashMap<Uri, Vec<lsp_types::Diagnostic>> = HashMap::new();
        out.insert(root_uri.clone(), Vec::new());
        for d in &self.diagnostics {
            let (uri, range) = match &d.primary {
                Some((span, _)) => match self.location(*span) {
                    Some(l) => (l.uri, l.range),
                    None => continue,
                },
                None => (root_uri.clone(), lsp_types::Range::default()),
            };
            out.entry(uri).or_default().push(self.protocol_diagnostic(d, range));
        }
        out
    }

    fn protocol_diagnostic(&self, d: &Diagnostic, range: lsp_types::Range) -> lsp_types::Diagnostic {
        let mut message = d.message.clone();
        if let Some(file) = d.file.as_ref().filter(|_| d.primary.is_none()) {
            message.push_str(&format!(" ({})", file.display()));
        }
        if let Some(hint) = &d.hint {
            message.push_str(&format!("\nhint: {hint}"));
        }
        let labelled = d.primary.iter().chain(&d.secondary).skip(1);
        let related: Vec<_> = labelled
            .filter_map(|(span, label)| {
                Some(DiagnosticRelatedInformation { location: self.location(*span)?, message: label.clone() })
            })
            .collect();
        let severity = if d.warning { DiagnosticSeverity::WARNING } else { DiagnosticSeverity::ERROR };
        lsp_types::Diagnostic {
            range,
            severity: Some(severity),
            source: Some("sslc".into()),
            message,
            related_information: (!related.is_empty()).then_some(related),
            ..Default::default()
        }
    }

    /// The distinct types of the values bound at `name` (a `let` name's span), in the order
    /// the compiler met them: one per call for a function's local.
    pub fn binding_types(&self, name: Span) -> Vec<String> {
        let mut out = Vec::new();
        for (m, p) in &self.programs {
            for (_, h) in p.bindings.iter().filter(|(s, _)| *s == name) {
                push_distinct(&mut out, p.ty(*h).display(&m.dims).to_string());
            }
        }
        out
    }

    /// The distinct types of the loss program's outputs named `name` (`per_sample`, metrics)
    /// in the modules lowered from `file`.
    pub fn output_types(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (m, p) in &self.programs {
            for o in p.outputs.iter().filter(|o| o.name == name) {
                push_distinct(&mut out, p.ty(o.value).display(&m.dims).to_string());
            }
        }
        out
    }

    /// The distinct types of the nodes lowered from exactly `span`.
    pub fn node_types(&self, span: Span) -> Vec<String> {
        let mut out = Vec::new();
        for (m, p) in &self.programs {
            for (k, _) in p.spans.iter().enumerate().filter(|(_, s)| **s == span) {
                push_distinct(&mut out, p.types[k].display(&m.dims).to_string());
            }
        }
        out
    }

    /// The smallest span lowered to a node that contains `offset` of `file`, if any.
    pub fn smallest_node(&self, file: FileId, offset: usize) -> Option<Span> {
        let inside = |s: &&Span| s.file == file && (s.start as usize) <= offset && offset < s.end as usize;
        let spans = self.programs.iter().flat_map(|(_, p)| p.spans.iter().filter(inside));
        spans.min_by_key(|s| s.end - s.start).copied()
    }
}

fn push_distinct(out: &mut Vec<String>, s: String) {
    if !out.contains(&s) {
        out.push(s);
    }
}
