"""CLADO on a small CNN trained on scikit-learn digits: measurement engine, budgets, solver, report."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import lowbit
from lowbit import _native
from lowbit.methods import clado
from lowbit.methods.clado import CladoConfig


class DigitsNet(nn.Module):
    """Residual CNN with in-place ops (they must not corrupt the prefix cache)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c1(x).relu_()
        y = self.c2(x)
        y += x
        x = torch.relu(self.c3(y))
        y = self.c4(x)
        y += x
        return self.fc2(torch.relu(self.fc1(y.relu_().flatten(1))))


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        m = DigitsNet()
        opt = torch.optim.Adam(m.parameters(), 3e-3)
        for _ in range(6):
            perm = torch.randperm(1400)
            for i in range(0, 1400, 50):
                idx = perm[i : i + 50]
                loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        calib = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 128, 64)]
        yield m, calib, (x[1400:], y[1400:])
    finally:
        torch.set_num_threads(threads)


def run(m, calib, cfg, method="clado", **kw):
    kw = {"w_bits": 8, "keep_first_last": None, "num_samples": 128, "progress": False, **kw}
    q = lowbit.quantize(m, calib, method, config=cfg if isinstance(method, str) else None, **kw)
    return q, lowbit.report(q).meta["clado"]


def predicted(meta, choice_bits):
    G = np.array(meta["problem"]["G"])
    S = len(meta["bits"])
    x = np.zeros(G.shape[0])
    for i, b in enumerate(choice_bits):
        x[i * S + meta["bits"].index(b)] = 1
    return x @ G @ x / 2


def avg_bits(meta, choice_bits):
    p = np.array(meta["problem"]["params"])
    return float((p * np.array(choice_bits)).sum() / p.sum())


def test_budget_met_solver_optimal_and_bits_applied(digits):
    m, calib, _ = digits
    q, meta = run(m, calib, {"avg_bits": 3.0, "loss": "kl"})
    names = ["c1", "c2", "c3", "c4", "fc1", "fc2"]
    assert meta["searched_layers"] == names
    assert meta["avg_bits"] <= 3.0 + 1e-12
    assert meta["solver"]["status"] == "optimal" and meta["solver"]["gap"] <= 1e-9
    assert meta["evaluations"] == 6 * 3 + 15 * 9 + 1  # singles, all pairs, the chosen configuration
    assert meta["num_samples"] == 128 and meta["loss"] == "kl"
    rep = lowbit.report(q)
    for n in names:
        assert q.get_submodule(n).w_bits == meta["chosen_bits"][n] == rep[n].w_bits
        assert rep[n].extra["clado_bits"] == meta["chosen_bits"][n]
    bits = [meta["chosen_bits"][n] for n in names]
    assert predicted(meta, bits) == pytest.approx(meta["predicted_delta_loss"], rel=1e-9)
    assert meta["predicted_delta_loss_solved"] == pytest.approx(meta["predicted_delta_loss"], rel=1e-5)
    assert meta["measured_delta_loss"] > 0  # KL of a quantized model to its FP self
    assert 0 <= meta["negative_eigen_share"] < 1


def test_clado_beats_uniform_random_and_diagonal_allocations_in_predicted_loss(digits):
    m, calib, _ = digits
    _, meta = run(m, calib, {"avg_bits": 4.0, "loss": "kl"})
    ours = meta["predicted_delta_loss"]
    assert ours <= predicted(meta, [4] * 6) + 1e-12  # uniform 4 bits has the same budget
    rng = np.random.default_rng(0)
    feasible = 0
    for _ in range(300):
        bits = list(rng.choice(meta["bits"], 6))
        if avg_bits(meta, bits) <= 4.0:
            feasible += 1
            assert ours <= predicted(meta, bits) + 1e-12
    assert feasible > 20
    # The diagonal-only search (same measurements, no pair terms) is feasible, hence no better.
    _, diag = run(m, calib, {"avg_bits": 4.0, "loss": "kl", "pairs": 0})
    assert diag["evaluations"] == 6 * 3 + 1 and diag["num_pairs"] == 0
    dbits = [diag["chosen_bits"][n] for n in meta["searched_layers"]]
    assert ours <= predicted(meta, dbits) + 1e-12


def test_no_budget_picks_the_highest_bits_and_says_so(digits):
    m, calib, _ = digits
    _, meta = run(m, calib, {"loss": "kl"})
    assert set(meta["chosen_bits"].values()) == {8}
    assert meta["sanity"]["unconstrained_all_max_bits"] and meta["budget"] == {}


def test_bytes_and_bitops_budgets(digits):
    m, calib, _ = digits
    params = {n: m.get_submodule(n).weight.numel() for n in ["c1", "c2", "c3", "c4", "fc1", "fc2"]}
    q, meta = run(m, calib, {"bytes": sum(params.values()) * 4 / 8, "loss": "kl", "pairs": "neighbors"})
    assert meta["num_pairs"] == 5 and meta["evaluations"] == 6 * 3 + 5 * 9 + 1
    assert meta["budget"]["bytes"]["used"] <= sum(params.values()) * 4 / 8 * (1 + 1e-9)
    # BitOps: MACs x w_bits x a_bits at A8; the budget of uniform W4A8 admits it.
    macs = clado_macs(m, calib)
    limit = sum(macs[n] * 4 * (32 if n == "c1" else 8) for n in params)
    q, meta = run(m, calib, {"bitops": limit, "loss": "kl", "pairs": 1}, a_bits=8)
    assert meta["budget"]["bitops"]["used"] <= limit * (1 + 1e-9)
    assert meta["solver"]["status"] == "optimal"


def clado_macs(m, calib):
    """Independent MAC count for DigitsNet on 8x8 inputs (c1 reads the network input: float)."""
    return {"c1": 64 * 8 * 9, "c2": 64 * 8 * 72, "c3": 16 * 16 * 72, "c4": 16 * 16 * 144,
            "fc1": 32 * 256, "fc2": 10 * 32}


def test_pipeline_clado_then_next_stage(digits):
    m, calib, _ = digits
    q = lowbit.quantize(m, calib, [CladoConfig(avg_bits=3.0, loss="kl", pairs="neighbors"), "nearest"],
                        w_bits=8, keep_first_last=8, num_samples=128, progress=False)
    rep = lowbit.report(q)
    meta = rep.meta["clado"]
    assert rep.meta["method"] == "clado+nearest"
    assert set(rep.meta["stage_seconds"]) == {"clado", "nearest"}
    assert meta["searched_layers"] == ["c2", "c3", "c4", "fc1"]  # first and last pinned at 8 bits
    assert q.c1.w_bits == 8 and q.fc2.w_bits == 8
    assert meta["avg_bits"] <= 3.0


def test_prefix_cache_gives_the_same_losses(digits):
    m, calib, _ = digits
    batches = [lowbit.calib.to_batch(b) for b in calib]
    names = ["c1", "c2", "c3", "c4", "fc1", "fc2"]
    for cache_bytes in (512 * 2**20, 20_000, 0):  # every cut cached, the latest few, none
        eng = clado.Engine(m, batches, names, "ce", cache_bytes)
        assert eng.graph is not None
        assert sorted(names, key=eng.pos.get) == names  # fx node order is the execution order
        cached, latest = sorted(eng.cuts[0]), sorted(eng.pos.values())
        assert cached == {512 * 2**20: latest, 20_000: latest[-len(cached):], 0: []}[cache_bytes]
        assert cache_bytes != 20_000 or 0 < len(cached) < len(names)
        rng = torch.Generator().manual_seed(0)
        for pick in (["c4"], ["c2", "fc1"], ["fc2"], ["c3", "c4"]):
            w = {n: eng.fp_weight[n] + 0.05 * torch.randn(eng.fp_weight[n].shape, generator=rng) for n in pick}
            assert eng.loss(w) == pytest.approx(eng.loss(w, use_cache=False), rel=1e-12, abs=1e-15)
        assert eng.loss({}) == pytest.approx(eng.fp_loss, rel=1e-12)
    for n in names:  # the model is left as it was
        assert m.get_submodule(n).weight.data_ptr() == eng.fp_weight[n].data_ptr()


def test_nested_prefixes_give_the_same_losses(digits):
    """A depth-first search over allocations: each prefix extends its parent's by one layer."""
    m, calib, _ = digits
    batches = [lowbit.calib.to_batch(b) for b in calib]
    names = ["c1", "c2", "c3", "c4", "fc1", "fc2"]
    eng = clado.Engine(m, batches, names, "kl")
    rng = torch.Generator().manual_seed(1)
    w = {n: eng.fp_weight[n] + 0.05 * torch.randn(eng.fp_weight[n].shape, generator=rng) for n in names}
    base = None
    for d in range(len(names) - 1):
        base = eng.prefix({n: w[n] for n in names[: d + 1]}, eng.pos[names[d + 1]], base)
        assert base.end == eng.pos[names[d + 1]] and len(base.values) == len(batches)
        for last in (w[names[d + 1]], eng.fp_weight[names[d + 1]] * 0.8):
            full = {**{n: w[n] for n in names[: d + 1]}, names[d + 1]: last}
            assert eng.loss(full, prefix=base) == pytest.approx(eng.loss(full, use_cache=False), rel=1e-12)
    with pytest.raises(ValueError, match="other weights"):
        eng.loss({"c1": w["c1"]}, prefix=eng.prefix({}, eng.pos["c2"]))  # c1 was float in that prefix


class InPlaceResidual(nn.Module):
    """In-place ops on values live across a cut: the cached values must not change."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        x = self.act(self.c1(x))
        y = self.act(self.c2(x))
        y += x
        return self.fc(torch.flatten(self.act(self.c3(y)), 1))


class DataDependent(nn.Module):
    """Control flow on values: torch.fx cannot trace it, so every loss runs the model whole."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = -h
        return self.b(torch.relu(h))


@pytest.mark.parametrize("model, names, shape", [
    (InPlaceResidual, ["c1", "c2", "c3", "fc"], (8, 4, 6, 6)),
    (DataDependent, ["a", "b"], (8, 6)),
])
def test_engine_losses_match_the_whole_model(model, names, shape):
    torch.manual_seed(1)
    m = model().eval()
    batches = [lowbit.calib.to_batch(torch.randn(*shape)) for _ in range(2)]
    eng = clado.Engine(m, batches, names, "mse")
    assert (eng.graph is None) == (model is DataDependent)
    assert sorted(names, key=eng.pos.get) == names
    for pick in ([names[-1]], names[1:], names[:1]) * 2:  # twice: the cuts must survive a run
        w = {n: eng.fp_weight[n] * 0.9 for n in pick}
        assert eng.loss(w) == pytest.approx(eng.loss(w, use_cache=False), rel=1e-12, abs=1e-15)
        assert eng.loss(w) > 0
        pre = eng.prefix({n: w[n] for n in names[:1] if n in w}, eng.pos[names[1]])
        assert eng.loss(w, prefix=pre) == pytest.approx(eng.loss(w, use_cache=False), rel=1e-12)


class ScaledBlock(nn.Module):
    """A module with its own parameter around a parameterised child."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gain = nn.Parameter(torch.full((1, 4, 1, 1), 1.5))

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.gain


def test_prefix_cache_with_nested_parameterised_modules():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ScaledBlock(), ScaledBlock(), nn.Flatten(), nn.Linear(4 * 36, 3))
    batches = [lowbit.calib.to_batch(torch.randn(8, 1, 6, 6)) for _ in range(2)]
    names = ["0", "1.conv", "2.conv", "4"]
    eng = clado.Engine(m, batches, names, "mse")
    assert sorted(names, key=eng.pos.get) == names
    for pick in (["2.conv"], ["4"], ["1.conv", "4"]):
        w = {n: eng.fp_weight[n] * 0.9 for n in pick}
        assert eng.loss(w) == pytest.approx(eng.loss(w, use_cache=False), rel=1e-12, abs=1e-15)
        assert eng.loss(w) > 0


class TwoBranches(nn.Module):
    """Two independent branches whose outputs are concatenated: with a squared-error loss the
    loss is a sum over branches, so layers of different branches do not interact."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.b1, self.b2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return torch.cat([self.a2(torch.tanh(self.a1(x))), self.b2(torch.tanh(self.b1(x)))], 1)


def test_pairwise_terms_of_non_interacting_layers_are_zero():
    torch.manual_seed(0)
    m = TwoBranches().eval()
    calib = [torch.randn(64, 8) for _ in range(2)]
    _, meta = run(m, calib, {"loss": "mse", "bits": (2, 3)}, method="clado")
    G = np.array(meta["problem"]["G"])
    names = meta["searched_layers"]
    S = 2
    idx = {n: i for i, n in enumerate(names)}
    scale = np.abs(np.diag(G)).max()
    for a in ("a1", "a2"):
        for b in ("b1", "b2"):
            block = G[idx[a] * S : (idx[a] + 1) * S, idx[b] * S : (idx[b] + 1) * S]
            assert np.abs(block).max() <= 1e-9 * scale
    within = G[idx["a1"] * S : (idx["a1"] + 1) * S, idx["a2"] * S : (idx["a2"] + 1) * S]
    assert np.abs(within).max() > 1e-4 * scale  # layers in sequence do interact


def test_config_errors_name_the_option(digits):
    m, calib, _ = digits
    with pytest.raises(ValueError, match="bits"):
        CladoConfig(bits=(2, 9))
    with pytest.raises(ValueError, match="pairs"):
        CladoConfig(pairs="some")
    with pytest.raises(ValueError, match="loss"):
        CladoConfig(loss="l1")
    with pytest.raises(ValueError, match="psd"):
        CladoConfig(psd="clip")
    with pytest.raises(ValueError, match="unknown option"):
        CladoConfig.from_dict({"avg_bit": 3})
    with pytest.raises(ValueError, match="avg_bits"):
        run(m, calib, {"avg_bits": 1.5, "pairs": 0})
    with pytest.raises(ValueError, match="not quantized layers"):
        run(m, calib, {"layers": ["nope"], "pairs": 0})
    with pytest.raises(ValueError, match="labels"):
        run(m, [x for x, _ in calib], {"loss": "ce", "pairs": 0})


def test_psd_projection_reports_clipped_mass(digits):
    m, calib, _ = digits
    _, meta = run(m, calib, {"avg_bits": 3.0, "loss": "kl", "psd": "project", "pairs": "neighbors"})
    G = np.array(meta["problem"]["G"])
    _, mass = _native.project_psd(G)
    assert meta["psd"] == "project"
    assert meta["negative_eigen_mass"] == pytest.approx(mass, rel=1e-5)
    assert meta["avg_bits"] <= 3.0 and meta["solver"]["status"] == "optimal"


def test_cli_avg_bits_needs_a_clado_stage(monkeypatch):
    from lowbit import __main__ as cli

    with pytest.raises(ValueError, match="no clado stage"):
        cli.evaluate("fmnist-resnet", "nearest", 4, None, avg_bits=3.0)
    seen = {}

    def fake_quantize(model, loader, method, **kw):
        seen["method"] = method
        raise RuntimeError("stop")

    monkeypatch.setattr(lowbit, "quantize", fake_quantize)
    import lowbit.zoo as zoo

    class FakeTask:
        model, calib_loader, quantize_kwargs = nn.Linear(2, 2), [torch.zeros(1, 2)], {}

        @staticmethod
        def evaluate(m):
            return {"metric": 0.0, "agreement": 0.0}

    monkeypatch.setattr(zoo, "load_task", lambda *a, **k: FakeTask)
    with pytest.raises(ValueError, match="map its stages"):  # a pipeline's options name their stage
        cli.evaluate("fmnist-resnet", "clado+nearest", 8, 8, avg_bits=3.0, options={"pairs": "neighbors"})
    with pytest.raises(RuntimeError, match="stop"):
        cli.evaluate("fmnist-resnet", "clado+adaround", 8, 8, avg_bits=3.0,
                     options={"clado": {"pairs": "neighbors"}, "adaround": {"iters": 7}})
    clado_cfg, ada_cfg = seen["method"]
    assert (clado_cfg.avg_bits, clado_cfg.pairs, ada_cfg.iters) == (3.0, "neighbors", 7)
    with pytest.raises(RuntimeError, match="stop"):
        cli.evaluate("fmnist-resnet", "clado+nearest", 8, 8, avg_bits=3.0)
    stages = seen["method"]
    assert isinstance(stages[0], CladoConfig) and stages[0].avg_bits == 3.0 and stages[1] == "nearest"
    with pytest.raises(RuntimeError, match="stop"):
        cli.evaluate("fmnist-resnet", "clado", 8, 8, avg_bits=2.5, options={"pairs": "neighbors"})
    assert seen["method"][0].avg_bits == 2.5 and seen["method"][0].pairs == "neighbors"
