"""Offline real data sets for lowbit's tests, benchmarks and notebooks; nothing is downloaded.

==================  ====================================================  =======================
function            what                                                   comes from
==================  ====================================================  =======================
fashion_mnist       Fashion-MNIST 60k/10k, (N, 1, 28, 28) in [0, 1]        Debian dataset-fashion-mnist
digits              8x8 digits, 1,797 images, for tiny unit tests          scikit-learn
photos              ImageNet-normalised crops of real photos               scikit-image, scikit-learn,
                    (disjoint calib / eval photos)                         matplotlib, opencv-doc
wordnet_retrieval   example sentence -> its definition, N candidates       Debian wordnet-base
==================  ====================================================  =======================

A missing source raises :class:`AssetMissing`, whose message is the install command. Importing
this package needs only NumPy and torch; scikit-learn, scikit-image and PIL load on first use.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import AssetMissing, cache_dir
from ._fashion_mnist import fashion_mnist
from ._photos import IMAGENET_MEAN, IMAGENET_STD, photo_crops, photos
from ._wordnet import wordnet_retrieval

__all__ = [
    "AssetMissing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cache_dir",
    "digits",
    "fashion_mnist",
    "photo_crops",
    "photos",
    "wordnet_retrieval",
]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (no download).

    Returns
    -------
    images : torch.Tensor, float32, shape (1797, 1, 8, 8), values in [0, 1]
    labels : torch.Tensor, int64, shape (1797,), digits 0..9
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise AssetMissing("scikit-learn is needed: pip install 'lowbit[models]'") from e
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(d.target.astype(np.int64))
