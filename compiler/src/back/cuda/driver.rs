//! Running a plan on a CUDA device through the driver API. libcuda is opened at run time
//! (cudarc's dynamic loading), so building needs no CUDA at all; a machine without a driver or
//! a GPU gets [`CudaError::NoDevice`].

use super::c::CType;
use super::emulate::{self, Data, Value};
use super::plan::{Body, BufferId, KernelPlan, PairwiseProduct, Plan, Step, PAIR_TILE, PAIR_VCOLS};
use super::{nvrtc, CudaError};
use crate::eval::Bindings;
use crate::ir::{Elem, Module};
use candle_core::Tensor;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

fn driver_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

/// That a driver and at least one GPU are there, without creating a context on any.
pub fn check_device() -> Result<(), CudaError> {
    if !nvrtc::library_present(nvrtc::Library::Driver) {
        return Err(CudaError::NoDevice("libcuda was not found (no NVIDIA driver on this machine)".into()));
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(format!("the driver reports {e}")))?;
    if count < 1 {
        return Err(CudaError::NoDevice("the driver sees no GPU".into()));
    }
    Ok(())
}

/// The first device and its architecture (`90` for sm_90).
pub fn device() -> Result<(Arc<CudaContext>, u32), CudaError> {
    check_device()?;
    let ctx = CudaContext::new(0).map_err(|e| CudaError::NoDevice(format!("device 0: {e}")))?;
    let arch = architecture(&ctx)?;
    Ok((ctx, arch))
}

/// A context's architecture (`90` for sm_90), refused below sm_80.
fn architecture(ctx: &CudaContext) -> Result<u32, CudaError> {
    let (major, minor) = ctx.compute_capability().map_err(driver_error("compute capability"))?;
    let arch = (major * 10 + minor) as u32;
    if arch < 80 {
        return Err(CudaError::Unsupported(format!(
            "sm_{arch} devices: the tiles use tensor-core instructions of sm_80 or newer"
        )));
    }
    Ok(arch)
}

/// A buffer's device memory: allocated by the session, or lent by the caller (the training
/// loop's embeddings and the objective's state, which are already on the device: reading them
/// in place is what keeps them off the bus).
pub enum DeviceBuffer<'b> {
    Float(CudaSlice<f32>),
    Int(CudaSlice<i64>),
    Bool(CudaSlice<u8>),
    LentFloat(&'b CudaSlice<f32>),
    LentInt(&'b CudaSlice<i64>),
}

/// Memory the caller lends a session for one external buffer, instead of a host upload.
#[derive(Clone, Copy)]
pub enum Lent<'b> {
    Float(&'b CudaSlice<f32>),
    Int(&'b CudaSlice<i64>),
}

/// A plan's kernels compiled for the first device and loaded there: done once per objective,
/// since NVRTC and module loading cost far more than a batch.
pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
}

impl Kernels {
    /// Compiles `source` (or reads it from the cache) for the first device and loads every
    /// kernel, to run on its default stream.
    pub fn load(plan: &Plan, source: &str) -> Result<Kernels, CudaError> {
        let (ctx, _) = device()?;
        Kernels::load_on(plan, source, ctx.default_stream())
    }

    /// The same for `stream`'s device, to run on `stream` (candle's, when training: its kernels
    /// and ours are then ordered by the stream itself, with no synchronisation).
    pub fn load_on(plan: &Plan, source: &str, stream: Arc<CudaStream>) -> Result<Kernels, CudaError> {
        let ctx = stream.context().clone();
        let cubin = nvrtc::compile(source, architecture(&ctx)?)?;
        let loaded =
            ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin.image)).map_err(driver_error("loading the CUBIN"))?;
        let functions = plan
            .kernels
            .iter()
            .map(|k| loaded.load_function(&k.name).map_err(driver_error(&k.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Kernels { stream, functions })
    }
}

/// One batch on the device: the loaded kernels with the batch's buffers; run it once or many
/// times.
pub struct Session<'p> {
    plan: &'p Plan,
    stream: Arc<CudaStream>,
    functions: &'p [CudaFunction],
    buffers: Vec<DeviceBuffer<'p>>,
    /// Each kernel's scalar arguments, as its parameters declare them.
    arguments: Vec<Vec<ScalarArg>>,
    shapes: Vec<Vec<usize>>,
    launches: Vec<LaunchConfig>,
}

impl<'p> Session<'p> {
    /// Uploads the batch's inputs and allocates every other buffer.
    pub fn new(module: &Module, plan: &'p Plan, kernels: &'p Kernels, b: &Bindings) -> Result<Session<'p>, CudaError> {
        Session::with_lent(module, plan, kernels, b, &vec![None; plan.buffers.len()])
    }

    /// The same, reading the external buffers `lent` has memory for (by buffer id) in place:
    /// only the others are uploaded.
    pub fn with_lent(
        module: &Module,
        plan: &'p Plan,
        kernels: &'p Kernels,
        b: &Bindings,
        lent: &[Option<Lent<'p>>],
    ) -> Result<Session<'p>, CudaError> {
        super::check_sample_index(module, b)?;
        let stream = kernels.stream.clone();
        let scalars = emulate::scalar_values(plan, module, b);
        let sizes = emulate::buffer_sizes(plan, b);
        let mut buffers = Vec::new();
        let data = emulate::external_data(plan, b, &|id| lent[id].is_none())?;
        for (id, ((buf, data), &n)) in plan.buffers.iter().zip(data).zip(&sizes).enumerate() {
            let upload = driver_error("uploading inputs");
            if let Some(memory) = lent[id] {
                let (len, buffer) = match memory {
                    Lent::Float(s) => (s.len(), DeviceBuffer::LentFloat(s)),
                    Lent::Int(s) => (s.len(), DeviceBuffer::LentInt(s)),
                };
                if len < n {
                    return Err(CudaError::Bind(format!("`{}` needs {n} elements on the device, got {len}", buf.name)));
                }
                buffers.push(buffer);
                continue;
            }
            let n = n.max(1);
            buffers.push(match (data, buf.elem) {
                (Some(Data::Float(v)), _) => DeviceBuffer::Float(stream.clone_htod(&v).map_err(upload)?),
                (Some(Data::Int(v)), _) => DeviceBuffer::Int(stream.clone_htod(&v).map_err(upload)?),
                (Some(Data::Bool(v)), _) => DeviceBuffer::Bool(
                    stream.clone_htod(&v.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>()).map_err(upload)?,
                ),
                (None, Elem::Real) => DeviceBuffer::Float(stream.alloc_zeros(n).map_err(upload)?),
                (None, Elem::Int) => DeviceBuffer::Int(stream.alloc_zeros(n).map_err(upload)?),
                (None, Elem::Bool) => DeviceBuffer::Bool(stream.alloc_zeros(n).map_err(upload)?),
            });
        }
        let launches =
            plan.kernels.iter().map(|k| launch_config(plan, &scalars, &k.body)).collect::<Result<Vec<_>, _>>()?;
        let arguments = plan.kernels.iter().map(|k| scalar_args(plan, k, &scalars)).collect::<Result<Vec<_>, _>>()?;
        let shapes = plan.buffers.iter().map(|buf| buf.shape.iter().map(|d| b.size(module, d)).collect()).collect();
        Ok(Session { plan, stream, functions: &kernels.functions, buffers, arguments, shapes, launches })
    }

    /// Enqueues every kernel once, in order.
    pub fn launch(&self) -> Result<(), CudaError> {
        let kernels = self.plan.kernels.iter().zip(self.functions).zip(&self.launches).zip(&self.arguments);
        for (((k, f), cfg), scalars) in kernels {
            let mut args = self.stream.launch_builder(f);
            for &(id, _) in &k.buffers {
                match &self.buffers[id] {
                    DeviceBuffer::Float(s) => args.arg(s),
                    DeviceBuffer::Int(s) => args.arg(s),
                    DeviceBuffer::Bool(s) => args.arg(s),
                    DeviceBuffer::LentFloat(s) => args.arg(*s),
                    DeviceBuffer::LentInt(s) => args.arg(*s),
                };
            }
            for s in scalars {
                match s {
                    ScalarArg::Float(v) => args.arg(v),
                    ScalarArg::LongLong(v) => args.arg(v),
                    ScalarArg::Bool(v) => args.arg(v),
                };
            }
            // SAFETY: the arguments follow the kernel's parameter list, each scalar pushed as a
            // value of its parameter's C size ([`scalar_args`]; the driver copies that many
            // bytes from each pointer), buffers are sized from the same shapes the kernels
            // index with, and sample indices were range-checked.
            unsafe { args.launch(*cfg) }.map_err(driver_error(&k.name))?;
        }
        Ok(())
    }

    /// Device milliseconds of each of `repeats` runs of the whole plan, after one warm-up run:
    /// events recorded on the stream before and after each run time the kernels alone, with
    /// the inputs already on the device and no read-back, and the stream is synchronised after
    /// each run, so every run starts on an idle device. bench/torch_gpu.py times PyTorch the
    /// same way (its `median_ms`), so `sslc bench --backend cuda` and its numbers compare.
    pub fn time(&self, repeats: usize) -> Result<Vec<f64>, CudaError> {
        self.launch()?;
        self.stream.synchronize().map_err(driver_error("the warm-up run"))?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let start = self.stream.record_event(timing).map_err(driver_error("timing"))?;
            self.launch()?;
            let end = self.stream.record_event(timing).map_err(driver_error("timing"))?;
            // `elapsed_ms` waits for both events: the synchronisation after each run.
            times.push(start.elapsed_ms(&end).map(f64::from).map_err(driver_error("timing"))?);
        }
        Ok(times)
    }

    /// Waits for the device and reads the plan's outputs back.
    pub fn outputs(&self) -> Result<Vec<Tensor>, CudaError> {
        self.stream.synchronize().map_err(driver_error("running the kernels"))?;
        let read = driver_error("reading results");
        self.plan
            .outputs
            .iter()
            .map(|&(_, id)| {
                let data = match &self.buffers[id] {
                    DeviceBuffer::Float(s) => Data::Float(self.stream.clone_dtoh(s).map_err(&read)?),
                    DeviceBuffer::LentFloat(s) => Data::Float(self.stream.clone_dtoh(*s).map_err(&read)?),
                    DeviceBuffer::Int(s) => Data::Int(self.stream.clone_dtoh(s).map_err(&read)?),
                    DeviceBuffer::LentInt(s) => Data::Int(self.stream.clone_dtoh(*s).map_err(&read)?),
                    DeviceBuffer::Bool(s) => {
                        Data::Bool(self.stream.clone_dtoh(s).map_err(&read)?.into_iter().map(|x| x != 0).collect())
                    }
                };
                let shape = &self.shapes[id];
                let n: usize = shape.iter().product();
                data.truncated(n).tensor(shape).map_err(|e| CudaError::Driver(e.to_string()))
            })
            .collect()
    }
}

impl<'p> Session<'p> {
    /// The plan's outputs left on the device, in order, with their shapes: the session's own
    /// memory moves out, an output in lent memory (or named twice) is copied on the device.
    /// Nothing waits for the kernels: whoever reads the memory next is ordered after them on
    /// the stream.
    pub fn into_device_outputs(mut self) -> Result<Vec<(DeviceBuffer<'static>, Vec<usize>)>, CudaError> {
        let mut owned: Vec<Option<DeviceBuffer<'p>>> = self.buffers.drain(..).map(Some).collect();
        let mut out: Vec<(DeviceBuffer<'static>, Vec<usize>, BufferId)> = Vec::with_capacity(self.plan.outputs.len());
        for &(_, id) in &self.plan.outputs {
            let buffer = match owned[id].take() {
                Some(DeviceBuffer::Float(s)) => DeviceBuffer::Float(s),
                Some(DeviceBuffer::Int(s)) => DeviceBuffer::Int(s),
                Some(DeviceBuffer::Bool(s)) => DeviceBuffer::Bool(s),
                Some(lent) => self.copy(&lent)?,
                None => match out.iter().find(|(_, _, earlier)| *earlier == id) {
                    Some((earlier, _, _)) => self.copy(earlier)?,
                    None => return Err(CudaError::Driver(format!("output buffer {id} was moved out twice"))),
                },
            };
            out.push((buffer, self.shapes[id].clone(), id));
        }
        Ok(out.into_iter().map(|(buffer, shape, _)| (buffer, shape)).collect())
    }

    /// A copy of `buffer` in memory of its own, on the device.
    fn copy(&self, buffer: &DeviceBuffer<'_>) -> Result<DeviceBuffer<'static>, CudaError> {
        let copy = driver_error("copying an output");
        Ok(match buffer {
            DeviceBuffer::Float(s) => DeviceBuffer::Float(self.stream.clone_dtod(s).map_err(copy)?),
            DeviceBuffer::LentFloat(s) => DeviceBuffer::Float(self.stream.clone_dtod(*s).map_err(copy)?),
            DeviceBuffer::Int(s) => DeviceBuffer::Int(self.stream.clone_dtod(s).map_err(copy)?),
            DeviceBuffer::LentInt(s) => DeviceBuffer::Int(self.stream.clone_dtod(*s).map_err(copy)?),
            DeviceBuffer::Bool(s) => DeviceBuffer::Bool(self.stream.clone_dtod(s).map_err(copy)?),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

/// A scalar kernel argument in its parameter's C type. A launch pushes a pointer per parameter
/// and the driver copies `sizeof` the *declared* type from it, whatever Rust value is there: a
/// 4-byte f32 pushed for a `const bool` would hand the kernel its lowest byte (0 for 1.0f, so
/// `true` arrives as `false`), and one pushed for a `long long` would read past it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarArg {
    Float(f32),
    LongLong(i64),
    Bool(bool),
}

impl ScalarArg {
    /// The bytes the driver copies into the kernel's parameter space (native byte order).
    pub fn bytes(self) -> Vec<u8> {
        match self {
            ScalarArg::Float(v) => v.to_ne_bytes().to_vec(),
            ScalarArg::LongLong(v) => v.to_ne_bytes().to_vec(),
            ScalarArg::Bool(v) => vec![u8::from(v)],
        }
    }
}

/// `kernel`'s scalar arguments, in parameter order, from the plan's host values
/// ([`emulate::scalar_values`]): pure, so CI checks the marshalling without a GPU. A value
/// whose kind differs from the parameter's declared type is an internal error, refused here
/// rather than pushed with the wrong size.
pub fn scalar_args(plan: &Plan, kernel: &KernelPlan, values: &[Value]) -> Result<Vec<ScalarArg>, CudaError> {
    kernel
        .scalars
        .iter()
        .map(|&s| {
            let declared = &plan.scalars[s];
            match (declared.ty, values[s]) {
                (CType::Float, Value::Real(v)) => Ok(ScalarArg::Float(v)),
                (CType::LongLong, Value::Int(v)) => Ok(ScalarArg::LongLong(v)),
                (CType::Bool, Value::Bool(v)) => Ok(ScalarArg::Bool(v)),
                (ty, value) => Err(CudaError::Compiler(format!(
                    "internal error: kernel `{}` declares `{ty} {}` but its host value is {value:?}",
                    kernel.name, declared.name
                ))),
            }
        })
        .collect()
}

/// Grid-stride steps need no more blocks than this to fill any current GPU.
const MAX_BLOCKS: i64 = 1 << 16;

fn launch_config(plan: &Plan, scalars: &[Value], body: &Body) -> Result<LaunchConfig, CudaError> {
    let size = |e| emulate::host_size(plan, scalars, e);
    let blocks = |units: i64, per_block: i64| ((units + per_block - 1) / per_block).clamp(1, MAX_BLOCKS) as u32;
    let threads = body.threads();
    let grid_dim = match body {
        Body::Loop { .. } => (1, 1, 1),
        Body::Grid(steps) => {
            let mut most = 1;
            for step in steps {
                most = most.max(match step {
                    Step::Map { count, .. } => blocks(size(count)?, i64::from(threads)),
                    Step::Reduce { outputs, .. } => blocks(size(outputs)?, i64::from(threads / 32)),
                });
            }
            (most, 1, 1)
        }
        Body::Tiles(t) => {
            let rows = (size(&t.outer_count)?.max(1) as u64).div_ceil(PAIR_TILE) as u32;
            let columns = match &t.product {
                PairwiseProduct::MatMul { width, .. } => (size(width)?.max(1) as u64).div_ceil(PAIR_VCOLS) as u32,
                PairwiseProduct::Reduce(_) => 1,
            };
            (rows, columns, 1)
        }
    };
    Ok(LaunchConfig { grid_dim, block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}
