"""Method registry: name -> (config class, run function). One file per method registers itself.

A method's ``run(ctx, config)`` reads and writes the QuantContext (see ``api.py``): it may
change the bits of layers (CLADO), re-round their weight codes (AdaRound), learn activation
quantizers (AQuant, N2UQ) or add points (multipoint). Stages of a pipeline run in order.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from lowbit.config import QuantConfig


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config class, ``run(ctx, config)`` and one-line summary."""

    name: str
    config_cls: type[QuantConfig]
    run: Callable
    summary: str


_METHODS: dict[str, MethodSpec] = {}
# Modules that register the built-in methods; imported on first lookup (keeps import light).
_BUILTIN = ("nearest", "adaround", "aquant", "clado", "n2uq", "multipoint")


def register_method(name: str, config_cls: type[QuantConfig], summary: str = "") -> Callable:
    """Decorator: ``@register_method("nearest", NearestConfig)`` on ``run(ctx, config)``."""

    def wrap(run: Callable) -> Callable:
        if name in _METHODS and _METHODS[name].run is not run:
            raise ValueError(f"method '{name}' is already registered")
        config_cls.method = name
        _METHODS[name] = MethodSpec(name, config_cls, run, summary or (run.__doc__ or "").strip().split("\n")[0])
        return run

    return wrap


def _load_builtins() -> None:
    for mod in _BUILTIN:
        try:
            importlib.import_module(f"lowbit.methods.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"lowbit.methods.{mod}":
                raise


def list_methods() -> list[str]:
    """Names of the registered methods, in a stable order."""
    _load_builtins()
    return sorted(_METHODS, key=lambda n: (_BUILTIN.index(n) if n in _BUILTIN else len(_BUILTIN), n))


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; ValueError listing the known ones otherwise."""
    _load_builtins()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name]


def spec_for_config(config: QuantConfig) -> MethodSpec:
    """The method whose config class is exactly ``type(config)``."""
    _load_builtins()
    for spec in _METHODS.values():
        if type(config) is spec.config_cls:
            return spec
    raise ValueError(f"{type(config).__name__} is not the config of any registered method")
