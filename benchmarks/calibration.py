"""Calibration statistics: lowbit's C++ Gram accumulation and Lp range search against torch,
on the same data, in the same run.

    python benchmarks/calibration.py [--quick] [--json] [--threads 1,2] [--repeats 5]

Cases, each at every thread count of ``--threads`` (lowbit and torch set alike):
  gram        H += X^T X, X (n, d) rows          vs torch ``X.T @ X``
  cross_gram  C += A^T B                          vs torch ``A.T @ B``
  conv_gram   per-group Gram of im2col rows of x  vs torch ``F.unfold`` + ``X.T @ X``
  lp_range    per-channel Lp (p=2.4) range search of a weight, 80 candidates, 4 bits,
              vs the same search vectorised over rows in torch (float64 pow), and vs
              lowbit's own portable (scalar ISA) kernel

Every case is checked against its comparator before timing (Gram: relative Frobenius error
against torch's float32 product; range search: the NumPy reference on a few rows, and the
share of rows where torch's search picks the same range). Timing: one warm-up each, then
``--repeats`` rounds, lowbit and torch interleaved; ``seconds`` is the median wall time,
``ratio`` each comparator's median over lowbit's (above 1: lowbit faster), ``cpu_ratio`` the same with
process CPU time (steadier on a shared machine). GFLOP/s counts 2 n d^2 per Gram, what
``X.T @ X`` costs; lowbit computes the upper triangle only (half of that) and mirrors it. The load average is recorded: when it
exceeds the thread count + 0.5 the machine was shared and rows are marked ``noisy``.

With ``--json`` the last line is one JSON object; ``summary.gram_ratio_vs_torch`` is the
geometric mean of the gram rows' ratios at the largest thread count (target: >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import lowbit
from lowbit import _native, reference

GRAM_SHAPES = [(8192, 576), (8192, 1152), (4096, 4608)]
GRAM_SHAPES_QUICK = [(4096, 576), (2048, 1152)]
CROSS_SHAPES = [(8192, 1152)]
CROSS_SHAPES_QUICK = [(2048, 576)]
# (N, C, H, W, k, stride, pad, groups): ResNet-style 3x3 convolutions, d = C/groups * 9.
CONV_CASES = [(32, 64, 28, 28, 3, 1, 1, 1), (16, 128, 14, 14, 3, 1, 1, 1), (8, 256, 14, 14, 3, 1, 1, 1)]
CONV_CASES_QUICK = [(8, 64, 16, 16, 3, 1, 1, 1)]
LP_SHAPES = [(512, 4608), (256, 1152)]
LP_SHAPES_QUICK = [(128, 1152)]


def timed(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def compare(fns: dict, repeats: int) -> dict:
    """Median wall and CPU seconds of each contender, run interleaved after one warm-up."""
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = timed(fn)
            wall[k].append(w)
            cpu[k].append(c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), min(wall[k])) for k in fns}


def rel_fro(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"calibration benchmark: result check failed: {what}")


# --- cases ---------------------------------------------------------------------------------


def case_gram(n, d, repeats, rng):
    X = rng.standard_normal((n, d)).astype(np.float32)
    Xt = torch.from_numpy(X)
    H = np.zeros((d, d), np.float32)
    _native.gram_accumulate(X, H)
    err = rel_fro(H, (Xt.T @ Xt).numpy())
    check(err < 1e-5, f"gram {n}x{d}: relative error {err:.2e} against torch")

    def low():
        H.fill(0)
        _native.gram_accumulate(X, H)

    return dict(case="gram", shape=f"{n}x{d}", gflop=2 * n * d * d / 1e9, check=err), compare(
        {"lowbit": low, "torch": lambda: Xt.T @ Xt}, repeats
    )


def case_cross(n, d, repeats, rng):
    A = rng.standard_normal((n, d)).astype(np.float32)
    B = (A + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    C = np.zeros((d, d), np.float32)
    _native.cross_gram_accumulate(A, B, C)
    err = rel_fro(C, (At.T @ Bt).numpy())
    check(err < 1e-5, f"cross_gram {n}x{d}: relative error {err:.2e} against torch")

    def low():
        C.fill(0)
        _native.cross_gram_accumulate(A, B, C)

    return dict(case="cross_gram", shape=f"{n}x{d}", gflop=2 * n * d * d / 1e9, check=err), compare(
        {"lowbit": low, "torch": lambda: At.T @ Bt}, repeats
    )


def case_conv(N, C, Hh, W, k, stride, pad, groups, repeats, rng):
    x = torch.from_numpy(rng.standard_normal((N, C, Hh, W)).astype(np.float32))
    d = C // groups * k * k
    geo = dict(kernel_size=(k, k), stride=(stride, stride), padding=(pad, pad), dilation=(1, 1), groups=groups)
    Hc = np.zeros((groups, d, d), np.float32)
    xn = x.numpy()

    def torch_gram():
        cols = F.unfold(x, k, padding=pad, stride=stride)  # (N, C*k*k, L)
        L = cols.shape[-1]
        rows = cols.view(N, groups, d, L).permute(1, 0, 3, 2).reshape(groups, N * L, d)
        return torch.bmm(rows.transpose(1, 2), rows) if groups > 1 else (rows[0].T @ rows[0])[None]

    _native.conv_gram_accumulate(xn, Hc, **geo)
    err = rel_fro(Hc, torch_gram().numpy())
    check(err < 1e-5, f"conv_gram {tuple(x.shape)}: relative error {err:.2e} against torch")
    oh = (Hh + 2 * pad - k) // stride + 1
    ow = (W + 2 * pad - k) // stride + 1
    rows = N * oh * ow

    def low():
        Hc.fill(0)
        _native.conv_gram_accumulate(xn, Hc, **geo)

    info = dict(case="conv_gram", shape=f"{N}x{C}x{Hh}x{W} k{k} g{groups} (rows {rows}, d {d})",
                gflop=2 * rows * d * d / 1e9, check=err)
    return info, compare({"lowbit": low, "torch": torch_gram}, repeats)


def torch_lp_range_search(w: torch.Tensor, bits: int, p: float = 2.4, n_grid: int = 80, shrink: float = 0.01):
    """reference.lp_range_search (asymmetric, per channel) vectorised over rows in torch."""
    qmax = float(2**bits - 1)
    lo = torch.clamp(w.min(1).values, max=0.0)
    hi = torch.clamp(w.max(1).values, min=0.0)
    best = torch.full((w.shape[0],), math.inf, dtype=torch.float64)
    best_s = torch.ones(w.shape[0])
    best_z = torch.zeros(w.shape[0])
    for k in range(n_grid):
        ratio = float(np.float32(1.0) - np.float32(k) * np.float32(shrink))
        lo_k, hi_k = lo * ratio, hi * ratio
        s = torch.where(hi_k > lo_k, (hi_k - lo_k) / qmax, torch.ones_like(lo_k))
        z = torch.clamp(torch.round(-lo_k / s), 0, qmax)
        q = torch.clamp(torch.round(w / s[:, None]) + z[:, None], 0, qmax)
        err = ((w - (q - z[:, None]) * s[:, None]).abs().double() ** p).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def case_lp(rows, cols, repeats, rng, bits=4):
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 0.1, (rows, 1))).astype(np.float32)
    s, z = _native.lp_range_search(w, bits, rows=rows)
    sub = slice(0, min(rows, 4))
    rs, rz = reference.lp_range_search(w[sub], bits, rows=sub.stop)
    check(bool(np.allclose(s[sub], rs, rtol=1e-6) and np.array_equal(z[sub], rz)),
          f"lp_range {rows}x{cols}: differs from reference.lp_range_search")
    wt = torch.from_numpy(w)
    ts, tz = torch_lp_range_search(wt, bits)
    agree = float(np.mean(np.isclose(s[:, 0], ts.numpy(), rtol=1e-6) & (z[:, 0] == tz.numpy())))
    info = dict(case="lp_range", shape=f"{rows}x{cols} {bits}-bit per-channel", gflop=None, check=agree)
    def scalar():
        _native.set_isa("scalar")
        try:
            _native.lp_range_search(w, bits, rows=rows)
        finally:
            _native.set_isa(None)

    return info, compare({"lowbit": lambda: _native.lp_range_search(w, bits, rows=rows),
                          "torch": lambda: torch_lp_range_search(wt, bits),
                          "lowbit_scalar": scalar}, repeats)


# --- driver --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 5; quick 3)")
    ap.add_argument("--cases", default="gram,cross_gram,conv_gram,lp_range")
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    cpus = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cpus})
    cases = set(args.cases.split(","))
    rng = np.random.default_rng(0)

    jobs = []
    if "gram" in cases:
        jobs += [(case_gram, s) for s in (GRAM_SHAPES_QUICK if args.quick else GRAM_SHAPES)]
    if "cross_gram" in cases:
        jobs += [(case_cross, s) for s in (CROSS_SHAPES_QUICK if args.quick else CROSS_SHAPES)]
    if "conv_gram" in cases:
        jobs += [(case_conv, s) for s in (CONV_CASES_QUICK if args.quick else CONV_CASES)]
    if "lp_range" in cases:
        jobs += [(case_lp, s) for s in (LP_SHAPES_QUICK if args.quick else LP_SHAPES)]

    rows = []
    print(f"lowbit {lowbit.__version__} (isa {_native.active_isa()}), torch {torch.__version__}, "
          f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f}")
    header = (f"{'case':<11} {'shape':<40} {'thr':>3} {'lowbit ms':>10} {'torch ms':>10} "
              f"{'ratio':>6} {'cpu ratio':>9} {'GFLOP/s':>8} {'load':>5}")
    print(header)
    print("-" * len(header))
    for nt in threads:
        _native.set_num_threads(nt)
        torch.set_num_threads(nt)
        for fn, shape in jobs:
            info, t = fn(*shape, repeats, rng)
            load = os.getloadavg()[0]
            (lw, lc, lbest), (tw, tc, _) = t["lowbit"], t["torch"]
            others = [k for k in t if k != "lowbit"]
            row = dict(info, threads=nt, seconds=lw, cpu_seconds=lc, best_seconds=lbest,
                       torch_seconds=tw, torch_cpu_seconds=tc,
                       ratio={k: t[k][0] / lw for k in others}, cpu_ratio={k: t[k][1] / lc for k in others},
                       load=load, noisy=load > nt + 0.5)
            rows.append(row)
            gfs = f"{info['gflop'] / lw:8.1f}" if info["gflop"] else f"{'-':>8}"
            print(f"{info['case']:<11} {info['shape']:<40} {nt:>3} {lw * 1e3:10.1f} {tw * 1e3:10.1f} "
                  f"{tw / lw:6.2f} {tc / lc:9.2f} {gfs} {load:5.1f}"
                  + "".join(f"  vs {k}: {v:.2f}x" for k, v in row["ratio"].items() if k != "torch")
                  + ("  (noisy)" if row["noisy"] else ""))
    _native.set_num_threads(0)

    top = max(threads)

    def geomean(case, key="ratio", vs="torch"):
        r = [row[key][vs] for row in rows if row["case"] == case and row["threads"] == top]
        return math.exp(sum(map(math.log, r)) / len(r)) if r else None

    summary = {
        "gram_ratio_vs_torch": geomean("gram"),
        "gram_ratio_vs_torch_min": min((r["ratio"]["torch"] for r in rows if r["case"] == "gram" and r["threads"] == top), default=None),
        "gram_cpu_ratio_vs_torch": geomean("gram", "cpu_ratio"),
        "cross_gram_ratio_vs_torch": geomean("cross_gram"),
        "conv_gram_ratio_vs_torch": geomean("conv_gram"),
        "lp_range_ratio_vs_torch": geomean("lp_range"),
        "lp_range_ratio_vs_scalar": geomean("lp_range", "ratio", "lowbit_scalar"),
        "threads": top,
        "noisy": any(r["noisy"] for r in rows),
    }
    print("summary: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if args.json:
        machine = dict(isa=_native.active_isa(), threads=threads, torch=torch.__version__,
                       lowbit=lowbit.__version__, cpus=cpus, platform=platform.platform())
        print(json.dumps(dict(benchmark="calibration", machine=machine, rows=rows, summary=summary)))


if __name__ == "__main__":
    main()
