"""Real photographs that ship inside installed packages, cut into seeded crops for ImageNet CNNs.

Sources, each photo assigned to ONE split by name (the table below), so calibration crops and
evaluation crops never come from the same photo:

* scikit-image ``skimage.data`` (bundled files only; the ones it would download are not used),
* scikit-learn ``load_sample_images`` (china, flower),
* matplotlib's sample ``grace_hopper.jpg`` (if matplotlib is installed),
* Debian ``opencv-doc`` example photos, if ``make photos`` copied them into
  ``<cache>/photos/opencv-doc`` (optional; they add 24 photos).

There are no labels: these photos measure how far a quantized model's predictions move from the
FP32 model's (top-1 agreement, KL), never ImageNet accuracy.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import IO, Callable, cast

import numpy as np
import torch
import torch.nn.functional as F

from ._common import AssetMissing, cache_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENCV_INSTALL = "make photos (copies Debian opencv-doc example photos into the lowbit cache)"

# name -> split. Chosen by hand so both splits mix objects, animals, scenes, textures and greys.
SPLITS: dict[str, str] = {
    # scikit-image / scikit-learn / matplotlib: always there with the `models` extra
    "coffee": "calib", "rocket": "calib", "camera": "calib", "coins": "calib",
    "grass": "calib", "hubble_deep_field": "calib", "retina": "calib", "china": "calib",
    "chelsea": "eval", "astronaut": "eval", "flower": "eval", "motorcycle": "eval",
    "moon": "eval", "brick": "eval", "gravel": "eval", "clock": "eval",
    "immunohistochemistry": "eval", "grace_hopper": "eval",
    # Debian opencv-doc examples/data (optional)
    "aero1": "calib", "apple": "calib", "board": "calib", "box_in_scene": "calib",
    "building": "calib", "fruits": "calib", "graf1": "calib", "leuvenA": "calib",
    "rubberwhale1": "calib", "stuff": "calib",
    "aloeL": "eval", "baboon": "eval", "basketball1": "eval", "butterfly": "eval",
    "chicky_512": "eval", "ela_original": "eval", "home": "eval", "licenseplate_motion": "eval",
    "messi5": "eval", "orange": "eval", "smarties": "eval", "squirrel_cls": "eval",
    "starry_night": "eval", "sudoku": "eval",
}  # fmt: skip
OPENCV_FILES = {
    "aero1": "aero1.jpg", "apple": "apple.jpg", "board": "board.jpg",
    "box_in_scene": "box_in_scene.png", "building": "building.jpg", "fruits": "fruits.jpg",
    "graf1": "graf1.png", "leuvenA": "leuvenA.jpg", "rubberwhale1": "rubberwhale1.png",
    "stuff": "stuff.jpg", "aloeL": "aloeL.jpg", "baboon": "baboon.jpg",
    "basketball1": "basketball1.png", "butterfly": "butterfly.jpg", "chicky_512": "chicky_512.png",
    "ela_original": "ela_original.jpg", "home": "home.jpg",
    "licenseplate_motion": "licenseplate_motion.jpg", "messi5": "messi5.jpg",
    "orange": "orange.jpg", "smarties": "smarties.png", "squirrel_cls": "squirrel_cls.jpg",
    "starry_night": "starry_night.jpg", "sudoku": "sudoku.png",
}  # fmt: skip
_SKIMAGE = ("coffee", "rocket", "camera", "coins", "grass", "hubble_deep_field", "retina",
            "chelsea", "astronaut", "moon", "brick", "gravel", "clock", "immunohistochemistry")  # fmt: skip


def opencv_dir() -> Path:
    return cache_dir() / "photos" / "opencv-doc"


def _rgb(img: np.ndarray) -> np.ndarray:
    """Any uint8 photo -> (H, W, 3) uint8: greys are repeated, an alpha channel is dropped."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 photo, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.array(img[:, :, :3], dtype=np.uint8, order="C")  # a writable copy


def _loaders() -> dict[str, Callable[[], np.ndarray]]:
    """name -> zero-argument loader, for every photo whose package is importable."""
    out: dict[str, Callable[[], np.ndarray]] = {}
    try:
        import skimage.data as skd

        for name in _SKIMAGE:
            out[name] = getattr(skd, name)
        out["motorcycle"] = lambda: skd.stereo_motorcycle()[0]
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_image

        out["china"] = lambda: load_sample_image("china.jpg")
        out["flower"] = lambda: load_sample_image("flower.jpg")
    except ImportError:
        pass
    try:
        import matplotlib.cbook

        def grace() -> np.ndarray:
            from PIL import Image

            # A .jpg comes back as a file object (arrays are for matplotlib's .npy samples).
            with cast(IO[bytes], matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as f:
                return np.asarray(Image.open(f).convert("RGB"))

        out["grace_hopper"] = grace
    except ImportError:
        pass
    folder = opencv_dir()
    for name, fname in OPENCV_FILES.items():
        if (folder / fname).exists():

            def load(path: Path = folder / fname) -> np.ndarray:
                from PIL import Image

                with Image.open(path) as im:
                    return np.asarray(im.convert("RGB"))

            out[name] = load
    return out


@functools.lru_cache(maxsize=4)
def load_photos(split: str) -> tuple[tuple[str, np.ndarray], ...]:
    """The decoded photos of one split, sorted by name.

    Returns
    -------
    tuple of (name, image) with image a uint8 array of shape (H, W, 3)
    """
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    loaders = _loaders()
    names = sorted(n for n, s in SPLITS.items() if s == split and n in loaders)
    if not names:
        raise AssetMissing(
            "no photos found: install scikit-image and scikit-learn with "
            "`pip install 'lowbit[models]'` (optionally `make photos` for 24 more)"
        )
    return tuple((n, _rgb(loaders[n]())) for n in names)


def _crop(img: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One random-resized crop (area 25-100 %, aspect 3/4-4/3) with a random flip.

    Returns a uint8 tensor of shape (3, size, size).
    """
    h, w = img.shape[:2]
    area = h * w * rng.uniform(0.25, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    patch = torch.from_numpy(img[top : top + ch, left : left + cw]).permute(2, 0, 1)
    patch = patch.unsqueeze(0).float()
    out = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)  # fmt: skip
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def photo_crops(split: str = "calib", size: int = 224, seed: int = 0,
                n: int | None = None) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """Seeded random crops of one split's photos, in a seeded order, as uint8.

    Crop ``i`` is cut from photo ``i % P`` (so every photo contributes equally); the crops are
    then shuffled with the same seed. Kept as uint8 (4x smaller than float) until a batch is used.

    Parameters
    ----------
    split : {"calib", "eval"}
    size : int
        Output side in pixels.
    seed : int
        Seeds the crop boxes, flips and order.
    n : int, optional
        Number of crops; default 1024 for "calib", 512 for "eval".

    Returns
    -------
    crops : torch.Tensor, uint8, shape (n, 3, size, size), RGB
    names : list of str, length n, the source photo of each crop
    """
    pics = load_photos(split)
    n = (1024 if split == "calib" else 512) if n is None else n
    rng = np.random.default_rng([seed, 0 if split == "calib" else 1])
    crops = [_crop(pics[i % len(pics)][1], size, rng) for i in range(n)]
    order = rng.permutation(n)
    return torch.stack(crops)[order], [pics[i % len(pics)][0] for i in order]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> float32 ImageNet-normalised (N, 3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def photos(split: str = "calib", size: int = 224, seed: int = 0, n: int | None = None) -> torch.Tensor:
    """ImageNet-normalised crops of real photos; "calib" and "eval" come from disjoint photos.

    See :func:`photo_crops` for the parameters. Returns float32 of shape (n, 3, size, size).
    """
    return normalize(photo_crops(split, size, seed, n)[0])
