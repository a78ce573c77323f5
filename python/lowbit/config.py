"""Method configurations: frozen, keyword-only dataclasses, validated on construction.

Each method declares one ``QuantConfig`` subclass next to its code. ``from_dict`` rejects
unknown keys (naming them and the known ones), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Base of every method's config. ``method`` is the registry name the config runs."""

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON options: a "false" string must not read as True
            value = getattr(self, f.name)
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be True or False, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when a value is out of range."""

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> QuantConfig:
        """The config from keyword options; ValueError naming any unknown option."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method '{cls.method}'; "
                f"known: {sorted(known) or 'none'}"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Every option, with the method name and config version (for the report)."""
        return {"method": self.method, "version": self.version, **dataclasses.asdict(self)}


def check_range(name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> None:
    """ValueError "name must be ... , got ..." when value is not in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def check_bits(name: str, bits: Any, *, allow_none: bool = False) -> None:
    """Bit widths are integers in 2..8 (None where the argument allows "not quantized")."""
    if bits is None and allow_none:
        return
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{name} must be an integer number of bits in 2..8, got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"{name} must be in 2..8, got {bits}")
