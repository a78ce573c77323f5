"""Threshold activation quantizers: C++ kernels against their comparators, same process.

Rows:
- ``requant``: the inference form, per-channel multi-threshold compare (``threshold_quantize``)
  vs the plain uniform rounding step (``quantize``) on the same activation; the issue's target is
  a ratio <= 1.5.
- ``border_fwd_bwd`` / ``ltq_fwd_bwd``: one training step's forward + backward, C++ autograd
  Function vs the PyTorch reference autograd (reference.py).

Every row is checked against its reference before it is timed. Usage:
``python benchmarks/threshold.py [--quick] [--json] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import lowbit
from lowbit import _native, reference
from lowbit.threshold import BorderActQuantizer, LTQActQuantizer


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, timed in alternation so drift hits all alike."""
    for f in fns.values():
        f()
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def _requant_fns(x, t, sc, z, bits):
    return {"threshold": lambda: _native.threshold_quantize(x, t, bits),
            "uniform": lambda: _native.quantize(x, sc, z, bits)}


def _train_fns(q, x, gy, bits):
    """(C++ module step, PyTorch reference step), each returning the input gradient."""
    shape = x.shape
    rows = shape[0] * shape[1]

    def cpp():
        xt = x.clone().requires_grad_(True)
        q.zero_grad()
        q(xt).backward(gy)
        return xt.grad

    def ref():
        xt = x.clone().reshape(rows, -1).requires_grad_(True)
        if isinstance(q, BorderActQuantizer):
            p = q.border_param.detach().clone().requires_grad_(True)
            s = q.scale.detach().clone().requires_grad_(True)
            B = reference.border_table_torch(p, bits, affine=q.affine, eps=q.eps)
            y = reference.border_quant_torch(xt, B, s, bits, zero=0.0, tau=q.tau, hard=False)
        else:
            st, a = (t.detach().clone().requires_grad_(True) for t in q.offset_and_intervals())
            s1, s2 = (t.detach().clone().requires_grad_(True) for t in (q.in_scale, q.scale))
            y = reference.ltq_torch(xt, st, a, s1, s2, bits, zero=0.0, a_min=q.a_min, s1_min=q.s1_min)
        y.backward(gy.reshape(rows, -1))
        return xt.grad.reshape(shape)

    return cpp, ref


def requant_rows(shape, bits_list, repeats):
    N, C, H, W = shape
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((N * C, H * W)), 0).astype(np.float32)
    rows = []
    for bits in bits_list:
        n = 2**bits - 1
        s = np.float32(3.0 / n)
        B = np.clip(0.5 + rng.normal(0, 0.1, (C, n)), 0.05, 0.95).astype(np.float32)
        t = (s * (np.arange(n, dtype=np.float32) + B)).astype(np.float32)
        sub = x[: 4 * C]
        assert np.array_equal(_native.threshold_quantize(sub, t, bits), reference.threshold_quantize(sub, t, bits))
        sc, z = np.full((1, 1), s, np.float32), np.zeros((1, 1), np.float32)
        sec = interleaved(_requant_fns(x, t, sc, z, bits), repeats)
        rows.append({"case": "requant", "bits": bits, "shape": list(shape), "seconds": sec["threshold"],
                     "ratio": {"uniform_round": sec["threshold"] / sec["uniform"]},
                     "uniform_seconds": sec["uniform"]})
    return rows


def train_rows(shape, bits_list, repeats):
    N, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(shape, generator=g))
    rows = []
    for bits in bits_list:
        uq = lowbit.quantizers.act_quantizer_from_samples(x.reshape(-1)[:20000], bits, 0.0)
        for name, cls in (("border_fwd_bwd", BorderActQuantizer), ("ltq_fwd_bwd", LTQActQuantizer)):
            q = cls.from_uniform(uq, channels=C)
            q.lsq_grad_scale = False
            gy = torch.randn(shape, generator=g)

            cpp, ref = _train_fns(q, x, gy, bits)
            torch.testing.assert_close(cpp(), ref(), rtol=0, atol=1e-5)
            sec = interleaved({"cpp": cpp, "torch": ref}, repeats)
            rows.append({"case": name, "bits": bits, "shape": list(shape), "seconds": sec["cpp"],
                         "ratio": {"torch_reference": sec["cpp"] / sec["torch"]},
                         "torch_seconds": sec["torch"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        _native.set_num_threads(args.threads)
    shape = (8, 64, 16, 16) if args.quick else (32, 64, 28, 28)
    repeats = 5 if args.quick else 15
    rows = requant_rows(shape, [2, 4, 8], repeats)
    rows += train_rows(shape, [2, 4] if args.quick else [2, 4, 8], max(3, repeats // 3))
    print(f"{'case':16s} {'bits':>4s} {'seconds':>10s}  ratio")
    for r in rows:
        (k, v), = r["ratio"].items()
        print(f"{r['case']:16s} {r['bits']:4d} {r['seconds']:10.5f}  {v:.3f} x {k}")
    req = [r["ratio"]["uniform_round"] for r in rows if r["case"] == "requant"]
    summary = {"requant_ratio_max": max(req),
               "requant_ratio_2bit": next(r["ratio"]["uniform_round"] for r in rows if r["case"] == "requant" and r["bits"] == 2)}
    print("summary:", summary)
    if args.json:
        machine = {"isa": _native.active_isa(), "threads": _native.get_num_threads(),
                   "torch": torch.__version__, "lowbit": getattr(lowbit, "__version__", "")}
        print(json.dumps({"benchmark": "threshold", "machine": machine, "rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
