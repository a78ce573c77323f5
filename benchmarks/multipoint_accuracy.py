"""Multipoint ablation on fmnist-resnet (issue 8 acceptance; methods.md section 7.2, E5).

Weights only (A32), W2 and W3, per-tensor and per-channel grids, at 5 % and 10 % extra rows:

  nearest                     the b-bit base alone
  multipoint (error)          points on the channels whose output error drops most
  multipoint (random)         the same number of points on random channels
  +1 bit (same channels)      the channels the error placement chose, at b+1 bits instead
                              (half the extra code bits of the points at W2)
  +1 bit eq                   b x as many channels at b+1 bits: the points' extra code bits

Each cell is the mean +- std over seeds (the seed picks the calibration images). Effective bits
are code bits per weight over the layers multipoint touches (the 8-bit first/last layers are
left alone by every variant).

    python benchmarks/multipoint_accuracy.py [--quick | --smoke] [--json] [--seeds 0 1 2]

--quick uses the zoo's quick task (256 calibration images, 2000 test images), --smoke that and
one setting.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

VARIANTS = {
    "multipoint": lambda rho, b: dict(overhead=rho, placement="error", represent="points"),
    "random": lambda rho, b: dict(overhead=rho, placement="random", represent="points"),
    "+1 bit": lambda rho, b: dict(overhead=rho, placement="error", represent="wider"),
    # as many extra code bits as the points: b x as many channels, each one bit wider
    "+1 bit eq": lambda rho, b: dict(overhead=rho * b, max_points=2, placement="error", represent="wider"),
}


def run(args: argparse.Namespace) -> dict:
    import lowbit
    from lowbit import zoo
    from lowbit.__main__ import weight_bytes

    rows = []
    for seed in args.seeds:
        task = zoo.load_task("fmnist-resnet", seed=seed, quick=args.quick)
        fp = task.evaluate(task.model)["metric"]
        for w_bits in args.w_bits:
            for gran in args.granularity:
                common = dict(w_bits=w_bits, a_bits=None, granularity=gran, seed=seed, progress=False,
                              **task.quantize_kwargs)

                def record(method, overhead, q, seconds, task=task, seed=seed, w_bits=w_bits,
                           gran=gran, fp=fp, **extra):
                    res = task.evaluate(q)
                    meta = lowbit.report(q).meta.get("multipoint", {})
                    rows.append(dict(
                        seed=seed, w_bits=w_bits, granularity=gran, method=method, overhead=overhead,
                        metric=res["metric"], agreement=res["agreement"], fp_metric=fp,
                        effective_bits=meta.get("effective_bits", float(w_bits)),
                        size_bytes=weight_bytes(q), seconds=round(seconds, 2), **extra))
                    print(f"seed {seed} W{w_bits} {gran:<7} {method:<10} rho={overhead:<5} "
                          f"acc {res['metric']:6.2f}  eff {rows[-1]['effective_bits']:.3f}  "
                          f"({seconds:.1f} s)", file=sys.stderr)

                t0 = time.perf_counter()
                q = lowbit.quantize(task.model, task.calib_loader, "nearest", **common)
                record("nearest", 0.0, q, time.perf_counter() - t0)
                for rho in args.overhead:
                    for name, opts in VARIANTS.items():
                        t0 = time.perf_counter()
                        q = lowbit.quantize(task.model, task.calib_loader, "multipoint",
                                            config=opts(rho, w_bits), **common)
                        record(name, rho, q, time.perf_counter() - t0,
                               summary=lowbit.report(q).meta["multipoint"]["summary"])
    return summarize(rows, args)


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    cells = {}
    for r in rows:
        key = (r["w_bits"], r["granularity"], r["method"], r["overhead"])
        cells.setdefault(key, []).append(r)
    table = []
    for (w, g, m, rho), rs in cells.items():
        acc, acc_sd = _ms([r["metric"] for r in rs])
        agr, agr_sd = _ms([r["agreement"] for r in rs])
        table.append(dict(w_bits=w, granularity=g, method=m, overhead=rho, accuracy=round(acc, 2),
                          accuracy_std=round(acc_sd, 2), agreement=round(agr, 2),
                          agreement_std=round(agr_sd, 2),
                          effective_bits=round(statistics.fmean(r["effective_bits"] for r in rs), 4),
                          size_bytes=rs[0]["size_bytes"], seeds=len(rs)))
    print()
    print(f"fmnist-resnet, weights only (A32), mean +- std over seeds {list(args.seeds)}; "
          f"FP accuracy {rows[0]['fp_metric']:.2f} %")
    print(f"{'W':>2} {'grid':<8} {'overhead':>8}  {'method':<11} {'accuracy %':>14} {'agreement %':>14} "
          f"{'eff. bits':>9} {'bytes':>8}")
    for t in table:
        print(f"{t['w_bits']:>2} {t['granularity']:<8} {100 * t['overhead']:>7.0f}%  {t['method']:<11} "
              f"{t['accuracy']:>7.2f} +- {t['accuracy_std']:<4.2f} {t['agreement']:>7.2f} +- "
              f"{t['agreement_std']:<4.2f} {t['effective_bits']:>9.3f} {t['size_bytes']:>8}")
    import lowbit

    return {
        "benchmark": "multipoint_accuracy",
        "machine": {"isa": lowbit._native.active_isa(), "threads": lowbit.get_num_threads(),
                    "torch": torch.__version__, "lowbit": lowbit.__version__,
                    "python": platform.python_version()},
        "rows": rows,
        "summary": {"table": table},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick task (fewer calibration and test images)")
    p.add_argument("--smoke", action="store_true", help="the quick task, one seed, W2 per channel, 5 %%")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=None,
                   help="torch and lowbit threads (results do not depend on it; 1 on a busy machine)")
    p.add_argument("--w-bits", type=int, nargs="+", default=[2, 3])
    p.add_argument("--granularity", nargs="+", default=["tensor", "channel"])
    p.add_argument("--overhead", type=float, nargs="+", default=[0.05, 0.10])
    args = p.parse_args()
    if args.smoke:
        args.quick = True
        args.seeds, args.w_bits, args.overhead, args.granularity = args.seeds[:1], [2], [0.05], ["channel"]
    if args.threads:
        import lowbit

        torch.set_num_threads(args.threads)
        lowbit.set_num_threads(args.threads)
    out = run(args)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
