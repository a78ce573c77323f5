"""Plain NumPy twins of every C++ entry (slow and obvious; the tests hold the kernels to them).

Each function here has the same name and meaning as the one in ``lowbit._native``.
"""

from __future__ import annotations

import numpy as np

# --- quant ---------------------------------------------------------------------------------


def _expand(p: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(R, G) per-unit parameters broadcast to (rows, cols)."""
    p = np.asarray(p, dtype=np.float32).reshape(p.shape[0] if p.ndim else 1, -1)
    R, G = p.shape
    return np.broadcast_to(np.repeat(p, cols // G, axis=1), (rows, cols))


def quantize(x, scale, zero, bits):
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1) if np.ndim(x) > 1 else np.asarray(x, np.float32).reshape(1, -1)
    s, z = _expand(np.asarray(scale), *x.shape), _expand(np.asarray(zero), *x.shape)
    q = np.round(x / s) + z
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def dequantize(q, scale, zero, bits):
    q = np.asarray(q).reshape(len(q), -1) if np.ndim(q) > 1 else np.asarray(q).reshape(1, -1)
    s, z = _expand(np.asarray(scale), *q.shape), _expand(np.asarray(zero), *q.shape)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def fake_quantize(x, scale, zero, bits):
    return dequantize(quantize(x, scale, zero, bits), scale, zero, bits)


def _range_to_params(lo: float, hi: float, bits: int, symmetric: bool):
    lo, hi = np.float32(lo), np.float32(hi)
    qmax = np.float32(2**bits - 1)
    if symmetric:
        amax = max(-lo, hi)
        s = np.float32(2.0) * amax / qmax if amax > 0 else np.float32(1.0)
        return s, np.float32(2 ** (bits - 1))
    s = (hi - lo) / qmax if hi > lo else np.float32(1.0)
    return np.float32(s), np.float32(np.clip(np.round(-lo / np.float32(s)), 0, qmax))


def lp_range_search(x, bits, *, symmetric=False, p=2.4, n_grid=80, shrink=0.01, rows=1, groups=1):
    x = np.asarray(x, dtype=np.float32)
    x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    gsize = x.shape[1] // groups
    scale = np.empty((rows, groups), np.float32)
    zero = np.empty((rows, groups), np.float32)
    n = n_grid if p > 0 else 1
    for r in range(rows):
        for g in range(groups):
            unit = (x if rows == 1 else x[r : r + 1])[:, g * gsize : (g + 1) * gsize]
            lo, hi = min(np.float32(0), unit.min()), max(np.float32(0), unit.max())
            best = None
            for k in range(n):
                ratio = np.float32(1.0) - np.float32(k) * np.float32(shrink)
                s, z = _range_to_params(lo * ratio, hi * ratio, bits, symmetric)
                err = np.abs(unit - fake_quantize(unit, s, z, bits)).astype(np.float64)
                e = float(np.sum(err**p))
                if best is None or e < best[0]:
                    best = (e, s, z)
            scale[r, g], zero[r, g] = best[1], best[2]
    return scale, zero


def hessian_loss(dW, H):
    dW = np.asarray(dW, np.float64).reshape(len(dW), -1)
    return np.einsum("nk,kl,nl->n", dW, np.asarray(H, np.float64), dW).astype(np.float32)


# --- gram ----------------------------------------------------------------------------------


def gram(X):
    X = np.asarray(X, np.float64)
    return X.T @ X


def cross_gram(A, B):
    return np.asarray(A, np.float64).T @ np.asarray(B, np.float64)


def im2col(x, kernel_size, stride, padding, dilation, groups):
    """list over groups of (N*oh*ow, C/groups*kh*kw) rows, in conv_gram_accumulate's order."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((N, C, kh, kw, oh, ow))
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            cols[:, :, ky, kx] = xp[:, :, y0 : y0 + sh * (oh - 1) + 1 : sh, x0 : x0 + sw * (ow - 1) + 1 : sw]
    cg = C // groups
    out = []
    for g in range(groups):
        blk = cols[:, g * cg : (g + 1) * cg]  # N, cg, kh, kw, oh, ow
        out.append(blk.transpose(0, 4, 5, 1, 2, 3).reshape(N * oh * ow, cg * kh * kw))
    return out


# --- multipoint ----------------------------------------------------------------------------


def multipoint_best_point(r, bits):
    """Best (scale, zero, codes, err) of one row by trying every interval between breakpoints.

    Both grids z = 2^(b-1) and z = 2^(b-1) - 1 (q = codes - z); on each interval of a where
    nearest rounding is fixed, the best a is <r,q>/<q,q> clamped to the interval.
    """
    r = np.asarray(r, np.float64).reshape(-1)
    top, half = 2**bits - 1, 2 ** (bits - 1)
    m = np.abs(r[r != 0])
    bps = np.unique((m[:, None] / (np.arange(half + 1) + 0.5)[None, :]).reshape(-1))
    edges = np.concatenate([[0.0], bps, [np.inf]])
    best = (float(r @ r), 0.0, float(half), np.full(r.shape, half, np.int64))
    for z in (half, half - 1):
        for lo, hi in zip(edges[:-1], edges[1:]):
            mid = hi / 2 if lo == 0 else (lo * 2 if np.isinf(hi) else (lo + hi) / 2)
            q = np.clip(np.round(r / mid), -z, top - z)
            qq = float(q @ q)
            if qq == 0:
                continue
            a = min(max(float(r @ q) / qq, lo), hi)
            f = float(np.sum((r - a * q) ** 2))
            if f < best[0] * (1 - 1e-12):
                best = (f, a, float(z), (q + z).astype(np.int64))
    _, a, z, codes = best
    a32 = np.float32(a)
    err = float(np.sum((r - np.float64(a32) * (codes - z)) ** 2))
    return a32, np.float32(z), codes.astype(np.uint8), err


def multipoint_sweep(R, bits):
    R = np.asarray(R, np.float32)
    R = R.reshape(1, -1) if R.ndim == 1 else R
    res = [multipoint_best_point(row, bits) for row in R]
    scale = np.array([x[0] for x in res], np.float32)
    zero = np.array([x[1] for x in res], np.float32)
    codes = np.stack([x[2] for x in res]) if res else np.empty((0, R.shape[1]), np.uint8)
    err = np.array([x[3] for x in res], np.float32)
    return scale, zero, codes, err


def multipoint_build(W, base, H, bits, *, budget, tolerance=0.0, max_points=2, output_scale=True,
                     order=None, g0=None, e0=None):
    """The greedy of multipoint.h in plain Python: the same rules, g = g0 - H (delta0 - delta)
    recomputed from the residual at every candidate."""
    import heapq

    W = np.asarray(W, np.float32)
    base = np.asarray(base, np.float32)
    H = np.asarray(H, np.float64)
    H = H.reshape(1, *H.shape) if H.ndim == 2 else H
    C, d = W.shape
    per_group = C // H.shape[0]
    Hc = lambda c: H[c // per_group]  # noqa: E731
    top = 2**bits - 1
    delta = (W - base).astype(np.float32)
    delta0 = delta.astype(np.float64)
    if g0 is None:
        g0 = np.stack([Hc(c) @ delta0[c] for c in range(C)]) if C else np.zeros((0, d))
        e = np.array([delta0[c] @ Hc(c) @ delta0[c] for c in range(C)])
    else:
        g0, e = np.asarray(g0, np.float64), np.asarray(e0, np.float64).copy()
    e_before = e.copy()
    energy = np.array([W[c].astype(np.float64) @ Hc(c) @ W[c] for c in range(C)])
    n = np.ones(C, int)
    pts = []

    def allowed(c):
        return n[c] < max_points and e[c] > 0 and e[c] > tolerance * energy[c]

    def candidate(c):
        a, z, codes, _ = multipoint_best_point(delta[c], bits)
        if not a > 0:
            return None
        q = codes.astype(np.float64) - z
        g = g0[c] - Hc(c) @ (delta0[c] - delta[c].astype(np.float64))
        qg, qhq = q @ g, q @ Hc(c) @ q
        if output_scale and qhq > 0:
            ad = qg / qhq
            if ad < 0:
                codes, z, ad, qg, q = (top - codes).astype(np.uint8), np.float32(top - z), -ad, -qg, -q
            a = np.float32(ad)
            if not a > 0:
                return None
        gain = 2 * np.float64(a) * qg - np.float64(a) ** 2 * qhq
        return (a, z, codes, gain) if gain > 0 else None

    def commit(c, cand):
        a, z, codes, gain = cand
        delta[c] = delta[c] - a * (codes.astype(np.float32) - z)
        e[c] = e[c] - gain
        n[c] += 1
        pts.append((c, a, z, codes, gain))

    if order is not None:
        for c in np.asarray(order).reshape(-1):
            if len(pts) >= budget:
                break
            if allowed(c) and (cand := candidate(c)) is not None:
                commit(c, cand)
    elif budget > 0:
        cands = {c: candidate(c) for c in range(C) if allowed(c)}
        heap = [(-cd[3], c) for c, cd in cands.items() if cd is not None]
        heapq.heapify(heap)
        while heap and len(pts) < budget:
            _, c = heapq.heappop(heap)
            commit(c, cands[c])
            if allowed(c) and (cd := candidate(c)) is not None:
                cands[c] = cd
                heapq.heappush(heap, (-cd[3], c))
    return {
        "channel": np.array([p[0] for p in pts], np.int32),
        "scale": np.array([p[1] for p in pts], np.float32),
        "zero": np.array([p[2] for p in pts], np.float32),
        "codes": np.array([p[3] for p in pts], np.uint8).reshape(len(pts), d),
        "gain": np.array([p[4] for p in pts], np.float32),
        "err_before": e_before.astype(np.float32),
        "err_after": e.astype(np.float32),
    }


def multipoint_fold(y_ext, channel):
    y = np.asarray(y_ext, np.float32)
    channel = np.asarray(channel).reshape(-1)
    N = y.shape[1] - channel.size
    out = y[:, :N].copy()
    for p, c in enumerate(channel):
        out[:, c] += y[:, N + p]
    return out
