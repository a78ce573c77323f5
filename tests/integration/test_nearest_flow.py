"""The quantize contract on a tiny CNN with BN, grouped and depthwise convs."""

import hashlib
import warnings

import pytest
import torch
import torch.nn as nn

import lowbit
from lowbit.quantizers import QuantConv2d, QuantLinear


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.b2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.dw(x)) + x
        return self.fc(x.mean((2, 3)))


def make():
    torch.manual_seed(0)
    m = TinyNet()
    for b in (m.b1, m.b2):
        b.running_mean.normal_()
        b.running_var.uniform_(0.5, 2)
        b.weight.data.normal_()
    data = [(torch.randn(16, 1, 8, 8), torch.zeros(16)) for _ in range(4)]
    return m.eval(), data


def digest(m):
    h = hashlib.sha256()
    for k, v in sorted(m.state_dict().items()):
        h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


def sqnr_db(ref, out):
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def test_contract():
    m, data = make()
    before = (digest(m), [type(x) for x in m.modules()])
    q = lowbit.quantize(m, data, w_bits=4, a_bits=8, num_samples=48, progress=False)
    assert (digest(m), [type(x) for x in m.modules()]) == before  # input model untouched
    assert isinstance(q.c1, QuantConv2d) and isinstance(q.fc, QuantLinear)
    assert isinstance(q.b1, nn.Identity)  # folded
    assert q.c1.act_quant is None  # network input never quantized
    assert q.c2.act_quant.zero.item() == 0  # unsigned after ReLU
    rep = lowbit.report(q)
    assert [r.name for r in rep.layers] == ["c1", "c2", "dw", "fc"]
    assert rep["c1"].w_bits == 8 and rep["fc"].w_bits == 8 and rep["c2"].w_bits == 4  # keep_first_last
    assert rep.meta["num_calib_samples"] == 48
    assert lowbit.QuantReport.from_json(rep.to_json()).layers[1].w_bits == 4
    q2 = lowbit.quantize(m, data, w_bits=4, a_bits=8, num_samples=48, progress=False)
    assert torch.equal(q.c2.codes, q2.c2.codes)  # same seed, same codes


def test_sqnr_falls_with_bits():
    m, data = make()
    x = torch.randn(32, 1, 8, 8)
    ref = m(x).detach()
    sq = {w: sqnr_db(ref, lowbit.quantize(m, data, w_bits=w, keep_first_last=None, progress=False)(x).detach())
          for w in (8, 4, 2)}
    # 8-bit per-channel weights: ~6 dB per bit puts the output far above 30 dB; 4-bit above 12.
    assert sq[8] > 30 and sq[4] > 12 and sq[8] > sq[4] > sq[2], sq


def test_policies_and_errors():
    m, data = make()
    q = lowbit.quantize(m, data, w_bits=3, ignore=["re:d.*"], overrides={nn.Linear: {"w_bits": 6}},
                        keep_first_last=None, progress=False)
    assert isinstance(q.dw, nn.Conv2d) and q.fc.w_bits == 6 and q.c2.w_bits == 3
    with pytest.warns(UserWarning, match="matched no"):
        lowbit.quantize(m, data, ignore=["nope"], progress=False)
    with pytest.warns(UserWarning, match="does not divide"):
        q = lowbit.quantize(m, data, group_size=4, keep_first_last=None, progress=False)
    assert q.c2.granularity == "group" and q.c2.group_size == 4 and q.dw.granularity == "channel"  # K = 36 vs 9
    with pytest.raises(ValueError, match="known methods: nearest"):
        lowbit.quantize(m, data, method="nope")
    for bad in (1, 9, 3.5, "4"):
        with pytest.raises(ValueError, match="w_bits"):
            lowbit.quantize(m, data, w_bits=bad)
    with pytest.raises(ValueError, match="no batches"):
        lowbit.quantize(m, [], progress=False)
    with pytest.raises(TypeError, match="input_fn"):
        lowbit.quantize(m, ["text"], progress=False)
    with pytest.raises(RuntimeError, match=r"rejected a calibration batch \(Tensor\(2, 3\)\)") as e:
        lowbit.quantize(m, [torch.zeros(2, 3)], progress=False)
    assert e.value.__cause__ is not None
    bad = make()[0]
    bad.c2.weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'c2'"):
        lowbit.quantize(bad, data, progress=False)
    with pytest.raises(ValueError, match="unknown option"):
        lowbit.quantize(m, data, config={"iters": 3}, progress=False)
    with pytest.raises(ValueError, match="preserve_sums must be True or False, got 'false'"):
        lowbit.quantize(m, data, config={"preserve_sums": "false"}, progress=False)


class LoraLinear(nn.Linear):
    """A Linear whose forward adds a low-rank term: a plain QuantLinear would drop it."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.a, self.b = nn.Parameter(torch.randn(2, n_in)), nn.Parameter(torch.randn(n_out, 2))

    def forward(self, x):
        return super().forward(x) + x @ self.a.T @ self.b.T


class PlainSubclass(nn.Linear):
    """A subclass with the base forward: quantized like any Linear."""


def test_layers_a_swap_would_change_stay_float():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(), LoraLinear(64, 8),
                        nn.ReLU(), PlainSubclass(8, 8), nn.Linear(8, 3)).eval()
    data = [torch.randn(8, 1, 4, 4) for _ in range(2)]
    with pytest.warns(UserWarning) as rec:
        q = lowbit.quantize(net, data, progress=False, keep_first_last=None)
    said = " | ".join(str(w.message) for w in rec)
    assert "layer '0': padding_mode='circular' is not supported; left in float" in said
    assert "layer '2': LoraLinear has its own forward, which a quantized Linear would drop; left in float" in said
    assert type(q[0]) is nn.Conv2d and type(q[2]) is LoraLinear
    assert isinstance(q[4], QuantLinear) and isinstance(q[5], QuantLinear)
    with torch.no_grad():
        assert torch.equal(q[2](torch.ones(1, 64)), net[2](torch.ones(1, 64)))  # the low-rank term is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignoring a layer silences its warning
        lowbit.quantize(net, data, progress=False, keep_first_last=None, ignore=["0", "2"])

