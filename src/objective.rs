//! The bridge between compiled objectives and the training loop: [`CompiledObjective`]
//! implements the runtime's [`Objective`] trait with the compiler's gradient program (run by
//! the back end it was built for), its schedules, augmentation arguments and state handlers.

use candle_core::{DType, Device, Tensor, Var};
use sslc_compiler::back::{self, Backend, BackendKind};
use sslc_compiler::eval::{self, BindRequest, Bindings, Overrides};
use sslc_compiler::ir::{
    Assigned, BuiltinValue, Event, Expr, Handle, Handler, Module, Momentum, ParamDecl, ParamValue, Program,
};
use sslc_compiler::objective::{Evaluation, Executable};
use sslc_runtime::objective::{
    BoxError, EmbeddingSpec, ExtraAugmentation, Objective, RunPosition, StepOutput, ViewSpec,
};
use sslc_runtime::optim::ParamOptions;
use std::sync::Arc;

pub struct CompiledObjective {
    exe: Arc<Executable>,
    /// Evaluates the loss and gradients of each step; schedules and handlers, which run once
    /// per step or epoch on tiny inputs, stay on the reference evaluator.
    backend: Box<dyn Backend>,
    overrides: Overrides,
    /// Every parameter's value (`--set` or default), as the bindings resolve them.
    params: Vec<ParamValue>,
    /// Current state tensors, in declaration order (f32).
    states: Vec<Tensor>,
    samples: usize,
    base_lr: f64,
    /// Constants, built once, when the embedding width is known (the ETF is not free to build).
    consts: Vec<(String, Tensor)>,
    /// Columns of the embeddings, from [`Objective::init_state`].
    width: Option<usize>,
    /// The `learn` tensors, as (index among the constants, variable): the runtime's optimizer
    /// updates the variables in place, and every evaluation binds their current values.
    learned: Vec<(usize, Var)>,
    /// Device copies of the state and the constants, for a back end that reads the embeddings
    /// on their GPU: made when first needed (again after a checkpoint is loaded or the state is
    /// created anew), and brought up to date by replaying the handlers' changes, not by copying
    /// every table every step.
    resident: Option<Resident>,
    /// What the `on step` handlers read of a batch, found once from their programs.
    step_reads: StepReads,
}

/// The batch values `on step` handlers read, which `after_step` brings to the host for them.
struct StepReads {
    /// By input (embedding), in declaration order.
    inputs: Vec<bool>,
    /// The loss program's outputs (`per_sample`).
    forward: bool,
}

impl StepReads {
    fn of(module: &Module) -> StepReads {
        let handlers = module.handlers.iter().filter(|h| h.event == Event::Step);
        let read: Vec<&Expr> = handlers.flat_map(|h| h.program.exprs.iter().map(|(_, e)| e)).collect();
        StepReads {
            inputs: module
                .inputs
                .iter()
                .map(|(h, _)| read.iter().any(|e| matches!(e, Expr::Input(i) if *i == h)))
                .collect(),
            forward: read.iter().any(|e| matches!(e, Expr::Forward(_))),
        }
    }
}

struct Resident {
    device: Device,
    states: Vec<Tensor>,
    consts: Vec<Tensor>,
    /// Handlers' changes to the state since the copies were last brought up to date.
    pending: Vec<Change>,
}

/// A handler's change to a state tensor, replayed on its device copy.
enum Change {
    /// Assigned whole: copied again.
    Whole(usize),
    /// Rows set (`e[index] = ...`): the distinct rows, each with the last value written to it,
    /// scattered into the device copy, so a step moves `[N, ...]` values, not the whole table.
    Rows(usize, Vec<i64>, Tensor),
}

impl CompiledObjective {
    pub fn new(
        module: Module,
        overrides: Overrides,
        base_lr: f64,
        backend: BackendKind,
    ) -> Result<CompiledObjective, BoxError> {
        CompiledObjective::with_precision(module, overrides, base_lr, backend, back::cuda::Precision::default())
    }

    /// [`CompiledObjective::new`], with the CUDA back end's tiles at `precision`.
    pub fn with_precision(
        module: Module,
        overrides: Overrides,
        base_lr: f64,
        backend: BackendKind,
        precision: back::cuda::Precision,
    ) -> Result<CompiledObjective, BoxError> {
        let exe = Arc::new(Executable::new(module).map_err(|d| d.message)?);
        let backend = back::build_with(backend, exe.clone(), precision)?;
        // Check the overrides name real parameters now, not at the first step.
        let params = overrides.check(&exe.module)?;
        let step_reads = StepReads::of(&exe.module);
        Ok(CompiledObjective {
            exe,
            backend,
            overrides,
            params,
            states: Vec::new(),
            samples: 0,
            base_lr,
            consts: Vec::new(),
            width: None,
            learned: Vec::new(),
            resident: None,
            step_reads,
        })
    }

    /// Zero embeddings of `rows` rows, for programs that do not read them (schedules, handlers,
    /// state initialisation): they only give the dimensions a size. Their width is the run's
    /// (from [`Objective::init_state`]); before that, one wide enough for an ETF of any fixed
    /// dimension, so a schedule can be evaluated on its own.
    fn probe_inputs(&self, rows: usize) -> Result<Vec<(String, Tensor)>, BoxError> {
        let fixed = self.exe.module.dims.iter().filter_map(|(_, d)| match d.kind {
            sslc_compiler::ir::DimKind::Fixed(k) => Some(k as usize),
            _ => None,
        });
        let width = self.width.unwrap_or_else(|| fixed.max().unwrap_or(2).max(2));
        sslc_compiler::eval::check_fits(&format!("placeholder inputs of {rows} x {width}"), &[rows, width], 4)
            .map_err(|e| format!("{e}; a `dim` declared or set (--set) that large cannot be run"))?;
        let zeros = || Tensor::zeros((rows, width), DType::F32, &Device::Cpu);
        self.exe.module.inputs.iter().map(|(_, i)| Ok((i.name.clone(), zeros()?))).collect()
    }

    pub fn module(&self) -> &Module {
        &self.exe.module
    }

    /// Binds the objective at a batch of `batch` rows, so that sizes its own relations forbid
    /// (MoCo's queue shorter than the batch: `queue[N:]`) fail before any data is read.
    pub fn check_batch(&self, batch: usize) -> Result<(), BoxError> {
        self.bindings(self.probe_inputs(batch)?, None, RunPosition::at_epoch(0, 1)).map(drop)
    }

    /// A parameter's value (`--set` or default) as a number; a run fraction as the fraction.
    fn param_value(&self, p: Handle<ParamDecl>) -> f64 {
        match self.params[p.index()] {
            ParamValue::Real(v) | ParamValue::RunFraction(v) => v,
            ParamValue::Int(v) => v as f64,
        }
    }

    fn bindings(
        &self,
        inputs: Vec<(String, Tensor)>,
        index: Option<&[u32]>,
        at: RunPosition,
    ) -> Result<Bindings, BoxError> {
        let states =
            self.exe.module.states.iter().zip(&self.states).map(|((_, d), t)| (d.name.clone(), t.clone())).collect();
        let index = index
            .map(|ix| Tensor::from_vec(ix.iter().map(|&i| i as i64).collect::<Vec<_>>(), ix.len(), &Device::Cpu))
            .transpose()?;
        let mut consts = self.consts.clone();
        for (k, var) in &self.learned {
            consts[*k].1 = var.as_tensor().detach();
        }
        let req = BindRequest {
            inputs,
            consts,
            states,
            overrides: &self.overrides,
            samples: (self.samples > 0).then_some(self.samples),
            index,
            epoch: at.epoch,
            epochs: at.epochs,
            iteration: at.iteration,
            base_lr: self.base_lr,
            dtype: DType::F32,
        };
        Ok(Bindings::new(&self.exe.module, req)?)
    }

    /// Binds the device copies of the state and the constants in place of the host ones,
    /// making them first if needed; the `learn` tensors, which the optimizer changes every step,
    /// are copied each time.
    fn make_resident(&mut self, b: &mut Bindings, device: &Device) -> Result<(), BoxError> {
        if !self.resident.as_ref().is_some_and(|r| r.device.same_device(device)) {
            self.resident = Some(Resident {
                device: device.clone(),
                states: b.states.iter().map(|t| t.to_device(device)).collect::<Result<_, _>>()?,
                consts: b.consts.iter().map(|t| t.to_device(device)).collect::<Result<_, _>>()?,
                pending: Vec::new(),
            });
        }
        let resident = self.resident.as_mut().expect("made above");
        for change in std::mem::take(&mut resident.pending) {
            match change {
                Change::Whole(s) => resident.states[s] = b.states[s].to_device(device)?,
                Change::Rows(s, rows, values) => resident.states[s] = set_rows(&resident.states[s], rows, &values)?,
            }
        }
        b.states.clone_from(&resident.states);
        for (k, (slot, resident)) in b.consts.iter_mut().zip(&resident.consts).enumerate() {
            *slot = match self.learned.iter().any(|(index, _)| *index == k) {
                true => slot.to_device(device)?,
                false => resident.clone(),
            };
        }
        Ok(())
    }

    /// The state as a back end reading device memory sees it on `device` (kept there between
    /// steps and brought up to date by replaying the handlers' changes): for tests, which
    /// check it against [`Objective::state`].
    pub fn state_on(&mut self, device: &Device) -> Result<Vec<Tensor>, BoxError> {
        let mut b = self.bindings(self.probe_inputs(2)?, None, RunPosition::at_epoch(0, 1))?;
        self.make_resident(&mut b, device)?;
        Ok(b.states)
    }

    /// Evaluates a one-output program (schedules, augmentation arguments).
    fn value(&self, program: &Program, b: &Bindings) -> Result<Tensor, BoxError> {
        Ok(eval::run(&self.exe.module, program, b)?.remove(0))
    }

    fn run_handlers(&mut self, event: Event, b: &Bindings) -> Result<(), BoxError> {
        let handlers: Vec<&Handler> = self.exe.module.handlers.iter().filter(|h| h.event == event).collect();
        let mut new_states = self.states.clone();
        let mut new_learned: Vec<(usize, Tensor)> = Vec::new();
        let mut changes = Vec::new();
        for h in handlers {
            let (outputs, values) = eval::run_traced(&self.exe.module, &h.program, b, &Default::default())?;
            let _ = outputs;
            let value = |x: sslc_compiler::ir::Handle<sslc_compiler::ir::Expr>| {
                values[x.index()].clone().expect("handler values are computed")
            };
            if let Some(c) = h.condition {
                if value(c).to_dtype(DType::F64)?.to_vec0::<f64>()? == 0.0 {
                    continue;
                }
            }
            for u in &h.updates {
                let v = value(u.value).to_dtype(DType::F32)?;
                match u.target {
                    Assigned::State(s) => {
                        let slot = &mut new_states[s.index()];
                        match u.rows {
                            None => {
                                *slot = v;
                                changes.push(Change::Whole(s.index()));
                            }
                            Some(rows) => {
                                let (table, rows, values) = write_rows(slot, &value(rows), &v)?;
                                *slot = table;
                                changes.push(Change::Rows(s.index(), rows, values));
                            }
                        }
                    }
                    Assigned::Learned(c) => new_learned.push((c.index(), v)),
                }
            }
        }
        // Every assigned value, state or learn tensor, must be finite.
        let states = new_states.iter().zip(self.exe.module.states.iter()).map(|(t, (_, d))| ("state", &d.name, t));
        let learned = new_learned.iter().map(|(k, t)| ("learn tensor", &self.consts[*k].0, t));
        for (what, name, t) in states.chain(learned) {
            let bad = t.flatten_all()?.to_vec1::<f32>()?.iter().filter(|x| !x.is_finite()).count();
            if bad > 0 {
                return Err(format!(
                    "{what} `{name}` became NaN or infinite in {bad} entries after an `on {}` handler",
                    if event == Event::Step { "step" } else { "epoch" }
                )
                .into());
            }
        }
        self.states = new_states;
        if let Some(resident) = self.resident.as_mut() {
            resident.pending.extend(changes);
        }
        // The optimizer holds these variables: setting them in place keeps its momentum buffers.
        for (k, value) in new_learned {
            let (_, var) =
                self.learned.iter().find(|(index, _)| *index == k).ok_or("a learn tensor without a variable")?;
            var.set(&value)?;
        }
        Ok(())
    }
}

/// `what` `name` from a checkpoint's objective `state`, in f32, checked to have this run's `dims`.
fn saved(state: &[(String, Tensor)], what: &str, name: &str, dims: &[usize]) -> Result<Tensor, BoxError> {
    let Some((_, t)) = state.iter().find(|(n, _)| n == name) else {
        return Err(format!("the checkpoint has no {what} `{name}`; was it written by another objective?").into());
    };
    if t.dims() != dims {
        return Err(format!("{what} `{name}` in the checkpoint is {:?}, but this run needs {dims:?}", t.dims()).into());
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// Rows `rows` of `table` replaced by `values` (later rows win when an index repeats), with the
/// distinct rows written and their final values `[rows, ...]`, for [`set_rows`].
fn write_rows(table: &Tensor, rows: &Tensor, values: &Tensor) -> Result<(Tensor, Vec<i64>, Tensor), BoxError> {
    let dims = table.dims().to_vec();
    let width: usize = dims[1..].iter().product();
    let mut data = table.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let new = values.flatten_all()?.to_vec1::<f32>()?;
    let mut written: Vec<i64> = Vec::new();
    for (k, r) in rows.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().enumerate() {
        let r = usize::try_from(r)
            .ok()
            .filter(|&r| r < dims[0])
            .ok_or_else(|| format!("sample index {r} is outside the state's {} rows", dims[0]))?;
        data[r * width..(r + 1) * width].copy_from_slice(&new[k * width..(k + 1) * width]);
        written.push(r as i64);
    }
    written.sort_unstable();
    written.dedup();
    let finals: Vec<f32> =
        written.iter().flat_map(|&r| data[r as usize * width..(r as usize + 1) * width].iter().copied()).collect();
    let mut final_dims = dims.clone();
    final_dims[0] = written.len();
    let finals = Tensor::from_vec(finals, final_dims, &Device::Cpu)?;
    Ok((Tensor::from_vec(data, dims, &Device::Cpu)?, written, finals))
}

/// `table` (on any device) with the distinct `rows` set to `values` (host), by one scatter on
/// the table's device.
fn set_rows(table: &Tensor, rows: Vec<i64>, values: &Tensor) -> Result<Tensor, BoxError> {
    let dims = table.dims().to_vec();
    let (n, width) = (rows.len(), dims[1..].iter().product::<usize>());
    if n == 0 {
        return Ok(table.clone());
    }
    let device = table.device();
    let index = Tensor::from_vec(rows, (n, 1), &Device::Cpu)?.broadcast_as((n, width))?.contiguous()?;
    let values = values.reshape((n, width))?.to_device(device)?;
    let table = table.reshape((dims[0], width))?.scatter(&index.to_device(device)?, &values, 0)?;
    Ok(table.reshape(dims)?)
}

impl Objective for CompiledObjective {
    fn name(&self) -> &str {
        &self.exe.module.name
    }

    fn embeddings(&self) -> Vec<EmbeddingSpec> {
        let m = &self.exe.module;
        m.inputs
            .iter()
            .map(|(_, i)| EmbeddingSpec {
                name: i.name.clone(),
                view: i.source.view,
                pruned: i.source.pruned.map(|p| self.param_value(p)),
                target: i.source.ema.is_some(),
                predictor: i.source.predictor.map(|hidden| hidden as usize),
            })
            .collect()
    }

    fn target_momentum(&self, at: RunPosition) -> Result<Option<f64>, BoxError> {
        let module = &self.exe.module;
        let mut momenta = module.inputs.iter().filter_map(|(_, i)| i.source.ema.as_ref());
        let Some(first) = momenta.next() else { return Ok(None) };
        if let Some(other) = momenta.find(|m| *m != first) {
            let name = |m: &Momentum| match m {
                Momentum::Param(p) => module.params[*p].name.clone(),
                Momentum::Schedule(s) => s.clone(),
            };
            return Err(format!(
                "the target encoder's momentum is given as both `{}` and `{}`; there is one target encoder, so \
                 name one momentum in every `encoder(..., ema=...)`",
                name(first),
                name(other)
            )
            .into());
        }
        let momentum = match first {
            Momentum::Param(p) => self.param_value(*p),
            Momentum::Schedule(name) => {
                let schedule = module.schedule_named(name).ok_or_else(|| format!("no schedule `{name}`"))?;
                let b = self.bindings(self.probe_inputs(2)?, None, at)?;
                self.value(&schedule.program, &b)?.to_dtype(DType::F64)?.to_vec0::<f64>()?
            }
        };
        if !(0.0..=1.0).contains(&momentum) {
            return Err(format!(
                "the target encoder's momentum is {momentum} at epoch {}; it must lie in [0, 1] (0.99 to 0.999 is usual)",
                at.epoch
            )
            .into());
        }
        Ok(Some(momentum))
    }

    fn views(&self) -> ViewSpec {
        let views = self.exe.module.views.as_ref().expect("validated objectives declare views");
        ViewSpec {
            base: views.pipeline[0].name.clone(),
            extra: views.pipeline[1..]
                .iter()
                .map(|a| ExtraAugmentation {
                    name: a.name.clone(),
                    args: a.args.iter().map(|(n, _)| n.clone()).collect(),
                })
                .collect(),
            small_crops: views.names.len() - 2,
        }
    }

    fn init_state(&mut self, labels: &[u32], width: usize) -> Result<(), BoxError> {
        self.resident = None;
        self.samples = labels.len();
        self.width = Some(width);
        self.states = Vec::new();
        // The training set's classes, for the constants declared `= labels`; the others are built.
        let classes =
            Tensor::from_vec(labels.iter().map(|&l| l as f32).collect::<Vec<_>>(), labels.len(), &Device::Cpu)?;
        self.consts = (self.exe.module.consts.iter())
            .filter(|(_, d)| d.init == sslc_compiler::ir::ConstInit::Labels)
            .map(|(_, d)| (d.name.clone(), classes.clone()))
            .collect();
        let b = self.bindings(self.probe_inputs(2)?, None, RunPosition::at_epoch(0, 1))?;
        self.states = b.states.iter().map(|t| t.to_dtype(DType::F32)).collect::<Result<_, _>>()?;
        self.consts =
            self.exe.module.consts.iter().zip(&b.consts).map(|((_, d), t)| (d.name.clone(), t.clone())).collect();
        let learned = self.exe.module.consts.iter().enumerate().filter(|(_, (_, d))| d.learned).map(|(k, _)| k);
        self.learned = learned
            .map(|k| Ok((k, Var::from_tensor(&self.consts[k].1.to_dtype(DType::F32)?)?)))
            .collect::<Result<_, BoxError>>()?;
        Ok(())
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.learned.iter().map(|(k, var)| (self.consts[*k].0.clone(), var.clone())).collect()
    }

    fn parameter_options(&self) -> Vec<ParamOptions> {
        let declared =
            |k: usize| self.exe.module.consts.iter().nth(k).expect("learned tensors are constants").1.optimizer;
        (self.learned.iter().map(|(k, _)| declared(*k)))
            .map(|o| ParamOptions { lr_scale: o.lr_scale, decay: o.decay })
            .collect()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let states = self.exe.module.states.iter().zip(&self.states).map(|((_, d), t)| (d.name.clone(), t.clone()));
        states.chain(self.parameters().into_iter().map(|(name, var)| (name, var.as_tensor().detach()))).collect()
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), BoxError> {
        self.resident = None;
        for ((_, d), slot) in self.exe.module.states.iter().zip(self.states.iter_mut()) {
            *slot = saved(state, "state", &d.name, slot.dims())?;
        }
        for (name, var) in self.parameters() {
            var.set(&saved(state, "learned tensor", &name, var.dims())?)?;
        }
        Ok(())
    }

    fn learning_rate(&self, at: RunPosition, base_lr: f64) -> Result<Option<f64>, BoxError> {
        let Some(schedule) = self.exe.module.schedule_named("lr") else { return Ok(None) };
        let mut b = self.bindings(self.probe_inputs(2)?, None, at)?;
        b.base_lr = base_lr;
        let lr = self.value(&schedule.program, &b)?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
        Ok(Some(lr))
    }

    fn schedules_per_step(&self) -> bool {
        let per_step = |e: &Expr| matches!(e, Expr::Builtin(BuiltinValue::Iteration | BuiltinValue::Iterations));
        self.exe.module.schedules.iter().any(|s| s.program.exprs.iter().any(|(_, e)| per_step(e)))
    }

    fn augmentation_args(&self, indices: &[u32], at: RunPosition) -> Result<Vec<Vec<Vec<f32>>>, BoxError> {
        let views = self.exe.module.views.as_ref().expect("validated objectives declare views");
        let n = indices.len();
        let inputs = self.probe_inputs(n)?;
        let b = self.bindings(inputs, Some(indices), at)?;
        let mut out = Vec::new();
        for a in &views.pipeline[1..] {
            let mut args = Vec::new();
            for (_, program) in &a.args {
                let v = self.value(program, &b)?.to_dtype(DType::F32)?;
                let v = if v.rank() == 0 { v.broadcast_as(n)?.contiguous()? } else { v };
                args.push(v.to_vec1::<f32>()?);
            }
            out.push(args);
        }
        Ok(out)
    }

    fn step(&mut self, embeddings: &[Tensor], indices: &[u32], at: RunPosition) -> Result<StepOutput, BoxError> {
        // Embeddings on a GPU stay there for a back end that reads device memory (CUDA); the
        // others get host copies, and the gradients go back to the embeddings' device.
        let device = embeddings.first().map_or(Device::Cpu, |e| e.device().clone());
        let in_place = !device.is_cpu() && self.backend.reads_device_memory();
        let inputs = (self.exe.module.inputs.iter().zip(embeddings))
            .map(|((_, d), t)| Ok((d.name.clone(), if in_place { t.clone() } else { t.to_device(&Device::Cpu)? })))
            .collect::<Result<_, BoxError>>()?;
        let mut b = self.bindings(inputs, Some(indices), at)?;
        if in_place {
            self.make_resident(&mut b, &device)?;
        }
        let Evaluation { loss, per_sample, metrics, grads } = self.backend.evaluate(&b)?;
        let per_sample = match per_sample {
            Some(p) => p.to_dtype(DType::F32)?,
            None => Tensor::zeros(indices.len(), DType::F32, &device)?,
        };
        let mut grads = grads.into_iter().map(|(_, g)| g.to_dtype(DType::F32)).collect::<Result<Vec<_>, _>>()?;
        // Inputs' gradients first, then the `learn` tensors' (Leaf::every's order), which go to
        // their variables (on the host).
        let parameter_grads = (grads.split_off(self.exe.module.inputs.len()).iter().zip(&self.learned))
            .map(|(g, (_, var))| g.to_device(var.device()))
            .collect::<Result<Vec<_>, _>>()?;
        let grads = grads.iter().map(|g| g.to_device(&device)).collect::<Result<Vec<_>, _>>()?;
        Ok(StepOutput { loss, per_sample, metrics, grads, parameter_grads })
    }

    fn after_step(
        &mut self,
        embeddings: &[Tensor],
        indices: &[u32],
        output: &StepOutput,
        at: RunPosition,
    ) -> Result<(), BoxError> {
        if !self.exe.module.handlers.iter().any(|h| h.event == Event::Step) {
            return Ok(());
        }
        // Handlers run on the host's reference evaluator: what they read of the batch comes
        // there, once per step (docs/gpu.md); an embedding no handler reads is a placeholder
        // that only sizes the batch, so nothing is copied for it.
        let placeholders = match self.step_reads.inputs.iter().all(|&read| read) {
            true => Vec::new(),
            false => self.probe_inputs(indices.len())?,
        };
        let inputs = (self.exe.module.inputs.iter().zip(embeddings).enumerate())
            .map(|(k, ((_, d), t))| match self.step_reads.inputs[k] {
                true => Ok((d.name.clone(), t.to_device(&Device::Cpu)?)),
                false => Ok(placeholders[k].clone()),
            })
            .collect::<Result<_, BoxError>>()?;
        let mut b = self.bindings(inputs, Some(indices), at)?;
        // The loss program's outputs, in its order: loss, per_sample, metrics.
        b.forward = self
            .exe
            .module
            .loss
            .outputs
            .iter()
            .map(|o| match o.name.as_str() {
                "loss" => Tensor::new(output.loss as f32, &Device::Cpu),
                "per_sample" if self.step_reads.forward => output.per_sample.to_device(&Device::Cpu),
                "per_sample" => Tensor::zeros(indices.len(), DType::F32, &Device::Cpu),
                name => {
                    let v = output.metrics.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v);
                    Tensor::new(v as f32, &Device::Cpu)
                }
            })
            .collect::<Result<_, _>>()?;
        self.run_handlers(Event::Step, &b)
    }

    fn end_epoch(&mut self, completed: usize, epochs: usize) -> Result<(), BoxError> {
        if !self.exe.module.handlers.iter().any(|h| h.event == Event::Epoch) {
            return Ok(());
        }
        let b = self.bindings(self.probe_inputs(2)?, None, RunPosition::at_epoch(completed, epochs))?;
        self.run_handlers(Event::Epoch, &b)
    }
}
