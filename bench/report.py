"""The markdown tables of bench/RESULTS.md from the JSON lines bench/run.sh collects."""

import json
import statistics
import sys

from torch_reference import gram_flops


def combined(runs):
    """One row per configuration: the median of its rounds' medians, the least minimum."""
    groups = {}
    for r in runs:
        groups.setdefault((r["objective"], r["backend"], r["batch"]), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        row["fwd_bwd_ms_median"] = statistics.median(r["fwd_bwd_ms_median"] for r in group)
        row["fwd_bwd_ms_min"] = min(r["fwd_bwd_ms_min"] for r in group)
        row["compile_ms"] = min(r["compile_ms"] for r in group)
        row["rounds"] = len(group)
        out.append(row)
    return out


def train_table(rows):
    """Training steps (`bench/run.sh train`): per network, the median over rounds of each
    round's median step, sslc against PyTorch."""
    steps = {}
    for r in (r for r in rows if "backbone" in r):
        backend = r.get("backend", "sslc")
        steps.setdefault((r["backbone"].lower(), r["batch"], r["image_size"]), {}).setdefault(backend, []).append(r)
    sgemm = next((r["gflops"] for r in rows if "sgemm_size" in r), None)
    print(f"Training step, {rows[0]['threads']} threads (images/s from the median of round medians)\n")
    if sgemm:
        print(f"Machine sgemm rate (torch.mm, 2048³): {sgemm:.1f} GFLOP/s; % of sgemm: the step's conv and linear")
        print("FLOPs (forward on both views and backward) over its median time, against that rate\n")
    print("| network | batch | image | rounds | sslc img/s | PyTorch eager img/s | ratio | sslc % of sgemm | PyTorch % of sgemm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (backbone, batch, size), by_backend in steps.items():
        rate = {
            backend: batch / statistics.median(r["median_seconds_per_step"] for r in runs)
            for backend, runs in by_backend.items()
        }
        ours, theirs = rate.get("sslc", float("nan")), rate.get("torch", float("nan"))
        rounds = len(by_backend.get("sslc", []))
        gflop = next((r["gflop_per_step"] for r in by_backend.get("torch", []) if "gflop_per_step" in r), None)
        share = lambda img_s: f"{100 * gflop * img_s / batch / sgemm:.0f}%" if gflop and sgemm else "-"
        print(f"| {backbone} | {batch} | {size}x{size} | {rounds} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x "
              f"| {share(ours)} | {share(theirs)} |")


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if any("backbone" in r for r in rows):
        train_table(rows)
        return
    sgemm = next(r for r in rows if "sgemm_size" in r)["gflops"]
    runs = combined([r for r in rows if "objective" in r])
    print(f"Machine sgemm rate (torch.mm, 2048³, {runs[0]['threads']} threads): {sgemm:.1f} GFLOP/s\n")
    print("| objective | backend | N | D | rounds | compile ms | fwd+bwd ms (median) | min | GFLOP/s | % of sgemm | speed-up vs torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    torch_ms = {(r["objective"], r["batch"]): r["fwd_bwd_ms_median"] for r in runs if r["backend"] == "torch"}
    for r in runs:
        if r["batch"] != 512:
            continue
        ms = r["fwd_bwd_ms_median"]
        gflops = gram_flops(r["batch"], r["dim"]) / ms / 1e6
        speedup = torch_ms[(r["objective"], r["batch"])] / ms
        print(
            f"| {r['objective']} | {r['backend']} | {r['batch']} | {r['dim']} | {r['rounds']} | {r['compile_ms']:.1f} | {ms:.2f} | "
            f"{r['fwd_bwd_ms_min']:.2f} | {gflops:.1f} | {100 * gflops / sgemm:.0f}% | {speedup:.2f}x |"
        )
    print("\n| objective | backend | N | D | peak extra MiB | fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        if r["batch"] == 512:
            continue
        print(
            f"| {r['objective']} | {r['backend']} | {r['batch']} | {r['dim']} | "
            f"{r['peak_extra_bytes'] / 2**20:.1f} | {r['fwd_bwd_ms_median']:.0f} |"
        )


if __name__ == "__main__":
    main()
