//! Binding a module to concrete values: parameters (defaults and `--set` overrides), the
//! sizes of its dimensions (taken from the inputs and checked across them), constants and
//! state (given, or built), and the run position. Every mismatch is an error that names the
//! value and says what was expected.

use crate::ir::{
    BinaryOp, ConstDecl, ConstInit, Dim, DimKind, DimSym, Expr, Handle, Module, ParamDecl, ParamValue, Shape,
};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BindError {
    #[error("unknown name `{name}` in --set; this objective has {known}")]
    UnknownOverride { name: String, known: String },
    #[error("--set {name}={value}: expected {expected}")]
    BadOverride { name: String, value: String, expected: String },
    #[error("input `{name}` is missing: the objective reads it as {expected}")]
    MissingInput { name: String, expected: String },
    #[error("`{name}` has {actual_rank} axes {actual:?}, but the objective declares {expected}")]
    Rank { name: String, expected: String, actual: Vec<usize>, actual_rank: usize },
    #[error("`{name}` has shape {actual:?}, but the objective declares {expected}: {why}")]
    Shape { name: String, expected: String, actual: Vec<usize>, why: String },
    #[error("`{name}` contains {count} NaN or infinite values")]
    NonFinite { name: String, count: usize },
    #[error("the dimension `{name}` has no size: {why}")]
    UnboundDim { name: String, why: String },
    #[error("a simplex ETF of K = {k} vectors needs at least K - 1 = {} dimensions, but D = {d}", k - 1)]
    EtfTooLarge { k: usize, d: usize },
    #[error("{why} (shape {shape}); lower `{dim}` (--set {dim}=... or its declaration)")]
    TooLarge { why: String, shape: String, dim: String },
    #[error(
        "{what} would have `{dim}` = {value} rows or columns ({sizes}): the objective needs `{dim}` >= 0; change \
         the sizes (--set, or the batch size)"
    )]
    NegativeSize { what: String, dim: String, value: i64, sizes: String },
    #[error("`{name}` holds the class labels but has {value} among them; labels are whole numbers, 0 or more")]
    NotLabel { name: String, value: f64 },
    #[error(
        "`{name}` holds {value}, but `one_hot`/`histogram` over `{dim}` = {size} classes takes 0 to {last} \
         (as PyTorch's one_hot, which refuses it too)", last = size - 1
    )]
    ClassOutOfRange { name: String, value: i64, dim: String, size: i64 },
    #[error("{0}")]
    Tensor(String),
}

impl From<candle_core::Error> for BindError {
    fn from(e: candle_core::Error) -> Self {
        BindError::Tensor(e.to_string())
    }
}

/// `--set NAME=VALUE` values: parameters and fixed dimensions.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub values: Vec<(String, String)>,
}

impl Overrides {
    /// Parses `NAME=VALUE` strings.
    pub fn parse(items: &[String]) -> Result<Overrides, BindError> {
        let mut values = Vec::new();
        for item in items {
            match item.split_once('=') {
                Some((n, v)) if !n.trim().is_empty() => values.push((n.trim().to_string(), v.trim().to_string())),
                _ => {
                    return Err(BindError::BadOverride {
                        name: item.clone(),
                        value: String::new(),
                        expected: "NAME=VALUE, e.g. --set tau=0.5".into(),
                    })
                }
            }
        }
        Ok(Overrides { values })
    }

    /// Checks what binding checks of the overrides alone: each names a parameter or a `dim`
    /// declared with a size, and its value parses. For callers that want these errors before
    /// they have inputs to bind (a training run, before it loads its data). Returns every
    /// parameter's value, overridden or default, by handle index.
    pub fn check(&self, module: &Module) -> Result<Vec<ParamValue>, BindError> {
        let params = resolve_params(module, self)?;
        apply_dim_overrides(module, self, &mut declared_sizes(module))?;
        Ok(params)
    }
}

/// Every value a program may read.
#[derive(Clone, Debug)]
pub struct Bindings {
    pub dtype: DType,
    /// Size of every dimension, by symbol.
    pub dims: Vec<i64>,
    pub params: Vec<ParamValue>,
    pub inputs: Vec<Tensor>,
    pub consts: Vec<Tensor>,
    pub states: Vec<Tensor>,
    /// Epochs completed.
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Optimizer steps completed in the run.
    pub iteration: usize,
    /// Optimizer steps in the run.
    pub iterations: usize,
    pub base_lr: f64,
    /// Dataset indices of the batch (`int[N]`, as i64).
    pub index: Option<Tensor>,
    /// Outputs of the loss program, for `on step` handlers.
    pub forward: Vec<Tensor>,
}

/// What a caller supplies; everything optional is built or defaulted.
pub struct BindRequest<'a> {
    pub inputs: Vec<(String, Tensor)>,
    pub consts: Vec<(String, Tensor)>,
    pub states: Vec<(String, Tensor)>,
    pub overrides: &'a Overrides,
    /// Dataset size for `[samples, ...]` state; defaults to the given state's rows, else N.
    pub samples: Option<usize>,
    pub index: Option<Tensor>,
    pub epoch: usize,
    pub epochs: usize,
    /// `(steps completed, steps in the run)`; `None`: one step per epoch (`sslc eval`,
    /// `gradcheck`, `bench`), so that `iteration` and `epoch` agree.
    pub iteration: Option<(usize, usize)>,
    pub base_lr: f64,
    pub dtype: DType,
}

impl<'a> BindRequest<'a> {
    /// Just `inputs`: constants and state built from their declarations, no sample indices,
    /// at the last of 1000 epochs (where every ramp has reached its end), base lr 0.5. How
    /// one-off evaluations (`sslc gradcheck`, `sslc bench`, tests) see an objective.
    pub fn inputs_only(inputs: Vec<(String, Tensor)>, overrides: &'a Overrides, dtype: DType) -> BindRequest<'a> {
        BindRequest {
            inputs,
            consts: Vec::new(),
            states: Vec::new(),
            overrides,
            samples: None,
            index: None,
            epoch: 999,
            epochs: 1000,
            iteration: None,
            base_lr: 0.5,
            dtype,
        }
    }
}

impl Bindings {
    pub fn new(module: &Module, req: BindRequest) -> Result<Bindings, BindError> {
        let params = resolve_params(module, req.overrides)?;
        // Read once: every value's size is checked against it, and a bind happens every step.
        let available = available_memory();
        let mut dims = declared_sizes(module);
        apply_dim_overrides(module, req.overrides, &mut dims)?;

        // Inputs fix the batch and free dimensions.
        let mut inputs = Vec::new();
        let mut origin: HashMap<DimSym, String> = HashMap::new();
        for (_, decl) in module.inputs.iter() {
            let Some((_, t)) = req.inputs.iter().find(|(n, _)| *n == decl.name) else {
                return Err(BindError::MissingInput {
                    name: decl.name.clone(),
                    expected: declared(module, &decl.ty.shape),
                });
            };
            check_finite(&decl.name, t)?;
            bind_shape(module, &decl.name, &decl.ty.shape, t.dims(), &mut dims, &mut origin)?;
            inputs.push(t.to_dtype(req.dtype)?);
        }
        let batch = module.batch_dim().and_then(|b| dims[b.index()]);

        // Per-sample state fixes the dataset size, unless the caller says it.
        if let Some(samples) = module.dims.iter().find(|(_, d)| d.kind == DimKind::Samples).map(|(h, _)| h) {
            let from_state = req.states.iter().find_map(|(n, t)| {
                let decl = module.state_named(n)?;
                let first = module.states[decl].ty.shape.first()?;
                (first.as_symbol() == Some(samples)).then(|| t.dims().first().copied()).flatten()
            });
            dims[samples.index()] = req.samples.or(from_state).or(batch.map(|b| b as usize)).map(|v| v as i64);
        }

        // A given value is checked against its declaration; a missing one is built from it.
        let mut given_or_built =
            |name: &str,
             shape: &[Dim],
             given: &[(String, Tensor)],
             build: &dyn Fn(&[usize]) -> Result<Tensor, BindError>| {
                match given.iter().find(|(n, _)| n == name) {
                    Some((_, t)) => {
                        check_finite(name, t)?;
                        bind_shape(module, name, shape, t.dims(), &mut dims, &mut origin)?;
                        Ok::<Tensor, BindError>(t.to_dtype(req.dtype)?)
                    }
                    None => Ok(build(&concrete(module, &format!("`{name}`"), shape, &dims, available)?)?
                        .to_dtype(req.dtype)?),
                }
            };
        let consts = module
            .consts
            .iter()
            .map(|(_, d)| {
                let t = given_or_built(&d.name, &d.ty.shape, &req.consts, &|shape| super::build_const(&d.init, shape))?;
                if matches!(d.init, ConstInit::Labels) {
                    check_labels(&d.name, &t)?;
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>, BindError>>()?;
        let states = module
            .states
            .iter()
            .map(|(_, d)| {
                given_or_built(&d.name, &d.ty.shape, &req.states, &|shape| super::initial_state(d.init, shape))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let index = match (req.index, batch) {
            (Some(i), _) => Some(i.to_dtype(DType::I64)?),
            (None, Some(n)) => Some(Tensor::arange(0i64, n, &Device::Cpu)?),
            (None, None) => None,
        };
        let dims = module
            .dims
            .iter()
            .map(|(h, d)| {
                dims[h.index()].ok_or_else(|| BindError::UnboundDim {
                    name: d.name.clone(),
                    why: "no input, constant or state gives it a size".into(),
                })
            })
            .collect::<Result<Vec<i64>, BindError>>()?;
        let known: Vec<Option<i64>> = dims.iter().map(|&d| Some(d)).collect();
        check_classes(module, &consts, &known)?;
        let programs = std::iter::once(("the loss", &module.loss))
            .chain(module.handlers.iter().map(|h| ("an `on` handler", &h.program)));
        for (where_, program) in programs {
            for (h, _) in program.exprs.iter() {
                let what = match program.names.get(&h) {
                    Some(name) => format!("`{name}` in {where_}"),
                    None => format!("a value in {where_}"),
                };
                concrete(module, &what, &program.ty(h).shape, &known, available)?;
            }
        }
        Ok(Bindings {
            dtype: req.dtype,
            dims,
            params,
            inputs,
            consts,
            states,
            epoch: req.epoch,
            epochs: req.epochs,
            iteration: req.iteration.map_or(req.epoch, |(done, _)| done),
            iterations: req.iteration.map_or(req.epochs, |(_, total)| total),
            base_lr: req.base_lr,
            index,
            forward: Vec::new(),
        })
    }

    /// A parameter's value, with run fractions resolved to epochs.
    pub fn param(&self, module: &Module, p: Handle<ParamDecl>) -> f64 {
        let _ = module;
        match self.params[p.index()] {
            ParamValue::Real(v) => v,
            ParamValue::Int(v) => v as f64,
            ParamValue::RunFraction(f) => self.run_fraction(f) as f64,
        }
    }

    /// `round(fraction × epochs)`, at least 1 for a positive fraction.
    pub fn run_fraction(&self, fraction: f64) -> usize {
        let e = (fraction * self.epochs as f64).round().max(0.0) as usize;
        if fraction > 0.0 {
            e.max(1)
        } else {
            e
        }
    }

    pub fn size(&self, _module: &Module, d: &Dim) -> usize {
        d.eval(&|s| Some(self.dims[s.index()])).unwrap_or(0).max(0) as usize
    }

    pub fn shape(&self, module: &Module, shape: &Shape) -> Vec<usize> {
        shape.iter().map(|d| self.size(module, d)).collect()
    }
}

fn resolve_params(module: &Module, overrides: &Overrides) -> Result<Vec<ParamValue>, BindError> {
    let mut params: Vec<ParamValue> = module.params.iter().map(|(_, p)| p.default).collect();
    for (name, value) in &overrides.values {
        if let Some(h) = module.param_named(name) {
            let bad = |expected: &str| BindError::BadOverride {
                name: name.clone(),
                value: value.clone(),
                expected: expected.into(),
            };
            // Every value must be finite; counts (ints), fractions of the run and epochs cannot be
            // negative, and a fraction of the run is at most all of it.
            let number = |expected: &str, lo: f64, hi: f64| {
                value
                    .strip_suffix('%')
                    .unwrap_or(value)
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && (lo..=hi).contains(v))
                    .ok_or_else(|| bad(expected))
            };
            params[h.index()] = match (module.params[h].default, value.strip_suffix('%')) {
                (_, Some(_)) => ParamValue::RunFraction(number("a percentage from 0% to 100%", 0.0, 100.0)? / 100.0),
                (ParamValue::Int(_), None) => ParamValue::Int(
                    value.parse().ok().filter(|v: &i64| *v >= 0).ok_or_else(|| bad("a non-negative integer"))?,
                ),
                (ParamValue::RunFraction(_), None) => {
                    // An absolute number of epochs.
                    ParamValue::Real(number(
                        "a number of epochs (0 or more) or a percentage of the run",
                        0.0,
                        f64::MAX,
                    )?)
                }
                (ParamValue::Real(_), None) => ParamValue::Real(number("a number (finite)", f64::MIN, f64::MAX)?),
            };
        } else if module.dim_named(name).is_none() {
            let mut known: Vec<String> = module.params.iter().map(|(_, p)| p.name.clone()).collect();
            known.extend(
                module.dims.iter().filter(|(_, d)| matches!(d.kind, DimKind::Fixed(_))).map(|(_, d)| d.name.clone()),
            );
            let known =
                if known.is_empty() { "no parameters".to_string() } else { format!("parameters {}", known.join(", ")) };
            return Err(BindError::UnknownOverride { name: name.clone(), known });
        }
    }
    Ok(params)
}

/// Each dimension's size as declared: `dim K = 100` has one, the others come from values.
fn declared_sizes(module: &Module) -> Vec<Option<i64>> {
    module
        .dims
        .iter()
        .map(|(_, d)| match d.kind {
            DimKind::Fixed(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn apply_dim_overrides(module: &Module, overrides: &Overrides, dims: &mut [Option<i64>]) -> Result<(), BindError> {
    for (name, value) in &overrides.values {
        let Some(sym) = module.dim_named(name) else { continue };
        if !matches!(module.dims[sym].kind, DimKind::Fixed(_)) {
            return Err(BindError::BadOverride {
                name: name.clone(),
                value: value.clone(),
                expected: "a `dim` declared with a size; this one comes from the inputs".into(),
            });
        }
        match value.parse::<i64>() {
            Ok(v) if v > 0 => dims[sym.index()] = Some(v),
            _ => {
                return Err(BindError::BadOverride {
                    name: name.clone(),
                    value: value.clone(),
                    expected: "a positive integer".into(),
                })
            }
        }
    }
    Ok(())
}

fn declared(module: &Module, shape: &[Dim]) -> String {
    crate::ir::display_shape(shape, &module.dims).to_string()
}

/// Checks a value's shape against a declared one, giving sizes to unbound dimensions.
fn bind_shape(
    module: &Module,
    name: &str,
    declared_shape: &[Dim],
    actual: &[usize],
    dims: &mut [Option<i64>],
    origin: &mut HashMap<DimSym, String>,
) -> Result<(), BindError> {
    let expected = declared(module, declared_shape);
    if actual.len() != declared_shape.len() {
        return Err(BindError::Rank {
            name: name.into(),
            expected,
            actual: actual.to_vec(),
            actual_rank: actual.len(),
        });
    }
    for (axis, (d, &size)) in declared_shape.iter().zip(actual).enumerate() {
        if size == 0 {
            return Err(BindError::Shape {
                name: name.into(),
                expected,
                actual: actual.to_vec(),
                why: format!("axis {axis} is empty"),
            });
        }
        if let Some(sym) = d.as_symbol() {
            if dims[sym.index()].is_none() {
                dims[sym.index()] = Some(size as i64);
                origin.insert(sym, name.to_string());
                continue;
            }
        }
        match d.eval(&|s| dims[s.index()]) {
            Some(want) if want == size as i64 => {}
            Some(want) => {
                let dim_name = d.display(&module.dims).to_string();
                let from = d
                    .as_symbol()
                    .map(|s| match (origin.get(&s), &module.dims[s].kind) {
                        (Some(o), _) => format!(" (from `{o}`)"),
                        (None, DimKind::Fixed(_)) => " (declared with `dim`, or --set)".into(),
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                return Err(BindError::Shape {
                    name: name.into(),
                    expected,
                    actual: actual.to_vec(),
                    why: format!("axis {axis} should be {dim_name} = {want}{from}, not {size}"),
                });
            }
            None => {
                return Err(BindError::UnboundDim {
                    name: d.display(&module.dims).to_string(),
                    why: format!("needed for `{name}`"),
                })
            }
        }
    }
    Ok(())
}

/// The sizes of `shape` (the shape of `what`), checked against the memory available.
fn concrete(
    module: &Module,
    what: &str,
    shape: &[Dim],
    dims: &[Option<i64>],
    available: u64,
) -> Result<Vec<usize>, BindError> {
    let sizes = shape
        .iter()
        .map(|d| {
            let value = d.eval(&|s| dims[s.index()]).ok_or_else(|| BindError::UnboundDim {
                name: d.display(&module.dims).to_string(),
                why: "give it a size with an input, or a constant or state of known shape".into(),
            })?;
            // A slice such as MoCo's `queue[N:]` states a relation (N <= Q) that the sizes
            // of a run must keep: broken, it is named here, before any work.
            if value < 0 {
                let sizes: Vec<String> = d
                    .symbols()
                    .map(|s| format!("{} = {}", module.dims[s].name, dims[s.index()].unwrap_or_default()))
                    .collect();
                let dim = d.display(&module.dims).to_string();
                return Err(BindError::NegativeSize { what: what.to_string(), dim, value, sizes: sizes.join(", ") });
            }
            Ok(value as usize)
        })
        .collect::<Result<Vec<usize>, _>>()?;
    check_size(module, what, shape, &sizes, available)?;
    Ok(sizes)
}

/// Refuses a tensor whose size overflows or exceeds the memory available now, before anything
/// allocates it: a huge `--set K=...` is an error naming the dimension, not an abort.
fn check_size(module: &Module, what: &str, shape: &[Dim], sizes: &[usize], available: u64) -> Result<(), BindError> {
    // Eight bytes an element: the reference evaluator's f64.
    fits_within(what, sizes, 8, available).map_err(|why| {
        // The largest dimension of the shape is the one to lower.
        let largest =
            shape.iter().zip(sizes).max_by_key(|(_, n)| **n).map(|(d, _)| d.display(&module.dims).to_string());
        BindError::TooLarge { why, shape: format!("{sizes:?}"), dim: largest.unwrap_or_default() }
    })
}

/// Whether `elements` values of `bytes_each` bytes fit in the memory available now; the
/// error says how much they need and how much there is.
pub fn check_fits(what: &str, elements: &[usize], bytes_each: u64) -> Result<(), String> {
    fits_within(what, elements, bytes_each, available_memory())
}

/// [`check_fits`] against `available` bytes, read once by a caller that checks many values.
fn fits_within(what: &str, elements: &[usize], bytes_each: u64, available: u64) -> Result<(), String> {
    let bytes = elements.iter().try_fold(bytes_each, |total, &n| total.checked_mul(n as u64));
    match bytes {
        Some(b) if b <= available => Ok(()),
        _ => Err(format!(
            "{what} would need {}, more than this machine's {} of available memory",
            bytes.map_or("more than 2^64 bytes".into(), crate::diag::human_bytes),
            crate::diag::human_bytes(available)
        )),
    }
}

/// Memory the system can still give (Linux's `MemAvailable`); unlimited where unknown.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib.saturating_mul(1024))
}

/// Host tensors only: a GPU's (the training loop's embeddings) would have to be copied to the
/// host to be read, which is what keeping them there avoids; the loop checks the loss instead.
fn check_finite(name: &str, t: &Tensor) -> Result<(), BindError> {
    if !t.dtype().is_float() || !t.device().is_cpu() {
        return Ok(());
    }
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(BindError::NonFinite { name: name.into(), count });
    }
    Ok(())
}

/// Class labels (a `const ... = labels`) are whole numbers of 0 or more: a label file holding
/// 19.7 or -1 is refused, not truncated or turned into a row of zeros.
fn check_labels(name: &str, t: &Tensor) -> Result<(), BindError> {
    if !t.device().is_cpu() {
        return Ok(());
    }
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match values.into_iter().find(|v| v.fract() != 0.0 || *v < 0.0) {
        Some(value) => Err(BindError::NotLabel { name: name.into(), value }),
        None => Ok(()),
    }
}

/// Values that `one_hot` or `histogram` turn into classes name classes that exist: a class of
/// K would otherwise become a row of zeros without a word.
fn check_classes(module: &Module, consts: &[Tensor], dims: &[Option<i64>]) -> Result<(), BindError> {
    for (c, classes) in class_counts(module) {
        let Some(size) = classes.eval(&|s| dims[s.index()]) else { continue };
        let t = &consts[c.index()];
        if !t.device().is_cpu() {
            continue;
        }
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some(&value) = values.iter().find(|&&v| v < 0.0 || v >= size as f64) {
            let (name, dim) = (module.consts[c].name.clone(), classes.display(&module.dims).to_string());
            return Err(BindError::ClassOutOfRange { name, value: value as i64, dim, size });
        }
    }
    Ok(())
}

/// The constants taken as classes and how many classes each may hold: the comparison
/// `iota[.., K] == x[:, None]` that `one_hot(x, K)` and `histogram(x, K)` lower to
/// (front/lower/builtins.rs), where `x` is a constant, or rows or a cast of one
/// (`int(y[index])`).
fn class_counts(module: &Module) -> Vec<(Handle<ConstDecl>, Dim)> {
    let programs = std::iter::once(&module.loss).chain(module.handlers.iter().map(|h| &h.program));
    let mut counts = Vec::new();
    for program in programs {
        for (_, expr) in program.exprs.iter() {
            let Expr::Binary { op: BinaryOp::Eq, lhs, rhs } = expr else { continue };
            let Expr::Iota { shape, axis: 1 } = &program.exprs[*lhs] else { continue };
            let Expr::Broadcast { arg, .. } = &program.exprs[*rhs] else { continue };
            let Expr::ExpandDims { arg, axis: 1 } = &program.exprs[*arg] else { continue };
            let mut source = *arg;
            loop {
                source = match &program.exprs[source] {
                    Expr::Cast { arg, .. } | Expr::StopGrad { arg } | Expr::Slice { arg, .. } => *arg,
                    Expr::Gather { table, .. } => *table,
                    _ => break,
                };
            }
            if let (Expr::Const(c), Some(classes)) = (&program.exprs[source], shape.get(1)) {
                counts.push((*c, classes.clone()));
            }
        }
    }
    counts
}
