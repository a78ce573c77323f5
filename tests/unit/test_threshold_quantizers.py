"""BorderActQuantizer (AQuant), LTQActQuantizer (N2UQ) and N2UQWeightQuantizer as torch modules."""

import math

import numpy as np
import pytest
import torch

from lowbit import reference
from lowbit.quantizers import UniformActQuantizer, act_quantizer_from_samples
from lowbit.threshold import BorderActQuantizer, LTQActQuantizer, N2UQWeightQuantizer

QUANTIZERS = [BorderActQuantizer, LTQActQuantizer]


def _acts(shape, seed=0, signed=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 1.5
    return x if signed else torch.relu(x)


def _not_tie(x, uq):
    """Elements not within float rounding of a rounding tie of the uniform grid."""
    v = x / uq.scale
    return (v - torch.floor(v) - 0.5).abs() > 1e-4


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("layout", [("conv", (4, 6, 5, 3)), ("linear", (7, 6)), ("seq", (2, 5, 6))])
def test_fresh_quantizer_reproduces_the_uniform_grid(cls, bits, signed, layout):
    kind, shape = layout
    x = _acts(shape, bits, signed)
    uq = act_quantizer_from_samples(x.reshape(-1), bits, float(x.min()))
    axis = 1 if kind == "conv" else -1
    for channels in (1, 6):
        q = cls.from_uniform(uq, channels=channels, channel_axis=axis)
        for training in (False, True):
            q.train(training)
            if cls is BorderActQuantizer:
                q.hard = True
            y = q(x)
            keep = _not_tie(x, uq)
            torch.testing.assert_close(y[keep], uq(x)[keep], rtol=0, atol=1e-6 * float(uq.scale))


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_outputs_take_only_the_levels_and_thresholds_stay_ordered(cls, bits):
    x = _acts((8, 5, 4, 4), 1, signed=True) * 3  # well beyond the grid on both sides
    uq = act_quantizer_from_samples(x.reshape(-1), bits, float(x.min()))
    q = cls.from_uniform(uq, channels=5)
    g = torch.Generator().manual_seed(bits)
    with torch.no_grad():  # wild parameters: borders far outside [0, 1], negative intervals
        for p in q.parameters():
            if p is not q.scale:
                p.add_(torch.randn(p.shape, generator=g) * 2 * p.abs().mean().clamp_min(1))
    q.eval()
    t = q.thresholds()
    assert t.shape == (5, 2**bits - 1)
    assert torch.all(t[:, 1:] > t[:, :-1])
    y = q(x)
    codes = torch.round(y / q.scale.detach() + q.zero)
    assert set(codes.unique().tolist()) <= set(range(2**bits))
    torch.testing.assert_close(y, (codes - q.zero) * q.scale.detach(), rtol=0, atol=1e-5)
    # the packed form: multi-threshold compare on the exported thresholds
    c = q.codes(x).float()
    near = (x.unsqueeze(-1) - t.reshape(1, 5, 1, 1, -1)).abs().amin(-1) < 1e-5
    assert torch.equal(c[~near], codes[~near])
    e = q.export()
    assert e["bits"] == bits and e["thresholds"].shape == t.shape


def test_border_module_gradients_match_reference_autograd():
    bits, C = 2, 3
    x = _acts((4, C, 5, 5), 2)
    uq = act_quantizer_from_samples(x.reshape(-1), bits, 0.0)
    for param in ("table", "affine"):
        q = BorderActQuantizer.from_uniform(uq, channels=C, parameterization=param, tau=0.1)
        q.lsq_grad_scale = False
        with torch.no_grad():
            q.border_param.normal_(0, 0.2)
        xt = x.clone().requires_grad_(True)
        y = q(xt)
        gy = torch.randn_like(y)
        y.backward(gy)
        xr = x.clone().requires_grad_(True)
        pr = q.border_param.detach().clone().requires_grad_(True)
        sr = q.scale.detach().clone().requires_grad_(True)
        B = reference.border_table_torch(pr, bits, affine=param == "affine", eps=q.eps)
        yr = reference.border_quant_torch(xr.reshape(4 * C, -1), B, sr, bits, zero=0.0, tau=0.1, hard=False)
        yr.reshape(x.shape).backward(gy)
        torch.testing.assert_close(y, yr.reshape(x.shape), rtol=0, atol=1e-6)
        torch.testing.assert_close(xt.grad, xr.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(q.border_param.grad, pr.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(q.scale.grad, sr.grad, rtol=1e-4, atol=1e-4)


def test_ltq_module_gradients_match_reference_autograd():
    bits, C = 3, 4
    x = _acts((9, C), 3)
    uq = act_quantizer_from_samples(x.reshape(-1), bits, 0.0)
    q = LTQActQuantizer.from_uniform(uq, channels=C, channel_axis=-1)
    q.lsq_grad_scale = False
    with torch.no_grad():
        q.a.mul_(torch.empty_like(q.a).uniform_(0.5, 1.5))
        q.start.add_(0.05)
    xt = x.clone().requires_grad_(True)
    y = q(xt)
    gy = torch.randn_like(y)
    y.backward(gy)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x.reshape(-1, 1), q.start, q.a, q.in_scale, q.scale)]
    xr, st, ar, s1, s2 = leaves
    yr = reference.ltq_torch(xr, st * q.unit, ar * q.unit, s1, s2, bits, zero=0.0, a_min=q.a_min, s1_min=q.s1_min)
    yr.reshape(x.shape).backward(gy)
    torch.testing.assert_close(y, yr.reshape(x.shape))
    for mine, ref in zip((xt.grad.reshape(-1, 1), q.start.grad, q.a.grad, q.in_scale.grad, q.scale.grad),
                         (lv.grad for lv in leaves)):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)


def test_lsq_gradient_scale_and_qdrop():
    x = _acts((16, 8), 4)
    uq = act_quantizer_from_samples(x.reshape(-1), 2, 0.0)
    grads = []
    for flag in (False, True):
        q = BorderActQuantizer.from_uniform(uq)
        q.lsq_grad_scale = flag
        q(x).sum().backward()
        grads.append(q.scale.grad.item())
    assert grads[1] == pytest.approx(grads[0] / math.sqrt(x.numel() * 3), rel=1e-5)
    q = LTQActQuantizer.from_uniform(uq)
    q.drop_prob = 0.5
    torch.manual_seed(0)
    y = q(x)
    kept = (y == x).float().mean().item()  # dropped elements pass through in full precision
    assert 0.3 < kept < 0.8
    q.eval()
    assert not torch.equal(q(x), x)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="bits"):
        BorderActQuantizer(9, 1.0)
    with pytest.raises(ValueError, match="parameterization"):
        BorderActQuantizer(2, 1.0, parameterization="cubic")
    with pytest.raises(ValueError, match="zero"):
        LTQActQuantizer(2, 1.0, 0.5)
    q = BorderActQuantizer(2, 1.0, channels=4)
    with pytest.raises(ValueError, match="built for 4"):
        q(torch.zeros(2, 3, 5, 5))


def test_auto_parameterization():
    assert BorderActQuantizer(3, 1.0, channels=2).border_param.shape == (2, 7)
    assert BorderActQuantizer(4, 1.0, channels=2).border_param.shape == (2, 2)
    assert BorderActQuantizer(4, 1.0, parameterization="table").border_param.shape == (1, 15)


@pytest.mark.parametrize("bits,rho,param", [(2, 1.15, "table"), (2, 0.85, "table"), (3, 1.06, "table"),
                                            (4, 1.03, "affine")])
def test_analytic_toy_learns_the_optimal_border(bits, rho, param):
    """methods.md 2.2: one input channel feeding a weight w quantized to w^ = rho w. Learning the
    border with plain Adam on mean (w^ x^ - w x)^2 approaches B_k = 1/2 + (rho - 1)(k + 1/2),
    and the mean product error falls from nearest's (rho - 1)(k + 1/2) w s (first order) to the
    optimum's -(rho - 1)^2 (k + 1/2) w s (second order)."""
    s, w, iters = 0.1, 0.8, 300
    qmax = 2**bits - 1
    q = BorderActQuantizer(bits, s, parameterization=param)
    q.scale.requires_grad_(False)
    opt = torch.optim.Adam([q.border_param], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    g = torch.Generator().manual_seed(0)
    for it in range(iters):
        q.tau = 0.2 * (0.02 / 0.2) ** (it / (iters - 1))  # annealed
        q.hard = it >= 0.9 * iters  # hard decisions in the last 10%
        x = torch.rand(4096, 1, generator=g) * qmax * s
        loss = ((rho * w * q(x) - w * x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    k = torch.arange(qmax, dtype=torch.float32)
    target = 0.5 + (rho - 1) * (k + 0.5)
    assert (q.borders()[0] - target).abs().max() < 0.03
    q.eval()
    nearest = BorderActQuantizer(bits, s).eval()
    x = torch.rand(200_000, 1, generator=g) * qmax * s
    err = (rho * w * q(x) - w * x).double()
    err0 = (rho * w * nearest(x) - w * x).double()
    mean_k = (qmax - 1) / 2 + 0.5
    assert err0.mean().item() == pytest.approx((rho - 1) * mean_k * w * s, rel=0.05)
    assert abs(err.mean().item()) < 0.2 * abs(err0.mean().item())
    assert err.mean().item() == pytest.approx(-((rho - 1) ** 2) * mean_k * w * s, abs=0.05 * abs(err0.mean().item()))
    assert err.pow(2).mean() < 0.75 * err0.pow(2).mean()


# --- N2UQ weights -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_n2uq_weight_codes_are_the_fake_quant_weight(bits):
    torch.manual_seed(bits)
    w = torch.distributions.Laplace(0.0, 0.05).sample((12, 3, 3, 3))
    wq = N2UQWeightQuantizer(bits, alpha=1.7)
    codes, scale, zero = wq.quantize(w)
    assert codes.dtype == torch.uint8 and codes.shape == (12, 27) and int(codes.max()) <= 2**bits - 1
    assert scale.shape == (12, 1) and torch.all(zero == (2**bits - 1) / 2)
    deq = (codes.float() - zero) * scale
    torch.testing.assert_close(wq(w).reshape(12, -1), deq, rtol=1e-5, atol=1e-6)
    # mid-rise: code - zero is an odd number of halves, so no level is zero and the set of
    # levels {-(2^b - 1), ..., -1, 1, ..., 2^b - 1} * step / 2 is symmetric about 0
    assert torch.all(torch.remainder((codes.float() - zero) * 2, 2) == 1)


def test_n2uq_weight_l1_scaling_and_learnable_clip():
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 0.05).sample((16, 4096))
    wq = N2UQWeightQuantizer(2)
    codes, scale, _ = wq.quantize(w)
    # sf_c = (3/2) mean|W_c|, step = sf * alpha / 3
    torch.testing.assert_close(scale, 1.5 * w.abs().mean(1, keepdim=True) * 2 / 3)
    # "entropy preserving": Laplacian weights fill the four bins evenly enough, > 1.9 of 2 bits
    p = torch.bincount(codes.reshape(-1).long(), minlength=4).double() / codes.numel()
    assert -(p * p.log2()).sum() > 1.9
    # the clip learns: gradient through the straight-through round
    wt = w.clone().requires_grad_(True)
    ((wq(wt) - w) ** 2).sum().backward()
    assert wq.alpha.grad is not None and wq.alpha.grad.abs() > 0
    assert wt.grad is not None and torch.isfinite(wt.grad).all()


def test_uniform_module_untouched():
    """The uniform quantizer stays the default; the threshold quantizers only sit beside it."""
    assert not isinstance(UniformActQuantizer(2), (BorderActQuantizer, LTQActQuantizer))
    assert np.isclose(float(UniformActQuantizer(2, 0.5).scale), 0.5)


def test_n2uq_weights_load_into_a_quant_layer():
    from lowbit import _native
    from lowbit.quantizers import quant_layer_from_float

    torch.manual_seed(1)
    lin = torch.nn.Linear(24, 6)
    wq = N2UQWeightQuantizer(3, alpha=1.8)
    codes, scale, zero = wq.quantize(lin.weight)
    layer = quant_layer_from_float(lin, codes, scale, zero, 3)
    torch.testing.assert_close(layer.weight, wq(lin.weight).detach(), rtol=1e-5, atol=1e-6)
    # the C++ dequantize (the packed path's reference) reads the half-integer zero point as is
    np.testing.assert_allclose(_native.dequantize(codes, scale, zero, 3), layer.weight.detach().numpy(),
                               rtol=1e-6, atol=1e-7)
