//! `gradcheck` (central finite differences in f64 vs. the autodiff gradient) passes for every
//! shipped objective, through the library and through `sslc gradcheck`, and the CLI fails
//! when the error is above its tolerance.

mod common;

use candle_core::DType;
use common::{bind, evaluate, grad, run_sslc, stderr_of, stdout_of, values, Rng, Setup};
use sslc_compiler::gradcheck::{gradcheck, Options};

const OBJECTIVES: [&str; 8] = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"];

/// Largest accepted relative error (the CLI's default tolerance).
const TOLERANCE: f64 = 1e-5;

/// Random inputs `[n, d]`; GH objectives get `k` anchors (the ETF needs `k ≤ d + 1`).
fn setup(name: &str, n: usize, d: usize, k: usize, epoch: usize, seed: u64) -> Setup<'static> {
    let mut rng = Rng::new(seed);
    let mut s = Setup {
        inputs: vec![("z1", rng.normal_mat(n, d).tensor(DType::F64)), ("z2", rng.normal_mat(n, d).tensor(DType::F64))],
        epoch,
        ..Setup::default()
    };
    if name.ends_with("_gh") && k != 100 {
        s.overrides.push(format!("K={k}"));
    }
    s
}

/// Checks every entry of both inputs; returns the worst relative error.
fn check(name: &str, setup: &Setup) -> f64 {
    let module = common::compile_objective(&format!("objectives/{name}.ssl"));
    // The check means something only if the gradient is not trivially zero (it is with one
    // sample, where each view's only other row is its positive, or one dimension, where
    // normalize(z) is the constant sign(z)).
    let eval = evaluate(&module, setup);
    let (n, d) = setup.inputs[0].1.dims2().expect("[N, D] inputs");
    for input in ["z1", "z2"].into_iter().filter(|_| n > 1 && d > 1) {
        let norm = values(grad(&eval, input)).iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm > 1e-6, "{name}: d loss/d {input} is zero; the check would prove nothing");
    }
    let reports = gradcheck(&module, &bind(&module, setup), Options::entries(1e-6, 0))
        .unwrap_or_else(|e| panic!("{name}: gradcheck failed to run: {e}"));
    let inputs: Vec<&str> = reports.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(inputs, ["z1", "z2"], "{name}: one report per input");
    let total: usize = setup.inputs.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(reports.iter().map(|r| r.entries).sum::<usize>(), total, "{name}: every entry is checked");
    for r in &reports {
        eprintln!("{name:<9} {:<3} max abs {:.2e}  max rel {:.2e}", r.input, r.max_abs_error, r.max_rel_error);
        assert!(r.passes(TOLERANCE, 1e-8), "{name}: {r:?}");
    }
    reports.iter().map(|r| r.max_rel_error).fold(0.0, f64::max)
}

#[test]
fn every_objective_passes_gradcheck_at_the_end_of_the_run() {
    for name in OBJECTIVES {
        check(name, &setup(name, 5, 8, 6, 999, 11));
    }
}

/// During the GH ramp (weight 0.5) and in the warm-up (weight 0) the GH objectives' gradients
/// are still exact.
#[test]
fn gh_objectives_pass_gradcheck_during_the_ramp_and_the_warm_up() {
    for name in OBJECTIVES.iter().filter(|n| n.ends_with("_gh")) {
        for epoch in [0, 504] {
            check(name, &setup(name, 4, 6, 5, epoch, 12));
        }
    }
}

/// One sample, one dimension, and METHOD.md's full size of K = 100 anchors in D = 128.
#[test]
fn gradcheck_passes_at_edge_shapes() {
    check("simclr", &setup("simclr", 1, 1, 0, 999, 13));
    check("focal", &setup("focal", 2, 1, 0, 999, 14));
    check("bcl", &setup("bcl", 2, 2, 0, 999, 15));
    check("simclr_gh", &setup("simclr_gh", 3, 128, 100, 999, 16));
}

/// With one sample (or one dimension) the exact gradient is 0, finite differences give
/// rounding noise of ~1e-10, and gradcheck divides that by its scale floor of 1e-12: a correct
/// gradient is reported as a relative error of ~100 and `sslc gradcheck` exits 1.
#[test]
fn gradcheck_accepts_exactly_zero_gradients() {
    check("sdclr", &setup("sdclr", 1, 3, 0, 999, 15));
    check("focal_gh", &setup("focal_gh", 3, 1, 2, 999, 17));
    let out = run_sslc(&["gradcheck", "objectives/simclr.ssl", "--batch", "1", "--dim", "3"]);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout_of(&out), stderr_of(&out));
}

#[test]
fn sslc_gradcheck_binary_passes_on_simclr_gh() {
    let out = run_sslc(&["gradcheck", "objectives/simclr_gh.ssl", "--batch", "4", "--dim", "8", "--set", "K=5"]);
    let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per input:\n{stdout}");
    for (line, input) in lines.iter().zip(["z1", "z2"]) {
        assert!(line.starts_with("ok") && line.contains(input), "{line}");
        let rel: f64 = line
            .split("max rel error")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no relative error in `{line}`"));
        assert!(rel < TOLERANCE, "{line}");
    }
}

/// Finite differences always differ from the exact gradient a little: with a tolerance far
/// below that, the binary must report FAIL and exit 1 (never panic).
#[test]
fn sslc_gradcheck_binary_fails_above_its_tolerance() {
    let out = run_sslc(&[
        "gradcheck",
        "objectives/focal.ssl",
        "--batch",
        "3",
        "--dim",
        "4",
        "--tolerance",
        "1e-300",
        "--abs-tolerance",
        "0",
    ]);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", stderr_of(&out));
    assert!(stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
}

/// A step so large that central differences are wrong (the loss is far from quadratic over
/// ±10) is reported as a failure: the comparison does see a gradient that is not the loss's.
#[test]
fn sslc_gradcheck_binary_fails_when_the_differences_are_wrong() {
    let out = run_sslc(&["gradcheck", "objectives/simclr.ssl", "--batch", "4", "--dim", "4", "--step", "10"]);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", stderr_of(&out));
    assert!(stdout.lines().filter(|l| l.starts_with("FAIL")).count() == 2, "{stdout}");
}

#[test]
fn sslc_gradcheck_binary_rejects_too_many_anchors() {
    let out = run_sslc(&["gradcheck", "objectives/focal_gh.ssl", "--batch", "4", "--dim", "8"]);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("K = 100") && stderr.contains("D = 8"), "{stderr}");
}

/// Non-finite values never pass (issue: `--set tau=0` printed "ok, max abs error 0" with every
/// gradient NaN, and `--step 0` or `--step nan` passed too): a zero temperature makes the loss
/// non-finite, which is an error naming the cause; a step that is not a positive finite number
/// is refused before any work.
#[test]
fn sslc_gradcheck_fails_on_non_finite_values_and_bad_steps() {
    let cases: [&[&str]; 4] = [&["--set", "tau=0"], &["--step", "0"], &["--step", "nan"], &["--step=-1e-6"]];
    for extra in cases {
        let mut args = vec!["gradcheck", "objectives/simclr.ssl", "--batch", "4", "--dim", "4"];
        args.extend_from_slice(extra);
        let out = run_sslc(&args);
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        assert_eq!(out.status.code(), Some(1), "{extra:?}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!stdout.lines().any(|l| l.starts_with("ok")), "{extra:?} passed:\n{stdout}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    let out = run_sslc(&["gradcheck", "objectives/simclr.ssl", "--batch", "4", "--dim", "4", "--set", "tau=0"]);
    assert!(stderr_of(&out).contains("the loss is"), "{}", stderr_of(&out));
}

/// `--input NAME=PATH.npy` gives `gradcheck` and `bench` any input, constant or state instead
/// of random or built values: SwAV's prototypes (a `learn` tensor, checked like an input) and
/// SupCon's labels; an unknown name is an error that lists what the objective has.
#[test]
fn gradcheck_and_bench_take_given_inputs() {
    let dir = common::scratch_dir("gradcheck-inputs");
    let write = |name: &str, t: candle_core::Tensor| {
        let path = dir.join(name);
        sslc_compiler::eval::npy::write(&path, &t).unwrap();
        path.to_str().unwrap().to_string()
    };
    let prototypes = write("C.npy", Rng::new(5).normal_mat(6, 4).tensor(DType::F32));
    let labels = write("y.npy", common::vector_tensor(&[0.0, 0.0, 1.0, 1.0, 2.0], DType::F32));
    let given = format!("C={prototypes}");
    let out = run_sslc(&[
        "gradcheck",
        "objectives/swav.ssl",
        "--batch",
        "5",
        "--dim",
        "4",
        "--set",
        "K=6",
        "--input",
        &given,
    ]);
    let stdout = stdout_of(&out);
    assert!(out.status.success(), "{stdout}{}", stderr_of(&out));
    assert!(stdout.lines().any(|l| l.starts_with("ok") && l.contains(" C ")), "the prototypes are checked:\n{stdout}");
    let given = format!("y={labels}");
    let out = run_sslc(&["gradcheck", "objectives/supcon.ssl", "--batch", "5", "--dim", "4", "--input", &given]);
    assert!(out.status.success(), "{}{}", stdout_of(&out), stderr_of(&out));
    let out =
        run_sslc(&["bench", "objectives/supcon.ssl", "--batch", "5", "--dim", "4", "--iters", "1", "--input", &given]);
    assert!(out.status.success(), "{}{}", stdout_of(&out), stderr_of(&out));
    let wrong = format!("labels={labels}");
    let out = run_sslc(&["gradcheck", "objectives/supcon.ssl", "--batch", "5", "--dim", "4", "--input", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("has no input, constant or state `labels` (it has z1, z2, y)"),
        "{}",
        stderr_of(&out)
    );
}

/// Gradients through row gathers (a nearest neighbour's rows with repeats, a fixed pattern,
/// a vector gather) against finite differences, entry by entry and along random directions.
#[test]
fn gather_gradients_pass_gradcheck() {
    let module = common::compile_objective("tests/fixtures/gathers.ssl");
    for (n, d, seed) in [(6, 5, 21), (9, 4, 22)] {
        let s = setup("gathers", n, d, 0, 999, seed);
        for options in [Options::entries(1e-6, 0), Options::directions(1e-6, 4, seed)] {
            for r in gradcheck(&module, &bind(&module, &s), options).expect("runs") {
                assert!(r.passes(TOLERANCE, 1e-8), "gathers at {n}x{d}, {options:?}: {r:?}");
            }
        }
    }
}

/// The scatter-add written out by hand: `loss = Σ z2[m % 3] · z1[m] + ½ Σ_m s[m % 3]` with
/// `s = Σ_j z1[:, j]`, so `d/dz2[r] = Σ_{m ≡ r} z1[m]` and `d/dz1[m] = z2[m % 3] + ½ #{m' ≡ m}`
/// for `m < 3`.
#[test]
fn gather_gradients_sum_the_rows_that_picked_each_row() {
    let module = common::compile_objective_text(
        "objectives/picked.ssl",
        "objective picked {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let pattern = arange(N) % 3
    loss = sum(z2[pattern, :] * z1) + 0.5 * sum(sum(z1, axis=1)[pattern])
}
",
    );
    let (n, d) = (7, 4);
    let s = setup("picked", n, d, 0, 999, 31);
    let (z1, z2) = (values(&s.inputs[0].1), values(&s.inputs[1].1));
    let eval = evaluate(&module, &s);
    let mut want_z2 = vec![0.0; n * d];
    let mut want_z1 = vec![0.0; n * d];
    for m in 0..n {
        for j in 0..d {
            want_z2[(m % 3) * d + j] += z1[m * d + j];
            want_z1[m * d + j] += z2[(m % 3) * d + j];
            want_z1[(m % 3) * d + j] += 0.5;
        }
    }
    for (input, want) in [("z1", want_z1), ("z2", want_z2)] {
        let got = values(grad(&eval, input));
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-12, "d loss/d {input}: {got:?}\nwant {want:?}");
    }
}

/// `sslc gradcheck` checks random directions by default (two evaluations each, whatever the
/// input's size) and single entries with `--per-entry`.
#[test]
fn sslc_gradcheck_checks_directions_by_default_and_entries_on_request() {
    let base = ["gradcheck", "objectives/simclr.ssl", "--batch", "4", "--dim", "6"];
    let out = run_sslc(&base);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr_of(&out));
    assert!(stdout.lines().all(|l| l.starts_with("ok") && l.contains("(4 directions)")), "{stdout}");
    let out = run_sslc(&[&base[..], &["--directions", "2", "--seed", "3"]].concat());
    assert!(stdout_of(&out).lines().all(|l| l.contains("(2 directions)")), "{}", stdout_of(&out));
    let out = run_sslc(&[&base[..], &["--per-entry", "--max-entries", "5"]].concat());
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr_of(&out));
    assert!(stdout.lines().all(|l| l.starts_with("ok") && l.contains("(5 entries)")), "{stdout}");
}
