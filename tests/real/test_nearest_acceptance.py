"""Foundation acceptance on the bundled real models: round-to-nearest at 8 and 4 bits.

Floors from the foundation issue: fmnist-resnet FP >= 90 %, W8A8 within 0.3 points of FP,
W4A8 within 2 points; minilm W8 (Linear layers) mean cosine to FP >= 0.99 and Recall@1 within
1 point.

mobilenet_v2 W8A8: the issue's floor (top-1 agreement >= 95 % on the photo crops) is NOT met and
is not asserted. Per-tensor 8-bit inputs alone cost this model ~15 % relative logit error on the
crops whatever the range rule (PyTorch's own fake-quant ops with min-max ranges and float
weights: 86.7 % agreement, 0.16 logit error), so no round-to-nearest W8A8 gets there; see
issue 2's closing note for the measurements. What is asserted instead is that lowbit's nearest
W8A8 (with bias correction) beats PyTorch's own per-channel W8 + per-tensor A8 fake-quant,
measured in the same run, on both logit error and agreement.
"""

import copy

import pytest
import torch
import torch.nn as nn

import lowbit

zoo = pytest.importorskip("lowbit.zoo", reason="the bundled-model zoo is not built yet")
from lowbit.data import AssetMissing  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.slow]


def load(name: str, **kw):
    try:
        return zoo.load_task(name, **kw)
    except AssetMissing as e:
        pytest.skip(str(e))


def nearest(task, w_bits, a_bits, num_samples=256, **kw):
    return lowbit.quantize(task.model, task.calib_loader, "nearest", w_bits=w_bits, a_bits=a_bits,
                           num_samples=num_samples, progress=False, **task.quantize_kwargs, **kw)


def torch_w8a8(model: nn.Module, calib: list) -> nn.Module:
    """PyTorch's own fake-quant ops as the comparator: symmetric per-channel min-max int8 weights,
    per-tensor min-max uint8 inputs (calibrated on ``calib``) for every conv/linear but the first,
    whose input is the image (lowbit leaves it in float too)."""
    q = copy.deepcopy(model)
    layers = [(n, m) for n, m in q.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    lo, hi = {}, {}

    def observe(name):
        def hook(_, args):
            lo[name] = min(lo.get(name, 0.0), float(args[0].min()))
            hi[name] = max(hi.get(name, 0.0), float(args[0].max()))

        return hook

    hooks = [m.register_forward_pre_hook(observe(n)) for n, m in layers[1:]]
    with torch.no_grad():
        for batch in calib:
            q(batch)
    for h in hooks:
        h.remove()
    for i, (name, m) in enumerate(layers):
        w = m.weight.data
        s = w.flatten(1).abs().amax(1).clamp_min(1e-12) / 127
        m.weight.data = torch.fake_quantize_per_channel_affine(w, s, torch.zeros_like(s, dtype=torch.int32), 0, -128, 127)
        if i:
            step = (hi[name] - lo[name]) / 255
            zero = round(-lo[name] / step)
            m.register_forward_pre_hook(
                lambda _, args, step=step, zero=zero: (torch.fake_quantize_per_tensor_affine(args[0], step, zero, 0, 255),))
    return q


def test_fmnist_resnet_nearest():
    task = load("fmnist-resnet")
    fp = task.evaluate(task.model)["metric"]
    assert fp >= 90.0
    w8a8 = task.evaluate(nearest(task, 8, 8))["metric"]
    w4a8 = task.evaluate(nearest(task, 4, 8))["metric"]
    assert w8a8 >= fp - 0.3, (fp, w8a8)
    assert w4a8 >= fp - 2.0, (fp, w4a8)


def test_mobilenet_v2_nearest_w8a8():
    task = load("mobilenet_v2", quick=True)
    res = task.evaluate(nearest(task, 8, 8, num_samples=64, config={"bias_correction": True}))
    ref = task.evaluate(torch_w8a8(task.model, task.calib_loader))
    assert res["logit_error"] < ref["logit_error"], (res, ref)
    assert res["agreement"] >= ref["agreement"], (res, ref)
    assert res["metric"] >= ref["metric"] - 1.0, (res, ref)  # the linear probe on FMNIST features


def test_minilm_nearest_w8():
    task = load("minilm", quick=True)
    fp = task.evaluate(task.model)["metric"]
    res = task.evaluate(nearest(task, 8, None, num_samples=128))
    assert res["agreement"] >= 99.0, res  # mean cosine x 100
    assert res["metric"] >= fp - 1.0, (fp, res)
