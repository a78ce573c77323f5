"""Threshold quantizers dropped into a quantized model in place of the uniform ones."""

import pytest
import torch
import torch.nn as nn

import lowbit
from lowbit.quantizers import QuantLayer
from lowbit.threshold import BorderActQuantizer, LTQActQuantizer, threshold_act_quantizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def quantized(bits):
    torch.manual_seed(0)
    fp = Net().eval()
    data = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    q = lowbit.quantize(fp, data, w_bits=4, a_bits=bits, keep_first_last=None, num_samples=48,
                        progress=False)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLayer) and m.act_quant is not None}
    assert set(layers) == {"c2", "fc1", "fc2"}
    return fp, q, layers, data[0]


@pytest.mark.parametrize("kind", ["border", "ltq"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_swap_keeps_the_model(kind, bits):
    fp, q, layers, x = quantized(bits)
    with torch.no_grad():
        y0 = q(x)
    for m in layers.values():
        m.act_quant = threshold_act_quantizer(m, kind)
    assert isinstance(q.c2.act_quant, BorderActQuantizer if kind == "border" else LTQActQuantizer)
    assert q.c2.act_quant.channels == 8 and q.fc1.act_quant.channels == 12
    q.eval()
    with torch.no_grad():
        y1 = q(x)
    # identical up to inputs exactly at a rounding tie (none expected in random data)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    st = q.c2.act_quant.stats(torch.relu(torch.randn(4, 8, 4, 4)))
    assert len(st["occupancy"]) == 2**bits and st["threshold_shift_max"] < 1e-5
    assert sum(st["occupancy"]) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["border", "ltq"])
def test_thresholds_learn_at_4_bits(kind):
    """Full-batch Adam on the thresholds alone (steps fixed) lowers the eval-mode output error
    to the FP model; the border's soft decisions anneal towards the hard ones used in eval."""
    fp, q, layers, x = quantized(4)
    for m in layers.values():
        m.act_quant = threshold_act_quantizer(m, kind)
    with torch.no_grad():
        target = fp(x)
        before = (q.eval()(x) - target).pow(2).mean()
    params = [p for m in layers.values() for n, p in m.act_quant.named_parameters() if n != "scale"]
    opt = torch.optim.Adam(params, lr=1e-2)
    q.train()
    steps = 40
    for it in range(steps):
        for m in layers.values():
            if isinstance(m.act_quant, BorderActQuantizer):
                m.act_quant.tau = 0.2 * (0.01 / 0.2) ** (it / (steps - 1))
                m.act_quant.hard = it >= 0.9 * steps
        loss = (q(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = (q.eval()(x) - target).pow(2).mean()
    assert after < 0.75 * before
    for m in layers.values():
        t = m.act_quant.thresholds()
        assert torch.all(t[:, 1:] > t[:, :-1])


def test_swap_needs_a_calibrated_quantizer():
    torch.manual_seed(0)
    data = [torch.randn(8, 1, 8, 8)]
    q = lowbit.quantize(Net().eval(), data, w_bits=4, num_samples=8, progress=False)
    with pytest.raises(ValueError, match="a_bits"):
        threshold_act_quantizer(q.c2, "border")
    with pytest.raises(TypeError):
        threshold_act_quantizer(nn.Linear(2, 2), "ltq")
