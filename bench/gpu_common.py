"""What the harnesses of scripts/gpu-check.sh share: rows written as each case ends, the time
budget, running sslc, and the fake CIFAR-100 files.

A lent GPU machine is lent for minutes, and what the check leaves in its results folder is all
that comes back. So every row is appended to one JSON-lines file and flushed to disk the moment
its case ends (a SIGTERM from the step's `timeout` loses nothing finished, and the case it
interrupts gets a row too), and every sslc call's timeout is capped by the step's deadline, so
a slow case is cut short with a row instead of killed without one.

The environment scripts/gpu-check.sh sets:
  GPU_CHECK_ROWS      the rows file (JSON lines; default SCRATCH/rows.jsonl)
  GPU_CHECK_DEADLINE  when the step must end (seconds since the epoch)
  GPU_CHECK_STEP      the step's name, recorded in every row
  GPU_CHECK_DRY=1     dry mode: the CPU half of every check, with tiny sizes (docs/gpu.md)

Also a command line for the shell script: `python3 bench/gpu_common.py table ROWS` prints the
summary table of a rows file.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
# Where the GPU half runs; dry mode puts the CPU there, so the harness code runs unchanged.
DEVICE = "cpu" if DRY else "cuda"


class Skip(Exception):
    """The step's time is spent: the case is recorded as skipped, not failed."""


class Harness:
    """One step of the check: `python3 bench/X.py PHASE SSLC REPO SCRATCH`."""

    def __init__(self, argv):
        if len(argv) != 5:
            sys.exit(f"usage: {os.path.basename(argv[0])} PHASE SSLC REPO SCRATCH (run by scripts/gpu-check.sh)")
        self.phase, self.sslc_path, self.repo, self.scratch = argv[1:5]
        os.makedirs(self.scratch, exist_ok=True)
        self.rows_path = os.environ.get("GPU_CHECK_ROWS") or os.path.join(self.scratch, "rows.jsonl")
        self.deadline = float(os.environ.get("GPU_CHECK_DEADLINE") or time.time() + 3600)
        self.step = os.environ.get("GPU_CHECK_STEP") or self.phase
        self.failed = False
        self.current = []  # cases running now (threads), for the row a SIGTERM writes
        self.lock = threading.RLock()  # the SIGTERM handler may interrupt a row being written
        signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum, frame):
        for check, case in list(self.current) or [("-", "-")]:
            self.row(check, case, result="FAIL: stopped by the step's time limit (SIGTERM) during this case")
        os._exit(124)

    def left(self):
        return self.deadline - time.time()

    def row(self, check, case, ours="-", theirs="-", result="ok", seconds=None):
        """Appends one row and flushes it to disk at once."""
        record = {"step": self.step, "check": check, "case": case, "sslc": ours, "reference": theirs,
                  "result": result, "dry": DRY}
        if seconds is not None:
            record["seconds"] = round(seconds, 1)
        with self.lock:
            self.failed |= str(result).startswith("FAIL")
            with open(self.rows_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        print(f"| {check} | {case} | {ours} | {theirs} | {result} |", flush=True)

    def case(self, check, case, body, least_s=3):
        """Runs `body()`, which returns (sslc, reference, result) or None (it wrote its own
        rows); a failure or a spent budget becomes a row and the next case runs."""
        if self.left() < least_s:
            self.row(check, case, result=f"skipped: time budget ({self.left():.0f} s left)")
            return
        started = time.time()
        self.current.append((check, case))
        try:
            got = body()
            if got is not None:
                self.row(check, case, *got, seconds=time.time() - started)
        except Skip as e:
            self.row(check, case, result=f"skipped: time budget ({e})", seconds=time.time() - started)
        except Exception as e:  # one failed case must not stop the others
            self.row(check, case, result=f"FAIL {str(e)[:160]}", seconds=time.time() - started)
        finally:
            self.current.remove((check, case))

    def sslc(self, args, timeout, env=None):
        """Runs sslc from the repository, its timeout capped by the step's deadline; raises
        with the last stderr line when it fails, Skip when no time is left to start it."""
        return self.run([self.sslc_path] + args, timeout, env)

    def run(self, argv, timeout, env=None):
        """[`sslc`] for any command (`compute-sanitizer sslc ...`)."""
        timeout = min(timeout, self.left() - 1)
        if timeout < 1:
            raise Skip("no time left to start it")
        started = time.time()
        full_env = dict(os.environ, **(env or {}))
        name = os.path.basename(argv[0])
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.repo, env=full_env)
        except subprocess.TimeoutExpired as e:
            self.log(argv, "timeout", e.stdout, e.stderr)
            raise RuntimeError(f"{name} {argv[1]} ran past {timeout:.0f} s (the step's budget)")
        self.log(argv, f"exit {p.returncode} in {time.time() - started:.1f} s", p.stdout, p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"{name} {argv[1]}: " + last_line(p.stderr))
        return p

    def log(self, argv, status, stdout, stderr):
        def text(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        with self.lock:
            print(f"$ {' '.join(argv)}\n  {status}\n{text(stdout)[-4000:]}{text(stderr)[-4000:]}", flush=True)

    def path(self, *parts):
        return os.path.join(self.scratch, *parts)

    def finish(self):
        sys.exit(1 if self.failed else 0)


def last_line(text):
    return ((text or "").strip().splitlines() or ["failed"])[-1][:160]


def relative_error(got, want):
    """max |got - want| / max |want| (at least 1e-30), as `sslc eval` reports it."""
    import numpy as np
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise RuntimeError(f"shapes differ: {got.shape} against {want.shape}")
    return float(np.abs(got - want).max(initial=0.0)) / max(float(np.abs(want).max(initial=0.0)), 1e-30)


def step_losses(run_dir):
    """Every step's loss from a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"kind":"step"' in line]


def worst_step_difference(got, want):
    """The largest relative difference of two runs' step losses; raises unless both have the
    same, non-zero number of steps."""
    if len(got) != len(want) or not want:
        raise RuntimeError(f"{len(got)} steps against {len(want)}")
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, want))


def fake_cifar100(root, train, test):
    """CIFAR-100's binary layout with random pixels and balanced labels: the loader's work is
    that of the real files (decode, augment, batch), and none need to be carried."""
    import numpy as np
    folder = os.path.join(root, "cifar-100-binary")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in [("train.bin", train), ("test.bin", test)]:
        records = rng.integers(0, 256, size=(count, 3074), dtype=np.uint8)
        records[:, 1] = np.arange(count) % 100
        records[:, 0] = records[:, 1] // 5
        records.tofile(os.path.join(folder, name))
    return root


def table(rows_path):
    """The summary table of a rows file, as Markdown."""
    rows = []
    with open(rows_path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append({"step": "?", "check": "?", "case": line.strip()[:80], "result": "FAIL: unreadable row"})
    failed = sum(str(r.get("result", "")).startswith("FAIL") for r in rows)
    lines = ["| step | check | case | sslc | reference / torch | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.get(k, "-") for k in ("step", "check", "case", "sslc", "reference", "result")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append(f"\n{len(rows)} rows, {failed} failed.")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        print(table(sys.argv[2]))
    else:
        sys.exit("usage: python3 bench/gpu_common.py table ROWS.jsonl")
