//! `sslc` against a hostile user (issue 15): every input here must end in a clean error (exit
//! status 1 or 2, the cause named, no panic, no abort) or, after a kill, in a run that
//! `--resume` finishes with the result an uninterrupted run gets. Cases other suites already
//! hold are not repeated: `--limit 0`, `dim K = 4000000000000` in a source file, a foreign
//! lock holder, stale temporary files at a fresh start and deleted reports (tests/run_cli.rs),
//! special files under `sslc check` (tests/front_diagnostics.rs), 0x0 images
//! (runtime/tests/data_formats.rs, runtime/tests/augment_geometry.rs), long flat programs
//! (tests/front_fuzz.rs).
//!
//! Kills land where they must every time through `SSLC_TEST_PAUSE_AFTER_EPOCH`
//! (`sslc_runtime::train::TEST_PAUSE_ENV`): the run sleeps after saving that epoch's
//! checkpoint, and the test kills it there.

mod common;

use common::{repo_root, scratch_dir};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The objective and settings of every run here: the embedded digits, thinned, in seconds.
const OBJECTIVE: &str = "objectives/simclr.ssl";
const TINY: [&str; 6] = ["--probe-epochs", "1", "--limit", "60", "--batch-size", "16"];

fn sslc(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sslc"));
    command.args(args).current_dir(repo_root());
    command
}

/// A tiny run of `epochs` epochs in `dir`; `how` is `--out`, `--resume` or `--out` with more flags.
fn tiny(epochs: usize, how: &[&str], dir: &Path) -> Command {
    let epochs = epochs.to_string();
    let mut args = vec!["run", OBJECTIVE, "--epochs", epochs.as_str()];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(how);
    args.push(dir.to_str().expect("utf-8 path"));
    sslc(&args)
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs `command` to its end; an input that hangs sslc fails the test (after `limit`) instead
/// of hanging it.
fn finish_within(mut command: Command, limit: Duration) -> Output {
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sslc starts");
    let pid = child.id();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match result.recv_timeout(limit) {
        Ok(out) => out.expect("sslc's output"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("sslc (pid {pid}) still ran after {limit:?}: {command:?}");
        }
    }
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("kill runs");
    assert!(sent.success(), "kill -{name} {pid}");
}

/// A clean error: a usage or run error status (not 101, a panic, nor a signal such as an
/// abort), no panic message, and the cause named.
fn assert_clean_error(out: &Output, cause: &str) {
    let text = said(out);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "exit status {code:?}, signal {:?}, expected 1 or 2: {text}",
        out.status.signal()
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains(cause), "`{cause}` is not named in: {text}");
}

fn assert_success(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", said(out));
}

/// A run paused after epoch `pause` (see the module's doc), once it says so.
struct Paused {
    child: Child,
    /// Kept so that the thread reading the run's stderr keeps draining the pipe.
    _stderr: mpsc::Receiver<String>,
}

impl Paused {
    fn start(mut command: Command, pause: usize) -> Paused {
        command.env("SSLC_TEST_PAUSE_AFTER_EPOCH", pause.to_string()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("sslc starts");
        let (lines, stderr) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().expect("piped"));
        std::thread::spawn(move || reader.lines().map_while(Result::ok).try_for_each(|line| lines.send(line)));
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            match stderr.recv_timeout(Duration::from_secs(180).saturating_sub(started.elapsed())) {
                Ok(line) if line.contains("paused after epoch") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the run never paused after epoch {pause}:\n{}", seen.join("\n"));
                }
            }
        }
        Paused { child, _stderr: stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `name` and waits for the run to die of it.
    fn kill(mut self, name: &str) {
        signal(self.child.id(), name);
        let status = self.child.wait().expect("wait");
        assert!(status.signal().is_some(), "the run ended by itself ({status}) instead of by SIG{name}");
    }
}

impl Drop for Paused {
    /// A test that fails while a run is paused does not leave it sleeping.
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn summary(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dir.join("summary.json")).expect("summary.json");
    serde_json::from_slice(&bytes).expect("summary.json is JSON")
}

/// A pid no process has: one of a child that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("true runs");
    child.wait().expect("wait");
    child.id()
}

/// Sets no run can hold are refused before any work, naming the set: an ImageNet-LT whose
/// list files are empty (`--limit 0` is in tests/run_cli.rs).
#[test]
fn empty_image_lists_are_refused() {
    let dir = scratch_dir("hostile-empty-lists");
    let lists = dir.join("split");
    std::fs::create_dir_all(lists.join("ImageNet_LT")).expect("split folder");
    for name in ["ImageNet_LT_train.txt", "ImageNet_split1_test_100shot.txt", "ImageNet_LT_test.txt"] {
        std::fs::write(lists.join("ImageNet_LT").join(name), "").expect("empty list");
    }
    let mut command = sslc(&["run", OBJECTIVE, "--dataset", "imagenet-lt", "--epochs", "1"]);
    command.arg("--data").arg(&dir).arg("--split-dir").arg(&lists).arg("--out").arg(dir.join("run"));
    let out = finish_within(command, Duration::from_secs(60));
    assert_clean_error(&out, "training set");
}

/// A dimension set far beyond the machine's memory from the command line is an error naming
/// it before anything allocates it (the same dimension in a source file is in run_cli.rs).
#[test]
fn a_huge_dimension_from_the_command_line_is_an_error() {
    let dir = scratch_dir("hostile-huge-set").join("run");
    let (file, out_dir) = ("objectives/simclr_gh.ssl", dir.to_str().unwrap());
    let args = ["run", file, "--set", "K=4000000000000", "--epochs", "1", "--limit", "60", "--out", out_dir];
    let out = finish_within(sslc(&args), Duration::from_secs(60));
    assert_clean_error(&out, "K");
    assert_clean_error(&out, "available memory");
}

/// An objective importing a device or a FIFO fails at the import under `sslc run` too, within
/// seconds, instead of reading forever.
#[test]
fn a_run_of_an_objective_importing_a_special_file_fails_at_once() {
    let dir = scratch_dir("hostile-special-imports");
    let fifo = dir.join("pipe.ssl");
    let mut targets = vec!["/dev/zero".to_string()];
    if Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        targets.push(fifo.display().to_string());
    } else {
        eprintln!("NOTICE: mkfifo is missing; the FIFO case is skipped");
    }
    for target in targets {
        let file = dir.join("main.ssl");
        std::fs::write(&file, format!("import \"{target}\"\n")).expect("write");
        let out = finish_within(
            sslc(&["run", file.to_str().unwrap(), "--epochs", "1", "--out", dir.join("run").to_str().unwrap()]),
            Duration::from_secs(30),
        );
        assert_clean_error(&out, "regular file");
    }
}

/// Two runs on one directory: while one runs, a second (fresh with --overwrite, or a resume)
/// fails at once naming the first's pid, and writes nothing; the first, killed, resumes.
#[test]
fn a_second_run_on_a_busy_directory_fails_at_once_naming_the_holder() {
    let dir = scratch_dir("hostile-concurrent").join("run");
    let first = Paused::start(tiny(2, &["--out"], &dir), 1);
    let holder = format!("pid {}", first.pid());
    for how in [&["--overwrite", "--out"][..], &["--resume"][..]] {
        let started = Instant::now();
        let out = finish_within(tiny(2, how, &dir), Duration::from_secs(60));
        assert_clean_error(&out, &holder);
        assert!(started.elapsed() < Duration::from_secs(30), "{how:?} waited for the lock");
    }
    // Even with no checkpoint to resume from (the holder's set aside), the holder is named.
    let (checkpoint, aside) = (dir.join("checkpoint.safetensors"), dir.join("aside"));
    std::fs::rename(&checkpoint, &aside).expect("the holder's checkpoint");
    assert_clean_error(&finish_within(tiny(2, &["--resume"], &dir), Duration::from_secs(60)), &holder);
    std::fs::rename(&aside, &checkpoint).expect("put back");
    first.kill("KILL");
    assert_success(&finish_within(tiny(2, &["--resume"], &dir), Duration::from_secs(300)));
    assert!(dir.join("summary.json").exists());
}

/// SIGKILL during the final evaluation (after the last checkpoint), with a stale temporary
/// file of a killed write beside it: `--resume` removes the file, redoes the evaluation and
/// reports what an uninterrupted run reports, with one evaluation line in metrics.jsonl.
#[test]
fn a_kill_during_the_final_evaluation_is_finished_by_resume() {
    let root = scratch_dir("hostile-kill-eval");
    let (whole, killed) = (root.join("whole"), root.join("killed"));
    assert_success(&finish_within(tiny(1, &["--out"], &whole), Duration::from_secs(300)));

    Paused::start(tiny(1, &["--out"], &killed), 1).kill("KILL");
    assert!(killed.join("checkpoint.safetensors").exists());
    assert!(!killed.join("summary.json").exists(), "killed before its reports");
    let stale = killed.join(format!(".checkpoint.safetensors.tmp-{}", dead_pid()));
    std::fs::write(&stale, "half a checkpoint").expect("stale file");

    let out = finish_within(tiny(1, &["--resume"], &killed), Duration::from_secs(300));
    assert_success(&out);
    assert!(!stale.exists(), "the stale temporary file is removed on resume");
    assert!(killed.join("per_class.png").exists());
    assert_eq!(summary(&killed)["linear"], summary(&whole)["linear"]);
    let metrics = std::fs::read_to_string(killed.join("metrics.jsonl")).expect("metrics.jsonl");
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count(), 1, "{metrics}");
}

/// SIGINT and SIGTERM in the middle of a run (after its first of two epochs) leave a
/// directory that `--resume` finishes with an uninterrupted run's result.
#[test]
fn sigint_and_sigterm_leave_a_resumable_directory() {
    let root = scratch_dir("hostile-interrupt");
    let whole = root.join("whole");
    assert_success(&finish_within(tiny(2, &["--out"], &whole), Duration::from_secs(300)));
    for name in ["INT", "TERM"] {
        let dir = root.join(name);
        Paused::start(tiny(2, &["--out"], &dir), 1).kill(name);
        let out = finish_within(tiny(2, &["--resume"], &dir), Duration::from_secs(300));
        assert_success(&out);
        assert_eq!(summary(&dir)["linear"], summary(&whole)["linear"], "after SIG{name}");
    }
}
