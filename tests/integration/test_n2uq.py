"""N2UQ through lowbit.quantize (post-training) and lowbit.finetune (short QAT) on small models
trained on scikit-learn's digits."""

from __future__ import annotations

import copy

import pytest
import torch
from _digits import DATA, accuracy, loader, trained_cnn, trained_mlp

import lowbit
from lowbit.methods.n2uq import N2UQConfig, n2uq_weight_grid
from lowbit.quantizers import QuantLayer, UniformActQuantizer, dequantize_codes
from lowbit.threshold import LTQActQuantizer, N2UQWeightQuantizer

FAST = dict(iters=300, lr=2e-2, reg_lambda=0.1, threshold_lr=1e-2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cnn():
    return trained_cnn()


@pytest.fixture(scope="module")
def mlp():
    return trained_mlp()


def quant(model, method="n2uq", config=None, **kw):
    kw.setdefault("keep_first_last", None)
    if method == "n2uq" and config is None:
        config = FAST
    return lowbit.quantize(model, loader(), method, progress=False, config=config, **kw)


def qlayers(m):
    return {n: x for n, x in m.named_modules() if isinstance(x, QuantLayer)}


# --- configuration ----------------------------------------------------------------------


def test_config_defaults_and_errors():
    c = N2UQConfig()
    assert (c.iters, c.drop_prob, c.per_channel, c.weight_grid) == (5000, 0.5, False, "n2uq")
    assert c.adaround().mode == "block"
    for bad, field in [({"iters": 0}, "iters"), ({"weight_grid": "nf4"}, "weight_grid"),
                       ({"threshold_lr": -1.0}, "threshold_lr"), ({"per_channel": 1}, "per_channel"),
                       ({"drop_prob": 2.0}, "drop_prob")]:
        with pytest.raises(ValueError, match=field):
            N2UQConfig.from_dict(bad)
    assert "n2uq" in lowbit.list_methods()
    assert lowbit.N2UQConfig is N2UQConfig


# --- the weight grid ----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_grid_is_n2uq_and_searched(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.distributions.Laplace(0.0, 0.05).sample((24, 40))
    codes, scale, zero, alpha = n2uq_weight_grid(w, bits)
    ref_codes, ref_scale, ref_zero = N2UQWeightQuantizer(bits, alpha).quantize(w)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)
    assert int(codes.max()) <= 2**bits - 1 and torch.all(zero == (2**bits - 1) / 2)
    err = lambda a: float((dequantize_codes(*N2UQWeightQuantizer(bits, a).quantize(w)) - w).abs().pow(2.4).sum())  # noqa: E731
    assert err(alpha) <= err(2.0)  # the search never loses to N2UQ's initial clip
    del g


# --- post-training ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3])
def test_n2uq_ptq_contract(cnn, bits):
    """LTQ quantizers on every low-bit input, N2UQ grid on every weight, ordered thresholds,
    only 2^b levels, report figures; input model untouched."""
    before = copy.deepcopy(cnn.state_dict())
    q = quant(cnn, w_bits=bits, a_bits=bits)
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, before[k])
    rep = lowbit.report(q)
    assert rep.meta["method"] == "n2uq"
    for name, m in qlayers(q).items():
        assert m.codes.dtype == torch.uint8 and int(m.codes.max()) <= 2**bits - 1
        assert torch.all(m.zero == (2**bits - 1) / 2)  # mid-rise N2UQ grid
        row = rep[name]
        assert row.method.startswith("n2uq")
        assert len(row.extra["weight_occupancy"]) == 2**bits
        if name == "stem":  # the network input is never quantized
            assert m.act_quant is None
            continue
        aq = m.act_quant
        assert isinstance(aq, LTQActQuantizer)
        t = aq.thresholds()
        assert t.shape == (1, 2**bits - 1) and torch.all(t[:, 1:] > t[:, :-1])
        x = torch.randn(4096) * 3 * aq.output_scale()
        y = aq(x).detach()
        levels = torch.unique(torch.round(y / aq.output_scale() + aq.zero))
        assert len(levels) <= 2**bits and levels.min() >= 0 and levels.max() <= 2**bits - 1
        occ = row.extra["act_occupancy"]
        assert len(occ) == 2**bits and sum(occ) == pytest.approx(1.0, abs=1e-5)
        assert row.extra["act_dead_levels"] == sum(v == 0 for v in occ)
        assert row.extra["threshold_spread"] >= 1.0
    assert rep.meta["n2uq"]["threshold_spread_max"] >= 1.0
    # the thresholds moved off the uniform grid somewhere (they are learned)
    assert max(r.extra.get("threshold_shift_max", 0.0) for r in rep.layers) > 1e-3


@pytest.fixture(scope="module")
def cnn_w2a2(cnn):
    """N2UQ-PTQ W2A2 of the CNN, shared by the tests that only read it (finetune copies it)."""
    return quant(cnn, w_bits=2, a_bits=2)


def test_n2uq_ptq_beats_nearest_at_w2a2(cnn, cnn_w2a2):
    fp = accuracy(cnn)
    near = accuracy(quant(cnn, "nearest", w_bits=2, a_bits=2))
    n2uq = accuracy(cnn_w2a2)
    assert n2uq > near, (fp, near, n2uq)


def test_n2uq_outside_blocks_and_determinism(mlp):
    """An MLP has no blocks: every layer is its own unit, thresholds still learn; same seed,
    same result."""
    a = quant(mlp, w_bits=3, a_bits=3, seed=3)
    b = quant(mlp, w_bits=3, a_bits=3, seed=3)
    for (n, x), y in zip(qlayers(a).items(), qlayers(b).values()):
        assert torch.equal(x.codes, y.codes), n
        if isinstance(x.act_quant, LTQActQuantizer):
            assert torch.equal(x.act_quant.thresholds(), y.act_quant.thresholds())
    shifts = [r.extra.get("threshold_shift_max", 0.0) for r in lowbit.report(a).layers]
    assert max(shifts) > 1e-3


def test_n2uq_uniform_grid_option_and_packed_kernels(cnn):
    q = quant(cnn, w_bits=3, a_bits=3, config={**FAST, "weight_grid": "uniform", "iters": 50})
    assert all(lowbit.report(q)[n].extra["weight_grid"] == "uniform" for n in qlayers(q))
    # N2UQ grid: the half-integer zero point packs exactly (as 3-bit codes 2q) for the packed kernels
    q2 = quant(cnn, w_bits=2, a_bits=2, config={**FAST, "iters": 50})
    packed = lowbit.pack(q2)
    from lowbit.pack import PackedLayer

    assert {m.w_bits for m in packed.modules() if isinstance(m, PackedLayer)} == {3}
    x = DATA[2][:64]
    with torch.no_grad():
        torch.testing.assert_close(packed(x), q2(x), rtol=1e-3, atol=1e-3)


# --- finetune -----------------------------------------------------------------------------


def train_loader(n=1024, bs=32):
    return loader(n=n, bs=bs, start=128)


def test_finetune_improves_w2a2_n2uq_over_its_ptq_start(cnn_w2a2):
    ptq = cnn_w2a2
    start = accuracy(ptq)
    ft = lowbit.finetune(ptq, train_loader(), epochs=2, lr=3e-3, progress=False)
    assert ft is not ptq and accuracy(ptq) == start  # the input model is untouched
    end = accuracy(ft)
    assert end > start + 1.0, (start, end)
    rep = lowbit.report(ft)
    meta = rep.meta["finetune"][-1]
    assert meta["epochs"] == 2 and len(meta["epoch_seconds"]) == 2 and meta["teacher"] == "float model"
    for name, m in qlayers(ft).items():
        assert m.codes.dtype == torch.uint8 and int(m.codes.max()) <= 3
        assert torch.all(m.zero == 1.5)
        assert rep[name].extra["finetune_weight"] == "n2uq"
        assert "finetune" in rep[name].method
        if isinstance(m.act_quant, LTQActQuantizer):
            t = m.act_quant.thresholds()
            assert torch.all(t[:, 1:] > t[:, :-1])  # still ordered after training
            assert len(rep[name].extra["finetune_act_occupancy"]) == 4


def test_finetune_lsq_uniform_improves_w2a2(cnn):
    ptq = quant(cnn, "nearest", w_bits=2, a_bits=2)
    start = accuracy(ptq)
    ft = lowbit.finetune(ptq, train_loader(), epochs=2, lr=3e-3, progress=False)
    assert accuracy(ft) > start + 1.0
    rep = lowbit.report(ft)
    for name, m in qlayers(ft).items():
        assert rep[name].extra["finetune_weight"] == "lsq"
        assert m.act_quant is None or isinstance(m.act_quant, UniformActQuantizer)


def test_finetune_step_zero_reproduces_the_model_and_is_seeded(mlp):
    ptq = quant(mlp, w_bits=2, a_bits=2)
    x = DATA[2][:128]
    with torch.no_grad():
        y0 = ptq(x)
        ft0 = lowbit.finetune(ptq, train_loader(64, 32), epochs=1, lr=0.0, quantizer_lr=0.0, progress=False)
        torch.testing.assert_close(ft0(x), y0, rtol=0, atol=0)
    a = lowbit.finetune(ptq, train_loader(256, 32), epochs=1, lr=1e-3, seed=5, progress=False)
    b = lowbit.finetune(ptq, train_loader(256, 32), epochs=1, lr=1e-3, seed=5, progress=False)
    for x1, x2 in zip(qlayers(a).values(), qlayers(b).values()):
        assert torch.equal(x1.codes, x2.codes) and torch.equal(x1.scale, x2.scale)


def test_finetune_frozen_thresholds(mlp):
    ptq = quant(mlp, w_bits=2, a_bits=2)
    t0 = {n: m.act_quant.thresholds() * 1 for n, m in qlayers(ptq).items() if isinstance(m.act_quant, LTQActQuantizer)}
    s0 = {n: qlayers(ptq)[n].act_quant.output_scale() for n in t0}
    ft = lowbit.finetune(ptq, train_loader(256, 32), epochs=1, lr=1e-3, freeze_thresholds=True, progress=False)
    moved = False
    for n, t in t0.items():
        aq = qlayers(ft)[n].act_quant
        assert torch.equal(aq.thresholds(), t)
        moved |= aq.output_scale() != s0[n]
        assert aq.start.requires_grad  # requires_grad restored
    assert moved


def test_finetune_errors(mlp):
    ptq = quant(mlp, w_bits=4, a_bits=4)
    with pytest.raises(ValueError, match="epochs"):
        lowbit.finetune(ptq, train_loader(), epochs=0)
    with pytest.raises(ValueError, match="weight_quantizer"):
        lowbit.finetune(ptq, train_loader(), weight_quantizer="nf4")
    with pytest.raises(ValueError, match="lowbit quantized layers"):
        lowbit.finetune(mlp, train_loader())
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lowbit.finetune(ptq, iter(train_loader()))
    bare = copy.deepcopy(ptq)
    del bare.lowbit_fp
    with pytest.raises(ValueError, match="teacher"):
        lowbit.finetune(bare, train_loader())
    with pytest.raises(TypeError, match="train_loader"):
        lowbit.finetune(ptq, torch.zeros(3))


def test_finetune_latent_start_keeps_the_methods_rounding():
    """Latent weights start at the float weight where it lies in its code's cell, and at the
    cell's centre where the method rounded it into another cell (never at the edge, where
    Adam's first step, about lr for every weight, would flip it back)."""
    from lowbit.finetune import CELL_MARGIN, latent_start

    codes = torch.tensor([[0, 1, 2, 3, 1, 2]], dtype=torch.uint8)
    layer = QuantLayer(codes, torch.tensor([[0.5]]), torch.tensor([[1.5]]), None, 2, (1, 6))
    deq = dequantize_codes(codes, layer.scale, layer.zero)  # -0.75 -0.25 0.25 0.75 -0.25 0.25
    w = torch.tensor([[-3.0, -0.2, 0.3, 0.5, 0.6, 0.499]])
    lat = latent_start(layer, w)
    # in cell: kept (codes 0 and 3 have open outer cells), but within CELL_MARGIN steps of the
    # centre on the inner side (0.5, 0.499 sit on their cells' edges); 0.6 was rounded into
    # code 1's cell from code 3's: the centre
    expected = torch.tensor([[-3.0, -0.2, 0.3, 0.75 - CELL_MARGIN * 0.5, -0.25, 0.25 + CELL_MARGIN * 0.5]])
    torch.testing.assert_close(lat, expected, rtol=0, atol=1e-6)
    assert torch.equal(torch.round(lat / 0.5 + 1.5).clamp(0, 3).to(torch.uint8), codes)
    assert torch.equal(latent_start(layer, None), deq)
