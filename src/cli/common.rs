//! What several commands share: the back-end choice, loading one objective, random inputs,
//! error reporting and printing. Commands import from here and never from each other, so each
//! command file can change on its own.

use candle_core::Tensor;
use clap::ValueEnum;
use sslc_compiler::back::BackendKind;
use sslc_compiler::diag::{print_all, Diagnostic, Sources};
use sslc_compiler::front::ImportRoots;
use sslc_compiler::ir::Module;
use sslc_runtime::device::DeviceSpec;
use std::path::Path;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Backend {
    /// The reference evaluator: exact, simple, slow.
    Reference,
    /// Fused kernels JIT-compiled with Cranelift.
    Cpu,
    /// Fused CUDA kernels compiled with NVRTC.
    Cuda,
}

impl Backend {
    /// Where the objective runs when not told: where the backbone does (in place on a GPU).
    pub fn for_device(device: DeviceSpec) -> Backend {
        match device {
            DeviceSpec::Cuda(_) => Backend::Cuda,
            DeviceSpec::Cpu => Backend::Cpu,
        }
    }

    pub fn kind(self) -> BackendKind {
        match self {
            Backend::Reference => BackendKind::Reference,
            Backend::Cpu => BackendKind::Cpu,
            Backend::Cuda => BackendKind::Cuda,
        }
    }
}

/// The folders this process's `--import-path` flags allow imports to read, besides each
/// objective's own folder: one setting for the whole command line, set once at start.
static IMPORT_ROOTS: std::sync::OnceLock<ImportRoots> = std::sync::OnceLock::new();

/// Sets the folders of `--import-path` (the first call wins; `main` makes it).
pub fn allow_imports_from(folders: Vec<std::path::PathBuf>) {
    let _ = IMPORT_ROOTS.set(ImportRoots::new(folders));
}

/// The import roots this command line allows.
pub fn import_roots() -> &'static ImportRoots {
    IMPORT_ROOTS.get_or_init(ImportRoots::default)
}

/// Compiles `file` with the imports this command line allows.
pub fn compile(file: &Path, sources: &mut Sources) -> Result<sslc_compiler::Compiled, Vec<Diagnostic>> {
    sslc_compiler::compile_with(file, import_roots(), sources)
}

/// Compiles the one objective of `file`, printing diagnostics on failure.
pub fn load_objective(file: &Path) -> Result<Module, i32> {
    let mut sources = Sources::new();
    match compile(file, &mut sources) {
        Ok(mut c) if c.modules.len() == 1 => Ok(c.modules.remove(0)),
        Ok(c) => {
            eprintln!("error: {} declares {} objectives; expected exactly one", file.display(), c.modules.len());
            Err(1)
        }
        Err(diags) => {
            print_all(&diags, &sources);
            Err(1)
        }
    }
}

/// A thread count from 1 to [`max_threads`]: far more threads than cores only slow a run,
/// and a typo such as `--threads 1000000` would spawn threads until the machine gives out.
pub fn thread_count(text: &str) -> Result<usize, String> {
    let most = max_threads();
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > most => Err(format!(
            "is {n}, more than {most} (8 per core of this machine's {}); leave it out to use every core",
            most / 8
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The most threads a run may ask for: 8 per core.
pub fn max_threads() -> usize {
    8 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reports an error on stderr; the command's exit status is 1.
pub fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("error: {message}");
    1
}

/// Writes to stdout; a reader that went away (`sslc emit ... | head`) is not an error.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A seeded standard normal `[rows, cols]` f64 matrix.
pub fn random_normal(rows: usize, cols: usize, seed: u64) -> Result<Tensor, String> {
    use rand::SeedableRng;
    sslc_compiler::eval::check_fits(&format!("random inputs of {rows} x {cols}"), &[rows, cols], 8)
        .map_err(|e| format!("{e}; lower --batch or --dim"))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..rows * cols).map(|_| sslc_rng::standard_normal(&mut rng)).collect();
    Ok(Tensor::from_vec(values, (rows, cols), &candle_core::Device::Cpu).expect("shape matches the data"))
}

/// A trained run read back from its checkpoint: what was saved, the run's recorded identity,
/// and its encoder with the saved weights. `path` may also be the run directory. Errors name
/// the file and what to give instead.
pub struct Trained {
    pub checkpoint: sslc_runtime::checkpoint::Checkpoint,
    pub identity: sslc_runtime::train::RunIdentity,
    pub encoder: sslc_runtime::model::Encoder,
}

/// The encoder is built on `compute`'s device (checkpoints are device-independent).
pub fn load_trained(path: &Path, compute: &sslc_runtime::device::Compute) -> Result<Trained, i32> {
    use sslc_runtime::checkpoint::{Checkpoint, CheckpointError};
    let path = if path.is_dir() { path.join(sslc_runtime::train::CHECKPOINT_FILE) } else { path.to_path_buf() };
    if !path.exists() {
        return Err(fail(format!(
            "{} does not exist; give the checkpoint.safetensors of a run directory written by `sslc run` \
             (or the run directory itself)",
            path.display()
        )));
    }
    let checkpoint = Checkpoint::load(&path).map_err(|e| match e {
        CheckpointError::Foreign { path, reason } => fail(format!(
            "{} is not an sslc checkpoint ({reason}); give the checkpoint.safetensors of a run directory written \
             by `sslc run`",
            path.display()
        )),
        other => fail(other),
    })?;
    let identity: sslc_runtime::train::RunIdentity =
        serde_json::from_value(checkpoint.config.clone()).map_err(|e| {
            fail(format!("{}: unreadable run configuration ({e}); was it written by this sslc?", path.display()))
        })?;
    let encoder = sslc_runtime::model::Encoder::on(identity.encoder.clone(), compute).map_err(fail)?;
    encoder.load_state(&checkpoint.model).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(Trained { checkpoint, identity, encoder })
}

/// Binds `--input NAME=PATH.npy` values: an input, a constant (a `learn` tensor, the labels), a
/// state, or `index`; every other input is then random. Errors name the flag and what the
/// objective has.
pub fn read_given(module: &Module, items: &[String], req: &mut sslc_compiler::eval::BindRequest) -> Result<(), i32> {
    for item in items {
        let Some((name, path)) = item.split_once('=') else {
            return Err(fail(format!("--input {item}: expected NAME=PATH.npy")));
        };
        let tensor =
            sslc_compiler::eval::npy::read(Path::new(path)).map_err(|e| fail(format!("--input {name}: {e}")))?;
        let slot = if module.input_named(name).is_some() {
            &mut req.inputs
        } else if module.const_named(name).is_some() {
            &mut req.consts
        } else if module.state_named(name).is_some() {
            &mut req.states
        } else if name == "index" {
            req.index = Some(tensor);
            continue;
        } else {
            let mut known: Vec<&str> = module.inputs.iter().map(|(_, d)| d.name.as_str()).collect();
            known.extend(module.consts.iter().map(|(_, d)| d.name.as_str()));
            known.extend(module.states.iter().map(|(_, d)| d.name.as_str()));
            return Err(fail(format!(
                "--input {name}: `{}` has no input, constant or state `{name}` (it has {})",
                module.name,
                known.join(", ")
            )));
        };
        if !tensor.dtype().is_float() {
            return Err(fail(format!(
                "--input {name}: {path} holds integers; inputs, constants and state are float32 or float64"
            )));
        }
        slot.push((name.to_string(), tensor));
    }
    Ok(())
}

/// Random normal values (`seed + k` for the `k`th input) for the inputs not given: `[batch,
/// dim]`, or the shape `--shape NAME=ROWSxCOLS` gives (an input wider or narrower than the
/// others).
pub fn random_inputs(
    module: &Module,
    given: &[(String, Tensor)],
    shapes: &[String],
    batch: usize,
    dim: usize,
    seed: u64,
) -> Result<Vec<(String, Tensor)>, i32> {
    let mut sized = Vec::new();
    for item in shapes {
        let parsed = item.split_once('=').and_then(|(name, shape)| {
            let (rows, cols) = shape.split_once(['x', 'X'])?;
            Some((name, rows.trim().parse::<usize>().ok()?, cols.trim().parse::<usize>().ok()?))
        });
        let Some((name, rows, cols)) = parsed.filter(|(_, r, c)| *r > 0 && *c > 0) else {
            return Err(fail(format!("--shape {item}: expected NAME=ROWSxCOLS with positive sizes, e.g. z1=64x128")));
        };
        if module.input_named(name).is_none() {
            let known: Vec<&str> = module.inputs.iter().map(|(_, d)| d.name.as_str()).collect();
            return Err(fail(format!(
                "--shape {name}: `{}` has no input `{name}` (its inputs are {}); constants and state take their \
                 shapes from their declarations: change those with --set DIM=SIZE",
                module.name,
                known.join(", ")
            )));
        }
        if given.iter().any(|(n, _)| n == name) {
            return Err(fail(format!("--shape {name}: `{name}` is given by --input, which fixes its shape")));
        }
        sized.push((name, rows, cols));
    }
    let mut inputs = given.to_vec();
    for (k, (_, d)) in module.inputs.iter().enumerate() {
        if !given.iter().any(|(n, _)| *n == d.name) {
            let (rows, cols) =
                sized.iter().find(|(n, _, _)| *n == d.name).map_or((batch, dim), |&(_, rows, cols)| (rows, cols));
            inputs.push((d.name.clone(), random_normal(rows, cols, seed + k as u64).map_err(fail)?));
        }
    }
    Ok(inputs)
}
