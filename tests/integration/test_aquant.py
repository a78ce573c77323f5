"""AQuant through lowbit.quantize on small models trained on scikit-learn's digits: learned
borders in the block loop, hard threshold form afterwards, report figures, agreement with QDrop
at 8 bits, the packed threshold path, borders never reused across weight quantizations."""

from __future__ import annotations

import pytest
import torch
from _digits import DATA, accuracy, loader, trained_cnn, trained_mlp

import lowbit
from lowbit.methods.aquant import AQuantConfig, check_borders, uniform_grid
from lowbit.quantizers import QuantLayer, UniformActQuantizer
from lowbit.threshold import BorderActQuantizer

# Short schedules for tests (see test_adaround.py): V saturates within a few hundred steps at
# lr 2e-2, lambda 0.1; borders move at border_lr 2e-2.
FAST = dict(iters=150, lr=2e-2, reg_lambda=0.1, num_samples=256)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quant(model, method, **kw):
    kw.setdefault("keep_first_last", None)
    return lowbit.quantize(model, loader(256), method, progress=False, **kw)


@pytest.fixture(scope="module")
def cnn():
    return trained_cnn()


@pytest.fixture(scope="module")
def mlp():
    return trained_mlp()


@pytest.fixture(scope="module")
def w2a2(cnn):
    near = quant(cnn, "nearest", w_bits=2, a_bits=2)
    aq = quant(cnn, "aquant", w_bits=2, a_bits=2, config=dict(FAST, keep_better=False, border_lr=2e-2))
    return near, aq


def bordered(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)
            and isinstance(m.act_quant, BorderActQuantizer)}


def layer_inputs(model, names, x):
    got = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: got.setdefault(n, a[0]))
             for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


# --- configuration ----------------------------------------------------------------------


def test_config_defaults_errors_and_registration():
    c = AQuantConfig()
    assert (c.mode, c.tau, c.hard_phase, c.parameterization, c.per_channel, c.kl_weight, c.drop_prob) == (
        "block", (0.2, 0.01), 0.1, "auto", True, 0.0, 0.5)
    assert AQuantConfig.from_dict({"tau": [0.5, 0.05]}).tau == (0.5, 0.05)
    for bad, field in [({"mode": "layer"}, "mode"), ({"tau": (0.01, 0.2)}, "tau"), ({"tau": 0.2}, "tau"),
                       ({"hard_phase": 1.5}, "hard_phase"), ({"parameterization": "spline"}, "parameterization"),
                       ({"eps": 0.5}, "eps"), ({"kl_weight": -1.0}, "kl_weight"), ({"border_lr": -1}, "border_lr"),
                       ({"per_channel": 1}, "per_channel"), ({"iters": 0}, "iters")]:
        with pytest.raises(ValueError, match=field):
            AQuantConfig.from_dict(bad)
    assert "aquant" in lowbit.list_methods()
    assert c.to_dict()["method"] == "aquant"


def test_tau_schedule_anneals_then_goes_hard():
    c = AQuantConfig(tau=(0.2, 0.01), hard_phase=0.1)
    taus = [c.tau_at(t, 100) for t in range(1, 101)]
    assert taus[0] == (pytest.approx(0.2), False)
    soft = [t for t, hard in taus if not hard]
    assert len(soft) == 90 and soft[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(soft, soft[1:]))
    assert all(hard and t == 0.01 for t, hard in taus[90:])


# --- a W2A2 run on a residual CNN ---------------------------------------------------------


def test_w2a2_learns_borders_in_blocks_and_reports_them(w2a2):
    near, aq = w2a2
    rep = aq.lowbit_report
    assert rep.meta["method"] == "aquant"
    # every layer with a low-bit weight and an input quantizer: blocks, and one-layer units
    assert set(bordered(aq)) == {"b1.conv1", "b1.conv2", "down", "b2.conv1", "b2.conv2", "fc"}
    assert isinstance(aq.stem.act_quant, type(None))  # reads the image: never quantized
    for n in bordered(aq):
        x = rep[n].extra
        assert rep[n].method == "aquant" and x["adaround_mode"] == "block"
        assert x["recon_adaround"] < x["recon_nearest"], (n, x)
        occ = x["border_occupancy"]
        assert len(occ) == 4 and sum(occ) == pytest.approx(1.0, abs=1e-4)
        assert x["border_threshold_shift_max"] > 0.0  # borders moved off 1/2
        assert 0.0 < x["border_min"] <= x["border_mean"] <= x["border_max"] < 1.0
        assert x["border_parameterization"] == "table"  # <= 3 bits
    assert rep["b1.conv1"].extra["border_channels"] == 8 and rep["fc"].extra["border_channels"] == 16
    assert accuracy(aq) > accuracy(near) + 20, (accuracy(near), accuracy(aq))


def test_outputs_take_only_the_levels_and_thresholds_stay_monotone(w2a2):
    _, aq = w2a2
    layers = bordered(aq)
    xs = layer_inputs(aq, list(layers), DATA[2][:64])
    for n, layer in layers.items():
        bq = layer.act_quant
        assert bq.hard  # hard decisions even if the model is put in training mode
        t = bq.thresholds()
        assert t.shape == (bq.channels, 3)
        assert bool((t[:, 1:] > t[:, :-1]).all()), n
        x = xs[n]
        # scale the input range up too: saturation must also land on a level
        for inp in (x, 3 * x - x.mean()):
            with torch.no_grad():
                lvl = bq(inp) / bq.scale + bq.zero
            assert torch.allclose(lvl, lvl.round(), atol=1e-4), n
            assert set(lvl.round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}, n
            # and the fake-quant forward is the exported multi-threshold form
            assert torch.equal(lvl.round().to(torch.uint8), bq.codes(inp)), n


def test_packed_model_runs_the_threshold_step_and_matches(w2a2):
    _, aq = w2a2
    packed = lowbit.pack(aq)
    for n in bordered(aq):
        assert packed.get_submodule(n).path == "threshold_int8", n
    x = DATA[2][:100]
    with torch.no_grad():
        a, b = aq(x), packed(x)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_borders_are_never_reused_for_other_weights(w2a2):
    _, aq = w2a2
    layer = aq.b1.conv2
    check_borders(layer, "b1.conv2")  # as learned
    bq = layer.act_quant
    # a fresh start from a learned quantizer keeps its step, drops its borders
    base = uniform_grid(bq)
    assert isinstance(base, UniformActQuantizer) and base.scale.item() == pytest.approx(bq.scale.item())
    import copy

    other = copy.deepcopy(aq)
    q = other.b1.conv2
    codes = q.codes.clone()
    codes[0, 0] = (int(codes[0, 0]) + 1) % 4
    q.set_codes(codes, q.scale, q.zero, q.w_bits)
    with pytest.raises(ValueError, match="b1.conv2.*other weight codes"):
        lowbit.pack(other)


# --- agreement with QDrop at 8 bits ------------------------------------------------------------


def test_w8a8_agrees_with_qdrop(cnn):
    cfg = dict(FAST, iters=100, reconstruct_8bit=True)
    qd = quant(cnn, "adaround", w_bits=8, a_bits=8, config=dict(cfg, mode="block"))
    aq = quant(cnn, "aquant", w_bits=8, a_bits=8, config=cfg)
    assert set(bordered(aq)) >= {"b1.conv1", "b2.conv2"}
    assert aq.b1.conv1.act_quant.parameterization == "affine"  # > 3 bits
    fp, a_qd, a_aq = accuracy(cnn), accuracy(qd), accuracy(aq)
    assert abs(a_aq - a_qd) <= 1.0 and abs(a_aq - fp) <= 1.0, (fp, a_qd, a_aq)
    with torch.no_grad():
        yq, ya = qd(DATA[2]), aq(DATA[2])
    assert float((yq.argmax(1) == ya.argmax(1)).float().mean()) >= 0.98


# --- models without blocks, determinism, the global term ----------------------------------------


def test_mlp_layers_outside_blocks_get_borders_deterministically(mlp):
    cfg = dict(FAST, iters=60, border_lr=2e-2)
    kw = dict(w_bits=3, a_bits=3, seed=1, overrides={"fc1": {"a_bits": None}})
    a = quant(mlp, "aquant", config=cfg, **kw)
    b = quant(mlp, "aquant", config=cfg, **kw)
    # fc1 has a float input: AdaRound's layer mode; fc2, fc3 learn borders as one-layer units
    assert set(bordered(a)) == {"fc2", "fc3"}
    assert a.lowbit_report["fc1"].extra["adaround_mode"] == "layer"
    for n in ("fc1", "fc2", "fc3"):
        assert torch.equal(a.get_submodule(n).codes, b.get_submodule(n).codes)
    for n in ("fc2", "fc3"):
        assert torch.equal(a.get_submodule(n).act_quant.border_param, b.get_submodule(n).act_quant.border_param)
    per_tensor = quant(mlp, "aquant", config=dict(cfg, per_channel=False), **kw)
    assert per_tensor.fc2.act_quant.thresholds().shape == (1, 7)


def test_global_kl_term_changes_what_is_learned(mlp):
    cfg = dict(FAST, iters=40, border_lr=2e-2)
    plain = quant(mlp, "aquant", w_bits=2, a_bits=2, config=cfg)
    kl = quant(mlp, "aquant", w_bits=2, a_bits=2, config=dict(cfg, kl_weight=1.0))
    assert not torch.equal(plain.fc2.act_quant.border_param, kl.fc2.act_quant.border_param)
    assert accuracy(kl) > 50.0
    # the FP model's parameters get their requires_grad back
    assert all(p.requires_grad for p in mlp.parameters())


def test_nearest_kept_restores_the_uniform_quantizer(mlp):
    # one step learns nothing: where the block got worse, nearest and the uniform grid come back
    q = quant(mlp, "aquant", w_bits=3, a_bits=3, config=dict(iters=1, num_samples=256))
    for n in ("fc2", "fc3"):
        row = q.lowbit_report[n]
        layer = q.get_submodule(n)
        if row.extra["kept_nearest"]:
            assert isinstance(layer.act_quant, UniformActQuantizer)
        else:
            assert isinstance(layer.act_quant, BorderActQuantizer)
