"""Packed-weight products (qmatmul.h) at every ISA level this machine has, against the scalar
_ref kernels (bit for bit) and the NumPy twins in reference.py (float tolerance).

Tolerances: the NumPy twin computes in float64; the kernels accumulate in float32 with fma, so
the difference is bounded by a few K * eps32 * sum_k |w_k x_k| (here: rtol 2e-5 of the scale of
the output, which is loose enough for K <= 1024 and far below one quantization level).
"""

from __future__ import annotations

import numpy as np
import pytest

from lowbit import _native, reference

# (rows, cols, group_size): ragged rows (not a multiple of 16), ragged cols (per channel),
# several groups, a single tile, a single column.
SHAPES = [(1, 1, 0), (5, 13, 0), (16, 64, 0), (37, 100, 0), (21, 96, 32), (40, 256, 64), (17, 128, 128),
          (3, 48, 16)]
BITS = [2, 3, 4, 8]




def with_threads(fn, counts=(1, 2)):
    """{n: fn() with n kernel threads}; the default (0 = OpenMP's) is restored afterwards."""
    out = {}
    try:
        for n in counts:
            _native.set_num_threads(n)
            out[n] = fn()
    finally:
        _native.set_num_threads(0)
    return out


def make(bits, rows, cols, group_size, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2**bits, size=(rows, cols), dtype=np.uint8)
    G = cols // group_size if group_size else 1
    s = rng.uniform(0.01, 0.1, size=(rows, G)).astype(np.float32)
    z = rng.integers(0, 2**bits, size=(rows, G)).astype(np.float32)
    return _native.pack_weights(q, s, z, bits, group_size)


def run_all(p, x, bias, acts):
    out = {"f32": _native.qmatmul(p, x, bias)}
    for name, act in acts.items():
        out[name] = _native.qmatmul_a8(p, x if name != "a8_relu" else np.maximum(x, 0), act, bias)
    return out


ACTS = {"dynamic": None, "a8_relu": (0.02, 0.0, 8), "a8_signed": (0.03, 128.0, 8), "a4": (0.3, 7.0, 4),
        "a2": (0.5, 1.0, 2)}


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("M", [1, 3, 9, 17])
def test_matches_reference(isa, bits, shape, M):
    rows, cols, gs = shape
    p = make(bits, rows, cols, gs, seed=bits * 100 + rows)
    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32) if M % 2 else None
    got = run_all(p, x, bias, ACTS)
    want = {"f32": reference.qmatmul(*p.args(), x, bias)}
    for name, act in ACTS.items():
        want[name] = reference.qmatmul_a8(*p.args(), x if name != "a8_relu" else np.maximum(x, 0), act, bias)
    for name in got:
        scale = np.abs(want[name]).max() + 1e-3
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-5 * scale * np.sqrt(cols), err_msg=name)
    if isa != "scalar":  # every SIMD variant gives the scalar kernels' bits
        _native.set_isa("scalar")
        ref = run_all(p, x, bias, ACTS)
        _native.set_isa(isa)
        for name in got:
            np.testing.assert_array_equal(got[name].view(np.int32), ref[name].view(np.int32), err_msg=name)


@pytest.mark.parametrize("bits", BITS)
def test_static_int8_path_is_exact_integer_arithmetic(isa, bits):
    """With integer-valued scales the float epilogue is exact too: the result is an integer."""
    rng = np.random.default_rng(bits)
    rows, cols = 19, 160
    q = rng.integers(0, 2**bits, size=(rows, cols), dtype=np.uint8)
    s = np.ones((rows, 1), np.float32)
    z = rng.integers(0, 2**bits, size=(rows, 1)).astype(np.float32)
    p = _native.pack_weights(q, s, z, bits)
    codes = rng.integers(0, 256, size=(4, cols))
    x = ((codes - 100) * 0.25).astype(np.float32)  # exactly on the grid of (scale 0.25, zero 100)
    y = _native.qmatmul_a8(p, x, (0.25, 100.0, 8))
    exact = ((codes - 100) @ (q.astype(np.int64) - z.astype(np.int64)).T) * 0.25
    np.testing.assert_array_equal(y, exact.astype(np.float32))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(300, 512, 64), (45, 200, 0)], ids=["300x512g64", "45x200ch"])
def test_threads_give_identical_bits(isa, bits, shape):
    """1 and 2 threads (and 3: an uneven split) give the same bits on every path."""
    p = make(bits, *shape)
    x = np.random.default_rng(0).standard_normal((33, shape[1])).astype(np.float32)

    def run():
        return (_native.qmatmul(p, x), _native.qmatmul(p, x[:1]), _native.qmatmul_a8(p, x),
                _native.qmatmul_a8(p, x, (0.05, 3.0, 8)), _native.packed_row_sums(p),
                _native.pack_weights(*_native.unpack_weights(p), bits, shape[2]).codes)

    outs = with_threads(run, (1, 2, 3))
    for n in (2, 3):
        for a, b in zip(outs[n], outs[1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("M", [64, 130])
def test_gemm_batches(isa, bits, M):
    """GEMM-sized batches (many register tiles plus a ragged last one) against the scalar bits."""
    p = make(bits, 50, 192, 64, seed=M)
    x = np.random.default_rng(M).standard_normal((M, 192)).astype(np.float32)
    bias = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    got = run_all(p, x, bias, ACTS)
    np.testing.assert_allclose(got["f32"], reference.qmatmul(*p.args(), x, bias), rtol=0,
                               atol=2e-5 * np.abs(got["f32"]).max() * np.sqrt(192))
    _native.set_isa("scalar")
    ref = run_all(p, x, bias, ACTS)
    _native.set_isa(isa)
    for name in got:
        np.testing.assert_array_equal(got[name].view(np.int32), ref[name].view(np.int32), err_msg=name)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES + [(33, 257, 0), (18, 384, 128)], ids=lambda s: "x".join(map(str, s)))
def test_pack_matches_numpy_twin(bits, shape):
    """C++ pack_weights writes exactly the bytes of reference.pack_weights; both unpackers give
    the codes, scales and zero points back."""
    rows, cols, gs = shape
    rng = np.random.default_rng(bits + rows)
    q = rng.integers(0, 2**bits, size=(rows, cols), dtype=np.uint8)
    G = cols // gs if gs else 1
    for R in {1, rows}:  # per-tensor parameters broadcast to every row
        s = rng.uniform(0.01, 0.1, size=(R, G)).astype(np.float32)
        z = rng.integers(0, 2**bits, size=(R, G)).astype(np.float32)
        p = _native.pack_weights(q, s, z, bits, gs)
        want = reference.pack_weights(q, s, z, bits, gs)
        for got_a, want_a, name in zip(p.args()[:3], want, ("codes", "scales", "zeros")):
            assert got_a.shape == want_a.shape, name
            np.testing.assert_array_equal(got_a, want_a, err_msg=name)
        for q2, s2, z2 in (_native.unpack_weights(p), reference.unpack_weights(*p.args())):
            np.testing.assert_array_equal(q2, q)
            np.testing.assert_array_equal(s2, np.broadcast_to(s, (rows, G)))
            np.testing.assert_array_equal(z2, np.broadcast_to(z, (rows, G)))
    lay = _native.packed_layout(bits, rows, cols, gs)
    assert {k: lay[k] for k in reference.packed_layout(bits, rows, cols, gs)} == reference.packed_layout(bits, rows, cols, gs)


def test_pack_refuses_bad_input():
    q = np.zeros((4, 32), np.uint8)
    one = np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match="packed formats exist for 2, 3, 4 and 8 bits"):
        _native.pack_weights(q, one, 0 * one, 5)
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        _native.pack_weights(q + 4, one, 0 * one, 2)
    with pytest.raises(ValueError, match="zero points must be integers"):
        _native.pack_weights(q, one, one + 0.5, 4)
    with pytest.raises(ValueError, match="zero points must be integers"):
        _native.pack_weights(q, one, one * 16, 4)
    with pytest.raises(ValueError, match="scale must be finite"):
        _native.pack_weights(q, one * np.inf, 0 * one, 4)
    with pytest.raises(ValueError, match="group_size must be a multiple of 16"):
        _native.pack_weights(q, np.ones((4, 4), np.float32), np.zeros((4, 4), np.float32), 4, 8)
    with pytest.raises(ValueError, match="does not divide"):
        _native.pack_weights(np.zeros((4, 40), np.uint8), np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32), 4, 16)
    with pytest.raises(ValueError, match="groups per row"):
        _native.pack_weights(q, one, 0 * one, 4, 16)


def test_row_sums_matches_reference():
    for bits in BITS:
        p = make(bits, 37, 96, 32)
        np.testing.assert_allclose(_native.packed_row_sums(p), reference.packed_row_sums(*p.args()), rtol=1e-5)


def test_empty_batch_and_shapes_refused():
    p = make(4, 20, 64, 0)
    assert _native.qmatmul(p, np.zeros((0, 64), np.float32)).shape == (0, 20)
    with pytest.raises(ValueError, match="x must have shape"):
        _native._C.qmatmul_f32(*p.args(), np.zeros((2, 63), np.float32), None, np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match="y must have shape"):
        _native._C.qmatmul_f32(*p.args(), np.zeros((2, 64), np.float32), None, np.zeros((2, 21), np.float32))
    with pytest.raises(ValueError, match="bias must have shape"):
        _native._C.qmatmul_f32(*p.args(), np.zeros((2, 64), np.float32), np.zeros(3, np.float32),
                               np.zeros((2, 20), np.float32))
    with pytest.raises(TypeError):  # float64 is refused, never copied
        _native._C.qmatmul_f32(*p.args(), np.zeros((2, 64)), None, np.zeros((2, 20), np.float32))
    with pytest.raises(TypeError):
        _native._C.qmatmul_f32(*p.args(), np.zeros((64, 2), np.float32).T, None, np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match="codes must have shape"):
        _native._C.qmatmul_f32(p.codes[:-1], *p.args()[1:], np.zeros((2, 64), np.float32), None,
                               np.zeros((2, 20), np.float32))
    with pytest.raises(ValueError, match="scales must have shape"):
        _native._C.qmatmul_f32(p.codes, p.scales[:, :, :8].copy(), *p.args()[2:], np.zeros((2, 64), np.float32),
                               None, np.zeros((2, 20), np.float32))


def test_activation_quantizer_checked():
    p = make(4, 20, 64, 0)
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="zero point must be an integer"):
        _native.qmatmul_a8(p, x, (0.1, 2.5, 8))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        _native.qmatmul_a8(p, x, (0.0, 0.0, 8))
    with pytest.raises(ValueError, match="activation bits"):
        _native.qmatmul_a8(p, x, (0.1, 0.0, 9))


def test_int32_overflow_guard():
    p = _native.pack_weights(np.zeros((1, 40000), np.uint8), np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32), 8)
    with pytest.raises(ValueError, match="overflow int32"):
        _native.qmatmul_a8(p, np.zeros((1, 40000), np.float32))
    assert _native.qmatmul(p, np.zeros((1, 40000), np.float32)).shape == (1, 1)  # fp32 path has no limit
