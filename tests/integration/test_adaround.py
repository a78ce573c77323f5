"""AdaRound through lowbit.quantize on small models trained on scikit-learn's digits: layer mode
(gram and rows objectives), block mode (BRECQ / QDrop with LSQ steps), determinism, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _digits import accuracy, loader, trained_cnn, trained_mlp

import lowbit
from lowbit import _native
from lowbit.methods.adaround import (
    AdaRoundConfig,
    BlockExtension,
    auto_objective,
    find_blocks,
    relu_followed,
)

# Fast schedule for tests: lr 2e-2 lets V saturate in a few hundred steps (the paper's 1e-3
# needs ~2.4 / lr steps) and lambda 0.1 pulls h to 0/1 within them.
FAST = dict(iters=500, lr=2e-2, reg_lambda=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mlp():
    return trained_mlp()


@pytest.fixture(scope="module")
def cnn():
    return trained_cnn()


def quant(model, method="adaround", **kw):
    kw.setdefault("keep_first_last", None)
    return lowbit.quantize(model, loader(), method, progress=False, **kw)


# --- configuration ----------------------------------------------------------------------


def test_config_defaults_and_errors():
    c = AdaRoundConfig()
    assert (c.steps("layer"), c.reg_lambda, c.beta, c.warmup, c.lr, c.batch, c.num_samples) == (
        10000, 0.01, (20.0, 2.0), 0.2, 1e-3, 32, 1024)
    assert c.steps("block") == 2000 and AdaRoundConfig(iters=20000).steps("block") == 20000
    assert AdaRoundConfig.from_dict({"beta": [10, 2]}).beta == (10.0, 2.0)  # JSON lists
    for bad, field in [({"iters": 0}, "iters"), ({"mode": "net"}, "mode"), ({"objective": "x"}, "objective"),
                       ({"drop_prob": 1.5}, "drop_prob"), ({"beta": (2, 20)}, "beta"),
                       ({"include_activation": True, "objective": "gram"}, "include_activation"),
                       ({"batch": 2.5}, "batch")]:
        with pytest.raises(ValueError, match=field):
            AdaRoundConfig.from_dict(bad)
    with pytest.raises(ValueError, match="unknown option"):
        AdaRoundConfig.from_dict({"iterations": 5})
    assert "adaround" in lowbit.list_methods()


def test_relu_detection_sees_modules_functions_and_methods(cnn, mlp):
    b = loader()[0]
    from lowbit.calib import to_batch

    found = relu_followed(cnn, dict(cnn.named_modules()), to_batch(b))
    # conv -> BN -> relu: the (unfolded) BN output, not the conv, feeds the ReLU here
    assert {"bn", "b1.bn1", "b2.bn1", "down"} <= found
    assert not {"b1.conv2", "b1", "b2", "fc", "stem"} & found
    assert relu_followed(mlp, dict(mlp.named_modules()), to_batch(b)) == {"fc1", "fc2"}


# --- layer mode -------------------------------------------------------------------------


@pytest.mark.parametrize("w_bits", [2, 3])
def test_layer_mode_binarises_and_beats_nearest(mlp, w_bits):
    near = quant(mlp, "nearest", w_bits=w_bits)
    ada = quant(mlp, w_bits=w_bits, config=dict(FAST, keep_better=False, objective="gram"))
    rep = ada.lowbit_report
    for name in ("fc1", "fc2", "fc3"):
        x = rep[name].extra
        assert rep[name].method == "adaround" and x["objective"] == "gram" and x["iters"] == 500
        assert x["soft_share"] < 0.3, (name, x)  # fully binary needs a longer schedule (below)
        assert x["recon_adaround"] < x["recon_nearest"], (name, x)
        assert rep[name].recon_error < near.lowbit_report[name].recon_error
        assert not torch.equal(ada.get_submodule(name).codes, near.get_submodule(name).codes)
    fp, a_near, a_ada = accuracy(mlp), accuracy(near), accuracy(ada)
    assert a_ada >= a_near - 0.5 and a_ada >= fp - (2 if w_bits == 3 else 4), (fp, a_near, a_ada)
    if w_bits == 2:
        assert a_ada > a_near, (a_near, a_ada)


def test_longer_schedule_ends_binary(mlp):
    ada = quant(mlp, w_bits=3, config=dict(iters=2000, lr=1e-2, reg_lambda=0.1))
    for row in ada.lowbit_report.layers:
        assert row.extra["soft_share"] < 0.01, (row.name, row.extra)


def test_layer_mode_cnn_with_activations_in_the_loss(cnn):
    w = 3
    near = quant(cnn, "nearest", w_bits=w, a_bits=4)
    cfg = dict(FAST, iters=200, include_activation=True, keep_better=False)
    ada = quant(cnn, w_bits=w, a_bits=4, config=cfg)
    rep = ada.lowbit_report
    # layers straight before a ReLU (after BN folding) put it in the loss -> rows objective
    assert rep["b1.conv1"].extra["objective"] == "rows" and rep["b1.conv1"].extra["relu_in_loss"]
    assert rep["down"].extra["objective"] == "rows"
    assert not rep["b1.conv2"].extra["relu_in_loss"]  # add before the ReLU
    for row in rep.layers:
        assert row.extra["recon_adaround"] < row.extra["recon_nearest"], (row.name, row.extra)
    assert accuracy(ada) >= accuracy(near) - 1.0


def test_objectives_can_be_forced_and_keep_better_guards(mlp):
    rows = quant(mlp, w_bits=3, config=dict(FAST, iters=100, objective="rows", batch=16))
    assert {r.extra["objective"] for r in rows.lowbit_report.layers} == {"rows"}
    # one step cannot learn anything: keep_better falls back to nearest where it is worse
    one = quant(mlp, w_bits=3, config=dict(iters=1))
    near = quant(mlp, "nearest", w_bits=3)
    for r in one.lowbit_report.layers:
        assert r.extra["recon_adaround"] <= r.extra["recon_nearest"] or r.extra["kept_nearest"]
        if r.extra["kept_nearest"]:
            assert r.method == "nearest (kept)"
            assert torch.equal(one.get_submodule(r.name).codes, near.get_submodule(r.name).codes)


def test_auto_takes_the_cheaper_step(mlp):
    # A Linear layer's rows step costs about 2 * batch * o * d, its gram step o * d^2 (d 64 and
    # 96 here): minibatches of 4 make rows the cheaper step, of 256 gram.
    picked = {}
    for batch in (4, 256):
        q = quant(mlp, w_bits=3, config=dict(FAST, iters=5, batch=batch))
        for r in q.lowbit_report.layers:
            o, d = mlp.get_submodule(r.name).weight.shape
            assert r.extra["objective"] == auto_objective(o, d, 1, batch), (batch, r.name)
        picked[batch] = {r.extra["objective"] for r in q.lowbit_report.layers}
    assert "rows" in picked[4] and picked[256] == {"gram"}
    # ResNet-18 at 224 px: layer4's 3x3 conv (d 4608, 7x7) goes to rows, layer3's (d 2304, 14x14)
    # stays gram (benchmarks/adaround.py times both)
    assert auto_objective(512, 4608, 1, 32 * 49) == "rows"
    assert auto_objective(256, 2304, 1, 32 * 196) == "gram"


class TokenMLP(nn.Module):
    """Per-token layers on (batch, tokens, features), as a transformer's feed-forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_rows_objective_takes_sequences_of_different_lengths():
    # calibration batches padded to different lengths, as a tokenizer pads each batch
    torch.manual_seed(0)
    model = TokenMLP()
    batches = [torch.randn(4, n, 16) for n in (5, 9, 7)]
    q = lowbit.quantize(model, batches, "adaround", w_bits=3, keep_first_last=None, progress=False,
                        config=dict(FAST, iters=100, objective="rows", batch=2, keep_better=False))
    for r in q.lowbit_report.layers:
        assert r.extra["objective"] == "rows", r.name
        assert r.extra["recon_adaround"] < r.extra["recon_nearest"], (r.name, r.extra)


def codes_of(model):
    return {n: m.codes.clone() for n, m in model.named_modules() if hasattr(m, "codes")}


@pytest.mark.parametrize("mode", ["layer", "block"])
def test_identical_with_one_and_two_threads_and_seeded(cnn, mode):
    cfg = dict(FAST, iters=60, mode=mode, objective="auto", include_activation=mode == "layer")
    old = _native.get_num_threads()
    out = []
    kw = dict(w_bits=3, a_bits=4, num_samples=128, config=cfg)
    try:
        for threads in (1, 2):
            _native.set_num_threads(threads)
            out.append(codes_of(quant(cnn, seed=3, **kw)))
        _native.set_num_threads(1)
        other = codes_of(quant(cnn, seed=4, **kw))
    finally:
        _native.set_num_threads(old)
    a = out[1]
    assert a.keys() == out[0].keys()
    for n in a:
        assert torch.equal(a[n], out[0][n]), n
    assert any(not torch.equal(other[n], out[0][n]) for n in other)


# --- block mode -------------------------------------------------------------------------


def test_find_blocks_picks_the_residual_blocks(cnn):
    from lowbit.calib import to_batch

    names = ["stem", "b1.conv1", "b1.conv2", "down", "b2.conv1", "b2.conv2", "fc"]
    units = find_blocks(cnn, names, to_batch(loader()[0]))
    assert [(u.name, u.layers) for u in units] == [("b1", ["b1.conv1", "b1.conv2"]),
                                                    ("b2", ["b2.conv1", "b2.conv2"])]


@pytest.mark.parametrize("drop_prob", [0.0, 0.5])
def test_block_mode_w3a4_beats_nearest(cnn, drop_prob):
    near = quant(cnn, "nearest", w_bits=3, a_bits=4)
    cfg = dict(FAST, mode="block", drop_prob=drop_prob, keep_better=False)
    ada = quant(cnn, w_bits=3, a_bits=4, config=cfg)
    rep = ada.lowbit_report
    for n in ("b1.conv1", "b1.conv2", "b2.conv1", "b2.conv2"):
        x = rep[n].extra
        assert x["adaround_mode"] == "block" and x["block"] == n.split(".")[0]
        assert x["recon_adaround"] < x["recon_nearest"], (n, x)
        assert x["soft_share"] < 0.3, (n, x)  # the fast schedule leaves some h soft
    assert rep["stem"].extra["adaround_mode"] == "layer"  # outside the blocks
    # learned activation steps of the layers inside blocks
    assert ada.b1.conv2.act_quant.scale.item() != near.b1.conv2.act_quant.scale.item()
    assert ada.down.act_quant.scale.item() == near.down.act_quant.scale.item()
    assert accuracy(ada) >= accuracy(near) - 1.0


def test_block_extension_parameters_ride_along(cnn):
    from lowbit.api import quantize
    from lowbit.methods import adaround as A

    seen = {}

    class OutputGain(BlockExtension):
        def setup(self, ctx, unit, config, seed):
            self.gain = nn.Parameter(torch.ones(()))
            block = ctx.qmodel.get_submodule(unit.name)
            self.hook = block.register_forward_hook(lambda m, a, out: out * self.gain)
            return [{"params": [self.gain], "lr": 1e-2}]

        def finish(self, ctx, unit, keep):
            self.hook.remove()
            seen[unit.name] = (float(self.gain.detach()), keep)

    cfg = AdaRoundConfig(iters=30, lr=1e-2, mode="block", learn_act_scale=False, keep_better=False)

    @lowbit.register_method("adaround_gain_test", type("GainCfg", (AdaRoundConfig,), {}))
    def run(ctx, config):
        A.run_reconstruction(ctx, cfg, extensions=[OutputGain()])

    quantize(cnn, loader(), "adaround_gain_test", w_bits=3, a_bits=4, progress=False, keep_first_last=None)
    assert set(seen) == {"b1", "b2"} and all(g != 1.0 and keep for g, keep in seen.values())


@pytest.mark.parametrize("drop", [False, True])
def test_fused_lsq_quantizer_matches_autograd(drop):
    from lowbit.methods.adaround import LsqActQuant
    from lowbit.quantizers import UniformActQuantizer, round_ste

    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2
    base = UniformActQuantizer(3, scale=0.4, zero=3.0, signed=True)
    q = LsqActQuant(base, learn=True, drop_prob=0.5 if drop else 0.0, gen=torch.Generator().manual_seed(1))
    xa = x.clone().requires_grad_(True)
    out = q(xa)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()

    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5 if drop else None
    s = base.scale.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    gs = 1.0 / (x.numel() * base.qmax) ** 0.5
    s.register_hook(lambda grad: grad * gs)  # LSQ's gradient scale
    ref = (torch.clamp(round_ste(xb / s) + base.zero, 0, base.qmax) - base.zero) * s
    if drop:
        ref = torch.where(mask, xb, ref)
    (ref * w).sum().backward()
    # round_ste's x + (round(x) - x) is round(x) only up to one float32 rounding: 1 ulp apart
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=3e-7, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=3e-7, atol=0)  # autograd's g * s / s: 1 ulp
    torch.testing.assert_close(q.scale.grad, s.grad, rtol=1e-5, atol=1e-7)
    assert (q.scale.grad.abs() > 0).all()


def test_cache_limit_falls_back_or_refuses(cnn, monkeypatch):
    from lowbit.methods import adaround as A

    monkeypatch.setattr(A, "CACHE_LIMIT_BYTES", 64 * 1024)
    cfg = dict(iters=5, include_activation=True)
    rep = quant(cnn, w_bits=3, config=cfg).lowbit_report
    assert rep["b1.conv1"].extra["objective"] == "gram" and not rep["b1.conv1"].extra["relu_in_loss"]
    with pytest.raises(ValueError, match="layer 'stem': the rows objective would cache"):
        quant(cnn, w_bits=3, config=dict(cfg, objective="rows"))
    rep = quant(cnn, w_bits=3, config=dict(iters=5, mode="block")).lowbit_report
    per_sample = (2 * 8 * 8 * 8 + 8 * 8 * 8) * 4  # X, Xq and Y of block b1
    assert rep["b1.conv1"].extra["block_samples"] == 64 * 1024 // per_sample < 512
