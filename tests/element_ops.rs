//! Every element-wise built-in of the op table, swept over its domain on every back end: the
//! value (read back as the gradient of `sum(op(z1) * z2)` with respect to `z2`) within 8 ulp
//! of f64, and the derivative within 1e-5 of the textbook formula written here independently.
//! This is where the accuracy the back ends' math functions state is checked.

use candle_core::{DType, Device, Tensor};
use sslc_compiler::back::cuda::{self, emulate, Precision};
use sslc_compiler::back::{self, BackendKind};
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::{BindRequest, Bindings, Overrides};
use sslc_compiler::objective::{Evaluation, Executable};
use std::path::Path;
use std::sync::Arc;

/// An op, the inputs it is swept over, and its derivative.
struct Case {
    name: &'static str,
    inputs: fn() -> Vec<f32>,
    derivative: fn(f64) -> f64,
    /// Smallest magnitude derivative errors are measured against: `cos`'s is `sin`, computed
    /// as `cos(x - π/2)`, which is off by the rounding of π/2 near its zeros.
    floor: f64,
}

/// `±10^k` for k from `lo` to `hi` in tenths of a decade, and zero.
fn decades(lo: i32, hi: i32, negative: bool) -> Vec<f32> {
    let mut v = vec![0.0f32];
    for k in lo * 10..=hi * 10 {
        let x = 10f64.powf(f64::from(k) / 10.0) as f32;
        v.push(x);
        if negative {
            v.push(-x);
        }
    }
    v
}

/// Evenly spaced points of `[lo, hi]`.
fn linear(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n).map(|k| lo + (hi - lo) * k as f32 / (n - 1) as f32).collect()
}

const TINY: f64 = 1e-30;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "exp",
            inputs: || [decades(-30, 1, true), linear(-87.0, 88.0, 301)].concat(),
            derivative: f64::exp,
            floor: TINY,
        },
        Case {
            name: "log",
            inputs: || [decades(-37, 37, false)[1..].to_vec(), linear(0.5, 2.0, 301)].concat(),
            derivative: |x| 1.0 / x,
            floor: TINY,
        },
        Case {
            name: "sqrt",
            inputs: || decades(-30, 30, false)[1..].to_vec(),
            derivative: |x| 0.5 / x.sqrt(),
            floor: TINY,
        },
        Case { name: "abs", inputs: || decades(-30, 30, true)[1..].to_vec(), derivative: f64::signum, floor: TINY },
        Case { name: "cos", inputs: || linear(-20.0, 20.0, 401), derivative: |x| -x.sin(), floor: 1.0 },
        Case {
            name: "log1p",
            inputs: || [decades(-30, 30, false), decades(-30, -1, true), linear(-0.99, 3.0, 301)].concat(),
            derivative: |x| 1.0 / (1.0 + x),
            floor: TINY,
        },
        Case {
            name: "expm1",
            inputs: || [decades(-30, 1, true), linear(-80.0, 80.0, 301)].concat(),
            derivative: f64::exp,
            floor: TINY,
        },
        Case {
            name: "softplus",
            inputs: || [decades(-30, 3, true), linear(-30.0, 30.0, 301)].concat(),
            derivative: |x| 1.0 / (1.0 + (-x).exp()),
            floor: TINY,
        },
        Case { name: "square", inputs: || decades(-15, 15, true), derivative: |x| 2.0 * x, floor: TINY },
    ]
}

fn executable(op: &str) -> Executable {
    let text = format!(
        "objective sweep {{\n    views x1, x2 = simclr_augment(x)\n    input z1: [N, D] = encoder(x1)\n    \
         input z2: [N, D] = encoder(x2)\n    per_sample = sum({op}(z1) * z2, axis=1)\n    loss = sum(per_sample)\n}}\n"
    );
    let mut sources = Sources::new();
    let mut compiled = sslc_compiler::compile_text(Path::new("objectives/sweep.ssl"), text, &mut sources)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.render(&sources)).collect::<Vec<_>>().join("\n")));
    Executable::new(compiled.modules.remove(0)).expect("differentiable")
}

/// `z1` holds the sweep (one row), `z2` ones: d loss / d z2 = op(z1), d loss / d z1 = op'(z1).
fn bindings(exe: &Executable, xs: &[f32], dtype: DType) -> Bindings {
    let n = xs.len();
    let z1 = Tensor::from_vec(xs.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), (1, n), &Device::Cpu).expect("z1");
    let z2 = Tensor::ones((1, n), DType::F64, &Device::Cpu).expect("z2");
    let overrides = Overrides::parse(&[]).expect("no overrides");
    let req = BindRequest::inputs_only(vec![("z1".into(), z1), ("z2".into(), z2)], &overrides, dtype);
    Bindings::new(&exe.module, req).expect("bindings")
}

fn grad(e: &Evaluation, name: &str) -> Vec<f64> {
    let (_, t) = e.grads.iter().find(|(n, _)| n == name).expect("a gradient of every input");
    t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1()).expect("readable")
}

/// The worst of `got` against `want`, relative to `|want|` (and at least `floor`), with the
/// input where it occurs; infinite where exactly one of the two is NaN or they differ in
/// infinity.
fn worst(xs: &[f32], got: &[f64], want: &[f64], floor: f64) -> (f64, f32) {
    let mut worst = (0.0, 0.0);
    for ((&x, &g), &w) in xs.iter().zip(got).zip(want) {
        let e = match (g, w) {
            _ if g == w || (g.is_nan() && w.is_nan()) => 0.0,
            _ if !g.is_finite() || !w.is_finite() => f64::INFINITY,
            _ => (g - w).abs() / w.abs().max(floor),
        };
        if e > worst.0 || e.is_nan() {
            worst = (e, x);
        }
    }
    worst
}

/// Values within 8 f32 ulp (relative 1e-6); results that round to f32's subnormal range are
/// held to an absolute 1e-38 instead.
const VALUE_TOLERANCE: f64 = 1e-6;
const DERIVATIVE_TOLERANCE: f64 = 1e-5;

fn check(label: &str, case: &Case, xs: &[f32], got: &Evaluation) {
    let exact: Vec<f64> = {
        let exe = executable(case.name);
        let reference = exe.evaluate(&bindings(&exe, xs, DType::F64)).expect("the reference runs");
        grad(&reference, "z2")
    };
    // The f64 reference result rounded to f32 is the best an f32 back end can do.
    let rounded: Vec<f64> = exact.iter().map(|&v| f64::from(v as f32)).collect();
    let (e, at) = worst(xs, &grad(got, "z2"), &rounded, 1e-38 / VALUE_TOLERANCE);
    assert!(e <= VALUE_TOLERANCE, "{label}: {}(x) is {e:.2e} off f64 at x = {at:e}", case.name);
    let slope: Vec<f64> = xs.iter().map(|&x| (case.derivative)(f64::from(x))).collect();
    let slope_rounded: Vec<f64> = slope.iter().map(|&v| f64::from(v as f32)).collect();
    let (e, at) = worst(xs, &grad(got, "z1"), &slope_rounded, case.floor);
    assert!(e <= DERIVATIVE_TOLERANCE, "{label}: d {}(x)/dx is {e:.2e} off at x = {at:e}", case.name);
}

#[test]
fn the_reference_evaluator_in_f64_matches_the_textbook_derivatives() {
    for case in cases() {
        let xs = (case.inputs)();
        let exe = executable(case.name);
        let got = exe.evaluate(&bindings(&exe, &xs, DType::F64)).expect("the reference runs");
        let slope: Vec<f64> = xs.iter().map(|&x| (case.derivative)(f64::from(x))).collect();
        let (e, at) = worst(&xs, &grad(&got, "z1"), &slope, case.floor);
        assert!(e <= 1e-12, "reference: d {}(x)/dx is {e:.2e} off at x = {at:e}", case.name);
    }
}

#[test]
fn the_cpu_back_end_is_accurate_over_each_domain() {
    for case in cases() {
        let xs = (case.inputs)();
        let exe = Arc::new(executable(case.name));
        let cpu = back::build(BackendKind::Cpu, exe.clone()).expect("compiles");
        let got = cpu.evaluate(&bindings(&exe, &xs, DType::F32)).expect("runs");
        check("cpu", &case, &xs, &got);
    }
}

#[test]
fn the_cuda_emulator_is_accurate_over_each_domain() {
    for case in cases() {
        let xs = (case.inputs)();
        let exe = executable(case.name);
        let plan = cuda::plan(&exe, Precision::F32).expect("lowers");
        let b = bindings(&exe, &xs, DType::F32);
        let outputs = emulate::run(&exe.module, &plan, &b).expect("the plan runs");
        let got = exe.collect(&outputs).expect("outputs");
        check("cuda emulator", &case, &xs, &got);
    }
}

#[test]
fn small_integer_powers_compile_to_products() {
    let text = "objective powers {\n    views x1, x2 = simclr_augment(x)\n    input z1: [N, D] = encoder(x1)\n    \
                input z2: [N, D] = encoder(x2)\n    per_sample = sum(z1 ** 2 + z2 ** 3 + z1 ** 4, axis=1)\n    \
                loss = mean(per_sample)\n}\n";
    let mut sources = Sources::new();
    let mut compiled =
        sslc_compiler::compile_text(Path::new("objectives/powers.ssl"), text.into(), &mut sources).expect("compiles");
    let exe = Executable::new(compiled.modules.remove(0)).expect("differentiable");
    let mut text = String::new();
    sslc_compiler::ir::print_program(&exe.module, &exe.optimized, &mut text);
    assert!(!text.contains("pow"), "no `pow` is left in the value or its gradient:\n{text}");
    assert!(text.contains("square"), "{text}");
}

/// The CUDA spellings of every op compile with the real NVRTC (a notice and a skip where the
/// library is missing, a failure under CI, where scripts/test.sh installs it).
#[test]
fn nvrtc_compiles_every_op() {
    if !cuda::nvrtc::available() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but libnvrtc is missing: run scripts/test.sh");
        eprintln!(
            "NOTICE: nvrtc_compiles_every_op skipped: libnvrtc.so.12/.13 not found (scripts/test.sh installs it)"
        );
        return;
    }
    std::env::set_var("SSLC_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-cache"));
    for case in cases() {
        let exe = executable(case.name);
        let plan = cuda::plan(&exe, Precision::default()).expect("lowers");
        let source = cuda::source(&exe, &plan);
        let cubin = cuda::nvrtc::compile(&source, 80).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(cubin.kernels.iter().all(|k| (k.spill_stores, k.spill_loads) == (0, 0)), "{} spills", case.name);
    }
}
