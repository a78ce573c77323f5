"""Round to nearest: the baseline every other method starts from and is measured against.

``lowbit.quantize`` already rounds every layer to its nearest grid point (ranges from the Lp
search, p = 2.4) before any method stage runs, so this stage only records itself.
"""

from __future__ import annotations

import dataclasses

from lowbit.config import QuantConfig
from lowbit.registry import register_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class NearestConfig(QuantConfig):
    """Round-to-nearest has no options of its own."""


@register_method("nearest", NearestConfig, "round each weight to the nearest grid point (baseline)")
def run(ctx, config: NearestConfig) -> None:
    """Round each weight to the nearest grid point (baseline)."""
    # Nothing to do: the context arrives nearest-rounded, and report rows default to "nearest".
