"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, parsed with NumPy.

IDX format (big-endian): a 4-byte magic ``0x0000 08 <ndim>`` (08 = unsigned byte), then one
uint32 per dimension, then the raw bytes. Images have 3 dims (16-byte header), labels 1 (8 bytes).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ._common import require

INSTALL = "sudo apt-get install -y dataset-fashion-mnist (Debian/Ubuntu), or set LOWBIT_FASHION_MNIST_DIR"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
_FILES = {"train": "train", "test": "t10k"}


def _root() -> Path:
    return Path(os.environ.get("LOWBIT_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def read_idx(path: Path | str) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes into a uint8 array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, payload has {len(raw) - offset} bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


@functools.lru_cache(maxsize=2)
def _load_u8(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root, stem = _root(), _FILES[split]
    images = read_idx(require(root / f"{stem}-images-idx3-ubyte.gz", "Fashion-MNIST", INSTALL))
    labels = read_idx(require(root / f"{stem}-labels-idx1-ubyte.gz", "Fashion-MNIST", INSTALL))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"Fashion-MNIST {split}: {images.shape[0]} images, {labels.shape[0]} labels")
    return images, labels


def fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The official Fashion-MNIST split (60,000 train / 10,000 test).

    Parameters
    ----------
    split : {"train", "test"}

    Returns
    -------
    images : torch.Tensor, float32, shape (N, 1, 28, 28), values in [0, 1]
    labels : torch.Tensor, int64, shape (N,), class ids 0..9 (names in ``CLASSES``)

    Raises
    ------
    AssetMissing
        If the Debian package ``dataset-fashion-mnist`` is not installed.
    """
    images, labels = _load_u8(split)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
