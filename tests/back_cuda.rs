//! The CUDA back end without a GPU: the generated translation units are reviewed as
//! snapshots, every kernel is compiled by the real NVRTC for sm_80 and sm_90 with zero
//! register spills, the plans are run by the CPU emulator against the reference evaluator, and
//! the device path fails cleanly where there is no device.

use candle_core::DType;
use sslc_compiler::back::cuda::{self, emulate, nvrtc, plan::Step, Precision};
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::{build_const, BindRequest, Bindings, Overrides};
use sslc_compiler::ir::ConstInit;
use sslc_compiler::objective::Executable;
use std::path::{Path, PathBuf};

const OBJECTIVES: [&str; 8] = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"];

fn executable(name: &str) -> Executable {
    let path = PathBuf::from(format!("objectives/{name}.ssl"));
    let mut sources = Sources::new();
    let mut compiled = sslc_compiler::compile(&path, &mut sources).unwrap_or_else(|_| panic!("{name} compiles"));
    Executable::new(compiled.modules.remove(0)).expect("differentiable")
}

/// Seeded Gaussian embeddings of `rows` x `dim`, with `--set` overrides.
fn bindings(exe: &Executable, rows: usize, dim: usize, overrides: &[&str]) -> Bindings {
    let inputs = exe
        .module
        .inputs
        .iter()
        .enumerate()
        .map(|(k, (_, d))| {
            (d.name.clone(), build_const(&ConstInit::Randn { seed: 7 + k as u64 }, &[rows, dim]).expect("shape"))
        })
        .collect();
    let overrides = Overrides::parse(&overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("overrides");
    let req = BindRequest {
        inputs,
        consts: Vec::new(),
        states: Vec::new(),
        overrides: &overrides,
        samples: None,
        index: None,
        epoch: 999,
        epochs: 1000,
        iteration: None,
        base_lr: 0.5,
        dtype: DType::F32,
    };
    Bindings::new(&exe.module, req).expect("bindings")
}

/// The largest relative error of the emulated plan against the reference evaluator.
fn emulated_error(exe: &Executable, plan: &cuda::plan::Plan, b: &Bindings) -> (String, f64) {
    let outputs = emulate::run(&exe.module, plan, b).expect("the plan runs");
    let got = exe.collect(&outputs).expect("outputs");
    let want = exe.evaluate(b).expect("reference");
    let errors = cuda::relative_errors(&got, &want).expect("comparable");
    errors.into_iter().max_by(|a, b| a.1.total_cmp(&b.1)).expect("a loss at least")
}

#[test]
fn translation_unit_snapshots() {
    for name in OBJECTIVES {
        let exe = executable(name);
        let plan = cuda::plan(&exe, Precision::default()).expect("lowers");
        let source = cuda::source(&exe, &plan);
        assert!(source.contains(cuda::PRELUDE), "the unit starts with the device library");
        let generated = source.replace(cuda::PRELUDE, "// [the device library, compiler/src/back/cuda/prelude.cu]\n");
        insta::assert_snapshot!(format!("cuda_{name}"), generated);
    }
}

/// Batch and embedding sizes that share no factor with the tiles (64 rows, 32 columns) or
/// each other, so every index expression meets uneven edges.
const SHAPES: [(usize, usize); 3] = [(6, 16), (11, 7), (29, 40)];

#[test]
fn emulated_plans_match_the_reference_in_f32() {
    for name in OBJECTIVES {
        let exe = executable(name);
        let plan = cuda::plan(&exe, Precision::F32).expect("lowers");
        let small_anchors: &[&str] = if exe.module.dim_named("K").is_some() { &["K=8"] } else { &[] };
        for (rows, dim) in SHAPES {
            let b = bindings(&exe, rows, dim, small_anchors);
            let (output, error) = emulated_error(&exe, &plan, &b);
            assert!(error < 1e-4, "{name} at {rows}x{dim}: `{output}` is {error:e} off the reference");
        }
    }
}

/// Gradients through row gathers (scatter-adds, reductions with no atomics) in the emulator;
/// the kernels compile with NVRTC where it is installed.
#[test]
fn gather_gradients_match_the_reference_and_compile() {
    let mut sources = Sources::new();
    let path = Path::new("tests/fixtures/gathers.ssl");
    let mut compiled = sslc_compiler::compile(path, &mut sources).unwrap_or_else(|_| panic!("the fixture compiles"));
    let exe = Executable::new(compiled.modules.remove(0)).expect("differentiable");
    let plan = cuda::plan(&exe, Precision::F32).expect("lowers");
    for (rows, dim) in SHAPES {
        let (output, error) = emulated_error(&exe, &plan, &bindings(&exe, rows, dim, &[]));
        assert!(error < 1e-4, "gathers at {rows}x{dim}: `{output}` is {error:e} off the reference");
    }
    if nvrtc_or_skip("gather_gradients_match_the_reference_and_compile") {
        let source = cuda::source(&exe, &plan);
        nvrtc::compile(&source, 80).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_default_precision_stays_within_1e_3_of_f32_at_the_papers_dimensions() {
    for name in ["simclr_gh", "focal"] {
        let exe = executable(name);
        let b = bindings(&exe, 16, 128, &[]);
        let plan = cuda::plan(&exe, Precision::default()).expect("lowers");
        let (output, error) = emulated_error(&exe, &plan, &b);
        assert!(error < 1e-3, "{name}: `{output}` is {error:e} off the reference in {}", Precision::default().name());
    }
}

#[test]
fn the_emulator_catches_a_wrong_constant() {
    let exe = executable("simclr");
    let b = bindings(&exe, 6, 16, &[]);
    let mut plan = cuda::plan(&exe, Precision::F32).expect("lowers");
    let changed = plan.kernels.iter_mut().find_map(|k| match &mut k.body {
        cuda::plan::Body::Grid(steps) => steps.iter_mut().find_map(|step| match step {
            Step::Map { body, .. } if format!("{body:?}").contains("Float(2.0)") => {
                body.body.iter_mut().for_each(halve_less);
                Some(())
            }
            _ => None,
        }),
        _ => None,
    });
    assert!(changed.is_some(), "some kernel averages the two views' terms");
    let (_, error) = emulated_error(&exe, &plan, &b);
    assert!(error > 1e-2, "dividing by 2.5 instead of 2 must show ({error:e})");
}

/// Replaces the literal 2 by 2.5 wherever it occurs in a statement.
fn halve_less(s: &mut cuda::c::CStmt) {
    use cuda::c::{CExpr, CStmt};
    fn walk(e: &mut CExpr) {
        match e {
            CExpr::Float(v) if *v == 2.0 => *v = 2.5,
            CExpr::Cast(_, a) => walk(a),
            CExpr::Binary(_, a, b) | CExpr::Index(a, b) => {
                walk(a);
                walk(b);
            }
            CExpr::Ternary(c, a, b) => {
                walk(c);
                walk(a);
                walk(b);
            }
            CExpr::Call(_, args) | CExpr::Prim(_, _, args) => args.iter_mut().for_each(walk),
            _ => {}
        }
    }
    match s {
        CStmt::Let { init: e, .. } | CStmt::Return(e) | CStmt::Expr(e) => walk(e),
        CStmt::Store { value, .. } => walk(value),
        _ => {}
    }
}

/// Whether the NVRTC tests can run: a visible notice when the library is missing, and a
/// failure under CI, where scripts/test.sh installs it.
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc::available() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but libnvrtc is missing: run scripts/test.sh");
    eprintln!("NOTICE: {test} skipped: libnvrtc.so.12/.13 not found (scripts/test.sh installs it into .tools/)");
    false
}

#[test]
fn nvrtc_compiles_every_kernel_without_spills() {
    if !nvrtc_or_skip("nvrtc_compiles_every_kernel_without_spills") {
        return;
    }
    // A cache of this build's own: reruns are fast, a clean checkout compiles everything.
    std::env::set_var("SSLC_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-cache"));
    let units: Vec<(&str, String)> = OBJECTIVES
        .iter()
        .map(|&name| {
            let exe = executable(name);
            let plan = cuda::plan(&exe, Precision::default()).expect("lowers");
            (name, cuda::source(&exe, &plan))
        })
        .collect();
    let jobs: Vec<(usize, u32)> = (0..units.len()).flat_map(|u| [(u, 80), (u, 90)]).collect();
    let results: Vec<((usize, u32), nvrtc::Cubin)> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(jobs.len().div_ceil(2))
            .map(|chunk| {
                let units = &units;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(u, arch)| {
                            (
                                (u, arch),
                                nvrtc::compile(&units[u].1, arch).unwrap_or_else(|e| panic!("{}: {e}", units[u].0)),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("compiles")).collect()
    });
    let mut table =
        String::from("objective / kernel                              sm_80 regs  sm_90 regs  smem bytes\n");
    for (u, (name, _)) in units.iter().enumerate() {
        let stats = |arch| &results.iter().find(|((v, a), _)| *v == u && *a == arch).expect("compiled").1.kernels;
        let (sm80, sm90) = (stats(80), stats(90));
        assert!(!sm90.is_empty(), "{name}: ptxas reported no kernels");
        for (a, b) in sm80.iter().zip(sm90) {
            assert_eq!(a.name, b.name);
            for k in [a, b] {
                assert_eq!((k.spill_stores, k.spill_loads), (0, 0), "{name}: {} spills registers", k.name);
            }
            table += &format!(
                "{:<48}{:>10}{:>12}{:>12}\n",
                format!("{name} / {}", a.name),
                a.registers,
                b.registers,
                b.shared_bytes
            );
        }
    }
    insta::assert_snapshot!("cuda_registers", table);
}

#[test]
fn a_failed_compile_reports_the_log_and_the_source() {
    if !nvrtc_or_skip("a_failed_compile_reports_the_log_and_the_source") {
        return;
    }
    let source = "extern \"C\" __global__ void broken() { undefined_name = 1; }\n";
    let error = nvrtc::compile(source, 90).expect_err("does not compile").to_string();
    assert!(error.contains("undefined_name") && error.contains("error"), "{error}");
    assert!(error.contains("---- generated source ----") && error.ends_with(source), "{error}");
}

#[test]
fn eval_on_cuda_without_a_device_exits_1_with_a_clear_message() {
    if cuda::driver::device().is_ok() {
        eprintln!("NOTICE: a CUDA device is present; the no-device message is not tested here");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sslc"))
        .args(["eval", "objectives/simclr.ssl", "--backend", "cuda", "--out"])
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-device"))
        .output()
        .expect("sslc runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no CUDA device found"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A plan of one kernel whose only scalar parameter is a `bool` (from the epoch: true once
/// training has started), storing 1 where it is true and 2 where it is false.
fn bool_parameter_plan() -> cuda::plan::Plan {
    use cuda::c::{self, CExpr, CStmt, CType, Lambda};
    use cuda::plan::{Body, Buffer, BufferSource, HostScalar, KernelPlan, Plan, Scalar, Use};
    let store = CStmt::Store {
        target: c::index(c::var("out"), c::var("i")),
        value: c::ternary(c::var("started"), CExpr::Float(1.0), CExpr::Float(2.0)),
    };
    Plan {
        buffers: vec![Buffer {
            name: "out".into(),
            elem: sslc_compiler::ir::Elem::Real,
            shape: vec![sslc_compiler::ir::Dim::constant(1)],
            source: BufferSource::Temp,
        }],
        scalars: vec![Scalar { name: "started".into(), ty: CType::Bool, value: HostScalar::Epoch }],
        kernels: vec![KernelPlan {
            name: "flag".into(),
            doc: "a bool parameter".into(),
            body: Body::Grid(vec![Step::Map {
                count: CExpr::Int(1),
                body: Lambda { params: vec![(CType::LongLong, "i".into())], body: vec![store] },
            }]),
            buffers: vec![(0, Use { read: false, written: true })],
            scalars: vec![0],
        }],
        outputs: vec![("out".into(), 0)],
        precision: Precision::F32,
    }
}

/// A `bool` kernel parameter reaches the emulator as a bool and is marshalled for the driver
/// as the 1-byte C `bool` the kernel declares, not as a 4-byte f32 (whose lowest byte, 0 for
/// 1.0f, a kernel would read as false).
#[test]
fn a_bool_parameter_is_a_bool_in_the_emulator_and_one_byte_at_launch() {
    let exe = executable("simclr");
    let plan = bool_parameter_plan();
    assert!(plan.kernels()[0].to_string().contains("const bool started"), "{}", plan.kernels()[0]);
    for (epoch, started, stored) in [(0, false, 2.0), (3, true, 1.0)] {
        let mut b = bindings(&exe, 4, 8, &[]);
        b.epoch = epoch;
        let values = emulate::scalar_values(&plan, &exe.module, &b);
        assert_eq!(values, vec![emulate::Value::Bool(started)]);
        let out = emulate::run(&exe.module, &plan, &b).expect("the plan runs");
        assert_eq!(out[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![stored]);
        let args = cuda::driver::scalar_args(&plan, &plan.kernels[0], &values).expect("marshalled");
        assert_eq!(args, vec![cuda::driver::ScalarArg::Bool(started)]);
        assert_eq!(args[0].bytes(), vec![u8::from(started)]);
        assert_eq!(args[0].bytes().len(), cuda::c::CType::Bool.size());
    }
    // A host value of another kind than the parameter declares is refused, never pushed.
    let error = cuda::driver::scalar_args(&plan, &plan.kernels[0], &[emulate::Value::Real(1.0)]).unwrap_err();
    assert!(error.to_string().contains("declares `bool started`"), "{error}");
}
