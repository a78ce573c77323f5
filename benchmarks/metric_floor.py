"""How much a task's scores move when only the float model's parameters are rounded to a
16-bit float type (no lowbit quantization at all): the noise floor of each metric.

    python benchmarks/metric_floor.py --model mobilenet_v2 [--quick] [--json]

mobilenet_v2's photo agreement, for one, counts top-1 flips on photos that are mostly not
ImageNet scenes, where the top two classes are often close: rounding every parameter to
bfloat16 (a relative error of at most 2^-8) already flips some. A quantized model's agreement
is read against that. The last line is one JSON object: the model, its FP scores and, per
dtype, metric and agreement as ``python -m lowbit eval`` reports them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0], and its kernels.py would shadow the `kernels`
# package that transformers (minilm) probes for at import.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from lowbit.zoo import list_models, load_task  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def rounded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` whose floating parameters are rounded to ``dtype`` (and kept float32)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.is_floating_point():
                p.copy_(p.to(dtype).float())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=list_models())
    ap.add_argument("--quick", action="store_true", help="the quick task (fewer evaluation samples)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    args = ap.parse_args(argv)
    task = load_task(args.model, quick=args.quick, num_calib=1)  # (nothing is calibrated)
    fp = task.evaluate(task.model)
    record = {"model": args.model, "metric_name": task.metric_name, "fp_metric": round(fp["metric"], 3), "rows": []}
    for name, dtype in DTYPES.items():
        r = task.evaluate(rounded(task.model, dtype))
        record["rows"].append({"dtype": name, "metric": round(r["metric"], 3), "agreement": round(r["agreement"], 3)})
        print(f"{args.model}  parameters rounded to {name}: {task.metric_name} {r['metric']:.2f} % "
              f"(FP {fp['metric']:.2f} %), agreement with FP {r['agreement']:.2f} %")
    if args.json:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
