//! `sslc` against a hostile user (issues 15 and 25): every input here must end in a clean error
//! (exit status 1 or 2, the cause named, no panic, no abort) or, after a kill, in a run that
//! `--resume` finishes with the result an uninterrupted run gets; files sslc must not touch
//! (a planted link's target, a live run's record, a checkpoint) stay as they were. Cases other suites already
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
    let mut targets = vec![("/dev/zero".to_string(), "not an .ssl file")];
    if Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        targets.push((fifo.display().to_string(), "regular file"));
    } else {
        eprintln!("NOTICE: mkfifo is missing; the FIFO case is skipped");
    }
    for (target, cause) in targets {
        let file = dir.join("main.ssl");
        std::fs::write(&file, format!("import \"{target}\"\n")).expect("write");
        let out = finish_within(
            sslc(&["run", file.to_str().unwrap(), "--epochs", "1", "--out", dir.join("run").to_str().unwrap()]),
            Duration::from_secs(30),
        );
        assert_clean_error(&out, cause);
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

// Files users can trust (issue 25): imports confined, temporaries and locks never follow a
// planted link, run directories never mixed, bad settings refused before any work.

/// An objective folder holding `main.ssl` with `text`, and a secret beside (not below) it.
fn confined_objective(name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = scratch_dir(name);
    let (project, secrets) = (root.join("project"), root.join("secrets"));
    std::fs::create_dir_all(&project).expect("project folder");
    std::fs::create_dir_all(&secrets).expect("secrets folder");
    std::fs::write(secrets.join("token.ssl"), "SECRET-TOKEN-1234 is not ssl\n").expect("secret");
    std::fs::write(secrets.join("ok.ssl"), "fn twice(x: f32) -> f32 {\n    return 2 * x\n}\n").expect("library");
    std::fs::write(project.join("notes.txt"), "SECRET-TOKEN-5678\n").expect("notes");
    std::os::unix::fs::symlink(secrets.join("token.ssl"), project.join("link.ssl")).expect("link");
    let main = project.join("main.ssl");
    std::fs::write(&main, text).expect("main.ssl");
    (main, secrets)
}

/// Case 1: Imports read only `.ssl` files below the objective's folder: `..`, absolute paths and
/// links out of it are refused without echoing a byte of the file; `--import-path` allows a
/// folder explicitly.
#[test]
fn imports_are_confined_to_the_objective_folder() {
    for (case, import) in [
        ("dots", "../secrets/token.ssl"),
        ("absolute", "ABSOLUTE"),
        ("link", "link.ssl"),
        ("not-ssl", "notes.txt"),
        ("proc", "/proc/self/environ"),
    ] {
        let (main, secrets) = confined_objective(&format!("hostile-import-{case}"), "");
        let import = import.replace("ABSOLUTE", secrets.join("token.ssl").to_str().unwrap());
        std::fs::write(&main, format!("import \"{import}\"\n")).expect("main.ssl");
        let out = finish_within(sslc(&["check", main.to_str().unwrap()]), Duration::from_secs(30));
        let cause = if case == "not-ssl" || case == "proc" { "not an .ssl file" } else { "outside the folders" };
        assert_clean_error(&out, cause);
        assert!(!said(&out).contains("SECRET"), "{case}: the file's text was shown: {}", said(&out));
    }
    let text = "import \"../secrets/ok.ssl\"\nobjective o {\n    views x1, x2 = simclr_augment(x)\n    \
                input z: [N, D] = encoder(x1)\n    loss = twice(mean(z * z))\n}\n";
    let (main, secrets) = confined_objective("hostile-import-allowed", text);
    assert_clean_error(&finish_within(sslc(&["check", main.to_str().unwrap()]), Duration::from_secs(30)), "outside");
    let allowed = ["check", main.to_str().unwrap(), "--import-path", secrets.to_str().unwrap()];
    assert_success(&finish_within(sslc(&allowed), Duration::from_secs(30)));
}

/// Case 2: A lock file planted as a link is refused, and the file it points to is untouched;
/// `embed`'s and `export`'s outputs planted as links are replaced, never written through.
#[test]
fn planted_links_are_never_written_through() {
    let root = scratch_dir("hostile-planted-links");
    let victim = root.join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    let dir = root.join("run");
    std::fs::create_dir_all(&dir).expect("run folder");
    std::os::unix::fs::symlink(&victim, dir.join(".sslc.lock")).expect("link");
    assert_clean_error(&finish_within(tiny(1, &["--out"], &dir), Duration::from_secs(60)), "symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    let trained = root.join("trained");
    assert_success(&finish_within(tiny(1, &["--out"], &trained), Duration::from_secs(300)));
    let exported = root.join("backbone.safetensors");
    std::os::unix::fs::symlink(&victim, &exported).expect("link");
    let out =
        sslc(&["export", trained.to_str().unwrap(), "--format", "projector", "--out", exported.to_str().unwrap()]);
    assert_success(&finish_within(out, Duration::from_secs(60)));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let features = root.join("features");
    std::fs::create_dir_all(&features).expect("features folder");
    std::os::unix::fs::symlink(&victim, features.join("features.npy")).expect("link");
    let out = sslc(&["embed", trained.to_str().unwrap(), "--out", features.to_str().unwrap()]);
    assert_success(&finish_within(out, Duration::from_secs(120)));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(features.join("features.npy")).unwrap().file_type().is_symlink());
}

/// Case 3: The run directory is written only by the run that holds it: a refused `--overwrite` of a
/// live run, and a refused `--resume`, leave its config.toml as it was; a folder holding
/// only a stale config.toml gets the new run's.
#[test]
fn a_refused_run_leaves_the_run_directory_as_it_was() {
    let root = scratch_dir("hostile-run-directory");
    let dir = root.join("run");
    let first = Paused::start(tiny(2, &["--out"], &dir), 1);
    let config = std::fs::read(dir.join("config.toml")).expect("the live run's config.toml");
    let out = finish_within(tiny(2, &["--seed", "7", "--overwrite", "--out"], &dir), Duration::from_secs(60));
    assert_clean_error(&out, "in use");
    assert_eq!(std::fs::read(dir.join("config.toml")).unwrap(), config, "a refused --overwrite rewrote config.toml");
    first.kill("KILL");
    let out = finish_within(tiny(2, &["--seed", "7", "--resume"], &dir), Duration::from_secs(60));
    assert_clean_error(&out, "seed");
    assert_eq!(std::fs::read(dir.join("config.toml")).unwrap(), config, "a refused --resume rewrote config.toml");

    let stale = root.join("stale");
    std::fs::create_dir_all(&stale).expect("folder");
    std::fs::write(stale.join("config.toml"), "seed = 99\n").expect("stale config");
    assert_success(&finish_within(tiny(1, &["--seed", "3", "--out"], &stale), Duration::from_secs(300)));
    let written = std::fs::read_to_string(stale.join("config.toml")).unwrap();
    assert!(written.contains("seed = 3"), "{written}");
}

/// Case 4: `export` and `embed` refuse to write over a run's files; the checkpoint survives.
/// Case 7: A run whose weights diverge in its last step fails, however finite its loss was.
#[test]
fn run_files_are_never_replaced_and_divergence_fails_the_run() {
    let root = scratch_dir("hostile-run-files");
    let dir = root.join("run");
    assert_success(&finish_within(tiny(1, &["--out"], &dir), Duration::from_secs(300)));
    let checkpoint = std::fs::read(dir.join("checkpoint.safetensors")).expect("checkpoint");
    for target in ["checkpoint.safetensors", "summary.json"] {
        let out_path = dir.join(target);
        let export =
            sslc(&["export", dir.to_str().unwrap(), "--format", "projector", "--out", out_path.to_str().unwrap()]);
        assert_clean_error(&finish_within(export, Duration::from_secs(60)), "run directory");
    }
    let embed = sslc(&["embed", dir.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert_clean_error(&finish_within(embed, Duration::from_secs(60)), "checkpoint.safetensors");
    assert_eq!(std::fs::read(dir.join("checkpoint.safetensors")).unwrap(), checkpoint);

    let diverged = root.join("diverged");
    let out = finish_within(tiny(1, &["--lr", "1e300", "--out"], &diverged), Duration::from_secs(300));
    assert_clean_error(&out, "became");
    assert!(!diverged.join("summary.json").exists());
}

/// Case 5, 6, 9: `compare --plot` replaces a planted link instead of writing through it; every
/// file sslc reads (a --config file, a checkpoint, --images, a summary) must be a regular
/// file: FIFOs are refused within seconds; `embed` into a folder holding other files is refused.
#[test]
fn fifos_are_refused_and_reports_are_written_whole() {
    let root = scratch_dir("hostile-fifos");
    let dir = root.join("run");
    assert_success(&finish_within(tiny(1, &["--out"], &dir), Duration::from_secs(300)));
    let victim = root.join("victim.png");
    std::fs::write(&victim, "precious").expect("victim");
    let plot = root.join("plot.png");
    std::os::unix::fs::symlink(&victim, &plot).expect("link");
    assert_success(&finish_within(
        sslc(&["compare", dir.to_str().unwrap(), "--plot", plot.to_str().unwrap()]),
        Duration::from_secs(60),
    ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));

    let mine = root.join("mine");
    std::fs::create_dir_all(&mine).expect("folder");
    std::fs::write(mine.join("notes.txt"), "keep").expect("notes");
    let embed = sslc(&["embed", dir.to_str().unwrap(), "--out", mine.to_str().unwrap()]);
    assert_clean_error(&finish_within(embed, Duration::from_secs(120)), "notes.txt");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep");

    let fifo = |name: &str| {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("folder");
        }
        assert!(Command::new("mkfifo").arg(&path).status().is_ok_and(|s| s.success()), "mkfifo");
        path
    };
    let (config, images) = (fifo("config.toml"), fifo("images.npy"));
    let checkpoint = fifo("fake/checkpoint.safetensors");
    fifo("summary/summary.json");
    let summary_folder = root.join("summary");
    let unused = root.join("unused");
    let unused = unused.to_str().unwrap();
    let cases: [Vec<&str>; 4] = [
        vec!["run", "--config", config.to_str().unwrap(), "--out", unused],
        vec!["export", checkpoint.to_str().unwrap(), "--out", unused],
        vec!["embed", dir.to_str().unwrap(), "--images", images.to_str().unwrap(), "--out", unused],
        vec!["compare", summary_folder.to_str().unwrap()],
    ];
    for args in cases {
        assert_clean_error(&finish_within(sslc(&args), Duration::from_secs(30)), "regular file");
    }
}

/// Case 8, 10: Settings no run can use are refused before any work: a thread count far past the
/// cores (flag, config file, bench), a learning rate that is not finite, no probe epochs.
#[test]
fn impossible_settings_are_refused_before_any_work() {
    let root = scratch_dir("hostile-settings");
    let config = root.join("bad.toml");
    let out_dir = root.join("run");
    let out = out_dir.to_str().unwrap();
    for (flags, cause) in [
        (&["--threads", "1000000"][..], "threads"),
        (&["--lr", "NaN"][..], "finite"),
        (&["--probe-epochs", "0"][..], "at least 1"),
    ] {
        let mut args = vec!["run", OBJECTIVE, "--out", out];
        args.extend_from_slice(flags);
        assert_clean_error(&finish_within(sslc(&args), Duration::from_secs(30)), cause);
    }
    for (line, cause) in [("threads = 1000000", "threads"), ("lr = inf", "lr"), ("probe_epochs = 0", "probe_epochs")] {
        std::fs::write(&config, format!("{line}\n")).expect("config");
        let args = ["run", OBJECTIVE, "--config", config.to_str().unwrap(), "--out", out];
        assert_clean_error(&finish_within(sslc(&args), Duration::from_secs(30)), cause);
    }
    assert!(!out_dir.exists(), "a refused run created its directory");
    for command in [&["bench", OBJECTIVE][..], &["bench-train"][..]] {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--threads", "1000000"]);
        assert_clean_error(&finish_within(sslc(&args), Duration::from_secs(30)), "threads");
    }
}

/// Case 12, 13: config.toml records the objective so that `--resume` works from any folder, and a
/// resume refuses an objective file changed since the run started unless told to allow it.
#[test]
fn a_resume_finds_its_objective_from_anywhere_and_refuses_a_changed_one() {
    let root = scratch_dir("hostile-resume-objective");
    let objectives = root.join("objectives");
    std::fs::create_dir_all(objectives.join("lib")).expect("folders");
    for file in ["simclr.ssl", "lib/contrastive.ssl", "lib/schedules.ssl"] {
        std::fs::copy(repo_root().join("objectives").join(file), objectives.join(file)).expect("copy");
    }
    let objective = objectives.join("simclr.ssl");
    let dir = root.join("run");
    let mut first = sslc(&["run", "objectives/simclr.ssl", "--epochs", "2", "--stop-after", "1"]);
    first.args(TINY).arg("--out").arg(&dir).current_dir(&root);
    assert_success(&finish_within(first, Duration::from_secs(300)));
    let config = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
    assert!(config.contains(&objective.canonicalize().unwrap().display().to_string()), "{config}");

    let mut text = std::fs::read_to_string(&objective).expect("objective");
    text.push_str("// edited\n");
    std::fs::write(&objective, text).expect("edit");
    let resume = |extra: &[&str]| {
        let mut command = sslc(&["run", "--resume", dir.to_str().unwrap()]);
        command.args(extra).current_dir(std::env::temp_dir());
        finish_within(command, Duration::from_secs(300))
    };
    assert_clean_error(&resume(&[]), "--allow-changed-objective");
    assert_success(&resume(&["--allow-changed-objective"]));
    assert!(dir.join("summary.json").exists());
}

/// Case 10: A setting that breaks a relation the objective's shapes state (MoCo's `queue[N:]` needs
/// N <= Q) is refused before any data is read, naming the sizes, by `sslc run` and by
/// `sslc check --set ... --batch-size ...`.
#[test]
fn a_queue_shorter_than_the_batch_is_refused_before_any_work() {
    let dir = scratch_dir("hostile-queue").join("run");
    let args = ["run", "objectives/moco_v2.ssl", "--set", "Q=8", "--batch-size", "16", "--out", dir.to_str().unwrap()];
    let out = finish_within(sslc(&args), Duration::from_secs(60));
    assert_clean_error(&out, "Q = 8");
    assert!(!said(&out).contains("%"), "an IR dump: {}", said(&out));
    assert!(!dir.exists(), "the refused run created its directory");
    let check = ["check", "objectives/moco_v2.ssl", "--set", "Q=8", "--batch-size", "16"];
    assert_clean_error(&finish_within(sslc(&check), Duration::from_secs(60)), "N = 16");
    let fine = ["check", "objectives/moco_v2.ssl", "--set", "Q=32", "--batch-size", "16"];
    assert_success(&finish_within(sslc(&fine), Duration::from_secs(60)));
    assert_clean_error(
        &finish_within(sslc(&["check", "objectives/moco_v2.ssl", "--set", "nope=1"]), Duration::from_secs(60)),
        "nope",
    );
}

/// Case 11: Classes and indices outside their range are errors naming the value: a label file
/// holding -1, K or 19.7 under `one_hot` (as PyTorch refuses them), and an out-of-range gather
/// named by its operands (not `node %71 (Gather ...)`).
#[test]
fn out_of_range_classes_and_indices_name_the_input_and_value() {
    let dir = scratch_dir("hostile-ranges");
    let file = dir.join("classes.ssl");
    let text = "import \"lib/contrastive.ssl\"\nobjective classes {\n    dim K = 20\n    \
                views x1, x2 = simclr_augment(x)\n    input z: [N, D] = encoder(x1)\n    \
                const y: [samples] = labels\n    let c = int(y[index])\n    \
                let s = stopgrad(z)\n    loss = mean(z * z) + sum(one_hot(c, K)) + mean(s[c])\n}\n";
    std::fs::write(&file, text).expect("objective");
    let npy = |name: &str, shape: &str, values: &[f32]| {
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("npy");
        path.display().to_string()
    };
    let z = format!("z={}", npy("z.npy", "(4, 3)", &(0..12).map(|i| i as f32).collect::<Vec<_>>()));
    let out_dir = dir.join("out");
    for (case, labels, cause) in [
        ("negative", [0.0, 1.0, -1.0, 2.0], "-1"),
        ("k", [0.0, 1.0, 25.0, 2.0], "holds 25"),
        ("fraction", [0.0, 1.0, 19.7, 2.0], "19.7"),
        ("rows", [0.0, 1.0, 9.0, 2.0], "out of range for the 4 rows of"),
    ] {
        let y = format!("y={}", npy(&format!("y-{case}.npy"), "(4,)", &labels));
        let args = ["eval", file.to_str().unwrap(), "--backend", "reference", "--input", &z, "--input", &y];
        let mut command = sslc(&args);
        command.arg("--import-path").arg(repo_root().join("objectives")).arg("--out").arg(&out_dir);
        let out = finish_within(command, Duration::from_secs(60));
        assert_clean_error(&out, cause);
        assert!(!said(&out).contains("node %"), "{case}: {}", said(&out));
    }
}
