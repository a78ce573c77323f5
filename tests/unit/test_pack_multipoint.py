"""Packed multipoint: base and point rows in one packed matrix, folded back per channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import lowbit
from lowbit import _native
from lowbit.methods.multipoint import MultipointConv2d, MultipointLinear, packed_multipoint_classes
from lowbit.pack import pack
from lowbit.quantizers import UniformActQuantizer

# The fold adds no ISA-specific code and test_pack.py holds the kernels to every ISA: the
# scalar kernels and the machine's best suffice here.
ISAS = sorted({"scalar", _native.detected_isa()}, key=lambda i: i != "scalar")


@pytest.fixture(params=ISAS)
def isa(request):  # as tests/conftest.py's
    _native.set_isa(request.param)
    try:
        assert _native.active_isa() == request.param
        yield request.param
    finally:
        _native.set_isa(None)


def grid_multipoint(kind: str, w_bits: int, a_bits: int | None, *, groups: int = 1, per_tensor: bool = False,
                    n_points: int = 9, seed: int = 0):
    """A multipoint layer on power-of-two grids (weight scales 2^-5..2^-7, point scales
    2^-7..2^-9, activation scale 2^-4, bias on the product grid): every float operation of the
    fake-quant layer is exact, so the packed one must give the same bits."""
    rng = np.random.default_rng(seed)
    if kind == "linear":
        N, K = 40, 96
    else:
        cin, N, ks = 32, 32, (3, 3)
        K = cin // groups * ks[0] * ks[1]
    R = 1 if per_tensor else N
    codes = torch.from_numpy(rng.integers(0, 2**w_bits, size=(N, K)).astype(np.uint8))
    scale = torch.from_numpy(2.0 ** -rng.integers(5, 8, size=(R, 1))).float()
    zero = torch.from_numpy(rng.integers(0, 2**w_bits, size=(R, 1))).float()
    bias = torch.from_numpy(rng.integers(-64, 64, size=N) * 2.0**-13).float()
    aq = None
    if a_bits is not None:
        aq = UniformActQuantizer(a_bits, 2.0**-4, float(rng.integers(0, 2**a_bits)), signed=True)
    kw = dict(codes=codes, scale=scale, zero=zero, bias=bias, w_bits=w_bits, act_quant=aq)
    if kind == "linear":
        layer = MultipointLinear(K, N, **kw)
    else:
        layer = MultipointConv2d(cin, N, ks, (1, 1), (1, 1), (1, 1), groups, **kw)
    half = 2 ** (w_bits - 1)
    channel = rng.integers(0, N, n_points)
    channel[-2:] = channel[:1]  # one channel with three points
    layer.set_points(channel, rng.integers(0, 2**w_bits, (n_points, K)),
                     2.0 ** -rng.integers(7, 10, n_points), rng.choice([half, half - 1], n_points), w_bits)
    return layer


@pytest.mark.parametrize("w_bits", [2, 3, 4, 8])
@pytest.mark.parametrize("a_bits", [8, None])
@pytest.mark.parametrize("kind", ["linear", "conv", "gconv", "tensor"])
def test_packed_multipoint_is_exact_on_integer_paths(isa, kind, w_bits, a_bits):
    """Packed product of the stacked matrix + segmented sum = the dense dequantized product."""
    layer = grid_multipoint("linear" if kind in ("linear", "tensor") else "conv", w_bits, a_bits,
                            groups=2 if kind == "gconv" else 1, per_tensor=kind == "tensor", seed=w_bits)
    assert len(set(layer.point_channel.tolist())) < layer.num_points  # some channels get 2+
    pk = pack(layer)
    lin, conv = packed_multipoint_classes()
    assert isinstance(pk, lin if kind in ("linear", "tensor") else conv) and pk.num_points == 9
    g = torch.Generator().manual_seed(a_bits or 0)
    shape = (7, layer.in_features) if kind in ("linear", "tensor") else (2, 32, 5, 6)
    x = torch.randn(*shape, generator=g)
    if a_bits is None:  # fp32 activations on a 2^-4 grid keep the fake-quant product exact
        x = torch.round(x * 16) / 16
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(pk(x), y)
        assert torch.equal(pk.weight, layer.weight)
    if kind != "gconv":
        assert pk.path == ("weight_only" if a_bits is None else "int8_static")


def test_packed_multipoint_model_matches_fake_quant():
    """A real multipoint model (scales from the method, not powers of two): the packed model
    equals the fake-quant one up to float rounding."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=2),
                      nn.ReLU(), nn.Flatten(), nn.Linear(32 * 36, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    data = [torch.randn(16, 3, 6, 6) for _ in range(4)]
    for a_bits, gran in ((8, "channel"), (None, "tensor")):
        q = lowbit.quantize(m, data, "multipoint", w_bits=2, a_bits=a_bits, granularity=gran,
                            keep_first_last=None, progress=False, config=dict(overhead=0.2))
        assert lowbit.report(q).meta["multipoint"]["points"] > 0
        p = pack(q)
        x = torch.randn(8, 3, 6, 6)
        with torch.no_grad():
            y_fq, y_pk = q(x), p(x)
        assert float((y_pk - y_fq).abs().max()) <= 1e-4 * float(y_fq.abs().max())
        assert p[0].num_points == q[0].num_points


def test_pack_refuses_what_one_matrix_cannot_hold():
    layer = grid_multipoint("linear", 2, 8)
    layer.point_bits = 3
    with pytest.raises(ValueError, match="3-bit points on a 2-bit base"):
        pack(layer)
    layer = grid_multipoint("linear", 2, 8, n_points=0)
    layer.set_wide(torch.tensor([1, 4]), torch.zeros(2, 96, dtype=torch.uint8), torch.ones(1, 1),
                   torch.ones(1, 1), 3)
    with pytest.raises(ValueError, match="fake-quant only"):
        pack(layer)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", ["fake_quant", "packed"])
@pytest.mark.parametrize("kind,w_bits,a_bits,per_tensor,groups,bias", [
    ("linear", 2, 8, False, 1, True), ("conv", 3, None, True, 1, False), ("conv", 4, 8, False, 2, True)])
def test_save_load_round_trips_multipoint(tmp_path, form, kind, w_bits, a_bits, per_tensor, groups, bias):
    layer = grid_multipoint(kind, w_bits, a_bits, per_tensor=per_tensor, groups=groups)
    if not bias:
        layer.bias = None
    q = pack(layer) if form == "packed" else layer
    assert q.num_points > 0
    if kind == "linear":
        m, x = nn.Sequential(q, nn.ReLU(), nn.Linear(40, 4)), torch.randn(5, 96)
        skel = nn.Sequential(nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 4))
    else:
        m, x = nn.Sequential(q, nn.ReLU()), torch.randn(2, 32, 6, 6)
        skel = nn.Sequential(nn.Conv2d(32, 32, 3, groups=groups), nn.ReLU())
    lowbit.save(m, tmp_path / "m.lowbit")
    back = lowbit.load(tmp_path / "m.lowbit", model=skel)
    assert type(back[0]) is type(q) and back[0].num_points == q.num_points
    if form == "fake_quant":  # (packed point rows are stored at the layer's w_bits)
        assert back[0].point_bits == q.point_bits
    assert same_state(q, back[0])
    with torch.no_grad():
        assert torch.equal(m(x), back(x))


def test_save_load_round_trips_wider_rows(tmp_path):
    layer = grid_multipoint("linear", 2, None, n_points=3)
    layer.set_wide(torch.tensor([1, 4]), torch.randint(0, 8, (2, 96), dtype=torch.uint8), torch.full((2, 1), 2.0**-6),
                   torch.full((2, 1), 4.0), 3)
    lowbit.save(nn.Sequential(layer), tmp_path / "m.lowbit")
    back = lowbit.load(tmp_path / "m.lowbit", model=nn.Sequential(nn.Linear(96, 40)))[0]
    assert same_state(layer, back) and back.wide_bits == 3 and back.effective_bits == layer.effective_bits


@pytest.mark.parametrize("packed", [False, True])
def test_load_refuses_bad_point_channels(tmp_path, packed):
    layer = grid_multipoint("linear", 2, 8)
    if packed:
        layer = pack(layer)
    layer.point_channel[0] = 40  # past the 40 output channels
    lowbit.save(nn.Sequential(layer), tmp_path / "bad.lowbit")
    with pytest.raises(lowbit.io.LowbitFileError, match="point channel out of range 0..39"):
        lowbit.load(tmp_path / "bad.lowbit", model=nn.Sequential(nn.Linear(96, 40)))
