"""CLADO's IQP: lowbit's exact solver on synthetic CLADO-like instances (performance.md G16).

Instances: G = E E^T + diag (rank-4 errors per (layer, bits), per-layer loss scales spanning two
decades, errors falling 4x per bit as in measured CLADO matrices), within-layer off-diagonals
zero (CLADO's layout), one size row (params x bits, params log-uniform in 1e3..1e6), budgets at
25/50/75 % between the smallest and largest model. Comparators in the same run: brute force
(12 x 3) and scipy's MILP (HiGHS) on the aggregated linearization (20 x 3).

    python benchmarks/iqp.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import numpy as np

from lowbit import _native

BUDGETS = (0.25, 0.5, 0.75)


def clado_like(rng: np.random.Generator, L: int, S: int, budget: float, rank: int = 4):
    bits = np.sort(np.array([2, 4, 8, 3, 6][:S]))
    sigma = 10 ** rng.uniform(-1, 1, L)
    V = rng.standard_normal((L, rank))
    E = np.zeros((L * S, rank))
    for layer in range(L):
        for s in range(S):
            e = V[layer] + 0.5 * rng.standard_normal(rank)
            E[layer * S + s] = sigma[layer] * 2.0 ** (-(bits[s] - 2)) * e / np.sqrt(rank)
    G = E @ E.T
    G += np.diag(rng.uniform(0, 0.5, L * S) * np.diag(G))
    lay = np.repeat(np.arange(L), S)
    G[(lay[:, None] == lay[None, :]) & ~np.eye(L * S, dtype=bool)] = 0
    params = np.round(10 ** rng.uniform(3, 6, L))
    A = (params[:, None] * bits[None, :]).reshape(1, -1)
    lo, hi = params.sum() * bits.min(), params.sum() * bits.max()
    return G.astype(np.float32), np.full(L, S, np.int32), A, np.array([lo + budget * (hi - lo)])


def highs(G, sizes, A, b, time_limit):
    """scipy.optimize.milp on the aggregated linearization: y_{ls,mt} with sum_t y = x_ls."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    Gs = (G.astype(np.float64) + G.T.astype(np.float64)) / 2
    starts = np.concatenate([[0], np.cumsum(sizes)])
    L, n = len(sizes), int(starts[-1])
    cost = list(np.diag(Gs))
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    for layer in range(L):
        for i in range(starts[layer], starts[layer + 1]):
            rows.append(r)
            cols.append(i)
            vals.append(1.0)
        lo.append(1)
        hi.append(1)
        r += 1
    col = n
    for a, c in itertools.combinations(range(L), 2):
        ids = {}
        for s in range(sizes[a]):
            for t in range(sizes[c]):
                ids[s, t] = col
                cost.append(2 * Gs[starts[a] + s, starts[c] + t])
                col += 1
        for s in range(sizes[a]):
            rows += [r] * (sizes[c] + 1)
            cols += [ids[s, t] for t in range(sizes[c])] + [starts[a] + s]
            vals += [1.0] * sizes[c] + [-1.0]
            lo.append(0)
            hi.append(0)
            r += 1
        for t in range(sizes[c]):
            rows += [r] * (sizes[a] + 1)
            cols += [ids[s, t] for s in range(sizes[a])] + [starts[c] + t]
            vals += [1.0] * sizes[a] + [-1.0]
            lo.append(0)
            hi.append(0)
            r += 1
    for k in range(A.shape[0]):
        for i in range(n):
            rows.append(r)
            cols.append(i)
            vals.append(float(A[k, i]))
        lo.append(-np.inf)
        hi.append(float(b[k]) * (1 + 1e-9))
        r += 1
    M = coo_matrix((vals, (rows, cols)), shape=(r, col)).tocsr()
    integrality = np.zeros(col)
    integrality[:n] = 1
    t0 = time.perf_counter()
    res = milp(np.array(cost), constraints=LinearConstraint(M, lo, hi), integrality=integrality,
               bounds=Bounds(0, 1), options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    return time.perf_counter() - t0, (float(res.fun) if res.x is not None else float("inf")), res.status


def timed(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one instance per size and budget, fewer repeats")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    reps = 3 if args.quick else 7
    _native.set_num_threads(1)
    load0 = os.getloadavg()[0]
    rec: dict = {"threads": 1, "loadavg_start": load0, "quick": args.quick, "rows": []}
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    # 12 x 3: identical optimum to brute force.
    match = True
    for seed, bud in itertools.product(seeds, BUDGETS):
        inst = clado_like(np.random.default_rng(100 + seed), 12, 3, bud)
        _, ours = _native.solve_iqp(*inst, time_limit=60)
        _, bf = _native.solve_iqp_bruteforce(*inst)
        ok = ours["status"] == "optimal" and abs(ours["objective"] - bf["objective"]) <= 1e-7 * max(1.0, abs(bf["objective"]))
        match &= ok
        log(f"12x3  budget {bud:.2f}  seed {seed}: ours {ours['objective']:.6g}  brute force {bf['objective']:.6g}  {'ok' if ok else 'MISMATCH'}")

    # 20 x 3: proven optimal, time; HiGHS on the same instance.
    t20, ratios = [], []
    for seed, bud in itertools.product(seeds, BUDGETS):
        inst = clado_like(np.random.default_rng(200 + seed), 20, 3, bud)
        med, mn, (_, info) = timed(lambda inst=inst: _native.solve_iqp(*inst, time_limit=60, gap_tol=1e-6), reps)
        th, hobj, hstatus = highs(*inst, time_limit=30 if args.quick else 120)
        same = abs(hobj - info["objective"]) <= 1e-6 * max(1.0, abs(hobj))
        t20.append(med)
        if hstatus == 0 and same:
            ratios.append(th / med)
        row = {"size": "20x3", "budget": bud, "seed": seed, "median_s": med, "min_s": mn, "status": info["status"],
               "gap": info["gap"], "nodes": info["nodes"], "root_bound": info["root_bound"],
               "objective": info["objective"], "highs_s": th, "highs_status": int(hstatus), "highs_same_optimum": same}
        rec["rows"].append(row)
        log(f"20x3  budget {bud:.2f}  seed {seed}: {info['status']:<10} {med * 1e3:8.1f} ms (min {mn * 1e3:.1f})  "
            f"nodes {info['nodes']:6d}   HiGHS {th:7.2f} s status {hstatus} same optimum {same}")

    # 50 x 4: to gap <= 1e-4 within 2 s.
    s50, g50 = [], []
    for seed, bud in itertools.product(seeds, BUDGETS):
        inst = clado_like(np.random.default_rng(500 + seed), 50, 4, bud)
        med, mn, (_, info) = timed(lambda inst=inst: _native.solve_iqp(*inst, time_limit=2.0, gap_tol=1e-4), max(1, reps // 3))
        s50.append(med)
        g50.append(info["gap"])
        rec["rows"].append({"size": "50x4", "budget": bud, "seed": seed, "median_s": med, "status": info["status"],
                            "gap": info["gap"], "nodes": info["nodes"], "objective": info["objective"]})
        log(f"50x4  budget {bud:.2f}  seed {seed}: {info['status']:<10} {med:6.2f} s  gap {info['gap']:.2e}  nodes {info['nodes']}")

    # 100 x 4: the 1 s incumbent against the best known (a 10x longer run).
    q100, t100 = [], []
    for seed, bud in itertools.product(seeds, BUDGETS):
        inst = clado_like(np.random.default_rng(1000 + seed), 100, 4, bud)
        med, mn, (_, info) = timed(lambda inst=inst: _native.solve_iqp(*inst, time_limit=1.0), 1)
        _, long = _native.solve_iqp(*inst, time_limit=10.0 if not args.quick else 5.0, seed=1)
        best = min(info["objective"], long["objective"])
        rel = (info["objective"] - best) / max(abs(best), 1e-12)
        q100.append(rel)
        t100.append(med)
        rec["rows"].append({"size": "100x4", "budget": bud, "seed": seed, "median_s": med, "status": info["status"],
                            "gap": info["gap"], "objective": info["objective"], "best_known": best,
                            "rel_to_best": rel})
        log(f"100x4 budget {bud:.2f}  seed {seed}: {info['status']:<10} {med:6.2f} s  gap {info['gap']:.2e}  "
            f"vs best known {rel:.2e}")

    rec["loadavg_end"] = os.getloadavg()[0]
    rec["summary"] = {
        "ms_20x3": round(1e3 * statistics.median(t20), 2),
        "ms_20x3_max": round(1e3 * max(t20), 2),
        "s_50x4": round(statistics.median(s50), 3),
        "gap_50x4": float(max(g50)),
        "ms_100x4": round(1e3 * statistics.median(t100), 1),
        "rel_100x4_max": float(max(q100)),
        "ratio_vs_highs": round(statistics.median(ratios), 2) if ratios else None,
        "all_match_bruteforce": bool(match),
    }
    log(json.dumps(rec["summary"]))
    if args.json:
        print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
