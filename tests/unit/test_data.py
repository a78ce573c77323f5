"""The offline data loaders and the zoo's task plumbing (no training, no big models)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from lowbit import data, zoo
from lowbit.data._fashion_mnist import read_idx
from lowbit.data._wordnet import parse_gloss


def write_idx(path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_refuses_bad_files(tmp_path):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "short.gz", "wb") as f:  # header says 2x3x5, payload is shorter
        f.write(struct.pack(">BBBB3I", 0, 0, 8, 3, 2, 3, 5) + bytes(7))
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "short.gz")
    with gzip.open(tmp_path / "float.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 0x0D, 1, 1) + bytes(4))
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "float.gz")


def test_fashion_mnist_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_FASHION_MNIST_DIR", str(tmp_path))
    from lowbit.data import _fashion_mnist as fm

    fm._load_u8.cache_clear()
    try:
        with pytest.raises(data.AssetMissing, match="dataset-fashion-mnist"):
            data.fashion_mnist("train")
        with pytest.raises(ValueError, match="split"):
            data.fashion_mnist("valid")
    finally:
        fm._load_u8.cache_clear()


def test_fashion_mnist_shapes():
    try:
        x, y = data.fashion_mnist("test")
    except data.AssetMissing as e:
        pytest.skip(str(e))
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert sorted(set(y.tolist())) == list(range(10))


def test_parse_gloss():
    d, ex = parse_gloss('a young person of either sex; "she writes books for children"; "they\'re just kids"  ')
    assert d == "a young person of either sex"
    assert ex == ["she writes books for children", "they're just kids"]
    assert parse_gloss("no examples here") == ("no examples here", [])


def test_wordnet_splits_are_disjoint_and_seeded():
    try:
        s_eval, g_eval = data.wordnet_retrieval(200, seed=0, split="eval")
    except data.AssetMissing as e:
        pytest.skip(str(e))
    s_cal, g_cal = data.wordnet_retrieval(200, seed=0, split="calib")
    assert not set(g_eval) & set(g_cal)
    assert data.wordnet_retrieval(200, seed=0)[0] == s_eval
    assert data.wordnet_retrieval(200, seed=1)[0] != s_eval
    with pytest.raises(ValueError, match="n must be"):
        data.wordnet_retrieval(0)


def test_digits():
    pytest.importorskip("sklearn")
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and float(x.max()) <= 1.0 and y.shape == (1797,)


def test_load_task_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*fmnist-resnet"):
        zoo.load_task("resnet50")
    with pytest.raises(ValueError, match="num_calib"):
        zoo.load_task("fmnist-resnet", num_calib=0)
    assert zoo.list_models() == ["fmnist-resnet", "mobilenet_v2", "minilm"]


def test_mobilenet_v2_matches_torchvision_layout():
    """Every torchvision key loads strictly (load_state_dict is strict), and the shape is right."""
    try:
        model = zoo.mobilenet_v2()
    except data.AssetMissing as e:
        pytest.skip(str(e))
    import torch

    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert n_conv == 52
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)


def _minilm_or_skip():
    try:
        return zoo.minilm()
    except data.AssetMissing as e:
        pytest.skip(str(e))


def test_minilm_loads_quietly_and_restores_transformers_logging(capfd):
    import transformers

    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    model = _minilm_or_skip()
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "Loading weights" not in out + err, out + err
    assert (log.get_verbosity(), log.is_progress_bar_enabled()) == (verbosity, bar)
    assert sum(type(m).__name__ == "Linear" for m in model.modules()) == 36


def test_minilm_refuses_a_checkpoint_that_does_not_fit(monkeypatch):
    _minilm_or_skip()
    import transformers

    real = transformers.BertModel.from_pretrained

    def missing_a_key(*args, **kwargs):
        bert, info = real(*args, **kwargs)
        return bert, {**info, "missing_keys": ["encoder.layer.0.output.dense.weight"]}

    monkeypatch.setattr(transformers.BertModel, "from_pretrained", missing_a_key)
    with pytest.raises(RuntimeError, match=r"transformers .* does not load .*missing.*output\.dense"):
        zoo.minilm()


def test_minilm_shows_transformers_report_when_it_refuses_the_checkpoint(monkeypatch):
    """A load transformers refuses runs again with its logging as it was (its report shown)."""
    _minilm_or_skip()
    import transformers

    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    seen = []

    def refuse(*args, **kwargs):
        seen.append((log.get_verbosity(), log.is_progress_bar_enabled()))
        raise RuntimeError("size mismatch, look at the above report")

    monkeypatch.setattr(transformers.BertModel, "from_pretrained", refuse)
    with pytest.raises(RuntimeError, match="size mismatch"):
        zoo.minilm()
    assert seen == [(log.ERROR, False), (verbosity, bar)]
    assert (log.get_verbosity(), log.is_progress_bar_enabled()) == (verbosity, bar)
