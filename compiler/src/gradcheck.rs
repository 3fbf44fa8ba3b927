//! Gradient checking: central finite differences of the loss on the reference evaluator, in
//! f64, against the autodiff gradient, along random directions (the fast default) or entry by
//! entry. `stopgrad` values are held at their unperturbed values
//! while differencing, so both sides differentiate the same function.

use crate::autodiff::{differentiate_with, grad_output_name, Leaf, Rule};
use crate::diag::Diagnostic;
use crate::eval::{run_traced, Bindings, EvalError};
use crate::ir::{Expr, Handle, Module};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// How far the autodiff gradient of one input is from finite differences.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputReport {
    pub input: String,
    /// max |fd − autodiff| over the checked entries.
    pub max_abs_error: f64,
    /// `max_abs_error` relative to the largest gradient entry.
    pub max_rel_error: f64,
    /// Entries, or random directions, checked.
    pub entries: usize,
    /// Checked entries where the gradient or its finite difference is NaN or infinite.
    pub non_finite: usize,
}

impl InputReport {
    /// Within `rtol` relative error, or `atol` absolute error: finite differences of an
    /// exactly zero gradient are rounding noise, which no relative measure can pass.
    /// Any non-finite value fails, whatever the errors say.
    pub fn passes(&self, rtol: f64, atol: f64) -> bool {
        self.non_finite == 0
            && self.max_abs_error.is_finite()
            && (self.max_rel_error <= rtol || self.max_abs_error <= atol)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GradcheckError {
    #[error("{0}")]
    Eval(#[from] EvalError),
    #[error("{}", .0.message)]
    Autodiff(Diagnostic),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    #[error("the finite-difference step must be a positive finite number, not {0}; the default is 1e-6")]
    Step(f64),
    #[error("the loss is {0} at these inputs, so no gradient can be checked; look for a zero temperature, log(0) or a division by zero (`sslc eval` shows every value)")]
    Loss(f64),
}

/// What to check.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Finite-difference step.
    pub step: f64,
    pub check: Check,
}

/// Which derivatives are compared with finite differences.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// `count` random unit directions per leaf, each compared as `(L(x + hv) − L(x − hv)) / 2h`
    /// against `∇L · v`, as PyTorch's `gradcheck(fast_mode=True)`: two loss evaluations per
    /// direction whatever the leaf's size, so large objectives check in seconds. A wrong
    /// gradient entry moves every direction's product, so one direction already exposes it.
    Directions { count: usize, seed: u64 },
    /// Single entries, `max` per leaf spread evenly over it (0: every entry): slower, but it
    /// says which entries are wrong.
    Entries { max: usize },
}

impl Options {
    /// The per-entry check of `max` entries per leaf (0: all).
    pub fn entries(step: f64, max: usize) -> Self {
        Options { step, check: Check::Entries { max } }
    }

    /// The fast check of `count` random directions per leaf.
    pub fn directions(step: f64, count: usize, seed: u64) -> Self {
        Options { step, check: Check::Directions { count, seed } }
    }
}

/// One perturbation of a leaf: a single entry, or a dense unit direction.
enum Probe {
    Entry(usize),
    Direction(Vec<f64>),
}

impl Probe {
    /// `flat + delta · probe`.
    fn shift(&self, flat: &[f64], delta: f64) -> Vec<f64> {
        let mut v = flat.to_vec();
        match self {
            Probe::Entry(j) => v[*j] += delta,
            Probe::Direction(d) => v.iter_mut().zip(d).for_each(|(x, d)| *x += delta * d),
        }
        v
    }

    /// The autodiff's directional derivative along the probe.
    fn analytic(&self, gradient: &[f64]) -> f64 {
        match self {
            Probe::Entry(j) => gradient[*j],
            Probe::Direction(d) => gradient.iter().zip(d).map(|(g, d)| g * d).sum(),
        }
    }
}

/// The probes of the leaf at `position` among the checked leaves, and the size of a typical
/// correct derivative along one of them (the relative error's denominator): the largest
/// entry for entries; `‖∇L‖ / √n` for unit directions, the spread of `∇L · v` over random
/// `v`, so that a relative error means about `‖error‖ / ‖∇L‖` in either mode.
fn probes(check: Check, gradient: &[f64], position: usize) -> (Vec<Probe>, f64) {
    let n = gradient.len();
    match check {
        Check::Entries { max } => {
            let stride = match max {
                0 => 1,
                m => n.div_ceil(m).max(1),
            };
            ((0..n).step_by(stride).map(Probe::Entry).collect(), gradient.iter().fold(0.0f64, |m, g| m.max(g.abs())))
        }
        Check::Directions { count, seed } => {
            // Each leaf draws from its own stream, so adding a leaf leaves the others' probes.
            let stream = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(position as u64);
            let draws = crate::eval::gaussian(n * count, stream);
            let unit = |d: &[f64]| {
                let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
                Probe::Direction(d.iter().map(|x| x / norm).collect())
            };
            let norm = gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
            (draws.chunks(n.max(1)).take(count).map(unit).collect(), norm / (n.max(1) as f64).sqrt())
        }
    }
}

/// Checks d loss / d leaf for every input and `learn` tensor of `module`, with bindings in f64.
pub fn gradcheck(module: &Module, b: &Bindings, options: Options) -> Result<Vec<InputReport>, GradcheckError> {
    gradcheck_with(module, b, options, &crate::autodiff::standard_rule)
}

pub(crate) fn gradcheck_with(
    module: &Module,
    b: &Bindings,
    options: Options,
    rule: &Rule,
) -> Result<Vec<InputReport>, GradcheckError> {
    let step = options.step;
    if !(step.is_finite() && step > 0.0) {
        return Err(GradcheckError::Step(step));
    }
    let wrt = Leaf::every(module);
    let gradient = differentiate_with(module, &module.loss, "loss", &wrt, rule).map_err(GradcheckError::Autodiff)?;
    let (outputs, values) = run_traced(module, &gradient, b, &HashMap::new())?;
    // The loss program's nodes keep their handles in the gradient program.
    let frozen: HashMap<Handle<Expr>, Tensor> = module
        .loss
        .exprs
        .iter()
        .filter(|(_, e)| matches!(e, Expr::StopGrad { .. }))
        .filter_map(|(h, _)| values[h.index()].clone().map(|v| (h, v)))
        .collect();
    let loss_at = |b: &Bindings| -> Result<f64, GradcheckError> {
        let (out, _) = run_traced(module, &module.loss, b, &frozen)?;
        let at = module.loss.outputs.iter().position(|o| o.name == "loss").expect("every objective has a loss");
        Ok(out[at].to_dtype(DType::F64)?.to_vec0::<f64>()?)
    };
    // The gradient program computed the loss at the unperturbed inputs already.
    let at = gradient.outputs.iter().position(|o| o.name == "loss").expect("every objective has a loss");
    let base_loss = outputs[at].to_dtype(DType::F64)?.to_vec0::<f64>()?;
    if !base_loss.is_finite() {
        return Err(GradcheckError::Loss(base_loss));
    }
    let mut reports = Vec::new();
    for (position, leaf) in wrt.into_iter().enumerate() {
        let name = leaf.name(module);
        let at = gradient.outputs.iter().position(|o| o.name == grad_output_name(name)).expect("one gradient per leaf");
        let analytic = outputs[at].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let base = leaf_value(&mut b.clone(), leaf).to_dtype(DType::F64)?;
        let dims = base.dims().to_vec();
        let flat = base.flatten_all()?.to_vec1::<f64>()?;
        let (probes, scale) = probes(options.check, &analytic, position);
        let mut max_abs: f64 = 0.0;
        let mut non_finite = 0;
        for probe in &probes {
            let shifted = |delta: f64| -> Result<f64, GradcheckError> {
                let mut bb = b.clone();
                *leaf_value(&mut bb, leaf) =
                    Tensor::from_vec(probe.shift(&flat, delta), dims.as_slice(), &candle_core::Device::Cpu)?;
                loss_at(&bb)
            };
            let fd = (shifted(step)? - shifted(-step)?) / (2.0 * step);
            let g = probe.analytic(&analytic);
            if !(fd.is_finite() && g.is_finite()) {
                non_finite += 1;
                continue;
            }
            max_abs = max_abs.max((fd - g).abs());
        }
        reports.push(InputReport {
            input: name.to_string(),
            max_abs_error: max_abs,
            max_rel_error: max_abs / scale.max(1e-12),
            entries: probes.len(),
            non_finite,
        });
    }
    Ok(reports)
}

/// Where a leaf's value is bound: inputs and `learn` tensors (bound like constants).
fn leaf_value(b: &mut Bindings, leaf: Leaf) -> &mut Tensor {
    match leaf {
        Leaf::Input(i) => &mut b.inputs[i.index()],
        Leaf::Learned(c) => &mut b.consts[c.index()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Grad;
    use crate::eval::{BindRequest, Overrides};
    use crate::ir::UnaryOp;

    fn simclr() -> Module {
        let mut sources = crate::diag::Sources::new();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../objectives/simclr.ssl");
        crate::compile(&path, &mut sources).unwrap_or_else(|_| panic!("simclr compiles")).modules.remove(0)
    }

    fn bindings(m: &Module) -> Bindings {
        let x = |seed: u64| {
            let v: Vec<f64> = (0..24).map(|i| ((i as f64 + 1.0) * (seed as f64 + 0.37)).sin()).collect();
            Tensor::from_vec(v, (4, 6), &candle_core::Device::Cpu).unwrap()
        };
        let req = BindRequest {
            inputs: vec![("z1".into(), x(1)), ("z2".into(), x(2))],
            consts: vec![],
            states: vec![],
            overrides: &Overrides::default(),
            samples: None,
            index: None,
            epoch: 0,
            epochs: 1,
            iteration: None,
            base_lr: 0.5,
            dtype: DType::F64,
        };
        Bindings::new(m, req).unwrap()
    }

    #[test]
    fn the_shipped_rules_pass() {
        let m = simclr();
        for options in [Options::entries(1e-6, 0), Options::directions(1e-6, 4, 0)] {
            for r in gradcheck(&m, &bindings(&m), options).unwrap() {
                assert!(r.max_rel_error < 1e-6, "{options:?}: {r:?}");
            }
        }
    }

    /// A deliberately wrong rule (d sqrt(x) = dx instead of dx / (2 sqrt(x))) must be caught,
    /// entry by entry and along a single random direction.
    #[test]
    fn a_wrong_sqrt_rule_fails_the_check() {
        let wrong = |g: &mut Grad, h: Handle<Expr>, adj: Handle<Expr>| {
            if let Expr::Unary { op: UnaryOp::Sqrt, arg } = g.expr(h).clone() {
                return Ok(if g.is_active(arg) { vec![(arg, adj)] } else { vec![] });
            }
            crate::autodiff::standard_rule(g, h, adj)
        };
        let m = simclr();
        for options in [Options::entries(1e-6, 0), Options::directions(1e-6, 1, 3)] {
            let worst = gradcheck_with(&m, &bindings(&m), options, &wrong)
                .unwrap()
                .iter()
                .map(|r| r.max_rel_error)
                .fold(0.0, f64::max);
            assert!(worst > 1e-2, "{options:?}: a wrong sqrt rule went unnoticed: {worst}");
        }
    }

    /// Directions are unit vectors, a fresh stream per leaf and reproducible from the seed.
    #[test]
    fn directions_are_seeded_unit_vectors() {
        let g = [1.0, -2.0, 0.5];
        let (a, _) = probes(Check::Directions { count: 2, seed: 7 }, &g, 0);
        let (b, _) = probes(Check::Directions { count: 2, seed: 7 }, &g, 0);
        let (c, _) = probes(Check::Directions { count: 2, seed: 7 }, &g, 1);
        let dense = |p: &Probe| match p {
            Probe::Direction(d) => d.clone(),
            Probe::Entry(j) => panic!("entry {j} in the fast mode"),
        };
        assert_eq!(a.len(), 2);
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(dense(p), dense(q));
            assert!((dense(p).iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_ne!(dense(&a[0]), dense(&a[1]));
        assert_ne!(dense(&a[0]), dense(&c[0]));
    }
}
