"""Every method's accuracy on the bundled models, measured by the benchmark scripts themselves;
rewrites docs/results.md, the README's headline block and the plots under docs/results/.

    python benchmarks/accuracy.py [--quick] [--only SECTION ...] [--threads N] [--render-only] [--json]

Each section runs its benchmark scripts (or ``python -m lowbit eval``) as subprocesses, reads the
JSON they print, and stores the exact commands, their wall seconds and load averages, the date,
commit, torch version and machine, and its tables in ``docs/results/<quick|full>/<section>.json``.
Rendering reads those files only: ``--render-only`` rebuilds the pages without running anything,
and sections measured at different times combine. Per section the page shows the full run where
one is stored, else the quick one, and says which. ``--quick`` passes the scripts their small
settings (one seed where a run is long, fewer iterations and samples, the quick task) so that
the whole run fits in 20 minutes on 2 cores; the full settings are those of the figures quoted in
the method pages. Subprocesses run with one thread (OMP_NUM_THREADS=1, or --threads N), except the
kernel timings, which use the script's 2. lowbit's C++ kernels give the same result at any thread
count; torch's float passes (calibration, evaluation) can differ in their last bits with it, which
now and then moves a score by a sample (mobilenet_v2's probe, a logistic regression fitted on FP
features, most of all), so each command is stored with its thread count.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MODES = ("full", "quick")  # the order of preference when both are stored

# --- running ------------------------------------------------------------------------------------


def last_json(text: str) -> Any:
    """The JSON object a script printed last (one line, or indented over several)."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object in the output")


def stat(values: list[float]) -> dict | None:
    """A table cell: mean, sample standard deviation and count of per-seed values (None, shown
    as "-", for none)."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def stat_of(pair: list[float] | tuple[float, float], n: int) -> dict:
    """A cell from a script's own (mean, std) over n seeds."""
    return {"mean": pair[0], "std": pair[1], "n": n}


def child_cpu_seconds() -> float:
    """CPU seconds (user + system) of the finished subprocesses: a run's cost on an idle machine,
    where the wall time depends on what else runs."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Section:
    """One section's run: its commands (each recorded as it runs) and the tables, headline
    figures and plot points built from their output."""

    def __init__(self, name: str, quick: bool, threads: int = 1):
        self.name, self.quick, self.threads = name, quick, threads
        self.tables: list[dict] = []
        self.headline: list[dict] = []
        self.points: list[dict] = []
        self.extra: dict = {}
        self._runs: list[dict] = []

    def run(self, args: list[str], all_threads: bool = False, keep: Callable[[Any], Any] | None = None) -> Any:
        """Runs ``python ARGS`` in the repository root on the section's threads (all the machine's
        with ``all_threads``) and returns the JSON it printed last; ``keep`` trims what of it is
        stored with the run (the whole of it by default)."""
        env = dict(os.environ)
        prefix = ""
        threads = None if all_threads else self.threads
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
            prefix = f"OMP_NUM_THREADS={threads} "
        command = prefix + "python " + shlex.join(args)
        print(f"[{self.name}] {command}", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        cpu0 = child_cpu_seconds()
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True)
        seconds = time.perf_counter() - t0
        result = last_json(out.stdout)
        self._runs.append({"command": command, "seconds": round(seconds, 1), "load_avg": round(load, 2),
                           "cpu_seconds": round(child_cpu_seconds() - cpu0, 1), "weights": trained_weights(),
                           "output": keep(result) if keep else result})
        return result

    def table(self, title: str, settings: str, columns: list[str], rows: list[list], note: str = "") -> None:
        """A table of the commands run since the previous one."""
        self.tables.append({"title": title, "settings": settings, "columns": columns, "rows": rows, "note": note,
                            "runs": self._runs})
        self._runs = []

    def head(self, method: str, label: str, value: dict | float) -> None:
        """A figure for the README's methods table."""
        self.headline.append({"method": method, "label": label, "value": value})

    def point(self, panel: str, series: str, bits: float, accuracy: dict) -> None:
        """A point of the accuracy-vs-bits plot; panel "weights" (A8 or float activations) or
        "both" (weights and activations at the same bits)."""
        self.points.append({"panel": panel, "series": series, "bits": bits, "accuracy": accuracy})


def eval_args(model: str, method: str, w: int, a: int | None, seed: int, quick: bool, options: dict | None = None,
              avg_bits: float | None = None, embedding_bits: int | None = None) -> list[str]:
    args = ["-m", "lowbit", "eval", "--model", model, "--method", method, "--w-bits", str(w), "--a-bits",
            str(a or 32), "--seed", str(seed)]
    if avg_bits is not None:
        args += ["--avg-bits", str(avg_bits)]
    if embedding_bits is not None:
        args += ["--embedding-bits", str(embedding_bits)]
    if options:
        args += ["--options", json.dumps(options)]
    return args + (["--quick"] if quick else []) + ["--json"]


def seeds_text(seeds: list) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def wa(w: int, a: int | None) -> str:
    return f"W{w}A{a or 32}"


def fmnist_test_set(quick_task: bool) -> str:
    return "quick task's 2000 test images" if quick_task else "full test set (10000 images)"


# --- sections -----------------------------------------------------------------------------------
# Each takes its Section and whether to use the quick settings, runs the scripts, and fills in
# tables, headline figures and plot points from their output.


def sec_nearest(s: Section, quick: bool) -> None:
    seeds = [0] if quick else [0, 1, 2]
    rows, fp = [], None
    for w, a in ((8, 8), (4, 8), (3, None), (2, None)):
        recs = [s.run(eval_args("fmnist-resnet", "nearest", w, a, seed, quick), keep=drop("bits_per_layer"))
                for seed in seeds]
        fp = recs[0]["fp_metric"]
        acc = stat([r["metric"] for r in recs])
        rows.append([wa(w, a), acc, stat([r["agreement"] for r in recs]), recs[0]["effective_bits"],
                     recs[0]["size_bytes"], stat([r["seconds"] for r in recs])])
        if (w, a) != (8, 8):
            s.head("nearest", wa(w, a), acc)
        s.point("weights", "nearest", w, acc)
    rows.insert(0, ["FP32", fp, 100.0, 32, recs[0]["fp_size_bytes"], None])
    s.extra["fp"] = fp
    s.table("fmnist-resnet", f"{fmnist_test_set(quick)}, {seeds_text(seeds)} (the seed picks the activation "
            "calibration images; weight-only rounding does not depend on it)",
            ["setting", "accuracy %", "agreement with FP %", "effective bits", "weight bytes", "quantization s"], rows,
            "Effective bits: code bits per quantized weight, the 8-bit first conv and last linear included. "
            "Weight bytes: codes at their width, an fp16 scale and zero point per channel, float biases.")


def sec_adaround(s: Section, quick: bool) -> None:
    # --quick: one seed, 256 calibration images, the quick task
    common = ["--quick"] if quick else ["--seeds", "0", "1", "2"]
    runs = (("layer", ["W3A32", "W2A32"], 500 if quick else 2000, [] if quick else ["--num-calib", "1024"],
             "AdaRound (layer-wise)"),
            ("block", ["W4A4:block", "W2A4:block"], 50 if quick else 200, [] if quick else ["--num-calib", "256"],
             "AdaRound block + QDrop"))
    for mode, settings, iters, calib, label in runs:
        out = s.run(["benchmarks/adaround_fmnist.py", *common, "--settings", *settings, "--iters", str(iters), *calib,
                     "--json"])
        rows = []
        for r in out["rows"]:
            n = len(r["seeds"])
            setting = r["setting"].split(":")[0]
            ada = stat_of(r["adaround"], n)
            rows.append([setting, stat_of(r["nearest"], n), ada, stat_of(r["seconds"], n)])
            if setting in ("W2A32", "W2A4"):
                s.head("adaround", setting + (" block" if mode == "block" else ""), ada)
            if mode == "layer":
                s.point("weights", "adaround (layer)", int(setting[1]), ada)
        s.table(label, f"fmnist-resnet, {fmnist_test_set(out['quick_task'])} (FP {out['fp']:.2f} %), {out['iters']} "
                f"iterations per {mode}, {out['num_calib']} calibration images, {seeds_text(out['rows'][0]['seeds'])}",
                ["setting", "nearest %", f"{label} %", "AdaRound s per run"], rows)


def sec_multipoint(s: Section, quick: bool) -> None:
    # --quick: the quick task; in quick mode per-channel grids and 10 % rows only
    seeds = ["0"] if quick else ["0", "1", "2"]
    small = ["--quick", "--granularity", "channel", "--overhead", "0.1"] if quick else []
    out = s.run(["benchmarks/multipoint_accuracy.py", *small, "--seeds", *seeds, "--threads", "1", "--json"])
    cells = {(t["w_bits"], t["granularity"], t["overhead"], t["method"]): t for t in out["summary"]["table"]}
    variants = ("multipoint", "random", "+1 bit", "+1 bit eq")
    rows = []
    for (w, g, rho, m), t in cells.items():
        if m != "multipoint":
            continue
        near = cells[(w, g, 0.0, "nearest")]
        acc = {v: {"mean": cells[(w, g, rho, v)]["accuracy"], "std": cells[(w, g, rho, v)]["accuracy_std"],
                   "n": t["seeds"]} for v in variants}
        rows.append([f"W{w} {g}", f"{100 * rho:.0f} %", near["accuracy"], *acc.values(), t["effective_bits"],
                     t["size_bytes"]])
        if g == "channel" and rho == 0.10:
            if w == 2:
                s.head("multipoint", "W2A32 per-channel + 10 % rows", acc["multipoint"])
                s.head("multipoint", "nearest", near["accuracy"])
            s.point("weights", "multipoint (+10 % rows)", t["effective_bits"], acc["multipoint"])
    s.table("fmnist-resnet, weights only", f"{fmnist_test_set(quick)} (FP {out['rows'][0]['fp_metric']:.2f} %), "
            f"{seeds_text(seeds)}",
            ["W, grid", "extra rows", "nearest %", "multipoint %", "random channels %", "+1 bit (same channels) %",
             "+1 bit eq (equal extra bytes) %", "multipoint effective bits", "multipoint weight bytes"], rows,
            "random: the same number of points on random channels; +1 bit: the chosen channels at b+1 bits; "
            "+1 bit eq: as many channels at b+1 bits as the points' extra code bits buy. Effective bits: code "
            "bits per weight over the layers multipoint touches.")


def sec_clado(s: Section, quick: bool) -> None:
    def keep(out: dict) -> dict:  # the measured G matrices stay out of the stored record
        return {"summary": out["summary"], "runs": [{**r, "study": drop("G", "random")(r["study"])}
                                                    for r in out["runs"]]}

    # --quick: one seed, 128 samples, 20 random allocations, the quick task. Full: the 8 largest
    # layers searched, so the exhaustive oracle (3^8 allocations) runs beside CLADO (issue 5).
    args = ["--quick"] if quick else ["--seeds", "0", "1", "2", "--num-samples", "128", "--search", "8"]
    out = s.run(["benchmarks/clado_fmnist.py", *args, "--json"], keep=keep)
    sm = out["summary"]
    n = len(sm["seeds"])
    kinds = ("clado", "diagonal", "uniform", "oracle")
    kinds = tuple(k for k in kinds if f"acc_{k}_4" in sm)
    rows = []
    for b in (3, 4, 5):
        rows.append([b, *(stat_of(sm[f"acc_{k}_{b}"], n) for k in kinds)])
        s.point("weights", "CLADO (A8)", b, stat_of(sm[f"acc_clado_{b}"], n))
    s.headline += clado_headline(sm)
    study = out["runs"][0]["study"]
    s.extra["clado_bits"] = {"names": study["names"], "params": study["params"],
                             "budgets": {b: v["clado"]["bits"] for b, v in study["budgets"].items()},
                             "seed": out["runs"][0]["seed"]}
    s.extra["fp"] = out["runs"][0]["fp"]
    names = {"clado": "CLADO %", "diagonal": "diagonal only %", "uniform": "uniform %", "oracle": "exhaustive oracle %"}
    s.table("fmnist-resnet, mixed precision", f"{fmnist_test_set(sm['quick_task'])} (FP {s.extra['fp']:.2f} %), "
            f"weights {{2, 4, 8}} on the {sm['layers']} searched layers, A8, KL to the FP outputs on "
            f"{sm['num_samples']} samples, {seeds_text(sm['seeds'])}", ["avg weight bits", *(names[k] for k in kinds)], rows,
            f"Spearman correlation of predicted and measured loss change over random allocations: pairwise "
            f"{fmt(stat_of(sm['spearman_pairs'], n))}, diagonal {fmt(stat_of(sm['spearman_diag'], n))}. "
            + (f"Exhaustive oracle {sm['exhaustive_oracle']}." if "exhaustive_oracle" in sm else ""))


def clado_headline(sm: dict) -> list[dict]:
    """3 average bits, where the search matters (at 4 every search picks W4 everywhere): CLADO,
    the diagonal-only search and uniform bits of the same size."""
    n = len(sm["seeds"])
    return [{"method": "clado", "label": label, "value": stat_of(sm[key], n)}
            for label, key in (("3 avg bits A8", "acc_clado_3"), ("diagonal only", "acc_diagonal_3"),
                               ("uniform W3A8", "acc_uniform_3")) if key in sm]


def sec_aquant(s: Section, quick: bool) -> None:
    # --quick: the quick task, one seed
    args = ["--quick", "--iters", "50"] if quick else ["--seeds", "0", "1", "2", "--iters", "200"]
    out = s.run(["benchmarks/aquant_fmnist.py", *args, "--bits", "2", "3", "4", "--num-samples", "256", "--out", "",
                 "--json"])
    rows = []
    for bits in sorted({r["bits"] for r in out["rows"]}):
        acc = {m: {r["seed"]: r["accuracy"] for r in out["rows"] if r["bits"] == bits and r["method"] == m}
               for m in ("nearest", "adaround", "aquant")}
        cells = {m: stat(list(v.values())) for m, v in acc.items()}
        diff = stat([acc["aquant"][k] - acc["adaround"][k] for k in acc["aquant"]])
        secs = stat([r["seconds"] for r in out["rows"] if r["bits"] == bits and r["method"] == "aquant"])
        rows.append([wa(bits, bits), cells["nearest"], cells["adaround"], cells["aquant"], diff, secs])
        if bits == 2:
            s.head("aquant", "W2A2", cells["aquant"])
            s.head("aquant", "QDrop", cells["adaround"])
        for m, series in (("adaround", "AdaRound block + QDrop"), ("aquant", "AQuant")):
            s.point("both", series, bits, cells[m])
    seeds = sorted({r["seed"] for r in out["rows"]})
    s.table("fmnist-resnet, weights and activations", f"{fmnist_test_set(quick)} (FP {out['fp']:.2f} %), "
            f"{out['rows'][0]['iters']} iterations per block, 256 calibration images, {seeds_text(seeds)}",
            ["setting", "nearest %", "AdaRound block + QDrop %", "AQuant %", "AQuant - QDrop (paired)", "AQuant s per run"],
            rows)


def sec_n2uq(s: Section, quick: bool) -> None:
    if quick:  # the script's --quick: seed 0, W2A2, 50 iterations, 1 epoch of 1024 images, the quick task
        args = ["--quick"]
        seeds, iters, epochs, images = ["0"], 50, 1, 1024
    else:
        # two epochs of the whole training set, the (seed, bits) pairs in two single-thread processes
        seeds, iters, epochs, images = ["0", "1", "2"], 200, 2, 60000
        args = ["--bits", "2", "3", "--seeds", *seeds, "--iters", str(iters), "--num-samples", "256", "--epochs",
                str(epochs), "--train-images", str(images), "--jobs", "2"]
    out = s.run(["benchmarks/n2uq_fmnist.py", *args, "--out", "", "--json"])
    methods = {"qdrop": "QDrop (PTQ) %", "n2uq": "N2UQ (PTQ) %", "n2uq+ft": "N2UQ finetune [N2UQ] %",
               "frozen+ft": "thresholds frozen finetune [N2UQ] %", "lsq+ft": "LSQ-uniform finetune [QDrop] %"}
    rows = []
    for bits in sorted({r["bits"] for r in out["rows"]}):
        cells = {m: stat([r["accuracy"] for r in out["rows"] if r["bits"] == bits and r["method"] == m])
                 for m in methods}
        epoch_s = [e for r in out["rows"] if r["bits"] == bits for e in r.get("epoch_seconds", [])]
        rows.append([wa(bits, bits), *cells.values(), stat(epoch_s)])
        if bits == 2:
            s.head("n2uq", "W2A2 PTQ", cells["n2uq"])
            s.head("n2uq", f"after `finetune` (QAT, {epochs} short epoch{'s' if epochs != 1 else ''})", cells["n2uq+ft"])
        s.point("both", "N2UQ (PTQ)", bits, cells["n2uq"])
    s.table("fmnist-resnet, post-training and short finetune",
            f"{fmnist_test_set(quick)} (FP {out['fp']:.2f} %), PTQ: {iters} block iterations, 256 calibration "
            f"images; finetune (QAT, distilled from the FP model): {epochs} epoch(s) of {images} training images, "
            f"started from the PTQ model in brackets; {seeds_text(seeds)}",
            ["setting", *methods.values(), "finetune s per epoch"], rows)


def sec_pipelines(s: Section, quick: bool) -> None:
    seeds = [0] if quick else [0, 1, 2]
    ada = {"iters": 500} if quick else {"iters": 2000}
    aq = {"iters": 50 if quick else 200, "num_samples": 256}
    # quick: CLADO measures adjacent pairs only on 128 samples (its measurements dominate otherwise)
    clado = {"num_samples": 128, "pairs": "neighbors"} if quick else {}
    plans = (  # (label, method, activation bits, options, CLADO budget (else uniform bits))
        ("AdaRound, uniform bits", "adaround", 8, ada, False),
        ("CLADO (nearest rounding)", "clado", 8, clado, True),
        ("CLADO + AdaRound", "clado+adaround", 8, {"clado": clado, "adaround": ada}, True),
        ("AQuant, uniform bits", "aquant", 4, aq, False),
        ("CLADO + AQuant", "clado+aquant", 4, {"clado": clado, "aquant": aq}, True),
    )
    rows = []
    for label, method, a, options, budget in plans:
        for b in (3, 4):
            recs = [s.run(eval_args("fmnist-resnet", method, 8 if budget else b, a, seed, quick, options,
                                    float(b) if budget else None), keep=drop("bits_per_layer")) for seed in seeds]
            acc = stat([r["metric"] for r in recs])
            rows.append([label, f"{'avg ' if budget else 'W'}{b} A{a}", acc, recs[0]["effective_bits"],
                         recs[0]["size_bytes"], stat([r["seconds"] for r in recs])])
    s.table("fmnist-resnet, CLADO's bits rounded by a learned method",
            f"{fmnist_test_set(quick)} (FP {recs[0]['fp_metric']:.2f} %), {seeds_text(seeds)}; CLADO: weights {{2, 4, 8}}, "
            f"budget of average weight bits over the searched layers, "
            + (f"options {json.dumps(clado)}" if clado else "its defaults (every pair, 256 samples)")
            + "; AdaRound layer-wise "
            f"{ada['iters']} iterations; AQuant {aq['iters']} iterations per block, {aq['num_samples']} calibration "
            "images",
            ["method", "setting", "accuracy %", "effective bits", "weight bytes", "quantization s"], rows,
            "Effective bits: code bits per quantized weight, the 8-bit first conv and last linear included.")


def sec_models(s: Section, quick: bool) -> None:
    # One seed for mobilenet_v2 in full mode too: a full-task run takes minutes, evaluating the
    # photos and the probe's 6000 images dominating.
    model_seeds = {"mobilenet_v2": [0], "minilm": [0] if quick else [0, 1, 2]}
    bc, ps = {"bias_correction": True}, {"preserve_sums": True}
    plans = [("nearest", 8, None), ("nearest", 8, bc), ("nearest", 8, ps), ("nearest", 8, {**ps, **bc})]
    if not quick:
        plans += [("nearest", 4, None), ("nearest", 4, bc), ("nearest", 4, {**ps, **bc})]
    # (method, weight bits, options, embedding bits): minilm's word tables are half its weights.
    # AdaRound runs on seed 0 only, in full mode on 256 calibration samples: on the full task's
    # 1024 images at 224 px, one mobilenet_v2 run was still on its 4th of 52 layers after 6 minutes.
    ada = {"iters": 50} if quick else {"iters": 1000, "num_samples": 256}
    extra = {"mobilenet_v2": [] if quick else [("adaround", 4, ada, None)],
             "minilm": [("nearest", 4, None, 4), ("adaround", 4, ada, None)]}
    for model, metric, agreement in (("mobilenet_v2", "probe accuracy %", "photo top-1 agreement with FP %"),
                                     ("minilm", "Recall@1 %", "cosine to FP x 100")):
        rows, fp, seeds = [], None, model_seeds[model]
        for method, w, options, emb in [(*p, None) for p in plans] + extra[model]:
            run_seeds = [0] if method == "adaround" else seeds
            recs = [s.run(eval_args(model, method, w, 8, seed, quick, options, embedding_bits=emb),
                          keep=drop("bits_per_layer")) for seed in run_seeds]
            fp = recs[0]
            label = method + ("" if not options else " " + ", ".join(f"{k}={v}" for k, v in options.items()))
            if run_seeds != seeds:
                label += f" ({seeds_text(run_seeds)})"
            rows.append([label + ("" if emb is None else f", embeddings W{emb}"), wa(w, 8),
                         stat([r["metric"] for r in recs]), stat([r["agreement"] for r in recs]),
                         recs[0]["size_bytes"], stat([r["seconds"] for r in recs])])
        # The metrics' noise floor: the float model with its parameters rounded to 16-bit floats.
        floor = s.run(["benchmarks/metric_floor.py", "--model", model, "--json"] + (["--quick"] if quick else []))
        rows[:0] = [["FP32", "W32A32", fp["fp_metric"], 100.0, fp["fp_size_bytes"], None]] + [
            [f"FP32, parameters rounded to {r['dtype']} (no quantization)", "W16A32", r["metric"], r["agreement"],
             fp["fp_size_bytes"] // 2, None] for r in floor["rows"]]
        size = "quick task (fewer calibration and evaluation samples)" if quick else "full task"
        s.table(model, f"{size}, {seeds_text(seeds)}", ["method", "setting", metric, agreement, "weight bytes",
                                                  "quantization s"], rows,
                "The rows rounded to 16-bit floats quantize nothing: they show how far the metrics move under "
                "a relative weight error of at most 2^-8 (bfloat16) or 2^-11 (float16, for normal values).")


def sec_kernels(s: Section, quick: bool) -> None:
    out = s.run(["benchmarks/kernels.py", "--json"], all_threads=True)
    env, sm = out["env"], out["summary"]
    pick = {("lw", 4, 1): "W4 batch 1", ("lw", 3, 1): "W3 batch 1", ("lw", 2, 1): "W2 batch 1",
            ("lw", 4, 8): "W4 batch 8", ("a8", 4, 1): "W4A8 batch 1", ("a8", 4, 8): "W4A8 batch 8",
            ("a8", 4, 128): "W4A8 batch 128"}
    rows = [[pick[(r["kind"], r["bits"], r["M"])], r["ms"], r["vs_fp32"], r["roofline"]] for r in out["rows"]
            if r["shape"] == "4096x4096" and (r["kind"], r["bits"], r["M"]) in pick]
    rows += [[r["name"] + f" batch {r['M']}", r["ms"], r["vs_fp32"], None] for r in out["rows"]
             if r["shape"] == "4096x4096" and r["kind"] == "torch" and r["bits"] < 32 and r["M"] == 1]
    mp = sm.get("multipoint_time_ratio")
    s.table("packed kernels, 4096x4096", f"group {env['group_size']}, {env['threads']} threads, isa {env['isa']}, "
            f"median of {env['repeats']} calls on a {env['pool_mib']} MiB cold pool, read bandwidth "
            f"{env['bandwidth_gbs']} GB/s; load average {env['load_avg_start']} -> {env['load_avg_end']}",
            ["case", "ms", "x torch fp32 F.linear", "share of the bandwidth roofline"], rows,
            (f"Multipoint: time / ((1 + rho) x single-point time), worst case {mp}. " if mp else "")
            + f"Targets met: {json.dumps(sm['targets_met'])}.")


def drop(*keys: str) -> Callable[[dict], dict]:
    """What of a script's output is stored: all but `keys` (large and re-derivable)."""
    return lambda out: {k: v for k, v in out.items() if k not in keys}


SECTIONS: dict[str, tuple[Callable[[Section, bool], None], str, bool]] = {  # name: (run, title, in quick mode)
    "nearest": (sec_nearest, "Round to nearest (`nearest`)", True),
    "adaround": (sec_adaround, "AdaRound (`adaround`)", True),
    "multipoint": (sec_multipoint, "Multipoint (`multipoint`)", True),
    "clado": (sec_clado, "CLADO mixed precision (`clado`)", True),
    "aquant": (sec_aquant, "AQuant (`aquant`)", True),
    "n2uq": (sec_n2uq, "N2UQ (`n2uq`) and `lowbit.finetune`", True),
    "pipelines": (sec_pipelines, "Pipelines: CLADO's bits, learned rounding", True),
    "models": (sec_models, "mobilenet_v2 and minilm", True),
    "kernels": (sec_kernels, "Packed kernels", False),
}

# The README's methods table: what each method does and its page; the figures come from the
# sections' headline entries.
METHODS = {
    "nearest": ("round to nearest on Lp-searched (p = 2.4) grids; the baseline; optional bias correction", "nearest"),
    "adaround": ("learned up/down weight rounding, layer-wise or block-wise (BRECQ/QDrop)", "adaround"),
    "clado": ("mixed precision from cross-layer error terms, exact C++ IQP solver", "clado"),
    "aquant": ("learned activation rounding borders, jointly with AdaRound in the block loop "
               "(experimental: its lead over QDrop is at short schedules, see its page)", "aquant"),
    "n2uq": ("learned input thresholds with uniform integer outputs; `lowbit.finetune` for short QAT", "n2uq"),
    "multipoint": ("extra low-bit rows on the channels with the largest output error", "multipoint"),
}

# --- recording ----------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def trained_weights() -> dict[str, str]:
    """sha256 (12 digits) of the cached fmnist-resnet weights: trained on first use, and two
    trainings of the same recipe differ, so records say which weights they measured."""
    import hashlib

    from lowbit.data._common import cache_dir

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(cache_dir().glob("fmnist_resnet-*.safetensors"))}


def run_section(name: str, quick: bool, threads: int = 1) -> dict:
    fn, title, _ = SECTIONS[name]
    s = Section(name, quick, threads)
    load = os.getloadavg()[0]
    cpu0 = child_cpu_seconds()
    t0 = time.perf_counter()
    fn(s, quick)
    dirty = bool(git("status", "--porcelain", "--", "python", "cpp", "benchmarks"))
    record = {
        "section": name, "mode": "quick" if quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
        "torch": importlib.metadata.version("torch"), "python": platform.python_version(), "machine": machine(),
        "load_avg_start": round(load, 2), "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(child_cpu_seconds() - cpu0, 1), "weights": trained_weights(),
        "tables": s.tables, "headline": s.headline, "points": s.points, **s.extra,
    }
    path = RESULTS / record["mode"] / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[{name}] {record['wall_seconds']:.0f} s -> {path.relative_to(ROOT)}", file=sys.stderr, flush=True)
    return record


def load_records(results: Path = RESULTS) -> dict[str, dict]:
    """Per section the stored record to show: the full run where one exists, else the quick one."""
    records = {}
    for name in SECTIONS:
        for mode in MODES:
            path = results / mode / f"{name}.json"
            if path.exists():
                records[name] = json.loads(path.read_text())
                break
    return records


# --- rendering ----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: mean +- std over seeds (the mean alone for one seed: the settings say how
    many), numbers to `digits` decimals, integers as they are, missing as "-"."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        if value["n"] > 1:
            return f"{value['mean']:.{digits}f} +- {value['std']:.{digits}f}"
        return f"{value['mean']:.{digits}f}"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def commands(runs: list[dict]) -> list[str]:
    """The table's command lines, the ones that differ only in ``--seed N`` shown once."""
    out: dict[str, list[str]] = {}
    for r in runs:
        seed = re.search(r" --seed (\d+)", r["command"])
        key = re.sub(r" --seed \d+", " --seed {S}", r["command"])
        out.setdefault(key, []).append(seed.group(1) if seed else "")
    return [k.replace("{S}", "{" + ",".join(v) + "}") if len(v) > 1 else k.replace("{S}", v[0])
            for k, v in out.items()]


def markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    digits = [1 if c.endswith(" s") or " s per " in c else 2 for c in columns]  # seconds to 0.1 s
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(fmt(c, d) for c, d in zip(row, digits)) + " |" for row in rows)]


def label(record: dict) -> str:
    return "quick settings" if record["mode"] == "quick" else "full settings"


def render_section(name: str, record: dict | None) -> list[str]:
    title = SECTIONS[name][1]
    if record is None:
        return [f"## {title}", "", f"Not measured yet: `python benchmarks/accuracy.py --only {name}`"
                + (" (full mode only)" if not SECTIONS[name][2] else "") + ".", ""]
    out = [f"## {title} ({label(record)})", ""]
    for t in record["tables"]:
        if len(record["tables"]) > 1:
            out += [f"### {t['title']}", ""]
        out += ["    " + c for c in commands(t["runs"])] + [""]
        out += [f"Settings: {t['settings']}.", ""] if len(record["tables"]) > 1 else [
            f"{t['title']}: {t['settings']}.", ""]
        out += markdown_table(t["columns"], t["rows"]) + [""]
        if t["note"]:
            out += [t["note"], ""]
        secs = sum(r["seconds"] for r in t["runs"])
        loads = [r["load_avg"] for r in t["runs"]]
        cpu = [r["cpu_seconds"] for r in t["runs"] if "cpu_seconds" in r]
        out += [f"Wall time {secs:.0f} s over {len(t['runs'])} command(s)"
                + (f" ({sum(cpu):.0f} CPU s)" if len(cpu) == len(t["runs"]) else "")
                + (f", load average {loads[0]:.1f} at its start." if len(loads) == 1 else
                   f", load average {min(loads):.1f}-{max(loads):.1f} at their starts."), ""]
    out += [f"*{record['date']}, commit {record['commit']}, torch {record['torch']}, Python {record['python']}, "
            f"{record['machine']}; section wall time {record['wall_seconds']:.0f} s"
            + (f" ({record['cpu_seconds']:.0f} CPU s)" if "cpu_seconds" in record else "") + ", load average "
            f"{record['load_avg_start']} at its start"
            + "".join(f"; {k} sha256 {v}" for k, v in record.get("weights", {}).items()) + ".*", ""]
    return out


def render_page(records: dict[str, dict], plots: list[str]) -> str:
    modes = {name: r["mode"] for name, r in records.items()}
    out = [
        "# Measured results", "",
        "<!-- Generated by benchmarks/accuracy.py from docs/results/<quick|full>/*.json: edit the script, "
        "not this page. -->", "",
        textwrap.fill(
        "Every figure here was printed by the command above its table and stored, with the date, commit, "
        "machine, wall time and load average of the run, in `docs/results/<quick|full>/<section>.json`. "
        "`python benchmarks/accuracy.py --quick` (`make results`) measures every section with small settings "
        "(one seed, the quick task, short schedules); `python benchmarks/accuracy.py` with the full ones (3 seeds, the "
        "full test set, longer schedules); `--only SECTION` runs one section and `--render-only` rebuilds this "
        "page and the README's methods table from the stored files. Each section shows its full run where one "
        "is stored, else the quick one, and its heading says which. lowbit's C++ kernels give the same result at "
        "any thread count; torch's float passes (calibration, evaluation) can differ in their last bits with it, "
        "which now and then moves a score by a sample (mobilenet_v2's probe accuracy, a logistic regression "
        "fitted on FP features, most of all), so each command is shown with its OMP_NUM_THREADS. Wall times "
        "depend on the machine, and it was shared (the load average is given with each).",
        100), "",
        "| section | shown | wall s |", "|---|---|---|",
        *(f"| [{name}](#{anchor(SECTIONS[name][1], records.get(name))}) | "
          + (f"{modes[name]} ({records[name]['date']})" if name in records else "not measured") + " | "
          + (f"{records[name]['wall_seconds']:.0f}" if name in records else "-") + " |" for name in SECTIONS),
        "",
        *(f"The {mode} sections shown took {total:.0f} s of wall time together." for mode, total in
          ((m, sum(r["wall_seconds"] for r in records.values() if r["mode"] == m)) for m in MODES) if total),
        "",
        *weights_note(records),
    ]
    out += [f"![{p}](results/{p})" for p in plots] + ([""] if plots else [])
    for name in SECTIONS:
        out += render_section(name, records.get(name))
    return "\n".join(out).rstrip() + "\n"


def weights_note(records: dict[str, dict]) -> list[str]:
    """A paragraph naming which sections ran on which fmnist-resnet weights, when they differ."""
    by_hash: dict[str, list[str]] = {}
    for name, r in records.items():
        for digest in (r.get("weights") or {"": "not recorded"}).values():
            by_hash.setdefault(digest, []).append(name)
    if len(by_hash) < 2:
        return []
    groups = "; ".join(f"{digest} ({', '.join(names)})" for digest, names in by_hash.items())
    return [textwrap.fill(
        "fmnist-resnet is trained on first use from a fixed seed, but its training is not bit-identical across "
        "CPUs (torch's float kernels differ), so sections run on different machines used different weights, "
        f"with their own FP accuracy; compare methods within a section. Weights sha256 (sections): {groups}.",
        100), ""]


def anchor(title: str, record: dict | None) -> str:
    """GitHub's anchor of a section heading."""
    heading = title + (f" ({label(record)})" if record else "")
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def readme_block(records: dict[str, dict]) -> str:
    heads: dict[str, list[tuple[str, str]]] = {}  # method: (figure, how it was measured)
    for r in records.values():
        for h in r["headline"]:
            one_seed = isinstance(h["value"], dict) and h["value"]["n"] == 1
            tags = ", ".join(["quick settings"] * (r["mode"] == "quick") + ["1 seed"] * one_seed)
            heads.setdefault(h["method"], []).append((f"{h['label']} {fmt(h['value'])}", f" ({tags})" if tags else ""))
    near = records.get("nearest")
    fp_text = f"FP32 {fmt(near['fp'])} on the {fmnist_test_set(near['mode'] == 'quick')}; " if near and "fp" in near else ""
    lines = [BEGIN,
             textwrap.fill(f"Headline figures: fmnist-resnet test accuracy (%, {fp_text}mean +- std over "
                           "calibration seeds), generated by `python benchmarks/accuracy.py`, "
                           "with each command, setting and wall time in `docs/results.md`.", 100), "",
             "| method | what it does | fmnist-resnet, headline setting | page |", "|---|---|---|---|"]
    for method, (what, page) in METHODS.items():
        items = heads.get(method, [])
        if len({tag for _, tag in items}) == 1:  # one note for the cell when every figure shares it
            figures = "; ".join(text for text, _ in items) + items[0][1]
        else:
            figures = "; ".join(text + tag for text, tag in items) or "not measured yet"
        lines.append(f"| `{method}` | {what} | {figures} | `docs/{page}.md` |")
    return "\n".join(lines + [END])


def replace_block(text: str, block: str) -> str:
    """The README with its results block replaced; the first time, the block replaces the methods
    table from its "Headline figures" line to the table's last row."""
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        return text[:start] + block + text[end:]
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("Headline figures"))
    table = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(table, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "".join(lines[:start]) + block + "\n" + "".join(lines[end:])


def plot(records: dict[str, dict], results: Path = RESULTS) -> list[str]:
    """PNG plots from the records; [] with a note when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    made = []
    points = [p for r in records.values() for p in r["points"]]
    if points:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        fig.suptitle("as measured in the sections below (quick or full settings, as each says)", fontsize=9)
        titles = {"weights": "weights only (A8 or float activations)", "both": "weights and activations at b bits"}
        for ax, panel in zip(axes, titles):
            series = sorted({p["series"] for p in points if p["panel"] == panel})
            for name in series:
                ps = sorted((p for p in points if p["panel"] == panel and p["series"] == name), key=lambda p: p["bits"])
                ax.errorbar([p["bits"] for p in ps], [p["accuracy"]["mean"] for p in ps],
                            yerr=[p["accuracy"]["std"] for p in ps], marker="o", capsize=3, label=name)
            ax.set(title=titles[panel], xlabel="weight bits (CLADO: average; multipoint: effective)",
                   ylabel="fmnist-resnet test accuracy %")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if series:
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(results / "accuracy_vs_bits.png", dpi=110)
        plt.close(fig)
        made.append("accuracy_vs_bits.png")
    cb = records.get("clado", {}).get("clado_bits")
    if cb:
        fig, ax = plt.subplots(figsize=(11, 4))
        budgets = sorted(cb["budgets"], key=float)
        width = 0.8 / len(budgets)
        for i, b in enumerate(budgets):
            ax.bar([j + i * width for j in range(len(cb["names"]))], [cb["budgets"][b][n] for n in cb["names"]],
                   width, label=f"avg {float(b):g} bits")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cb["names"]))],
                      [f"{n}\n{p / 1e3:.0f}k" for n, p in zip(cb["names"], cb["params"])], rotation=60, fontsize=7)
        ax.set(ylabel="weight bits", title=f"CLADO's bits per layer on fmnist-resnet (seed {cb['seed']}; "
               "under each layer, its weight count)", yticks=[2, 4, 8])
        ax.legend()
        fig.tight_layout()
        fig.savefig(results / "clado_bits.png", dpi=110)
        plt.close(fig)
        made.append("clado_bits.png")
    return made


def render(results: Path = RESULTS, page: Path = PAGE, readme: Path = README) -> dict[str, dict]:
    records = load_records(results)
    results.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(records, plot(records, results)))
    readme.write_text(replace_block(readme.read_text(), readme_block(records)))
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small settings, under 20 minutes on 2 cores")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections only")
    ap.add_argument("--render-only", action="store_true", help="rebuild the pages from the stored results")
    ap.add_argument("--json", action="store_true", help="print the records of the sections run as JSON")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (stored with each command; "
                    "scripts with a --threads option of their own keep theirs, the kernels section takes all)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    names = args.only or [n for n, (_, _, in_quick) in SECTIONS.items() if in_quick or not args.quick]
    ran, failed = {}, []
    t0 = time.perf_counter()
    if not args.render_only:
        for name in names:
            try:
                ran[name] = run_section(name, args.quick, args.threads)
            except (subprocess.CalledProcessError, ValueError, KeyError) as e:  # the others still run
                print(f"[{name}] failed, nothing stored: {e!r}", file=sys.stderr, flush=True)
                failed.append(name)
        print(f"{len(ran)} section(s) in {time.perf_counter() - t0:.0f} s" + (f"; failed: {failed}" if failed else ""),
              file=sys.stderr)
    render()
    if args.json:
        print(json.dumps(ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
