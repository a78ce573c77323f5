"""CLADO acceptance study on fmnist-resnet (issue 5): CLADO vs the diagonal-only search vs uniform bits.

Per seed (the calibration draw): the CLADO terms are measured once (weights {2, 4, 8}, every
pair of the searched layers, A8 in the final models); then for each budget of average weight
bits the IQP is solved with the full G (CLADO) and with its diagonal only (the HAWQ/MPQCO-like
independent search on the same measurements), the chosen bits are applied with nearest
rounding, and held-out Fashion-MNIST test accuracy is measured, next to uniform bits of the same
average. With ``--search N`` (3^N <= 60k) also the exhaustive oracle: every allocation's measured
loss, the best within each budget. Also: the Spearman correlation between the predicted and the measured loss change of
random allocations, for the pairwise and the diagonal model.

    python benchmarks/clado_fmnist.py [--quick] [--seeds 0 1 2] [--search N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import numpy as np
import torch

import lowbit
from lowbit import zoo
from lowbit.config import QuantConfig
from lowbit.methods import clado
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig(QuantConfig):
    num_samples: int = 256
    loss: str = "kl"
    budgets: tuple = (3.0, 4.0, 5.0)
    n_random: int = 60
    seed: int = 0
    search: int = 0
    oracle_limit: int = 60_000


@register_method("clado-study", StudyConfig, "CLADO acceptance study (benchmarks/clado_fmnist.py)")
def study(ctx, cfg: StudyConfig) -> None:
    ccfg = clado.CladoConfig(num_samples=cfg.num_samples, loss=cfg.loss, pairs="all")
    names = clado.searched_layers(ctx, ccfg)
    if cfg.search:  # the `search` largest layers, in execution order; the others stay at 8 bits
        big = sorted(names, key=lambda n: -ctx.fp_layer(n).weight.numel())[: cfg.search]
        ccfg = dataclasses.replace(ccfg, layers=tuple(n for n in names if n in big))
        names = clado.searched_layers(ctx, ccfg)
    t0 = time.perf_counter()
    terms, engine = clado.measure(ctx, ccfg, names)
    t_measure = time.perf_counter() - t0
    evals = engine.count
    try:
        S = len(ccfg.bits)
        G = terms.matrix()
        Gd = np.diag(np.diag(G))
        params = np.array([ctx.fp_layer(n).weight.numel() for n in names], np.float64)

        def pred(M, bits):
            x = np.zeros(G.shape[0])
            x[np.arange(len(names)) * S + [ccfg.bits.index(b) for b in bits]] = 1
            return float(x @ M @ x / 2)

        def true(bits):
            return engine.loss({n: engine.qw[(n, b)] for n, b in zip(names, bits)}) - engine.fp_loss

        out = {"names": names, "params": params.tolist(), "evaluations": evals, "measure_seconds": t_measure,
               "negative_eigen_share": clado.negative_mass(G)[1], "budgets": {}}
        for budget in cfg.budgets:
            A = np.outer(params, np.array(ccfg.bits, np.float64)).reshape(1, -1)
            b = np.array([budget * params.sum()])
            row = {}
            for kind, M in (("clado", G), ("diagonal", Gd)):
                choice, info = clado.solve(M, S, A, b, 60.0, cfg.seed)
                bits = [ccfg.bits[c] for c in choice]
                row[kind] = {"bits": dict(zip(names, bits)), "status": info["status"], "gap": info["gap"],
                             "solver_seconds": info["seconds"], "predicted": pred(G, bits), "measured": true(bits),
                             "avg_bits": float((params * bits).sum() / params.sum())}
            out["budgets"][str(budget)] = row
        if S ** len(names) <= cfg.oracle_limit:
            out["oracle"], losses = oracle(engine, names, params, ccfg.bits, cfg.budgets, ctx.progress)
            for b in out["budgets"].values():  # the depth-first losses agree with the plain ones
                for kind in ("clado", "diagonal"):
                    dl = losses[tuple(b[kind]["bits"][n] for n in names)]
                    assert abs(dl - b[kind]["measured"]) <= 1e-9 + 1e-6 * abs(b[kind]["measured"]), (dl, b[kind])
        rng = np.random.default_rng(cfg.seed)
        rand = []
        for _ in range(cfg.n_random):
            p = rng.dirichlet(np.ones(S))  # allocations of every average, not only the middle
            bits = [ccfg.bits[i] for i in rng.choice(S, len(names), p=p)]
            rand.append({"pred_pairs": pred(G, bits), "pred_diag": pred(Gd, bits), "measured": true(bits)})
        out["random"] = rand
        out["G"] = G.tolist()
        ctx.report.meta["study"] = out
    finally:
        engine.close()


def oracle(engine, names, params, bits, budgets, progress) -> dict:
    """The exhaustive search: every allocation's measured loss change (depth first over the
    layers in call order, each prefix's activations cached, so a layer runs once per prefix);
    per budget the best allocation within it."""
    from tqdm.auto import tqdm

    order = sorted(range(len(names)), key=lambda i: engine.pos[names[i]])
    losses: dict[tuple, float] = {}
    bar = tqdm(total=len(bits) ** len(names), desc="exhaustive oracle", disable=not progress)
    t0 = time.perf_counter()

    def visit(depth: int, weights: dict, chosen: dict, prefix) -> None:
        name = names[order[depth]]
        for b in bits:
            w, c = {**weights, name: engine.qw[(name, b)]}, {**chosen, name: b}
            if depth == len(names) - 1:
                losses[tuple(c[n] for n in names)] = engine.loss(w, prefix=prefix) - engine.fp_loss
                bar.update()
            else:
                visit(depth + 1, w, c, engine.prefix(w, engine.pos[names[order[depth + 1]]], prefix))

    visit(0, {}, {}, None)
    bar.close()
    allocs = list(losses)
    avg = np.array([(params * np.array(a)).sum() / params.sum() for a in allocs])
    best = {}
    for budget in budgets:
        ok = np.flatnonzero(avg <= budget + 1e-9)
        i = int(ok[np.argmin(np.array([losses[allocs[j]] for j in ok]))])
        best[str(budget)] = {"bits": dict(zip(names, allocs[i])), "measured": losses[allocs[i]],
                             "avg_bits": float(avg[i])}
    return {"evaluations": len(allocs), "seconds": time.perf_counter() - t0, "budgets": best}, losses


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 128 samples, 20 random allocations, the quick task (2000 test images)")
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--loss", default="kl", choices=["kl", "ce"])
    ap.add_argument("--search", type=int, default=0,
                    help="search only the N largest layers (the rest at 8 bits); 3^N <= 60k adds the exhaustive oracle")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.num_samples = args.seeds[:1], 128
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    budgets = (3.0, 4.0, 5.0)
    runs = []
    for seed in args.seeds:
        task = zoo.load_task("fmnist-resnet", seed=seed, quick=args.quick)
        fp = task.evaluate(task.model)["metric"]
        q = lowbit.quantize(task.model, task.calib_loader, "clado-study", w_bits=4, a_bits=8, seed=seed,
                            config={"num_samples": args.num_samples, "loss": args.loss, "seed": seed,
                                    "n_random": 20 if args.quick else 60, "search": args.search},
                            **task.quantize_kwargs)
        st = lowbit.report(q).meta["study"]
        log(f"seed {seed}: FP {fp:.2f} %, {len(st['names'])} searched layers, {st['evaluations']} evaluations "
            f"in {st['measure_seconds']:.0f} s, negative eigen share {st['negative_eigen_share']:.3f}")
        rec = {"seed": seed, "fp": fp, "study": st, "acc": {}}  # G kept: re-solve or time the solver later
        for budget in budgets:
            accs = {}
            allocations = {kind: st["budgets"][str(budget)][kind]["bits"] for kind in ("clado", "diagonal")}
            if "oracle" in st:
                allocations["oracle"] = st["oracle"]["budgets"][str(budget)]["bits"]
            if float(budget).is_integer():
                allocations["uniform"] = {n: int(budget) for n in st["names"]}
            for kind, bits in allocations.items():
                m = lowbit.quantize(task.model, task.calib_loader, "nearest", w_bits=8, a_bits=8, seed=seed,
                                    overrides={n: {"w_bits": b} for n, b in bits.items()}, progress=False,
                                    **task.quantize_kwargs)
                accs[kind] = task.evaluate(m)["metric"]
            rec["acc"][str(budget)] = accs
            b = st["budgets"][str(budget)]
            log(f"  avg {budget:.0f} bits: CLADO {accs['clado']:.2f} % (dL pred {b['clado']['predicted']:.4f} "
                f"meas {b['clado']['measured']:.4f}, {b['clado']['status']})   diagonal {accs['diagonal']:.2f} % "
                f"(dL pred {b['diagonal']['predicted']:.4f} meas {b['diagonal']['measured']:.4f})   "
                f"uniform {accs.get('uniform', float('nan')):.2f} %"
                + (f"   oracle {accs['oracle']:.2f} % (dL meas {st['oracle']['budgets'][str(budget)]['measured']:.4f})"
                   if "oracle" in accs else ""))
        r = st["random"]
        rec["spearman_pairs"] = spearman([x["pred_pairs"] for x in r], [x["measured"] for x in r])
        rec["spearman_diag"] = spearman([x["pred_diag"] for x in r], [x["measured"] for x in r])
        log(f"  Spearman(predicted, measured dL) over {len(r)} random allocations: pairwise "
            f"{rec['spearman_pairs']:.3f}, diagonal {rec['spearman_diag']:.3f}")
        runs.append(rec)

    def ms(vals):
        return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {"seeds": args.seeds, "quick_task": args.quick, "num_samples": args.num_samples, "loss": args.loss,
               "layers": len(runs[0]["study"]["names"])}
    for budget in budgets:
        for kind in ("clado", "diagonal", "uniform", "oracle"):
            vals = [r["acc"][str(budget)][kind] for r in runs if kind in r["acc"][str(budget)]]
            if vals:
                summary[f"acc_{kind}_{budget:.0f}"] = [round(v, 3) for v in ms(vals)]
    summary["spearman_pairs"] = [round(v, 3) for v in ms([r["spearman_pairs"] for r in runs])]
    summary["spearman_diag"] = [round(v, 3) for v in ms([r["spearman_diag"] for r in runs])]
    if "oracle" not in runs[0]["study"]:
        summary["exhaustive_oracle"] = f"skipped: 3^{summary['layers']} configurations > 60k (use --search 8..10)"
    else:
        summary["oracle_evaluations"] = runs[0]["study"]["oracle"]["evaluations"]
        summary["oracle_seconds"] = [round(v, 1) for v in ms([r["study"]["oracle"]["seconds"] for r in runs])]
    log(json.dumps(summary))
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs}))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
