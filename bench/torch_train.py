"""The training steps of scripts/gpu-check.sh, on the lent GPU machine (python3 with torch, no
network, no cargo), with the `--features cuda` build of sslc; one phase per step:

  train       one training step on the GPU against the CPU from the same initial weights and
              batch (`sslc train-step`, small conv and ResNet-18, f32): the updates agree within
              UPDATE_TOL; then a short end-to-end run, `sslc run objectives/simclr.ssl` on fake
              CIFAR-100 files (random pixels, written to the scratch folder) with the real
              loader, on the GPU and on the CPU: every step's loss within RUN_TOL relative;
  throughput  first a warm-up (candle's kernels are PTX that the driver compiles on first use,
              into CUDA_CACHE_PATH), then ResNet-18 (CIFAR stem) training throughput at batch
              512: sslc with synthetic images on the device (`sslc bench-train`) next to
              PyTorch eager doing the same work (two-view forward in train mode, projector,
              backward of a fixed stand-in gradient, SGD with momentum) at fp32, TF32 and bf16
              autocast; the objective's share of a step (`sslc bench-train --objective
              objectives/simclr_gh.ssl`); and the real loader (`sslc run` on fake CIFAR-100).

    python3 bench/torch_train.py PHASE SSLC REPO SCRATCH

Rows go to the rows file as each case ends (bench/gpu_common.py). Dry mode (GPU_CHECK_DRY=1)
runs the same code on the CPU with the small backbone and tiny batches.
"""

import json
import os
import statistics
import sys
import time

import numpy as np

from gpu_common import DEVICE, DRY, Harness, Skip, fake_cifar100, step_losses, worst_step_difference

H = Harness(sys.argv)
# Relative difference of one SGD update, GPU against CPU (f32 both): summation order and
# cuBLAS/cuDNN algorithms differ, BatchNorm over a small batch amplifies a little.
UPDATE_TOL = 1e-3
# Step losses of a short run, GPU against CPU (f32 both): the same differences, grown over a
# few steps of training.
RUN_TOL = 2e-3
BATCH = 8 if DRY else 512
BACKBONE = "small" if DRY else "resnet18"
# Image side of the synthetic throughput steps (sslc's and PyTorch's).
IMAGE = 8 if DRY else 32


# ---- train: one step, then a short run, GPU against CPU ----------------------------------------

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


def step_parity(backbone):
    common = ["train-step", "--backbone", backbone, "--batch-size", "4" if DRY else "16", "--image-size",
              "16" if DRY else "32", "--channels", "3"]
    paths = {}
    os.makedirs(H.path("step"), exist_ok=True)
    for name, extra in [("init", ["--device", "cpu", "--steps", "0"]), ("cpu", ["--device", "cpu"]),
                        ("gpu", ["--device", DEVICE, "--precision", "f32"]),
                        ("gpu_tf32", ["--device", DEVICE, "--precision", "tf32"])]:
        paths[name] = H.path("step", f"{backbone}-{name}.safetensors")
        H.sslc(common + extra + ["--out", paths[name]], 120)
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
    return f"{f32:.1e} ({name}); tf32 {tf32:.1e}", f"tol {UPDATE_TOL:g}", "ok" if f32 <= UPDATE_TOL else "FAIL"


def small_cifar():
    """Fake CIFAR-100 with as many images of every class (run with --imbalance 1)."""
    return fake_cifar100(H.path("cifar-small"), 400 if DRY else 5000, 200 if DRY else 1000)


def run_parity():
    data = small_cifar()
    settings = ["run", "objectives/simclr.ssl", "--dataset", "cifar100-lt", "--data", data, "--imbalance", "1",
                "--backbone", BACKBONE, "--batch-size", "8" if DRY else "128", "--limit", "8" if DRY else "512",
                "--epochs", "1", "--probe-epochs", "1", "--seed", "0", "--precision", "f32", "--overwrite"]
    losses = {}
    for name, device in [("gpu", DEVICE), ("cpu", "cpu")]:
        out = H.path("runs", f"cifar-{name}")
        H.sslc(settings + ["--device", device, "--out", out], 150)
        losses[name] = step_losses(out)
    worst = worst_step_difference(losses["gpu"], losses["cpu"])
    return (f"{len(losses['gpu'])} steps, worst {worst:.1e}", f"tol {RUN_TOL:g}",
            "ok" if worst <= RUN_TOL else f"FAIL: a step's loss differs by {worst:.1e}")


def train():
    for backbone in ["small"] if DRY else ["small", "resnet18"]:
        H.case("step", f"{backbone} f32, --device {DEVICE} vs cpu", lambda b=backbone: step_parity(b))
    H.case("run", f"simclr on fake CIFAR-100, {BACKBONE}, --device {DEVICE} vs cpu", run_parity, least_s=20)


# ---- throughput --------------------------------------------------------------------------------

measured = {}  # (precision, objective) -> sslc images/s


def bench_train(precision, objective=None, batch=BATCH, steps=1 if DRY else 10):
    key = (precision, objective, batch)
    if key not in measured:
        extra = ["--objective", objective] if objective else []
        p = H.sslc(["bench-train", "--backbone", BACKBONE, "--batch-size", str(batch), "--image-size", str(IMAGE),
                    "--device", DEVICE, "--precision", precision, "--steps", str(steps)] + extra, 120)
        measured[key] = json.loads(p.stdout.strip().splitlines()[-1])["images_per_second"]
    return measured[key]


def torch_train(mode):
    import torch

    # ResNet-18 with the CIFAR stem and the reference's projector, as sslc builds it (shared
    # with the CPU side-by-side of bench/run.sh).
    from torch_reference import Encoder

    dev = torch.device(DEVICE)
    cuda = DEVICE == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.benchmark = True
    model = Encoder().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    views = [torch.rand(BATCH, 3, IMAGE, IMAGE, device=dev) * 2 - 1 for _ in range(2)]
    grads = [torch.randn(BATCH, 128, device=dev) / BATCH for _ in range(2)]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "bf16"):
            z = [model(v) for v in views]
        sum((zi.float() * g).sum() for zi, g in zip(z, grads)).backward()
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(1 if DRY else 3):
        step()
    sync()
    steps = 1 if DRY else 10
    t = time.time()
    for k in range(steps):
        if H.left() < 2:
            raise Skip(f"torch after {k} of {steps} steps")
        step()
    sync()
    return BATCH * steps / (time.time() - t)


def throughput(precision, torch_mode):
    ours = bench_train(precision)
    theirs = torch_train(torch_mode)
    return f"{ours:.0f} img/s", f"{theirs:.0f} img/s", f"{ours / theirs:.2f}x torch (target >= 0.7x)"


def objective_share():
    """The same step with simclr_gh's kernels run in place on the embeddings (its loss read
    back, as in training) against the stand-in gradients: the difference is the objective's
    share of a step."""
    precision = "f32" if DRY else "tf32"
    plain = bench_train(precision)
    with_objective = bench_train(precision, "objectives/simclr_gh.ssl")
    share = max(0.0, 1 - with_objective / plain)
    return (f"{with_objective:.0f} img/s", f"{plain:.0f} img/s without",
            f"{100 * share:.1f} % of the step (target <= 5 %)")


def real_loader():
    if DRY:
        data, limit, epochs, extra = small_cifar(), 8, 1, ["--imbalance", "1"]
    else:
        data, limit, epochs, extra = fake_cifar100(H.path("cifar"), 50000, 10000), 5120, 2, []
    out = H.path("runs", "cifar-loader")
    p = H.sslc(["run", "objectives/simclr.ssl", "--dataset", "cifar100-lt", "--data", data, "--device", DEVICE,
                "--backbone", BACKBONE, "--batch-size", str(BATCH), "--epochs", str(epochs), "--limit", str(limit),
                "--probe-epochs", "1", "--out", out, "--overwrite"] + extra, 200)
    steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"kind":"step"' in l]
    later = [s for s in steps if s["epoch"] >= 1] or steps
    rate = statistics.median(s["images_per_s"] for s in later)
    wait = statistics.mean(s["data_wait"] for s in later)
    produced = [l for l in p.stderr.splitlines() if "images/s augmented" in l]
    loader = produced[-1].split("(")[-1].split(" images/s")[0] if produced else "?"
    return f"{rate:.0f} img/s", "-", f"data wait {100 * wait:.0f} % of the step; loader {loader} img/s (target >= 1.5x)"


def warm_up():
    """Loads candle's kernels once before anything is timed: the driver compiles their PTX on
    first use, into CUDA_CACHE_PATH, where the later processes find it."""
    started = time.time()
    bench_train("f32", batch=4, steps=1)
    return f"{time.time() - started:.0f} s", "-", "ok"


def throughput_phase():
    H.case("warm-up", f"bench-train {BACKBONE} batch 4, first kernel loads", warm_up)
    modes = [("f32", "fp32")] if DRY else [("f32", "fp32"), ("tf32", "tf32"), ("bf16", "bf16")]
    for precision, torch_mode in modes:
        H.case("throughput", f"{BACKBONE} synthetic, batch {BATCH}, sslc {precision} / torch {torch_mode}",
               lambda c=(precision, torch_mode): throughput(*c), least_s=15)
    H.case("throughput", f"objective share, batch {BATCH}, simclr_gh", objective_share, least_s=15)
    H.case("throughput", f"real loader, batch {BATCH}, simclr", real_loader, least_s=30)


{"train": train, "throughput": throughput_phase}.get(H.phase, lambda: sys.exit(f"unknown phase {H.phase}"))()
H.finish()
