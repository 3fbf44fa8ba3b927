//! sslc's compiler: `.ssl` objectives → typed IR → gradients → kernels.
//!
//! The stages, each a folder, in the order [`compile`] runs them:
//! 1. [`front`] — read the file and its imports, parse them (pest, `grammar/ssl.pest`) into a
//!    spanned AST, resolve names, inline functions and build the typed IR ([`ir`]).
//! 2. [`valid`] — check every program of the module (types, ordering, loops).
//! 3. [`autodiff`] — append the gradient of the loss to the loss program.
//! 4. [`passes`] — CSE, folding, dead code, pairwise fusion and the merging of paired
//!    pairwise products ([`passes::optimize`]).
//! 5. [`eval`] — the reference evaluator, the oracle for every back end.
//!
//! Every error of every stage is a [`diag::Diagnostic`] with a span and a hint.

// Diagnostics are returned by value: a failed compile returns one, once, off any hot path, and
// boxing every `Result<_, Diagnostic>` would only add noise.
#![allow(clippy::result_large_err)]

pub mod autodiff;
pub mod back;
pub mod cost;
pub mod diag;
pub mod eval;
pub mod fmt;
pub mod front;
pub mod fuse;
pub mod gradcheck;
pub mod ir;
pub mod objective;
pub mod ops;
pub mod passes;
pub mod span;
pub mod valid;

use diag::{Diagnostic, Sources};
use std::path::Path;

/// The modules of every objective in a file, with the sources they came from.
pub struct Compiled {
    pub modules: Vec<ir::Module>,
    /// Every function checked on its own, with the module holding its dimensions (see
    /// [`front::LoweredFile::functions`]).
    pub functions: Vec<(ir::Module, ir::Program)>,
}

/// Runs the pipeline on `path`: load → lower → validate.
pub fn compile(path: &Path, sources: &mut Sources) -> Result<Compiled, Vec<Diagnostic>> {
    compile_with(path, &front::ImportRoots::default(), sources)
}

/// [`compile`] with imports allowed from more folders than `path`'s own.
pub fn compile_with(
    path: &Path,
    roots: &front::ImportRoots,
    sources: &mut Sources,
) -> Result<Compiled, Vec<Diagnostic>> {
    let files = front::load_with(path, roots, sources)?;
    compile_files(&files)
}

/// Runs the pipeline on in-memory text (imports still resolve against the file system).
pub fn compile_text(path: &Path, text: String, sources: &mut Sources) -> Result<Compiled, Vec<Diagnostic>> {
    let files = front::load_text(path, text, sources)?;
    compile_files(&files)
}

/// Lowers and validates files [`front::load`] (or [`front::load_text`]) read.
pub fn compile_files(files: &[front::ParsedFile]) -> Result<Compiled, Vec<Diagnostic>> {
    let lowered = front::lower(files)?;
    for m in &lowered.modules {
        validate_module(m).map_err(|e| vec![e])?;
    }
    Ok(Compiled { modules: lowered.modules, functions: lowered.functions })
}

/// The warnings `sslc check` adds to a clean compile: every value the optimised program still
/// stores at batch-squared size (or an error the optimiser found), for each module.
pub fn check_warnings(modules: Vec<ir::Module>) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for m in modules {
        match objective::Executable::new(m) {
            Ok(exe) => warnings.extend(fuse::report(&exe).warnings(&exe)),
            Err(d) => warnings.push(d),
        }
    }
    warnings
}

/// Validates every program of a module; a failure here is a compiler bug, reported as such.
pub fn validate_module(m: &ir::Module) -> Result<(), Diagnostic> {
    let programs = std::iter::once(("loss", &m.loss))
        .chain(m.handlers.iter().map(|h| ("handler", &h.program)))
        .chain(m.schedules.iter().map(|s| ("schedule", &s.program)));
    for (what, p) in programs {
        valid::validate(m, p).map_err(|e| {
            Diagnostic::new(format!("internal compiler error in the {what} program of `{}`: {e}", m.name))
                .hint("this is a bug in sslc; please report it with the objective file")
        })?;
    }
    Ok(())
}
