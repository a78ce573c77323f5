"""lowbit.save / lowbit.load: bit-exact round trips of fake-quant, packed and mixed models, file
size that follows the bits, and a fuzz loop over truncated, corrupted and tampered files (every
one must raise LowbitFileError, or load a model identical to the saved one). Never pickle."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

import lowbit
from lowbit import io as lio
from lowbit.io import LowbitFileError
from lowbit.pack import PackedLayer, PackedLinear
from lowbit.quantizers import QuantLayer, QuantLinear


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.gconv(x))
        x = torch.relu(self.dw(x)) + x
        return self.head(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 48)
        self.norm = nn.LayerNorm(48)  # a float module with parameters, stored as it is
        self.fc2 = nn.Linear(48, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def skeleton(kind: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = CNN() if kind == "cnn" else MLP()
        if kind == "cnn":
            m.bn.running_mean.normal_(0, 0.3)
            m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


def sample(kind: str, n: int, seed: int) -> torch.Tensor:
    shape = (3, 8, 8) if kind == "cnn" else (64,)
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def quantized(kind: str, w_bits: int = 4, a_bits: int | None = 8, **kw) -> nn.Module:
    data = [sample(kind, 8, i) for i in range(3)]
    return lowbit.quantize(skeleton(kind), data, w_bits=w_bits, a_bits=a_bits, keep_first_last=None,
                           progress=False, num_samples=24, **kw)


def assert_same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for (n, ma), mb in zip(a.named_modules(), b.modules()):
        if isinstance(ma, (QuantLayer, PackedLayer)):
            assert ma.w_bits == mb.w_bits and ma.granularity == mb.granularity, n
            assert (ma.act_quant is None) == (mb.act_quant is None), n
            if ma.act_quant is not None:
                assert (ma.act_quant.bits, ma.act_quant.signed) == (mb.act_quant.bits, mb.act_quant.signed)
        if isinstance(ma, PackedLayer):
            assert (ma.bits, ma.group_size, ma.path) == (mb.bits, mb.group_size, mb.path), n
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("form", ["fake_quant", "packed", "mixed"])
@pytest.mark.parametrize("kind,w_bits,a_bits,gs", [("cnn", 4, 8, None), ("cnn", 3, None, None),
                                                    ("mlp", 2, 4, 16), ("mlp", 6, 8, None)])
def test_round_trip_is_bit_exact(tmp_path, form, kind, w_bits, a_bits, gs):
    q = quantized(kind, w_bits, a_bits, group_size=gs)
    if form == "packed":
        q = lowbit.pack(q)
    elif form == "mixed":
        name = "gconv" if kind == "cnn" else "fc2"
        setattr(q, name, lowbit.pack(getattr(q, name)))
    path = tmp_path / "m.lowbit"
    lowbit.save(q, path)
    back = lowbit.load(path, model=skeleton(kind, seed=123))  # skeleton weights do not matter
    assert_same_model(q, back, sample(kind, 4, 99))
    assert json.loads(back.lowbit_report.to_json()) == json.loads(q.lowbit_report.to_json())
    meta = lio.read_metadata(path)
    assert meta["form"] == form and meta["format_version"] == lio.FORMAT_VERSION
    assert meta["pack_format_version"] == 1 and meta["lowbit_version"] == lowbit.__version__
    layer = meta["layers"]["fc2" if kind == "mlp" else "gconv"]
    assert layer["w_bits"] == w_bits and layer["method"] == "nearest"
    assert layer["granularity"] == ("group" if gs else "channel")
    assert (kind == "cnn") == ("bn" in meta["identity"])  # folded BN recorded


@pytest.mark.parametrize("form", ["fake_quant", "packed"])
@pytest.mark.parametrize("method,a_bits,options", [("n2uq", 3, {}), ("n2uq", 2, {"per_channel": True}),
                                                   ("aquant", 2, {}), ("aquant", 4, {"per_channel": False})])
def test_round_trip_of_threshold_quantizers(tmp_path, form, method, a_bits, options):
    """N2UQ's LTQ and AQuant's borders (table at 2 bits, affine at 4) are stored and come back
    exactly, fake-quant or packed (the threshold_int8 path)."""
    q = quantized("mlp", 3, a_bits, method=method, config=dict(iters=20, num_samples=24, **options))
    kinds = {type(m.act_quant).__name__ for m in q.modules() if isinstance(m, QuantLayer) and m.act_quant is not None}
    assert kinds == {"LTQActQuantizer" if method == "n2uq" else "BorderActQuantizer"}
    if form == "packed":
        q = lowbit.pack(q)
        assert {m.path for m in q.modules() if isinstance(m, PackedLayer) and m.act_quant is not None} == {"threshold_int8"}
    lowbit.save(q, tmp_path / "m")
    back = lowbit.load(tmp_path / "m", model=skeleton("mlp", seed=5))
    assert_same_model(q, back, sample("mlp", 4, 7))
    for (n, a), b in zip(q.named_modules(), back.modules()):
        if isinstance(a, (QuantLayer, PackedLayer)) and a.act_quant is not None:
            assert torch.equal(a.act_quant.thresholds(), b.act_quant.thresholds()), n
            assert getattr(a.act_quant, "learned_for", None) == getattr(b.act_quant, "learned_for", None), n


def test_load_leaves_the_skeleton_alone(tmp_path):
    q = quantized("mlp")
    lowbit.save(q, tmp_path / "m")
    sk = skeleton("mlp")
    before = {k: v.clone() for k, v in sk.state_dict().items()}
    back = lowbit.load(tmp_path / "m", model=sk)
    assert back is not sk and isinstance(sk.fc1, nn.Linear) and isinstance(back.fc1, QuantLinear)
    assert all(torch.equal(v, sk.state_dict()[k]) for k, v in before.items())
    same = lowbit.load(tmp_path / "m", model=sk, inplace=True)
    assert same is sk and isinstance(sk.fc1, QuantLinear)


def test_file_size_follows_the_bits(tmp_path):
    sizes, data, weights = {}, {}, 64 * 48 + 48 * 64 + 64 * 10
    for bits in (2, 3, 4, 8):
        q = quantized("mlp", bits, None)
        for form, m in (("fq", q), ("packed", lowbit.pack(q))):
            path = tmp_path / f"{form}{bits}"
            lowbit.save(m, path)
            sizes[form, bits] = path.stat().st_size
            data[form, bits] = len(split(path.read_bytes())[1])  # tensor bytes, without the JSON
        # fake-quant codes are a dense bitstream: exactly ceil(n * bits / 8) bytes per layer
        from safetensors.numpy import load_file

        t = load_file(str(tmp_path / f"fq{bits}"))
        assert sum(t[f"{n}.codes"].nbytes for n in ("fc1", "fc2", "fc3")) == sum(
            -(-n * bits // 8) for n in (64 * 48, 48 * 64, 64 * 10))
    for form in ("fq", "packed"):
        s = [sizes[form, b] for b in (2, 3, 4, 8)]
        assert s == sorted(s) and len(set(s)) == 4, s
        d = [data[form, b] for b in (2, 3, 4, 8)]
        # 6 bits more per weight from 2 to 8 bits, plus at most the tile padding of fc3 (10 -> 16 rows)
        assert 6 * weights / 8 <= d[-1] - d[0] <= 6 * (weights + 6 * 64) / 8, d


def test_load_needs_the_architecture(tmp_path):
    lowbit.save(quantized("mlp"), tmp_path / "m")
    with pytest.raises(ValueError, match="needs the architecture"):
        lowbit.load(tmp_path / "m")
    with pytest.raises(LowbitFileError, match="the model has no layer 'fc1'|does not fit|no module"):
        lowbit.load(tmp_path / "m", model=skeleton("cnn"))

    class Wider(MLP):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 40)

    with pytest.raises(LowbitFileError, match="layer 'fc1' does not match"):
        lowbit.load(tmp_path / "m", model=Wider())


def test_save_refuses_what_it_cannot_store(tmp_path):
    q = quantized("mlp")
    q.fc2.weight_override = q.fc2.weight.clone()
    with pytest.raises(ValueError, match="layer 'fc2': a method is still optimising it"):
        lowbit.save(q, tmp_path / "m")
    q = quantized("mlp")
    q.fc2.act_quant = nn.ReLU()
    with pytest.raises(ValueError, match="layer 'fc2': cannot save activation quantizer ReLU"):
        lowbit.save(q, tmp_path / "m")


# -- hostile files --------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Boom.marker),))


def test_never_unpickles(tmp_path):
    """A pickle (what torch.save writes) is refused without being run."""
    _Boom.marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state": _Boom()}))
    with pytest.raises(LowbitFileError):
        lowbit.load(path, model=skeleton("mlp"))
    torch.save(skeleton("mlp").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(LowbitFileError):
        lowbit.load(tmp_path / "plain.pt", model=skeleton("mlp"))
    assert not (tmp_path / "ran").exists()


def test_other_safetensors_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(skeleton("mlp").state_dict(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(LowbitFileError, match="not a lowbit model file"):
        lowbit.load(tmp_path / "plain.safetensors", model=skeleton("mlp"))


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def resign(header: dict, meta: dict, body: bytes) -> bytes:
    """A tampered file that carries a valid checksum (someone edited it on purpose)."""
    meta_json = json.dumps(meta)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"U8": np.uint8, "F32": np.float32, "I64": np.int64}[info["dtype"]]
        tensors[name] = np.frombuffer(body[a:b], dtype=dtype).reshape(info["shape"])
    header = dict(header)
    header["__metadata__"] = {"lowbit": meta_json, "lowbit_sha256": lio._digest(meta_json, tensors)}
    return join(header, body)


def outcome(path, kind: str, reference: nn.Module, x: torch.Tensor) -> str:
    """'refused' (LowbitFileError with a message) or 'identical'; anything else fails."""
    try:
        m = lowbit.load(path, model=skeleton(kind))
    except LowbitFileError as e:
        assert str(e), "empty error message"
        return "refused"
    assert_same_model(reference, m, x)
    return "identical"


@pytest.mark.parametrize("form", ["fake_quant", "packed"])
def test_fuzz_truncated_corrupted_tampered(tmp_path, form):
    kind = "mlp"
    q = quantized(kind, 3, 8, group_size=16)
    if form == "packed":
        q = lowbit.pack(q)
    good = tmp_path / "good"
    lowbit.save(q, good)
    blob = good.read_bytes()
    x = sample(kind, 3, 5)
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad"
    counts = {"refused": 0, "identical": 0}

    def attempt(data: bytes, expect_refused: bool = True) -> None:
        bad.write_bytes(data)
        r = outcome(bad, kind, q, x)
        counts[r] += 1
        if expect_refused:
            assert r == "refused"

    # truncated: every prefix length class (empty, inside the length, header, tensors, last byte)
    for n in [0, 1, 7, 8, 9, 100, len(blob) - 1, *rng.integers(10, len(blob) - 1, 20)]:
        attempt(blob[:int(n)])
    attempt(blob + b"\0" * 3)  # trailing garbage
    # corrupted: random bytes overwritten (header or data); a change that leaves the JSON
    # equivalent (e.g. one padding space for another whitespace) may load, identically
    for _ in range(60):
        data = bytearray(blob)
        for pos in rng.integers(0, len(blob), rng.integers(1, 4)):
            data[pos] = (data[pos] + int(rng.integers(1, 256))) % 256
        attempt(bytes(data), expect_refused=False)
    # single bit flips in the tensor data: always caught by the checksum
    header, body = split(blob)
    for pos in rng.integers(0, len(body), 20):
        data = bytearray(body)
        data[pos] ^= 1 << int(rng.integers(0, 8))
        attempt(join(header, bytes(data)))

    # tampered with a recomputed checksum: the metadata is validated, not trusted
    meta = json.loads(header["__metadata__"]["lowbit"])
    attempt(resign(header, meta, body), expect_refused=False)  # the control: loads
    assert counts["identical"] >= 1
    junk = [None, -1, 0, 1 << 40, 9, 2.5, "x", [], {}, [1, 2], {"a": 1}]
    fields = ["type", "w_bits", "args", "group_size", "scale_shape", "codes_shape", "has_bias", "act_quant",
              "container_bits"]
    for _ in range(80):
        m = json.loads(json.dumps(meta))
        layer = m["layers"][str(rng.choice(sorted(m["layers"])))]
        field = str(rng.choice(fields))
        if field == "args":
            key = str(rng.choice(sorted(layer["args"])))
            layer["args"][key] = junk[int(rng.integers(len(junk)))]
        elif field == "act_quant" and layer["act_quant"] is not None and rng.random() < 0.5:
            layer["act_quant"]["bits"] = junk[int(rng.integers(len(junk)))]
        else:
            layer[field] = junk[int(rng.integers(len(junk)))]
        attempt(resign(header, m, body), expect_refused=False)
    for edit in ({"format_version": 2}, {"format": "other"}, {"pack_format_version": 0, "form": "packed"},
                 {"layers": []}, {"identity": ["nope"]}, {"report": {"bogus": 1}}):
        m = dict(meta, **edit)
        if "pack_format_version" in edit and form != "packed":
            continue
        attempt(resign(header, m, body))
    # a tensor of the wrong dtype or shape under a valid checksum
    name = "fc2.scale" if form == "fake_quant" else "fc2.scales"
    h2 = json.loads(json.dumps(header))
    h2[name]["dtype"] = "U8"
    a, b = h2[name]["data_offsets"]
    h2[name]["shape"] = [b - a]
    attempt(resign(h2, meta, body))
    assert counts["refused"] > 100


@pytest.mark.parametrize("method", ["n2uq", "aquant"])
def test_tampered_threshold_quantizers_are_refused(tmp_path, method):
    """Every field of a threshold quantizer's metadata is validated under a valid checksum:
    junk is refused with LowbitFileError (or, where the field is only a note, loads an identical
    model), never anything else."""
    q = quantized("mlp", 3, 2, method=method, config=dict(iters=10, num_samples=24))
    lowbit.save(q, tmp_path / "good")
    header, body = split((tmp_path / "good").read_bytes())
    meta = json.loads(header["__metadata__"]["lowbit"])
    x = sample("mlp", 3, 5)
    junk = [None, -1, -2.5, "x", [], {}]  # invalid for every field (a valid value is a valid file)
    fields = sorted({f for d in meta["layers"].values() if d["act_quant"] for f in d["act_quant"]})
    assert {"channels", "channel_axis"} <= set(fields)
    counts = {"refused": 0, "identical": 0}
    bad = tmp_path / "bad"
    for field in fields:
        for value in junk:
            m = json.loads(json.dumps(meta))
            for d in m["layers"].values():
                if d["act_quant"]:
                    d["act_quant"][field] = value
            bad.write_bytes(resign(header, m, body))
            counts[outcome(bad, "mlp", q, x)] += 1
    assert counts["refused"] > len(fields) * len(junk) // 2
    # a zero point that is not an integer (NaN, inf, 0.5) under a valid checksum
    a, b = header["fc2.act_quant.zero"]["data_offsets"]
    for z in (np.nan, np.inf, 0.5):
        data = body[:a] + np.array([z], np.float32).tobytes() + body[b:]
        bad.write_bytes(resign(header, meta, data))
        with pytest.raises(LowbitFileError, match="layer 'fc2': activation zero point must be an integer"):
            lowbit.load(bad, model=skeleton("mlp"))
    # a per-channel quantizer whose channel count does not match its layer's inputs
    m = json.loads(json.dumps(meta))
    m["layers"]["fc2"]["act_quant"]["channels"] = 47
    bad.write_bytes(resign(header, m, body))
    with pytest.raises(LowbitFileError, match="layer 'fc2': bad activation channels 47"):
        lowbit.load(bad, model=skeleton("mlp"))


def test_multipoint_round_trip_and_tampered_points(tmp_path):
    q = quantized("mlp", 2, None, method="multipoint", config=dict(overhead=0.25))
    assert any(getattr(m, "num_points", 0) for m in q.modules())
    lowbit.save(q, tmp_path / "good")
    x = sample("mlp", 3, 5)
    assert outcome(tmp_path / "good", "mlp", q, x) == "identical"
    header, body = split((tmp_path / "good").read_bytes())
    meta = json.loads(header["__metadata__"]["lowbit"])
    bad = tmp_path / "bad"
    for field in ("points", "point_bits", "wide", "wide_bits", "wide_scale_shape"):
        for value in (None, -1, 1, 9, 2.5, "x", [], [1, 5], {}):
            m = json.loads(json.dumps(meta))
            for d in m["layers"].values():
                d[field] = value
            bad.write_bytes(resign(header, m, body))
            assert outcome(bad, "mlp", q, x) == "refused", (field, value)


def test_error_names_the_problem(tmp_path):
    q = quantized("mlp")
    lowbit.save(q, tmp_path / "m")
    blob = (tmp_path / "m").read_bytes()
    (tmp_path / "t").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(LowbitFileError, match="truncated|not a readable lowbit file"):
        lowbit.load(tmp_path / "t", model=skeleton("mlp"))
    data = bytearray(blob)
    data[-5] ^= 0x10
    (tmp_path / "c").write_bytes(bytes(data))
    with pytest.raises(LowbitFileError, match="checksum mismatch"):
        lowbit.load(tmp_path / "c", model=skeleton("mlp"))
    header, body = split(blob)
    meta = json.loads(header["__metadata__"]["lowbit"])
    meta["layers"]["fc2"]["w_bits"] = 9
    (tmp_path / "w").write_bytes(resign(header, meta, body))
    with pytest.raises(LowbitFileError, match="layer 'fc2': bad w_bits 9"):
        lowbit.load(tmp_path / "w", model=skeleton("mlp"))


def test_bitstream_round_trip():
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        for n in (0, 1, 7, 8, 9, 1000):
            c = rng.integers(0, 2**bits, n).astype(np.uint8)
            s = lio.codes_to_bitstream(c, bits)
            assert s.size == (n * bits + 7) // 8
            np.testing.assert_array_equal(lio.bitstream_to_codes(s, bits, n), c)
    # the layout: code i at bits [i*b, (i+1)*b), least significant first
    np.testing.assert_array_equal(lio.codes_to_bitstream(np.array([1, 2, 3, 0, 7], np.uint8), 3),
                                  [0b11010001, 0b01110000])
    with pytest.raises(ValueError, match="do not fit in 2 bits"):
        lio.codes_to_bitstream(np.array([4], np.uint8), 2)


def test_packed_linear_state_is_what_is_saved(tmp_path):
    p = lowbit.pack(quantized("mlp", 4, None))
    lowbit.save(p, tmp_path / "m")
    from safetensors.numpy import load_file

    t = load_file(str(tmp_path / "m"))
    assert isinstance(p.fc1, PackedLinear)
    np.testing.assert_array_equal(t["fc1.codes"], p.fc1.codes.numpy())
    np.testing.assert_array_equal(t["fc1.scales"], p.fc1.scales.numpy())
