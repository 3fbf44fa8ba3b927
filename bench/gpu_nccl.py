"""Whole training runs compared step by step, for scripts/gpu-check.sh on the lent GPU machine
(one GPU), with the `--features cuda,nccl` build of sslc; all at --precision f32:

  e. `sslc run --gpus 1 --device cuda objectives/simclr_gh.ssl` (one NCCL rank, started and
     supervised by the `--gpus` parent; NCCL's setup check gathers, sums and broadcasts once)
     against the plain `--device cuda` run of the same settings: every step's loss from
     metrics.jsonl within LOSS_TOL relative, and the same number of steps.
  f. the plain `--device cuda` run, whose objective runs in place on the GPU (the CUDA back end
     reading candle's embeddings, the default with --device cuda), against `--device cuda
     --backend cpu`, whose objective runs on the host on copies: every step's loss within
     OBJECTIVE_TOL relative.

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
# The same backbone kernels, the objective's f32 sums in another order (GPU tiles against the
# CPU's Cranelift loops, both f32): a last-digit difference per step that training may grow a
# little over the run's steps.
OBJECTIVE_TOL = 1e-3
SETTINGS = ["objectives/simclr_gh.ssl", "--epochs", "2", "--probe-epochs", "1", "--seed", "0", "--precision", "f32"]
ROWS = []


def save(row):
    ROWS.append(row)
    json.dump(ROWS, open(os.path.join(OUT, "nccl-rows.json"), "w"), indent=1)


def compare(check, case, tol, runs):
    t = time.time()
    try:
        got, want = runs()
        if len(got) != len(want) or not want:
            raise RuntimeError(f"{len(got)} steps against {len(want)}")
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, want))
        result = f"ok in {time.time() - t:.0f} s" if worst <= tol else f"FAIL: worst step {worst:.1e} > {tol}"
        save({"check": check, "case": case, "sslc": f"{len(got)} steps, worst rel. diff {worst:.1e}",
              "torch": f"tol {tol}", "result": result})
    except Exception as e:  # the script's convention: a failing step reports, the rest goes on
        save({"check": check, "case": case, "sslc": "-", "torch": "-", "result": f"FAIL {str(e)[:120]}"})


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
    plain = {}

    def cuda():
        if "losses" not in plain:
            plain["losses"] = run("cuda", ["--device", "cuda"])
        return plain["losses"]

    compare("e. nccl", "simclr_gh digits, --gpus 1 vs --device cuda, 2 epochs", LOSS_TOL,
            lambda: (run("nccl-1", ["--gpus", "1", "--device", "cuda"]), cuda()))
    compare("f. objective on GPU", "simclr_gh digits, in place vs --backend cpu, 2 epochs", OBJECTIVE_TOL,
            lambda: (cuda(), run("host-objective", ["--device", "cuda", "--backend", "cpu"])))


main()
