"""What every offline asset loader shares: the missing-asset error and the on-disk cache."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class AssetMissing(FileNotFoundError):
    """An offline model or data set is not installed.

    The message names the package and the exact command that installs it, so a test can
    ``pytest.skip(str(err))`` and a user can copy the fix.
    """


def require(path: Path, what: str, install: str) -> Path:
    """Return ``path`` if it exists, else raise :class:`AssetMissing` naming ``install``."""
    if not path.exists():
        raise AssetMissing(f"{what} not found at {path}. Install it with: {install}")
    return path


def cache_dir() -> Path:
    """lowbit's cache folder: ``$LOWBIT_CACHE`` or ``~/.cache/lowbit`` (created on demand)."""
    root = Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")
    root.mkdir(parents=True, exist_ok=True)
    return root


def recipe_key(recipe: dict[str, Any], n: int = 12) -> str:
    """Short stable hash of a JSON-able recipe; a changed recipe gives a new cache file."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file.

    Two processes racing both write complete files and the last rename wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.cache
def check_sha256(path: Path, expected: str, install: str) -> None:
    """Raise :class:`AssetMissing` unless ``path`` hashes to ``expected`` (checked once per process)."""
    digest = sha256_file(path)
    if digest != expected:
        raise AssetMissing(f"{path} has sha256 {digest}, not the published {expected}; reinstall with: {install}")
