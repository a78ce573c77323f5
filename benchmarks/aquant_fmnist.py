"""AQuant acceptance run: fmnist-resnet at WbAb, nearest vs AdaRound block + QDrop vs AQuant,
over calibration seeds (mean +- std of the Fashion-MNIST test accuracy).

Both learned methods run the same block loop with the same AdaRound settings (iterations per
block, V's lr, lambda, QDrop p = 0.5, LSQ steps); AQuant adds the learned borders. Each finished
run is appended to ``--out`` (JSON lines) at once, so an interrupted sweep keeps its results and
``--resume`` skips what is there.

Usage: ``python benchmarks/aquant_fmnist.py --bits 2 3 4 --seeds 0 1 2 --iters 1000``
(``--quick``: the quick task; unless given, 1 seed, W2A2, 100 iterations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import lowbit
from lowbit.zoo import load_task

METHODS = ("nearest", "adaround", "aquant")


def config_for(method: str, args) -> dict | None:
    if method == "nearest":
        return None
    cfg = dict(iters=args.iters, lr=args.lr, reg_lambda=args.reg_lambda, mode="block",
               drop_prob=0.5, learn_act_scale=True, act_lr=args.act_lr, num_samples=args.num_samples)
    if method == "aquant":
        cfg.update(border_lr=args.border_lr, kl_weight=args.kl_weight)
    return cfg


def run_one(task, method: str, bits: int, seed: int, args) -> dict:
    t0 = time.perf_counter()
    q = lowbit.quantize(task.model, task.calib_loader, method, w_bits=bits, a_bits=bits, seed=seed,
                        progress=False, num_samples=args.num_samples, config=config_for(method, args))
    seconds = time.perf_counter() - t0
    ev = task.evaluate(q)
    row = {"method": method, "bits": bits, "seed": seed, "accuracy": ev["metric"],
           "agreement": ev["agreement"], "seconds": round(seconds, 1), "iters": args.iters}
    if method == "aquant":
        rep = q.lowbit_report
        shifts = [r.extra["border_threshold_shift_mean"] for r in rep.layers if "border_threshold_shift_mean" in r.extra]
        dead = [r.extra["border_dead_levels"] for r in rep.layers if "border_dead_levels" in r.extra]
        row.update(kl_weight=args.kl_weight, border_layers=len(shifts), threshold_shift_mean=statistics.fmean(shifts) if shifts else 0.0,
                   dead_levels=sum(dead))
    kept = [r.name for r in q.lowbit_report.layers if r.method == "nearest (kept)"]
    row["kept_nearest"] = kept
    return row


def summarise(rows: list[dict], fp: float) -> str:
    lines = [f"FP32: {fp:.2f} %", "", "| bits | " + " | ".join(METHODS) + " | aquant - adaround |",
             "|---|" + "---|" * (len(METHODS) + 1)]
    for bits in sorted({r["bits"] for r in rows}):
        cells, means = [], {}
        for m in METHODS:
            acc = [r["accuracy"] for r in rows if r["bits"] == bits and r["method"] == m]
            if not acc:
                cells.append("-")
                continue
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            means[m] = acc
            cells.append(f"{statistics.fmean(acc):.2f} +- {sd:.2f} (n={len(acc)})")
        diff = "-"
        if "aquant" in means and "adaround" in means:
            a = {r["seed"]: r["accuracy"] for r in rows if r["bits"] == bits and r["method"] == "aquant"}
            b = {r["seed"]: r["accuracy"] for r in rows if r["bits"] == bits and r["method"] == "adaround"}
            d = [a[s] - b[s] for s in a if s in b]
            if d:
                diff = f"{statistics.fmean(d):+.2f} +- {statistics.stdev(d) if len(d) > 1 else 0.0:.2f} (paired)"
        lines.append(f"| W{bits}A{bits} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=None, help="default 2 3 4 (--quick: 2)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--iters", type=int, default=None, help="default 1000 (--quick: 100)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--reg-lambda", type=float, default=0.01)
    ap.add_argument("--act-lr", type=float, default=4e-5)
    ap.add_argument("--border-lr", type=float, default=5e-3)
    ap.add_argument("--kl-weight", type=float, default=0.0, help="AQuant's global KL term (lambda_g)")
    ap.add_argument("--num-samples", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON lines file the runs are appended to ('' for none)", default="aquant_fmnist.jsonl")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object with the FP accuracy and every row")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    args.bits = args.bits or ([2] if args.quick else [2, 3, 4])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.iters = args.iters or (100 if args.quick else 1000)
    torch.set_num_threads(args.threads)
    lowbit.set_num_threads(args.threads)

    out = Path(args.out) if args.out else None
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if args.resume and out and out.exists() else []
    done = {(r["method"], r["bits"], r["seed"]) for r in rows}
    fp = None
    for seed in args.seeds:
        task = load_task("fmnist-resnet", seed=seed, num_calib=args.num_samples, quick=args.quick)
        if fp is None:
            fp = task.evaluate(task.model)["metric"]
        for bits in args.bits:
            for m in args.methods:
                if (m, bits, seed) in done:
                    continue
                row = run_one(task, m, bits, seed, args)
                rows.append(row)
                if out:
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(summarise(rows, fp))
    if args.json:
        print(json.dumps({"fp": fp, "rows": rows}))


if __name__ == "__main__":
    main()
