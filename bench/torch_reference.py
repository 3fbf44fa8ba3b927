"""PyTorch eager versions of simclr and simclr_gh, written the way the papers' code does it:
the full similarity matrix, exp, a boolean mask select, a row sum and a log; Sinkhorn as
`--sinkhorn-iters` iterations of two matrix-vector products. Prints one JSON line per run, in
the format of `sslc bench` (plus `gflops`), so bench/run.sh can put both side by side.

    python torch_reference.py simclr --batch 512 --dim 128 --threads 2 --iters 20
    python torch_reference.py sgemm --threads 2          # the machine's sgemm rate
    python torch_reference.py train --backbone resnet18 --batch 64 --threads 2 --iters 3

`train` is the PyTorch eager side of `sslc bench-train`: the same network (backbone and the
reference's projector), two views of random images, a fixed stand-in gradient on each
embedding, SGD with momentum 0.9 and weight decay 5e-4; it prints `images_per_second` as
`sslc bench-train` does.
"""

import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def nt_xent(z1, z2, tau, mask):
    n = z1.shape[0]
    a = F.normalize(z1, dim=1)
    b = F.normalize(z2, dim=1)
    z = torch.cat([a, b])
    sim = z @ z.T / tau
    others = torch.exp(sim).masked_select(mask).view(2 * n, 2 * n - 1)
    pos = (a * b).sum(dim=1) / tau
    losses = torch.log(others.sum(dim=1)) - torch.cat([pos, pos])
    return (losses[:n] + losses[n:]) / 2


def etf(k, d, generator):
    """A simplex equiangular tight frame of k unit rows in d dimensions (d >= k - 1)."""
    u, _ = torch.linalg.qr(torch.randn(d, k, generator=generator))
    centred = torch.eye(k) - torch.full((k, k), 1.0 / k)
    return math.sqrt(k / (k - 1)) * (centred @ u.T)


@torch.no_grad()
def sinkhorn(t, prior, eps, iters):
    n, k = t.shape
    q = torch.exp(t / eps)
    pi = prior / prior.sum()
    c = torch.full((n,), 1.0 / n)
    for _ in range(iters):
        r = pi / (c @ q)
        c = (1.0 / n) / (q @ r)
    return q * r * c[:, None] * n


def gh(z1, z2, m, prior, eps, iters, temp):
    t1 = F.normalize(z1 @ m.T, dim=1)
    t2 = F.normalize(z2 @ m.T, dim=1)
    q1 = sinkhorn(t1.detach(), prior, eps, iters)
    q2 = sinkhorn(t2.detach(), prior, eps, iters)
    return -(q1 * F.log_softmax(t2 / temp, dim=1)).sum(dim=1).mean() - (q2 * F.log_softmax(t1 / temp, dim=1)).sum(
        dim=1
    ).mean()


def gram_flops(n, d):
    """The Gram matrix of the 2n embeddings and the two products of its backward pass."""
    return 3 * 2 * (2 * n) ** 2 * d


def objective(args):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(args.batch, args.dim, generator=g, requires_grad=True)
    z2 = torch.randn(args.batch, args.dim, generator=g, requires_grad=True)
    mask = ~torch.eye(2 * args.batch, dtype=torch.bool)
    if args.objective == "simclr_gh":
        m = etf(args.k, args.dim, g)
        prior = torch.full((args.k,), 1.0 / args.k)

    def step():
        loss = nt_xent(z1, z2, 0.2, mask).mean()
        if args.objective == "simclr_gh":
            loss = loss + gh(z1, z2, m, prior, 0.05, args.sinkhorn_iters, 0.1)
        z1.grad = z2.grad = None
        loss.backward()
        return loss.item()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up; its peak is this process's peak (run one measurement per process)
    peak_extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    return {
        "objective": args.objective,
        "backend": "torch",
        "batch": args.batch,
        "dim": args.dim,
        "threads": torch.get_num_threads(),
        "compile_ms": 0.0,
        "fwd_bwd_ms_median": median,
        "fwd_bwd_ms_min": min(times),
        "peak_extra_bytes": max(peak_extra, 0),
        "gflops": gram_flops(args.batch, args.dim) / median / 1e6,
    }


def sgemm(args):
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(max(args.iters, 3)):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return {"backend": "torch", "sgemm_size": size, "threads": torch.get_num_threads(), "gflops": 2 * size**3 / min(times) / 1e9}


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (stride on the 3x3 conv), as sslc's `resnet50`."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.short is None else self.short(x)))


def unit(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class Encoder(nn.Module):
    """A backbone as sslc builds it and the reference's projector: ResNet-18 with the CIFAR
    stem (`resnet18`), ResNet-50 with the ImageNet stem (`resnet50`), or sslc's small conv net
    (`small`: three 3x3 conv+BN+ReLU units)."""

    def __init__(self, backbone="resnet18", channels=3):
        super().__init__()
        if backbone == "small":
            self.stem = nn.Sequential(*unit(channels, 32, 1), *unit(32, 64, 2), *unit(64, 128, 2))
            self.layers, features = nn.Sequential(), 128
        elif backbone == "resnet50":
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for i, (planes, count) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3])):
                for j in range(count):
                    layers.append(Bottleneck(cin, planes, 2 if i > 0 and j == 0 else 1))
                    cin = planes * 4
            self.layers, features = nn.Sequential(*layers), 2048
        else:
            self.stem = nn.Sequential(*unit(channels, 64, 1))
            layers, cin = [], 64
            for i, planes in enumerate([64, 128, 256, 512]):
                for j in range(2):
                    layers.append(Block(cin, planes, 2 if i > 0 and j == 0 else 1))
                    cin = planes
            self.layers, features = nn.Sequential(*layers), 512
        self.proj = nn.Sequential(nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(),
                                  nn.Linear(features, 128, bias=False), nn.BatchNorm1d(128))

    def forward(self, x):
        return self.proj(self.layers(self.stem(x)).mean((2, 3)))


def train(args):
    torch.manual_seed(0)
    model = Encoder(args.backbone, args.channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    shape = (args.batch, args.channels, args.image_size, args.image_size)
    views = [torch.rand(shape) * 2 - 1 for _ in range(2)]
    grads = [torch.randn(args.batch, 128) / args.batch for _ in range(2)]

    def step():
        opt.zero_grad(set_to_none=True)
        z = [model(v) for v in views]
        sum((zi * g).sum() for zi, g in zip(z, grads)).backward()
        opt.step()

    step()  # warm-up, as sslc bench-train
    flops = step_gflop(model, views[0])
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    return {
        "backend": "torch",
        "backbone": args.backbone,
        "batch": args.batch,
        "image_size": args.image_size,
        "threads": torch.get_num_threads(),
        "images_per_second": args.batch / seconds,
        "seconds_per_step": seconds,
        "median_seconds_per_step": sorted(times)[len(times) // 2],
        "gflop_per_step": flops,
    }


def step_gflop(model, view):
    """The step's convolution and linear-layer FLOPs (2 per multiply-add), forward on both views
    and backward (twice the forward: input and weight gradients), in GFLOP: what sgemm-bound
    work the step must do at the least, for the roofline in bench/report.py."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * k
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(view)
    for h in hooks:
        h.remove()
    return 3 * 2 * total / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("objective", choices=["simclr", "simclr_gh", "sgemm", "train"])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--sinkhorn-iters", type=int, default=300)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backbone", choices=["resnet18", "resnet50", "small"], default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = {"sgemm": sgemm, "train": train}.get(args.objective, objective)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
