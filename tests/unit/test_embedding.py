"""Quantized embeddings (``quantize(..., embedding_bits=b)``): the C++ row decoder against the
unpacked reference, the fake-quant / packed / saved forms against each other, and the policy
(which tables are planned, what is refused)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import _native
from lowbit.bench import float_twin, weight_bytes
from lowbit.pack import PackedEmbedding, PackedLinear
from lowbit.quantizers import QuantEmbedding, QuantLinear, dequantize_codes


@st.composite
def packed_tables(draw):
    """(packed table, dense reference (rows, cols), row index): every packed bit width, ragged
    row and column counts, per-row or per-group scales, repeated and boundary indices."""
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    rows = draw(st.integers(1, 40))
    grouped = draw(st.booleans())
    cols = 16 * draw(st.integers(1, 4)) if grouped else draw(st.integers(1, 70))
    group_size = draw(st.sampled_from([g for g in (16, 32, 64) if cols % g == 0])) if grouped else 0
    G = cols // group_size if grouped else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    q = rng.integers(0, 1 << bits, size=(rows, cols)).astype(np.uint8)
    scale = rng.uniform(1e-3, 2.0, size=(rows, G)).astype(np.float32)
    zero = rng.integers(0, 1 << bits, size=(rows, G)).astype(np.float32)
    p = _native.pack_weights(q, scale, zero, bits, group_size)
    ref = dequantize_codes(torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(zero)).numpy()
    index = draw(st.lists(st.integers(0, rows - 1), min_size=0, max_size=50))
    return p, ref, np.array(index + [0, rows - 1], dtype=np.int64)


@settings(deadline=None, max_examples=60)
@given(packed_tables())
def test_dequantize_rows_matches_the_unpacked_table(case):
    p, ref, index = case
    got = _native.dequantize_rows(p, index)
    assert got.shape == (len(index), p.cols)
    np.testing.assert_array_equal(got, ref[index])  # (q - z) * s in float32 both ways: bit-exact


def test_dequantize_rows_refuses_out_of_range_rows_and_ignores_threads():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, size=(37, 48)).astype(np.uint8)
    p = _native.pack_weights(q, np.full((37, 1), 0.5, np.float32), np.full((37, 1), 8.0, np.float32), 4)
    for bad in (37, -1, 2**32 + 3):  # the last would wrap to 3 in int32
        with pytest.raises(ValueError, match=f"row index {bad} is out of range for 37 rows"):
            _native.dequantize_rows(p, np.array([0, bad]))
    assert _native.dequantize_rows(p, np.zeros(0, np.int64)).shape == (0, 48)
    index = rng.integers(0, 37, size=500)
    outs = []
    try:
        for n in (1, 2):
            _native.set_num_threads(n)
            outs.append(_native.dequantize_rows(p, index))
    finally:
        _native.set_num_threads(0)
    np.testing.assert_array_equal(outs[0], outs[1])


class TinyLM(nn.Module):
    """Token and position lookups feeding two Linear layers: a language model in miniature."""

    def __init__(self, vocab: int = 203, dim: int = 48, max_norm: float | None = None):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=0, max_norm=max_norm)
        self.pos = nn.Embedding(16, dim)
        self.fc = nn.Linear(dim, 32)
        self.out = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.out(torch.relu(self.fc(h))).mean(1)


def tiny_lm(**kw):
    torch.manual_seed(0)
    model = TinyLM(**kw).eval()
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 203, (8, 12), generator=gen) for _ in range(4)]
    return model, calib


def quantize_lm(model, calib, **kw):
    kw = {"w_bits": 4, "embedding_bits": 4, "num_samples": 32, "progress": False, **kw}
    return lowbit.quantize(model, calib, "nearest", **kw)


def test_embedding_bits_quantizes_the_lookups_that_run():
    model, calib = tiny_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_lm(model, calib, embedding_bits=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched
    assert isinstance(q.tok, QuantEmbedding) and isinstance(q.pos, QuantEmbedding) and isinstance(q.fc, QuantLinear)
    assert q.tok.w_bits == 3 and q.tok.granularity == "channel" and q.tok.padding_idx == 0
    rep = q.lowbit_report
    assert rep["tok"].type == "Embedding" and rep["tok"].w_bits == 3 and rep["tok"].a_bits is None
    assert 0 < rep["tok"].weight_mse < float((model.tok.weight.detach() ** 2).mean())
    assert rep.meta["embedding_bits"] == 3
    # The first / last computing layers keep 8 bits; the lookups do not count as first.
    assert rep["fc"].w_bits == 8 and rep["out"].w_bits == 8
    ids = calib[0]
    with torch.no_grad():
        looked_up = q.tok(ids)
        assert torch.equal(looked_up, nn.functional.embedding(ids, q.tok.weight))
        # The rounding really is 3-bit nearest on a per-row grid: at most 2^3 levels per row.
        assert max(len(torch.unique(row)) for row in q.tok.weight) <= 8
        assert torch.equal(q(ids), float_twin(q)(ids))


def test_embeddings_stay_float_by_default_and_follow_ignore():
    model, calib = tiny_lm()
    assert isinstance(quantize_lm(model, calib, embedding_bits=None).tok, nn.Embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignore pattern naming a lookup matches something
        q = quantize_lm(model, calib, ignore=["pos"])
    assert isinstance(q.pos, nn.Embedding) and isinstance(q.tok, QuantEmbedding)
    q = quantize_lm(model, calib, overrides={nn.Embedding: {"w_bits": 8, "a_bits": 4}})
    assert q.tok.w_bits == 8 and q.tok.a_bits is None  # a lookup has no input to quantize
    q = quantize_lm(model, calib, granularity="group", group_size=16)
    assert q.tok.group_size == 16


def test_embedding_errors():
    model, calib = tiny_lm()
    with pytest.raises(ValueError, match="embedding_bits"):
        quantize_lm(model, calib, embedding_bits=9)
    with pytest.warns(UserWarning, match="layer 'tok': max_norm"):
        q = quantize_lm(*tiny_lm(max_norm=1.0))
    assert isinstance(q.tok, nn.Embedding)
    q = quantize_lm(model, calib)
    p = lowbit.pack(q)
    for m in (q, p):
        with pytest.raises(IndexError, match="203"):
            m.tok(torch.tensor([[1, 203]]))
        with pytest.raises(IndexError):
            m.tok(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="no input activation quantizer and no bias"):
        QuantEmbedding(4, 16, codes=torch.zeros(4, 16), scale=torch.ones(4, 1), zero=torch.zeros(4, 1), w_bits=4,
                       bias=torch.zeros(4))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_and_saved_embeddings_are_bit_exact(tmp_path, bits):
    model, calib = tiny_lm()
    q = quantize_lm(model, calib, embedding_bits=bits)
    p = lowbit.pack(q)
    assert isinstance(p.tok, PackedEmbedding) and isinstance(p.fc, PackedLinear) and p.tok.path == "lookup"
    ids = torch.cat(calib)
    with torch.no_grad():
        assert torch.equal(p.tok(ids), q.tok(ids))
        assert torch.equal(p.tok(ids.int()), q.tok(ids))
        assert torch.allclose(p(ids), q(ids), atol=1e-5)
    for m in (q, p):
        path = tmp_path / f"{type(m.tok).__name__}.lowbit"
        lowbit.save(m, path)
        back = lowbit.load(path, TinyLM())
        assert type(back.tok) is type(m.tok) and back.tok.w_bits == bits and back.tok.padding_idx == 0
        with torch.no_grad():
            assert torch.equal(back(ids), m(ids))
    # Stored at the bits: against float tables, the file shrinks by the tables' float bytes less
    # their codes and per-row scale and zero (two more report rows in the metadata aside).
    float_tables = tmp_path / "float_tables.lowbit"
    lowbit.save(quantize_lm(model, calib, embedding_bits=None), float_tables)
    rows = 203 + 16
    saved = float_tables.stat().st_size - (tmp_path / "QuantEmbedding.lowbit").stat().st_size
    assert saved > 0.95 * (rows * 48 * 4 - rows * 48 * bits / 8 - rows * 8)


def test_load_refuses_a_table_of_another_shape(tmp_path):
    model, calib = tiny_lm()
    path = tmp_path / "q.lowbit"
    lowbit.save(lowbit.pack(quantize_lm(model, calib)), path)
    with pytest.raises(lowbit.io.LowbitFileError, match="layer 'tok' does not match"):
        lowbit.load(path, TinyLM(vocab=300))


def test_weight_bytes_count_the_table_codes():
    model, calib = tiny_lm()
    plain = weight_bytes(quantize_lm(model, calib, embedding_bits=None))
    packed_table = weight_bytes(lowbit.pack(quantize_lm(model, calib)))
    assert packed_table < plain - 203 * 48 * 3  # 4 of 32 bits: about 7/8 of the token table saved


class ScaledEmbedding(nn.Embedding):
    """A token table that scales its rows (as Gemma's and BART's do): not a plain lookup."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * 8.0


class TiedLM(nn.Module):
    """One table under two names (an encoder and a decoder sharing it), plus a scaled table."""

    def __init__(self):
        super().__init__()
        shared = nn.Embedding(203, 48)
        self.enc, self.dec = nn.ModuleDict({"tok": shared}), nn.ModuleDict({"tok": shared})
        self.scaled = ScaledEmbedding(203, 48)
        self.fc = nn.Linear(48, 32)
        self.out = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.enc["tok"](ids) + self.dec["tok"](ids.flip(1)) + self.scaled(ids)
        return self.out(torch.relu(self.fc(h))).mean(1)


def test_tied_tables_are_swapped_under_every_name_and_custom_lookups_stay_float(tmp_path):
    torch.manual_seed(0)
    model = TiedLM().eval()
    _, calib = tiny_lm()
    with pytest.warns(UserWarning, match="layer 'scaled': ScaledEmbedding has its own forward"):
        q = quantize_lm(model, calib)
    assert isinstance(q.enc["tok"], QuantEmbedding) and q.dec["tok"] is q.enc["tok"]
    assert type(q.scaled) is ScaledEmbedding
    assert [r.name for r in q.lowbit_report.layers if r.type == "Embedding"] == ["enc.tok"]
    p = lowbit.pack(q)
    assert isinstance(p.dec["tok"], PackedEmbedding) and p.dec["tok"] is p.enc["tok"]
    ids = torch.cat(calib)
    with torch.no_grad():
        assert torch.allclose(p(ids), q(ids), atol=1e-5)
    for m in (q, p):
        path = tmp_path / f"{type(m.enc['tok']).__name__}.lowbit"
        lowbit.save(m, path)
        back = lowbit.load(path, TiedLM())
        assert back.dec["tok"] is back.enc["tok"] and type(back.enc["tok"]) is type(m.enc["tok"])
        with torch.no_grad():
            assert torch.equal(back(ids), m(ids))


def test_ids_of_other_dtypes_are_refused():
    model, calib = tiny_lm()
    q = quantize_lm(model, calib)
    for m in (q, lowbit.pack(q)):
        with pytest.raises(TypeError, match="int64 or int32, got torch.uint8"):
            m.tok(torch.full((5,), 7, dtype=torch.uint8))


class Outer(nn.Module):
    """TinyLM as one block whose input is the token ids, then a head."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lm(ids))


@pytest.mark.parametrize("method", ["n2uq", "aquant"])
@pytest.mark.parametrize("embedding_bits", [None, 4])
def test_block_methods_take_token_ids_as_block_input(method, embedding_bits):
    """Block reconstruction keeps integer block inputs integer (QDrop has nothing to drop)."""
    lm, calib = tiny_lm()
    model = Outer(lm).eval()
    q = lowbit.quantize(model, calib, method, config={"iters": 20}, w_bits=3, a_bits=8, embedding_bits=embedding_bits,
                        num_samples=32, progress=False, keep_first_last=None)
    assert {r.name: r.method for r in q.lowbit_report.layers}["lm.fc"] == method
    with torch.no_grad():
        assert torch.isfinite(q(calib[0])).all()
