//! Run configuration files and `sslc compare`'s outputs, end to end on tiny runs of the
//! embedded digits: a run writes `config.toml`; `--config` of it repeats the run exactly
//! (same configuration, same accuracies); flags override the file; bad files are clean errors
//! naming file, line and key; `compare --format csv` and `--plot` write what they say.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sslc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).output().expect("run sslc")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-config").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(args: &[&str]) -> Output {
    let out = sslc(args);
    assert!(out.status.success(), "sslc {}: {}", args.join(" "), text(&out));
    out
}

fn config_of(dir: &Path) -> toml::Table {
    let text = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
    text.parse().unwrap_or_else(|e| panic!("config.toml does not parse: {e}\n{text}"))
}

fn summary_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json")).expect("json")
}

#[test]
fn a_config_file_repeats_the_run_and_flags_override_it() {
    let (a, b, c) = (scratch("a"), scratch("b"), scratch("c"));
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    #[rustfmt::skip]
    ok(&["run", "objectives/simclr.ssl", "--epochs", "1", "--limit", "300", "--batch-size", "64",
         "--probe-epochs", "5", "--threads", "1", "--out", &path(&a)]);
    let first = config_of(&a);
    // Recorded absolute, so the run resumes from any folder.
    let objective = Path::new(env!("CARGO_MANIFEST_DIR")).join("objectives/simclr.ssl").canonicalize().unwrap();
    let objective = format!("{:?}", objective.display().to_string());
    let expected = [
        ("objective", objective.as_str()),
        ("dataset", "\"digits-lt\""),
        ("imb_type", "\"exp\""),
        ("epochs", "1"),
        ("batch_size", "64"),
        ("lr", "0.5"),
        ("weight_decay", "0.0005"),
        ("seed", "0"),
        ("backbone", "\"small\""),
        ("threads", "1"),
        ("set", "[]"),
        ("backend", "\"cpu\""),
        ("eval_every", "0"),
        ("probe_epochs", "5"),
        ("limit", "300"),
    ];
    for (key, value) in expected {
        assert_eq!(first.get(key).map(|v| v.to_string()).as_deref(), Some(value), "{key} in {first:#?}");
    }
    let sha = first["objective_sha256"].as_str().unwrap();
    assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()), "{sha}");
    assert_eq!(first["sslc_version"].as_str(), Some(env!("CARGO_PKG_VERSION")));

    // The same run from its file: the same configuration and the same accuracies.
    ok(&["run", "--config", &path(&a.join("config.toml")), "--out", &path(&b)]);
    assert_eq!(config_of(&b), first);
    let (sa, sb) = (summary_of(&a), summary_of(&b));
    assert_eq!(sa["linear"], sb["linear"]);
    assert_eq!(sa["run"], sb["run"]);

    // Flags override the file; a --set replaces only its own name.
    #[rustfmt::skip]
    ok(&["run", "--config", &path(&a.join("config.toml")), "--seed", "1", "--set", "tau=0.5",
         "--out", &path(&c)]);
    let third = config_of(&c);
    assert_eq!(third["seed"].as_integer(), Some(1));
    assert_eq!(third["set"].to_string(), "[\"tau=0.5\"]");
    assert_eq!((third["epochs"].as_integer(), third["limit"].as_integer()), (Some(1), Some(300)));
    assert_eq!(summary_of(&c)["run"]["train"]["seed"], 1);

    // compare: CSV with its header (a and b are two seeds-equal runs of one row, c another
    // row), and the grouped bars as a PNG.
    let plot = scratch("bars.png");
    let out = ok(&["compare", &path(&a), &path(&b), &path(&c), "--format", "csv", "--plot", &path(&plot)]);
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "objective,dataset,runs,many_mean,many_std,medium_mean,medium_std,few_mean,few_std,\
         overall_mean,overall_std,group_std_mean,group_std_std"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(fields.len(), 13, "{csv}");
    assert_eq!(&fields[..3], ["simclr", "digits-lt", "2"]);
    let overall: f64 = fields[9].parse().unwrap();
    assert!((overall - 100.0 * sa["linear"]["overall"].as_f64().unwrap()).abs() < 1e-3, "{csv}");
    assert_eq!(fields[10].parse::<f64>().unwrap(), 0.0, "equal runs have no spread: {csv}");
    let png = image::open(&plot).expect("a PNG that decodes");
    assert!(std::fs::metadata(&plot).unwrap().len() > 0 && png.width() > 0 && png.height() > 0);
    let md = String::from_utf8(ok(&["compare", &path(&a), &path(&c)]).stdout).unwrap();
    assert!(md.starts_with("| objective | runs | Many | Medium | Few | overall | group std |\n|---|"), "{md}");

    for dir in [a, b, c, plot] {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&dir);
    }
}

#[test]
fn bad_config_files_are_clean_errors_naming_file_line_and_key() {
    let dir = scratch("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "unknown.toml",
            "objective = \"objectives/simclr.ssl\"\nepochs = 1\nlearning_rate = 0.1\n",
            ":3:",
            "learning_rate",
        ),
        ("type.toml", "# a comment\nepochs = \"ten\"\n", ":2:", "key `epochs`"),
        ("enum.toml", "backbone = \"vgg16\"\n", ":1:", "resnet18"),
        ("syntax.toml", "epochs = = 3\n", ":1:", "syntax.toml"),
        ("zero.toml", "objective = \"objectives/simclr.ssl\"\nlimit = 0\n", "", "`limit` must be at least 1"),
        ("noobjective.toml", "epochs = 1\n", "", "no objective given"),
    ];
    for (name, body, at, says) in cases {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        let out = sslc(&["run", "--config", file.to_str().unwrap(), "--out", dir.join("never").to_str().unwrap()]);
        let printed = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {printed}");
        assert!(!printed.contains("panicked"), "{name}: {printed}");
        assert!(printed.contains(&format!("{name}{at}")) || at.is_empty(), "{name}: no {name}{at} in {printed}");
        assert!(printed.contains(says), "{name}: no {says:?} in {printed}");
        assert!(!dir.join("never").exists(), "{name}: a refused run left a directory");
    }
    // A file whose objective changed since it was written says so (then fails on its limit).
    let stale = dir.join("stale.toml");
    std::fs::write(&stale, "objective = \"objectives/simclr.ssl\"\nobjective_sha256 = \"00\"\nlimit = 0\n").unwrap();
    let out = sslc(&["run", "--config", stale.to_str().unwrap()]);
    assert!(text(&out).contains("has changed since") && text(&out).contains("stale.toml"), "{}", text(&out));
    let out = sslc(&["run", "--config", dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("missing.toml"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
