"""The training side of scripts/gpu-check.sh, on the lent GPU machine (python3 with torch, no
network, no cargo), with the `--features cuda` build of sslc:

  a. one training step on the GPU against the CPU from the same initial weights and batch
     (`sslc train-step`, small conv and ResNet-18, f32): the updates agree within UPDATE_TOL;
  b. `sslc run objectives/simclr_gh.ssl --device cuda` on the embedded digits, end to end;
  c. ResNet-18 (CIFAR stem) training throughput at batch 512: sslc with synthetic images on
     the device (`sslc bench-train`) and with the real loader (`sslc run` on a CIFAR-100 file
     of random pixels, written here), next to PyTorch eager on the same GPU doing the same work
     (two-view forward in train mode, projector, backward of a fixed stand-in gradient, SGD
     with momentum) at fp32, TF32 and bf16 autocast; and the objective's share of a step
     (`sslc bench-train --objective objectives/simclr_gh.ssl` against the stand-in gradients).

    python3 bench/torch_train.py SSLC REPO OUT

Writes its rows to OUT/train-rows.json; every check catches its own failure.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

# ResNet-18 with the CIFAR stem and the reference's projector, as sslc builds it (shared with
# the CPU side-by-side of bench/run.sh).
from torch_reference import Encoder

SSLC, REPO, OUT = sys.argv[1:4]
BUDGET_S = float(os.environ.get("SSLC_TRAIN_BUDGET_S", "220"))
# Relative difference of one SGD update, GPU against CPU (f32 both): summation order and
# cuBLAS/cuDNN algorithms differ, BatchNorm over a small batch amplifies a little.
UPDATE_TOL = 1e-3
BATCH = 512
started = time.time()
rows = []  # dicts: check, case, sslc, torch, result


def row(check, case, ours="-", theirs="-", result="ok"):
    rows.append({"check": check, "case": case, "sslc": ours, "torch": theirs, "result": result})


def sslc(args, timeout):
    """Runs sslc; raises with its last stderr line when it fails."""
    try:
        p = subprocess.run([SSLC] + args, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timeout after {timeout} s")
    with open(os.path.join(OUT, "commands.log"), "a") as log:
        log.write(" ".join(args) + f"\n  exit {p.returncode}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["failed"])[-1][:90])
    return p


def guarded(check, case, body):
    if time.time() - started > BUDGET_S:
        row(check, case, result="skipped: time budget")
        return
    try:
        body()
    except Exception as e:  # one failed check must not stop the others
        row(check, case, result=f"FAIL {str(e)[:90]}")


# ---- a. one step, GPU against CPU -------------------------------------------------------------

def load_safetensors(path):
    """The f32 tensors of a safetensors file (8-byte header length, JSON header, data); no
    safetensors package needed."""
    with open(path, "rb") as f:
        raw = f.read()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    data = raw[8 + size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=np.float32).reshape(info["shape"])
    return tensors


def step_parity(backbone, size, channels):
    def body():
        common = ["train-step", "--backbone", backbone, "--batch-size", "16", "--image-size", str(size),
                  "--channels", str(channels)]
        paths = {}
        for name, extra in [("init", ["--device", "cpu", "--steps", "0"]), ("cpu", ["--device", "cpu"]),
                            ("gpu", ["--device", "cuda", "--precision", "f32"]),
                            ("gpu_tf32", ["--device", "cuda", "--precision", "tf32"])]:
            paths[name] = os.path.join(OUT, f"step-{backbone}-{name}.safetensors")
            sslc(common + extra + ["--out", paths[name]], 120)
        w = {k: load_safetensors(p) for k, p in paths.items()}

        def worst(other):
            errors = []
            for name, init in w["init"].items():
                reference = w["cpu"][name] - init
                scale = float(np.abs(reference).max()) + 1e-6
                errors.append((float(np.abs((w[other][name] - init) - reference).max()) / scale, name))
            return max(errors)

        f32, name = worst("gpu")
        tf32, _ = worst("gpu_tf32")
        verdict = "ok" if f32 <= UPDATE_TOL else "FAIL"
        row("a. step", f"{backbone} f32 (tf32: {tf32:.1e})", f"{f32:.1e} ({name})", f"tol {UPDATE_TOL:g}", verdict)
    guarded("a. step", f"{backbone} f32", body)


step_parity("small", 32, 3)
step_parity("resnet18", 32, 3)


# ---- b. end to end on the digits --------------------------------------------------------------

def digits():
    t = time.time()
    p = sslc(["run", "objectives/simclr_gh.ssl", "--device", "cuda", "--epochs", "10", "--out",
              os.path.join(OUT, "run-digits"), "--overwrite"], 150)
    groups = {}
    for line in p.stdout.splitlines():  # "Many      71.43" (report::group_table)
        cells = line.split()
        if len(cells) == 2 and cells[0] in ("Many", "Medium", "Few", "overall"):
            groups[cells[0]] = cells[1] + " %"
    shown = ", ".join(f"{k} {v}" for k, v in groups.items()) or "no table printed"
    row("b. run", "simclr_gh digits, 10 epochs", shown, "-",
        f"ok in {time.time() - t:.0f} s" if "Few" in groups else "FAIL: no Many/Medium/Few table")


guarded("b. run", "simclr_gh digits", digits)


# ---- c. ResNet-18 throughput at batch 512 -----------------------------------------------------

measured = {}  # (precision, objective) -> sslc images/s


def bench_train(precision, objective=None):
    key = (precision, objective)
    if key not in measured:
        extra = ["--objective", objective] if objective else []
        p = sslc(["bench-train", "--backbone", "resnet18", "--batch-size", str(BATCH), "--device", "cuda",
                  "--precision", precision, "--steps", "10"] + extra, 120)
        measured[key] = json.loads(p.stdout.strip().splitlines()[-1])["images_per_second"]
    return measured[key]


def torch_train(mode):
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.benchmark = True
    model = Encoder().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    views = [torch.rand(BATCH, 3, 32, 32, device=dev) * 2 - 1 for _ in range(2)]
    grads = [torch.randn(BATCH, 128, device=dev) / BATCH for _ in range(2)]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
            z = [model(v) for v in views]
        sum((zi.float() * g).sum() for zi, g in zip(z, grads)).backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    return BATCH * 10 / (time.time() - t)


def throughput(precision, torch_mode):
    def body():
        ours = bench_train(precision)
        theirs = torch_train(torch_mode)
        row("c. resnet18", f"synthetic, batch {BATCH}, sslc {precision} / torch {torch_mode}",
            f"{ours:.0f} img/s", f"{theirs:.0f} img/s", f"{ours / theirs:.2f}x torch (target >= 0.7x)")
    guarded("c. resnet18", f"synthetic {precision}", body)


for precision, torch_mode in [("f32", "fp32"), ("tf32", "tf32"), ("bf16", "bf16")]:
    throughput(precision, torch_mode)


def objective_share():
    """The same step with simclr_gh's kernels run in place on the embeddings (its loss read
    back, as in training) against the stand-in gradients: the difference is the objective's
    share of a step."""
    plain = bench_train("tf32")
    with_objective = bench_train("tf32", "objectives/simclr_gh.ssl")
    share = max(0.0, 1 - with_objective / plain)
    row("c. resnet18", f"objective share, batch {BATCH}, tf32, simclr_gh on the GPU", f"{with_objective:.0f} img/s",
        f"{plain:.0f} img/s without", f"{100 * share:.1f} % of the step (target <= 5 %)")


guarded("c. resnet18", "objective share", objective_share)


def fake_cifar100(root):
    """CIFAR-100's binary layout with random pixels and balanced labels: the loader's work is
    the same as on the real files (decode, augment, batch), and none need to be carried."""
    folder = os.path.join(root, "cifar-100-binary")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in [("train.bin", 50000), ("test.bin", 10000)]:
        records = rng.integers(0, 256, size=(count, 3074), dtype=np.uint8)
        records[:, 1] = np.arange(count) % 100
        records[:, 0] = records[:, 1] // 5
        records.tofile(os.path.join(folder, name))
    return root


def real_loader():
    data = fake_cifar100(os.path.join(OUT, "cifar"))
    out = os.path.join(OUT, "run-cifar")
    p = sslc(["run", "objectives/simclr.ssl", "--dataset", "cifar100-lt", "--data", data, "--device", "cuda",
              "--batch-size", str(BATCH), "--epochs", "2", "--limit", "5120", "--probe-epochs", "1",
              "--out", out, "--overwrite"], 200)
    steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"kind":"step"' in l]
    later = [s for s in steps if s["epoch"] >= 1] or steps
    rate = statistics.median(s["images_per_s"] for s in later)
    wait = statistics.mean(s["data_wait"] for s in later)
    produced = [l for l in p.stderr.splitlines() if "images/s augmented" in l]
    loader = produced[-1].split("(")[-1].split(" images/s")[0] if produced else "?"
    row("c. resnet18", f"real loader, batch {BATCH}, tf32, simclr (objective on the GPU)", f"{rate:.0f} img/s",
        "-", f"data wait {100 * wait:.0f} % of the step; loader {loader} img/s (target >= 1.5x)")


guarded("c. resnet18", "real loader", real_loader)

with open(os.path.join(OUT, "train-rows.json"), "w") as f:
    json.dump(rows, f, indent=1)
for r in rows:
    print(f"| {r['check']} | {r['case']} | {r['sslc']} | {r['torch']} | {r['result']} |")
