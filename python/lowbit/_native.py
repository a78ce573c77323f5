"""The only importer of the compiled module ``lowbit._lowbit``.

Every call into C++ goes through a function here. Each one converts its inputs once
(detach, cpu, float32 / uint8 / int32, C-contiguous, zero-copy ``.numpy()`` where possible),
allocates the outputs, and hands plain NumPy arrays to the binding, which refuses anything else
(DESIGN.md section 3). Shapes are checked again in C++ with the argument named.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import numpy as np
import torch

try:
    from lowbit import _lowbit as _C
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "lowbit's compiled core (lowbit._lowbit) is missing: build it with `make setup` "
        "(or `pip install .`); Eigen3 is needed: apt-get install libeigen3-dev"
    ) from e

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_f32(x: ArrayLike) -> np.ndarray:
    """float32, C-contiguous NumPy view (copies only when dtype/layout/device require it)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype != torch.float32:
            x = x.float()
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double()
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def as_u8(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype != torch.uint8:
            x = x.to(torch.uint8)
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.uint8)


def as_i32(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype != torch.int32:
            x = x.to(torch.int32)
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.int32)


def as_2d(x: np.ndarray) -> np.ndarray:
    """(rows, cols) view: a 1-D vector is one row, higher ranks keep their first axis."""
    if x.ndim == 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


# --- threads and instruction sets -------------------------------------------------------


def set_num_threads(n: int) -> None:
    """Threads for lowbit's C++ kernels (0 = OpenMP default). Results do not depend on it."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    return int(_C.get_num_threads())


def detected_isa() -> str:
    return str(_C.detected_isa())


def active_isa() -> str:
    return str(_C.active_isa())


def set_isa(name: str | None) -> None:
    """Cap the kernel variant (``scalar``, ``avx2``, ``avx512``, ``avx512vnni``, ``amx``);
    None goes back to ``LOWBIT_ISA`` or the best the CPU has."""
    if name is None:
        _C.reset_isa()
    else:
        _C.set_isa(name)


# --- quant: uniform affine quantization --------------------------------------------------


def _scales(scale: ArrayLike, zero: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """scale and zero as (R, G); a scalar is per tensor. 1-D is refused: (R,) and (G,) both fit."""
    out = []
    for name, v in (("scale", scale), ("zero", zero)):
        a = as_f32(v)
        if a.ndim == 0:
            a = a.reshape(1, 1)
        elif a.ndim != 2:
            raise ValueError(f"{name} must be a scalar or a (rows, groups) array, got shape {a.shape}")
        out.append(a)
    return out[0], out[1]


def quantize(x: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int) -> np.ndarray:
    """Codes uint8 (rows, cols) of x (rows, cols); scale/zero (R, G) as in quant.h."""
    xa = as_2d(as_f32(x))
    s, z = _scales(scale, zero)
    out = np.empty(xa.shape, dtype=np.uint8)
    _C.quantize(xa, s, z, int(bits), out)
    return out


def dequantize(q: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int) -> np.ndarray:
    qa = as_2d(as_u8(q))
    s, z = _scales(scale, zero)
    out = np.empty(qa.shape, dtype=np.float32)
    _C.dequantize(qa, s, z, int(bits), out)
    return out


def fake_quantize(x: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int) -> np.ndarray:
    xa = as_2d(as_f32(x))
    s, z = _scales(scale, zero)
    out = np.empty(xa.shape, dtype=np.float32)
    _C.fake_quantize(xa, s, z, int(bits), out)
    return out


def lp_range_search(
    x: ArrayLike,
    bits: int,
    *,
    symmetric: bool = False,
    p: float = 2.4,
    n_grid: int = 80,
    shrink: float = 0.01,
    rows: int = 1,
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero (rows, groups) minimising the Lp error of each unit (p <= 0: min-max).

    ``rows`` is 1 (per tensor) or x's row count (per channel); ``groups`` splits each row.
    """
    xa = as_2d(as_f32(x))
    scale = np.empty((rows, groups), dtype=np.float32)
    zero = np.empty((rows, groups), dtype=np.float32)
    _C.lp_range_search(xa, int(bits), bool(symmetric), float(p), int(n_grid), float(shrink), scale, zero)
    return scale, zero


def lp_error(x: ArrayLike, scale: float, zero: float, bits: int, p: float = 2.4) -> float:
    """sum |x - fake_quantize(x)|^p over all of x (double) for one range, exactly as
    lp_range_search ranks its candidates (quant.h: polynomial pow for 0 < p <= 6)."""
    return float(_C.lp_error(as_f32(x).reshape(-1), float(scale), float(zero), int(bits), float(p)))


def hessian_loss(dW: ArrayLike, H: ArrayLike) -> np.ndarray:
    """Per output channel c: dW_c^T H dW_c, for dW (N, K) and H (K, K)."""
    d = as_2d(as_f32(dW))
    h = as_f32(H)
    out = np.empty(d.shape[0], dtype=np.float32)
    _C.hessian_loss(d, h, out)
    return out


# --- gram: streamed input statistics -----------------------------------------------------


def gram_accumulate(X: ArrayLike, H: np.ndarray) -> None:
    """H (d, d) += X^T X for rows X (n, d); H is a float32 array owned by the caller."""
    _C.gram_accumulate(as_2d(as_f32(X)), H)


def cross_gram_accumulate(A: ArrayLike, B: ArrayLike, C: np.ndarray) -> None:
    """C (d, d) += A^T B for rows A, B (n, d)."""
    _C.cross_gram_accumulate(as_2d(as_f32(A)), as_2d(as_f32(B)), C)


def conv_gram_accumulate(
    x: ArrayLike,
    H: np.ndarray,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    x2: ArrayLike | None = None,
) -> None:
    """H (groups, d, d) += Gram of x's im2col rows per group (cross-Gram with x2 if given)."""
    _C.conv_gram_accumulate(
        as_f32(x),
        None if x2 is None else as_f32(x2),
        tuple(kernel_size),
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        int(groups),
        H,
    )


# --- iqp: CLADO's integer quadratic program ----------------------------------------------

IQP_STATUSES = ("optimal", "time_limit", "node_limit", "infeasible")


def _iqp_arrays(G: ArrayLike, sizes, A: ArrayLike | None, b: ArrayLike | None):
    g = as_f32(G)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"G must be a square matrix, got shape {g.shape}")
    sz = as_i32(np.asarray(sizes).reshape(-1))
    if A is None:
        if b is not None:
            raise ValueError("b is given without A")
        a = np.zeros((0, g.shape[0]), np.float64)
        bb = np.zeros((0,), np.float64)
    else:
        a = as_2d(as_f64(A))
        if b is None:
            raise ValueError("A is given without b")
        bb = as_f64(np.asarray(b).reshape(-1))
    return g, sz, a, bb


def solve_iqp(
    G: ArrayLike,
    sizes,
    A: ArrayLike | None = None,
    b: ArrayLike | None = None,
    *,
    time_limit: float = 10.0,
    node_limit: int = 1_000_000,
    gap_tol: float = 1e-9,
    seed: int = 0,
    restarts: int = 8,
) -> tuple[np.ndarray, dict]:
    """min x^T G x over one-hot x per layer (``sizes[l]`` consecutive choices) with A x <= b.

    G is used in float32, the budget rows A (m, n) and b (m,) in float64.

    Returns (choice (L,) int32, info) with info = {status: "optimal" | "time_limit" |
    "node_limit" | "infeasible", objective, bound, gap, nodes, seconds, warm_objective,
    root_bound, relaxation, neighbourhoods, neighbourhood_improvements}; choice is -1
    everywhere when no feasible configuration was found (see iqp.h).
    """
    g, sz, a, bb = _iqp_arrays(G, sizes, A, b)
    choice = np.empty(sz.shape[0], np.int32)
    info = _C.solve_iqp(g, sz, a, bb, float(time_limit), int(node_limit), float(gap_tol), int(seed),
                        int(restarts), choice)
    return choice, dict(info)


def solve_iqp_bruteforce(G: ArrayLike, sizes, A: ArrayLike | None = None,
                         b: ArrayLike | None = None) -> tuple[np.ndarray, dict]:
    """Enumerates every configuration (at most 1e8): the exact answer for small instances."""
    g, sz, a, bb = _iqp_arrays(G, sizes, A, b)
    choice = np.empty(sz.shape[0], np.int32)
    info = _C.solve_iqp_bruteforce(g, sz, a, bb, choice)
    return choice, dict(info)


def iqp_objective(G: ArrayLike, sizes, choice) -> float:
    """x^T G x of the configuration ``choice`` (one index per layer), summed in double."""
    g, sz, _, _ = _iqp_arrays(G, sizes, None, None)
    return float(_C.iqp_objective(g, sz, as_i32(np.asarray(choice).reshape(-1))))


def project_psd(G: ArrayLike) -> tuple[np.ndarray, float]:
    """(V max(Lambda, 0) V^T of (G + G^T) / 2, clipped negative eigen-mass)."""
    g = as_f32(G)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"G must be a square matrix, got shape {g.shape}")
    out = np.empty_like(g)
    mass = _C.project_psd(g, out)
    return out, float(mass)


# --- multipoint: greedy low-bit points per output channel ---------------------------------


def multipoint_sweep(R: ArrayLike, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best single point of each row of R (rows, d) by the exact breakpoint sweep.

    Returns scale (rows,), zero (rows,), codes uint8 (rows, d) and err (rows,) with
    ``R[r] ~ scale[r] * (codes[r] - zero[r])`` and err = the squared error (see multipoint.h).
    """
    r = as_2d(as_f32(R))
    n, d = r.shape
    scale = np.empty(n, np.float32)
    zero = np.empty(n, np.float32)
    codes = np.empty((n, d), np.uint8)
    err = np.empty(n, np.float32)
    _C.multipoint_sweep(r, int(bits), scale, zero, codes, err)
    return scale, zero, codes, err


def multipoint_build(
    W: ArrayLike,
    base: ArrayLike,
    H: ArrayLike,
    bits: int,
    *,
    budget: int,
    tolerance: float = 0.0,
    max_points: int = 2,
    output_scale: bool = True,
    order: ArrayLike | None = None,
    g0: ArrayLike | None = None,
    e0: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Greedy multipoint construction of one layer (multipoint.h ``multipoint_build``).

    W, base (C, d): float rows and their base approximation; H (d, d) or (groups, d, d).
    ``order`` (int32 channels) switches from error-driven placement to offers in that order.
    ``g0`` (C, d) and ``e0`` (C,): the asymmetric start (quantized inputs, float targets).
    Returns channel, scale, zero, codes, gain for the points added (in order) and the
    per-channel output errors err_before / err_after.
    """
    w = as_2d(as_f32(W))
    b = as_2d(as_f32(base))
    h = as_f32(H)
    if h.ndim == 2:
        h = h.reshape(1, *h.shape)
    C, d = w.shape
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    out: dict[str, np.ndarray] = {
        "channel": np.empty(budget, np.int32),
        "scale": np.empty(budget, np.float32),
        "zero": np.empty(budget, np.float32),
        "codes": np.empty((budget, d), np.uint8),
        "gain": np.empty(budget, np.float32),
    }
    err_before = np.empty(C, np.float32)
    err_after = np.empty(C, np.float32)
    n = _C.multipoint_build(
        w, b, h, int(bits), budget, float(tolerance), int(max_points), bool(output_scale),
        None if order is None else as_i32(order).reshape(-1),
        None if g0 is None else as_2d(as_f32(g0)), None if e0 is None else as_f32(e0).reshape(-1),
        out["channel"], out["scale"],
        out["zero"], out["codes"], out["gain"], err_before, err_after,
    )
    res = {k: v[:n] for k, v in out.items()}
    res["err_before"], res["err_after"] = err_before, err_after
    return res


def multipoint_fold(y_ext: ArrayLike, channel: ArrayLike) -> np.ndarray:
    """out (M, N) = the first N columns of y_ext (M, N + P) plus, for each point p in order,
    column N + p added into column channel[p] (the segmented sum of packed multipoint)."""
    y = as_2d(as_f32(y_ext))
    ch = as_i32(channel).reshape(-1)
    if ch.size > y.shape[1]:
        raise ValueError(f"{ch.size} points but y_ext has only {y.shape[1]} columns")
    out = np.empty((y.shape[0], y.shape[1] - ch.size), np.float32)
    _C.multipoint_fold(y, ch, out)
    return out

# --- pack / qmatmul: packed low-bit weights (pack.h, qmatmul.h) ---------------------------
#
# A packed matrix travels as three arrays plus its shape (``Packed``); see pack.h or
# docs/design/packed_format.md for the bytes. group_size 0 means one group per row.

PACK_FORMAT_VERSION = int(_C.PACK_FORMAT_VERSION)


class Packed(NamedTuple):
    """A packed weight matrix: ``codes`` uint8 (code_bytes,), ``scales`` float32 and ``zeros``
    uint8 (tiles, groups, 16), for a (rows, cols) weight of ``bits`` bits."""

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    rows: int
    cols: int
    group_size: int  # 0 = per channel

    def args(self) -> tuple:
        return (self.codes, self.scales, self.zeros, self.bits, self.rows, self.cols, self.group_size)


def packed_layout(bits: int, rows: int, cols: int, group_size: int = 0) -> dict:
    """Sizes of the packed arrays (padded_cols, groups, tiles, code_bytes, ...); checks the shape."""
    return dict(_C.packed_layout(int(bits), int(rows), int(cols), int(group_size)))


def packed_from_arrays(codes: ArrayLike, scales: ArrayLike, zeros: ArrayLike, bits: int, rows: int,
                       cols: int, group_size: int) -> Packed:
    """A ``Packed`` over existing arrays (e.g. torch buffers; zero-copy when already uint8/float32)."""
    return Packed(as_u8(codes), as_f32(scales), as_u8(zeros), int(bits), int(rows), int(cols), int(group_size))


def pack_weights(q: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int, group_size: int = 0) -> Packed:
    """Pack codes q (rows, cols) with scale / zero (R, G) (R in {1, rows}; integer zeros).

    ``group_size`` 0 packs one group per row (G must be 1); otherwise G = cols / group_size.
    """
    qa = as_2d(as_u8(q))
    s, z = _scales(scale, zero)
    lay = packed_layout(bits, qa.shape[0], qa.shape[1], group_size)
    codes = np.empty(lay["code_bytes"], dtype=np.uint8)
    scales = np.empty((lay["tiles"], lay["groups"], 16), dtype=np.float32)
    zeros = np.empty((lay["tiles"], lay["groups"], 16), dtype=np.uint8)
    _C.pack_weights(qa, s, z, int(bits), int(group_size), codes, scales, zeros)
    return Packed(codes, scales, zeros, int(bits), qa.shape[0], qa.shape[1], int(group_size))


def unpack_weights(p: Packed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 (rows, cols), scale float32 (rows, G), zero float32 (rows, G))."""
    G = packed_layout(p.bits, p.rows, p.cols, p.group_size)["groups"]
    q = np.empty((p.rows, p.cols), dtype=np.uint8)
    scale = np.empty((p.rows, G), dtype=np.float32)
    zero = np.empty((p.rows, G), dtype=np.float32)
    _C.unpack_weights(*p.args(), q, scale, zero)
    return q, scale, zero


def dequantize_rows(p: Packed, index: ArrayLike) -> np.ndarray:
    """float32 (n, cols): the weight rows ``index`` (int, n) decoded, (q - z) * s (an embedding lookup)."""
    idx = np.asarray(index).reshape(-1)
    if idx.size and not (np.iinfo(np.int32).min <= idx.min() and idx.max() <= np.iinfo(np.int32).max):
        bad = idx.max() if idx.max() > np.iinfo(np.int32).max else idx.min()  # int32 would wrap it into range
        raise ValueError(f"row index {bad} is out of range for {p.rows} rows")
    idx = np.ascontiguousarray(idx, dtype=np.int32)
    out = np.empty((idx.shape[0], p.cols), dtype=np.float32)
    _C.dequantize_rows(*p.args(), idx, out)
    return out


def _rows_of(x: ArrayLike, cols: int) -> np.ndarray:
    xa = as_f32(x)
    return xa.reshape(-1, cols) if xa.ndim != 2 else xa


def qmatmul(p: Packed, x: ArrayLike, bias: ArrayLike | None = None) -> np.ndarray:
    """y (M, rows) = x (M, cols) W^T + bias on the weight-only path (fp32 activations)."""
    xa = _rows_of(x, p.cols)
    y = np.empty((xa.shape[0], p.rows), dtype=np.float32)
    _C.qmatmul_f32(*p.args(), xa, None if bias is None else as_f32(bias), y)
    return y


def multipoint_qmatmul(p: Packed, x: ArrayLike, channel: ArrayLike, bias: ArrayLike | None = None, *,
                       int8: bool = False, act: tuple[float, float, int] | None = None,
                       row_sums: np.ndarray | None = None) -> np.ndarray:
    """out (M, rows - P) = multipoint_fold(x W_ext^T + bias, channel) in one native call.

    ``p`` holds the N base rows then the P = len(channel) point rows; ``bias`` has p.rows
    entries (zeros for the point rows). ``int8`` False runs the weight-only path (as
    ``qmatmul``), True the int8-activation path with ``act`` / ``row_sums`` (as ``qmatmul_a8``).
    The same bits as the two calls ``multipoint_fold(qmatmul(...), channel)``.
    """
    xa = _rows_of(x, p.cols)
    ch = as_i32(channel).reshape(-1)
    if ch.size > p.rows:
        raise ValueError(f"channel: {ch.size} points but the packed matrix has only {p.rows} rows")
    out = np.empty((xa.shape[0], p.rows - ch.size), dtype=np.float32)
    b = None if bias is None else as_f32(bias)
    if not int8:
        _C.multipoint_qmatmul_f32(*p.args(), xa, b, ch, out)
    else:
        dynamic = act is None
        s, z, nb = (1.0, 0.0, 8) if act is None else (float(act[0]), float(act[1]), int(act[2]))
        _C.multipoint_qmatmul_a8(*p.args(), xa, dynamic, s, z, nb, row_sums, b, ch, out)
    return out


def packed_row_sums(p: Packed) -> np.ndarray:
    """row_sums (rows,) = sum_g s_g * sum_k (q - z): what the static int8 path adds per row."""
    out = np.empty(p.rows, dtype=np.float32)
    _C.packed_row_sums(*p.args(), out)
    return out


def qmatmul_a8(p: Packed, x: ArrayLike, act: tuple[float, float, int] | None = None,
               bias: ArrayLike | None = None, row_sums: np.ndarray | None = None) -> np.ndarray:
    """y (M, rows) on the int8-activation path.

    ``act`` None quantizes each row of x dynamically (symmetric int8); ``(scale, zero, bits)``
    applies a per-tensor activation quantizer exactly as the fake-quant model does.
    ``row_sums`` (from ``packed_row_sums``) saves recomputing it per call.
    """
    xa = _rows_of(x, p.cols)
    y = np.empty((xa.shape[0], p.rows), dtype=np.float32)
    dynamic = act is None
    s, z, b = (1.0, 0.0, 8) if act is None else (float(act[0]), float(act[1]), int(act[2]))
    _C.qmatmul_a8(*p.args(), xa, dynamic, s, z, b, row_sums, None if bias is None else as_f32(bias), y)
    return y


# --- threshold: AQuant borders and N2UQ's LTQ (threshold.h) ------------------------------
# Activations cross as (rows, inner) with row r in channel r % C, C = the parameters' rows.


def border_table(param: ArrayLike, bits: int, *, affine: bool, eps: float) -> np.ndarray:
    """Borders B (C, 2^b - 1) from the table (C, n) or affine (C, 2) parameterisation."""
    p = as_f32(param)
    B = np.empty((p.shape[0] if p.ndim == 2 else 0, (1 << int(bits)) - 1), dtype=np.float32)
    _C.border_table(p, int(bits), bool(affine), float(eps), B)
    return B


def border_table_backward(param: ArrayLike, gB: ArrayLike, bits: int, *, affine: bool,
                          eps: float) -> np.ndarray:
    p = as_f32(param)
    g = np.empty(p.shape, dtype=np.float32)
    _C.border_table_backward(p, as_f32(gB), int(bits), bool(affine), float(eps), g)
    return g


def border_quant_forward(x: ArrayLike, B: ArrayLike, bits: int, *, scale: float, zero: float,
                         tau: float, hard: bool) -> np.ndarray:
    """AQuant fake-quant of x (rows, inner) with borders B (C, 2^b - 1)."""
    xa = as_2d(as_f32(x))
    out = np.empty(xa.shape, dtype=np.float32)
    _C.border_quant_forward(xa, as_f32(B), int(bits), float(scale), float(zero), float(tau),
                            bool(hard), out)
    return out


def border_quant_backward(x: ArrayLike, gy: ArrayLike, B: ArrayLike, bits: int, *, scale: float,
                          zero: float, tau: float, hard: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(grad x (rows, inner), grad B (C, n), grad scale) for the upstream gradient gy."""
    xa = as_2d(as_f32(x))
    Ba = as_f32(B)
    gx = np.empty(xa.shape, dtype=np.float32)
    gB = np.empty(Ba.shape, dtype=np.float32)
    gs = np.empty(1, dtype=np.float32)
    _C.border_quant_backward(xa, as_2d(as_f32(gy)), Ba, int(bits), float(scale), float(zero),
                             float(tau), bool(hard), gx, gB, gs)
    return gx, gB, float(gs[0])


def ltq_forward(x: ArrayLike, start: ArrayLike, a: ArrayLike, in_scale: ArrayLike, bits: int, *,
                out_scale: float, zero: float, a_min: float, s1_min: float) -> np.ndarray:
    """N2UQ LTQ fake-quant of x (rows, inner); start (C,), a (C, 2^b - 1), in_scale (C,)."""
    xa = as_2d(as_f32(x))
    out = np.empty(xa.shape, dtype=np.float32)
    _C.ltq_forward(xa, as_f32(start), as_f32(a), as_f32(in_scale), int(bits), float(out_scale),
                   float(zero), float(a_min), float(s1_min), out)
    return out


def ltq_backward(x: ArrayLike, gy: ArrayLike, start: ArrayLike, a: ArrayLike, in_scale: ArrayLike,
                 bits: int, *, out_scale: float, zero: float, a_min: float, s1_min: float):
    """G-STE gradients: (gx, gstart (C,), ga (C, n), gin_scale (C,), gout_scale float)."""
    xa = as_2d(as_f32(x))
    st, aa, s1 = as_f32(start), as_f32(a), as_f32(in_scale)
    gx = np.empty(xa.shape, dtype=np.float32)
    gst = np.empty(st.shape, dtype=np.float32)
    ga = np.empty(aa.shape, dtype=np.float32)
    gs1 = np.empty(s1.shape, dtype=np.float32)
    gs2 = np.empty(1, dtype=np.float32)
    _C.ltq_backward(xa, as_2d(as_f32(gy)), st, aa, s1, int(bits), float(out_scale), float(zero),
                    float(a_min), float(s1_min), gx, gst, ga, gs1, gs2)
    return gx, gst, ga, gs1, float(gs2[0])


def ltq_thresholds(start: ArrayLike, a: ArrayLike, in_scale: ArrayLike, bits: int, *,
                   a_min: float, s1_min: float) -> np.ndarray:
    """Inference thresholds (C, 2^b - 1) in x units."""
    st = as_f32(start)
    t = np.empty((st.shape[0], (1 << int(bits)) - 1), dtype=np.float32)
    _C.ltq_thresholds(st, as_f32(a), as_f32(in_scale), int(bits), float(a_min), float(s1_min), t)
    return t


def threshold_quantize(x: ArrayLike, thresholds: ArrayLike, bits: int) -> np.ndarray:
    """uint8 codes #{k : x >= t_{c,k}} of x (rows, inner), thresholds (C, 2^b - 1)."""
    xa = as_2d(as_f32(x))
    codes = np.empty(xa.shape, dtype=np.uint8)
    _C.threshold_quantize(xa, as_f32(thresholds), int(bits), codes)
    return codes


# --- linalg: dense float32 products (linalg.h) -------------------------------------------


def sgemm(
    A: ArrayLike,
    B: ArrayLike,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    C: np.ndarray | None = None,
) -> np.ndarray:
    """C = alpha * op(A) @ op(B) + beta * C (op = transpose when trans_*), in lowbit's own
    blocked GEMM: results do not depend on the thread count. C, if given, is a float32
    C-contiguous array updated in place (and returned); otherwise a new one (beta ignored)."""
    a = as_2d(as_f32(A))
    b = as_2d(as_f32(B))
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"op(A) is ({M}, {K}) but op(B) is ({Kb}, {N}): inner sizes differ")
    if C is None:
        C = np.empty((M, N), np.float32)
        beta = 0.0
    elif C.shape != (M, N):
        raise ValueError(f"C must have shape ({M}, {N}), got {C.shape}")
    _C.sgemm(bool(trans_a), bool(trans_b), M, N, K, float(alpha), a, a.shape[1], b, b.shape[1], float(beta), C, N)
    return C


def syrk_tn_acc(A: ArrayLike, C: np.ndarray) -> None:
    """C (d, d) += A^T A for A (n, d); only C's upper triangle is read (C must be symmetric),
    and C leaves exactly symmetric. The Gram kernel behind gram_accumulate."""
    _C.ssyrk_tn_acc(as_2d(as_f32(A)), C)


# --- rounding: AdaRound's layer engine (rounding.h) --------------------------------------
#
# State arrays (V, m, v) are updated in place: pass float32 C-contiguous NumPy arrays or CPU
# tensors (their .numpy() view shares memory); anything that would need a copy is refused.


def inout_f32(x: ArrayLike, name: str) -> np.ndarray:
    """A float32 C-contiguous array the C++ side may write into, never a copy."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
            raise TypeError(f"{name} must be a contiguous float32 CPU tensor (it is written in place)")
        return x.detach().numpy()
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32 array (it is written in place)")
    return x


def _grid(W: ArrayLike, scale: ArrayLike, zero: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return as_2d(as_f32(W)), as_2d(as_f32(scale)), as_2d(as_f32(zero))


def rounding_schedule(
    iters: int,
    *,
    warmup: float = 0.2,
    beta: tuple[float, float] = (20.0, 2.0),
    reg_lambda: float = 0.01,
    lr: float = 1e-3,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
):
    """The C++ schedule object: iterations T, warm-up share, beta (start, end), lambda, Adam."""
    s = _C.RoundingSchedule()
    s.iters = int(iters)
    s.warmup = float(warmup)
    s.beta_start, s.beta_end = float(beta[0]), float(beta[1])
    s.reg_lambda = float(reg_lambda)
    s.lr = float(lr)
    s.adam_beta1, s.adam_beta2 = float(adam_betas[0]), float(adam_betas[1])
    s.adam_eps = float(adam_eps)
    return s


def rounding_init(W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int) -> np.ndarray:
    """V (o, d) with h(V) = frac(W / s), so that the soft weight starts at W."""
    w, s, z = _grid(W, scale, zero)
    V = np.empty(w.shape, np.float32)
    _C.rounding_init(w, s, z, int(bits), V)
    return V


def rounding_soft_weight(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int, V: ArrayLike,
    *, Wt: Optional[ArrayLike] = None, h: Optional[ArrayLike] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """W~(V) and h(V), both (o, d); written into Wt / h when given (e.g. torch-owned buffers)."""
    w, s, z = _grid(W, scale, zero)
    wt = np.empty(w.shape, np.float32) if Wt is None else inout_f32(Wt, "Wt").reshape(w.shape)
    hh = np.empty(w.shape, np.float32) if h is None else inout_f32(h, "h").reshape(w.shape)
    _C.rounding_soft_weight(w, s, z, int(bits), as_f32(V).reshape(w.shape), wt, hh)
    return wt, hh


def rounding_hard_codes(W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int, V: ArrayLike) -> np.ndarray:
    """uint8 codes (o, d): floor(W/s) + [V >= 0] + z, clamped to the grid."""
    w, s, z = _grid(W, scale, zero)
    codes = np.empty(w.shape, np.uint8)
    _C.rounding_hard_codes(w, s, z, int(bits), as_f32(V).reshape(w.shape), codes)
    return codes


def rounding_apply_grad(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int,
    V: ArrayLike, m: ArrayLike, v: ArrayLike, grad: ArrayLike, step: int, schedule,
    *, Wt_next: Optional[ArrayLike] = None,
) -> tuple[float, float]:
    """One optimiser step from dL/dW~ (o, d): chain rule, regulariser at step t, Adam on V, m, v
    (in place). Returns (regulariser loss, share of h not yet binary) at the step's V.
    Wt_next (o, d), when given, receives W~ of the updated V (e.g. a torch-owned buffer)."""
    w, s, z = _grid(W, scale, zero)
    reg, soft = _C.rounding_apply_grad(
        w, s, z, int(bits), inout_f32(V, "V").reshape(w.shape), inout_f32(m, "m").reshape(w.shape),
        inout_f32(v, "v").reshape(w.shape), as_f32(grad).reshape(w.shape), int(step), schedule,
        None if Wt_next is None else inout_f32(Wt_next, "Wt_next"),
    )
    return float(reg), float(soft)


def rounding_gram_loss_grad(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int, Wt: ArrayLike,
    H: ArrayLike, C: ArrayLike, c0: float, n: float, *, groups: int = 1,
) -> tuple[float, np.ndarray]:
    """Gram objective at W~: (loss, dloss/dW~); H, C (groups, d, d) (or (d, d) when groups=1)."""
    w, s, z = _grid(W, scale, zero)
    d = w.shape[1]
    grad = np.empty(w.shape, np.float32)
    loss = _C.rounding_gram_loss_grad(
        w, s, z, int(bits), int(groups), as_f32(Wt).reshape(w.shape),
        as_f32(H).reshape(groups, d, d), as_f32(C).reshape(groups, d, d), float(c0), float(n), grad,
    )
    return float(loss), grad


def _conv_args(conv) -> Optional[tuple]:
    if conv is None:
        return None
    return tuple(tuple(int(a) for a in conv[k]) for k in ("kernel_size", "stride", "padding", "dilation"))


def rounding_rows_loss_grad(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int, Wt: ArrayLike,
    X: ArrayLike, Y: ArrayLike, *, bias: Optional[ArrayLike] = None, conv: Optional[dict] = None,
    relu: bool = False, batch: int = 32, seed: int = 0, step: int = 0, groups: int = 1,
) -> tuple[float, np.ndarray]:
    """Rows objective at W~ on the minibatch of `step` (all samples when batch >= N).

    X: Linear inputs (N, P, d) or a conv input (N, C, H, W) with ``conv`` = dict(kernel_size,
    stride, padding, dilation); Y: FP outputs after f, (N, P, o) or (N, o, out_h, out_w).
    """
    w, s, z = _grid(W, scale, zero)
    grad = np.empty(w.shape, np.float32)
    loss = _C.rounding_rows_loss_grad(
        w, s, z, int(bits), int(groups), as_f32(Wt).reshape(w.shape), as_f32(X), as_f32(Y),
        None if bias is None else as_f32(bias), _conv_args(conv), bool(relu), int(batch),
        int(seed), int(step), grad,
    )
    return float(loss), grad


def rounding_run_gram(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int,
    V: ArrayLike, m: ArrayLike, v: ArrayLike, H: ArrayLike, C: ArrayLike, c0: float, n: float,
    schedule, step0: int, nsteps: int, *, groups: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps step0+1 .. step0+nsteps on the Gram objective, V/m/v in place.

    Returns (rec_loss (nsteps,), reg_loss (nsteps,), share of h not binary at the last step).
    """
    w, s, z = _grid(W, scale, zero)
    d = w.shape[1]
    rec = np.empty(nsteps, np.float32)
    reg = np.empty(nsteps, np.float32)
    _, soft = _C.rounding_run_gram(
        w, s, z, int(bits), int(groups), inout_f32(V, "V").reshape(w.shape),
        inout_f32(m, "m").reshape(w.shape), inout_f32(v, "v").reshape(w.shape),
        as_f32(H).reshape(groups, d, d), as_f32(C).reshape(groups, d, d), float(c0), float(n),
        schedule, int(step0), int(nsteps), rec, reg,
    )
    return rec, reg, float(soft)


def rounding_run_rows(
    W: ArrayLike, scale: ArrayLike, zero: ArrayLike, bits: int,
    V: ArrayLike, m: ArrayLike, v: ArrayLike, X: ArrayLike, Y: ArrayLike, schedule,
    step0: int, nsteps: int, *, bias: Optional[ArrayLike] = None, conv: Optional[dict] = None,
    relu: bool = False, batch: int = 32, seed: int = 0, groups: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps step0+1 .. step0+nsteps on minibatches of rows (see rounding_rows_loss_grad)."""
    w, s, z = _grid(W, scale, zero)
    rec = np.empty(nsteps, np.float32)
    reg = np.empty(nsteps, np.float32)
    _, soft = _C.rounding_run_rows(
        w, s, z, int(bits), int(groups), inout_f32(V, "V").reshape(w.shape),
        inout_f32(m, "m").reshape(w.shape), inout_f32(v, "v").reshape(w.shape), as_f32(X),
        as_f32(Y), None if bias is None else as_f32(bias), _conv_args(conv), bool(relu),
        int(batch), int(seed), schedule, int(step0), int(nsteps), rec, reg,
    )
    return rec, reg, float(soft)


def rounding_sample_batch(seed: int, t: int, n: int, k: int) -> np.ndarray:
    """The k sample indices (int32) the rows objective uses at step t."""
    out = np.empty(k, np.int32)
    _C.rounding_sample_batch(int(seed), int(t), int(n), out)
    return out


def rounding_cost(o: int, d: int, groups: int, rows_per_batch: int) -> tuple[float, float]:
    """Estimated multiply-adds per step: (gram, rows)."""
    return (float(_C.rounding_cost_gram(o, d, groups)),
            float(_C.rounding_cost_rows(o, d, groups, rows_per_batch)))
