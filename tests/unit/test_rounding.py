"""AdaRound's C++ layer engine (rounding.h) against the NumPy reference.

Tolerances: the engine computes in float32 and the reference in float64. Elementwise results
(V, m, v after a step) agree to a few float32 ulps (rtol 1e-5). Losses and gradients are sums
over n*d products: the float32 error is about eps * sqrt(n d) relative to the sum's magnitude,
and the Gram form subtracts terms of similar size, so the tests pick layers whose loss is not
tiny next to those terms and check 1e-5 relative (norm-wise for gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit import _native as N
from lowbit import reference as R
from lowbit.threshold import N2UQWeightQuantizer


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


SCHED = dict(iters=100, warmup=0.2, beta_start=20.0, beta_end=2.0, reg_lambda=0.01, lr=1e-3,
             adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8)


def native_schedule(sched=SCHED):
    return N.rounding_schedule(sched["iters"], warmup=sched["warmup"],
                               beta=(sched["beta_start"], sched["beta_end"]),
                               reg_lambda=sched["reg_lambda"], lr=sched["lr"])


def make_layer(rng, o, d, bits=3):
    W = (rng.standard_normal((o, d)) * 0.3).astype(np.float32)
    s, z = N.lp_range_search(W, bits, rows=o)
    return W, s, z


def linear_problem(rng, o=8, d=12, n=40, P=3, noise=0.05, x_scale=1.0):
    """Linear layer with FP inputs X (n, P, d), quantized-network inputs Xq, targets Y."""
    W, s, z = make_layer(rng, o, d)
    X = (x_scale * rng.standard_normal((n, P, d))).astype(np.float32)
    Xq = (X + noise * rng.standard_normal(X.shape)).astype(np.float32)
    Y = (X @ W.T).astype(np.float32)
    return W, s, z, X, Xq, Y


def grams(X, Xq, W):
    """H = Xq^T Xq, C = Xq^T X (float32 through the C++ Gram), c0 = tr(W X^T X W^T)."""
    d = X.shape[-1]
    Xr, Xqr = X.reshape(-1, d), Xq.reshape(-1, d)
    H = np.zeros((d, d), np.float32)
    C = np.zeros((d, d), np.float32)
    N.gram_accumulate(Xqr, H)
    N.cross_gram_accumulate(Xqr, Xr, C)
    Y = Xr.astype(np.float64) @ W.T.astype(np.float64)
    return H, C, float(np.sum(Y * Y)), Xr.shape[0]


def perturbed_v(rng, W, s, z, bits=3):
    return (N.rounding_init(W, s, z, bits) + rng.standard_normal(W.shape)).astype(np.float32)


# --- parameterisation ------------------------------------------------------------------


def test_init_makes_soft_weight_equal_fp_weight_inside_the_grid():
    rng = np.random.default_rng(0)
    W, s, z = make_layer(rng, 6, 20, bits=4)
    V = N.rounding_init(W, s, z, 4)
    np.testing.assert_allclose(V, R.rounding_init(W, s, z, 4), rtol=1e-5, atol=1e-5)
    Wt, h = N.rounding_soft_weight(W, s, z, 4, V)
    x = W / np.broadcast_to(s, W.shape)
    np.testing.assert_allclose(h, x - np.floor(x), atol=1e-5)
    inside = (np.floor(x) + np.broadcast_to(z, W.shape) >= 0) & (
        np.floor(x) + np.broadcast_to(z, W.shape) + 1 <= 15)
    np.testing.assert_allclose(Wt[inside], W[inside], atol=1e-5)


def test_soft_weight_and_hard_codes_match_reference():
    rng = np.random.default_rng(1)
    W, s, z = make_layer(rng, 5, 17, bits=2)
    V = (rng.standard_normal(W.shape) * 3).astype(np.float32)
    Wt, h = N.rounding_soft_weight(W, s, z, 2, V)
    Wt_r, h_r, _ = R.rounding_soft_weight(W, s, z, 2, V)
    np.testing.assert_allclose(Wt, Wt_r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, h_r, atol=1e-6)
    np.testing.assert_array_equal(N.rounding_hard_codes(W, s, z, 2, V),
                                  R.rounding_hard_codes(W, s, z, 2, V))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mid_rise_grid_half_integer_zero(bits):
    """A zero point (2^b - 1)/2 (N2UQ's mid-rise weight grid, no zero level): the soft weight
    starts at W inside the grid, the hard codes at init are nearest rounding on that grid, and
    engine and reference agree (and the apply-grad step too)."""
    rng = np.random.default_rng(11 + bits)
    W = (rng.laplace(0.0, 0.05, (6, 24))).astype(np.float32)
    codes, s, z = (t.numpy() for t in N2UQWeightQuantizer(bits, 2.0).quantize(torch.from_numpy(W)))
    qmax = 2**bits - 1
    V = N.rounding_init(W, s, z, bits)
    np.testing.assert_allclose(V, R.rounding_init(W, s, z, bits), rtol=1e-5, atol=1e-5)
    Wt, h = N.rounding_soft_weight(W, s, z, bits, V)
    inside = np.abs(W / np.broadcast_to(s, W.shape)) <= qmax / 2
    np.testing.assert_allclose(Wt[inside], W[inside], atol=1e-6)
    np.testing.assert_array_equal(N.rounding_hard_codes(W, s, z, bits, V), codes)
    V2 = (V + rng.standard_normal(W.shape)).astype(np.float32)
    Wt, h = N.rounding_soft_weight(W, s, z, bits, V2)
    Wt_r, h_r, _ = R.rounding_soft_weight(W, s, z, bits, V2)
    np.testing.assert_allclose(Wt, Wt_r, rtol=1e-6, atol=1e-6)
    hard = N.rounding_hard_codes(W, s, z, bits, V2)
    np.testing.assert_array_equal(hard, R.rounding_hard_codes(W, s, z, bits, V2))
    # every soft weight stays on the mid-rise span: s * (q - z) with q in [0, qmax]
    assert np.all(np.abs(Wt) <= np.broadcast_to(s, W.shape) * qmax / 2 * (1 + 1e-6))
    m, v = np.zeros_like(W), np.zeros_like(W)
    g = (rng.standard_normal(W.shape) * 1e-2).astype(np.float32)
    Vr, mr, vr, _, _ = R.rounding_apply_grad(W, s, z, bits, V2, m, v, g, 30, SCHED)
    N.rounding_apply_grad(W, s, z, bits, V2, m, v, g, 30, native_schedule())
    np.testing.assert_allclose(V2, Vr, rtol=1e-5, atol=1e-6)


def test_sample_batch_matches_reference():
    for seed, t, n, k in [(0, 1, 10, 10), (5, 77, 1024, 32), (2**40 + 3, 19999, 100, 7)]:
        np.testing.assert_array_equal(N.rounding_sample_batch(seed, t, n, k),
                                      R.rounding_sample_batch(seed, t, n, k))


# --- objectives ------------------------------------------------------------------------


def test_gram_and_rows_agree_without_activation_linear():
    rng = np.random.default_rng(2)
    W, s, z, X, Xq, Y = linear_problem(rng)
    H, C, c0, n = grams(X, Xq, W)
    Wt, _ = N.rounding_soft_weight(W, s, z, 3, perturbed_v(rng, W, s, z))
    lg, gg = N.rounding_gram_loss_grad(W, s, z, 3, Wt, H, C, c0, n)
    lr, gr = N.rounding_rows_loss_grad(W, s, z, 3, Wt, Xq, Y, batch=10**6)
    assert abs(lg - lr) / lr < 1e-5
    assert rel(gg, gr) < 1e-5
    lref, gref = R.rounding_rows_loss_grad(Wt, Xq, Y, batch=10**6)
    assert abs(lr - lref) / lref < 1e-5 and rel(gr, gref) < 1e-5


@pytest.mark.parametrize("groups", [1, 2])
def test_gram_and_rows_agree_without_activation_conv(groups):
    rng = np.random.default_rng(3 + groups)
    Cin, o, k = 4, 6, 3
    conv = dict(kernel_size=(k, k), stride=(2, 1), padding=(1, 1), dilation=(1, 1))
    d = Cin // groups * k * k
    W, s, z = make_layer(rng, o, d)
    X = rng.standard_normal((5, Cin, 7, 6)).astype(np.float32)
    Xq = (X + 0.05 * rng.standard_normal(X.shape)).astype(np.float32)
    import torch
    import torch.nn.functional as F
    Y = F.conv2d(torch.from_numpy(X), torch.from_numpy(W).reshape(o, Cin // groups, k, k),
                 stride=conv["stride"], padding=conv["padding"], groups=groups).numpy()
    H = np.zeros((groups, d, d), np.float32)
    Cc = np.zeros((groups, d, d), np.float32)
    N.conv_gram_accumulate(Xq, H, groups=groups, **conv)
    N.conv_gram_accumulate(Xq, Cc, groups=groups, x2=X, **conv)
    c0 = float(np.sum(Y.astype(np.float64) ** 2))
    n = Y.shape[0] * Y.shape[2] * Y.shape[3]
    Wt, _ = N.rounding_soft_weight(W, s, z, 3, perturbed_v(rng, W, s, z))
    lg, gg = N.rounding_gram_loss_grad(W, s, z, 3, Wt, H, Cc, c0, n, groups=groups)
    lr, gr = N.rounding_rows_loss_grad(W, s, z, 3, Wt, Xq, Y, conv=conv, batch=10**6,
                                       groups=groups)
    assert abs(lg - lr) / lr < 1e-5
    assert rel(gg, gr) < 1e-5
    lref, gref = R.rounding_rows_loss_grad(Wt, Xq, Y, conv=conv, batch=10**6, groups=groups)
    assert abs(lr - lref) / lref < 1e-5 and rel(gr, gref) < 1e-5


def test_rows_with_relu_bias_and_minibatch_match_reference():
    rng = np.random.default_rng(6)
    W, s, z, X, Xq, _ = linear_problem(rng, n=50)
    b = rng.standard_normal(W.shape[0]).astype(np.float32) * 0.1
    Y = np.maximum(X @ W.T + b, 0).astype(np.float32)
    Wt, _ = N.rounding_soft_weight(W, s, z, 3, perturbed_v(rng, W, s, z))
    for step in (1, 2, 9):
        loss, g = N.rounding_rows_loss_grad(W, s, z, 3, Wt, Xq, Y, bias=b, relu=True, batch=8,
                                         seed=11, step=step)
        lr_, gr_ = R.rounding_rows_loss_grad(Wt, Xq, Y, bias=b, relu=True, batch=8, seed=11,
                                             step=step)
        assert abs(loss - lr_) / lr_ < 1e-5 and rel(g, gr_) < 1e-5


# --- optimiser step --------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 20, 21, 60, 100])
def test_apply_grad_matches_reference_step(t):
    rng = np.random.default_rng(7)
    W, s, z = make_layer(rng, 7, 13, bits=3)
    V = perturbed_v(rng, W, s, z)
    m = (rng.standard_normal(W.shape) * 1e-3).astype(np.float32)
    v = (rng.random(W.shape) * 1e-6).astype(np.float32)
    g = (rng.standard_normal(W.shape) * 1e-2).astype(np.float32)
    Vr, mr, vr, regr, softr = R.rounding_apply_grad(W, s, z, 3, V, m, v, g, t, SCHED)
    reg, soft = N.rounding_apply_grad(W, s, z, 3, V, m, v, g, t, native_schedule())
    # |2h-1|^(beta-1) multiplies h's float32 rounding by up to beta-1 = 19 in the gradient,
    # and v holds its square: a few 1e-5 relative, not 1 ulp.
    np.testing.assert_allclose(V, Vr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, mr, rtol=5e-5, atol=1e-9)
    np.testing.assert_allclose(v, vr, rtol=1e-4, atol=1e-12)
    assert reg == pytest.approx(regr, rel=1e-5, abs=1e-9)
    assert soft == pytest.approx(softr)


def test_schedule_matches_reference():
    S = native_schedule()
    for t in (1, 19, 20, 21, 50, 99, 100, 150):
        assert S.beta_at(t) == pytest.approx(R.rounding_beta(SCHED, t), rel=1e-6)
        assert S.reg_on(t) == R.rounding_reg_on(SCHED, t)


@pytest.mark.parametrize("objective", ["gram", "rows"])
def test_run_steps_equal_reference_steps(objective):
    """k fused C++ steps equal k reference steps (objective + chain rule + Adam)."""
    rng = np.random.default_rng(8)
    W, s, z, X, Xq, Y = linear_problem(rng)
    H, C, c0, n = grams(X, Xq, W)
    V = perturbed_v(rng, W, s, z)
    m, v = np.zeros_like(V), np.zeros_like(V)
    sched = dict(SCHED, iters=6, warmup=0.5)
    Vr, mr, vr = V.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    losses = []
    for t in range(1, 7):
        Wt, _, _ = R.rounding_soft_weight(W, s, z, 3, Vr)
        if objective == "gram":
            loss, g = R.rounding_gram_loss_grad(W, Wt, H, C, c0, n)
        else:
            loss, g = R.rounding_rows_loss_grad(Wt, Xq, Y, batch=16, seed=3, step=t)
        Vr, mr, vr, reg, _ = R.rounding_apply_grad(W, s, z, 3, Vr, mr, vr, g, t, sched)
        losses.append((loss, reg))
    if objective == "gram":
        rec, regl, _ = N.rounding_run_gram(W, s, z, 3, V, m, v, H, C, c0, n,
                                           native_schedule(sched), 0, 6)
    else:
        rec, regl, _ = N.rounding_run_rows(W, s, z, 3, V, m, v, Xq, Y, native_schedule(sched),
                                           0, 6, batch=16, seed=3)
    np.testing.assert_allclose(V, Vr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec, [x[0] for x in losses], rtol=1e-4)
    np.testing.assert_allclose(regl, [x[1] for x in losses], rtol=1e-4, atol=1e-9)


def _run_twice(objective, threads_a, threads_b, chunks_b):
    rng = np.random.default_rng(9)
    Cin, o = 8, 16
    conv = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    W, s, z = make_layer(rng, o, Cin * 9)
    gconv = dict(conv, groups=1)
    X = rng.standard_normal((12, Cin, 6, 6)).astype(np.float32)
    Y = rng.standard_normal((12, o, 6, 6)).astype(np.float32)
    H = np.zeros((1, Cin * 9, Cin * 9), np.float32)
    C = np.zeros_like(H)
    isa = N.active_isa()
    N.set_isa("scalar")  # the Gram kernels' bits depend on the ISA; the rounding engine's must not
    try:
        N.conv_gram_accumulate(X, H, **gconv)
        N.conv_gram_accumulate(X, C, x2=X, **gconv)
    finally:
        N.set_isa(isa)
    sched = native_schedule(dict(SCHED, iters=40))
    out = []
    old = N.get_num_threads()
    try:
        for threads, chunks in ((threads_a, [40]), (threads_b, chunks_b)):
            N.set_num_threads(threads)
            V = N.rounding_init(W, s, z, 3)
            m, v = np.zeros_like(V), np.zeros_like(V)
            step, recs = 0, []
            for k in chunks:
                if objective == "gram":
                    rec, _, _ = N.rounding_run_gram(W, s, z, 3, V, m, v, H, C, 1.0, 432.0, sched,
                                                    step, k)
                else:
                    rec, _, _ = N.rounding_run_rows(W, s, z, 3, V, m, v, X, Y, sched, step, k,
                                                    conv=conv, batch=4, seed=1, relu=True)
                recs.append(rec)
                step += k
            out.append((V.copy(), np.concatenate(recs)))
    finally:
        N.set_num_threads(old)
    return out


@pytest.mark.parametrize("objective", ["gram", "rows"])
def test_bit_identical_across_threads_and_chunking(objective):
    (V1, r1), (V2, r2) = _run_twice(objective, 1, 2, [7, 13, 20])
    np.testing.assert_array_equal(V1, V2)
    np.testing.assert_array_equal(r1, r2)


# --- the whole schedule ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [3, 4])
def test_full_schedule_binarises_and_beats_nearest(bits):
    rng = np.random.default_rng(10 + bits)
    # Inputs of std 0.25 put the reconstruction gradient (~ s^2 |H|/n) at the scale of a real
    # layer with d in the hundreds, where lambda = 0.01 is calibrated.
    W, s, z, X, Xq, Y = linear_problem(rng, o=16, d=64, n=300, P=1, noise=0.025, x_scale=0.25)
    W *= np.float32(np.sqrt(12 / 64))  # Kaiming-like weights, std ~ sqrt(1/d)
    s, z = N.lp_range_search(W, bits, rows=16)
    H, C, c0, n = grams(X, Xq, W)
    iters = 10000  # the paper's default, with lr 1e-3: V needs ~2.4 / lr steps to saturate
    sched = native_schedule(dict(SCHED, iters=iters))
    V = N.rounding_init(W, s, z, bits)
    m, v = np.zeros_like(V), np.zeros_like(V)
    rec, reg, soft = N.rounding_run_gram(W, s, z, bits, V, m, v, H, C, c0, n, sched, 0, iters)
    _, h = N.rounding_soft_weight(W, s, z, bits, V)
    assert np.mean((h > 0.01) & (h < 0.99)) < 0.01 and soft < 0.01
    W_ada = N.dequantize(N.rounding_hard_codes(W, s, z, bits, V), s, z, bits)
    W_near = N.fake_quantize(W, s, z, bits)
    err_ada, _ = N.rounding_gram_loss_grad(W, s, z, bits, W_ada, H, C, c0, n)
    err_near, _ = N.rounding_gram_loss_grad(W, s, z, bits, W_near, H, C, c0, n)
    assert err_ada < err_near
    assert np.all(np.isfinite(rec)) and np.all(np.isfinite(reg))


# --- the boundary ----------------------------------------------------------------------


def test_binding_refuses_copies_and_names_wrong_shapes():
    rng = np.random.default_rng(12)
    W, s, z = make_layer(rng, 4, 6)
    V = N.rounding_init(W, s, z, 3)
    m, v = np.zeros_like(V), np.zeros_like(V)
    g = np.zeros_like(V)
    S = native_schedule()
    with pytest.raises(TypeError, match="V must be"):
        N.rounding_apply_grad(W, s, z, 3, V.astype(np.float64), m, v, g, 1, S)
    with pytest.raises(TypeError):
        N._C.rounding_init(W.astype(np.float64), s, z, 3, V)
    with pytest.raises(ValueError, match=r"H must have shape \(1, 6, 6\)"):
        N._C.rounding_gram_loss_grad(W, s, z, 3, 1, V, np.zeros((1, 5, 5), np.float32),
                                     np.zeros((1, 6, 6), np.float32), 0.0, 1.0, None)
    with pytest.raises(ValueError, match="Y must have shape"):
        N.rounding_rows_loss_grad(W, s, z, 3, V, np.zeros((3, 2, 6), np.float32),
                                  np.zeros((3, 2, 5), np.float32))
    with pytest.raises(ValueError, match="step must be"):
        N.rounding_apply_grad(W, s, z, 3, V, m, v, g, 0, S)


# --- instruction-set variants ------------------------------------------------------------

_ISA_RANK = {n: i for i, n in enumerate(["scalar", "avx2", "avx512", "avx512vnni", "amx"])}


def _run_under(isa, objective):
    try:
        N.set_isa(isa)
        assert N.active_isa() == isa
        return _run_twice(objective, 1, 1, [40])[0]
    finally:
        N.set_isa(None)


@pytest.mark.parametrize("objective", ["gram", "rows"])
def test_isa_variants(objective):
    """The elementwise kernels give the same bits at every ISA level; the matrix products
    (lowbit::sgemm) give the same bits on AVX2 and AVX-512 (FMA) and may differ from the
    scalar kernel in the last bits, which after 40 steps stays within float32 noise."""
    best = N.detected_isa()
    if _ISA_RANK[best] < _ISA_RANK["avx2"]:
        pytest.skip("this CPU has no AVX2")
    runs = {isa: _run_under(isa, objective) for isa in ("scalar", "avx2", "avx512")
            if _ISA_RANK[best] >= _ISA_RANK[isa]}
    V2, r2 = runs["avx2"]
    if "avx512" in runs:
        np.testing.assert_array_equal(runs["avx512"][0], V2)
        np.testing.assert_array_equal(runs["avx512"][1], r2)
    Vs, rs = runs["scalar"]
    np.testing.assert_allclose(Vs, V2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rs, r2, rtol=1e-4)


def test_apply_grad_hands_back_the_next_soft_weight():
    rng = np.random.default_rng(14)
    W, s, z = make_layer(rng, 5, 9)
    V = perturbed_v(rng, W, s, z)
    m, v = np.zeros_like(V), np.zeros_like(V)
    g = rng.standard_normal(W.shape).astype(np.float32)
    nxt = np.full(W.shape, np.nan, np.float32)
    N.rounding_apply_grad(W, s, z, 3, V, m, v, g, 30, native_schedule(), Wt_next=nxt)
    np.testing.assert_array_equal(nxt, N.rounding_soft_weight(W, s, z, 3, V)[0])
    with pytest.raises(ValueError, match="Wt_next"):
        N.rounding_apply_grad(W, s, z, 3, V, m, v, g, 31, native_schedule(),
                              Wt_next=np.zeros((5, 8), np.float32))
