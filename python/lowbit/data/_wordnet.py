"""A sentence-to-definition retrieval task built from WordNet 3.0 nouns (Debian ``wordnet-base``).

A noun synset line in ``data.noun`` ends with ``| <definition>; "<example>"; "<example>"``.
The 8,743 noun synsets that carry a quoted example give pairs (first example, definition); the
task is to find each example's definition among N candidate definitions.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from ._common import require

INSTALL = "sudo apt-get install -y wordnet-base (Debian/Ubuntu), or set LOWBIT_WORDNET_DIR"
_QUOTED = re.compile(r'"([^"]+)"')
_SPLIT_SEED = 20240  # fixes which synsets are for evaluation and which for calibration, forever


def _data_noun() -> Path:
    root = Path(os.environ.get("LOWBIT_WORDNET_DIR", "/usr/share/wordnet"))
    return require(root / "data.noun", "WordNet 3.0 (data.noun)", INSTALL)


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a WordNet gloss into (definition, [quoted examples])."""
    first_quote = gloss.find('"')
    definition = gloss if first_quote < 0 else gloss[:first_quote]
    return definition.strip().rstrip(";").strip(), _QUOTED.findall(gloss)


@functools.lru_cache(maxsize=1)
def noun_pairs() -> tuple[tuple[str, str], ...]:
    """All (first example sentence, definition) pairs of WordNet nouns, in file order.

    Synsets whose definition is shared with another synset are dropped, so every pair's
    definition is a unique right answer.
    """
    pairs = []
    with open(_data_noun(), encoding="utf-8") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:  # the licence header lines
                continue
            definition, examples = parse_gloss(line.split("|", 1)[1])
            if definition and examples:
                pairs.append((examples[0].strip(), definition))
    counts: dict[str, int] = {}
    for _, d in pairs:
        counts[d] = counts.get(d, 0) + 1
    return tuple(p for p in pairs if counts[p[1]] == 1)


def wordnet_retrieval(n: int = 1000, seed: int = 0,
                      split: str = "eval") -> tuple[list[str], list[str]]:  # fmt: skip
    """``n`` (example sentence, definition) pairs: sentence ``i`` belongs to definition ``i``.

    The pairs are split once, by a fixed permutation, into an "eval" half and a "calib" half
    with no synset in common; ``seed`` then picks which ``n`` pairs of the half, in which order.

    Parameters
    ----------
    n : int
        Number of pairs (at most the size of the half, about 4,300).
    seed : int
    split : {"eval", "calib"}

    Returns
    -------
    sentences : list of str, length n
    glosses : list of str, length n (definitions, examples removed)
    """
    if split not in ("eval", "calib"):
        raise ValueError(f"split must be 'eval' or 'calib', got {split!r}")
    pairs = noun_pairs()
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(pairs))
    half = perm[: len(perm) // 2] if split == "eval" else perm[len(perm) // 2 :]
    if not 0 < n <= len(half):
        raise ValueError(f"n must be in 1..{len(half)}, got {n}")
    pick = half[np.random.default_rng(seed).permutation(len(half))[:n]]
    return [pairs[i][0] for i in pick], [pairs[i][1] for i in pick]
