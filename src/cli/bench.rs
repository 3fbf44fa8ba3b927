//! `sslc bench`: how long an objective's forward and backward pass takes on a back end, and
//! how much memory it needs beyond its inputs and outputs, on random inputs.

use super::common::{fail, load_objective, print_stdout, random_inputs, read_given, Backend};
use candle_core::DType;
use clap::Args;
use sslc_compiler::back;
use sslc_compiler::eval::{BindRequest, Bindings, Overrides};
use sslc_compiler::objective::Executable;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Time an objective's loss and gradient on random inputs.
#[derive(Args)]
#[command(after_help = "Prints one JSON line: objective, backend, batch, dim, threads, compile_ms (autodiff, \
optimisation and code generation), fwd_bwd_ms_median and fwd_bwd_ms_min (one evaluation of the loss and \
every gradient, after a warm-up), timing (how they were measured: wall_clock around whole evaluations on \
the host back ends; device_events with --backend cuda, CUDA events around the kernels alone, inputs already \
on the GPU, synchronised after each run, as bench/torch_gpu.py times PyTorch), peak_extra_bytes (the most memory an evaluation holds beyond its \
inputs and its results), and a roofline: gflop (the optimised program's floating-point operations: 2mkn \
per product, one per element-wise operation or reduced element), compulsory_mb (its inputs, constants, \
state and outputs, each moved once), flop_per_byte (their ratio), and gflop_per_s and gb_per_s (both over \
the median time). Below the machine's balance point (peak FLOP/s over memory bandwidth) an objective is \
bound by memory, above it by arithmetic.\n\nExample:\n  sslc bench objectives/simclr.ssl --backend cpu --batch 512 --dim 128")]
pub struct BenchArgs {
    file: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// NAME=PATH.npy for an input, constant (a `learn` tensor, the labels) or state, instead of
    /// random values or the built ones (repeatable).
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// NAME=ROWSxCOLS: the shape of one random input, instead of [batch, dim] (repeatable).
    #[arg(long = "shape", value_name = "NAME=ROWSxCOLS")]
    shapes: Vec<String>,
    /// Rows of each random input (N).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Columns of each input (D; GH's ETF needs dim >= K - 1).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Timed evaluations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Worker threads (default: one per core; at most 8 per core).
    #[arg(long, value_parser = super::common::thread_count)]
    threads: Option<usize>,
    /// NAME=VALUE overrides (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

/// Counts the bytes the process holds, and the most it has held since the last reset, while
/// [`COUNTING`] is on. It is the global allocator of the whole binary (Rust has one per binary),
/// so everything else sslc does pays one relaxed load per allocation, not the two contended
/// atomic updates of counting.
struct CountingAllocator;

/// Set by `sslc bench` alone. Counts are signed: a block allocated before counting began and
/// freed after only lowers them, and `bench` reads differences.
static COUNTING: AtomicBool = AtomicBool::new(false);
static HELD: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn counted(added: usize, removed: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let change = added as isize - removed as isize;
        let now = HELD.fetch_add(change, Ordering::Relaxed) + change;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counted(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counted(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        counted(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

pub fn bench(args: &BenchArgs) -> i32 {
    if args.batch == 0 || args.dim == 0 || args.iters == 0 {
        return fail("--batch, --dim and --iters must be at least 1");
    }
    COUNTING.store(true, Ordering::Relaxed);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot start {threads} threads: {e}")),
    };
    match pool.install(|| run(args, threads)) {
        Ok(line) => {
            print_stdout(&format!("{line}\n"));
            0
        }
        Err(code) => code,
    }
}

fn run(args: &BenchArgs, threads: usize) -> Result<serde_json::Value, i32> {
    let module = load_objective(&args.file)?;
    let overrides = Overrides::parse(&args.set).map_err(fail)?;
    let mut req = BindRequest::inputs_only(Vec::new(), &overrides, DType::F32);
    read_given(&module, &args.inputs, &mut req)?;
    req.inputs = random_inputs(&module, &req.inputs, &args.shapes, args.batch, args.dim, 0)?;
    let bindings = Bindings::new(&module, req).map_err(fail)?;
    let name = module.name.clone();

    let start = Instant::now();
    let exe = Arc::new(Executable::new(module).map_err(|d| fail(d.message))?);
    let cost = sslc_compiler::cost::cost(&exe.module, &exe.optimized, &bindings);
    let backend = back::build(args.backend.kind(), exe).map_err(fail)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;

    // A warm-up evaluation, which also measures memory: the excess of the peak over what was
    // held before, less the results, is the evaluation's own working memory (which a back end
    // may keep for the next evaluation).
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = backend.evaluate(&bindings).map_err(fail)?;
    let tensors = result.per_sample.iter().chain(result.grads.iter().map(|(_, g)| g));
    let result_bytes: usize = tensors.map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
    let peak_extra_bytes = (PEAK.load(Ordering::Relaxed) - before - result_bytes as isize).max(0);
    drop(result);

    // A GPU back end is timed by its own events around the kernels, as bench/torch_gpu.py
    // times PyTorch; the host back ends by the wall clock around whole evaluations.
    let (mut times, timing) = match backend.device_times(&bindings, args.iters) {
        Some(times) => (times.map_err(fail)?, "device_events"),
        None => {
            let mut times = Vec::with_capacity(args.iters);
            for _ in 0..args.iters {
                let t = Instant::now();
                let result = backend.evaluate(&bindings).map_err(fail)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
                drop(result);
            }
            (times, "wall_clock")
        }
    };
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    Ok(serde_json::json!({
        "objective": name,
        "backend": backend.name(),
        "batch": args.batch,
        "dim": args.dim,
        "threads": threads,
        "compile_ms": compile_ms,
        "timing": timing,
        "fwd_bwd_ms_median": median,
        "fwd_bwd_ms_min": times[0],
        "peak_extra_bytes": peak_extra_bytes,
        "gflop": cost.flops / 1e9,
        "compulsory_mb": cost.bytes / 1e6,
        "flop_per_byte": cost.intensity(),
        "gflop_per_s": cost.flops / 1e6 / median,
        "gb_per_s": cost.bytes / 1e6 / median,
    }))
}
