"""The in-place objective and NCCL step of scripts/gpu-check.sh: whole training runs on the
digits compared step by step, on the lent GPU machine (one GPU) with the `--features
cuda,nccl` build of sslc; all at --precision f32:

  run   `sslc run objectives/simclr_gh.ssl --device cuda` end to end: the Many/Medium/Few table;
  e.    `sslc run --gpus 1 --device cuda` (one NCCL rank, started and supervised by the `--gpus`
        parent; NCCL's setup check gathers, sums and broadcasts once) against that plain run:
        every step's loss within LOSS_TOL relative, and the same number of steps;
  f.    the plain run, whose objective runs in place on the GPU (the CUDA back end reading
        candle's embeddings, the default with --device cuda), against `--device cuda --backend
        cpu`, whose objective runs on the host on copies: every step's loss within
        OBJECTIVE_TOL relative.

    python3 bench/gpu_nccl.py nccl SSLC REPO SCRATCH

scripts/gpu-check.sh sets NCCL_DEBUG=WARN, so NCCL's own warnings land in the step's log. Dry
mode (GPU_CHECK_DRY=1) runs the comparisons on the CPU: e compares two plain CPU runs (the
comparison only), f the cpu back end against the reference evaluator.
"""

import sys
import time

from gpu_common import DEVICE, DRY, Harness, step_losses, worst_step_difference

H = Harness(sys.argv)
# Both runs are one process on the same GPU with the same kernels; with one rank the step
# exchanges nothing, so only the GPU's own run-to-run differences (cuBLAS algorithm choice)
# remain. The MPI equivalence tests hold W ranks to the same bound.
LOSS_TOL = 1e-4
# The same backbone kernels, the objective's f32 sums in another order (GPU tiles against the
# CPU's Cranelift loops, both f32): a last-digit difference per step that training may grow a
# little over the run's steps.
OBJECTIVE_TOL = 1e-3
SETTINGS = ["objectives/simclr_gh.ssl", "--probe-epochs", "1", "--seed", "0", "--precision", "f32"] + (
    ["--epochs", "1", "--limit", "32", "--batch-size", "16"] if DRY else ["--epochs", "2"])
runs = {}  # name -> (step losses, stdout)


def run(name, flags):
    if name not in runs:
        out = H.path("runs", name)
        p = H.sslc(["run"] + SETTINGS + flags + ["--out", out, "--overwrite"], 90)
        runs[name] = (step_losses(out), p.stdout)
    return runs[name][0]


def digits_table():
    started = time.time()
    run("plain", ["--device", DEVICE])
    groups = {}
    for line in runs["plain"][1].splitlines():  # "Many      71.43" (report::group_table)
        cells = line.split()
        if len(cells) == 2 and cells[0] in ("Many", "Medium", "Few", "overall"):
            groups[cells[0]] = cells[1] + " %"
    shown = ", ".join(f"{k} {v}" for k, v in groups.items()) or "no table printed"
    return shown, "-", f"ok in {time.time() - started:.0f} s" if "Few" in groups else "FAIL: no Many/Medium/Few table"


def compare(tol, got, want):
    def body():
        a, b = run(*got), run(*want)
        worst = worst_step_difference(a, b)
        return (f"{len(a)} steps, worst rel. diff {worst:.1e}", f"tol {tol}",
                "ok" if worst <= tol else f"FAIL: worst step {worst:.1e} > {tol}")
    return body


H.case("run", f"simclr_gh digits, --device {DEVICE}, end to end", digits_table, least_s=10)
plain = ("plain", ["--device", DEVICE])
if DRY:
    nccl = ("plain-again", ["--device", "cpu"])
    host = ("reference-backend", ["--device", "cpu", "--backend", "reference"])
else:
    nccl = ("nccl-1", ["--gpus", "1", "--device", "cuda"])
    host = ("host-objective", ["--device", "cuda", "--backend", "cpu"])
H.case("e. nccl", "simclr_gh digits, " + ("dry: two CPU runs" if DRY else "--gpus 1 vs --device cuda"),
       compare(LOSS_TOL, nccl, plain), least_s=10)
H.case("f. objective in place", "simclr_gh digits, " + (
    "dry: --backend cpu vs reference" if DRY else "in place vs --backend cpu"),
    compare(OBJECTIVE_TOL, plain, host), least_s=10)
H.finish()
