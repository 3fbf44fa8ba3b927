//! `sslc eval` and `sslc gradcheck`: values and exact gradients of an objective, from files
//! or random inputs, on any back end (`eval`) or the reference evaluator (`gradcheck`).

use super::common::{fail, load_objective, print_stdout, random_inputs, read_given, Backend};
use candle_core::{DType, Tensor};
use clap::Args;
use sslc_compiler::back;
use sslc_compiler::eval::{npy, BindRequest, Bindings, Overrides};
use sslc_compiler::gradcheck::Options;
use sslc_compiler::objective::Executable;
use std::path::PathBuf;
use std::sync::Arc;

/// Evaluate an objective's loss, per-sample losses and gradients on given inputs.
#[derive(Args)]
#[command(after_help = "Every input, constant and state can be given as a .npy file (float32 or float64, C order). \
Constants not given are built by the compiler (`etf` with seed 0); state not given starts at its declared initial value.\n\n\
Writes DIR/loss.npy (0-d), DIR/per_sample.npy ([N]) and DIR/grad_<name>.npy for every input and `learn` tensor, and prints a one-line JSON summary.\n\n\
Example:\n  sslc eval objectives/simclr_gh.ssl --input z1=z1.npy --input z2=z2.npy --out results/")]
pub struct EvalArgs {
    /// The objective.
    file: PathBuf,
    /// NAME=PATH.npy for an input, constant or state (repeatable).
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// NAME=VALUE overrides a parameter or a `dim` (repeatable), e.g. --set tau=0.5 --set warm_up=40%.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Where to evaluate (default: cpu, or reference with --f64).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Evaluate in f64 (reference back end only).
    #[arg(long)]
    f64: bool,
    /// Tile operand precision of the CUDA back end.
    #[arg(long, value_enum, default_value = "tf32")]
    precision: super::cuda::PrecisionArg,
    /// Largest accepted relative difference between the CUDA back end and the reference
    /// evaluator (checked on every `--backend cuda` run; exit status 1 beyond it).
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// Epochs completed, for schedules (default: the last epoch, where every ramp is at its end).
    #[arg(long)]
    epoch: Option<usize>,
    /// Epochs in the run, for schedules and run fractions.
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// Check the autodiff gradient against central finite differences, in f64.
#[derive(Args)]
#[command(after_help = "Inputs not given with --input are random normal [batch, dim] matrices; every input \
and `learn` tensor is checked, along --directions random unit directions (the derivative along each \
against its central difference), or entry by entry with --per-entry. Exit status 1 when any one's relative error exceeds the tolerance. `stopgrad` values are held fixed while differencing, so both sides \
differentiate the same function.\n\nExample:\n  sslc gradcheck objectives/simclr_gh.ssl --batch 8 --dim 128")]
pub struct GradcheckArgs {
    file: PathBuf,
    /// NAME=PATH.npy for an input, constant (a `learn` tensor, the labels) or state, instead of
    /// random values or the built ones (repeatable).
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// NAME=ROWSxCOLS: the shape of one random input, instead of [batch, dim] (repeatable).
    #[arg(long = "shape", value_name = "NAME=ROWSxCOLS")]
    shapes: Vec<String>,
    /// Rows of each random input.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Columns of each input (GH's ETF needs dim >= K - 1; lower K with --set K=...).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// NAME=VALUE overrides (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Largest accepted relative error.
    #[arg(long, default_value_t = 1e-5)]
    tolerance: f64,
    /// An input also passes when its absolute error is at most this (finite differences of
    /// an exactly zero gradient are noise, not a relative error).
    #[arg(long, default_value_t = 1e-8)]
    abs_tolerance: f64,
    /// Finite-difference step.
    #[arg(long, default_value_t = 1e-6)]
    step: f64,
    /// Random unit directions checked per input (the fast check, as PyTorch's
    /// `gradcheck(fast_mode=True)`): two loss evaluations each, whatever the input's size.
    #[arg(long, default_value_t = 4)]
    directions: usize,
    /// Check single entries instead of random directions: slower, but it shows which entries
    /// are wrong (see --max-entries).
    #[arg(long)]
    per_entry: bool,
    /// With --per-entry: entries checked per input, spread evenly; 0 checks all of them.
    #[arg(long, default_value_t = 256)]
    max_entries: usize,
}

pub fn eval(args: &EvalArgs) -> i32 {
    match eval_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn eval_inner(args: &EvalArgs) -> Result<(), i32> {
    let backend = match (args.backend, args.f64) {
        (None, false) => Backend::Cpu,
        (None | Some(Backend::Reference), true) => Backend::Reference,
        (Some(Backend::Cuda), true) => return Err(fail("the CUDA back end computes in f32; drop --f64")),
        (Some(_), true) => return Err(fail("--f64 evaluates on the reference back end only; use --backend reference")),
        (Some(b), false) => b,
    };
    if backend == Backend::Cuda {
        super::cuda::require_device().map_err(fail)?;
    }
    let module = load_objective(&args.file)?;
    let overrides = Overrides::parse(&args.set).map_err(fail)?;
    let mut req = BindRequest {
        inputs: Vec::new(),
        consts: Vec::new(),
        states: Vec::new(),
        overrides: &overrides,
        samples: None,
        index: None,
        epoch: args.epoch.unwrap_or(args.epochs.saturating_sub(1)),
        epochs: args.epochs,
        iteration: None,
        base_lr: 0.5,
        dtype: if args.f64 { DType::F64 } else { DType::F32 },
    };
    read_given(&module, &args.inputs, &mut req)?;
    let bindings = Bindings::new(&module, req).map_err(fail)?;
    let exe = Arc::new(Executable::new(module).map_err(|d| fail(d.message))?);
    // The CUDA back end checks itself against the reference evaluator on every run.
    let (result, parity) = match backend {
        Backend::Cuda => {
            let (result, errors) = super::cuda::evaluate(&exe, &bindings, args.precision.into()).map_err(fail)?;
            (result, Some(errors))
        }
        _ => (back::build(backend.kind(), exe.clone()).and_then(|b| b.evaluate(&bindings)).map_err(fail)?, None),
    };
    std::fs::create_dir_all(&args.out).map_err(|e| fail(format!("{}: {e}", args.out.display())))?;
    let write = |name: &str, t: &Tensor| npy::write(&args.out.join(name), t).map_err(fail);
    let dtype = bindings.dtype;
    write(
        "loss.npy",
        &Tensor::new(result.loss, &candle_core::Device::Cpu).and_then(|t| t.to_dtype(dtype)).map_err(fail)?,
    )?;
    if let Some(p) = &result.per_sample {
        write("per_sample.npy", p)?;
    }
    let mut grad_norms = serde_json::Map::new();
    for (name, g) in &result.grads {
        write(&format!("grad_{name}.npy"), g)?;
        let norm = g
            .sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_dtype(DType::F64))
            .and_then(|s| s.to_vec0::<f64>())
            .map_err(fail)?;
        grad_norms.insert(name.clone(), norm.sqrt().into());
    }
    let mut summary = serde_json::json!({
        "objective": exe.module.name,
        "backend": backend.kind().name(),
        "dtype": if args.f64 { "f64" } else { "f32" },
        "loss": result.loss,
        "metrics": result.metrics.iter().map(|(n, v)| (n.clone(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "grad_norms": grad_norms,
        "out": args.out.display().to_string(),
    });
    let worst = parity.as_ref().and_then(|errors| errors.iter().max_by(|a, b| a.1.total_cmp(&b.1)).cloned());
    if let Some(errors) = &parity {
        let errors: serde_json::Map<_, _> =
            errors.iter().map(|(n, e)| (n.clone(), serde_json::Value::from(*e))).collect();
        summary["relative_error_vs_reference"] = errors.into();
    }
    print_stdout(&format!("{summary}\n"));
    if !result.loss.is_finite() {
        eprintln!("warning: the loss is {}; check the inputs' scale", result.loss);
    }
    match worst {
        Some((name, error)) if error.is_nan() || error > args.tolerance => Err(fail(format!(
            "`{name}` differs from the reference evaluator by {error:.3e} (relative), more than --tolerance {:e}",
            args.tolerance
        ))),
        _ => Ok(()),
    }
}

pub fn gradcheck(args: &GradcheckArgs) -> i32 {
    let module = match load_objective(&args.file) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let overrides = match Overrides::parse(&args.set) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let mut req = BindRequest::inputs_only(Vec::new(), &overrides, DType::F64);
    if let Err(code) = read_given(&module, &args.inputs, &mut req) {
        return code;
    }
    req.inputs = match random_inputs(&module, &req.inputs, &args.shapes, args.batch, args.dim, args.seed * 1000) {
        Ok(inputs) => inputs,
        Err(code) => return code,
    };
    let bindings = match Bindings::new(&module, req) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let (options, checked) = match args.per_entry {
        true => (Options::entries(args.step, args.max_entries), "entries"),
        false => (Options::directions(args.step, args.directions.max(1), args.seed), "directions"),
    };
    let reports = match sslc_compiler::gradcheck::gradcheck(&module, &bindings, options) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut ok = true;
    for r in &reports {
        let pass = r.passes(args.tolerance, args.abs_tolerance);
        ok &= pass;
        let non_finite = match r.non_finite {
            0 => String::new(),
            n => format!("; {n} with a NaN or infinite gradient or difference"),
        };
        print_stdout(&format!(
            "{} {:<6} max abs error {:.3e}  max rel error {:.3e}  ({} {checked}{non_finite})\n",
            if pass { "ok  " } else { "FAIL" },
            r.input,
            r.max_abs_error,
            r.max_rel_error,
            r.entries
        ));
    }
    i32::from(!ok)
}
