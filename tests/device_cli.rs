//! `--device` and `--precision` on the command line, on a machine without a GPU (CI's): CUDA is
//! refused cleanly (no panic, exit 1, before any data is read), bad values are usage errors,
//! `--device cpu` is the default path, metrics record throughput and data wait, and the hidden
//! `train-step` the GPU check compares across devices writes the updated weights (bf16's close
//! to f32's: on the CPU bf16 runs the device path's convolution).

use std::path::PathBuf;
use std::process::{Command, Output};

fn sslc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).output().expect("run sslc")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sslc-device-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A safetensors file's tensors (the header's order of metadata keys varies, so files are
/// compared by their tensors, not their bytes).
fn load(path: &std::path::Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

fn max_difference(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let difference =
        (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    difference.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A build without `--features cuda` says how to build one; a CUDA build without a GPU says
/// there is none. Either way exit 1 and no panic.
fn assert_refused_cleanly(out: &Output, what: &str) {
    let shown = text(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {shown}");
    assert!(shown.contains("built without CUDA") || shown.contains("no CUDA device found"), "{what}: {shown}");
    if shown.contains("built without CUDA") {
        assert!(shown.contains("--features cuda"), "{what}: {shown}");
    }
    assert!(!shown.contains("panicked"), "{what}: {shown}");
}

#[test]
fn cuda_without_a_gpu_exits_1_with_a_clear_message() {
    let dir = scratch("cuda");
    let out =
        sslc(&["run", "objectives/simclr.ssl", "--device", "cuda", "--epochs", "1", "--out", dir.to_str().unwrap()]);
    assert_refused_cleanly(&out, "run");
    assert!(!dir.join("config.toml").exists(), "a refused run writes no record");
    assert_refused_cleanly(&sslc(&["bench-train", "--backbone", "small", "--device", "cuda:1"]), "bench-train");
    let weights = dir.join("w.safetensors");
    assert_refused_cleanly(
        &sslc(&["train-step", "--device", "cuda", "--out", weights.to_str().unwrap()]),
        "train-step",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_devices_and_precisions_are_errors_not_panics() {
    let out = sslc(&["run", "objectives/simclr.ssl", "--device", "gpu"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cpu, cuda or cuda:I"), "{}", text(&out));
    let out = sslc(&["bench-train", "--device", "cuda:x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = sslc(&["run", "objectives/simclr.ssl", "--precision", "f16", "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bf16"), "{}", text(&out));
    let dir = scratch("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "objective = \"objectives/simclr.ssl\"\ndevice = \"tpu\"\n").unwrap();
    let out = sslc(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("key `device`"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--device cpu --precision f32` is the default path: the same checkpoint byte for byte.
/// The metrics carry images/s and the fraction of each step spent waiting for data.
#[test]
fn an_explicit_cpu_device_trains_as_the_default_and_logs_data_wait() {
    let run = |name: &str, extra: &[&str]| {
        let dir = scratch(name);
        let mut args =
            vec!["run", "objectives/simclr.ssl", "--epochs", "1", "--batch-size", "64", "--probe-epochs", "2"];
        args.extend_from_slice(&["--out", dir.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = sslc(&args);
        assert!(out.status.success(), "{name}: {}", text(&out));
        dir
    };
    let default = run("default", &[]);
    let explicit = run("explicit", &["--device", "cpu", "--precision", "f32"]);
    let checkpoint = |dir: &PathBuf| load(&dir.join("checkpoint.safetensors"));
    let (a, b) = (checkpoint(&default), checkpoint(&explicit));
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(max_difference(tensor, &b[name]) == 0.0, "--device cpu changed `{name}`");
    }
    let config = std::fs::read_to_string(explicit.join("config.toml")).unwrap();
    assert!(config.contains("device = \"cpu\"") && config.contains("precision = \"f32\""), "{config}");
    let metrics = std::fs::read_to_string(default.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let timed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "step" || l["kind"] == "epoch").collect();
    assert!(!timed.is_empty());
    for line in timed {
        assert!(line["images_per_s"].as_f64().is_some_and(|v| v > 0.0), "{line}");
        assert!(line["data_wait"].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{line}");
    }
    for dir in [default, explicit] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The hidden `train-step` writes every parameter and buffer after one step, the same bytes
/// every time (what the GPU check compares across devices), and the step changes the weights.
#[test]
fn train_step_writes_the_updated_weights_deterministically() {
    let dir = scratch("step");
    std::fs::create_dir_all(&dir).unwrap();
    let step = |name: &str, precision: &str| {
        let path = dir.join(name);
        let args = ["train-step", "--backbone", "small", "--batch-size", "16", "--image-size", "8", "--channels", "1"];
        let out = sslc(&[&args[..], &["--precision", precision, "--out", path.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{}", text(&out));
        path
    };
    let (first, second) = (load(&step("a.safetensors", "f32")), load(&step("b.safetensors", "f32")));
    let config =
        sslc_runtime::model::EncoderConfig::reference(sslc_runtime::model::BackboneKind::SmallConv, 1, false, 0);
    let initial = sslc_runtime::model::Encoder::new(config).unwrap().state();
    assert_eq!(first.len(), initial.len());
    for (name, tensor) in &first {
        assert!(max_difference(tensor, &second[name]) == 0.0, "one step is not deterministic: `{name}`");
    }
    let moved = initial.iter().filter(|(name, before)| max_difference(&first[name], before) > 0.0).count();
    assert!(moved > initial.len() / 2, "one step left most tensors unchanged");
    // bf16 (the device path's convolution, bf16 operands) takes the same step up to bf16
    // rounding, which BatchNorm's backward over this tiny batch amplifies: the whole update's
    // relative L2 distance measured 0.071 (2026-11-29); a wrong convolution or cast is O(1).
    let rounded = load(&step("c.safetensors", "bf16"));
    let (mut error, mut norm) = (0.0, 0.0);
    for (name, before) in &initial {
        let update = (&first[name] - before).unwrap();
        let other = (&rounded[name] - before).unwrap();
        error += (&other - &update).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        norm += update.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    }
    let relative = (error / norm).sqrt();
    assert!(relative < 0.15, "bf16's update is {relative:.3} (relative L2) away from f32's");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench-train --objective` runs that objective in each timed step, as `sslc run` does (the
/// GPU check compares it with the stand-in gradients for the objective's share of a step);
/// objectives it cannot feed, and broken files, are refused with exit 1.
#[test]
fn bench_train_runs_an_objective_in_the_step() {
    let base = ["bench-train", "--backbone", "small", "--batch-size", "8", "--image-size", "8", "--steps", "1"];
    for file in ["objectives/simclr_gh.ssl", "objectives/byol.ssl"] {
        let out = sslc(&[&base[..], &["--objective", file]].concat());
        assert!(out.status.success(), "{file}: {}", text(&out));
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let name = file.trim_start_matches("objectives/").trim_end_matches(".ssl");
        assert_eq!(line["objective"], name, "{line}");
        assert!(line["images_per_second"].as_f64().unwrap() > 0.0, "{line}");
    }
    let crops = sslc(&[&base[..], &["--objective", "objectives/swav_multicrop.ssl"]].concat());
    assert_eq!(crops.status.code(), Some(1), "{}", text(&crops));
    assert!(text(&crops).contains("small crops"), "{}", text(&crops));
    let missing = sslc(&[&base[..], &["--objective", "objectives/no_such.ssl"]].concat());
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(!text(&missing).contains("panicked"), "{}", text(&missing));
}
