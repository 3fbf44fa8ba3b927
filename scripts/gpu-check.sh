#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one H200; python3 with torch; no cargo, no
# network). Build here with `cargo build --release`, copy target/release/sslc to .device/ and
# carry `.device` (docs/gpu.md). Then, in under 8 minutes, this script
#   1. runs every shipped objective on the CUDA back end at every precision and compares it
#      with the reference evaluator in the same process (`sslc eval --backend cuda`),
#   2. times forward + backward of the CUDA kernels against PyTorch eager on the same GPU
#      (the reference formulation: exp of the full similarity matrix, boolean mask select,
#      row sum, log; Sinkhorn as 300 iterations of two mat-vecs),
# and prints one table. Logs go to $OUT (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SSLC=${SSLC:-$REPO/.device/sslc}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
[ -x "$SSLC" ] || { echo "error: $SSLC is missing: build sslc here and carry it (docs/gpu.md)" >&2; exit 1; }

# libcuda from the driver, libnvrtc from PyTorch's nvidia wheels (.so.12 or .so.13).
LIBS=$(python3 - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnvrtc.so*"), recursive=True)}
dirs |= {d for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu") if glob.glob(os.path.join(d, "libcuda.so*"))}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SSLC_CACHE_DIR="$OUT/cache"
echo "libraries: $LD_LIBRARY_PATH" > "$OUT/setup.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$OUT/setup.log" 2>&1

timeout 450 python3 - "$SSLC" "$REPO" "$OUT" <<'EOF'
import json, os, subprocess, sys, time
import numpy as np
import torch
import torch.nn.functional as F

sslc, repo, out = sys.argv[1:4]
rows = []          # (section, case, cuda, torch, ratio/status)
started = time.time()

def run(args, timeout):
    try:
        p = subprocess.run([sslc] + args, capture_output=True, text=True, timeout=timeout, cwd=repo)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    with open(os.path.join(out, "commands.log"), "a") as log:
        log.write(" ".join(args) + f"\n  exit {p.returncode}\n{p.stdout}{p.stderr}\n")
    return p, None

# ---- 1. parity ------------------------------------------------------------------------------
objectives = ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"]
tolerance = {"f32": 1e-4, "tf32": 1e-3, "bf16": 3e-2}
rng = np.random.default_rng(0)
inputs = []
for k in (1, 2):
    path = os.path.join(out, f"z{k}.npy")
    np.save(path, rng.standard_normal((256, 128)).astype(np.float32))
    inputs += ["--input", f"z{k}={path}"]
for name in objectives:
    for precision, tol in tolerance.items():
        p, err = run(["eval", f"objectives/{name}.ssl", "--backend", "cuda", "--precision", precision,
                      "--tolerance", str(tol), "--out", os.path.join(out, "parity", name, precision)] + inputs, 120)
        if err or p.stdout.strip() == "":
            status = err or (p.stderr.strip().splitlines() or ["failed"])[-1][:60]
            rows.append(("parity", f"{name} {precision}", "-", "-", "FAIL " + status))
            continue
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        worst = max(summary["relative_error_vs_reference"].items(), key=lambda kv: kv[1])
        verdict = "ok" if p.returncode == 0 else "FAIL"
        rows.append(("parity", f"{name} {precision}", f"{worst[1]:.1e} ({worst[0]})", f"tol {tol:g}", verdict))

# ---- 2. PyTorch eager, the reference formulation ----------------------------------------------
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
    return -(q1 * F.log_softmax(t2 / temp, dim=1)).sum(1).mean() - (q2 * F.log_softmax(t1 / temp, dim=1)).sum(1).mean()

def time_torch(fn, n, d, iters):
    try:
        z1 = torch.randn(n, d, device=dev, requires_grad=True)
        z2 = torch.randn(n, d, device=dev, requires_grad=True)
        def step():
            fn(z1, z2).backward()
        step()
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); step(); e.record(); torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return sorted(times)[len(times) // 2], None
    except torch.OutOfMemoryError:
        return None, "OOM"
    finally:
        torch.cuda.empty_cache()

anchors = F.normalize(torch.randn(100, 128, device=dev), dim=1)
prior = torch.full((100,), 0.01, device=dev)
torch_losses = {
    "simclr": simclr_loss,
    "simclr_gh": lambda z1, z2: simclr_loss(z1, z2) + gh_loss(z1, z2, anchors, prior),
}

def time_sslc(objective, n, d, iters, extra=()):
    p, err = run(["bench", objective, "--backend", "cuda", "--batch", str(n), "--dim", str(d), "--iters", str(iters)] + list(extra), 200)
    if err:
        return None, err
    if p.returncode != 0:
        return None, (p.stderr.strip().splitlines() or ["failed"])[-1][:50]
    return json.loads(p.stdout.strip().splitlines()[-1])["fwd_bwd_ms_median"], None

def pairwise_tflops(objective, n, d, ms):
    """Similarity-tile FLOPs per fwd+bwd, counted from the generated kernels: every pairwise
    kernel forms (2N)^2 dot products of length D; a product with v adds (2N)^2 x D more."""
    p, _ = run(["emit", objective, "--stage", "cuda"], 60)
    if p is None or p.returncode != 0 or ms is None:
        return None
    kernels = [l for l in p.stdout.splitlines() if l.startswith('extern "C"') and "pairwise" in l]
    products = sum("pairwise_matmul" in l for l in kernels)
    pairs = (2 * n) ** 2
    return (2 * pairs * d * len(kernels) + 2 * pairs * d * products) / (ms * 1e-3) / 1e12

def fmt(ms):
    return "-" if ms is None else f"{ms:.3f} ms"

for objective, n, d in [("simclr", 8192, 128), ("simclr_gh", 8192, 128), ("simclr", 65536, 128), ("simclr_gh", 65536, 128)]:
    if time.time() - started > 400:
        rows.append(("bench", f"{objective} N={n}", "-", "-", "skipped: time budget"))
        continue
    ours, our_err = time_sslc(f"objectives/{objective}.ssl", n, d, 10)
    theirs, their_err = time_torch(torch_losses[objective], n, d, 10)
    if ours is not None and theirs is not None:
        verdict = f"{theirs / ours:.1f}x faster"
    else:
        verdict = f"sslc {our_err or 'ok'}, torch {their_err or 'ok'}"
    tf = pairwise_tflops(f"objectives/{objective}.ssl", n, d, ours)
    if tf is not None:
        verdict += f", tiles {tf:.0f} TFLOP/s"
    rows.append(("bench", f"{objective} N={n} D={d}", fmt(ours), fmt(theirs) if theirs else (their_err or "-"), verdict))

# Sinkhorn alone: 300 iterations at N=512, K=100, as one objective.
bench_file = os.path.join(out, "sinkhorn_bench.ssl")
with open(bench_file, "w") as f:
    f.write(f'''import "{repo}/objectives/lib/gh.ssl"

/// Sinkhorn-Knopp alone, for timing: the loss only reads its stopped result.
objective sinkhorn_bench {{
    dim K = 100
    views x1, x2 = simclr_augment(x)
    input t: [N, K] = encoder(x1)
    input u: [N, K] = encoder(x2)
    state pi: [K] = uniform
    loss = sum(stopgrad(sinkhorn(t, pi, 0.05, 300)) * u) / N
}}
''')
ours, our_err = time_sslc(bench_file, 512, 100, 20)
t = torch.randn(512, 100, device=dev)
prior100 = torch.full((100,), 0.01, device=dev)
sinkhorn(t, prior100); torch.cuda.synchronize()
times = []
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); sinkhorn(t, prior100); e.record(); torch.cuda.synchronize()
    times.append(s.elapsed_time(e))
theirs = sorted(times)[len(times) // 2]
verdict = f"{theirs / ours:.1f}x faster" if ours else f"sslc {our_err}"
rows.append(("bench", "sinkhorn N=512 K=100 x300", fmt(ours), fmt(theirs), verdict))

# ---- the table ------------------------------------------------------------------------------
name = torch.cuda.get_device_name(0)
print(f"\nsslc CUDA back end on {name}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}\n")
print(f"| check | case | sslc cuda | reference / torch | result |")
print(f"|---|---|---|---|---|")
for section, case, a, b, verdict in rows:
    print(f"| {section} | {case} | {a} | {b} | {verdict} |")
failed = any(r[0] == "parity" and not r[4].startswith("ok") for r in rows)
sys.exit(1 if failed else 0)
EOF
status=$?
echo "logs: $OUT"
exit $status
