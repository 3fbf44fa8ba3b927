//! The CPU back end against the reference evaluator: every shipped objective on random shapes
//! (batch sizes that are not multiples of any vector or tile width included), values and
//! gradients within 1e-4 relative; and bad inputs give errors, not crashes.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use sslc_compiler::back::{self, BackendKind};
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::{BindRequest, Bindings, Overrides};
use sslc_compiler::ir::Module;
use sslc_compiler::objective::{Evaluation, Executable};
use std::path::Path;
use std::sync::Arc;

const OBJECTIVES: [&str; 8] = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"];

/// Largest accepted error, relative to the largest magnitude of the reference value.
const TOLERANCE: f64 = 1e-4;

fn module(path: &Path) -> Module {
    let mut sources = Sources::new();
    let mut c = sslc_compiler::compile(path, &mut sources).unwrap_or_else(|_| panic!("{} compiles", path.display()));
    c.modules.remove(0)
}

fn module_from_text(text: &str) -> Module {
    let mut sources = Sources::new();
    let path = Path::new("objectives/test.ssl");
    match sslc_compiler::compile_text(path, text.to_string(), &mut sources) {
        Ok(mut c) => c.modules.remove(0),
        Err(d) => panic!("{}", d.iter().map(|d| d.render(&sources)).collect::<Vec<_>>().join("\n")),
    }
}

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..rows * cols).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("shape matches")
}

/// Bindings with random `[n, d]` inputs; GH's `K` is lowered to `d + 1` when `d < 99`, as
/// its simplex needs.
fn bindings(m: &Module, n: usize, d: usize, seed: u64, dtype: DType) -> Bindings {
    let mut set = Vec::new();
    if m.dim_named("K").is_some() && d < 99 {
        set.push(format!("K={}", d + 1));
    }
    let overrides = Overrides::parse(&set).expect("valid overrides");
    let inputs =
        m.inputs.iter().enumerate().map(|(k, (_, i))| (i.name.clone(), random(n, d, seed * 7 + k as u64))).collect();
    let req = BindRequest::inputs_only(inputs, &overrides, dtype);
    Bindings::new(m, req).expect("bindings")
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()).expect("readable")
}

/// `max |got - want| / max(max |want|, floor)`; infinite where only one side is NaN or
/// infinite (`f64::max` would skip a NaN difference).
fn relative_error(got: &[f64], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(floor);
    let difference = |g: f64, w: f64| match (g - w).abs() {
        _ if g == w || (g.is_nan() && w.is_nan()) => 0.0,
        d if d.is_nan() => f64::INFINITY,
        d => d,
    };
    got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max(difference(g, w))) / scale
}

/// Every value of `got` against `want`, named in the failure message. Losses and metrics are
/// measured against at least 0.1: where they cancel to about 0 (a batch of one, whose views
/// see only each other), f32 leaves rounding noise of the cancelling terms (size ~1/tau),
/// held so to an absolute 1e-5. Gradients are measured against at least `grad_floor`.
fn compare(got: &Evaluation, want: &Evaluation, grad_floor: f64) -> Result<(), String> {
    const VALUE_FLOOR: f64 = 0.1;
    let mut report = vec![("loss".to_string(), relative_error(&[got.loss], &[want.loss], VALUE_FLOOR))];
    if let (Some(g), Some(w)) = (&got.per_sample, &want.per_sample) {
        report.push(("per_sample".into(), relative_error(&values(g), &values(w), VALUE_FLOOR)));
    }
    for ((name, g), (_, w)) in got.metrics.iter().zip(&want.metrics) {
        report.push((name.clone(), relative_error(&[*g], &[*w], VALUE_FLOOR)));
    }
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        report.push((format!("grad_{name}"), relative_error(&values(g), &values(w), grad_floor)));
    }
    match report.iter().find(|(_, e)| e.is_nan() || *e > TOLERANCE) {
        Some((name, e)) => Err(format!("{name}: relative error {e:.3e} (all: {report:?})")),
        None => Ok(()),
    }
}

/// The CPU back end (f32) against the reference evaluator in f64.
fn check(m: &Module, n: usize, d: usize, seed: u64) -> Result<(), String> {
    let exe = Arc::new(Executable::new(m.clone()).expect("differentiable"));
    let cpu = back::build(BackendKind::Cpu, exe.clone()).map_err(|e| e.to_string())?;
    let got = cpu.evaluate(&bindings(m, n, d, seed, DType::F32)).map_err(|e| e.to_string())?;
    let want = exe.evaluate(&bindings(m, n, d, seed, DType::F64)).map_err(|e| e.to_string())?;
    // With one feature every embedding normalises to ±1 and the exact gradient is 0; what
    // f32 computes is rounding noise of the terms that cancel (about 1e-7 of them, and they
    // reach 1/(gh_tau · eps) = 200 in GH), so it is held to an absolute 1e-4 instead.
    let grad_floor = if d == 1 { 1.0 } else { 1e-6 };
    compare(&got, &want, grad_floor).map_err(|e| format!("{} at N={n}, D={d}: {e}", m.name))
}

fn objective(name: &str) -> Module {
    module(&Path::new("objectives").join(format!("{name}.ssl")))
}

#[test]
fn edge_shapes_match_the_reference() {
    // One sample, one feature, and sizes just off every power of two.
    for name in OBJECTIVES {
        let m = objective(name);
        for (n, d) in [(1, 1), (2, 3), (5, 7), (17, 33), (63, 129)] {
            check(&m, n, d, 1).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Batch sizes and widths, mostly small (where off-by-one tails are most of the work) and
/// sometimes up to a few tiles.
fn size(small: usize, large: usize) -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1..small, 1 => small..large]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 8, ..ProptestConfig::default() })]
    #[test]
    fn every_objective_matches_the_reference(which in 0..OBJECTIVES.len(), n in size(40, 300), d in size(24, 256), seed in 0u64..1000) {
        let m = objective(OBJECTIVES[which]);
        let result = check(&m, n, d, seed);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

#[test]
fn a_batch_of_several_row_blocks_matches_the_reference() {
    // 2N = 1194 rows: 18 full row blocks of the tiled loop and a partial one, and a partial
    // column tile.
    for name in ["simclr_gh", "bcl"] {
        check(&objective(name), 597, 131, 3).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every number of the CPU back end (loss, per-sample losses, metrics, gradients), as bits.
fn bits(e: &Evaluation) -> Vec<u64> {
    let mut all = vec![e.loss.to_bits()];
    all.extend(e.metrics.iter().map(|(_, v)| v.to_bits()));
    for t in e.per_sample.iter().chain(e.grads.iter().map(|(_, g)| g)) {
        all.extend(values(t).into_iter().map(f64::to_bits));
    }
    all
}

/// The same inputs give the same bits on any number of threads (issue 15, item 14: the
/// symmetric loop split its tiles and summed them per thread, so `--threads 1` and
/// `--threads 2` trained differently): every objective, on a batch of several square tiles
/// (2N = 600 rows), in pools of 1, 2 and 3 threads.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    for name in OBJECTIVES {
        assert_thread_count_independent(&objective(name), 128);
    }
}

/// The CPU back end's bits on 300 rows of width `d` are the same in pools of 1, 2 and 3
/// threads.
fn assert_thread_count_independent(m: &Module, d: usize) {
    let exe = Arc::new(Executable::new(m.clone()).expect("differentiable"));
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
        pool.install(|| {
            let cpu = back::build(BackendKind::Cpu, exe.clone()).expect("compiles");
            bits(&cpu.evaluate(&bindings(m, 300, d, 9, DType::F32)).expect("evaluates"))
        })
    };
    let one = on(1);
    for threads in [2, 3] {
        assert!(on(threads) == one, "{}: {threads} threads give other results than one", m.name);
    }
}

/// Pairwise nodes the shipped objectives do not have: a similarity between two matrices (the
/// tiled loop over all tiles), and a product over a single matrix with a kernel that is not
/// symmetric (half the tiles, the kernel evaluated on each tile and on its mirror image).
const OTHER_PAIRWISE: [&str; 2] = [
    r#"
objective cross_view {
    param tau = 0.5
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    per_sample = logsumexp(z1 @ z2.T / tau, axis=1) - sum(z1 * z2, axis=1) / tau
    loss = mean(per_sample)
}
"#,
    r#"
objective attention {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let n = sum(z1 * z1, axis=1)
    per_sample = sum((stopgrad(exp(z1 @ z1.T - n[:, None])) @ z2) * z1, axis=1)
    loss = mean(per_sample)
}
"#,
];

#[test]
fn other_pairwise_shapes_match_the_reference() {
    for text in OTHER_PAIRWISE {
        let m = module_from_text(text);
        // Across the tile sizes of both loops (64-row blocks, 128-row square tiles).
        for (n, d) in [(1, 3), (5, 4), (64, 7), (129, 16), (300, 33)] {
            check(&m, n, d, 4).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Three `repeat` loops: the second consumes the first; the third is independent of both.
const CHAINED_LOOPS: &str = r#"
fn smooth(v: [N], times: int) -> [N] {
    var s = v
    repeat times {
        s = (s + mean(s)) / 2 + s * s / 10
    }
    return s
}

objective chained {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let first = smooth(sum(z1, axis=1), 3)
    let second = smooth(first * 2, 4)
    let other = smooth(sum(z2 * z2, axis=1), 5)
    per_sample = sum(z1 * z2, axis=1) * stopgrad(second) + sum(z2, axis=1) * stopgrad(other)
    loss = mean(per_sample)
}
"#;

#[test]
fn independent_loops_run_side_by_side_and_dependent_ones_in_order() {
    let m = module_from_text(CHAINED_LOOPS);
    let exe = Arc::new(Executable::new(m.clone()).expect("differentiable"));
    let clif = back::clif::Cpu::new(exe).expect("compiles").clif().to_string();
    let loops: Vec<&str> = clif.lines().filter(|l| l.starts_with("function %loop")).collect();
    // Two loop functions of one concurrent group (`loopK_0`, `loopK_1`), one loop alone.
    assert_eq!(loops.len(), 3, "{loops:?}");
    assert_eq!(
        loops.iter().filter(|l| l.split('(').next().is_some_and(|name| name.contains('_'))).count(),
        2,
        "{loops:?}"
    );
    for (n, d) in [(1, 2), (37, 5), (300, 16)] {
        check(&m, n, d, 5).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn cranelift_ir_snapshots() {
    for name in OBJECTIVES {
        let exe = Arc::new(Executable::new(objective(name)).expect("differentiable"));
        let cpu = back::clif::Cpu::new(exe).expect("compiles");
        insta::assert_snapshot!(format!("clif_{name}"), cpu.clif());
    }
}

#[test]
fn one_compilation_serves_every_shape() {
    let m = objective("simclr");
    for (n, d) in [(3, 4), (40, 9)] {
        check(&m, n, d, 2).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// An objective whose loss reads rows of a state by `index`, for the gather path.
const INDEXED: &str = r#"
objective indexed {
    state w: [samples] = zeros
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    per_sample = sum(z1 * z2, axis=1) * (1 + w[index])
    loss = mean(per_sample)
}
"#;

fn indexed_bindings(m: &Module, index: Vec<i64>, dtype: DType) -> Bindings {
    let overrides = Overrides::default();
    let n = index.len();
    let req = BindRequest {
        inputs: vec![("z1".into(), random(n, 3, 1)), ("z2".into(), random(n, 3, 2))],
        consts: Vec::new(),
        states: vec![("w".into(), Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 0.25], 4, &Device::Cpu).expect("state"))],
        overrides: &overrides,
        samples: None,
        index: Some(Tensor::from_vec(index, n, &Device::Cpu).expect("index")),
        epoch: 0,
        epochs: 10,
        iteration: None,
        base_lr: 0.5,
        dtype,
    };
    Bindings::new(m, req).expect("bindings")
}

#[test]
fn gathers_match_the_reference_and_bad_indices_are_errors() {
    let m = module_from_text(INDEXED);
    let exe = Arc::new(Executable::new(m.clone()).expect("differentiable"));
    let cpu = back::build(BackendKind::Cpu, exe.clone()).expect("compiles");
    let got = cpu.evaluate(&indexed_bindings(&m, vec![3, 0, 2], DType::F32)).expect("runs");
    let want = exe.evaluate(&indexed_bindings(&m, vec![3, 0, 2], DType::F64)).expect("runs");
    compare(&got, &want, 1e-6).unwrap_or_else(|e| panic!("{e}"));
    for bad in [4, -1] {
        let err = cpu.evaluate(&indexed_bindings(&m, vec![1, bad, 2], DType::F32)).expect_err("an error, not a result");
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

/// Concatenation parts stored at a column offset that is not a whole number of SIMD vectors:
/// whole-vector stores there once ran past the part into the next row (MoCo's
/// `concat(pos[:, None], neg, axis=1)` lost every row but the first).
const OFFSET_CONCAT: &str = r#"
objective offsets {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let pos = sum(z1 * z2, axis=1)
    let wide = concat(pos[:, None], z1 @ z2.T, z2, axis=1)      // [N, 1 + N + D]
    let long = concat(pos, sum(z2, axis=1), pos)                // [3N]
    per_sample = logsumexp(wide, axis=1) + long[N:2*N] * long[2*N:]
    loss = mean(per_sample)
}
"#;

#[test]
fn concatenations_at_unaligned_offsets_match_the_reference() {
    let m = module_from_text(OFFSET_CONCAT);
    for (n, d) in [(1, 3), (2, 3), (3, 1), (5, 4), (6, 5), (13, 7)] {
        check(&m, n, d, 11).unwrap_or_else(|e| panic!("N={n}, D={d}: {e}"));
    }
}

/// Gradients through row gathers are scatter-adds: the CPU back end matches the reference on
/// uneven shapes, and the sums (rows picked several times included) have the same bits on
/// 1, 2 and 3 threads.
#[test]
fn gather_gradients_match_the_reference_on_any_thread_count() {
    let m = module(Path::new("tests/fixtures/gathers.ssl"));
    for (n, d) in [(1, 1), (5, 7), (40, 33)] {
        check(&m, n, d, 4).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_thread_count_independent(&m, 64);
}
