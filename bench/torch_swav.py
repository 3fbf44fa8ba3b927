"""SwAV's loss (objectives/swav.ssl) in PyTorch eager, forward + backward, for the side-by-side
benchmark in bench/RESULTS.md: two views [N, D], K prototypes, 3 Sinkhorn iterations (no grad),
swapped cross-entropy at temperature 0.1. Prints one JSON line with the median time.
Usage: python3 bench/torch_swav.py N D K ITERS THREADS"""
import json, sys, time
import torch
import torch.nn.functional as F

n, d, k, iters, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
z1 = torch.randn(n, d, generator=g, requires_grad=True)
z2 = torch.randn(n, d, generator=g, requires_grad=True)
c = torch.randn(k, d, generator=g, requires_grad=True)


@torch.no_grad()
def sinkhorn(scores, eps=0.05, n_iters=3):
    q = torch.exp(scores / eps).t()
    q /= q.sum()
    kk, b = q.shape
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= kk
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def step():
    p = F.normalize(c, dim=1)
    s1 = F.normalize(z1, dim=1) @ p.t()
    s2 = F.normalize(z2, dim=1) @ p.t()
    q1, q2 = sinkhorn(s1), sinkhorn(s2)
    loss = -0.5 * ((q2 * F.log_softmax(s1 / 0.1, dim=1)).sum(1) + (q1 * F.log_softmax(s2 / 0.1, dim=1)).sum(1)).mean()
    z1.grad = z2.grad = c.grad = None
    loss.backward()


step()
times = []
for _ in range(iters):
    t = time.perf_counter()
    step()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"impl": "pytorch-eager", "n": n, "d": d, "k": k, "threads": threads,
                  "fwd_bwd_ms_median": times[len(times) // 2], "fwd_bwd_ms_min": times[0],
                  "torch": torch.__version__}))
