"""benchmarks/metric_floor.py's rounding of a float model (no task is loaded here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "metric_floor.py"
_spec = importlib.util.spec_from_file_location("metric_floor_benchmark", _PATH)
assert _spec and _spec.loader
floor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floor)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounded_copies_and_rounds_every_float_parameter(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    with torch.no_grad():  # (BN's ones and zeros would round to themselves)
        for t in [*model.parameters(), model[1].running_mean]:
            t.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = floor.rounded(model, dtype)
    for k, v in model.state_dict().items():  # the input model is left as it was
        assert torch.equal(v, before[k]), k
    params = dict(model.named_parameters())
    for name, p in out.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, params[name].to(dtype).float()), name
        assert not torch.equal(p, params[name]), f"{name}: nothing was rounded"
    # Buffers (BN statistics) are not parameters: kept exactly.
    assert torch.equal(out[1].running_mean, model[1].running_mean)
