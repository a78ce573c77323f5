"""Packed low-bit matrix products against torch on the same machine, in the same run.

    python benchmarks/kernels.py [--quick] [--json] [--threads 2] [--shapes 4096x4096,1024x4096]

Per shape (N outputs x K inputs), bit width and batch M: the median time of lowbit's kernel,
the GB/s of weights it streams, the fraction of the bandwidth roofline (read bandwidth probed
in this run over a buffer as large as the weight pools), and the ratio against torch fp32
``F.linear`` and, where this torch has them (detected, not assumed), torch's dynamic int8
Linear (FBGEMM / x86 engine) and its int4 weight-only CPU op (``_weight_int4pack_mm_for_cpu``).

Cold weights: every timed call uses the next matrix of a pool at least ``--pool-mib`` large
(the same for every contender), so the weights come from DRAM, not from the cache, as in a
model larger than the cache. Times are medians over ``--repeats`` calls. ``lw`` rows run the
weight-only kernel (fp32 activations, exact), ``a8`` rows the int8-activation kernel with a
static per-tensor quantizer (what ``lowbit.pack`` fuses for A8 models). The load average is
printed: on a shared machine with a busy neighbour every figure here is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from lowbit import _native

GROUP = 128  # weights per scale / zero point in the benchmark's packed matrices


def median_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, best) milliseconds of `repeats` calls. The best is for noise diagnosis only: a
    median far above it means the machine was busy."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


class Cycle:
    """Calls fn(item) on the pool's items in turn."""

    def __init__(self, items, fn):
        self.items, self.fn, self.i = items, fn, 0

    def __call__(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return self.fn(item)


def copies(nbytes: int, pool_bytes: int) -> int:
    return max(2, math.ceil(pool_bytes / max(nbytes, 1)))


def probe_bandwidth(pool_bytes: int, repeats: int) -> float:
    """Read bandwidth in GB/s: the best of `repeats` float32 sums over a pool-sized buffer
    (torch's vectorized, multi-threaded reduction; the best run, so fractions are not flattered)."""
    buf = torch.ones(pool_bytes // 4)
    buf.sum()
    best = min(time_once(lambda: buf.sum()) for _ in range(repeats))
    return buf.numel() * 4 / best / 1e9


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def packed_pool(bits: int, N: int, K: int, pool_bytes: int, seed: int = 0):
    rng = np.random.default_rng(seed + bits)
    q = rng.integers(0, 2**bits, size=(N, K), dtype=np.uint8)
    G = K // GROUP
    s = rng.uniform(0.001, 0.01, size=(N, G)).astype(np.float32)
    z = rng.integers(0, 2**bits, size=(N, G)).astype(np.float32)
    p = _native.pack_weights(q, s, z, bits, GROUP)
    nbytes = p.codes.nbytes + p.scales.nbytes + p.zeros.nbytes
    pool = [p] + [p._replace(codes=p.codes.copy(), scales=p.scales.copy(), zeros=p.zeros.copy())
                  for _ in range(copies(nbytes, pool_bytes) - 1)]
    return pool, nbytes


def multipoint_rows(N: int, K: int, xs: dict, args, pool_bytes: int) -> list[dict]:
    """Packed multipoint (issue 8): the N base rows and P = round(rho N) point rows in one
    packed matrix, the product and the segmented sum back to N outputs fused in one native call
    (multipoint_qmatmul, what the packed multipoint layers run), against the single-point
    product of the same N x K matrix at the same bits. The two are timed interleaved, call for
    call; ratio = time / ((1 + rho) x single time)."""
    rows = []
    for bits in args.mp_bits:
        single, nbytes = packed_pool(bits, N, K, pool_bytes)
        for rho in args.mp_overheads:
            P = round(rho * N)
            ext, _ = packed_pool(bits, N + P, K, pool_bytes, seed=1)
            channel = np.random.default_rng(bits).integers(0, N, P).astype(np.int32)
            for M in args.batches:
                x = xs[M].numpy()
                f1 = Cycle(single, lambda p, x=x: _native.qmatmul(p, x))
                f2 = Cycle(ext, lambda p, x=x, c=channel: _native.multipoint_qmatmul(p, x, c))
                for f in (f1, f2, f1, f2):  # warm-up
                    f()
                t1, t2 = [], []
                for _ in range(max(args.repeats, 25)):  # a ratio near 1 of short calls: more pairs
                    t1.append(time_once(f1))
                    t2.append(time_once(f2))
                ms1, ms2 = statistics.median(t1) * 1e3, statistics.median(t2) * 1e3
                rows.append(dict(shape=f"{N}x{K}", kind="mp", bits=bits, M=M, ms=ms2, best_ms=min(t2) * 1e3,
                                 weight_gbs=None, roofline=None, vs_fp32=None, vs_int8dyn=None, vs_int4wo=None,
                                 overhead=rho, points=P, single_ms=ms1,
                                 multipoint_time_ratio=ms2 / ((1 + rho) * ms1),
                                 name=f"multipoint W{bits} +{round(100 * rho)}% rows"))
            del ext
        del single
    return rows


def torch_int4_available() -> bool:
    if not (hasattr(torch, "_convert_weight_to_int4pack_for_cpu") and hasattr(torch, "_weight_int4pack_mm_for_cpu")):
        return False
    try:
        w = torch._convert_weight_to_int4pack_for_cpu(torch.zeros(64, 128, dtype=torch.int32), 2)
        torch._weight_int4pack_mm_for_cpu(torch.zeros(1, 128), w, 128, torch.zeros(1, 64, 2))
        return True
    except (RuntimeError, TypeError):
        return False


def torch_dynamic_int8(K: int, N: int):
    """A torch dynamic-quantized int8 Linear, or None where this torch has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            lin = torch.nn.Sequential(torch.nn.Linear(K, N, bias=False))
            return quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
    except (ImportError, RuntimeError, AttributeError):
        return None


def run(args) -> dict:
    threads = args.threads
    torch.set_num_threads(threads)
    _native.set_num_threads(threads)
    pool_bytes = args.pool_mib << 20
    bw = probe_bandwidth(pool_bytes, 5)
    have_int4 = torch_int4_available()
    have_int8 = torch_dynamic_int8(64, 64) is not None
    env = {
        "threads": threads, "isa": _native.active_isa(), "torch": torch.__version__, "cpu": platform.processor(),
        "bandwidth_gbs": round(bw, 2), "pool_mib": args.pool_mib, "repeats": args.repeats, "group_size": GROUP,
        "load_avg_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "torch_int4_weight_only": have_int4, "torch_dynamic_int8": have_int8,
    }
    rows = []
    for shape in args.shapes:
        N, K = shape
        gen = torch.Generator().manual_seed(0)
        if getattr(args, "multipoint_only", False):
            xs = {M: torch.randn(M, K, generator=gen) for M in args.batches}
            rows += multipoint_rows(N, K, xs, args, pool_bytes)
            continue
        W = torch.randn(N, K, generator=gen) * 0.02
        fp_pool = [W] + [W.clone() for _ in range(copies(W.numel() * 4, pool_bytes) - 1)]
        xs = {M: torch.randn(M, K, generator=gen) for M in sorted(set(args.batches) | set(args.a8_batches))}
        base = {}
        for M, x in xs.items():
            base["fp32", M] = median_ms(Cycle(fp_pool, lambda w, x=x: F.linear(x, w)), args.repeats)
        del fp_pool
        if have_int8:
            qs = [torch_dynamic_int8(K, N) for _ in range(copies(N * K, pool_bytes))]
            for M, x in xs.items():
                base["int8dyn", M] = median_ms(Cycle(qs, lambda m, x=x: m(x)), args.repeats)
            del qs
        if have_int4 and 4 in args.bits:
            wq = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=gen)
            w4 = torch._convert_weight_to_int4pack_for_cpu(wq, 2)
            sz = torch.zeros(K // GROUP, N, 2)
            sz[..., 0] = 0.005
            w4s = [w4] + [w4.clone() for _ in range(copies(w4.numel(), pool_bytes) - 1)]
            for M in args.batches:
                x = xs[M]
                base["int4wo", M] = median_ms(Cycle(w4s, lambda w, x=x, sz=sz: torch._weight_int4pack_mm_for_cpu(x, w, GROUP, sz)),
                                              args.repeats)
            del w4s
        best = {k: v[1] for k, v in base.items()}
        base = {k: v[0] for k, v in base.items()}
        for M in sorted(xs):
            rows.append(dict(shape=f"{N}x{K}", kind="torch", bits=32, M=M, ms=base["fp32", M], best_ms=best["fp32", M],
                             weight_gbs=N * K * 4 / base["fp32", M] / 1e6, roofline=None, vs_fp32=1.0,
                             vs_int8dyn=None, vs_int4wo=None, name="torch fp32 F.linear"))
        for bits in args.bits:
            pool, nbytes = packed_pool(bits, N, K, pool_bytes)
            plan = [("lw", M) for M in args.batches]
            if bits in args.a8_bits:
                plan += [("a8", M) for M in args.a8_batches]
            for kind, M in plan:
                x = xs[M].numpy()
                if kind == "lw":
                    fn = Cycle(pool, lambda p, x=x: _native.qmatmul(p, x))
                else:
                    rs = _native.packed_row_sums(pool[0])
                    fn = Cycle(pool, lambda p, x=x, rs=rs: _native.qmatmul_a8(p, x, (0.05, 128.0, 8), None, rs))
                ms, best_ms = median_ms(fn, args.repeats)
                moved = nbytes + x.nbytes + M * N * 4
                rows.append(dict(
                    shape=f"{N}x{K}", kind=kind, bits=bits, M=M, ms=ms, best_ms=best_ms, weight_gbs=nbytes / ms / 1e6,
                    roofline=moved / (ms / 1e3) / (bw * 1e9), vs_fp32=base["fp32", M] / ms,
                    vs_int8dyn=base["int8dyn", M] / ms if ("int8dyn", M) in base else None,
                    vs_int4wo=base["int4wo", M] / ms if bits == 4 and ("int4wo", M) in base else None,
                    name=f"lowbit W{bits}{'' if kind == 'lw' else 'A8'} g{GROUP}"))
            del pool
        rows += multipoint_rows(N, K, xs, args, pool_bytes)
        for key, ms in base.items():
            if key[0] != "fp32":
                rows.append(dict(shape=f"{N}x{K}", kind="torch", bits=8 if key[0] == "int8dyn" else 4, M=key[1],
                                 ms=ms, best_ms=best[key], weight_gbs=None, roofline=None, vs_fp32=base["fp32", key[1]] / ms,
                                 vs_int8dyn=None, vs_int4wo=None,
                                 name="torch dynamic int8 Linear" if key[0] == "int8dyn" else "torch int4 wo g128"))
    env["load_avg_end"] = round(os.getloadavg()[0], 2)
    return {"env": env, "rows": rows, "summary": summary(rows, args)}


def summary(rows, args) -> dict:
    def find(kind, bits, M, shape="4096x4096"):
        return next((r for r in rows if r["shape"] == shape and r["kind"] == kind and r["bits"] == bits
                     and r["M"] == M), None)

    def val(r, key):
        return None if r is None or r[key] is None else round(r[key], 3)

    w4m1, w4m8 = find("lw", 4, 1), find("lw", 4, 8)
    s = {
        "roofline_w4_m1": val(w4m1, "roofline"),
        "ratio_fp32_w4_m1": val(w4m1, "vs_fp32"),
        "ratio_fp32_w3_m1": val(find("lw", 3, 1), "vs_fp32"),
        "ratio_fp32_w2_m1": val(find("lw", 2, 1), "vs_fp32"),
        "m8_over_m1_w4": round(w4m8["ms"] / w4m1["ms"], 3) if w4m1 and w4m8 else None,
        "ratio_fp32_w4a8_m128": val(find("a8", 4, 128), "vs_fp32"),
        # The weight-only kernel is fp32-FMA-bound from a few rows on (2*M*N*K flops): batch 8
        # at 2x the batch-1 time needs the FMA peak; the int8 kernel has 4x the MACs per cycle.
        "m8_over_m1_w4a8": round(find("a8", 4, 8)["ms"] / find("a8", 4, 1)["ms"], 3)
        if find("a8", 4, 8) and find("a8", 4, 1) else None,
    }
    mp = [r for r in rows if r["kind"] == "mp"]
    if mp:
        # time / ((1 + overhead) x single-point time), worst over shapes, bits, overheads, M
        s["multipoint_time_ratio"] = round(max(r["multipoint_time_ratio"] for r in mp), 3)
        s["multipoint_time_ratio_by_case"] = {
            f"{r['shape']} W{r['bits']} +{round(100 * r['overhead'])}% M{r['M']}": round(r["multipoint_time_ratio"], 3)
            for r in mp}
    targets = {"roofline_w4_m1": 0.75, "ratio_fp32_w4_m1": 5.0, "ratio_fp32_w2_m1": 8.0,
               "m8_over_m1_w4": 2.0, "ratio_fp32_w4a8_m128": 1.5, "multipoint_time_ratio": 1.05}
    upper = ("m8_over_m1_w4", "multipoint_time_ratio")
    s["targets_met"] = {k: (None if s.get(k) is None else (s[k] <= t if k in upper else s[k] >= t))
                        for k, t in targets.items()}
    return s


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(res) -> None:
    e = res["env"]
    print(f"# lowbit kernels: {e['threads']} threads, isa {e['isa']}, torch {e['torch']}, group {e['group_size']}, "
          f"cold pool {e['pool_mib']} MiB, read bandwidth {e['bandwidth_gbs']} GB/s, median of {e['repeats']}, "
          f"load avg {e['load_avg_start']} -> {e['load_avg_end']} on {e['cpus']} cpus")
    if max(e["load_avg_start"], e["load_avg_end"]) > e["cpus"]:
        print("# WARNING: the machine is oversubscribed (load > cpus): absolute times and ratios are noisy")
    hdr = f"{'shape':>10} {'what':<27} {'M':>4} {'ms':>9} {'best ms':>9} {'GB/s w':>7} {'roof':>5} {'x fp32':>7} {'x int8dyn':>9} {'x int4wo':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in res["rows"]:
        print(f"{r['shape']:>10} {r['name']:<27} {r['M']:>4} {r['ms']:>9.3f} {r['best_ms']:>9.3f} "
              f"{fmt(r['weight_gbs'], '7.1f')} "
              f"{fmt(r['roofline'], '5.2f')} {fmt(r['vs_fp32'], '7.2f')} {fmt(r['vs_int8dyn'], '9.2f')} "
              f"{fmt(r['vs_int4wo'], '8.2f')}"
              + (f"   single {r['single_ms']:.3f} ms, x((1+rho) single) {r['multipoint_time_ratio']:.3f}"
                 if r["kind"] == "mp" else ""))
    print("summary:", json.dumps(res["summary"]))


def parse_shapes(s: str):
    out = []
    for part in s.split(","):
        n, k = part.lower().split("x")
        n, k = int(n), int(k)
        if k % GROUP:
            raise SystemExit(f"shape {part}: K must be a multiple of {GROUP}")
        out.append((n, k))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a smaller cold pool (a minute or so)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", type=parse_shapes, default=None, help="NxK,... (default 4096x4096,1024x4096)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--pool-mib", type=int, default=None)
    ap.add_argument("--multipoint-only", action="store_true", help="only the packed multipoint rows")
    args = ap.parse_args(argv)
    args.shapes = args.shapes or [(4096, 4096), (1024, 4096)]
    args.repeats = args.repeats or (9 if args.quick else 31)
    args.pool_mib = args.pool_mib or (256 if args.quick else 1024)
    args.bits = [2, 3, 4, 8]
    args.batches = [1, 8, 64]
    args.a8_bits = [4, 8]
    args.a8_batches = [1, 8, 64, 128]
    args.mp_bits = [2, 3]
    args.mp_overheads = [0.05, 0.10]
    res = run(args)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
