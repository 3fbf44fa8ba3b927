//! An objective ready to run: its module and its gradient program, evaluated by a back end.
//! Values come back by name, so callers never depend on output positions.

use crate::autodiff::{differentiate, grad_output_name, Leaf};
use crate::diag::Diagnostic;
use crate::eval::{run, Bindings, EvalError};
use crate::ir::{Module, Program};
use candle_core::{DType, Tensor};

/// What one evaluation of an objective produces.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    /// The base loss of each sample, when the objective declares `per_sample`.
    pub per_sample: Option<Tensor>,
    /// `metric` values, in declaration order.
    pub metrics: Vec<(String, f64)>,
    /// d loss / d leaf: every input, then every `learn` tensor, in declaration order.
    pub grads: Vec<(String, Tensor)>,
}

pub struct Executable {
    pub module: Module,
    /// The loss program with `grad_<input>` outputs appended.
    pub gradient: Program,
    /// [`Self::gradient`] through the optimiser ([`crate::passes::optimize`]): what every
    /// fast back end compiles. Optimised once, here, so the back ends cannot disagree on it.
    pub optimized: Program,
}

impl Executable {
    /// Differentiates the loss with respect to every input and every `learn` tensor.
    pub fn new(module: Module) -> Result<Executable, Diagnostic> {
        let wrt = Leaf::every(&module);
        let gradient = differentiate(&module, &module.loss, "loss", &wrt)?;
        let optimized = crate::passes::optimize(&module, &gradient)?;
        Ok(Executable { module, gradient, optimized })
    }

    /// Values and gradients on the reference evaluator.
    pub fn evaluate(&self, b: &Bindings) -> Result<Evaluation, EvalError> {
        let outputs = run(&self.module, &self.gradient, b)?;
        Ok(self.collect(&outputs)?)
    }

    /// Names the outputs of the gradient program.
    pub fn collect(&self, outputs: &[Tensor]) -> Result<Evaluation, candle_core::Error> {
        let named = |name: &str| self.gradient.outputs.iter().position(|o| o.name == name).map(|i| &outputs[i]);
        let scalar = |t: &Tensor| t.to_dtype(DType::F64).and_then(|t| t.to_vec0::<f64>());
        let loss = scalar(named("loss").expect("every objective has a loss"))?;
        let per_sample = named("per_sample").cloned();
        let mut metrics = Vec::new();
        for o in &self.module.loss.outputs {
            if o.name != "loss" && o.name != "per_sample" {
                metrics.push((o.name.clone(), scalar(named(&o.name).expect("metric outputs are kept"))?));
            }
        }
        let grads = Leaf::every(&self.module)
            .into_iter()
            .map(|leaf| {
                let name = leaf.name(&self.module);
                (name.to_string(), named(&grad_output_name(name)).expect("one gradient per leaf").clone())
            })
            .collect();
        Ok(Evaluation { loss, per_sample, metrics, grads })
    }
}

impl From<candle_core::Error> for EvalError {
    fn from(source: candle_core::Error) -> Self {
        EvalError::Tensor { node: "outputs".into(), what: "reading results".into(), source }
    }
}
