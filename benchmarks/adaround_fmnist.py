"""AdaRound vs round-to-nearest on fmnist-resnet: test accuracy and wall time per setting.

    python benchmarks/adaround_fmnist.py [--quick] [--json] [--seeds 0 1 2] [--iters N]
        [--settings W4A32 W3A32 W2A32 W4A4:block]

Each setting is W<bits>A<bits or 32>, optionally ':block' (BRECQ/QDrop block mode, drop_prob
0.5) or ':layer' (default). Per setting and calibration seed it quantizes with nearest and with
AdaRound and prints accuracy (mean +- std over seeds) and AdaRound's wall time. --quick: 256
calibration samples, 500 iterations (unless --iters), one seed, the quick task (2000 test images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import lowbit


def parse(setting: str) -> tuple[int, int | None, str]:
    bits, _, mode = setting.partition(":")
    w, a = bits.upper().lstrip("W").split("A")
    return int(w), (None if a == "32" else int(a)), mode or "layer"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=None, help="AdaRound iterations (default: the config's)")
    p.add_argument("--settings", nargs="+", default=["W4A32", "W3A32", "W2A32", "W4A4:block"])
    p.add_argument("--num-calib", type=int, default=1024)
    p.add_argument("--options", default="{}", help="extra AdaRoundConfig options as JSON")
    args = p.parse_args(argv)
    try:
        from lowbit.zoo import load_task
    except ImportError:
        print("adaround_fmnist: lowbit.zoo is not available in this checkout; nothing to measure")
        return 0
    seeds = args.seeds[:1] if args.quick else args.seeds
    num_calib = 256 if args.quick else args.num_calib
    iters = args.iters or (500 if args.quick else None)
    extra = json.loads(args.options)

    rows = []
    fp = None
    tasks = {}  # per seed, loaded once: the FP test logits are computed on loading
    for setting in args.settings:
        w, a, mode = parse(setting)
        res = {"nearest": [], "adaround": [], "seconds": [], "cpu_seconds": []}
        for seed in seeds:
            if seed not in tasks:
                tasks[seed] = load_task("fmnist-resnet", seed=seed, num_calib=num_calib, quick=args.quick)
            task = tasks[seed]
            if fp is None:
                fp = task.evaluate(task.model)["metric"]
            kw = dict(w_bits=w, a_bits=a, seed=seed, num_samples=num_calib, progress=False, **task.quantize_kwargs)
            near = lowbit.quantize(task.model, task.calib_loader, "nearest", **kw)
            res["nearest"].append(task.evaluate(near)["metric"])
            cfg = dict(mode=mode, **extra)
            if iters:
                cfg["iters"] = iters
            t0, c0 = time.perf_counter(), time.process_time()
            ada = lowbit.quantize(task.model, task.calib_loader, "adaround", config=cfg, **kw)
            res["seconds"].append(time.perf_counter() - t0)
            res["cpu_seconds"].append(time.process_time() - c0)
            res["adaround"].append(task.evaluate(ada)["metric"])
            soft = [r.extra.get("soft_share", 0.0) for r in ada.lowbit_report.layers if r.extra]
            print(f"  {setting} seed {seed}: nearest {res['nearest'][-1]:.2f}  adaround {res['adaround'][-1]:.2f}"
                  f"  ({res['seconds'][-1]:.1f} s wall, {res['cpu_seconds'][-1]:.1f} s CPU, max soft share "
                  f"{max(soft, default=0):.3f})", file=sys.stderr, flush=True)

        def ms(x):
            return statistics.mean(x), (statistics.stdev(x) if len(x) > 1 else 0.0)

        rows.append({"setting": setting, "nearest": ms(res["nearest"]), "adaround": ms(res["adaround"]),
                     "seconds": ms(res["seconds"]), "cpu_seconds": ms(res["cpu_seconds"]), "seeds": seeds})
    out = {"fp": fp, "quick_task": args.quick, "threads": lowbit.get_num_threads(), "torch_threads": torch.get_num_threads(),
           "num_calib": num_calib, "iters": iters or "default", "options": extra, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"fmnist-resnet FP {fp:.2f} %  ({num_calib} calibration samples, iters {out['iters']}, "
              f"lowbit threads {out['threads']}, torch threads {out['torch_threads']})")
        print(f"{'setting':<12} {'nearest':>14} {'adaround':>14} {'wall s':>14} {'CPU s':>14}")
        for r in rows:
            n, a, s, c = r["nearest"], r["adaround"], r["seconds"], r["cpu_seconds"]
            print(f"{r['setting']:<12} {n[0]:7.2f} +- {n[1]:4.2f} {a[0]:7.2f} +- {a[1]:4.2f} "
                  f"{s[0]:8.1f} +- {s[1]:4.1f} {c[0]:8.1f} +- {c[1]:4.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
