"""Command line: ``python -m lowbit demo | eval | methods``.

    python -m lowbit eval --model fmnist-resnet --method adaround --w-bits 3 --json
    python -m lowbit demo
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any, Optional

DEMO_SETTINGS = ((8, 8), (4, 8), (3, None), (2, None))
DEMO_ITERS = {False: 1000, True: 200}  # per layer (or block), by --quick


def weight_bytes(model) -> int:
    """Weight bytes as packed: codes at their bit width, plus fp16 scale and zero per unit,
    plus float32 for any parameter lowbit did not quantize; layers that hold more than one
    grid (multipoint rows) add their ``extra_bytes()``."""
    from lowbit.quantizers import QuantLayer

    total = 0
    quantized = set()
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLayer):
            quantized.add(name)
            total += (mod.codes.numel() * mod.w_bits + 7) // 8 + 4 * mod.scale.numel()
            total += 0 if mod.bias is None else 4 * mod.bias.numel()
            extra = getattr(mod, "extra_bytes", None)
            total += extra() if callable(extra) else 0
    for name, p in model.named_parameters():
        if name.rpartition(".")[0] not in quantized:
            total += 4 * p.numel()
    return int(total)


def code_bits(model) -> float:
    """Weight code bits per quantized weight, each layer weighted by its size (the 8-bit first
    and last layers included): the effective bit width of the codes, scales aside."""
    from lowbit.quantizers import QuantLayer

    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    n = sum(m.codes.numel() for m in layers)
    return sum(m.codes.numel() * m.w_bits for m in layers) / n if n else 32.0


def evaluate(model_name: str, method: str, w_bits: int, a_bits: Optional[int], seed: int = 0,
             quick: bool = False, progress: bool = True, options: Optional[dict] = None,
             avg_bits: Optional[float] = None, embedding_bits: Optional[int] = None) -> dict[str, Any]:
    """Quantize a zoo model with `method` and score it; the record the CLI prints.

    method is one method or stages joined by '+' (a pipeline, e.g. "clado+adaround"). options
    are the method's options; a pipeline's map stage names to theirs, e.g.
    ``{"adaround": {"iters": 500}}``. avg_bits sets the budget of the clado stage (average
    weight bits); embedding_bits quantizes the model's nn.Embedding tables too."""
    import lowbit
    from lowbit import zoo
    from lowbit.registry import get_method

    names = method.split("+")
    if avg_bits is not None and "clado" not in names:
        raise ValueError(f"--avg-bits sets CLADO's budget, but the method {method!r} has no clado stage")
    if len(names) == 1:
        per_stage = {method: dict(options)} if options else {}
    else:
        per_stage = dict(options or {})
        stray = [k for k, v in per_stage.items() if k not in names or not isinstance(v, dict)]
        if stray:
            raise ValueError(f"a pipeline's options map its stages {names} to their options, e.g. "
                             f'{{"{names[-1]}": {{"iters": 500}}}}; {stray} is not a stage with a dict of options')
    if avg_bits is not None:
        per_stage["clado"] = {**per_stage.get("clado", {}), "avg_bits": float(avg_bits)}
    stages = [get_method(n).config_cls.from_dict(per_stage[n]) if n in per_stage else n for n in names]
    task = zoo.load_task(model_name, seed=seed, quick=quick)
    fp = task.evaluate(task.model)
    t0 = time.perf_counter()
    qmodel = lowbit.quantize(task.model, task.calib_loader, stages, w_bits=w_bits, a_bits=a_bits, seed=seed,
                             progress=progress, embedding_bits=embedding_bits, **task.quantize_kwargs)
    seconds = time.perf_counter() - t0
    q = task.evaluate(qmodel)
    rep = lowbit.report(qmodel)
    bits = {row.name: row.w_bits for row in rep.layers}
    params = {row.name: math.prod(row.shape) for row in rep.layers}
    record = {
        "model": model_name, "method": method, "w_bits": w_bits, "a_bits": a_bits, "seed": seed,
        "embedding_bits": embedding_bits,
        "metric_name": task.metric_name, "fp_metric": round(fp["metric"], 3), "metric": round(q["metric"], 3),
        "agreement": round(q["agreement"], 3), "size_bytes": weight_bytes(qmodel),
        "fp_size_bytes": weight_bytes(task.model), "seconds": round(seconds, 2),
        "avg_bits": round(sum(params[n] * b for n, b in bits.items()) / sum(params.values()), 3),
        "effective_bits": round(code_bits(qmodel), 3), "bits_per_layer": bits,
    }
    if "clado" in rep.meta:  # what the bit-width search measured and how the solver ended
        c = rep.meta["clado"]
        record["clado"] = {"searched_layers": len(c["searched_layers"]), "searched_avg_bits": round(c["avg_bits"], 3),
                           "pairs": c["pairs"], "evaluations": c["evaluations"], "measure_seconds": c["measure_seconds"],
                           "solver": c["solver"]}
    return record


def _bits(text: str) -> Optional[int]:
    return None if text.lower() in ("none", "32", "fp", "float") else int(text)


def cmd_eval(args: argparse.Namespace) -> int:
    options = json.loads(args.options) if args.options else None
    rec = evaluate(args.model, args.method, args.w_bits, args.a_bits, args.seed, args.quick,
                   progress=not args.json, options=options, avg_bits=args.avg_bits,
                   embedding_bits=args.embedding_bits)
    a = "32" if rec["a_bits"] is None else rec["a_bits"]
    print(f"{rec['model']}  {rec['method']}  W{rec['w_bits']}A{a}  seed {rec['seed']}")
    print(f"  {rec['metric_name']}: {rec['metric']:.2f} %  (FP {rec['fp_metric']:.2f} %)   "
          f"agreement with FP: {rec['agreement']:.2f} %")
    print(f"  weights: {rec['size_bytes'] / 1e3:.1f} kB (FP {rec['fp_size_bytes'] / 1e3:.1f} kB)   "
          f"quantization time: {rec['seconds']:.1f} s")
    if args.json:
        print(json.dumps(rec))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import lowbit
    from lowbit import zoo

    task = zoo.load_task("fmnist-resnet", seed=args.seed, quick=args.quick)
    fp = task.evaluate(task.model)
    methods = lowbit.list_methods()
    print(f"fmnist-resnet: FP {task.metric_name} {fp['metric']:.2f} %   methods: {', '.join(methods)}")
    rows: list[tuple[str, int, int | None, float | None, float | None, float | None, str]] = []
    for method in methods:
        for w, a in DEMO_SETTINGS:
            t0 = time.perf_counter()
            try:
                q = lowbit.quantize(task.model, task.calib_loader, method, w_bits=w, a_bits=a,
                                    seed=args.seed, progress=False, config=_demo_config(method, args.quick, w))
            except NotImplementedError as e:  # a method that does not cover this setting says so
                rows.append((method, w, a, None, None, None, str(e)))
                continue
            res = task.evaluate(q)
            rows.append((method, w, a, res["metric"], res["agreement"], time.perf_counter() - t0, ""))
            print(f"  {method:<11} W{w}A{a or 32:<3} {res['metric']:6.2f} %  ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr)
    print()
    print(f"| method | W/A | {task.metric_name} % | agreement % | seconds |")
    print("|---|---|---|---|---|")
    print(f"| FP32 | 32/32 | {fp['metric']:.2f} | 100.00 | - |")
    for method, w, a, metric, agree, sec, why in rows:
        wa = f"{w}/{a or 32}"
        if metric is None:
            print(f"| {method} | {wa} | n/a | n/a | {why} |")
        else:
            print(f"| {method} | {wa} | {metric:.2f} | {agree:.2f} | {sec:.1f} |")
    return 0


def _demo_config(method: str, quick: bool, w_bits: int) -> Optional[dict]:
    """The demo's per-method options: the defaults but a shorter schedule (the papers' 10000
    iterations per layer would keep the demo's 24 runs busy for an hour on 2 cores)."""
    from lowbit.registry import get_method

    fields = getattr(get_method(method).config_cls, "__dataclass_fields__", {})
    if "avg_bits" in fields:  # a bit-width search: the setting's bits are its average budget
        return {"avg_bits": float(w_bits)}
    return {"iters": DEMO_ITERS[quick]} if "iters" in fields else None


def cmd_methods(args: argparse.Namespace) -> int:
    from lowbit.registry import get_method, list_methods

    for name in list_methods():
        print(f"{name:<12} {get_method(name).summary}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowbit", description="lowbit: low-bit post-training quantization")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("eval", help="quantize a bundled model with one method and score it")
    p.add_argument("--model", required=True, choices=["fmnist-resnet", "mobilenet_v2", "minilm"])
    p.add_argument("--method", default="nearest", help="a method or stages joined by '+', e.g. clado+adaround")
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=_bits, default=None, help="activation bits (default: float)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-bits", type=_bits, default=None,
                   help="bits for the model's nn.Embedding tables (default: float)")
    p.add_argument("--avg-bits", type=float, default=None,
                   help="CLADO's budget: average weight bits of the searched layers (needs a clado stage)")
    p.add_argument("--options", help="method options as JSON, e.g. '{\"iters\": 2000}'; for a pipeline per stage, "
                   "e.g. '{\"adaround\": {\"iters\": 500}}'")
    p.add_argument("--quick", action="store_true", help="smaller evaluation subset")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("demo", help="every method on fmnist-resnet at W8A8, W4A8, W3A32, W2A32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(fn=cmd_methods)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
