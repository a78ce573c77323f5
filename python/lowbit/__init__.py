"""lowbit: low-bit post-training quantization for PyTorch, with a C++ core.

    qmodel = lowbit.quantize(model, calib_loader, method="adaround", w_bits=4)
    print(lowbit.report(qmodel))

Importing lowbit is light: submodules (and torch-heavy parts) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "quantize": "lowbit.api",
    "QuantContext": "lowbit.api",
    "report": "lowbit.reporting",
    "QuantReport": "lowbit.reporting",
    "list_methods": "lowbit.registry",
    "register_method": "lowbit.registry",
    "QuantConfig": "lowbit.config",
    "NearestConfig": "lowbit.methods.nearest",
    "AdaRoundConfig": "lowbit.methods.adaround",
    "MultipointConfig": "lowbit.methods.multipoint",
    "CladoConfig": "lowbit.methods.clado",
    "AQuantConfig": "lowbit.methods.aquant",
    "N2UQConfig": "lowbit.methods.n2uq",
    "finetune": "lowbit.finetune",
    "set_num_threads": "lowbit._native",
    "get_num_threads": "lowbit._native",
    "pack": "lowbit.pack",  # a callable module: lowbit.pack(qmodel) and `from lowbit.pack import ...`
    "save": "lowbit.io",
    "load": "lowbit.io",
    "benchmark": "lowbit.bench",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    mod = importlib.import_module(module)
    # A module exported under its own name is the export (lowbit.pack: see pack.py's end).
    value = mod if module == f"lowbit.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
