//! Data-parallel `sslc run` under `mpirun` (docs/distributed.md): two ranks with a global
//! batch of 64 equal one process with a batch of 64 (per-step losses, final weights and
//! objective state, probe accuracies), and differ without synchronised BatchNorm; three ranks
//! refuse a batch of 64; a two-rank checkpoint resumes in one process; a rank killed with
//! SIGKILL brings the job down with a message naming it, and the run resumes.
//!
//! Needs `mpirun` (Debian's openmpi-bin) and a binary built with `--features mpi`; without
//! either the tests print a notice and pass, except under CI=true, where they fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sslc_runtime::checkpoint::Checkpoint;

/// Whether the MPI tests can run; otherwise says why (and fails under CI=true).
fn mpi_ready(test: &str) -> bool {
    let why = if !cfg!(feature = "mpi") {
        "sslc was built without --features mpi"
    } else if !Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success()) {
        "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    } else {
        return true;
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why}, and CI=true requires these tests to run");
    eprintln!("NOTICE: {test} skipped: {why}");
    false
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sslc-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `sslc run` arguments of a short run: two epochs of batch 64 on the embedded digits, one
/// compute thread per process (the ranks share CI's two cores).
fn run_args(objective: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", objective, "--epochs", "2", "--batch-size", "64", "--probe-epochs", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--threads", "1", "--out"].map(String::from));
    args.push(out.to_str().unwrap().into());
    if objective.ends_with("_gh.ssl") {
        args.extend(["--set", "K=16"].map(String::from));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn single(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).output().expect("run sslc")
}

fn mpirun_command(ranks: usize, args: &[String]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_sslc"))
        .args(args);
    command
}

fn mpirun(ranks: usize, args: &[String]) -> Output {
    mpirun_command(ranks, args).output().expect("run mpirun")
}

/// Each step's epoch and loss.
fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["kind"] == "step")
        .map(|line| (line["epoch"].as_u64().unwrap(), line["loss"].as_f64().unwrap()))
        .collect()
}

fn checkpoint(dir: &Path) -> Checkpoint {
    Checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap()
}

/// The largest difference between two runs' tensors (model or objective state), relative to
/// the larger of 1 and the value, with the tensor's name.
fn largest_difference(a: &[(String, candle_core::Tensor)], b: &[(String, candle_core::Tensor)]) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (u, v) in x.iter().zip(&y) {
            let d = (u - v).abs() / u.abs().max(1.0);
            if d > worst.0 || d.is_nan() {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

/// How far a run is from the reference: the worst per-step loss difference (relative; also
/// over the first epoch alone), the worst weight and objective state entry, and the overall
/// probe accuracy (points).
struct Distance {
    loss: f64,
    first_epoch_loss: f64,
    weight: (f32, String),
    state: (f32, String),
    accuracy: f64,
}

fn distance(reference: &Path, run: &Path) -> Distance {
    let (a, b) = (step_losses(reference), step_losses(run));
    assert_eq!(a.len(), b.len(), "step counts differ");
    assert!(!a.is_empty());
    let worst = |first_only: bool| {
        a.iter()
            .zip(&b)
            .filter(|((epoch, _), _)| !first_only || *epoch == 0)
            .map(|((_, x), (_, y))| (x - y).abs() / x.abs().max(1e-12))
            .fold(0.0, f64::max)
    };
    let (loss, first_epoch_loss) = (worst(false), worst(true));
    let (ca, cb) = (checkpoint(reference), checkpoint(run));
    assert_eq!(ca.epoch, cb.epoch);
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (summary(reference), summary(run));
    let accuracy =
        (sa["linear"]["overall"].as_f64().unwrap() - sb["linear"]["overall"].as_f64().unwrap()).abs() * 100.0;
    Distance {
        loss,
        first_epoch_loss,
        weight: largest_difference(&ca.model, &cb.model),
        state: largest_difference(&ca.objective, &cb.objective),
        accuracy,
    }
}

fn assert_equivalent(name: &str, reference: &Path, run: &Path) {
    let d = distance(reference, run);
    eprintln!(
        "{name}: losses within {:.2e} (first epoch {:.2e}), weights within {:.2e} ({}), objective state within {:.2e}, \
         overall accuracy within {:.2} points",
        d.loss, d.first_epoch_loss, d.weight.0, d.weight.1, d.state.0, d.accuracy
    );
    if name.starts_with("sdclr") {
        // SDCLR recomputes its pruning mask from the weights at every epoch: a discontinuous
        // function of them, so float summation-order differences (1e-6) flip mask entries at
        // the threshold, and with its sensitive dynamics the runs then separate at the 1e-3
        // level (measured: epoch 0 within 6e-5, epoch 1 within 3.4e-3). A wrong gradient or
        // unsynchronised BatchNorm shows at once (steps 0 and 1 are bit-identical here; per-rank
        // BatchNorm differs by 1e-1), so the first epoch is held to 2e-3 and the end to 2e-2:
        // one process runs the CPU engine's fused BatchNorm, two ranks the synchronised
        // composition, whose sums run in another order (measured: 1.0e-3 in the first epoch,
        // 8.7e-3 at the end; 6e-5 and 3.4e-3 when both ran the composition).
        assert!(d.first_epoch_loss <= 2e-3, "{name}: a first-epoch loss differs by {:.3e}", d.first_epoch_loss);
        assert!(d.loss <= 2e-2, "{name}: a step loss differs by {:.3e} (relative)", d.loss);
        assert!(d.accuracy <= 2.0, "{name}: the probe accuracy differs by {:.2} points", d.accuracy);
        return;
    }
    assert!(d.loss <= 1e-4, "{name}: a step loss differs by {:.3e} (relative)", d.loss);
    assert!(d.weight.0 <= 1e-4, "{name}: weight {} differs by {:.3e}", d.weight.1, d.weight.0);
    assert!(d.state.0 <= 1e-4, "{name}: objective state {} differs by {:.3e}", d.state.1, d.state.0);
    assert!(d.accuracy <= 0.5, "{name}: the probe accuracy differs by {:.2} points", d.accuracy);
}

/// For each objective: one process against two ranks; for simclr_gh also two ranks without
/// BatchNorm synchronisation (must differ), and a two-rank run stopped after one epoch and
/// resumed in one process (must equal the uninterrupted run).
#[test]
fn two_ranks_equal_one_process() {
    if !mpi_ready("two_ranks_equal_one_process") {
        return;
    }
    for name in ["simclr_gh", "sdclr_gh", "bcl_gh"] {
        let objective = format!("objectives/{name}.ssl");
        let (one, two) = (scratch(&format!("{name}-one")), scratch(&format!("{name}-two")));
        let started = Instant::now();
        let out = single(&run_args(&objective, &one, &[]));
        assert!(out.status.success(), "{name}, one process: {}", text(&out));
        let out = mpirun(2, &run_args(&objective, &two, &[]));
        assert!(out.status.success(), "{name}, two ranks: {}", text(&out));
        assert!(text(&out).contains("over 2 ranks"), "{name}: not a two-rank run: {}", text(&out));
        assert_eq!(text(&out).matches("overall").count(), 1, "{name}: only rank 0 reports: {}", text(&out));
        assert_equivalent(name, &one, &two);
        eprintln!("{name}: {:.0} s", started.elapsed().as_secs_f64());

        if name == "simclr_gh" {
            let unsynced = scratch("unsynced");
            let out = mpirun(2, &run_args(&objective, &unsynced, &["--no-sync-bn"]));
            assert!(out.status.success(), "two ranks, BN unsynchronised: {}", text(&out));
            let d = distance(&one, &unsynced);
            eprintln!("without SyncBatchNorm: losses differ by {:.2e}, weights by {:.2e}", d.loss, d.weight.0);
            assert!(d.loss > 1e-3 && d.weight.0 > 1e-3, "per-rank BatchNorm should not match one process");

            let split = scratch("split");
            let out = mpirun(2, &run_args(&objective, &split, &["--stop-after", "1"]));
            assert!(out.status.success(), "two ranks, stopped after one epoch: {}", text(&out));
            assert_eq!(checkpoint(&split).epoch, 1);
            let mut resume = run_args(&objective, &split, &[]);
            let at = resume.iter().position(|a| a == "--out").unwrap();
            resume[at] = "--resume".into();
            let out = single(&resume);
            assert!(out.status.success(), "resuming a two-rank run in one process: {}", text(&out));
            assert_equivalent("simclr_gh resumed with one rank", &one, &split);
            for dir in [unsynced, split] {
                std::fs::remove_dir_all(dir).ok();
            }
        }
        // Rank 0 alone wrote the run directory: one of each file, one TensorBoard event file.
        let (events, mut files): (Vec<String>, Vec<String>) = std::fs::read_dir(&two)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .partition(|f| f.starts_with("events.out.tfevents"));
        assert_eq!(events.len(), 1, "{events:?}");
        files.sort();
        assert_eq!(
            files,
            [".sslc.lock", "checkpoint.safetensors", "config.toml", "metrics.jsonl", "per_class.png", "summary.json"]
        );
        for dir in [one, two] {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

#[test]
fn three_ranks_refuse_a_batch_of_64() {
    if !mpi_ready("three_ranks_refuse_a_batch_of_64") {
        return;
    }
    let dir = scratch("three");
    let out = mpirun(3, &run_args("objectives/simclr.ssl", &dir, &[]));
    let message = text(&out);
    assert!(!out.status.success(), "{message}");
    assert!(
        message.contains("global batch of 64 does not split evenly over 3 ranks") && message.contains("--batch-size"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
    assert!(!dir.exists(), "a refused run creates no directory");
}

/// A rank killed with SIGKILL (while paused after epoch 1's checkpoint) takes the other rank
/// and mpirun down within 60 s, with a message naming the lost rank; the run then resumes from
/// that checkpoint.
#[test]
fn a_killed_rank_stops_the_run_which_then_resumes() {
    if !mpi_ready("a_killed_rank_stops_the_run_which_then_resumes") {
        return;
    }
    let dir = scratch("killed");
    let args = run_args("objectives/simclr.ssl", &dir, &[]);
    let mut child = mpirun_command(2, &args)
        .env("SSLC_TEST_PAUSE_AFTER_EPOCH", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    // Read stderr on a thread, collecting every line, until both ranks have paused.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut paused: Vec<(usize, u32)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while paused.len() < 2 {
        let line = lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the ranks did not pause after epoch 1:\n{}", log.join("\n"))
        });
        if let Some(rest) = line.strip_prefix("sslc: paused after epoch 1 (pid ") {
            let (pid, rank) = rest.trim_end_matches(')').split_once(", rank ").unwrap();
            paused.push((rank.parse().unwrap(), pid.parse().unwrap()));
        }
        log.push(line);
    }
    let pid_of = |rank: usize| paused.iter().find(|(r, _)| *r == rank).unwrap().1;
    assert!(Command::new("kill").args(["-KILL", &pid_of(1).to_string()]).status().unwrap().success());
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mpirun still runs 60 s after rank 1 was killed:\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().unwrap();
    log.extend(lines_rx.try_iter());
    let log = log.join("\n");
    eprintln!("stopped {:.1} s after the kill", killed.elapsed().as_secs_f64());
    assert!(!status.success(), "{log}");
    assert!(log.contains("rank 1"), "the message should name rank 1:\n{log}");
    // Rank 0 is gone too, within the same 60 s (mpirun signals it on its way out; a zombie
    // awaiting its parent counts as gone).
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    while alive(pid_of(0)) {
        assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 (pid {}) outlived the job by 60 s", pid_of(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("rank 0 gone {:.1} s after the kill", killed.elapsed().as_secs_f64());

    assert_eq!(checkpoint(&dir).epoch, 1);
    let mut resume = args.clone();
    let at = resume.iter().position(|a| a == "--out").unwrap();
    resume[at] = "--resume".into();
    let out = mpirun(2, &resume);
    assert!(out.status.success(), "resume after the kill: {}", text(&out));
    assert_eq!(checkpoint(&dir).epoch, 2);
    assert!(dir.join("summary.json").exists());
    std::fs::remove_dir_all(&dir).ok();
}
