//! `sslc check` and `sslc emit`: the front end on its own.

use super::common::print_stdout;
use clap::{Args, ValueEnum};
use sslc_compiler::diag::{print_all, Sources};
use std::path::PathBuf;

/// Check objectives and libraries for errors (syntax, names, shapes, gradients) without running
/// them, and warn where the optimised program still stores a batch-squared matrix.
#[derive(Args)]
#[command(after_help = "Exit status: 0 when every file checks clean (warnings included), 1 when any has errors \
(printed to stderr with file:line:col, a caret and a hint), 2 on usage errors.\n\nA warning names every \
[N, N]-sized (or larger) value the optimised program still keeps in memory, with its size at N = 4096 and why \
pairwise fusion did not remove it; `sslc emit FILE --stage fusion` lists what was fused.\n\nExample:\n  \
sslc check objectives/*.ssl")]
pub struct CheckArgs {
    /// `.ssl` files to check (their imports are checked too).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// NAME=VALUE overrides of a parameter or `dim`, checked as `sslc run --set` would take them
    /// (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Also size the objective at this batch, checking the relations its shapes state (MoCo's
    /// `queue[N:]` needs N <= Q) as `sslc run` does before reading any data.
    #[arg(long, value_parser = super::config::at_least_one)]
    batch_size: Option<usize>,
}

/// Checks `--set` and `--batch-size` against one objective, as a run would.
fn settings_fit(module: &sslc_compiler::ir::Module, args: &CheckArgs) -> Result<(), String> {
    let overrides = sslc_compiler::eval::Overrides::parse(&args.set).map_err(|e| e.to_string())?;
    overrides.check(module).map_err(|e| e.to_string())?;
    let Some(batch) = args.batch_size else { return Ok(()) };
    let kind = sslc_compiler::back::BackendKind::Reference;
    let tiles = sslc_compiler::back::cuda::Precision::F32;
    let objective = sslc::objective::CompiledObjective::with_precision(module.clone(), overrides, 0.5, kind, tiles)
        .map_err(|e| e.to_string())?;
    objective.check_batch(batch).map_err(|e| format!("{e} (at --batch-size {batch})"))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The syntax tree, as parsed.
    Ast,
    /// The typed IR after lowering and validation.
    Ir,
    /// The loss program with its gradient appended (autodiff), before optimisation.
    Grad,
    /// The gradient program after CSE, folding, dead-code elimination and pairwise fusion.
    Opt,
    /// What fusion did: the pairwise kernels, every product over the batch left unfused and
    /// why, and the batch-squared values still stored.
    Fusion,
    /// The Cranelift IR the CPU back end generates for the optimised gradient program.
    Clif,
    /// The CUDA C++ translation unit of every kernel (forward and gradient), as NVRTC compiles it.
    Cuda,
}

/// Print a compilation stage of an objective.
#[derive(Args)]
#[command(after_help = "Example:\n  sslc emit objectives/simclr.ssl --stage ir")]
pub struct EmitArgs {
    /// The `.ssl` file.
    file: PathBuf,
    /// Which stage to print.
    #[arg(long, value_enum, default_value = "ir")]
    stage: Stage,
    /// Tile operand precision of `--stage cuda`.
    #[arg(long, value_enum, default_value = "tf32")]
    precision: super::cuda::PrecisionArg,
}

pub fn check(args: &CheckArgs) -> i32 {
    let mut failed = false;
    for file in &args.files {
        let mut sources = Sources::new();
        match super::common::compile(file, &mut sources) {
            Ok(c) => {
                let names: Vec<String> = c.modules.iter().map(|m| m.name.clone()).collect();
                let mut refused = false;
                for m in &c.modules {
                    if let Err(e) = settings_fit(m, args) {
                        eprintln!("error: {} (objective `{}`): {e}", file.display(), m.name);
                        refused = true;
                    }
                }
                let warnings = sslc_compiler::check_warnings(c.modules);
                print_all(&warnings, &sources);
                if refused || warnings.iter().any(|d| !d.warning) {
                    failed = true;
                    continue;
                }
                if names.is_empty() {
                    eprintln!("{}: ok (library)", file.display());
                } else {
                    eprintln!("{}: ok ({})", file.display(), names.join(", "));
                }
            }
            Err(diags) => {
                print_all(&diags, &sources);
                failed = true;
            }
        }
    }
    i32::from(failed)
}

pub fn emit(args: &EmitArgs) -> i32 {
    let mut sources = Sources::new();
    match args.stage {
        Stage::Cuda => super::cuda::emit(&args.file, args.precision.into()),
        Stage::Ast => match sslc_compiler::front::load_with(&args.file, super::common::import_roots(), &mut sources) {
            Ok(files) => {
                if let Some(root) = files.last() {
                    print_stdout(&format!("{:#?}\n", root.ast));
                }
                0
            }
            Err(diags) => {
                print_all(&diags, &sources);
                1
            }
        },
        Stage::Ir | Stage::Grad | Stage::Opt | Stage::Fusion | Stage::Clif => {
            match super::common::compile(&args.file, &mut sources) {
                Ok(c) => {
                    for m in c.modules {
                        match stage_text(m, args.stage, &sources) {
                            Ok(text) => print_stdout(&text),
                            Err(d) => {
                                print_all(&[d], &sources);
                                return 1;
                            }
                        }
                    }
                    0
                }
                Err(diags) => {
                    print_all(&diags, &sources);
                    1
                }
            }
        }
    }
}

fn stage_text(
    m: sslc_compiler::ir::Module,
    stage: Stage,
    sources: &Sources,
) -> Result<String, sslc_compiler::diag::Diagnostic> {
    use sslc_compiler::ir::print_program;
    if let Stage::Ir = stage {
        return Ok(format!("{}\n", sslc_compiler::ir::print_module(&m)));
    }
    let exe = sslc_compiler::objective::Executable::new(m)?;
    if let Stage::Clif = stage {
        let cpu = sslc_compiler::back::clif::Cpu::new(std::sync::Arc::new(exe))
            .map_err(|e| sslc_compiler::diag::Diagnostic::new(e.to_string()))?;
        return Ok(cpu.clif().to_string());
    }
    if let Stage::Fusion = stage {
        return Ok(sslc_compiler::fuse::report(&exe).text(&exe, sources));
    }
    let program = match stage {
        Stage::Opt => exe.optimized.clone(),
        _ => exe.gradient.clone(),
    };
    let mut text = format!("gradient of {} {{\n", exe.module.name);
    print_program(&exe.module, &program, &mut text);
    text.push_str("}\n");
    Ok(text)
}
