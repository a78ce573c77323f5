"""lowbit.pack: packed modules against the fake-quant model they come from.

* Per layer, on the very same input: the packed output equals the fake-quant output up to
  float rounding (a rigorous bound, below) and within one step of the layer's integer output
  grid (one LSB of s_x * s_w) on the int8 paths.
* With power-of-two scales every float operation is exact, so the packed layer must give the
  fake-quant layer's bits exactly (the "exact on integer paths" contract), at every ISA.
* Whole models (CNN with grouped / depthwise / dilated / 'same'-padded convs, MLP) at 2, 3, 4,
  8 and 6-bit weights, A8 / A4 / float activations, per channel and per group.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lowbit
from lowbit import _native
from lowbit.pack import PackedConv2d, PackedLayer, PackedLinear, container_bits, pack
from lowbit.quantizers import QuantConv2d, QuantLayer, QuantLinear, UniformActQuantizer

EPS = float(np.finfo(np.float32).eps)

# torch warns that an even 'same' kernel pads a copy of the input: that is the case under test.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")




class CNN(nn.Module):
    """stem K=27 (ragged, per channel), grouped conv with 16 outputs per group (packed kernel,
    one product per group), depthwise (decoded path), 2x2 'same' conv (asymmetric padding),
    dilated 1x1-free 3x1 conv, pointwise residual, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.same = nn.Conv2d(32, 32, 2, padding="same")
        self.dil = nn.Conv2d(32, 16, (3, 1), padding=(2, 0), dilation=(2, 1))
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.gconv(x))
        x = torch.relu(self.same(torch.relu(self.dw(x)))) + x
        x = torch.tanh(self.dil(x))
        x = torch.relu(self.pw(x) + x)
        return self.head(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


def make(kind: str, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = CNN() if kind == "cnn" else MLP()
        if kind == "cnn":
            m.bn.running_mean.normal_(0, 0.3)
            m.bn.running_var.uniform_(0.5, 2)
        shape = (3, 8, 8) if kind == "cnn" else (64,)
        g = torch.Generator().manual_seed(seed + 1)
        data = [torch.randn(8, *shape, generator=g) for _ in range(3)]
        x = torch.randn(5, *shape, generator=g)
    return m.eval(), data, x


# K of the CNN's layers: stem 27, gconv 72, dw 9, same 128, dil 96, pw 16, head 16.
CNN_NOT_GROUPABLE = {name: {"granularity": "channel", "group_size": None} for name in ("stem", "dw", "gconv")}


def quantize(kind, w_bits, a_bits, granularity="channel", group_size=None, symmetric=False):
    m, data, x = make(kind)
    overrides = CNN_NOT_GROUPABLE if kind == "cnn" and granularity == "group" else None
    q = lowbit.quantize(m, data, w_bits=w_bits, a_bits=a_bits, granularity=granularity, group_size=group_size,
                        symmetric=symmetric, keep_first_last=None, progress=False, num_samples=24,
                        overrides=overrides)
    return q, x


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each QuantLayer of `model` sees on x."""
    seen, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLayer):
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, a[0].detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def int8_offset(aq: UniformActQuantizer) -> int:
    """d = off - z of qmatmul.h's static path (0 when the codes fit int8 without a shift)."""
    z, qmax = int(aq.zero.item()), aq.qmax
    return min(max(z, qmax - 127), 128) - z


def check_layer(name: str, fq: QuantLayer, pk: PackedLayer, x: torch.Tensor) -> None:
    """Packed vs fake-quant on the same input: within float rounding, and (int8 paths) within
    one LSB of the integer output grid."""
    with torch.no_grad():
        y_fq, y_pk = fq(x), pk(x)
        assert y_pk.shape == y_fq.shape and y_pk.dtype == y_fq.dtype
        xq = fq.quantize_input(x)
        W = fq.weight
        K = W[0].numel()
        mag = xq.abs()
        if pk.path == "int8_static":  # the kernel's terms include d * s_x per input (qmatmul.h)
            mag = mag + abs(int8_offset(pk.act_quant)) * float(pk.act_quant.scale)
        if isinstance(fq, QuantLinear):
            absprod = F.linear(mag, W.abs())
        else:
            absprod = F.conv2d(mag, W.abs(), None, fq.stride, fq.padding, fq.dilation, fq.groups)
        bias = 0 if fq.bias is None else fq.bias.abs().reshape(-1, *([1] * (y_fq.dim() - 2)))
        # Both sides round a K-term sum plus a few scalings: |err| <= 2 (K + 4) eps sum |w x|.
        tol = 2 * (K + 4) * EPS * absprod + 2 * EPS * bias + 1e-30
        err = (y_pk - y_fq).abs()
        worst = float((err / tol).max())
        assert worst <= 1.0, f"layer '{name}' ({pk.path}): error {float(err.max()):.3g} exceeds float rounding"
        if pk.path == "int8_static":
            lsb = float(pk.act_quant.scale) * float(fq.scale.min())
            assert float(err.max()) < lsb, f"layer '{name}': error {float(err.max()):.3g} >= one output step {lsb:.3g}"


CONFIGS = [
    ("cnn", 4, 8, "channel", None),
    ("cnn", 2, None, "channel", None),
    ("cnn", 3, 4, "channel", None),
    ("cnn", 8, 8, "channel", None),
    ("cnn", 6, 8, "channel", None),  # 5..7-bit codes live in the 8-bit format
    ("cnn", 4, 8, "group", 16),
    ("cnn", 4, 8, "tensor", None),
    ("mlp", 4, 8, "group", 16),
    ("mlp", 3, None, "group", 16),
    ("mlp", 2, 2, "channel", None),
    ("mlp", 8, 8, "group", 32),  # K = 48 is not a multiple of 32: fc2 falls back per channel
]


@pytest.mark.filterwarnings("ignore:layer .fc2.. group_size=32 does not divide")
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c[0]}-W{c[1]}A{c[2]}-{c[3]}{c[4] or ''}")
def test_packed_model_matches_fake_quant(cfg):
    kind, w_bits, a_bits, gran, gs = cfg
    q, x = quantize(kind, w_bits, a_bits, gran, gs)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    p = pack(q)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())  # qmodel untouched
    assert not any(isinstance(m, QuantLayer) for m in p.modules())
    assert p.lowbit_report is q.lowbit_report or p.lowbit_report.to_json() == q.lowbit_report.to_json()
    inputs = layer_inputs(q, x)
    for name, fq in q.named_modules():
        if not isinstance(fq, QuantLayer):
            continue
        pk = p.get_submodule(name)
        assert isinstance(pk, PackedLinear if isinstance(fq, QuantLinear) else PackedConv2d)
        assert pk.w_bits == fq.w_bits and pk.bits == container_bits(fq.w_bits)
        assert pk.granularity == ("channel" if fq.granularity == "tensor" else fq.granularity)
        torch.testing.assert_close(pk.weight, fq.weight, rtol=0, atol=0)  # the packed bytes are the codes
        expected_path = "weight_only" if fq.act_quant is None else "int8_static"
        if isinstance(fq, QuantConv2d) and fq.groups > 1 and (fq.out_channels // fq.groups) % 16:
            expected_path = "decoded"
        assert pk.path == expected_path, name
        check_layer(name, fq, pk, inputs[name])
    with torch.no_grad():
        y_fq, y_pk = q(x), p(x)
    # Whole model: the same float-rounding-sized differences; a flip of one activation code
    # somewhere would show as a jump many orders larger.
    assert float((y_pk - y_fq).abs().max()) <= 1e-4 * float(y_fq.abs().max()), float((y_pk - y_fq).abs().max())


def grid_layer(kind: str, w_bits: int, a_bits: int | None, *, groups: int = 1, group_size: int = 0,
               seed: int = 0) -> QuantLayer:
    """A QuantLinear / QuantConv2d on power-of-two grids: weight scales 2^-5..2^-7, activation
    scale 2^-4, bias a multiple of the product grid; every product and sum is then exact."""
    rng = np.random.default_rng(seed)
    if kind == "linear":
        N, K = 40, 96
    else:
        cin, N, ks = 32, 32, (3, 3)
        K = cin // groups * ks[0] * ks[1]
    G = K // group_size if group_size else 1
    codes = torch.from_numpy(rng.integers(0, 2**w_bits, size=(N, K)).astype(np.uint8))
    scale = torch.from_numpy(2.0 ** -rng.integers(5, 8, size=(N, G))).float()
    zero = torch.from_numpy(rng.integers(0, 2**w_bits, size=(N, G))).float()
    bias = torch.from_numpy(rng.integers(-64, 64, size=N) * 2.0**-11).float()
    aq = None
    if a_bits is not None:
        aq = UniformActQuantizer(a_bits, 2.0**-4, float(rng.integers(0, 2**a_bits)), signed=True)
    kw = dict(codes=codes, scale=scale, zero=zero, bias=bias, w_bits=w_bits, act_quant=aq)
    if kind == "linear":
        return QuantLinear(K, N, **kw)
    return QuantConv2d(cin, N, ks, (1, 1), (1, 1), (1, 1), groups, **kw)


@pytest.mark.parametrize("w_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("a_bits", [8, 6, 4, None])
@pytest.mark.parametrize("kind", ["linear", "conv", "gconv"])
def test_integer_paths_are_exact(isa, kind, w_bits, a_bits):
    """Power-of-two scales: the fake-quant layer computes exactly, and so must the packed one."""
    group_size = 32 if kind == "linear" and w_bits != 8 else 0
    layer = grid_layer("linear" if kind == "linear" else "conv", w_bits, a_bits,
                       groups=2 if kind == "gconv" else 1, group_size=group_size, seed=w_bits)
    pk = pack(layer)
    assert pk.path == ("weight_only" if a_bits is None else "int8_static")
    g = torch.Generator().manual_seed(a_bits or 0)
    shape = (7, layer.in_features) if kind == "linear" else (2, 32, 5, 6)
    x = torch.randn(*shape, generator=g)
    if a_bits is None:  # fp32 activations: on a 2^-4 grid so that the fake-quant product is exact
        x = torch.round(x * 16) / 16
    with torch.no_grad():
        assert torch.equal(pk(x), layer(x))


@pytest.mark.parametrize("w_bits", [2, 3, 4])
@pytest.mark.parametrize("a_bits", [8, None])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_half_integer_zeros_pack_exactly(kind, w_bits, a_bits):
    """Mid-rise grids (N2UQ: zero (2^b - 1) / 2, some rows integer) pack as (b + 1)-bit codes
    2q with scale s / 2 and zero 2z: same weight bit for bit, same exact outputs."""
    layer = grid_layer(kind, w_bits, a_bits, seed=w_bits)
    half = torch.full_like(layer.zero, ((1 << w_bits) - 1) / 2)
    half[::3] = 1.0  # rows with an integer zero as well
    layer.set_codes(layer.codes, layer.scale, half, w_bits)
    pk = pack(layer)
    assert pk.w_bits == w_bits + 1 and pk.bits == container_bits(w_bits + 1)
    q, scale, zero = _native.unpack_weights(pk.packed())
    K = layer.codes.shape[1]
    assert np.array_equal(q[:, :K].astype(np.int64), 2 * layer.codes.numpy().astype(np.int64))
    assert np.array_equal(scale, layer.scale.numpy() / 2) and np.array_equal(zero, 2 * half.numpy())
    g = torch.Generator().manual_seed(w_bits)
    x = torch.randn(*((7, layer.in_features) if kind == "linear" else (2, 32, 5, 6)), generator=g)
    if a_bits is None:
        x = torch.round(x * 16) / 16
    with torch.no_grad():
        assert torch.equal(pk(x), layer(x))


def test_dynamic_int8_is_opt_in_and_close():
    q, x = quantize("mlp", 4, None)
    exact = pack(q)
    dyn = pack(q, dynamic_act=True)
    assert {m.path for m in exact.modules() if isinstance(m, PackedLayer)} == {"weight_only"}
    assert {m.path for m in dyn.modules() if isinstance(m, PackedLayer)} == {"int8_dynamic"}
    with torch.no_grad():
        y, yd = q(x), dyn(x)
    rel = float((yd - y).norm() / y.norm())
    assert 0 < rel < 0.02, rel  # an approximation (per-row int8 of the input), a close one


def test_pack_api_and_errors():
    q, x = quantize("mlp", 4, 8)
    # lowbit.pack is the function and the module at once
    assert isinstance(lowbit.pack(q).fc2, PackedLinear)
    from lowbit.pack import PackedLinear as PL

    assert PL is PackedLinear
    p = pack(q, inplace=True)
    assert p is q and isinstance(q.fc1, PackedLinear)
    with torch.no_grad():
        y = p(x)
        assert p(x.double()).dtype == torch.float64
        torch.testing.assert_close(p(x.double()).float(), y)
        assert p(x[:1]).shape == (1, 10) and p(x.reshape(5, 1, 64)).shape == (5, 1, 10)
    with pytest.raises(ValueError, match="expected 64 input features"):
        p.fc1(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="packed layers run on CPU"):
        p.fc1(torch.zeros(2, 64, device="meta"))
    q2, _ = quantize("mlp", 4, None)
    q2.fc2.weight_override = q2.fc2.weight.clone()
    with pytest.raises(ValueError, match="layer 'fc2': a method is still optimising it"):
        pack(q2)
    lin = grid_layer("linear", 4, None)
    lin.set_codes(lin.codes, torch.ones(40, 12), torch.zeros(40, 12), 4)  # groups of 8
    with pytest.raises(ValueError, match="group_size 8 is not a multiple of 16"):
        pack(lin)
    lin.set_codes(lin.codes, torch.ones(40, 1), torch.full((40, 1), 0.25), 4)
    with pytest.raises(ValueError, match="zero points must be integers"):
        pack(lin)
    lin8 = grid_layer("linear", 8, None)
    lin8.set_codes(lin8.codes, torch.ones(40, 1), torch.full((40, 1), 127.5), 8)
    with pytest.raises(ValueError, match="half-integer zero points need 9-bit codes"):
        pack(lin8)
    with pytest.raises(ValueError, match="no packed format for 9-bit"):
        container_bits(9)


def test_packed_weights_are_smaller():
    q, _ = quantize("mlp", 4, None)
    p = pack(q)
    fp_bytes = sum(m.weight.numel() * 4 for m in make("mlp")[0].modules() if isinstance(m, nn.Linear))
    packed_bytes = sum(m.codes.numel() for m in p.modules() if isinstance(m, PackedLayer))
    # 4 bits per weight plus per-channel padding to 16-row tiles (fc3: 10 rows -> 16).
    assert packed_bytes <= fp_bytes / 8 * 16 / 10
    assert packed_bytes == sum(_native.packed_layout(4, m.out_features, m.K, 0)["code_bytes"]
                               for m in p.modules() if isinstance(m, PackedLayer))


def test_threads_do_not_change_the_packed_model():
    q, x = quantize("cnn", 4, 8)
    p = pack(q)
    outs = []
    try:
        for n in (1, 2):
            _native.set_num_threads(n)
            with torch.no_grad():
                outs.append(p(x))
    finally:
        _native.set_num_threads(0)
    assert torch.equal(outs[0], outs[1])


def test_deepcopy_and_state_dict():
    q, x = quantize("cnn", 3, 8)
    p = pack(q)
    p2 = copy.deepcopy(p)
    with torch.no_grad():
        assert torch.equal(p(x), p2(x))
    sd = p.state_dict()
    assert sd["gconv.codes"].dtype == torch.uint8 and sd["gconv.scales"].dtype == torch.float32


def test_benchmark_runs_both_models(capsys):
    q, x = quantize("cnn", 4, 8)
    res = lowbit.benchmark(q, x, repeats=3, warmup=1, threads=1)
    out = capsys.readouterr().out
    assert "fp32" in out and "packed" in out and "speedup" in out
    assert res["packed_ms"] > 0 and res["fp_ms"] > 0 and res["repeats"] >= 3
    assert res["speedup"] == pytest.approx(res["fp_ms"] / res["packed_ms"])
    assert res["packed_bytes"] < res["fp_bytes"]
    # the float twin holds the weights the packed bytes stand for: the difference is the
    # activation quantization of the int8 paths, not a different model
    with torch.no_grad():
        y = q(x)
    assert res["max_abs_diff"] < 0.1 * float(y.abs().max())
    from lowbit.bench import float_twin

    twin = float_twin(q)
    assert not any(isinstance(m, (QuantLayer, PackedLayer)) for m in twin.modules())
    assert torch.equal(twin.gconv.weight, q.gconv.weight)
    with pytest.raises(ValueError, match="no packed or quantized layer"):
        lowbit.benchmark(make("mlp")[0], torch.zeros(1, 64))
