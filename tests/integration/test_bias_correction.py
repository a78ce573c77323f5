"""nearest with bias_correction=True: each layer's typical per-channel output shift is removed."""

import torch
import torch.nn as nn

import lowbit


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(x))
        return self.fc(x.mean((2, 3)))


def mean_shift(fp, q, data):
    """Per layer, max over channels of |E[q(x) - f(x)]| with the float model's inputs x."""
    out = {}
    for name in ("c1", "dw", "fc"):
        f, ql = fp.get_submodule(name), q.get_submodule(name)
        xs = []
        h = f.register_forward_pre_hook(lambda m, a, xs=xs: xs.append(a[0]))
        with torch.no_grad():
            for x in data:
                fp(x)
        h.remove()
        with torch.no_grad():
            e = torch.cat(
                [
                    (ql(x) - f(x)).movedim(1, -1).reshape(-1, f.weight.shape[0])
                    if x.dim() == 4
                    else ql(x) - f(x)
                    for x in xs
                ]
            )
        out[name] = float(e.mean(0).abs().max())
    return out


def test_bias_correction_removes_most_of_the_mean_shift():
    """The correction is a robust (median) estimate, so on skewed errors a little mean shift stays."""
    torch.manual_seed(0)
    m = Net().eval()
    data = [torch.randn(16, 3, 8, 8) + 0.5 for _ in range(3)]
    plain = lowbit.quantize(
        m, data, "nearest", w_bits=3, a_bits=8, keep_first_last=None, progress=False
    )
    bc = lowbit.quantize(
        m,
        data,
        "nearest",
        w_bits=3,
        a_bits=8,
        keep_first_last=None,
        progress=False,
        config={"bias_correction": True},
    )
    before, after = mean_shift(m, plain, data), mean_shift(m, bc, data)
    for name in before:
        assert after[name] < 0.3 * before[name], (name, before, after)
    assert "bias" in dict(bc.dw.named_buffers())  # a bias-free layer gains a saved bias
    assert bc.lowbit_report["dw"].extra["bias_shift"] > 0


class Scaled(nn.Module):
    """fc on a computed tensor (a layer reading the network input is not input-quantized)."""

    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        return self.fc(2.0 * x)


def test_bias_correction_follows_the_typical_rows_not_outliers():
    """An error carried by a few rows (an outlier token the input quantizer clips) must not shift
    the others: the correction is the typical (median) shift, not the mean."""
    torch.manual_seed(0)
    fc = nn.Linear(16, 4)
    data = []
    for _ in range(4):
        x = torch.randn(64, 16)
        x[0, 0] = 500.0  # one outlier row per batch: its weight error is 500x the others
        data.append(x)
    fp = Scaled(fc).eval()
    kw = dict(w_bits=3, a_bits=None, keep_first_last=None, progress=False)
    plain = lowbit.quantize(fp, data, "nearest", **kw)
    bc = lowbit.quantize(fp, data, "nearest", config={"bias_correction": True}, **kw)
    with torch.no_grad():
        typical = torch.cat([x[1:] for x in data])
        err_plain = (plain(typical) - fp(typical)).mean(0).abs().max()
        err_bc = (bc(typical) - fp(typical)).mean(0).abs().max()
        outliers = torch.stack([x[0] for x in data])
        outlier_mean = (plain(outliers) - fp(outliers)).mean(0).abs().max() / 64  # its share of a plain mean
    assert outlier_mean > 0.05  # the mean shift over all rows would be dominated by the outliers
    assert err_bc <= err_plain + 0.01, (err_plain, err_bc)
    assert bc.lowbit_report["fc"].extra["bias_shift"] < 0.2 * float(outlier_mean)
