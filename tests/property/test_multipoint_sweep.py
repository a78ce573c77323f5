"""Properties of the multipoint breakpoint sweep (methods.md section 5.2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit import _native

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32)


def grid_search_err(r: np.ndarray, bits: int, n_grid: int = 4000) -> float:
    """The smallest ||r - a q||^2 over a fine grid of scales a (both signs, i.e. both grids)
    with q = nearest rounding onto the b-bit grid [-2^(b-1), 2^(b-1) - 1]."""
    r = r.astype(np.float64)
    amax = float(np.abs(r).max())
    if amax == 0:
        return 0.0
    half = 2 ** (bits - 1)
    # from far below the finest useful scale to past the coarsest (one level covers max|r|)
    a = np.geomspace(amax / (half * 64), amax * 4, n_grid)
    best = float(r @ r)
    for sign in (1.0, -1.0):
        q = np.clip(np.round(sign * r[None, :] / a[:, None]), -half, half - 1)
        err = ((sign * r[None, :] - a[:, None] * q) ** 2).sum(1)
        best = min(best, float(err.min()))
    return best


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_sweep_never_worse_than_grid_search(bits, data):
    d = data.draw(st.integers(1, 40))
    r = data.draw(arrays(np.float32, d, elements=finite))
    s, z, c, e = _native.multipoint_sweep(r.reshape(1, -1), bits)
    rr = float(r.astype(np.float64) @ r.astype(np.float64))
    # The sweep is the exact optimum; it may lose only the rounding of its scale to float32
    # (|df| <= 2 |<r,q> - a|q|^2| * eps * a <= ~ eps * ||r||^2).
    assert e[0] <= grid_search_err(r, bits) + 1e-6 * rr
    assert e[0] <= rr * (1 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_residual_falls_geometrically(bits):
    """Greedy points on random rows: the residual norm falls at every point, by a factor that
    stays below a constant (a straight line on a log plot, as Theorem 1 of the paper says)."""
    rng = np.random.default_rng(bits)
    R = rng.standard_normal((64, 256)).astype(np.float32)
    norms = [np.linalg.norm(R, axis=1)]
    for _ in range(6):
        s, z, c, e = _native.multipoint_sweep(R, bits)
        R = R - s[:, None] * (c.astype(np.float32) - z[:, None])
        norms.append(np.linalg.norm(R, axis=1))
    ratio = np.array(norms[1:]) / np.array(norms[:-1])
    assert (ratio < 1).all()
    # Measured on this data: worst step 0.66 (2 bits), 0.61 (3), 0.36 (4). Each point must
    # at least cut the residual by a quarter; finer grids cut it more.
    assert ratio.max() < {2: 0.75, 3: 0.7, 4: 0.45}[bits]
    assert np.linalg.norm(R, axis=1).max() < 0.75 ** 6 * norms[0].min()
