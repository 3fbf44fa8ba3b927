"""The NCCL side of scripts/gpu-check.sh, on the lent GPU machine (one GPU), with the
`--features cuda,nccl` build of sslc:

  e. `sslc run --gpus 1 --device cuda objectives/simclr_gh.ssl` (one NCCL rank, started and
     supervised by the `--gpus` parent; NCCL's setup check gathers, sums and broadcasts once)
     against the plain `--device cuda` run of the same settings: every step's loss from
     metrics.jsonl within LOSS_TOL relative, and the same number of steps.

    python3 bench/gpu_nccl.py SSLC REPO OUT

Writes its row to OUT/nccl-rows.json; a failure is a FAIL row with its error, never an abort.
"""

import json
import os
import subprocess
import sys
import time

SSLC, REPO, OUT = sys.argv[1:4]
# Both runs are one process on the same GPU with the same kernels; with one rank the step
# exchanges nothing, so only the GPU's own run-to-run differences (cuBLAS algorithm choice)
# remain. The MPI equivalence tests hold W ranks to the same bound.
LOSS_TOL = 1e-4
SETTINGS = ["objectives/simclr_gh.ssl", "--epochs", "2", "--probe-epochs", "1", "--seed", "0"]


def run(name, flags):
    out = os.path.join(OUT, f"run-{name}")
    args = ["run"] + SETTINGS + flags + ["--out", out, "--overwrite"]
    p = subprocess.run([SSLC] + args, capture_output=True, text=True, timeout=60, cwd=REPO)
    with open(os.path.join(OUT, "commands.log"), "a") as log:
        log.write(" ".join(args) + f"\n  exit {p.returncode}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise RuntimeError(f"{name}: " + (p.stderr.strip().splitlines() or ["failed"])[-1][:120])
    steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"kind":"step"' in l]
    return [s["loss"] for s in steps]


def main():
    t = time.time()
    try:
        plain = run("cuda", ["--device", "cuda"])
        nccl = run("nccl-1", ["--gpus", "1", "--device", "cuda"])
        if len(plain) != len(nccl) or not plain:
            raise RuntimeError(f"{len(nccl)} steps with --gpus 1, {len(plain)} without")
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(nccl, plain))
        result = f"ok in {time.time() - t:.0f} s" if worst <= LOSS_TOL else f"FAIL: worst step {worst:.1e} > {LOSS_TOL}"
        shown = f"{len(nccl)} steps, worst rel. diff {worst:.1e}"
        row = {"check": "e. nccl", "case": "simclr_gh digits, --gpus 1 vs --device cuda, 2 epochs",
               "sslc": shown, "torch": f"tol {LOSS_TOL}", "result": result}
    except Exception as e:  # the script's convention: a failing step reports, the rest goes on
        row = {"check": "e. nccl", "case": "simclr_gh digits, --gpus 1 vs --device cuda", "sslc": "-",
               "torch": "-", "result": f"FAIL {str(e)[:120]}"}
    json.dump([row], open(os.path.join(OUT, "nccl-rows.json"), "w"), indent=1)


main()
