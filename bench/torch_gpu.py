"""The CUDA back end's steps of scripts/gpu-check.sh, on the lent GPU machine (python3 with
torch, no network, no cargo), one phase per step:

  kernel  the smallest kernel check: `sslc eval objectives/simclr_gh.ssl --backend cuda` at f32
          and bf16 against `--backend cpu` on the same inputs (every output: loss, per-sample
          losses, gradients), and the reference evaluator's verdict eval reports; then, where
          compute-sanitizer is installed, the f32 evaluation once more under its memcheck;
  parity  every other shipped objective at every precision, the same way;
  bench   forward + backward times of sslc's kernels (`sslc bench --backend cuda`) against
          PyTorch eager running the reference formulation a user would write (exp of the full
          similarity matrix, mask select, row sum, log; Sinkhorn as 300 iterations of two
          mat-vecs). Both are timed the same way: CUDA events around one forward + backward
          on inputs already on the GPU, the stream synchronised after each run, the median of
          the runs after a warm-up.

    python3 bench/torch_gpu.py PHASE SSLC REPO SCRATCH

Rows go to the rows file as each case ends (bench/gpu_common.py). Dry mode (GPU_CHECK_DRY=1)
runs the same code with the reference evaluator standing in for the GPU and PyTorch on the CPU,
at tiny sizes.
"""

import glob
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpu_common import DEVICE, DRY, Harness, Skip, relative_error

H = Harness(sys.argv)
OBJECTIVES = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"]
# The largest accepted relative error per tile precision (f32: summation order only).
TOLERANCE = {"f32": 1e-4, "tf32": 1e-3, "bf16": 3e-2}
PRECISIONS = ["f32"] if DRY else list(TOLERANCE)
KERNEL_PRECISIONS = ["f32"] if DRY else ["f32", "bf16"]
# The back end under test; in dry mode the reference evaluator stands in for the GPU.
BACKEND = "reference" if DRY else "cuda"
# Rows of each embedding (N) and their width (D; GH's ETF needs D >= K - 1 = 99).
ROWS, DIM = (32, 128) if DRY else (256, 128)


def inputs():
    """z1 and z2, written once to the scratch folder, as --input flags."""
    flags = []
    rng = np.random.default_rng(0)
    for k in (1, 2):
        path = H.path("inputs", f"z{k}.npy")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, rng.standard_normal((ROWS, DIM)).astype(np.float32))
        flags += ["--input", f"z{k}={path}"]
    return flags


def evaluate(name, backend, precision, out, command=()):
    """`sslc eval` of one objective on one back end: its summary and every written array.
    eval's own tolerance is opened wide: the harness judges, so numbers come back either way."""
    args = ["eval", f"objectives/{name}.ssl", "--backend", backend, "--out", out] + inputs()
    if backend == "cuda":
        args += ["--precision", precision, "--tolerance", "inf"]
    p = H.run(list(command) + [H.sslc_path] + args, 120)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    arrays = {f[:-4]: np.load(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f.endswith(".npy")}
    return summary, arrays


def baseline(name):
    """The cpu back end's outputs for `name`, computed once."""
    if name not in baselines:
        baselines[name] = evaluate(name, "cpu", "f32", H.path("eval", name, "cpu"))[1]
    return baselines[name]


baselines = {}


def against_cpu(name, precision):
    """One objective at one precision on the back end under test against the cpu back end:
    (sslc, reference, result) for its row."""
    tol = TOLERANCE[precision]
    want = baseline(name)
    summary, got = evaluate(name, BACKEND, precision, H.path("eval", name, precision))
    missing = sorted(set(want) - set(got))
    if missing:
        raise RuntimeError(f"{BACKEND} wrote no {', '.join(missing)}")
    error, output = max((relative_error(got[k], want[k]), k) for k in want)
    reference = summary.get("relative_error_vs_reference", {})
    worst_reference = max(reference.values(), default=0.0)
    verdict = "ok" if error <= tol and worst_reference <= tol else "FAIL: beyond the tolerance"
    shown = f"{error:.1e} vs cpu ({output})" + (f", {worst_reference:.1e} vs reference" if reference else "")
    return shown, f"tol {tol:g}", verdict


def memcheck():
    """The smallest kernel check once under compute-sanitizer's memcheck."""
    found = shutil.which("compute-sanitizer") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))), None)
    if DRY or not found:
        H.row("memcheck", "simclr_gh f32 under compute-sanitizer", result="skipped: " + (
            "dry run" if DRY else "compute-sanitizer is not installed"))
        return
    out = H.path("eval", "memcheck")

    def body():
        command = [found, "--tool", "memcheck", "--error-exitcode", "3", "--print-limit", "20"]
        try:
            evaluate("simclr_gh", "cuda", "f32", out, command)
        except RuntimeError as e:
            raise RuntimeError(f"memcheck found errors or failed: {e}")
        return "0 errors", "-", "ok"
    H.case("memcheck", "simclr_gh f32 under compute-sanitizer", body, least_s=20)


def kernel():
    for precision in KERNEL_PRECISIONS:
        H.case("kernel", f"simclr_gh {precision}, --backend {BACKEND} vs cpu, N={ROWS}",
               lambda p=precision: against_cpu("simclr_gh", p))
    memcheck()


def no_row(_):
    """A case whose success needs no row of its own (a failure still gets one)."""
    return None


def parity():
    cases = [(n, p) for n in OBJECTIVES for p in PRECISIONS if not (n == "simclr_gh" and p in KERNEL_PRECISIONS)]
    # NVRTC compiles each translation unit once (then the cache serves it): in parallel, the
    # compilations take about as long as three. The cpu baselines come first, one per objective.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: H.case("baseline", f"{n} --backend cpu", lambda: no_row(baseline(n))), OBJECTIVES))
        list(pool.map(lambda c: H.case("parity", f"{c[0]} {c[1]}, --backend {BACKEND} vs cpu",
                                       lambda: against_cpu(*c)), cases))


# ---- bench ---------------------------------------------------------------------------------

# (objective, N, D): the paper's batch, then one PyTorch cannot hold (its N^2 matrices).
SIMILARITY_CASES = [("simclr", 32, 128), ("simclr_gh", 32, 128)] if DRY else [
    ("simclr", 8192, 128), ("simclr_gh", 8192, 128), ("simclr", 65536, 128)]
SINKHORN_N = 32 if DRY else 512
ITERS = 2 if DRY else 10


def torch_losses():
    import torch
    import torch.nn.functional as F
    dev = torch.device(DEVICE)

    def simclr_loss(z1, z2, tau=0.2):
        n = z1.shape[0]
        a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        z = torch.cat([a, b])
        sim = torch.exp(z @ z.T / tau)
        mask = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
        denominator = sim.masked_select(mask).view(2 * n, -1).sum(dim=1)
        positive = torch.exp((a * b).sum(dim=1) / tau)
        positive = torch.cat([positive, positive])
        return -torch.log(positive / denominator).mean()

    def sinkhorn(t, prior, eps=0.05, iters=300):
        q = torch.exp(t / eps).T
        k, n = q.shape
        c = torch.full((n,), 1.0 / n, device=t.device)
        for _ in range(iters):
            r = prior / (q @ c)
            c = (1.0 / n) / (q.T @ r)
        return (r[:, None] * q * c[None, :]).T * n

    anchors = F.normalize(torch.randn(100, 128, device=dev), dim=1)
    prior = torch.full((100,), 0.01, device=dev)

    def gh_loss(z1, z2, temp=0.1):
        t1, t2 = F.normalize(z1 @ anchors.T, dim=1), F.normalize(z2 @ anchors.T, dim=1)
        with torch.no_grad():
            q1, q2 = sinkhorn(t1, prior), sinkhorn(t2, prior)
        return (-(q1 * F.log_softmax(t2 / temp, dim=1)).sum(1).mean()
                - (q2 * F.log_softmax(t1 / temp, dim=1)).sum(1).mean())

    losses = {"simclr": simclr_loss, "simclr_gh": lambda z1, z2: simclr_loss(z1, z2) + gh_loss(z1, z2)}
    return torch, dev, losses, lambda t: sinkhorn(t, prior)


def median_ms(torch, step, iters):
    """sslc's `Session::time` protocol: one warm-up run, then per run events recorded before
    and after it on the stream and a synchronise; the median. On the CPU (dry mode) the wall
    clock stands in for the events."""
    cuda = DEVICE == "cuda"
    step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if H.left() < 2:
            raise Skip(f"after {len(times)} of {iters} runs")
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_sslc(file, n, d):
    # bench/*.ssl import the shipped library, which --import-path allows and finds.
    p = H.sslc(["bench", file, "--backend", BACKEND if BACKEND == "cuda" else "cpu", "--batch", str(n),
                "--dim", str(d), "--iters", str(ITERS), "--import-path", "objectives"], 150)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    expected = "device_events" if BACKEND == "cuda" else "wall_clock"
    if result.get("timing") != expected:
        raise RuntimeError(f"sslc bench timed by {result.get('timing')}, not {expected}")
    return result["fwd_bwd_ms_median"]


def tile_tflops(file, n, d, ms):
    """Similarity-tile throughput, counted from the generated kernels: every pairwise kernel
    forms (2N)^2 dot products of length D, and a product with v adds (2N)^2 x D more."""
    p = H.sslc(["emit", file, "--stage", "cuda"], 60)
    kernels = [l for l in p.stdout.splitlines() if l.startswith('extern "C"') and "pairwise" in l]
    products = sum("pairwise_matmul" in l for l in kernels)
    return 2 * (2 * n) ** 2 * d * (len(kernels) + products) / (ms * 1e-3) / 1e12


def bench():
    torch, dev, losses, sinkhorn = torch_losses()
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", MemoryError)

    def similarity(objective, n, d):
        file = f"objectives/{objective}.ssl"
        ours = time_sslc(file, n, d)
        try:
            z1 = torch.randn(n, d, device=dev, requires_grad=True)
            z2 = torch.randn(n, d, device=dev, requires_grad=True)
            theirs = median_ms(torch, lambda: losses[objective](z1, z2).backward(), ITERS)
            verdict = f"{theirs / ours:.1f}x faster"
        except oom:
            theirs, verdict = None, "torch: out of memory"
        finally:
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        verdict += f", tiles {tile_tflops(file, n, d, ours):.0f} TFLOP/s" if not DRY else " (dry: CPU, not comparable)"
        return f"{ours:.3f} ms", "-" if theirs is None else f"{theirs:.3f} ms", verdict

    for objective, n, d in SIMILARITY_CASES:
        H.case("bench", f"{objective} N={n} D={d}", lambda c=(objective, n, d): similarity(*c), least_s=10)

    def sinkhorn_case():
        ours = time_sslc("bench/sinkhorn_gpu.ssl", SINKHORN_N, 100)
        t = torch.randn(SINKHORN_N, 100, device=dev)
        theirs = median_ms(torch, lambda: sinkhorn(t), ITERS)
        return f"{ours:.3f} ms", f"{theirs:.3f} ms", f"{theirs / ours:.1f}x faster"

    H.case("bench", f"sinkhorn N={SINKHORN_N} K=100 x300", sinkhorn_case, least_s=10)


{"kernel": kernel, "parity": parity, "bench": bench}.get(H.phase, lambda: sys.exit(f"unknown phase {H.phase}"))()
H.finish()
