"""C++ quant and Gram entries against their NumPy twins in reference.py."""

import numpy as np
import pytest

from lowbit import _native, reference

SHAPES = [(1, 7), (5, 1), (13, 24), (37, 53)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_matches_reference(bits, shape, symmetric):
    x = (np.random.default_rng(bits).standard_normal(shape) * 3).astype(np.float32)
    for rows in {1, shape[0]}:
        s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows)
        rs, rz = reference.lp_range_search(x, bits, symmetric=symmetric, rows=rows)
        # The chosen range: same candidate (pow may differ by an ulp, so compare the grid).
        np.testing.assert_allclose(s, rs, rtol=1e-6)
        np.testing.assert_array_equal(z, rz)
        q = _native.quantize(x, s, z, bits)
        np.testing.assert_array_equal(q, reference.quantize(x, s, z, bits))  # integer path: exact
        assert q.max() <= 2**bits - 1
        np.testing.assert_array_equal(_native.dequantize(q, s, z, bits), reference.dequantize(q, s, z, bits))
        np.testing.assert_array_equal(_native.fake_quantize(x, s, z, bits), reference.fake_quantize(x, s, z, bits))


def test_group_scales_and_idempotence():
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    s, z = _native.lp_range_search(x, 3, rows=6, groups=4)
    assert s.shape == (6, 4)
    fq = _native.fake_quantize(x, s, z, 3)
    np.testing.assert_array_equal(_native.fake_quantize(fq, s, z, 3), fq)


def test_range_search_beats_minmax_in_its_norm():
    x = np.random.default_rng(1).standard_normal((1, 4096)).astype(np.float32)
    s, z = _native.lp_range_search(x, 3)
    s0, z0 = _native.lp_range_search(x, 3, p=0)  # p <= 0: min-max
    err = lambda s, z: np.sum(np.abs(x - _native.fake_quantize(x, s, z, 3)).astype(np.float64) ** 2.4)  # noqa: E731
    assert err(s, z) <= err(s0, z0)


def test_boundary_refuses_bad_arrays():
    x = np.zeros((4, 8), np.float32)
    s = np.ones((4, 1), np.float32)
    with pytest.raises(TypeError):
        _native._C.quantize(x.astype(np.float64), s, s, 4, np.empty((4, 8), np.uint8))
    with pytest.raises(ValueError, match="out must have shape"):
        _native._C.quantize(x, s, s, 4, np.empty((4, 7), np.uint8))
    with pytest.raises(ValueError, match="bits"):
        _native.quantize(x, s, s, 9)


def test_hessian_loss_matches_reference():
    rng = np.random.default_rng(2)
    dW = rng.standard_normal((9, 17)).astype(np.float32)
    X = rng.standard_normal((50, 17)).astype(np.float32)
    H = np.zeros((17, 17), np.float32)
    _native.gram_accumulate(X, H)
    np.testing.assert_allclose(_native.hessian_loss(dW, H), reference.hessian_loss(dW, H), rtol=1e-4)


def test_gram_streamed_and_conv():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 27)).astype(np.float32)
    H = np.zeros((27, 27), np.float32)
    for part in np.split(X, 3):
        _native.gram_accumulate(part, H)
    # float32 sums of 300 terms of magnitude ~1: a few eps * n
    np.testing.assert_allclose(H, reference.gram(X), atol=300 * 1e-6)
    x = rng.standard_normal((2, 6, 9, 7)).astype(np.float32)
    Hc = np.zeros((2, 27, 27), np.float32)
    geo = dict(kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    _native.conv_gram_accumulate(x, Hc, **geo)
    rows = reference.im2col(x, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"], 2)
    for g in range(2):
        np.testing.assert_allclose(Hc[g], reference.gram(rows[g]), atol=1e-4)


def test_thread_count_invariance():
    x = np.random.default_rng(4).standard_normal((64, 300)).astype(np.float32)
    out = []
    for n in (1, 2):
        _native.set_num_threads(n)
        try:
            s, z = _native.lp_range_search(x, 4, rows=64)
            H = np.zeros((300, 300), np.float32)
            _native.gram_accumulate(x, H)
            out.append((s, z, H))
        finally:
            _native.set_num_threads(0)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
