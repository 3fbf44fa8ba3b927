//! The front end: `.ssl` text → spanned AST → typed IR.
//!
//! [`load`] reads a file and everything it imports (relative to the importing file), refusing
//! cycles, missing files and non-UTF-8 text with diagnostics. [`lower`] then resolves names,
//! inlines user functions at each call with the shapes it is given, and builds the
//! [`crate::ir::Module`] of every objective, checking shapes as it goes.

pub mod ast;
mod lower;
pub mod parse;

pub use lower::{lower, LoweredFile};
pub use parse::parse;

use crate::diag::{Diagnostic, Sources};
use crate::span::{FileId, Span};
use std::path::{Path, PathBuf};

/// A parsed file and where it came from.
pub struct ParsedFile {
    pub id: FileId,
    pub path: PathBuf,
    pub ast: ast::File,
}

/// Files larger than this are refused before parsing: no objective comes close, and the
/// parser's time and memory grow with the input.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Reads `root` and, transitively, every file it imports. Returns the files in dependency
/// order (imports before importers), or the diagnostics that stopped loading.
pub fn load(root: &Path, sources: &mut Sources) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    let mut loader = Loader { sources, files: Vec::new(), stack: Vec::new(), diags: Vec::new() };
    loader.visit(root, None);
    if loader.diags.is_empty() {
        Ok(loader.files)
    } else {
        Err(loader.diags)
    }
}

/// Parses in-memory text registered under `path` (for tests and fuzzing); imports are
/// resolved against the file system relative to `path`.
pub fn load_text(path: &Path, text: String, sources: &mut Sources) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    let mut loader = Loader { sources, files: Vec::new(), stack: Vec::new(), diags: Vec::new() };
    let id = loader.sources.add(path, text);
    loader.parse_and_follow(id, path, path.to_path_buf());
    if loader.diags.is_empty() {
        Ok(loader.files)
    } else {
        Err(loader.diags)
    }
}

/// Files importing files deeper than this are refused: loading recurses once per level, and a
/// library needs a handful.
const MAX_IMPORT_DEPTH: usize = 64;

struct Loader<'a> {
    sources: &'a mut Sources,
    files: Vec<ParsedFile>,
    /// Files being loaded, outermost first, to detect import cycles.
    stack: Vec<PathBuf>,
    diags: Vec<Diagnostic>,
}

/// The bytes of a source file: a regular file (a FIFO, a device such as `/dev/zero` or a
/// directory would block or never end), read up to one byte past [`MAX_FILE_BYTES`] so that
/// the size check below can report a file that is too large without reading all of it.
fn read_source(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a pipe, socket or device)" };
        return Err(std::io::Error::other(format!("{what}; sources must be regular files")));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl Loader<'_> {
    fn visit(&mut self, path: &Path, imported_at: Option<Span>) {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if self.files.iter().any(|f| f.path == canonical) {
            return;
        }
        if let Some(pos) = self.stack.iter().position(|p| *p == canonical) {
            let chain: Vec<String> = self.stack[pos..].iter().chain([&canonical]).map(|p| file_name(p)).collect();
            let mut d = Diagnostic::new(format!("import cycle: {}", chain.join(" → ")))
                .hint("move the shared functions into a file that both can import");
            if let Some(span) = imported_at {
                d = d.at(span, "this import closes the cycle");
            }
            self.diags.push(d);
            return;
        }
        if self.stack.len() >= MAX_IMPORT_DEPTH {
            let mut d = Diagnostic::new(format!("imports nested more than {MAX_IMPORT_DEPTH} files deep"))
                .hint("import the files you need directly from the objective instead of through a chain");
            if let Some(span) = imported_at {
                d = d.at(span, "one import too many");
            }
            self.diags.push(d);
            return;
        }
        let bytes = match read_source(path) {
            Ok(b) => b,
            Err(e) => {
                let mut d = Diagnostic::new(format!("cannot read `{}`: {e}", path.display()))
                    .hint("check the path; imports are relative to the importing file");
                if let Some(span) = imported_at {
                    d = d.at(span, "imported here");
                } else {
                    d = d.in_file(path);
                }
                self.diags.push(d);
                return;
            }
        };
        if bytes.len() > MAX_FILE_BYTES {
            self.diags.push(
                Diagnostic::new(format!("file is more than {MAX_FILE_BYTES} bytes, the limit"))
                    .in_file(path)
                    .hint("an objective is a few dozen lines; is this the right file?"),
            );
            return;
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
                let id = self.sources.add(path, valid);
                let len = self.sources.text(id).len();
                self.diags.push(
                    Diagnostic::new(format!("`{}` is not valid UTF-8 (byte {at})", path.display()))
                        .at(Span::new(id, len, len), "invalid byte follows here")
                        .hint("save the file as UTF-8"),
                );
                return;
            }
        };
        // Diagnostics show the path as the user wrote it; cycles are found on canonical paths.
        let id = self.sources.add(path, text);
        self.parse_and_follow(id, path, canonical);
    }

    fn parse_and_follow(&mut self, id: FileId, shown: &Path, path: PathBuf) {
        let ast = match parse(self.sources.text(id), id) {
            Ok(ast) => ast,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        self.stack.push(path.clone());
        let dir = shown.parent().map(Path::to_path_buf).unwrap_or_default();
        for import in &ast.imports {
            self.visit(&dir.join(&import.path), Some(import.span));
        }
        self.stack.pop();
        self.files.push(ParsedFile { id, path, ast });
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
