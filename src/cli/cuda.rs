//! The CUDA back end on the command line: `sslc emit --stage cuda` and the `--backend cuda`
//! arms of `sslc eval`, which always checks the device's results against the reference
//! evaluator in the same process.

use super::common::{fail, print_stdout};
use clap::ValueEnum;
use sslc_compiler::back::cuda::{self, Precision};
use sslc_compiler::diag::{print_all, Sources};
use sslc_compiler::eval::Bindings;
use sslc_compiler::objective::{Evaluation, Executable};
use std::path::Path;
use std::sync::Arc;

/// Operand precision of the tensor-core similarity tiles (accumulation is always f32).
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum PrecisionArg {
    /// No tensor cores: exact f32 products.
    F32,
    /// TF32 tensor cores; within 1e-3 relative of f32.
    Tf32,
    /// BF16 tensor cores; fastest, least accurate.
    Bf16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Tf32 => Precision::Tf32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// Prints the CUDA translation unit of every objective in `file`.
pub fn emit(file: &Path, precision: Precision) -> i32 {
    let mut sources = Sources::new();
    let compiled = match super::common::compile(file, &mut sources) {
        Ok(c) => c,
        Err(diags) => {
            print_all(&diags, &sources);
            return 1;
        }
    };
    for m in compiled.modules {
        let exe = match Executable::new(m) {
            Ok(exe) => exe,
            Err(d) => {
                print_all(&[d], &sources);
                return 1;
            }
        };
        match cuda::plan(&exe, precision) {
            Ok(plan) => print_stdout(&cuda::source(&exe, &plan)),
            Err(e) => return fail(e),
        }
    }
    0
}

/// Fails early, before inputs are read, where there is no usable device.
pub fn require_device() -> Result<(), String> {
    cuda::driver::device().map(|_| ()).map_err(|e| e.to_string())
}

/// The device's evaluation and each output's relative difference from the reference's.
pub fn evaluate(
    exe: &Arc<Executable>,
    bindings: &Bindings,
    precision: Precision,
) -> Result<(Evaluation, Vec<(String, f64)>), String> {
    let device =
        cuda::Cuda::new(exe.clone(), precision).and_then(|c| c.evaluate(bindings)).map_err(|e| e.to_string())?;
    let reference = exe.evaluate(bindings).map_err(|e| e.to_string())?;
    let errors = cuda::relative_errors(&device, &reference).map_err(|e| e.to_string())?;
    Ok((device, errors))
}
