"""The fused packed multipoint product (multipoint.h ``multipoint_qmatmul_*``): one native call
that runs the packed product of the N base + P point rows and folds the point rows back into
their channels. It must give the bits of the two-call path (``qmatmul`` then
``multipoint_fold``) on every path, bit width, ISA and thread count, and match the dense
dequantized reference (float tolerance, as tests/unit/test_qmatmul.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import run_with_threads

from lowbit import _native, reference

# (N base rows, P points, cols, group_size): ragged rows, ragged cols (per channel), groups, a
# point block crossing a 16-row tile, repeated channels, no points at all.
CASES = [
    (5, 3, 13, 0),
    (16, 7, 64, 0),
    (37, 12, 100, 0),
    (21, 11, 96, 32),
    (40, 1, 256, 64),
    (9, 0, 48, 16),
    (30, 40, 128, 128),
]
ACTS = {"f32": "f32", "dynamic": None, "a8_signed": (0.03, 128.0, 8), "a4": (0.3, 7.0, 4)}


def make(bits, N, P, cols, gs, seed):
    rng = np.random.default_rng(seed)
    rows = N + P
    q = rng.integers(0, 2**bits, size=(rows, cols), dtype=np.uint8)
    G = cols // gs if gs else 1
    s = rng.uniform(0.01, 0.1, size=(rows, G)).astype(np.float32)
    z = rng.integers(0, 2**bits, size=(rows, G)).astype(np.float32)
    channel = rng.integers(0, N, P).astype(np.int32)
    if P >= 3:
        channel[-2:] = channel[0]  # one channel with three points, folded in order
    bias = np.concatenate([rng.standard_normal(N), np.zeros(P)]).astype(np.float32)
    return _native.pack_weights(q, s, z, bits, gs), channel, bias


def fused(p, x, channel, bias, act):
    if act == "f32":
        return _native.multipoint_qmatmul(p, x, channel, bias)
    rs = None if act is None else _native.packed_row_sums(p)
    return _native.multipoint_qmatmul(p, x, channel, bias, int8=True, act=act, row_sums=rs)


def two_calls(p, x, channel, bias, act):
    y = _native.qmatmul(p, x, bias) if act == "f32" else _native.qmatmul_a8(p, x, act, bias)
    return _native.multipoint_fold(y, channel)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("M", [1, 5, 17])
def test_fused_equals_two_calls_and_reference(isa, bits, case, M):
    N, P, cols, gs = case
    p, channel, bias = make(bits, N, P, cols, gs, seed=bits * 1000 + N + M)
    x = np.random.default_rng(M).standard_normal((M, cols)).astype(np.float32)
    for name, act in ACTS.items():
        got = fused(p, x, channel, bias if M % 2 else None, act)
        assert got.shape == (M, N)
        want = two_calls(p, x, channel, bias if M % 2 else None, act)
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32), err_msg=name)
        ref_ext = (
            reference.qmatmul(*p.args(), x, bias if M % 2 else None)
            if act == "f32"
            else reference.qmatmul_a8(*p.args(), x, act, bias if M % 2 else None)
        )
        ref = reference.multipoint_fold(ref_ext, channel)
        scale = np.abs(ref).max() + 1e-3
        np.testing.assert_allclose(
            got, ref, rtol=0, atol=2e-5 * scale * np.sqrt(cols), err_msg=name
        )


def test_fused_equals_dense_dequantized_weight():
    """Against the folded dense weight W[:N] + scatter of W[N:]: the float product of x with it."""
    p, channel, bias = make(4, 33, 9, 160, 32, seed=7)
    q, s, z = _native.unpack_weights(p)
    G = s.shape[1]
    w = (q.astype(np.float64).reshape(42, G, -1) - z[:, :, None]) * s[:, :, None]
    w = w.reshape(42, 160)
    dense = w[:33].copy()
    np.add.at(dense, channel, w[33:])
    x = np.random.default_rng(1).standard_normal((3, 160)).astype(np.float32)
    got = _native.multipoint_qmatmul(p, x, channel, bias)
    np.testing.assert_allclose(got, x.astype(np.float64) @ dense.T + bias[:33], rtol=0, atol=1e-4)


@pytest.mark.parametrize("bits", [2, 4])
def test_fused_thread_count_invariance(bits):
    p, channel, bias = make(bits, 300, 29, 512, 64, seed=bits)
    x = np.random.default_rng(0).standard_normal((33, 512)).astype(np.float32)
    outs = run_with_threads(
        lambda: [fused(p, x[:m], channel, bias, act) for m in (1, 8, 33) for act in ACTS.values()],
        (1, 2, 3),
    )
    for n in (2, 3):
        for a, b in zip(outs[n], outs[1]):
            np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


def test_fused_errors():
    p, channel, bias = make(4, 10, 4, 32, 0, seed=0)
    x = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match="channel"):
        _native.multipoint_qmatmul(p, x, np.array([0, 1, 2, 10], np.int32))
    with pytest.raises(ValueError, match="channel"):
        _native.multipoint_qmatmul(p, x, np.array([0, -1, 2, 3], np.int32))
    with pytest.raises(ValueError, match="channel"):
        _native.multipoint_qmatmul(p, x, np.zeros(15, np.int32))
    with pytest.raises(ValueError, match="bias"):
        _native.multipoint_qmatmul(p, x, channel, bias[:10])
