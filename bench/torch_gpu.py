"""The GPU side of scripts/gpu-check.sh: parity of every shipped objective on the CUDA back
end, then forward + backward timings of sslc's kernels against PyTorch eager on the same GPU,
printed as one table.

PyTorch runs the reference formulation a user would write: exp of the full similarity matrix,
boolean mask select, row sum, log; Sinkhorn as 300 iterations of two mat-vecs. Runs on the
lent machine (python3 with torch, no network, no cargo):

    python3 bench/torch_gpu.py SSLC REPO OUT

Exit status 1 when any parity check fails.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

SSLC, REPO, OUT = sys.argv[1:4]
OBJECTIVES = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"]
# The largest accepted relative error per tile precision (f32: summation order only).
TOLERANCE = {"f32": 1e-4, "tf32": 1e-3, "bf16": 3e-2}
# (objective, N, D): the paper's batch, then one PyTorch cannot hold (its N^2 matrices).
SIMILARITY_CASES = [("simclr", 8192, 128), ("simclr_gh", 8192, 128), ("simclr", 65536, 128)]
# Seconds after which the remaining benchmarks are skipped, so the whole check stays under
# the 8 minutes the device session allows (scripts/gpu-check.sh gives it less: the training
# checks run first).
BUDGET_S = float(os.environ.get("SSLC_LOSS_BUDGET_S", "380"))

started = time.time()
rows = []  # (section, case, sslc, reference or torch, result)


def sslc(args, timeout):
    """Runs sslc; returns (completed process or None, error text or None)."""
    try:
        p = subprocess.run([SSLC] + args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout} s"
    with open(os.path.join(OUT, "commands.log"), "a") as log:
        log.write(" ".join(args) + f"\n  exit {p.returncode}\n{p.stdout}{p.stderr}\n")
    return p, None


def last_error(p):
    return (p.stderr.strip().splitlines() or ["failed"])[-1][:70]


# ---- 1. parity: every objective at every precision, against the reference evaluator --------

rng = np.random.default_rng(0)
inputs = []
for k in (1, 2):
    path = os.path.join(OUT, f"z{k}.npy")
    np.save(path, rng.standard_normal((256, 128)).astype(np.float32))
    inputs += ["--input", f"z{k}={path}"]


def parity(case):
    name, precision = case
    tol = TOLERANCE[precision]
    out = os.path.join(OUT, "parity", name, precision)
    args = ["eval", f"objectives/{name}.ssl", "--backend", "cuda", "--precision", precision,
            "--tolerance", str(tol), "--out", out] + inputs
    p, err = sslc(args, 150)
    if err or not p.stdout.strip():
        return ("parity", f"{name} {precision}", "-", f"tol {tol:g}", "FAIL " + (err or last_error(p)))
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    output, error = max(summary["relative_error_vs_reference"].items(), key=lambda kv: kv[1])
    verdict = "ok" if p.returncode == 0 else "FAIL"
    return ("parity", f"{name} {precision}", f"{error:.1e} ({output})", f"tol {tol:g}", verdict)


# NVRTC compiles each translation unit once (then the cache serves it): in parallel, the 24
# compilations take about as long as three.
with ThreadPoolExecutor(max_workers=8) as pool:
    rows += list(pool.map(parity, [(n, p) for n in OBJECTIVES for p in TOLERANCE]))

# ---- 2. PyTorch eager, the reference formulation -------------------------------------------

dev = torch.device("cuda")


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


def gh_loss(z1, z2, anchors, prior, temp=0.1):
    t1, t2 = F.normalize(z1 @ anchors.T, dim=1), F.normalize(z2 @ anchors.T, dim=1)
    with torch.no_grad():
        q1, q2 = sinkhorn(t1, prior), sinkhorn(t2, prior)
    return (-(q1 * F.log_softmax(t2 / temp, dim=1)).sum(1).mean()
            - (q2 * F.log_softmax(t1 / temp, dim=1)).sum(1).mean())


anchors = F.normalize(torch.randn(100, 128, device=dev), dim=1)
prior = torch.full((100,), 0.01, device=dev)
TORCH_LOSSES = {
    "simclr": simclr_loss,
    "simclr_gh": lambda z1, z2: simclr_loss(z1, z2) + gh_loss(z1, z2, anchors, prior),
}


def median_ms(step, iters):
    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def time_torch(loss, n, d, iters):
    try:
        z1 = torch.randn(n, d, device=dev, requires_grad=True)
        z2 = torch.randn(n, d, device=dev, requires_grad=True)
        return median_ms(lambda: loss(z1, z2).backward(), iters), None
    except torch.OutOfMemoryError:
        return None, "OOM"
    finally:
        torch.cuda.empty_cache()


def time_sslc(file, n, d, iters):
    p, err = sslc(["bench", file, "--backend", "cuda", "--batch", str(n), "--dim", str(d), "--iters", str(iters)], 150)
    if err:
        return None, err
    if p.returncode != 0:
        return None, last_error(p)
    return json.loads(p.stdout.strip().splitlines()[-1])["fwd_bwd_ms_median"], None


def tile_tflops(file, n, d, ms):
    """Similarity-tile throughput, counted from the generated kernels: every pairwise kernel
    forms (2N)^2 dot products of length D, and a product with v adds (2N)^2 x D more."""
    p, _ = sslc(["emit", file, "--stage", "cuda"], 60)
    if p is None or p.returncode != 0 or ms is None:
        return None
    kernels = [l for l in p.stdout.splitlines() if l.startswith('extern "C"') and "pairwise" in l]
    products = sum("pairwise_matmul" in l for l in kernels)
    pairs = (2 * n) ** 2
    return 2 * pairs * d * (len(kernels) + products) / (ms * 1e-3) / 1e12


def fmt(ms):
    return "-" if ms is None else f"{ms:.3f} ms"


def compare(ours, our_err, theirs, their_err):
    if ours is not None and theirs is not None:
        return f"{theirs / ours:.1f}x faster"
    return f"sslc {our_err or 'ok'}, torch {their_err or 'ok'}"


for objective, n, d in SIMILARITY_CASES:
    case = f"{objective} N={n} D={d}"
    if time.time() - started > BUDGET_S:
        rows.append(("bench", case, "-", "-", "skipped: time budget"))
        continue
    file = f"objectives/{objective}.ssl"
    ours, our_err = time_sslc(file, n, d, 10)
    theirs, their_err = time_torch(TORCH_LOSSES[objective], n, d, 10)
    verdict = compare(ours, our_err, theirs, their_err)
    tf = tile_tflops(file, n, d, ours)
    if tf is not None:
        verdict += f", tiles {tf:.0f} TFLOP/s"
    rows.append(("bench", case, fmt(ours), fmt(theirs) if theirs else (their_err or "-"), verdict))

case = "sinkhorn N=512 K=100 x300"
if time.time() - started > BUDGET_S:
    rows.append(("bench", case, "-", "-", "skipped: time budget"))
else:
    ours, our_err = time_sslc("bench/sinkhorn_gpu.ssl", 512, 100, 20)
    t = torch.randn(512, 100, device=dev)
    theirs = median_ms(lambda: sinkhorn(t, prior), 10)
    rows.append(("bench", case, fmt(ours), fmt(theirs), compare(ours, our_err, theirs, None)))

# ---- the table ----------------------------------------------------------------------------

print(f"\nsslc CUDA back end on {torch.cuda.get_device_name(0)}, {time.strftime('%Y-%m-%d')}, "
      f"torch {torch.__version__}, {time.time() - started:.0f} s\n")
print("| check | case | sslc cuda | reference / torch | result |")
print("|---|---|---|---|---|")
for section, case, a, b, verdict in rows:
    print(f"| {section} | {case} | {a} | {b} | {verdict} |")
with open(os.path.join(OUT, "loss-rows.json"), "w") as f:
    json.dump([{"check": f"d. {s}", "case": c, "sslc": a, "torch": b, "result": v} for s, c, a, b, v in rows], f, indent=1)
sys.exit(1 if any(r[0] == "parity" and r[4] != "ok" for r in rows) else 0)
