//! Malformed programs: each gives a diagnostic with file:line:col, a caret and a hint (the
//! rendered text is a reviewed snapshot), and `sslc check` exits 1 on it — never 101.

use sslc_compiler::diag::Sources;
use std::path::{Path, PathBuf};
use std::process::Command;

fn malformed_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/malformed")
        .expect("tests/malformed")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ssl"))
        .collect();
    files.sort();
    files
}

fn rendered_errors(path: &Path) -> String {
    let mut sources = Sources::new();
    match sslc_compiler::compile(path, &mut sources) {
        Ok(_) => panic!("{} compiled, but it is malformed", path.display()),
        Err(diags) => diags.iter().map(|d| d.render(&sources)).collect::<Vec<_>>().join("\n"),
    }
}

#[test]
fn at_least_thirty_malformed_programs() {
    assert!(malformed_files().len() >= 30, "{} malformed programs", malformed_files().len());
}

#[test]
fn every_malformed_program_has_a_located_diagnostic_with_a_hint() {
    for f in malformed_files() {
        let text = rendered_errors(&f);
        let located = text
            .lines()
            .any(|l| l.contains("┌─ tests/malformed/") && l.split(".ssl:").nth(1).is_some_and(|lc| lc.contains(':')));
        assert!(located, "{}: no file:line:col in\n{text}", f.display());
        assert!(text.contains('^'), "{}: no caret in\n{text}", f.display());
        assert!(text.contains("hint:"), "{}: no hint in\n{text}", f.display());
        let name = format!("diag_{}", f.file_stem().unwrap().to_string_lossy());
        insta::assert_snapshot!(name, text);
    }
}

fn sslc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).output().expect("run sslc")
}

#[test]
fn check_exits_1_on_every_malformed_program_and_0_on_the_objectives() {
    for f in malformed_files() {
        let out = sslc(&["check", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
    let out = sslc(&["check", "objectives/simclr.ssl", "objectives/simclr_gh.ssl", "objectives/lib/gh.ssl"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(sslc(&["check"]).status.code(), Some(2));
    assert_eq!(sslc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(sslc(&["emit", "objectives/simclr.ssl", "--stage", "nope"]).status.code(), Some(2));
    assert_eq!(sslc(&["--help"]).status.code(), Some(0));
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let out = sslc(&["check", "no/such/objective.ssl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/objective.ssl"));
}

#[test]
fn a_one_megabyte_file_with_an_error_at_the_end_is_diagnosed() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-huge");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 1 << 20 {
        text.push_str(&format!("fn g{i}(x: [N]) -> [N] {{\n    return exp(x) * 2.0 + x\n}}\n"));
        i += 1;
    }
    text.push_str("fn broken(x: [N]) -> [N] {\n    return x +\n}\n");
    let path = dir.join("huge.ssl");
    std::fs::write(&path, &text).unwrap();
    let out = sslc(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("huge.ssl:{}:", text.lines().count())), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn emit_survives_a_closed_pipe() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sslc"))
        .args(["emit", "objectives/simclr_gh.ssl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // stdout is now closed; sslc must not panic (exit 101) on the broken pipe.
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101));
}

/// Imports read regular `.ssl` files inside the objective's folder only, and never more than
/// the size limit (issue: importing a FIFO hung forever and `import "/dev/zero"` grew memory
/// without bound): a device, a directory, a pipe and a link out of the folder each give a
/// clean error at the import, within seconds.
#[test]
fn imports_of_special_files_are_refused() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-special-imports");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("folder.ssl")).expect("scratch folder");
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.ssl")).expect("link");
    let fifo = dir.join("pipe.ssl");
    let made = Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    let mut targets =
        vec![("/dev/zero", "not an .ssl file"), ("folder.ssl", "regular file"), ("zero.ssl", "outside the folders")];
    if made {
        targets.push(("pipe.ssl", "regular file"));
    } else {
        eprintln!("NOTICE: mkfifo is missing; the FIFO case of imports_of_special_files_are_refused is skipped");
    }
    for (target, cause) in targets {
        let file = dir.join("main.ssl");
        std::fs::write(&file, format!("import \"{target}\"\n")).expect("write");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sslc"))
            .args(["check", &file.display().to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sslc");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("sslc check hangs on an import of {target}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{target}: {stderr}");
        assert!(stderr.contains(cause) && stderr.contains("imported here"), "{target}: {stderr}");
    }
}

/// A gradient that must flow through a `repeat` loop is found by `sslc check` (not first by
/// `eval`), and located at the call in the objective as well as at the loop in the function.
#[test]
fn check_locates_a_gradient_through_a_loop_at_the_call() {
    let out = sslc(&["check", "tests/fixtures/repeat_gradient.ssl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flow through a `repeat` loop"), "{err}");
    assert!(err.contains("repeat_gradient.ssl:14:18"), "the call is not located:\n{err}");
    assert!(err.contains("the loop") && err.contains("stopgrad"), "{err}");
}
