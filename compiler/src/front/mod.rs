//! The front end: `.ssl` text → spanned AST → typed IR.
//!
//! [`load`] reads a file and everything it imports (relative to the importing file), refusing
//! cycles, missing files and non-UTF-8 text with diagnostics. Imports are confined to the
//! [`ImportRoots`]: a shared objective cannot read (and echo in a syntax error) a file outside
//! the folder of the objective it was given, or of a root its user allowed. [`lower`] then resolves names,
//! inlines user functions at each call with the shapes it is given, and builds the
//! [`crate::ir::Module`] of every objective, checking shapes as it goes.

pub mod ast;
mod lower;
pub mod parse;

pub use lower::{lower, LoweredFile};
pub use parse::parse;

use crate::diag::{Diagnostic, Sources};
use crate::span::{FileId, Span};
use std::collections::HashMap;
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

/// The folders imports may read from: the root file's folder (with everything below it) and
/// the folders a user allows explicitly (`--import-path DIR`), each resolved through its links.
#[derive(Clone, Debug, Default)]
pub struct ImportRoots {
    /// Folders allowed beyond the root file's own.
    pub extra: Vec<PathBuf>,
}

impl ImportRoots {
    pub fn new(extra: Vec<PathBuf>) -> ImportRoots {
        ImportRoots { extra }
    }

    /// The allowed folders for a program whose root file is `root`, canonical where they exist.
    fn resolve(&self, root: &Path) -> Vec<PathBuf> {
        let folder = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::iter::once(folder)
            .chain(self.extra.iter().map(PathBuf::as_path))
            .map(|dir| dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf()))
            .collect()
    }
}

/// The extension every source file carries: a file without it is not read, so no other kind
/// of file can have its text shown in a diagnostic.
pub const SOURCE_EXTENSION: &str = "ssl";

/// Reads `root` and, transitively, every file it imports. Returns the files in dependency
/// order (imports before importers), or the diagnostics that stopped loading.
pub fn load(root: &Path, sources: &mut Sources) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    load_with(root, &ImportRoots::default(), sources)
}

/// [`load`] with more folders allowed to imports.
pub fn load_with(root: &Path, roots: &ImportRoots, sources: &mut Sources) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    let mut loader = Loader::new(sources, roots.resolve(root));
    loader.visit(root, None);
    loader.finish()
}

/// Parses in-memory text registered under `path` (for tests, fuzzing and editors); imports
/// are resolved against the file system relative to `path`, within `path`'s folder.
pub fn load_text(path: &Path, text: String, sources: &mut Sources) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    load_text_with(path, text, &HashMap::new(), sources)
}

/// [`load_text`], with imports read from `open` (texts by canonical path: an editor's unsaved
/// buffers) before the disk.
pub fn load_text_with(
    path: &Path,
    text: String,
    open: &HashMap<PathBuf, String>,
    sources: &mut Sources,
) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
    let mut loader = Loader::new(sources, ImportRoots::default().resolve(path));
    loader.open = open.clone();
    let id = loader.sources.add(path, text);
    loader.parse_and_follow(id, path, path.to_path_buf());
    loader.finish()
}

/// Files importing files deeper than this are refused: loading recurses once per level, and a
/// library needs a handful.
const MAX_IMPORT_DEPTH: usize = 64;

struct Loader<'a> {
    sources: &'a mut Sources,
    /// Canonical folders imports may read from.
    roots: Vec<PathBuf>,
    files: Vec<ParsedFile>,
    /// Files being loaded, outermost first, to detect import cycles.
    stack: Vec<PathBuf>,
    diags: Vec<Diagnostic>,
    /// Texts read instead of the disk's, by canonical path.
    open: HashMap<PathBuf, String>,
}

/// The bytes of a source file, read up to one byte past [`MAX_FILE_BYTES`] so that the size
/// check below can report a file that is too large without reading all of it.
fn read_source(path: &Path) -> std::io::Result<Vec<u8>> {
    read_regular(path, MAX_FILE_BYTES as u64 + 1)
}

/// Up to `limit` bytes of `path`, only if it is a regular file: a FIFO, a device such as
/// `/dev/zero` or a directory would block or never end. The open does not block on a FIFO
/// (`O_NONBLOCK`), and the check is on the opened file, so nothing swapped in between the
/// check and the read can make the read hang.
pub fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a pipe, socket or device)" };
        return Err(std::io::Error::other(format!("{what}; sslc reads only regular files")));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Linux's `O_NONBLOCK` (the compiler does not link libc for one constant).
const O_NONBLOCK: i32 = 0o4000;

impl<'a> Loader<'a> {
    fn new(sources: &'a mut Sources, roots: Vec<PathBuf>) -> Loader<'a> {
        Loader { sources, roots, files: Vec::new(), stack: Vec::new(), diags: Vec::new(), open: HashMap::new() }
    }

    fn finish(self) -> Result<Vec<ParsedFile>, Vec<Diagnostic>> {
        if self.diags.is_empty() {
            Ok(self.files)
        } else {
            Err(self.diags)
        }
    }

    /// Why `path` may not be read, if it may not: a file without the `.ssl` extension, or an
    /// import that resolves (through `..` or links) outside every import root.
    fn refusal(&self, path: &Path, canonical: &Path, imported_at: Option<Span>) -> Option<Diagnostic> {
        let at = |d: Diagnostic, label: &str| match imported_at {
            Some(span) => d.at(span, label),
            None => d.in_file(path),
        };
        if path.extension().is_none_or(|e| e != SOURCE_EXTENSION) {
            let d = Diagnostic::new(format!("`{}` is not an .{SOURCE_EXTENSION} file", path.display()))
                .hint("objectives and the files they import are .ssl source files; sslc reads no other kind");
            return Some(at(d, "imported here"));
        }
        let inside = self.roots.iter().any(|root| canonical.starts_with(root));
        if imported_at.is_none() || inside || !canonical.is_absolute() {
            return None;
        }
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        let d = Diagnostic::new(format!("`{}` is outside the folders imports may read", path.display())).hint(format!(
            "imports may read {} and below; move the file there, or allow its folder with --import-path DIR",
            roots.join(", ")
        ));
        Some(at(d, "imported here"))
    }

    /// Where an import names: beside the importing file (in `dir`), or else in the first
    /// folder allowed by `--import-path` that holds it, as a compiler's `-I` does.
    fn search(&self, dir: &Path, import: &Path) -> PathBuf {
        let beside = dir.join(import);
        if beside.exists() || import.is_absolute() {
            return beside;
        }
        self.roots.iter().skip(1).map(|root| root.join(import)).find(|p| p.exists()).unwrap_or(beside)
    }

    fn visit(&mut self, path: &Path, imported_at: Option<Span>) {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(refused) = self.refusal(path, &canonical, imported_at) {
            self.diags.push(refused);
            return;
        }
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
        let read = match self.open.get(&canonical) {
            Some(text) => Ok(text.clone().into_bytes()),
            None => read_source(path),
        };
        let bytes = match read {
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
            let path = self.search(&dir, Path::new(&import.path));
            self.visit(&path, Some(import.span));
        }
        self.stack.pop();
        self.files.push(ParsedFile { id, path, ast });
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}
