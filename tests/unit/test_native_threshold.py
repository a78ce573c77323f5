"""C++ threshold quantizers (AQuant borders, N2UQ LTQ) against their twins in reference.py."""

import numpy as np
import pytest
import torch

from lowbit import _native, reference

BITS = [2, 3, 4, 5, 6, 7, 8]
# (C, outer, inner): per tensor, conv-like (N*C, H*W), linear-like (M*C, 1), ragged sizes, and rows
# longer than the kernels' 256-element blocks, the last one ragged.
LAYOUTS = [(1, 5, 13), (3, 4, 7), (5, 11, 1), (2, 1, 37), (2, 3, 300)]
EPS = 1e-3


def _x(rng, C, outer, inner, bits, zero=0.0):
    """Inputs spread over the whole grid and beyond it (both clamps), in units of a step 0.37."""
    qmax = 2**bits - 1
    v = rng.uniform(-2.0, qmax + 2.0, size=(outer * C, inner)) - zero
    return (v * 0.37).astype(np.float32)


def _border_param(rng, C, bits, affine):
    n = 2**bits - 1
    if affine:
        return np.stack([rng.normal(0, 0.3, C), rng.normal(0, 0.15, C)], 1).astype(np.float32)
    # some entries beyond the clamp, to exercise it
    return rng.normal(0, 0.35, (C, n)).astype(np.float32)


@pytest.fixture
def threads():
    """Run a body at 1 and at 2 threads; restores the previous setting."""
    before = _native.get_num_threads()
    yield
    _native.set_num_threads(before)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("affine", [False, True])
def test_border_forward_matches_reference(bits, layout, affine):
    C, outer, inner = layout
    rng = np.random.default_rng(bits * 100 + C)
    zero = 0.0 if C != 3 else 2.0  # one signed case with an integer zero point
    x = _x(rng, C, outer, inner, bits, zero)
    param = _border_param(rng, C, bits, affine)
    B = _native.border_table(param, bits, affine=affine, eps=EPS)
    np.testing.assert_array_equal(B, reference.border_table(param, bits, affine=affine, eps=EPS))
    assert B.min() >= EPS and B.max() <= 1 - EPS
    kw = dict(scale=0.37, zero=zero, tau=0.05)
    hard = _native.border_quant_forward(x, B, bits, hard=True, **kw)
    np.testing.assert_array_equal(hard, reference.border_quant_forward(x, B, bits, hard=True, **kw))
    codes = np.round(hard / np.float32(0.37) + zero)
    assert set(np.unique(codes)) <= set(range(2**bits))  # only the 2^b levels
    np.testing.assert_allclose(hard, (codes - zero).astype(np.float32) * np.float32(0.37), atol=1e-6)
    soft = _native.border_quant_forward(x, B, bits, hard=False, **kw)
    # float32 exp in C++ vs NumPy: a few ulp of the level, times the step
    np.testing.assert_allclose(soft, reference.border_quant_forward(x, B, bits, hard=False, **kw),
                               rtol=0, atol=4e-7 * 0.37 * 2**bits)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_border_backward_matches_torch_autograd(bits, layout, hard, affine):
    C, outer, inner = layout
    rng = np.random.default_rng(7 + bits)
    x = _x(rng, C, outer, inner, bits)
    param = _border_param(rng, C, bits, affine)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    kw = dict(scale=0.37, zero=0.0, tau=0.1, hard=hard)
    B = _native.border_table(param, bits, affine=affine, eps=EPS)
    gx, gB, gs = _native.border_quant_backward(x, gy, B, bits, **kw)
    gp = _native.border_table_backward(param, gB, bits, affine=affine, eps=EPS)

    xt = torch.tensor(x, requires_grad=True)
    pt = torch.tensor(param, requires_grad=True)
    st = torch.tensor([0.37], requires_grad=True)
    Bt = reference.border_table_torch(pt, bits, affine=affine, eps=EPS)
    out = reference.border_quant_torch(xt, Bt, st, bits, zero=0.0, tau=0.1, hard=hard)
    out.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(out.detach().numpy(), _native.border_quant_forward(x, B, bits, **kw),
                               atol=1e-6)
    np.testing.assert_allclose(gx, xt.grad.numpy(), atol=1e-6)  # STE: gy or 0, up to s/s rounding
    # sums of up to ~1000 terms in float32 (torch) vs double (C++)
    scale_p = float(np.abs(pt.grad.numpy()).max()) + 1
    np.testing.assert_allclose(gp, pt.grad.numpy(), rtol=1e-4, atol=1e-5 * scale_p)
    # d/ds terms are up to qmax each: float32 summation error ~ eps * sum |terms|
    np.testing.assert_allclose(gs, st.grad.item(), rtol=1e-4, atol=1e-6 * np.abs(gy).sum() * 2**bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ltq_forward_matches_reference(bits, layout):
    C, outer, inner = layout
    n = 2**bits - 1
    rng = np.random.default_rng(bits * 10 + C)
    x = (rng.uniform(-0.3, 1.3, (outer * C, inner))).astype(np.float32)
    start = rng.normal(0, 0.05, C).astype(np.float32)
    a = rng.uniform(0.2, 1.8, (C, n)).astype(np.float32) / n
    a[0, 0] = 1e-5  # one floored interval
    s1 = rng.uniform(0.8, 1.2, C).astype(np.float32)
    kw = dict(out_scale=1.3 / n, zero=0.0, a_min=1e-4, s1_min=1e-3)
    y = _native.ltq_forward(x, start, a, s1, bits, **kw)
    np.testing.assert_array_equal(y, reference.ltq_forward(x, start, a, s1, bits, **kw))
    codes = np.round(y / np.float32(kw["out_scale"]))
    assert set(np.unique(codes)) <= set(range(2**bits))
    t = _native.ltq_thresholds(start, a, s1, bits, a_min=1e-4, s1_min=1e-3)
    np.testing.assert_array_equal(t, reference.ltq_thresholds(start, a, s1, bits, a_min=1e-4, s1_min=1e-3))
    assert np.all(np.diff(t, axis=1) > 0)  # strictly increasing, the floored interval included


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ltq_backward_matches_torch_autograd(bits, layout):
    C, outer, inner = layout
    n = 2**bits - 1
    rng = np.random.default_rng(3 + bits + C)
    x = rng.uniform(-0.3, 1.3, (outer * C, inner)).astype(np.float32)
    start = rng.normal(0, 0.05, C).astype(np.float32)
    a = (rng.uniform(0.2, 1.8, (C, n)) / n).astype(np.float32)
    a[-1, 1] = 1e-6  # floored: zero gradient
    s1 = rng.uniform(0.8, 1.2, C).astype(np.float32)
    s1[0] = 1e-4 if C > 1 else s1[0]  # floored input scale on one channel
    gy = rng.standard_normal(x.shape).astype(np.float32)
    kw = dict(out_scale=1.1 / n, zero=1.0, a_min=1e-3 / n, s1_min=1e-3)
    gx, gst, ga, gs1, gs2 = _native.ltq_backward(x, gy, start, a, s1, bits, **kw)
    ts = [torch.tensor(v, requires_grad=True) for v in (x, start, a, s1, np.float32([kw["out_scale"]]))]
    out = reference.ltq_torch(*ts, bits, zero=1.0, a_min=kw["a_min"], s1_min=1e-3)
    np.testing.assert_array_equal(out.detach().numpy(), _native.ltq_forward(x, start, a, s1, bits, **kw))
    out.backward(torch.from_numpy(gy))
    assert ga[-1, 1] == 0 and ts[2].grad[-1, 1] == 0
    for mine, t in zip((gx, gst, ga, gs1), ts):
        ref = t.grad.numpy()
        np.testing.assert_allclose(mine, ref, rtol=2e-4, atol=2e-4 * (np.abs(ref).max() + 1))
    np.testing.assert_allclose(gs2, ts[4].grad.item(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bits", [2, 3])
def test_gste_equals_finite_difference_of_expected_stochastic_rounding(bits):
    """methods.md 4.1: the G-STE gradient is that of E[stochastic rounding within segments]."""
    n = 2**bits - 1
    rng = np.random.default_rng(11 + bits)
    C, outer, inner = 2, 6, 9
    x = rng.uniform(-0.2, 1.2, (outer * C, inner)).astype(np.float32)
    start = rng.normal(0, 0.05, C).astype(np.float32)
    a = (rng.uniform(0.3, 1.7, (C, n)) / n).astype(np.float32)
    s1 = rng.uniform(0.8, 1.2, C).astype(np.float32)
    s2 = 0.9 / n
    gy = rng.standard_normal(x.shape).astype(np.float32)
    kw = dict(zero=0.0, a_min=1e-4, s1_min=1e-3)
    gx, gst, ga, gs1, _ = _native.ltq_backward(x, gy, start, a, s1, bits, out_scale=s2, **kw)
    params = dict(x=x, start=start, a=a, in_scale=s1)

    def loss(**over):
        p = {k: over.get(k, v).astype(np.float64) for k, v in params.items()}
        e = reference.expected_stochastic_ltq(p["x"], p["start"], p["a"], p["in_scale"], s2, bits, **kw)
        return float(np.sum(gy.astype(np.float64) * e))

    h = 1e-5
    for name, grad in (("start", gst), ("a", ga), ("in_scale", gs1), ("x", gx)):
        base = params[name].astype(np.float64)
        fd = np.zeros(base.shape)
        idx_all = list(np.ndindex(base.shape))
        idx = idx_all if len(idx_all) <= 40 else [idx_all[i] for i in rng.choice(len(idx_all), 40, replace=False)]
        for idx_ in idx:
            up, dn = base.copy(), base.copy()
            up[idx_] += h
            dn[idx_] -= h
            fd[idx_] = (loss(**{name: up}) - loss(**{name: dn})) / (2 * h)
        got = np.array([grad[i] for i in idx])
        want = np.array([fd[i] for i in idx])
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * (np.abs(want).max() + 1e-3),
                                   err_msg=name)


def test_backward_thread_count_invariant(threads):
    rng = np.random.default_rng(5)
    bits, C = 3, 4
    n = 2**bits - 1
    x = _x(rng, C, 64, 300, bits)  # several work units per channel
    gy = rng.standard_normal(x.shape).astype(np.float32)
    B = _native.border_table(_border_param(rng, C, bits, False), bits, affine=False, eps=EPS)
    start = np.zeros(C, np.float32)
    a = np.full((C, n), 0.37, np.float32)
    s1 = np.ones(C, np.float32)
    results = []
    for t in (1, 2):
        _native.set_num_threads(t)
        r = [_native.border_quant_forward(x, B, bits, scale=0.37, zero=0.0, tau=0.1, hard=False)]
        r += list(_native.border_quant_backward(x, gy, B, bits, scale=0.37, zero=0.0, tau=0.1, hard=False))
        lk = dict(out_scale=0.37, zero=0.0, a_min=1e-3, s1_min=1e-3)
        r.append(_native.ltq_forward(x, start, a, s1, bits, **lk))
        r += list(_native.ltq_backward(x, gy, start, a, s1, bits, **lk))
        r.append(_native.threshold_quantize(x, _native.ltq_thresholds(start, a, s1, bits, a_min=1e-3, s1_min=1e-3), bits))
        results.append(r)
    for u, v in zip(*results):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_threshold_quantize_is_the_inference_form_of_both(bits):
    """Hard AQuant codes and LTQ codes equal the multi-threshold compare on exported thresholds."""
    rng = np.random.default_rng(bits)
    C, outer, inner = 3, 5, 17
    n = 2**bits - 1
    s, z = 0.37, 1.0
    x = _x(rng, C, outer, inner, bits, z)
    B = _native.border_table(_border_param(rng, C, bits, False), bits, affine=False, eps=EPS)
    t = (np.float32(s) * (np.arange(n, dtype=np.float32) + B - np.float32(z))).astype(np.float32)
    codes = _native.threshold_quantize(x, t, bits)
    np.testing.assert_array_equal(codes, reference.threshold_quantize(x, t, bits))
    y = _native.border_quant_forward(x, B, bits, scale=s, zero=z, tau=0.1, hard=True)
    from_b = np.round(y / np.float32(s) + z)
    # x/s + z >= k + B and x >= s (k + B - z) agree except within float rounding of a threshold
    near = np.min(np.abs(x[..., None] - t[np.arange(x.shape[0]) % C][:, None, :]), -1) < 1e-5
    assert np.array_equal(codes[~near], from_b[~near])
    start = np.float32([-0.1, 0.0, 0.05])
    a = (rng.uniform(0.3, 1.7, (C, n)) / n).astype(np.float32)
    s1 = np.ones(C, np.float32)
    y = _native.ltq_forward(x, start, a, s1, bits, out_scale=0.5, zero=0.0, a_min=1e-4, s1_min=1e-3)
    tl = _native.ltq_thresholds(start, a, s1, bits, a_min=1e-4, s1_min=1e-3)
    np.testing.assert_array_equal(np.round(y / np.float32(0.5)), _native.threshold_quantize(x, tl, bits))


def test_bad_arguments_are_named():
    x = np.zeros((6, 4), np.float32)
    B = np.full((3, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="B must have shape"):
        _native.border_quant_forward(x, B, 3, scale=1.0, zero=0.0, tau=0.1, hard=True)
    with pytest.raises(ValueError, match="scale must be > 0"):
        _native.border_quant_forward(x, B, 2, scale=0.0, zero=0.0, tau=0.1, hard=True)
    with pytest.raises(ValueError, match="not a multiple of C"):
        _native.border_quant_forward(np.zeros((5, 4), np.float32), B, 2, scale=1.0, zero=0.0, tau=0.1, hard=True)
    with pytest.raises(ValueError, match="zero must be an integer"):
        _native.border_quant_forward(x, B, 2, scale=1.0, zero=0.5, tau=0.1, hard=True)
    with pytest.raises(ValueError, match="NaN"):
        _native.border_quant_forward(np.full((6, 4), np.nan, np.float32), B, 2, scale=1.0, zero=0.0, tau=0.1, hard=True)
    with pytest.raises(ValueError, match="non-decreasing"):
        _native.threshold_quantize(x, np.float32([[0.0, 2.0, 1.0]]), 2)
    x_nan = np.linspace(-1, 2, 6 * 300, dtype=np.float32).reshape(6, 300)
    x_nan[4, 270] = np.nan  # in a row's last, ragged block
    with pytest.raises(ValueError, match="ltq_backward: x contains NaN"):
        _native.ltq_backward(x_nan, np.ones_like(x_nan), np.zeros(1, np.float32), np.full((1, 3), 0.5, np.float32),
                             np.ones(1, np.float32), 2, out_scale=1.0, zero=0.0, a_min=1e-3, s1_min=1e-3)
    with pytest.raises(ValueError, match="a must have shape"):
        _native.ltq_forward(x, np.zeros(1, np.float32), np.ones((1, 4), np.float32), np.ones(1, np.float32), 2,
                            out_scale=1.0, zero=0.0, a_min=1e-3, s1_min=1e-3)
    with pytest.raises(ValueError, match="eps"):
        _native.border_table(np.zeros((1, 3), np.float32), 2, affine=False, eps=0.6)
    with pytest.raises(TypeError):
        _native._C.border_quant_forward(x.astype(np.float64), B, 2, 1.0, 0.0, 0.1, True, np.empty((6, 4), np.float32))
