"""The C++ IQP solver (CLADO's integer quadratic program) against brute force and HiGHS."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit import _native, reference


def make_instance(rng, sizes, kind="lowrank", budget=0.5, rows=1, interaction=1.0, band=None):
    """G (n, n) float32 in CLADO's layout, budget rows A (rows, n) and b at a fraction of the range."""
    sizes = np.asarray(sizes, np.int32)
    n = int(sizes.sum())
    layer = np.repeat(np.arange(len(sizes)), sizes)
    if kind == "lowrank":  # a Hessian form: errors shrinking with the choice index, shared directions
        err = np.concatenate([rng.uniform(0.5, 2.0) * 2.0 ** (-2 * np.arange(s)) for s in sizes])
        E = rng.standard_normal((n, 3)) * err[:, None]
        G = interaction * (E @ E.T) + np.diag(err**2 * rng.uniform(0, 1, n))
    else:  # anything symmetric, indefinite
        G = rng.standard_normal((n, n))
        G = G + G.T
    G[(layer[:, None] == layer[None, :]) & ~np.eye(n, dtype=bool)] = 0.0  # CLADO's convention
    if band is not None:  # only layers at most `band` apart interact (pairs="neighbors", windows)
        G[np.abs(layer[:, None] - layer[None, :]) > band] = 0.0
    A = rng.uniform(1, 10, (rows, n)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    lo = np.array([[A[r, starts[k] : starts[k + 1]].min() for k in range(len(sizes))] for r in range(rows)]).sum(1)
    hi = np.array([[A[r, starts[k] : starts[k + 1]].max() for k in range(len(sizes))] for r in range(rows)]).sum(1)
    b = (lo + budget * (hi - lo)).astype(np.float32)
    return G.astype(np.float32), sizes, A, b


def check_same_optimum(G, sizes, A, b, **kw):
    c_bf, i_bf = _native.solve_iqp_bruteforce(G, sizes, A, b)
    c, info = _native.solve_iqp(G, sizes, A, b, time_limit=30, **kw)
    if i_bf["status"] == "infeasible":
        assert info["status"] == "infeasible"
        assert np.all(c == -1)
        return info
    assert info["status"] == "optimal", info
    scale = float(max(1e-6, np.abs(G).max()) * len(sizes))
    assert info["objective"] == pytest.approx(i_bf["objective"], abs=1e-9 * scale)
    assert info["objective"] == pytest.approx(_native.iqp_objective(G, sizes, c), abs=1e-12 * scale)
    assert info["bound"] <= info["objective"] + 1e-12 * scale
    assert info["objective"] <= info["warm_objective"]  # never worse than its warm start
    if A is not None:
        starts = np.concatenate([[0], np.cumsum(sizes)])
        use = A[:, starts[:-1] + c].astype(np.float64).sum(1)
        assert np.all(use <= b + 1e-6 * np.abs(A).sum())
    return info


@st.composite
def instances(draw):
    L = draw(st.integers(1, 12))
    if L > 10:
        sizes = [3] * L
    else:
        sizes = draw(st.lists(st.integers(1, 4), min_size=L, max_size=L))
    while np.prod(sizes) > 3**12:
        sizes[sizes.index(max(sizes))] -= 1
    kind = draw(st.sampled_from(["lowrank", "random"]))
    rows = draw(st.integers(0, 2))
    budget = draw(st.floats(0.0, 1.0))
    interaction = draw(st.sampled_from([0.1, 1.0, 3.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    band = draw(st.sampled_from([None, None, 0, 1, 2]))
    G, sz, A, b = make_instance(np.random.default_rng(seed), sizes, kind, budget, max(rows, 1), interaction, band)
    if rows == 0:
        A = b = None
    return G, sz, A, b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_solver_equals_bruteforce(inst):
    check_same_optimum(*inst)


def clado_lowrank(rng, L, S, budget, rank=4, rows=1):
    """benchmarks/iqp.py's instances: G = E E^T + diag, exact low rank, within-layer entries zero."""
    bits = np.array([2, 3, 4, 8][:S])
    V = rng.standard_normal((L, rank))
    sigma = 10 ** rng.uniform(-1, 1, L)
    E = np.concatenate([sigma[k] * 2.0 ** -(bits[:, None] - 2) * (V[k] + 0.5 * rng.standard_normal((S, rank))) for k in range(L)])
    G = E @ E.T
    G += np.diag(rng.uniform(0, 0.5, L * S) * np.diag(G))
    layer = np.repeat(np.arange(L), S)
    G[(layer[:, None] == layer[None, :]) & ~np.eye(L * S, dtype=bool)] = 0
    A = np.concatenate([(10 ** rng.uniform(3, 6, L))[:, None] * bits[None, :] for _ in range(rows)], 1).reshape(rows, -1)
    A = A.reshape(rows, L, S) * rng.uniform(0.5, 1.5, (rows, L, 1))
    A = A.reshape(rows, -1)
    lo, hi = A.reshape(rows, L, S).min(2).sum(1), A.reshape(rows, L, S).max(2).sum(1)
    return G.astype(np.float32), np.full(L, S, np.int32), A, lo + budget * (hi - lo)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(2, 9), st.floats(0.0, 1.0), st.integers(1, 2), st.sampled_from([1, 2, 4]))
def test_exact_low_rank_instances_root_bound_is_valid(seed, L, budget, rows, rank):
    """The low-rank completion (and every other convexification) bounds the optimum from below."""
    G, sz, A, b = clado_lowrank(np.random.default_rng(seed), L, 3, budget, rank, rows)
    info = check_same_optimum(G, sz, A, b)
    scale = float(np.abs(G).max() * L)
    assert info["root_bound"] <= info["objective"] + 1e-9 * scale


@pytest.mark.parametrize("kind", ["lowrank", "random"])
def test_root_bound_never_above_the_optimum(kind):
    rng = np.random.default_rng(21)
    for trial in range(8):
        G, sz, A, b = make_instance(rng, [3] * 9, kind, rng.uniform(0, 1), 1 + trial % 3, [0.1, 1.0, 3.0][trial % 3])
        _, bf = _native.solve_iqp_bruteforce(G, sz, A, b)
        _, info = _native.solve_iqp(G, sz, A, b, time_limit=30)
        scale = float(np.abs(G).max() * 9)
        if bf["status"] == "infeasible":  # two or three rows can exclude every configuration
            assert info["status"] == "infeasible"
            continue
        assert info["status"] == "optimal"
        assert info["objective"] == pytest.approx(bf["objective"], abs=1e-9 * scale)
        assert info["root_bound"] <= bf["objective"] + 1e-9 * scale


@pytest.mark.parametrize("band", [0, 1, 2])
def test_banded_instances_use_the_chain_bound(band):
    rng = np.random.default_rng(band)
    for budget in (0.2, 0.5, 0.8):
        G, sz, A, b = make_instance(rng, [3, 2, 4, 3, 3, 1, 3, 4, 3, 3], "lowrank", budget, 1, 2.0, band)
        info = check_same_optimum(G, sz, A, b)
        assert info["relaxation"] == "chain"
    # 52 layers in a chain (mobilenet_v2 with pairs="neighbors"): proven quickly.
    G, sz, A, b = make_instance(rng, [3] * 52, "lowrank", 0.5, 1, 1.0, band)
    _, info = _native.solve_iqp(G, sz, A, b, time_limit=30)
    assert info["status"] == "optimal" and info["relaxation"] == "chain"


def test_bruteforce_matches_numpy_twin():
    rng = np.random.default_rng(0)
    for trial in range(12):
        sizes = rng.integers(1, 4, rng.integers(1, 6))
        G, sz, A, b = make_instance(rng, sizes, ["lowrank", "random"][trial % 2], rng.uniform(0, 1), 1 + trial % 2)
        c, info = _native.solve_iqp_bruteforce(G, sz, A, b)
        rc, rinfo = reference.solve_iqp_bruteforce(G, sz, A, b)
        assert info["status"] == rinfo["status"]
        if info["status"] == "optimal":
            assert info["objective"] == pytest.approx(rinfo["objective"], rel=1e-9, abs=1e-9)
            assert _native.iqp_objective(G, sz, c) == pytest.approx(reference.iqp_objective(G, sz, c), rel=1e-9, abs=1e-9)


def test_budget_exactly_at_a_configuration_admits_it():
    rng = np.random.default_rng(3)
    G, sz, A, _ = make_instance(rng, [3] * 6)
    c = np.array([0, 1, 2, 0, 1, 2])
    b = A[:, np.arange(6) * 3 + c].astype(np.float64).sum(1)
    check_same_optimum(G, sz, A, b)


@pytest.mark.parametrize("sizes", [[3] * 13, [4] * 9, [2, 3, 4, 3, 2, 3, 4, 3, 2, 3, 4, 3]])
def test_solver_exact_beyond_bruteforce_sizes(sizes):
    """Agrees with an independent MILP (HiGHS) on the aggregated linearization."""
    milp = pytest.importorskip("scipy.optimize").milp
    rng = np.random.default_rng(len(sizes))
    G, sz, A, b = make_instance(rng, sizes, "lowrank", 0.5, 1, interaction=0.5)
    c, info = _native.solve_iqp(G, sz, A, b, time_limit=60)
    assert info["status"] == "optimal"
    obj = milp_objective(milp, G, sz, A, b)
    assert info["objective"] == pytest.approx(obj, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("L, S, budget", [(14, 3, 0.3), (10, 4, 0.6)])
def test_low_rank_dual_agrees_with_milp(L, S, budget):
    """Exact low-rank G (benchmarks/iqp.py's kind) goes through the low-rank dual; HiGHS agrees."""
    milp = pytest.importorskip("scipy.optimize").milp
    G, sz, A, b = clado_lowrank(np.random.default_rng(L), L, S, budget)
    c, info = _native.solve_iqp(G, sz, A, b, time_limit=60)
    assert info["status"] == "optimal" and info["relaxation"] == "lowrank-dual"
    assert info["objective"] == pytest.approx(milp_objective(milp, G, sz, A, b), rel=1e-6, abs=1e-9)


def test_low_rank_100x4_gap_proven_with_the_dual():
    """100 layers x 4 choices of exact low rank: the dual proves a 1e-4 gap in seconds, and an
    independent incumbent (another seed, another time limit) never lies below that bound."""
    rng = np.random.default_rng(100)
    for budget in (0.5, 0.75):
        G, sz, A, b = clado_lowrank(rng, 100, 4, budget)
        c, info = _native.solve_iqp(G, sz, A, b, time_limit=60, gap_tol=1e-4)
        scale = float(np.abs(G).max() * 100)
        assert info["status"] == "optimal" and info["relaxation"] == "lowrank-dual" and info["gap"] <= 1e-4
        assert info["objective"] == pytest.approx(_native.iqp_objective(G, sz, c), abs=1e-12 * scale)
        assert info["root_bound"] <= info["bound"] <= info["objective"] <= info["warm_objective"]
        assert A[0, np.arange(100) * 4 + c].sum() <= b[0] * (1 + 1e-9)
        _, other = _native.solve_iqp(G, sz, A, b, time_limit=0.5, seed=1)
        assert other["objective"] >= info["bound"] - 1e-9 * scale


def test_reduced_cost_neighbourhoods_improve_a_search_far_from_a_proof():
    """100 x 4 at a 25 % budget with two budget rows: a second of branching closes little of the
    root gap, so the solver spends part of the limit on reduced-cost neighbourhood sub-problems
    (fixed layers folded into the diagonal and both rows). Their configurations come back valid,
    priced on the full problem, and they improve on the incumbent (on at least one of three: where
    the gate falls depends on the machine's speed)."""
    solved = improvements = 0
    for seed in (1001, 7, 8):
        G, sz, A, b = clado_lowrank(np.random.default_rng(seed), 100, 4, 0.25, rows=2)
        c, info = _native.solve_iqp(G, sz, A, b, time_limit=1.0)
        assert info["relaxation"] == "lowrank-dual"
        assert info["objective"] == pytest.approx(_native.iqp_objective(G, sz, c), rel=1e-12)
        assert np.all(A[:, np.arange(100) * 4 + c].sum(1) <= b * (1 + 1e-9))
        assert info["bound"] <= info["objective"] <= info["warm_objective"]
        solved += info["neighbourhoods"]
        improvements += info["neighbourhood_improvements"]
    assert solved >= 4 and improvements >= 1
    # With no budget the root proves the optimum at once: no neighbourhoods.
    _, info = _native.solve_iqp(G, sz, time_limit=1.0)
    assert info["status"] == "optimal" and info["neighbourhoods"] == 0


def test_noisy_low_rank_keeps_the_qp_relaxation():
    """The dual needs G itself of low rank: measurement noise off the blocks sends the solver
    back to the QP relaxation, still exact."""
    rng = np.random.default_rng(4)
    G, sz, A, b = clado_lowrank(rng, 9, 3, 0.4)
    noise = rng.standard_normal(G.shape) * 1e-3 * np.abs(G).max()
    layer = np.repeat(np.arange(9), 3)
    noise[layer[:, None] == layer[None, :]] = 0
    G = (G + noise + noise.T).astype(np.float32)
    info = check_same_optimum(G, sz, A, b)
    assert info["relaxation"] != "lowrank-dual"


def milp_objective(milp, G, sizes, A, b):
    """min x^T Gs x via y_{ls,mt} with sum_t y = x_ls, sum_s y = x_mt (aggregated linearization)."""
    from scipy.optimize import Bounds, LinearConstraint

    Gs = (G.astype(np.float64) + G.T.astype(np.float64)) / 2
    starts = np.concatenate([[0], np.cumsum(sizes)])
    L, n = len(sizes), int(starts[-1])
    pairs = [(lay, m) for lay, m in itertools.combinations(range(L), 2)]
    ycols = {}
    for lay, m in pairs:
        for s in range(sizes[lay]):
            for t in range(sizes[m]):
                ycols[(starts[lay] + s, starts[m] + t)] = n + len(ycols)
    N = n + len(ycols)
    cost = np.zeros(N)
    cost[:n] = np.diag(Gs)
    for (i, j), col in ycols.items():
        cost[col] = 2 * Gs[i, j]
    rows, lo, hi = [], [], []
    for lay in range(L):
        r = np.zeros(N)
        r[starts[lay] : starts[lay + 1]] = 1
        rows.append(r)
        lo.append(1)
        hi.append(1)
    for lay, m in pairs:
        for s in range(sizes[lay]):
            r = np.zeros(N)
            r[starts[lay] + s] = -1
            for t in range(sizes[m]):
                r[ycols[(starts[lay] + s, starts[m] + t)]] = 1
            rows.append(r)
            lo.append(0)
            hi.append(0)
        for t in range(sizes[m]):
            r = np.zeros(N)
            r[starts[m] + t] = -1
            for s in range(sizes[lay]):
                r[ycols[(starts[lay] + s, starts[m] + t)]] = 1
            rows.append(r)
            lo.append(0)
            hi.append(0)
    for k in range(A.shape[0]):
        r = np.zeros(N)
        r[:n] = A[k]
        rows.append(r)
        lo.append(-np.inf)
        hi.append(float(b[k]) + 1e-9 * np.abs(A[k]).sum())
    integrality = np.zeros(N)
    integrality[:n] = 1
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(0, 1), options={"mip_rel_gap": 1e-9})
    assert res.status == 0, res.message
    return float(res.fun)


def test_infeasible_budget_is_reported_not_raised():
    rng = np.random.default_rng(1)
    G, sz, A, b = make_instance(rng, [3] * 8, budget=0.5, rows=2)
    b = np.array([A[0].reshape(8, 3).min(1).sum() * 0.99, b[1]], np.float32)
    c, info = _native.solve_iqp(G, sz, A, b, time_limit=5)
    assert info["status"] == "infeasible"
    assert np.all(c == -1) and info["objective"] == np.inf
    # Two rows each satisfiable alone but not together: proven by the search, not the root.
    A2 = np.zeros((2, 6), np.float32)
    A2[0] = [0, 1, 0, 1, 0, 1]
    A2[1] = [1, 0, 1, 0, 1, 0]
    c, info = _native.solve_iqp(np.eye(6, dtype=np.float32), [2, 2, 2], A2, np.array([1, 1], np.float32))
    assert info["status"] == "infeasible"
    assert _native.solve_iqp_bruteforce(np.eye(6, dtype=np.float32), [2, 2, 2], A2, np.array([1, 1], np.float32))[1]["status"] == "infeasible"


def test_no_budget_pressure_picks_the_best_per_layer_when_diagonal():
    d = np.array([5, 2, 1, 4, 3, 0.5, 9, 8, 7], np.float32)
    c, info = _native.solve_iqp(np.diag(d), [3, 3, 3])
    assert info["status"] == "optimal"
    assert c.tolist() == [2, 2, 2]
    assert info["objective"] == pytest.approx(1 + 0.5 + 7)


def test_time_limit_returns_incumbent_bound_and_gap():
    rng = np.random.default_rng(7)
    G, sz, A, b = make_instance(rng, [4] * 60, "random", 0.5)
    c, info = _native.solve_iqp(G, sz, A, b, time_limit=0.2)
    assert info["status"] in ("time_limit", "optimal")
    assert info["seconds"] < 2.0
    assert np.all(c >= 0)
    assert info["objective"] == pytest.approx(_native.iqp_objective(G, sz, c), rel=1e-9, abs=1e-9)
    assert info["bound"] <= info["objective"]
    if info["status"] == "time_limit":
        assert info["gap"] > 0
    c2, info2 = _native.solve_iqp(G, sz, A, b, time_limit=10, node_limit=3)
    assert info2["status"] in ("node_limit", "optimal") and info2["nodes"] <= 3


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(11)
    G, sz, A, b = make_instance(rng, [3] * 12, "lowrank", 0.4)
    keep = _native.get_num_threads()
    try:
        out = []
        for t in (1, 2):
            _native.set_num_threads(t)
            c, info = _native.solve_iqp(G, sz, A, b, time_limit=30, restarts=16)
            out.append((c.tolist(), info["objective"], info["warm_objective"], info["nodes"], info["bound"]))
        assert out[0] == out[1]
    finally:
        _native.set_num_threads(keep)


def test_project_psd_matches_reference():
    rng = np.random.default_rng(5)
    G = rng.standard_normal((9, 9)).astype(np.float32)
    P, mass = _native.project_psd(G)
    RP, rmass = reference.project_psd(G)
    np.testing.assert_allclose(P, RP, atol=1e-5)
    assert mass == pytest.approx(rmass, rel=1e-6)
    assert np.linalg.eigvalsh(P.astype(np.float64)).min() > -1e-5
    np.testing.assert_array_equal(P, P.T)


def test_bad_input_names_the_argument():
    G = np.eye(6, dtype=np.float32)
    with pytest.raises(ValueError, match="G must have shape"):
        _native.solve_iqp(G, [3, 2])
    with pytest.raises(ValueError, match="sizes"):
        _native.solve_iqp(G, [3, 0, 3])
    with pytest.raises(ValueError, match="A must have shape"):
        _native.solve_iqp(G, [3, 3], np.ones((1, 5), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="b must have shape"):
        _native.solve_iqp(G, [3, 3], np.ones((1, 6), np.float32), np.ones(2, np.float32))
    bad = G.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        _native.solve_iqp(bad, [3, 3])
    with pytest.raises(ValueError, match="time_limit"):
        _native.solve_iqp(G, [3, 3], time_limit=0)
    with pytest.raises(ValueError, match="choice"):
        _native.iqp_objective(G, [3, 3], [0, 3])
