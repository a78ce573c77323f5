"""Time per AdaRound optimisation step: lowbit's C++ engine vs a plain PyTorch step.

    python benchmarks/adaround.py [--quick] [--json] [--repeats 5]

The comparator is written here the way BRECQ does it: a batch-32 forward of the layer with the
soft weight W~(V) built in torch, the reconstruction loss (mean over rows of the sum over
channels) plus the rounding regulariser, backward to V, torch.optim.Adam. The engine runs
``objective="auto"``'s choice (the faster of gram and rows by its cost estimate); both
engine objectives are timed. Shapes: ResNet-18 layer1 / layer3 / layer4 3x3 convs and a
MobileNetV2 pointwise and depthwise conv. loss_rel_diff: the rows objective against the torch
step on the same minibatches after the same number of steps (relative difference of the final
reconstruction loss). Times are medians of --repeats runs, in the same process, the three
contenders taking turns.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from lowbit import _native as N
from lowbit.methods.adaround import auto_objective

ZETA, GAMMA = 1.1, -0.1
# name, C_in, C_out, kernel, spatial, groups
SHAPES = [
    ("resnet18_layer1", 64, 64, 3, 56, 1),
    ("resnet18_layer3", 256, 256, 3, 14, 1),
    ("resnet18_layer4", 512, 512, 3, 7, 1),
    ("mbv2_pointwise", 96, 576, 1, 14, 1),
    ("mbv2_depthwise", 576, 576, 3, 14, 576),
]


def problem(cin, cout, k, hw, groups, n, rng):
    d = cin // groups * k * k
    W = (rng.standard_normal((cout, d)) * math.sqrt(2.0 / d)).astype(np.float32)
    s, z = N.lp_range_search(W, 4, rows=cout)
    X = np.maximum(rng.standard_normal((n, cin, hw, hw)), 0).astype(np.float32)
    conv = dict(kernel_size=(k, k), stride=(1, 1), padding=(k // 2, k // 2), dilation=(1, 1))
    Y = F.conv2d(torch.from_numpy(X), torch.from_numpy(W).reshape(cout, cin // groups, k, k),
                 padding=k // 2, groups=groups).numpy()
    return W, s, z, X, Y, conv


def torch_steps(W, s, z, X, Y, conv, groups, steps, seed, sched_iters, batch=32):
    """Plain PyTorch AdaRound steps (soft weight, conv, loss + regulariser, backward, Adam)."""
    Wt_ = torch.from_numpy(W)
    st, zt = torch.from_numpy(s), torch.from_numpy(z)
    qmax = 15.0
    base = torch.floor(Wt_ / st)
    frac = Wt_ / st - base
    V = (-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)).clone().requires_grad_(True)
    opt = torch.optim.Adam([V], lr=1e-3)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    k = conv["kernel_size"][0]
    shape = (W.shape[0], X.shape[1] // groups, k, k)
    losses = []
    for t in range(1, steps + 1):
        idx = torch.from_numpy(N.rounding_sample_batch(seed, t, X.shape[0], min(batch, X.shape[0])).astype(np.int64))
        h = torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
        Wq = st * (torch.clamp(base + h + zt, 0, qmax) - zt)
        out = F.conv2d(Xt[idx], Wq.reshape(shape), padding=conv["padding"], groups=groups)
        rec = (out - Yt[idx]).pow(2).sum(1).mean()
        t0 = 0.2 * sched_iters
        beta = 20.0 if t < t0 else 2.0 + 18.0 * max(0.0, 1 - (t - t0) / (sched_iters - t0))
        reg = 0.01 * (1 - (2 * h - 1).abs().pow(beta)).sum() if t >= t0 else 0.0
        opt.zero_grad()
        (rec + reg).backward()
        opt.step()
        losses.append(float(rec.detach()))
    return losses


def median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each function; the repeats take turns, so that a slow spell of the
    (shared) machine hits every contender alike."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_shape(name, cin, cout, k, hw, groups, n, steps, repeats, rng) -> dict:
    W, s, z, X, Y, conv = problem(cin, cout, k, hw, groups, n, rng)
    d = W.shape[1]
    sched = N.rounding_schedule(1000)
    H = np.zeros((groups, d, d), np.float32)
    N.conv_gram_accumulate(X, H, groups=groups, **conv)
    c0 = float((Y.astype(np.float64) ** 2).sum())
    nrows = X.shape[0] * hw * hw

    def gram():
        V = N.rounding_init(W, s, z, 4)
        m, v = np.zeros_like(V), np.zeros_like(V)
        N.rounding_run_gram(W, s, z, 4, V, m, v, H, H, c0, nrows, sched, 300, steps, groups=groups)

    def rows_():
        V = N.rounding_init(W, s, z, 4)
        m, v = np.zeros_like(V), np.zeros_like(V)
        return N.rounding_run_rows(W, s, z, 4, V, m, v, X, Y, sched, 0, steps, conv=conv, batch=32,
                                   seed=1, groups=groups)

    med = median_times({"gram": gram, "rows": rows_,
                        "torch": lambda: torch_steps(W, s, z, X, Y, conv, groups, steps, 1, 1000)}, repeats)
    t_gram, t_rows, t_torch = (med[k] / steps for k in ("gram", "rows", "torch"))
    auto = auto_objective(cout, d, groups, 32 * hw * hw)
    t_auto = t_gram if auto == "gram" else t_rows
    rec_cpp = rows_()[0]
    rec_torch = torch_steps(W, s, z, X, Y, conv, groups, steps, 1, 1000)
    return {"shape": name, "K": d, "N": cout, "spatial": hw, "auto": auto,
            "ms_gram": t_gram * 1e3, "ms_rows": t_rows * 1e3, "ms_torch": t_torch * 1e3,
            "speedup": t_torch / t_auto,
            "loss_rel_diff": abs(float(rec_cpp[-1]) - rec_torch[-1]) / abs(rec_torch[-1])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and steps")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    n = 32 if args.quick else 64
    steps = 3 if args.quick else 10
    repeats = 3 if args.quick else args.repeats
    rng = np.random.default_rng(0)
    rows = [bench_shape(*shape, n, steps, repeats, rng) for shape in SHAPES]
    summary = {f"speedup_{r['shape'].split('_')[-1]}": r["speedup"] for r in rows if r["shape"].startswith("resnet18")}
    summary["loss_rel_diff"] = max(r["loss_rel_diff"] for r in rows)
    out = {"threads": N.get_num_threads(), "torch_threads": torch.get_num_threads(), "isa": N.active_isa(),
           "samples": n, "steps": steps, "rows": rows, "summary": summary}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"AdaRound step time, lowbit threads {out['threads']}, torch threads {out['torch_threads']}, "
              f"isa {out['isa']}, median of {repeats}")
        print(f"{'shape':<18} {'K':>5} {'N':>4} {'auto':>5} {'gram ms':>9} {'rows ms':>9} {'torch ms':>9} "
              f"{'speedup':>8} {'loss diff':>9}")
        for r in rows:
            print(f"{r['shape']:<18} {r['K']:>5} {r['N']:>4} {r['auto']:>5} {r['ms_gram']:9.2f} {r['ms_rows']:9.2f} "
                  f"{r['ms_torch']:9.2f} {r['speedup']:7.1f}x {r['loss_rel_diff']:9.1e}")
        print("summary:", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
