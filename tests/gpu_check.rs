//! scripts/gpu-check.sh, the check a lent GPU machine runs once, proven here without a GPU: its
//! dry mode runs every step's CPU half (fake data, every Python harness with the cpu back end
//! and `--device cpu`, the rows and the table) with this build's sslc, and without a GPU the
//! real mode stops at once with a message. Needs Python with numpy and torch (scripts/test.sh
//! installs Debian's); without them the dry run prints a notice and skips, except under CI=true.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STEPS: [&str; 6] = ["preflight", "kernel", "parity", "nccl", "train", "bench"];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter that imports numpy and torch, or `None` after a notice.
fn python() -> Option<&'static str> {
    for python in ["python3", "/usr/bin/python3"] {
        if Command::new(python).args(["-c", "import numpy, torch"]).output().is_ok_and(|o| o.status.success()) {
            return Some(python);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no python3 imports numpy and torch: run scripts/test.sh, which installs them"
    );
    eprintln!(
        "NOTICE: skipping the gpu-check dry run: no python3 imports numpy and torch (scripts/test.sh installs them)"
    );
    None
}

/// Runs the script with `args` into a fresh `OUT`; its output and the files it left there.
fn gpu_check(name: &str, args: &[&str], python: &str) -> (Output, PathBuf, Vec<String>) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/gpu-check.sh"))
        .args(args)
        .env("SSLC", env!("CARGO_BIN_EXE_sslc"))
        .env("OUT", &out)
        .env("PYTHON", python)
        .env_remove("GPU_CHECK_DRY")
        .output()
        .expect("bash runs");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    files.sort();
    (output, out, files)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn rows(out: &Path) -> Vec<Value> {
    let rows = std::fs::read_to_string(out.join("gpu-check.jsonl")).expect("the rows file");
    rows.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON row: {e}: {l}"))).collect()
}

#[test]
fn the_dry_run_runs_every_steps_cpu_half_and_leaves_at_most_8_files() {
    let Some(python) = python() else { return };
    let (output, out, files) = gpu_check("gpu-check-dry", &["--dry"], python);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap_or_default();
    assert!(output.status.success(), "exit {:?}\n{}\n{summary}", output.status.code(), text(&output));
    assert!(files.len() <= 8 && files.contains(&"gpu-check.jsonl".into()), "{files:?}");
    assert_eq!(files, ["gpu-check.jsonl", "summary.md"], "a passing run keeps no logs");
    let rows = rows(&out);
    for step in STEPS {
        let ok = rows.iter().filter(|r| r["step"] == step && r["result"].as_str().is_some_and(|s| s.starts_with("ok")));
        assert!(ok.count() > 0, "no passing row of step {step}:\n{summary}");
    }
    assert!(rows.iter().all(|r| r["dry"] == true), "{summary}");
    // Every objective's parity ran (the smallest kernel check holds simclr_gh's).
    let parity = rows.iter().filter(|r| r["check"] == "parity").count();
    assert_eq!(parity, 7, "{summary}");
    assert!(summary.contains("| kernel | kernel | simclr_gh f32"), "{summary}");
}

#[test]
fn without_a_gpu_the_real_check_stops_at_once_with_a_message() {
    if Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success()) {
        eprintln!("NOTICE: a GPU is present; the no-GPU stop of gpu-check.sh is not tested here");
        return;
    }
    let (output, out, files) = gpu_check("gpu-check-no-gpu", &[], "python3");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("no NVIDIA GPU here") && text(&output).contains("GPU_CHECK_DRY=1"),
        "{}",
        text(&output)
    );
    assert_eq!(files, ["gpu-check.jsonl", "summary.md"]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["result"].as_str().unwrap().starts_with("FAIL: no NVIDIA GPU"), "{rows:?}");
}
