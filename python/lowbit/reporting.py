"""QuantReport: what ``lowbit.quantize`` did to each layer, as a table, JSON or Markdown."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch.nn as nn

_COLUMNS = ("name", "type", "shape", "w_bits", "a_bits", "method", "weight_mse", "recon_error", "seconds")


@dataclasses.dataclass
class LayerReport:
    """One quantized layer in the report: its shape and bits, the method that set its weight,
    weight MSE, output reconstruction error, time spent, notes and method-specific figures."""

    name: str
    type: str
    shape: tuple[int, ...]
    w_bits: int
    a_bits: int | None
    granularity: str
    method: str = "nearest"
    weight_mse: float = float("nan")
    recon_error: float = float("nan")  # ||y_q - y||^2 / ||y||^2 at the layer output, on calibration data
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # method-specific figures


@dataclasses.dataclass
class QuantReport:
    """What ``lowbit.quantize`` did: one LayerReport per quantized layer (``report[name]``) and
    run-wide figures in ``meta`` (settings, method configs, timings)."""

    layers: list[LayerReport]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerReport:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists (JSON-ready)."""
        return {"meta": self.meta, "layers": [dataclasses.asdict(r) for r in self.layers]}

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON (read back by from_json)."""
        return json.dumps(self.to_dict(), indent=indent, default=str, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> QuantReport:
        """The report written by to_json."""
        d = json.loads(text)
        rows = [LayerReport(**{**r, "shape": tuple(r["shape"])}) for r in d["layers"]]
        return cls(rows, d.get("meta", {}))

    def _cells(self) -> list[list[str]]:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.3g}" if v == v else "-"
            if v is None:
                return "-"
            if isinstance(v, tuple):
                return "x".join(map(str, v))
            return str(v)

        return [[fmt(getattr(r, c)) for c in _COLUMNS] for r in self.layers]

    def to_markdown(self) -> str:
        """The per-layer table in Markdown."""
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [list(_COLUMNS), *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
        out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        out.insert(1, "  ".join("-" * w for w in widths))
        head = ", ".join(f"{k}={v}" for k, v in self.meta.items() if k in ("method", "w_bits", "a_bits", "seed", "seconds"))
        return (head + "\n" if head else "") + "\n".join(out)

    def _repr_markdown_(self) -> str:  # notebooks
        return self.to_markdown()


def report(qmodel: nn.Module) -> QuantReport:
    """The QuantReport attached to a model returned by lowbit.quantize (or loaded by lowbit.load)."""
    rep = getattr(qmodel, "lowbit_report", None)
    if rep is None:
        raise ValueError("this model carries no lowbit report: it was not returned by lowbit.quantize")
    return rep
