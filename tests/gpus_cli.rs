//! `sslc run --gpus N` on a machine without a GPU (CI's): the flag's validation, and a clean
//! failure (exit 1, no panic, no run directory) whether the binary lacks NCCL or the machine
//! lacks GPUs. The parent's supervision of its ranks is tested with shell commands as ranks
//! (runtime/src/dist/launch.rs); what needs a GPU is in scripts/gpu-check.sh.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sslc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sslc"));
    command.args(args).envs(env.iter().copied());
    command.output().expect("run sslc")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-gpus").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Exit 1 with `expected` in the message, and no panic.
fn assert_refused(out: &Output, expected: &[&str]) {
    let shown = text(out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(expected.iter().any(|e| shown.contains(e)), "expected one of {expected:?}: {shown}");
    assert!(!shown.contains("panicked"), "{shown}");
}

#[test]
fn gpus_without_nccl_or_without_a_gpu_fails_cleanly() {
    let dir = scratch("two");
    let out =
        sslc(&["run", "objectives/simclr.ssl", "--gpus", "2", "--epochs", "1", "--out", dir.to_str().unwrap()], &[]);
    // A build without NCCL names the feature; one with it finds no GPU here.
    assert_refused(&out, &["--features nccl", "no CUDA device found"]);
    if text(&out).contains("needs NCCL") {
        assert!(text(&out).contains("--gpus 2 needs NCCL"), "{}", text(&out));
    }
    assert!(!dir.exists(), "a refused run writes nothing");
}

#[test]
fn gpus_flag_is_validated_before_anything_starts() {
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "objectives/simclr.ssl", "--epochs", "1"];
        args.extend_from_slice(extra);
        sslc(&args, &[])
    };
    assert_refused(&run(&["--gpus", "0"]), &["1 or more"]);
    assert_refused(&run(&["--gpus", "1", "--device", "cpu"]), &["device is cpu"]);
    assert_refused(&run(&["--gpus", "2", "--device", "cuda:1"]), &["CUDA_VISIBLE_DEVICES=1,2"]);
    let out = run(&["--gpus", "two"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Under mpirun the launcher starts the ranks; `--gpus` would start more.
    let out = sslc(&["run", "objectives/simclr.ssl", "--gpus", "2"], &[("OMPI_COMM_WORLD_SIZE", "2")]);
    assert_refused(&out, &["already one of several"]);
}

/// The variables through which the parent talks to its ranks are checked, not trusted.
#[test]
fn a_rank_with_a_broken_environment_says_which_variable() {
    let args = ["run", "objectives/simclr.ssl", "--gpus", "2", "--epochs", "1"];
    let out = sslc(&args, &[("SSLC_NCCL_RANK", "x"), ("SSLC_NCCL_WORLD", "2"), ("SSLC_NCCL_ID", "00")]);
    assert_refused(&out, &["SSLC_NCCL_RANK is not a number"]);
    let out = sslc(&args, &[("SSLC_NCCL_RANK", "2"), ("SSLC_NCCL_WORLD", "2"), ("SSLC_NCCL_ID", "00")]);
    assert_refused(&out, &["rank 2 is not below the world size 2"]);
    let out = sslc(&args, &[("SSLC_NCCL_RANK", "0"), ("SSLC_NCCL_WORLD", "2"), ("SSLC_NCCL_ID", "0g")]);
    assert_refused(&out, &["SSLC_NCCL_ID is not an id in hex"]);
    // A well-formed rank without a GPU fails as `--device cuda` does, before reading data.
    let out = sslc(&args, &[("SSLC_NCCL_RANK", "1"), ("SSLC_NCCL_WORLD", "2"), ("SSLC_NCCL_ID", "00")]);
    assert_refused(&out, &["built without CUDA", "no CUDA device found"]);
    assert!(!text(&out).contains("loading"), "{}", text(&out));
}
