"""N2UQ acceptance run (issue 7): fmnist-resnet at WbAb over calibration seeds, mean +- std of the
Fashion-MNIST test accuracy.

Post-training (same block loop, iterations, V learning rate and calibration samples for both):
  - ``qdrop``: AdaRound block reconstruction + QDrop on lowbit's uniform grids (LSQ act steps),
  - ``n2uq``: N2UQ-PTQ (LTQ input thresholds, L1-normalised mid-rise weight grid).
Short QAT (``lowbit.finetune``, the same epochs, steps, lr and training images for all three,
distilled from the FP model), each started from a PTQ model above:
  - ``n2uq+ft``: N2UQ thresholds and weight clip learned (G-STE), from ``n2uq``,
  - ``frozen+ft``: the same with the LTQ thresholds frozen (N2UQ's ablation), from ``n2uq``,
  - ``lsq+ft``: LSQ-uniform (weight and activation steps), from ``qdrop``.
Finetune rows are QAT numbers, not post-training ones. Each finished run is appended to
``--out`` (JSON lines) at once; ``--resume`` skips what is there. ``--jobs N`` runs the (seed,
bits) pairs in N worker processes of ``--threads`` each (the rows are the same: every pair starts
from its own seed; a pair's rows are appended when it finishes).

Usage: ``python benchmarks/n2uq_fmnist.py --bits 2 3 --seeds 0 1 2``
(``--quick``: 1 seed, W2A2, 50 iterations, 1024 training images, the quick task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

import lowbit
from lowbit.data import fashion_mnist
from lowbit.zoo import load_task

PTQ = ("qdrop", "n2uq")
FINETUNED = {"n2uq+ft": ("n2uq", {}), "frozen+ft": ("n2uq", {"freeze_thresholds": True}),
             "lsq+ft": ("qdrop", {"weight_quantizer": "lsq"})}  # fmt: skip
METHODS = PTQ + tuple(FINETUNED)


def ptq_config(method: str, args) -> tuple[str, dict]:
    # Both learn V at the same rate: N2UQConfig's default 1e-3 (AdaRound's, for thousands of steps)
    # leaves V nearly where it started after a few hundred.
    common = dict(iters=args.iters, num_samples=args.num_samples, drop_prob=0.5, lr=args.lr)
    if method == "qdrop":
        return "adaround", dict(common, mode="block", learn_act_scale=True)
    return "n2uq", common


def train_batches(seed: int, n: int, batch_size: int) -> list:
    """``n`` training images (labels unused by finetune's distillation), batches of batch_size;
    drawn after the calibration images' seed stream so the sets come from one permutation."""
    x, _ = fashion_mnist("train")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + seed))[:n]
    return [x[pick[i:i + batch_size]] for i in range(0, n, batch_size)]


def row_of(method: str, bits: int, seed: int, ev: dict, seconds: float, **extra) -> dict:
    return {"method": method, "bits": bits, "seed": seed, "accuracy": ev["metric"], "agreement": ev["agreement"],
            "seconds": round(seconds, 1), **extra}


def run_seed_bits(task, bits: int, seed: int, args, done: set, emit) -> None:
    ptq = {}
    for method in PTQ:
        wanted = method in args.methods and (method, bits, seed) not in done
        feeds = any(src == method and ft in args.methods and (ft, bits, seed) not in done
                    for ft, (src, _) in FINETUNED.items())
        if not (wanted or feeds):
            continue
        name, cfg = ptq_config(method, args)
        t0 = time.perf_counter()
        ptq[method] = lowbit.quantize(task.model, task.calib_loader, name, w_bits=bits, a_bits=bits, seed=seed,
                                      progress=False, num_samples=args.num_samples, config=cfg)
        seconds = time.perf_counter() - t0
        if wanted:
            emit(row_of(method, bits, seed, task.evaluate(ptq[method]), seconds, iters=args.iters))
    data = train_batches(seed, args.train_images, args.batch)
    for ft, (src, kw) in FINETUNED.items():
        if ft not in args.methods or (ft, bits, seed) in done:
            continue
        t0 = time.perf_counter()
        model = lowbit.finetune(ptq[src], data, epochs=args.epochs, lr=args.ft_lr, quantizer_lr=args.ft_quantizer_lr,
                                seed=seed, progress=False, **kw)
        seconds = time.perf_counter() - t0
        meta = lowbit.report(model).meta["finetune"][-1]
        emit(row_of(ft, bits, seed, task.evaluate(model), seconds, epochs=args.epochs,
                    train_images=args.train_images, epoch_seconds=meta["epoch_seconds"]))


def run_pair(seed: int, bits: int, args, done: set, with_fp: bool) -> tuple[float | None, list[dict]]:
    """One (seed, bits) pair in a worker process: the pair's rows, and the FP accuracy if asked."""
    torch.set_num_threads(args.threads)
    lowbit.set_num_threads(args.threads)
    task = load_task("fmnist-resnet", seed=seed, num_calib=args.num_samples, quick=args.quick)
    rows: list[dict] = []
    run_seed_bits(task, bits, seed, args, done, rows.append)
    return task.evaluate(task.model)["metric"] if with_fp else None, rows


def summarise(rows: list[dict], fp: float | None) -> str:
    lines = [f"FP32: {fp:.2f} %" if fp is not None else "", "",
             "| bits | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for bits in sorted({r["bits"] for r in rows}):
        cells = []
        for m in METHODS:
            acc = [r["accuracy"] for r in rows if r["bits"] == bits and r["method"] == m]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells.append(f"{statistics.fmean(acc):.2f} +- {sd:.2f} (n={len(acc)})" if acc else "-")
        lines.append(f"| W{bits}A{bits} | " + " | ".join(cells) + " |")
    ep = [s for r in rows if "epoch_seconds" in r for s in r["epoch_seconds"]]
    if ep:
        n = rows[-1].get("train_images")
        lines += ["", f"finetune seconds per epoch ({n} images): median {statistics.median(ep):.1f}, "
                      f"range {min(ep):.1f}-{max(ep):.1f} over {len(ep)} epochs"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--iters", type=int, default=200, help="PTQ optimisation steps per block")
    ap.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the rounding V (both PTQ methods)")
    ap.add_argument("--num-samples", type=int, default=256, help="calibration images")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=8192, help="training images per finetune epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-quantizer-lr", type=float, default=None,
                    help="finetune's quantizer_lr (thresholds, steps, clips); default: finetune's, ft-lr / 10")
    ap.add_argument("--threads", type=int, default=1, help="threads of each process")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, one (seed, bits) pair each at a time")
    ap.add_argument("--out", help="JSON lines file the runs are appended to ('' for none)", default="n2uq_fmnist.jsonl")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object with the FP accuracy and every row")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.bits, args.seeds, args.iters, args.train_images, args.epochs = [2], [0], 50, 1024, 1
    torch.set_num_threads(args.threads)
    lowbit.set_num_threads(args.threads)

    out = Path(args.out) if args.out else None
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if args.resume and out and out.exists() else []
    done = {(r["method"], r["bits"], r["seed"]) for r in rows}

    def emit(row: dict) -> None:
        rows.append(row)
        if out:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    fp = None
    if args.jobs > 1:
        # spawn, not fork: a forked child would inherit torch's OpenMP pool in an unknown state
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            grid = [(seed, bits) for seed in args.seeds for bits in args.bits]
            pairs = [pool.submit(run_pair, seed, bits, args, done, i == 0) for i, (seed, bits) in enumerate(grid)]
            for pair in pairs:  # in submission order, so the rows come out as a single process's do
                pair_fp, pair_rows = pair.result()
                fp = pair_fp if fp is None else fp
                for row in pair_rows:
                    emit(row)
    else:
        for seed in args.seeds:
            task = load_task("fmnist-resnet", seed=seed, num_calib=args.num_samples, quick=args.quick)
            if fp is None:
                fp = task.evaluate(task.model)["metric"]
            for bits in args.bits:
                run_seed_bits(task, bits, seed, args, done, emit)
    print(summarise(rows, fp))
    if args.json:
        print(json.dumps({"fp": fp, "rows": rows}))


if __name__ == "__main__":
    main()
