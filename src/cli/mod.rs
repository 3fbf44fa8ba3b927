//! The command line. Each subcommand lives in its own file; exit codes are uniform:
//! 0 success, 1 the input was wrong (diagnostics on stderr), 2 usage errors (from clap).

mod bench;
mod check;
mod common;
mod compare;
mod config;
mod cuda;
mod eval;
mod export;
mod fmt;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sslc",
    version,
    about = "A compiler and runtime for self-supervised learning objectives",
    long_about = "sslc compiles objectives written in the .ssl language (SimCLR, Focal, SDCLR, BCL, \
Geometric Harmonization, or your own) into gradients and fused kernels, and trains backbones with them \
on long-tailed image benchmarks.\n\nStart with `sslc check objectives/simclr_gh.ssl`; the language is \
described in docs/language.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Also let imports read .ssl files in DIR and below (repeatable). Without it, an
    /// objective imports only from its own folder and below, so a shared objective cannot
    /// read other files of yours.
    #[arg(long = "import-path", value_name = "DIR", global = true)]
    import_path: Vec<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    Check(check::CheckArgs),
    Emit(check::EmitArgs),
    // Boxed: its flags make it several times larger than every other command's.
    Run(Box<run::RunArgs>),
    Probe(run::ProbeArgs),
    Split(run::SplitArgs),
    BenchTrain(run::BenchTrainArgs),
    /// One synthetic training step, weights written as safetensors (for scripts/gpu-check.sh).
    #[command(hide = true)]
    TrainStep(run::TrainStepArgs),
    Compare(compare::CompareArgs),
    Eval(eval::EvalArgs),
    Gradcheck(eval::GradcheckArgs),
    Bench(bench::BenchArgs),
    Export(export::ExportArgs),
    Embed(export::EmbedArgs),
    Fmt(fmt::FmtArgs),
    Lsp(LspArgs),
}

/// Serve the Language Server Protocol on stdin/stdout, for editors: diagnostics as you type,
/// shapes on hover, go to definition, completion, outline and formatting.
#[derive(clap::Args)]
#[command(after_help = "Editors start this themselves (see editors/ and docs/editors.md); it is not meant to be \
run by hand.")]
pub struct LspArgs {}

pub fn main() -> i32 {
    let cli = Cli::parse();
    common::allow_imports_from(cli.import_path);
    match cli.command {
        Command::Check(args) => check::check(&args),
        Command::Emit(args) => check::emit(&args),
        Command::Run(args) => run::run(&args),
        Command::Probe(args) => run::probe(&args),
        Command::Split(args) => run::split(&args),
        Command::BenchTrain(args) => run::bench_train(&args),
        Command::TrainStep(args) => run::train_step(&args),
        Command::Compare(args) => compare::compare(&args),
        Command::Eval(args) => eval::eval(&args),
        Command::Gradcheck(args) => eval::gradcheck(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Export(args) => export::export(&args),
        Command::Embed(args) => export::embed(&args),
        Command::Fmt(args) => fmt::fmt(&args),
        Command::Lsp(_) => crate::lsp::run(),
    }
}
