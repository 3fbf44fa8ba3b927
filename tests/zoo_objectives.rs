//! The objective zoo (DCL, alignment + uniformity, Barlow Twins, VICReg, SwAV, SupCon, and the
//! momentum/predictor/multi-crop families BYOL, SimSiam, MoCo v2, DINO, SwAV multi-crop): each shipped file's
//! loss, per-sample losses and gradients against an independent implementation from its paper
//! (`common/zoo.rs`, exact gradients from a scalar tape) on random shapes — the reference
//! evaluator in f64 within 1e-9, the CPU back end in f32 within 1e-4 — plus gradcheck and the
//! fusion report (no batch-squared buffer: none of these papers needs one).

mod common;
#[path = "common/tape.rs"]
mod tape;
#[path = "common/zoo.rs"]
mod zoo;

use candle_core::DType;
use common::{bind, evaluate, grad, rel_error, values, Mat, Rng, Setup};
use sslc_compiler::back::{self, BackendKind};
use sslc_compiler::gradcheck::{gradcheck, Options};
use sslc_compiler::objective::{Evaluation, Executable};
use std::sync::Arc;
use tape::{Tape, V};
use zoo::M;

/// The zoo's files, each with the independent loss at its default parameters.
const ZOO: [&str; 6] = ["dcl", "align_uniform", "barlow_twins", "vicreg", "swav", "supcon"];

/// SwAV's prototypes in these tests (the file's default is K = 100).
const PROTOTYPES: usize = 6;

/// What the independent implementation computes: the loss, the per-sample losses where the
/// paper has them, and the gradient of every leaf (`z1`, `z2`, and SwAV's prototypes `C`).
struct Expected {
    loss: f64,
    per_sample: Option<Vec<f64>>,
    grads: Vec<(&'static str, Vec<f64>)>,
}

/// SupCon's classes of the batch: three classes, so most anchors have positives besides their
/// other view.
fn labels(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i * 7 % 3) as u32).collect()
}

fn independent(name: &str, z1: &Mat, z2: &Mat, c: &Mat) -> Expected {
    let tape = Tape::new();
    let m = |x: &Mat| M { rows: x.rows, cols: x.cols, v: tape.vars(&x.data) };
    let (a, b, prototypes) = (m(z1), m(z2), m(c));
    let (loss, per_sample) = match name {
        "dcl" => {
            let (loss, per) = zoo::dcl(&a, &b, 0.1);
            (loss, Some(per))
        }
        "align_uniform" => (zoo::align_uniform(&a, &b, 2.0, 2.0, 1.0), None),
        "barlow_twins" => (zoo::barlow_twins(&a, &b, 0.0051), None),
        "vicreg" => (zoo::vicreg(&a, &b, 25.0, 25.0, 1.0, 1e-4), None),
        "swav" => {
            let (loss, per) = zoo::swav(&a, &b, &prototypes, 0.1, 0.05, 3);
            (loss, Some(per))
        }
        "supcon" => {
            let (loss, per) = zoo::supcon(&a, &b, &labels(z1.rows), 0.1);
            (loss, Some(per))
        }
        other => panic!("no independent implementation of {other}"),
    };
    let g = tape.gradient(loss);
    let mut grads = vec![("z1", V::pick(&g, &a.v)), ("z2", V::pick(&g, &b.v))];
    if name == "swav" {
        grads.push(("C", V::pick(&g, &prototypes.v)));
    }
    Expected { loss: loss.value, per_sample: per_sample.map(|p| p.iter().map(|v| v.value).collect()), grads }
}

/// Embeddings `[n, d]` of both views and SwAV's prototypes `[PROTOTYPES, d]`.
fn inputs(n: usize, d: usize, seed: u64) -> (Mat, Mat, Mat) {
    let mut rng = Rng::new(seed);
    let mut draw = |rows| rng.normal_mat(rows, d).rounded_to_f32();
    (draw(n), draw(n), draw(PROTOTYPES))
}

fn setup(name: &str, (z1, z2, c): &(Mat, Mat, Mat), dtype: DType) -> Setup<'static> {
    let mut s = Setup { inputs: vec![("z1", z1.tensor(dtype)), ("z2", z2.tensor(dtype))], dtype, ..Setup::default() };
    if name == "swav" {
        s.consts.push(("C", c.tensor(dtype)));
        s.overrides.push(format!("K={PROTOTYPES}"));
    }
    if name == "supcon" {
        let classes: Vec<f64> = labels(z1.rows).iter().map(|&l| l as f64).collect();
        s.consts.push(("y", common::vector_tensor(&classes, dtype)));
    }
    s
}

/// The worst relative error of loss, per-sample losses and gradients.
fn worst_error(name: &str, got: &Evaluation, (z1, z2, c): &(Mat, Mat, Mat)) -> f64 {
    worst_error_against(name, got, independent(name, z1, z2, c))
}

fn worst_error_against(name: &str, got: &Evaluation, want: Expected) -> f64 {
    let mut errors = vec![rel_error(&[got.loss], &[want.loss], 1e-7)];
    assert_eq!(got.grads.len(), want.grads.len(), "{name}: one gradient per leaf");
    for (leaf, expected) in &want.grads {
        errors.push(rel_error(&values(grad(got, leaf)), expected, 1e-7));
    }
    if let Some(expected) = want.per_sample {
        errors.push(rel_error(&values(got.per_sample.as_ref().expect("per_sample")), &expected, 1e-7));
    }
    errors.into_iter().fold(0.0, f64::max)
}

fn module(name: &str) -> sslc_compiler::ir::Module {
    common::compile_objective(&format!("objectives/{name}.ssl"))
}

/// Sizes from one sample pair up, odd widths, and a batch larger than the width (Barlow
/// Twins' and VICReg's `[D, D]` matrices are then rank-deficient).
const SHAPES: [(usize, usize); 5] = [(2, 3), (3, 2), (5, 7), (8, 4), (17, 9)];

#[test]
fn the_tape_differentiates_a_known_expression() {
    let t = Tape::new();
    let (x, y) = (t.var(0.7), t.var(-1.3));
    let f = x * y + x.exp() / y - (x.square() + 1.0).sqrt();
    let g = t.gradient(f);
    let (xv, yv) = (0.7f64, -1.3f64);
    let dx = yv + xv.exp() / yv - xv / (xv * xv + 1.0).sqrt();
    let dy = xv - xv.exp() / (yv * yv);
    let got = V::pick(&g, &[x, y]);
    assert!((got[0] - dx).abs() < 1e-14 && (got[1] - dy).abs() < 1e-14, "{got:?} vs {dx} {dy}");
}

#[test]
fn the_reference_evaluator_matches_each_paper_in_f64() {
    for name in ZOO {
        let m = module(name);
        for (k, &(n, d)) in SHAPES.iter().enumerate() {
            let data = inputs(n, d, 100 + k as u64);
            let err = worst_error(name, &evaluate(&m, &setup(name, &data, DType::F64)), &data);
            eprintln!("{name:<14} N={n:<3} D={d:<3} reference f64: {err:.2e}");
            assert!(err <= 1e-9, "{name} at N={n}, D={d}: relative error {err:.3e}");
        }
    }
}

/// From N = 3: with two samples, batch standardisation (Barlow Twins) maps every feature to
/// ±1 up to its eps, so the exact gradient is O(1e-5) and f32 keeps only its first digits.
#[test]
fn the_cpu_back_end_matches_each_paper_in_f32() {
    for name in ZOO {
        let exe = Arc::new(Executable::new(module(name)).expect("differentiable"));
        let cpu = back::build(BackendKind::Cpu, exe.clone()).expect("compiles");
        for (k, &(n, d)) in SHAPES.iter().chain(&[(64, 32)]).filter(|(n, _)| *n > 2).enumerate() {
            let data = inputs(n, d, 200 + k as u64);
            let got = cpu.evaluate(&bind(&exe.module, &setup(name, &data, DType::F32))).expect("evaluates");
            let err = worst_error(name, &got, &data);
            eprintln!("{name:<14} N={n:<3} D={d:<3} cpu f32: {err:.2e}");
            assert!(err <= 1e-4, "{name} at N={n}, D={d}: relative error {err:.3e}");
        }
    }
}

#[test]
fn every_zoo_objective_passes_gradcheck() {
    for name in ZOO.iter().copied().chain(["dcl_gh"]) {
        let m = module(name);
        let mut s = setup(name, &inputs(6, 7, 300), DType::F64);
        if name.ends_with("_gh") {
            s.overrides.push("K=5".into());
        }
        let reports = gradcheck(&m, &bind(&m, &s), Options::entries(1e-6, 0)).expect("runs");
        let leaves: Vec<&str> = reports.iter().map(|r| r.input.as_str()).collect();
        let expected: &[&str] = if name == "swav" { &["z1", "z2", "C"] } else { &["z1", "z2"] };
        assert_eq!(leaves, expected, "{name}: one report per input and learned tensor");
        for r in &reports {
            eprintln!("{name:<14} {:<3} max rel {:.2e}", r.input, r.max_rel_error);
            assert!(r.passes(1e-5, 1e-8), "{name}: {r:?}");
        }
    }
}

/// None of these losses needs a batch-squared buffer: DCL and the uniformity term are fused
/// like SimCLR's similarity matrix, Barlow Twins and VICReg only form `[D, D]` matrices.
#[test]
fn no_zoo_objective_stores_a_batch_squared_matrix() {
    for name in ZOO.iter().copied().chain(["dcl_gh"]) {
        let exe = Executable::new(module(name)).expect("differentiable");
        let report = sslc_compiler::fuse::report(&exe);
        assert!(report.unfused.is_empty(), "{name}: unfused products {:?}", report.unfused);
        assert!(report.materialised.is_empty(), "{name}: stores {} batch-squared values", report.materialised.len());
    }
}

// ---- the momentum-encoder, predictor and multi-crop families ---------------------------------

/// Objectives whose inputs are more than the two views' embeddings: predictions, target
/// embeddings, a queue, learned and EMA prototypes, small crops.
const FAMILIES: [&str; 6] = ["byol", "simsiam", "moco_v2", "dino", "swav_multicrop", "dino_multicrop"];

/// MoCo's queue length (at least the largest batch here: `queue[N:]` needs N <= Q) and DINO's prototypes.
const QUEUE: usize = 67;
const HEADS: usize = 5;

/// One random instance of a family's inputs, learned tensors and state.
struct Family {
    inputs: Vec<(&'static str, Mat)>,
    learned: Vec<(&'static str, Mat)>,
    /// Matrices of state (MoCo's queue, DINO's teacher prototypes).
    states: Vec<(&'static str, Mat)>,
    /// DINO's center, `[HEADS]`.
    center: Vec<f64>,
}

fn family(name: &str, n: usize, d: usize, seed: u64) -> Family {
    let mut rng = Rng::new(seed);
    let mut draw = |rows| rng.normal_mat(rows, d).rounded_to_f32();
    let names: &[&'static str] = match name {
        "byol" => &["p1", "p2", "t1", "t2"],
        "simsiam" => &["p1", "p2", "z1", "z2"],
        "moco_v2" => &["q", "k"],
        "dino" => &["s1", "s2", "t1", "t2"],
        "swav_multicrop" => &["z1", "z2", "w1", "w2", "w3", "w4"],
        "dino_multicrop" => &["s1", "s2", "t1", "t2", "l1", "l2", "l3", "l4"],
        other => panic!("no family {other}"),
    };
    let inputs = names.iter().map(|&name| (name, draw(n))).collect();
    let (learned, states) = match name {
        "moco_v2" => (vec![], vec![("queue", draw(QUEUE))]),
        "dino" | "dino_multicrop" => (vec![("W", draw(HEADS))], vec![("W_t", draw(HEADS))]),
        "swav_multicrop" => (vec![("C", draw(PROTOTYPES))], vec![]),
        _ => (vec![], vec![]),
    };
    let center = (0..HEADS).map(|k| (k as f64 * 0.37).sin() * 0.2).collect::<Vec<_>>();
    Family { inputs, learned, states, center: center.iter().map(|&c| c as f32 as f64).collect() }
}

fn family_setup(name: &str, f: &Family, dtype: DType) -> Setup<'static> {
    let mut s = Setup {
        inputs: f.inputs.iter().map(|(n, m)| (*n, m.tensor(dtype))).collect(),
        consts: f.learned.iter().map(|(n, m)| (*n, m.tensor(dtype))).collect(),
        states: f.states.iter().map(|(n, m)| (*n, m.tensor(dtype))).collect(),
        dtype,
        ..Setup::default()
    };
    match name {
        "moco_v2" => s.overrides.push(format!("Q={QUEUE}")),
        "swav_multicrop" => s.overrides.push(format!("K={PROTOTYPES}")),
        "dino" | "dino_multicrop" => {
            s.overrides.push(format!("K={HEADS}"));
            s.states.push(("center", common::vector_tensor(&f.center, dtype)));
        }
        _ => {}
    }
    s
}

/// The family's loss from its paper (`common/zoo.rs`), with the gradient of every input and
/// learned tensor.
fn independent_family(name: &str, f: &Family) -> Expected {
    let tape = Tape::new();
    let m = |x: &Mat| M { rows: x.rows, cols: x.cols, v: tape.vars(&x.data) };
    let leaves: Vec<M> = f.inputs.iter().chain(&f.learned).map(|(_, x)| m(x)).collect();
    let l = &leaves;
    let (loss, per_sample) = match name {
        "byol" => zoo::byol(&l[0], &l[1], &l[2], &l[3]),
        "simsiam" => zoo::simsiam(&l[0], &l[1], &l[2], &l[3]),
        "moco_v2" => zoo::moco(&l[0], &l[1], &m(&f.states[0].1), 0.2),
        "dino" => zoo::dino(&l[0], &l[1], &l[2], &l[3], &l[4], &f.states[0].1.data, &f.center, 0.1, 0.04),
        "swav_multicrop" => zoo::swav_multicrop(&l[..6].iter().collect::<Vec<_>>(), &l[6], 0.1, 0.05, 3),
        "dino_multicrop" => {
            let students = [&l[0], &l[1], &l[4], &l[5], &l[6], &l[7]];
            zoo::dino_multicrop(&students, [&l[2], &l[3]], &l[8], &f.states[0].1.data, &f.center, 0.1, 0.04)
        }
        other => panic!("no independent implementation of {other}"),
    };
    let g = tape.gradient(loss);
    let names = f.inputs.iter().chain(&f.learned).map(|(n, _)| *n);
    let grads = names.zip(l).map(|(n, leaf)| (n, V::pick(&g, &leaf.v))).collect();
    Expected { loss: loss.value, per_sample: Some(per_sample.iter().map(|v| v.value).collect()), grads }
}

#[test]
fn the_reference_evaluator_matches_each_family_in_f64() {
    for name in FAMILIES {
        let m = module(name);
        for (k, &(n, d)) in SHAPES.iter().enumerate() {
            let f = family(name, n, d, 400 + k as u64);
            let got = evaluate(&m, &family_setup(name, &f, DType::F64));
            let err = worst_error_against(name, &got, independent_family(name, &f));
            eprintln!("{name:<14} N={n:<3} D={d:<3} reference f64: {err:.2e}");
            assert!(err <= 1e-9, "{name} at N={n}, D={d}: relative error {err:.3e}");
        }
    }
}

#[test]
fn the_cpu_back_end_matches_each_family_in_f32() {
    for name in FAMILIES {
        let exe = Arc::new(Executable::new(module(name)).expect("differentiable"));
        let cpu = back::build(BackendKind::Cpu, exe.clone()).expect("compiles");
        for (k, &(n, d)) in SHAPES.iter().chain(&[(64, 32)]).enumerate() {
            let f = family(name, n, d, 500 + k as u64);
            let got = cpu.evaluate(&bind(&exe.module, &family_setup(name, &f, DType::F32))).expect("evaluates");
            let err = worst_error_against(name, &got, independent_family(name, &f));
            eprintln!("{name:<14} N={n:<3} D={d:<3} cpu f32: {err:.2e}");
            assert!(err <= 1e-4, "{name} at N={n}, D={d}: relative error {err:.3e}");
        }
    }
}

#[test]
fn every_family_passes_gradcheck() {
    for name in FAMILIES {
        let m = module(name);
        let f = family(name, 6, 7, 600);
        let reports =
            gradcheck(&m, &bind(&m, &family_setup(name, &f, DType::F64)), Options::entries(1e-6, 0)).expect("runs");
        let leaves: Vec<&str> = reports.iter().map(|r| r.input.as_str()).collect();
        let expected: Vec<&str> = f.inputs.iter().chain(&f.learned).map(|(n, _)| *n).collect();
        assert_eq!(leaves, expected, "{name}: one report per input and learned tensor");
        for r in &reports {
            eprintln!("{name:<14} {:<3} max rel {:.2e}", r.input, r.max_rel_error);
            assert!(r.passes(1e-5, 1e-8), "{name}: {r:?}");
        }
    }
}

/// BYOL and SimSiam compare matching rows only; MoCo's `[N, Q]` and DINO's `[N, K]` products
/// are what the papers compute, and neither needs a batch-squared matrix.
#[test]
fn no_family_stores_a_batch_squared_matrix() {
    for name in FAMILIES {
        let exe = Executable::new(module(name)).expect("differentiable");
        let report = sslc_compiler::fuse::report(&exe);
        assert!(report.materialised.is_empty(), "{name}: stores {} batch-squared values", report.materialised.len());
    }
}
