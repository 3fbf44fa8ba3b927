//! sslc's outputs read by the tools SSL researchers use: TensorBoard reads a run's event files
//! (with the real `tensorboard` package), `sslc export` gives torchvision's exact ResNet names
//! and shapes (and, with torch installed, the same features as sslc), `sslc embed` writes the
//! features the linear probe used as real `.npy` files.
//!
//! The Python checks need packages that scripts/test.sh installs (`tensorboard` from PyPI into
//! .tools/tensorboard, Debian's python3-torch and python3-torchvision); without them they print
//! a notice and skip, except under CI=true, where a missing package fails the test.

mod common;

use common::{repo_root, run_sslc, scratch_dir, stderr_of, stdout_of};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!("{}{}", stdout_of(out), stderr_of(out))
}

fn sslc_ok(args: &[&str]) -> Output {
    let out = run_sslc(args);
    assert!(out.status.success(), "sslc {}: {}", args.join(" "), text(&out));
    out
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A Python interpreter that imports `modules` (with `pythonpath` added), or `None` after a
/// notice; under CI=true a missing package fails the test.
fn python_with(modules: &str, pythonpath: Option<&Path>) -> Option<(PathBuf, Option<PathBuf>)> {
    for python in ["python3", "/usr/bin/python3"] {
        let mut command = Command::new(python);
        command.args(["-c", &format!("import {modules}")]);
        if let Some(extra) = pythonpath {
            command.env("PYTHONPATH", extra);
        }
        if command.output().is_ok_and(|out| out.status.success()) {
            return Some((PathBuf::from(python), pythonpath.map(Path::to_path_buf)));
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but Python cannot import {modules}: run scripts/test.sh, which installs it"
    );
    eprintln!("NOTICE: skipping the {modules} check: no python3 imports it (scripts/test.sh installs it)");
    None
}

fn run_python(python: &(PathBuf, Option<PathBuf>), script: &str, args: &[&str]) -> Value {
    let mut command = Command::new(&python.0);
    command.arg(repo_root().join("tests/python").join(script)).args(args);
    if let Some(extra) = &python.1 {
        command.env("PYTHONPATH", extra);
    }
    let out = command.output().expect("python starts");
    assert!(out.status.success(), "{script}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", text(&out)))
}

fn metrics_lines(dir: &Path) -> Vec<Value> {
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn events_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    files.sort();
    files
}

/// Two epochs on the embedded digits, stopped after the first and resumed; then resumed once
/// more from a copy of the first epoch's checkpoint, as if the run had died after logging a
/// second epoch it never checkpointed. TensorBoard must show each step once, with the values
/// metrics.jsonl keeps, every evaluation's accuracies, the per-class plot and the hparams.
#[test]
fn tensorboard_reads_every_step_evaluation_plot_and_hparams() {
    let dir = scratch_dir("tools-tensorboard").join("run");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "objectives/simclr_gh.ssl",
            "--set",
            "K=16",
            "--epochs",
            "2",
            "--batch-size",
            "128",
            "--probe-epochs",
            "5",
            "--eval-every",
            "1",
        ];
        args.extend_from_slice(extra);
        sslc_ok(&args)
    };
    run(&["--out", path(&dir), "--stop-after", "1"]);
    let epoch_one = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    run(&["--resume", path(&dir)]);
    assert_eq!(events_files(&dir).len(), 2, "a resume adds an events file");
    std::fs::write(dir.join("checkpoint.safetensors"), epoch_one).unwrap();
    run(&["--resume", path(&dir)]);
    assert_eq!(events_files(&dir).len(), 3);

    let tensorboard = repo_root().join(".tools/tensorboard");
    let pythonpath = tensorboard.exists().then_some(tensorboard.as_path());
    let Some(python) = python_with("tensorboard", pythonpath) else { return };
    let seen = run_python(&python, "read_events.py", &[path(&dir)]);

    let lines = metrics_lines(&dir);
    let steps: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "step").collect();
    let scalars = seen["scalars"].as_object().unwrap();
    let series = |tag: &str| -> Vec<(u64, f64)> {
        scalars
            .get(tag)
            .unwrap_or_else(|| panic!("TensorBoard has no `{tag}`; it has {:?}", scalars.keys().collect::<Vec<_>>()))
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    // Every numeric field of the step lines, under its own name, one value per step 1..=N.
    let mut step_tags: Vec<&str> = steps[0]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, value)| value.is_f64() && !["kind", "epoch", "step"].contains(&key.as_str()))
        .map(|(key, _)| key.as_str())
        .collect();
    step_tags.sort();
    for expected in ["loss", "lr", "images_per_s", "seconds", "gh_loss"] {
        assert!(step_tags.contains(&expected), "metrics.jsonl step lines lack {expected}: {step_tags:?}");
    }
    for tag in &step_tags {
        let logged = series(tag);
        assert_eq!(
            logged.iter().map(|(step, _)| *step).collect::<Vec<_>>(),
            (1..=steps.len() as u64).collect::<Vec<_>>(),
            "`{tag}`: each step once, in order"
        );
        for ((_, value), line) in logged.iter().zip(&steps) {
            let expected = line[*tag].as_f64().unwrap();
            assert!(
                (value - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "`{tag}`: TensorBoard {value}, metrics.jsonl {expected}"
            );
        }
    }
    // Each epoch's means under epoch/, at the epoch's last step.
    let per_epoch = steps.len() as u64 / 2;
    let epoch_loss = series("epoch/loss");
    assert_eq!(epoch_loss.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![per_epoch, 2 * per_epoch]);
    // Each evaluation's accuracies, at the step it followed.
    let evals: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "eval").collect();
    assert_eq!(evals.len(), 2);
    for tag in ["linear_top1", "linear_many", "linear_medium", "linear_few", "knn5_top1", "knn20_few"] {
        let logged = series(tag);
        assert_eq!(logged.len(), 2, "`{tag}`: {logged:?}");
        for ((step, value), (eval, expected_step)) in logged.iter().zip(evals.iter().zip([per_epoch, 2 * per_epoch])) {
            assert_eq!(*step, expected_step);
            assert!((value - eval[tag].as_f64().unwrap()).abs() < 1e-6, "`{tag}`");
        }
    }
    // The per-class plot, as the last run wrote it (the stopped run's plot stays at its step).
    let png = std::fs::read(dir.join("per_class.png")).unwrap();
    let images = seen["images"]["per_class"].as_array().unwrap();
    assert_eq!(images.iter().map(|i| i[0].as_u64().unwrap()).collect::<Vec<_>>(), vec![per_epoch, 2 * per_epoch]);
    let image = images.last().unwrap();
    assert_eq!(image[3].as_u64().unwrap(), png.len() as u64);
    assert_eq!(image[1].as_u64().unwrap(), u64::from(u32::from_be_bytes(png[16..20].try_into().unwrap())));
    // The hyper-parameters and the accuracies the HPARAMS table compares.
    let hparams = &seen["hparams"];
    assert_eq!(hparams["objective"], "simclr_gh");
    assert_eq!(hparams["dataset"], "digits-lt");
    assert_eq!(hparams["epochs"], 2.0);
    assert_eq!(hparams["set"], "K=16");
    let metrics: Vec<&str> = seen["metrics"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    for tag in ["linear_top1", "linear_many", "linear_medium", "linear_few", "knn5_top1"] {
        assert!(metrics.contains(&tag), "hparams metrics {metrics:?} lack {tag}");
    }
    assert_eq!(seen["session_end_status"], 1, "the run is marked finished");
}

/// `name [shape] dtype` lines of a fixture, comments aside.
fn fixture(name: &str) -> BTreeMap<String, (Vec<usize>, String)> {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures").join(name)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, rest) = line.split_once(' ').unwrap();
            let (shape, dtype) = rest.rsplit_once(' ').unwrap();
            let shape: Vec<usize> = serde_json::from_str(shape).unwrap();
            (name.to_string(), (shape, dtype.to_string()))
        })
        .collect()
}

fn torch_dtype(dtype: candle_core::DType) -> String {
    match dtype {
        candle_core::DType::F32 => "float32".into(),
        candle_core::DType::I64 => "int64".into(),
        other => format!("{other:?}"),
    }
}

fn described(
    tensors: impl IntoIterator<Item = (String, candle_core::Tensor)>,
) -> BTreeMap<String, (Vec<usize>, String)> {
    tensors.into_iter().map(|(name, t)| (name, (t.dims().to_vec(), torch_dtype(t.dtype())))).collect()
}

/// The exported names, shapes and dtypes are torchvision's, for both ResNets (RGB input).
#[test]
fn exported_backbones_have_torchvisions_names_and_shapes() {
    use sslc_runtime::model::{BackboneKind, Encoder, EncoderConfig};
    for (kind, file) in [
        (BackboneKind::ResNet18Cifar, "torchvision_resnet18_names.txt"),
        (BackboneKind::ResNet50, "torchvision_resnet50_names.txt"),
    ] {
        // SDCLR's pruned branch is built too: it must not leak into the export.
        let config = EncoderConfig::reference(kind, 3, true, 0);
        let encoder = Encoder::new(config.clone()).unwrap();
        let exported = sslc_runtime::export::torchvision_backbone(&config, &encoder.state()).unwrap();
        assert_eq!(described(exported), fixture(file), "{kind:?}");
    }
    let small = EncoderConfig::reference(BackboneKind::SmallConv, 1, false, 0);
    let error = sslc_runtime::export::torchvision_backbone(&small, &[]).unwrap_err().to_string();
    assert!(error.contains("--backbone resnet18"), "{error}");
}

/// The `.npy` header: magic, version 1.0, and the dict numpy writes.
fn npy_header(file: &Path) -> String {
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", file.display());
    let length = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + length) % 64, 0, "numpy aligns the data to 64 bytes");
    String::from_utf8(bytes[10..10 + length].to_vec()).unwrap()
}

fn npy(file: &Path) -> candle_core::Tensor {
    sslc_compiler::eval::npy::read(file).unwrap()
}

/// A ResNet-18 trained one epoch on the digits: exported with torchvision's names (grey input:
/// conv1 takes one channel), the projector as an nn.Sequential, embedded twice alike, and the
/// embedded probe-train and test features give exactly the run's kNN accuracy; with torch
/// installed, torchvision's ResNet-18 loading the export computes sslc's features.
#[test]
fn export_and_embed_a_trained_resnet18() {
    let scratch = scratch_dir("tools-export");
    let run = scratch.join("run");
    sslc_ok(&[
        "run",
        "objectives/simclr.ssl",
        "--backbone",
        "resnet18",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--limit",
        "96",
        "--probe-epochs",
        "2",
        "--out",
        path(&run),
    ]);

    // Backbone: torchvision's names and shapes, conv1 with the digits' one channel.
    let backbone = scratch.join("backbone.safetensors");
    sslc_ok(&["export", path(&run), "--format", "torchvision", "--out", path(&backbone)]);
    let exported = candle_core::safetensors::load(&backbone, &candle_core::Device::Cpu).unwrap();
    let mut expected = fixture("torchvision_resnet18_names.txt");
    expected.get_mut("conv1.weight").unwrap().0 = vec![64, 1, 3, 3];
    assert_eq!(described(exported), expected);

    // Projector: nn.Sequential(Linear(512, 512), BatchNorm1d(512), ReLU(), Linear(512, 128, bias=False), BatchNorm1d(128)).
    let projector = scratch.join("projector.safetensors");
    sslc_ok(&["export", path(&run.join("checkpoint.safetensors")), "--format", "projector", "--out", path(&projector)]);
    let names: Vec<String> = described(candle_core::safetensors::load(&projector, &candle_core::Device::Cpu).unwrap())
        .into_iter()
        .map(|(name, (shape, _))| format!("{name} {shape:?}"))
        .collect();
    assert_eq!(
        names,
        [
            "0.bias [512]",
            "0.weight [512, 512]",
            "1.bias [512]",
            "1.num_batches_tracked []",
            "1.running_mean [512]",
            "1.running_var [512]",
            "1.weight [512]",
            "3.weight [128, 512]",
            "4.bias [128]",
            "4.num_batches_tracked []",
            "4.running_mean [128]",
            "4.running_var [128]",
            "4.weight [128]",
        ]
    );

    // Embed: real .npy files, the same twice, the probe's very features.
    let embed = |split: &str, out: &Path| {
        let printed = stdout_of(&sslc_ok(&["embed", path(&run), "--split", split, "--out", path(out)]));
        serde_json::from_str::<Value>(&printed).unwrap()
    };
    let (test_a, test_b, probe_train) = (scratch.join("test-a"), scratch.join("test-b"), scratch.join("probe-train"));
    let summary = embed("test", &test_a);
    embed("test", &test_b);
    embed("probe-train", &probe_train);
    let rows = summary["rows"].as_u64().unwrap() as usize;
    assert_eq!(summary["features"], 512);
    assert!(npy_header(&test_a.join("features.npy"))
        .contains(&format!("'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, 512)")));
    assert!(npy_header(&test_a.join("labels.npy"))
        .contains(&format!("'descr': '<i8', 'fortran_order': False, 'shape': ({rows},)")));
    assert!(npy_header(&test_a.join("indices.npy")).contains("'descr': '<i8'"));
    for file in ["features.npy", "labels.npy", "indices.npy"] {
        assert_eq!(std::fs::read(test_a.join(file)).unwrap(), std::fs::read(test_b.join(file)).unwrap(), "{file}");
    }
    let features = |dir: &Path| -> sslc_runtime::probe::Features {
        let values = npy(&dir.join("features.npy"));
        let finite = values.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
        assert!(finite, "{}: non-finite features", dir.display());
        let labels = npy(&dir.join("labels.npy")).to_vec1::<i64>().unwrap().into_iter().map(|l| l as u32).collect();
        sslc_runtime::probe::Features { values, labels }
    };
    let (train, test) = (features(&probe_train), features(&test_a));
    assert_eq!(npy(&test_a.join("indices.npy")).to_vec1::<i64>().unwrap(), (0..rows as i64).collect::<Vec<_>>());
    let run_summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for knn in run_summary["knn"].as_array().unwrap() {
        let k = knn["k"].as_u64().unwrap() as usize;
        let predicted = sslc_runtime::probe::knn_predict(&train, &test, 10, &[k]).unwrap().remove(0);
        let correct = predicted.iter().zip(&test.labels).filter(|(p, l)| p == l).count();
        let recorded = knn["accuracy"]["overall"].as_f64().unwrap();
        assert!((correct as f64 / rows as f64 - recorded).abs() < 1e-12, "kNN k={k} from the embedded features");
    }

    // Given images: torchvision's ResNet-18 loading the export computes the same features.
    let images = scratch.join("images.npy");
    let values: Vec<f32> = (0..4 * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let tensor = candle_core::Tensor::from_vec(values, (4, 1, 8, 8), &candle_core::Device::Cpu).unwrap();
    sslc_compiler::eval::npy::write(&images, &tensor).unwrap();
    let given = scratch.join("given");
    sslc_ok(&["embed", path(&run), "--images", path(&images), "--out", path(&given)]);
    assert_eq!(npy(&given.join("features.npy")).dims(), [4, 512]);
    assert!(!given.join("labels.npy").exists());

    let Some(python) = python_with("torch, torchvision, numpy", None) else { return };
    let parity = run_python(
        &python,
        "torchvision_parity.py",
        &[path(&backbone), path(&images), path(&given.join("features.npy"))],
    );
    assert_eq!(parity["missing"], serde_json::json!(["fc.bias", "fc.weight"]), "{parity}");
    assert_eq!(parity["unexpected"], serde_json::json!([]), "{parity}");
    assert_eq!(parity["shape"], serde_json::json!([4, 512]));
    // Within 1e-4 of the features' scale: after one epoch on 96 images the eval-mode BatchNorm
    // statistics lag the weights and the features grow large (in PyTorch as in sslc), so the
    // bound is relative to the largest feature (and absolute below 1).
    let diff = parity["max_abs_diff"].as_f64().unwrap();
    let scale = parity["max_abs"].as_f64().unwrap().max(1.0);
    assert!(diff <= 1e-4 * scale, "torchvision's features differ from sslc's by {diff} of {scale} ({parity})");
}

/// Bad input never panics: a missing or corrupt checkpoint, a backbone torchvision lacks, and
/// a wrong image array each give one clear error naming the file.
#[test]
fn export_and_embed_refuse_bad_input_clearly() {
    let scratch = scratch_dir("tools-errors");
    let missing = scratch.join("nowhere/checkpoint.safetensors");
    for command in ["export", "embed"] {
        let out = run_sslc(&[command, path(&missing), "--out", path(&scratch.join("out"))]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let message = stderr_of(&out);
        assert!(message.contains(path(&missing)) && message.contains("sslc run"), "{message}");
    }
    let garbage = scratch.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    let out = run_sslc(&["export", path(&garbage), "--out", path(&scratch.join("x.safetensors"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains(path(&garbage)), "{}", text(&out));
    assert!(!stderr_of(&out).contains("panicked"));

    // The default small backbone: a clear refusal for torchvision, the projector exports.
    let run = scratch.join("run");
    sslc_ok(&[
        "run",
        "objectives/simclr.ssl",
        "--epochs",
        "1",
        "--limit",
        "64",
        "--probe-epochs",
        "1",
        "--out",
        path(&run),
    ]);
    let out = run_sslc(&["export", path(&run), "--out", path(&scratch.join("small.safetensors"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("--backbone resnet18"), "{}", text(&out));
    sslc_ok(&["export", path(&run), "--format", "projector", "--out", path(&scratch.join("p.safetensors"))]);
    // Its long-tailed training split embeds too (128-d features), with a label per row.
    let train = scratch.join("train");
    sslc_ok(&["embed", path(&run), "--split", "train", "--out", path(&train)]);
    let (features, labels) = (npy(&train.join("features.npy")), npy(&train.join("labels.npy")));
    assert_eq!(features.dims()[1], 128);
    assert_eq!(labels.dims(), [features.dims()[0]]);

    // Images of the wrong rank or channel count.
    let flat = scratch.join("flat.npy");
    let tensor = candle_core::Tensor::zeros((3, 64), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    sslc_compiler::eval::npy::write(&flat, &tensor).unwrap();
    let out = run_sslc(&["embed", path(&run), "--images", path(&flat), "--out", path(&scratch.join("e"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("[N, C, H, W]"), "{}", text(&out));
    let rgb = scratch.join("rgb.npy");
    let tensor = candle_core::Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    sslc_compiler::eval::npy::write(&rgb, &tensor).unwrap();
    let out = run_sslc(&["embed", path(&run), "--images", path(&rgb), "--out", path(&scratch.join("e"))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!stderr_of(&out).contains("panicked"));
}
