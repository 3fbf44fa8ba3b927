//! Helpers shared by the evaluator, gradient and CLI tests: deterministic matrices, candle
//! conversions, compiling and binding objectives, error measures, and running the binary.
//! `method` holds the independent re-implementation of METHOD.md's formulas.
#![allow(dead_code)] // each test crate uses its own subset

pub mod method;

use candle_core::{DType, Device, Tensor};
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::{BindRequest, Bindings, Overrides};
use sslc_compiler::ir::Module;
use sslc_compiler::objective::{Evaluation, Executable};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A dense row-major matrix of f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Mat {
        Mat { rows, cols, data: (0..rows * cols).map(|i| f(i / cols, i % cols)).collect() }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.cols + j] = v;
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// `self · otherᵀ` (`[r, c] × [s, c]ᵀ → [r, s]`).
    pub fn matmul_t(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.cols);
        Mat::from_fn(self.rows, other.rows, |i, j| dot(self.row(i), other.row(j)))
    }

    /// `self · other` (`[r, c] × [c, s] → [r, s]`).
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows);
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                if a == 0.0 {
                    continue;
                }
                for (o, b) in out.row_mut(i).iter_mut().zip(other.row(k)) {
                    *o += a * b;
                }
            }
        }
        out
    }

    /// Rows `start..end`.
    pub fn rows_range(&self, start: usize, end: usize) -> Mat {
        Mat { rows: end - start, cols: self.cols, data: self.data[start * self.cols..end * self.cols].to_vec() }
    }

    /// The rows of `self` followed by the rows of `other`.
    pub fn concat_rows(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.cols);
        let mut data = self.data.clone();
        data.extend_from_slice(&other.data);
        Mat { rows: self.rows + other.rows, cols: self.cols, data }
    }

    /// Every entry rounded to the nearest f32, so an f32 evaluation sees exactly these values.
    pub fn rounded_to_f32(&self) -> Mat {
        Mat { data: self.data.iter().map(|&v| v as f32 as f64).collect(), ..self.clone() }
    }

    pub fn tensor(&self, dtype: DType) -> Tensor {
        Tensor::from_vec(self.data.clone(), (self.rows, self.cols), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .expect("shape matches the data")
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A seeded stream of uniform and standard normal numbers (ChaCha8, Box–Muller).
pub struct Rng(rand_chacha::ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        use rand::SeedableRng;
        Rng(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        use rand::Rng as _;
        self.0.random::<f64>()
    }

    pub fn normal(&mut self) -> f64 {
        sslc_rng::standard_normal(&mut self.0)
    }

    pub fn normal_mat(&mut self, rows: usize, cols: usize) -> Mat {
        Mat { rows, cols, data: (0..rows * cols).map(|_| self.normal()).collect() }
    }
}

pub fn vector_tensor(values: &[f64], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), values.len(), &Device::Cpu).and_then(|t| t.to_dtype(dtype)).expect("a vector")
}

/// Every entry of a tensor, flattened, as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()).expect("a real tensor")
}

/// `max |actual − expected| / max(max |expected|, floor)`: the error relative to the
/// tensor's scale; `floor` keeps a tensor that is (near) zero from dividing by zero.
pub fn rel_error(actual: &[f64], expected: &[f64], floor: f64) -> f64 {
    assert_eq!(actual.len(), expected.len(), "compared tensors differ in size");
    let diff = actual.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = expected.iter().fold(floor, |m, b| m.max(b.abs()));
    if actual.iter().any(|a| !a.is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}

/// The root of the repository (tests run there; paths below are relative to it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles a file holding exactly one objective.
pub fn compile_objective(path: &str) -> Module {
    let mut sources = Sources::new();
    let full = repo_root().join(path);
    match sslc_compiler::compile(&full, &mut sources) {
        Ok(mut c) => {
            assert_eq!(c.modules.len(), 1, "{path} declares one objective");
            c.modules.remove(0)
        }
        Err(diags) => panic!("{path} does not compile:\n{}", render(&diags, &sources)),
    }
}

/// Compiles objective text as if it were the file `path` (imports resolve from its folder).
pub fn compile_objective_text(path: &str, text: &str) -> Module {
    let mut sources = Sources::new();
    let full = repo_root().join(path);
    match sslc_compiler::compile_text(&full, text.to_string(), &mut sources) {
        Ok(mut c) => {
            assert_eq!(c.modules.len(), 1, "the test objective declares one objective");
            c.modules.remove(0)
        }
        Err(diags) => panic!("the test objective does not compile:\n{}", render(&diags, &sources)),
    }
}

fn render(diags: &[sslc_compiler::diag::Diagnostic], sources: &Sources) -> String {
    diags.iter().map(|d| d.render(sources)).collect::<Vec<_>>().join("\n")
}

/// Everything an evaluation needs besides the module; `Default` is the end of a 1000-epoch
/// run (every ramp at 1) in f64 with nothing supplied.
#[derive(Clone)]
pub struct Setup<'a> {
    pub inputs: Vec<(&'a str, Tensor)>,
    pub consts: Vec<(&'a str, Tensor)>,
    pub states: Vec<(&'a str, Tensor)>,
    pub overrides: Vec<String>,
    pub epoch: usize,
    pub epochs: usize,
    pub dtype: DType,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            inputs: vec![],
            consts: vec![],
            states: vec![],
            overrides: vec![],
            epoch: 999,
            epochs: 1000,
            dtype: DType::F64,
        }
    }
}

pub fn bind(module: &Module, setup: &Setup) -> Bindings {
    let overrides = Overrides::parse(&setup.overrides).expect("overrides are NAME=VALUE");
    let named =
        |v: &[(&str, Tensor)]| -> Vec<(String, Tensor)> { v.iter().map(|(n, t)| (n.to_string(), t.clone())).collect() };
    let req = BindRequest {
        inputs: named(&setup.inputs),
        consts: named(&setup.consts),
        states: named(&setup.states),
        overrides: &overrides,
        samples: None,
        index: None,
        epoch: setup.epoch,
        epochs: setup.epochs,
        iteration: None,
        base_lr: 0.5,
        dtype: setup.dtype,
    };
    Bindings::new(module, req).unwrap_or_else(|e| panic!("binding `{}` failed: {e}", module.name))
}

/// Loss, per-sample losses, metrics and gradients on the reference evaluator.
pub fn evaluate(module: &Module, setup: &Setup) -> Evaluation {
    let bindings = bind(module, setup);
    let exe = Executable::new(module.clone())
        .unwrap_or_else(|d| panic!("`{}` does not differentiate: {}", module.name, d.message));
    exe.evaluate(&bindings).unwrap_or_else(|e| panic!("`{}` does not evaluate: {e}", module.name))
}

pub fn metric(eval: &Evaluation, name: &str) -> f64 {
    eval.metrics.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no metric `{name}` in {:?}", eval.metrics)).1
}

pub fn grad<'e>(eval: &'e Evaluation, input: &str) -> &'e Tensor {
    &eval.grads.iter().find(|(n, _)| n == input).unwrap_or_else(|| panic!("no gradient for `{input}`")).1
}

/// A fresh, empty folder for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-tests").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Runs the `sslc` binary from the repository root.
pub fn run_sslc<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).current_dir(repo_root()).output().expect("sslc starts")
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
