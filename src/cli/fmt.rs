//! `sslc fmt`: rewrites `.ssl` files in the canonical layout, or with `--check` only reports
//! which files differ from it (for CI).

use clap::Args;
use sslc_compiler::diag::{print_all, Sources};
use std::path::{Path, PathBuf};

/// Format `.ssl` files in the one canonical layout (comments kept; lines up to 100 columns).
#[derive(Args)]
#[command(after_help = "Directories are searched for `.ssl` files recursively. A file with a syntax error is \
left as it is and reported.\n\nExit status: 0 when every file is (or now is) formatted, 1 when a file could not \
be formatted or, with --check, when a file is not formatted, 2 on usage errors.\n\nExamples:\n  \
sslc fmt objectives/\n  sslc fmt --check objectives/")]
pub struct FmtArgs {
    /// `.ssl` files, or directories to search for them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Change nothing; list the files whose layout differs and exit with 1 if any does.
    #[arg(long)]
    check: bool,
}

pub fn fmt(args: &FmtArgs) -> i32 {
    let mut files = Vec::new();
    for p in &args.paths {
        if let Err(e) = collect(p, &mut files) {
            eprintln!("error: cannot read `{}`: {e}", p.display());
            return 1;
        }
    }
    let mut failed = false;
    for file in &files {
        failed |= !fmt_file(file, args.check);
    }
    i32::from(failed)
}

/// `path` itself when it is a file; the `.ssl` files under it, sorted, when it is a directory.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "ssl") {
            out.push(p);
        }
    }
    Ok(())
}

/// Formats one file; false when it failed or, under `check`, is not formatted.
fn fmt_file(file: &Path, check: bool) -> bool {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", file.display());
            return false;
        }
    };
    let mut sources = Sources::new();
    let id = sources.add(file, text.clone());
    let formatted = match sslc_compiler::fmt::format(&text, id) {
        Ok(f) => f,
        Err(d) => {
            print_all(&[d.in_file(file)], &sources);
            return false;
        }
    };
    if formatted == text {
        return true;
    }
    if check {
        let line = text.lines().zip(formatted.lines()).take_while(|(a, b)| a == b).count() + 1;
        eprintln!("{}:{line}: not formatted (run `sslc fmt {}`)", file.display(), file.display());
        return false;
    }
    match std::fs::write(file, formatted) {
        Ok(()) => {
            eprintln!("formatted {}", file.display());
            true
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", file.display());
            false
        }
    }
}
