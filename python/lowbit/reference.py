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
                e = float(np.sum(err**p)) if n > 1 else 0.0  # min-max: nothing to compare
                if best is None or e < best[0]:
                    best = (e, s, z)
            assert best is not None  # n >= 1 candidates: narrows the Optional for the type checker
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


# --- iqp -----------------------------------------------------------------------------------


def iqp_objective(G, sizes, choice):
    G = np.asarray(G, np.float64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.array([starts[layer] + c for layer, c in enumerate(choice)])
    Gs = (G + G.T) / 2
    return float(Gs[np.ix_(idx, idx)].sum())


def solve_iqp_bruteforce(G, sizes, A=None, b=None):
    """Every configuration by itertools.product; first (lexicographic) among the best."""
    import itertools

    G = np.asarray(G, np.float64)
    Gs = (G + G.T) / 2
    starts = np.concatenate([[0], np.cumsum(sizes)])
    A = np.zeros((0, G.shape[0])) if A is None else np.asarray(A, np.float64).reshape(-1, G.shape[0])
    b = np.zeros(0) if b is None else np.asarray(b, np.float64).reshape(-1)
    slack = 1e-9 * np.array([sum(np.abs(A[r, starts[k] : starts[k + 1]]).max() for k in range(len(sizes)))
                             for r in range(A.shape[0])])
    best, best_c = np.inf, None
    for c in itertools.product(*[range(s) for s in sizes]):
        idx = starts[:-1] + np.array(c)
        if np.any(A[:, idx].sum(axis=1) > b + slack):
            continue
        v = Gs[np.ix_(idx, idx)].sum()
        if v < best:
            best, best_c = v, np.array(c, np.int32)
    if best_c is None:
        return np.full(len(sizes), -1, np.int32), {"status": "infeasible", "objective": np.inf}
    return best_c, {"status": "optimal", "objective": float(best)}


def project_psd(G):
    Gs = (np.asarray(G, np.float64) + np.asarray(G, np.float64).T) / 2
    lam, V = np.linalg.eigh(Gs)
    out = (V * np.maximum(lam, 0)) @ V.T
    return ((out + out.T) / 2).astype(np.float32), float(-lam[lam < 0].sum())


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

# --- pack / qmatmul: packed low-bit weights (pack.h, qmatmul.h) ---------------------------

_BLOCK_COLS = {2: 16, 3: 16, 4: 8, 8: 4}
_BLOCK_BYTES = {2: 64, 3: 96, 4: 64, 8: 64}


def packed_layout(bits, rows, cols, group_size=0):
    """The sizes pack.h's PackedShape gives (no checks beyond the basic ones)."""
    kb = _BLOCK_COLS[bits]
    kp = cols if group_size else -(-cols // kb) * kb
    groups = cols // group_size if group_size else 1
    tiles = -(-rows // 16)
    tile_bytes = kp // kb * _BLOCK_BYTES[bits]
    return {"padded_cols": kp, "groups": groups, "group_cols": group_size or kp, "tiles": tiles,
            "tile_bytes": tile_bytes, "code_bytes": tiles * tile_bytes}


def _per_row(p, rows):
    p = np.asarray(p, np.float32)
    p = p.reshape(p.shape[0] if p.ndim else 1, -1)
    return np.broadcast_to(p, (rows, p.shape[1]))


def pack_weights(q, scale, zero, bits, group_size=0):
    """(codes, scales, zeros) exactly as pack.h lays them out."""
    q = np.asarray(q, np.uint8)
    N, K = q.shape
    lay = packed_layout(bits, N, K, group_size)
    kp, G, T = lay["padded_cols"], lay["groups"], lay["tiles"]
    s, z = _per_row(scale, N), _per_row(zero, N)
    Q = np.zeros((T * 16, kp), np.uint8)
    Q[:N, :K] = q
    Q[:N, K:] = z[:, :1].astype(np.uint8)  # per-channel padding columns hold the zero point
    kb = _BLOCK_COLS[bits]
    B = Q.reshape(T, 16, kp // kb, kb).transpose(0, 2, 1, 3)  # (tile, block, row, col in block)
    parts = [B[..., 4 * i : 4 * i + 4] for i in range(kb // 4)]  # (.., 16, 4): byte 4r + j
    if bits == 8:
        low = parts[0]
    elif bits == 4:
        low = parts[0] | (parts[1] << 4)
    else:
        low = sum(((p & 3) << (2 * i)).astype(np.uint8) for i, p in enumerate(parts)).astype(np.uint8)
    blocks = [low.reshape(T, kp // kb, 64)]
    if bits == 3:
        for p in parts:
            bitsv = ((p >> 2) & 1).reshape(T, kp // kb, 64)
            blocks.append(np.packbits(bitsv, axis=-1, bitorder="little"))
    codes = np.concatenate(blocks, axis=-1).reshape(-1)
    S = np.zeros((T * 16, G), np.float32)
    Z = np.zeros((T * 16, G), np.uint8)
    S[:N], Z[:N] = s, z.astype(np.uint8)
    return (np.ascontiguousarray(codes), np.ascontiguousarray(S.reshape(T, 16, G).transpose(0, 2, 1)),
            np.ascontiguousarray(Z.reshape(T, 16, G).transpose(0, 2, 1)))


def unpack_weights(codes, scales, zeros, bits, rows, cols, group_size=0):
    """(q uint8 (rows, cols), scale (rows, G), zero (rows, G)) read back from the three arrays."""
    lay = packed_layout(bits, rows, cols, group_size)
    kp, G, T = lay["padded_cols"], lay["groups"], lay["tiles"]
    kb, bb = _BLOCK_COLS[bits], _BLOCK_BYTES[bits]
    blk = np.asarray(codes, np.uint8).reshape(T, kp // kb, bb)
    low = blk[..., :64].reshape(T, kp // kb, 16, 4)
    parts: list[np.ndarray]
    if bits == 8:
        parts = [low]
    elif bits == 4:
        parts = [low & 15, low >> 4]
    else:
        parts = [(low >> (2 * i)) & 3 for i in range(4)]
        if bits == 3:
            for i in range(4):
                hi = np.unpackbits(blk[..., 64 + 8 * i : 72 + 8 * i], axis=-1, bitorder="little")
                parts[i] = parts[i] | (hi.reshape(T, kp // kb, 16, 4) << 2)
    B = np.concatenate(parts, axis=-1)  # (tile, block, row, col in block)
    Q = B.transpose(0, 2, 1, 3).reshape(T * 16, kp)
    S = np.asarray(scales, np.float32).transpose(0, 2, 1).reshape(T * 16, G)
    Z = np.asarray(zeros, np.uint8).transpose(0, 2, 1).reshape(T * 16, G)
    return Q[:rows, :cols].copy(), S[:rows].copy(), Z[:rows].astype(np.float32)


def _dequant_packed(codes, scales, zeros, bits, rows, cols, group_size):
    q, s, z = unpack_weights(codes, scales, zeros, bits, rows, cols, group_size)
    G = s.shape[1]
    rep = cols // G if group_size else cols
    return (q.astype(np.float64) - np.repeat(z, rep, axis=1)) * np.repeat(s, rep, axis=1).astype(np.float64)


def qmatmul(codes, scales, zeros, bits, rows, cols, group_size, x, bias=None):
    """float64 x W^T + bias with W the packed matrix's (q - z) * s."""
    W = _dequant_packed(codes, scales, zeros, bits, rows, cols, group_size)
    y = np.asarray(x, np.float64).reshape(-1, cols) @ W.T
    return y if bias is None else y + np.asarray(bias, np.float64)


def quantize_activations(x, act=None):
    """(a int64 (M, K) integer activation values, sx float32 (M,)) as the int8 path makes them:
    act None = per-row symmetric int8; (scale, zero, bits) = the per-tensor quantizer."""
    x = np.asarray(x, np.float32)
    if act is None:
        amax = np.abs(x).max(axis=1)
        sx = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
        a = np.clip(np.round(x / sx[:, None]), -127, 127).astype(np.int64)
        return a, sx
    s, z, b = np.float32(act[0]), np.float32(act[1]), int(act[2])
    c = np.clip(np.round(x / s) + z, 0, 2**b - 1)
    return (c - z).astype(np.int64), np.full(x.shape[0], s, np.float32)


def qmatmul_a8(codes, scales, zeros, bits, rows, cols, group_size, x, act=None, bias=None):
    """float64 result of the int8 path: sx * sum_g s_g * (exact integer sum over the group)."""
    q, s, z = unpack_weights(codes, scales, zeros, bits, rows, cols, group_size)
    a, sx = quantize_activations(np.asarray(x, np.float32).reshape(-1, cols), act)
    G = s.shape[1]
    gc = cols // G
    y = np.zeros((a.shape[0], rows))
    for g in range(G):
        wg = q[:, g * gc : (g + 1) * gc].astype(np.int64) - z[:, g : g + 1].astype(np.int64)
        y += (a[:, g * gc : (g + 1) * gc] @ wg.T).astype(np.float64) * s[:, g].astype(np.float64)
    y *= sx[:, None].astype(np.float64)
    return y if bias is None else y + np.asarray(bias, np.float64)


def packed_row_sums(codes, scales, zeros, bits, rows, cols, group_size):
    q, s, z = unpack_weights(codes, scales, zeros, bits, rows, cols, group_size)
    G = s.shape[1]
    gc = cols // G
    c = (q.astype(np.int64).reshape(rows, G, gc) - z.astype(np.int64)[:, :, None]).sum(axis=2)
    return (c * s.astype(np.float64)).sum(axis=1)


# --- threshold: AQuant borders and N2UQ's LTQ ----------------------------------------------
# x is (rows, inner) with row r in channel r % C. NumPy twins of the forward passes (same
# float32 operations in the same order as the C++), PyTorch autograd twins of the backward.


def border_table(param, bits, *, affine, eps):
    p = np.asarray(param, np.float32)
    n = 2**bits - 1
    if affine:
        k = (np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n)
        pre = np.float32(0.5) + (p[:, :1] * k + p[:, 1:2])
    else:
        pre = np.float32(0.5) + p
    return np.clip(pre, np.float32(eps), np.float32(1) - np.float32(eps)).astype(np.float32)


def _rows_channel(rows, C):
    return np.arange(rows) % C


def border_quant_forward(x, B, bits, *, scale, zero, tau, hard):
    x = np.asarray(x, np.float32)
    B = np.asarray(B, np.float32)
    qmax = np.float32(2**bits - 1)
    s, z = np.float32(scale), np.float32(zero)
    v = x / s + z
    inside = (v >= 0) & (v < qmax)
    kf = np.floor(np.where(inside, v, 0)).astype(np.float32)
    f = np.where(inside, v, 0) - kf
    b = B[_rows_channel(x.shape[0], B.shape[0])[:, None], kf.astype(np.int64)]
    if hard:
        qin = kf + (f >= b).astype(np.float32)
    else:
        t = (f - b) * (np.float32(1) / np.float32(tau))
        qin = kf + np.float32(1) / (np.float32(1) + np.exp(-t))
    q = np.where(v >= qmax, qmax, np.where(inside, qin, np.float32(0))).astype(np.float32)
    return (s * (q - z)).astype(np.float32)


def ltq_tables(start, a, in_scale, bits, *, a_min, s1_min):
    """Floored a (C, n), floored in_scale (C,), segment ends D (C, n+1), thresholds T (C, n)."""
    n = 2**bits - 1
    a_e = np.maximum(np.asarray(a, np.float32), np.float32(a_min))
    s1 = np.maximum(np.asarray(in_scale, np.float32), np.float32(s1_min))
    C = a_e.shape[0]
    D = np.empty((C, n + 1), np.float32)
    T = np.empty((C, n), np.float32)
    D[:, 0] = np.asarray(start, np.float32)
    for i in range(n):
        T[:, i] = D[:, i] + a_e[:, i] * np.float32(0.5)
        D[:, i + 1] = D[:, i] + a_e[:, i]
    return a_e, s1, D, T


def ltq_thresholds(start, a, in_scale, bits, *, a_min, s1_min):
    _, s1, _, T = ltq_tables(start, a, in_scale, bits, a_min=a_min, s1_min=s1_min)
    return (T / s1[:, None]).astype(np.float32)


def ltq_forward(x, start, a, in_scale, bits, *, out_scale, zero, a_min, s1_min):
    x = np.asarray(x, np.float32)
    _, s1, _, T = ltq_tables(start, a, in_scale, bits, a_min=a_min, s1_min=s1_min)
    ch = _rows_channel(x.shape[0], T.shape[0])
    u = s1[ch][:, None] * x
    code = (u[..., None] >= T[ch][:, None, :]).sum(-1).astype(np.float32)
    return (np.float32(out_scale) * (code - np.float32(zero))).astype(np.float32)


def threshold_quantize(x, thresholds, bits):
    x = np.asarray(x, np.float32)
    t = np.asarray(thresholds, np.float32)
    ch = _rows_channel(x.shape[0], t.shape[0])
    return (x[..., None] >= t[ch][:, None, :]).sum(-1).astype(np.uint8)


def _one_sided_clamp(pre, lo, hi):
    """clamp(pre, lo, hi); a clamped entry passes only a gradient that moves it back inside."""
    import torch

    class OneSidedClamp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p):
            ctx.save_for_backward(p)
            return p.clamp(lo, hi)

        @staticmethod
        def backward(ctx, g):
            (p,) = ctx.saved_tensors
            block = ((p < lo) & (g > 0)) | ((p > hi) & (g < 0))
            return torch.where(block, torch.zeros_like(g), g)

    return OneSidedClamp.apply(pre)


def border_table_torch(param, bits, *, affine, eps):
    """Differentiable twin of border_table (torch tensors)."""
    import torch

    n = 2**bits - 1
    if affine:
        k = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        pre = 0.5 + (param[:, :1] * k + param[:, 1:2])
    else:
        pre = 0.5 + param
    return _one_sided_clamp(pre, eps, 1.0 - eps)


def border_quant_torch(x, B, scale, bits, *, zero, tau, hard):
    """Autograd twin of border_quant_forward/backward: STE (LSQ rule) for x and scale, the
    sigmoid's derivative for B (in hard mode too). x (rows, inner), B (C, n), scale 1-element."""
    import torch

    qmax = float(2**bits - 1)
    v = x / scale + zero
    vd = v.detach()
    inside = (vd >= 0) & (vd < qmax)
    kf = torch.floor(torch.where(inside, vd, torch.zeros_like(vd)))
    f = torch.where(inside, vd, torch.zeros_like(vd)) - kf
    ch = torch.arange(x.shape[0]) % B.shape[0]
    b = B[ch[:, None], kf.long()]
    h = torch.sigmoid((f - b) / tau)
    step = ((f >= b).float() + h - h.detach()) if hard else h
    qin = kf + step + (v - vd)
    q = torch.where(vd >= qmax, torch.full_like(vd, qmax), torch.where(inside, qin, torch.zeros_like(vd)))
    return scale * (q - zero)


def ltq_torch(x, start, a, in_scale, out_scale, bits, *, zero, a_min, s1_min):
    """Autograd twin of ltq_forward/ltq_backward: hard forward, gradient of the G-STE
    surrogate. x (rows, inner), start (C,), a (C, n), in_scale (C,), out_scale 1-element."""
    import torch

    n = 2**bits - 1
    a_e = torch.clamp(a, min=a_min)
    s1 = torch.clamp(in_scale, min=s1_min)
    ds = [start]
    for i in range(n):
        ds.append(ds[-1] + a_e[:, i])
    D = torch.stack(ds, 1)
    T = D[:, :-1] + a_e * 0.5
    ch = torch.arange(x.shape[0]) % start.shape[0]
    u = s1[ch][:, None] * x
    ud = u.detach()
    code = (ud[..., None] >= T.detach()[ch][:, None, :]).sum(-1).float()
    j = (ud[..., None] >= D.detach()[ch][:, None, :]).sum(-1)
    inside = (j >= 1) & (j <= n)
    seg = (j - 1).clamp(0, n - 1)
    rows = ch[:, None].expand_as(seg)
    g = seg.float() + (u - D[rows, seg]) / a_e[rows, seg]
    g = torch.where(inside, g, torch.zeros_like(g))
    return out_scale * ((g - g.detach()) + code - zero)


def expected_stochastic_ltq(x, start, a, in_scale, out_scale, bits, *, zero, a_min, s1_min):
    """float64 expectation of N2UQ's stochastic rounding: inside segment i = [d_{i-1}, d_i) the
    output is level i with probability (u - d_{i-1}) / a_i and level i - 1 otherwise; below d_0
    level 0, at or above d_n level n. Written from the probabilities, not the surrogate."""
    x = np.asarray(x, np.float64)
    n = 2**bits - 1
    a_e = np.maximum(np.asarray(a, np.float64), a_min)
    s1 = np.maximum(np.asarray(in_scale, np.float64), s1_min)
    C = a_e.shape[0]
    ch = _rows_channel(x.shape[0], C)
    D = np.concatenate([np.asarray(start, np.float64)[:, None],
                        np.asarray(start, np.float64)[:, None] + np.cumsum(a_e, 1)], 1)
    u = s1[ch][:, None] * x
    expect = np.zeros_like(u)
    for lev in range(n + 1):  # E = sum_l l * P(l)
        p = np.zeros_like(u)
        if lev == 0:
            p += u < D[ch, 0][:, None]
        if lev == n:
            p += u >= D[ch, n][:, None]
        if lev >= 1:  # segment lev, rounded up
            lo, hi = D[ch, lev - 1][:, None], D[ch, lev][:, None]
            m = (u >= lo) & (u < hi)
            p += m * (u - lo) / (hi - lo)
        if lev <= n - 1:  # segment lev + 1, rounded down
            lo, hi = D[ch, lev][:, None], D[ch, lev + 1][:, None]
            m = (u >= lo) & (u < hi)
            p += m * (1 - (u - lo) / (hi - lo))
        expect += lev * p
    return float(out_scale) * (expect - zero)


# --- lp_error ------------------------------------------------------------------------------


def lp_error(x, scale, zero, bits, p=2.4):
    """sum |x - fake_quantize(x)|^p in float64 (the quantity lp_range_search minimises)."""
    x = np.asarray(x, np.float32).reshape(1, -1)
    s, z = np.float32(scale), np.float32(zero)
    err = np.abs(x - fake_quantize(x, s, z, bits)).astype(np.float64)
    return float(np.sum(err**p))


# --- rounding (AdaRound) -------------------------------------------------------------------
# Float64 twins of rounding.h. Schedules are dicts with the RoundingSchedule field names.

ZETA, GAMMA = 1.1, -0.1


def rounding_beta(sched, t):
    t0 = sched["warmup"] * sched["iters"]
    if t < t0:
        return sched["beta_start"]
    rel = (t - t0) / max(1.0, sched["iters"] - t0)
    return sched["beta_end"] + (sched["beta_start"] - sched["beta_end"]) * max(0.0, 1.0 - rel)


def rounding_reg_on(sched, t):
    return t >= sched["warmup"] * sched["iters"]


def _grid_full(W, scale, zero):
    W = np.asarray(W, np.float32)
    s = _expand(np.asarray(scale, np.float32), *W.shape).astype(np.float64)
    z = _expand(np.asarray(zero, np.float32), *W.shape).astype(np.float64)
    return W, s, z


def _floor_ws(W, s, z):
    # floor(W / s + zf) + zi in float32, as the C++ computes it: zf = z - floor(z) is 0 for integer
    # zero points and 1/2 on mid-rise grids (N2UQ), zi = z - zf
    zf = z - np.floor(z)
    x = (W / s.astype(np.float32)).astype(np.float32) + zf.astype(np.float32)
    return np.floor(x).astype(np.float64) + (z - zf)


def rounding_init(W, scale, zero, bits):
    W, s, z = _grid_full(W, scale, zero)
    x = W.astype(np.float64) / s + (z - np.floor(z))
    frac = x - np.floor(x)
    return -np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def rounding_soft_weight(W, scale, zero, bits, V):
    """(W~, h, dW~/dV) in float64."""
    W, s, z = _grid_full(W, scale, zero)
    sig = 1.0 / (1.0 + np.exp(-np.asarray(V, np.float64)))
    hraw = sig * (ZETA - GAMMA) + GAMMA
    h = np.clip(hraw, 0.0, 1.0)
    q = _floor_ws(W, s, z) + h
    qmax = 2**bits - 1
    Wt = s * (np.clip(q, 0, qmax) - z)
    dh = np.where((hraw >= 0) & (hraw <= 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
    dWt = np.where((q >= 0) & (q <= qmax), s, 0.0) * dh
    return Wt, h, dWt


def rounding_hard_codes(W, scale, zero, bits, V):
    W, s, z = _grid_full(W, scale, zero)
    q = _floor_ws(W, s, z) + (np.asarray(V) >= 0)
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def rounding_apply_grad(W, scale, zero, bits, V, m, v, grad, t, sched):
    """One step; returns new (V, m, v, reg_loss, soft_frac) (float64)."""
    W, s, z = _grid_full(W, scale, zero)
    Wt, h, dWt = rounding_soft_weight(W, scale, zero, bits, V)
    sig = 1.0 / (1.0 + np.exp(-np.asarray(V, np.float64)))
    hraw = sig * (ZETA - GAMMA) + GAMMA
    dh = np.where((hraw >= 0) & (hraw <= 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
    q = _floor_ws(W, s, z) + h
    gh = np.where((q >= 0) & (q <= 2**bits - 1), np.asarray(grad, np.float64) * s, 0.0)
    reg = 0.0
    if rounding_reg_on(sched, t):
        beta, lam = rounding_beta(sched, t), sched["reg_lambda"]
        u = 2 * h - 1
        reg = lam * float(np.sum(1 - np.abs(u) ** beta))
        gh = gh - lam * beta * np.abs(u) ** (beta - 1) * np.sign(u) * 2
    gv = gh * dh
    b1, b2 = sched["adam_beta1"], sched["adam_beta2"]
    m = b1 * np.asarray(m, np.float64) + (1 - b1) * gv
    v = b2 * np.asarray(v, np.float64) + (1 - b2) * gv * gv
    mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
    V = np.asarray(V, np.float64) - sched["lr"] * mhat / (np.sqrt(vhat) + sched["adam_eps"])
    soft = float(np.mean((h > 0.01) & (h < 0.99)))
    return V, m, v, reg, soft


def rounding_gram_loss_grad(W, Wt, H, C, c0, n, groups=1):
    """Gram objective: ((tr(W~HW~^T) - 2 tr(W~ C^T W^T) + c0) / n, 2 (W~H - W C^T) / n)."""
    W = np.asarray(W, np.float64)
    Wt = np.asarray(Wt, np.float64)
    o, d = W.shape
    og = o // groups
    H = np.asarray(H, np.float64).reshape(groups, d, d)
    C = np.asarray(C, np.float64).reshape(groups, d, d)
    loss, grad = c0, np.empty_like(Wt)
    for g in range(groups):
        sl = slice(g * og, (g + 1) * og)
        WH, P = Wt[sl] @ H[g], W[sl] @ C[g].T
        loss += np.sum(Wt[sl] * WH) - 2 * np.sum(Wt[sl] * P)
        grad[sl] = 2 * (WH - P) / n
    return loss / n, grad


def _splitmix64(x):
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return x, z ^ (z >> 31)


def rounding_sample_batch(seed, t, n, k):
    perm = list(range(n))
    x = (seed ^ (t * 0xD1B54A32D192ED03)) & ((1 << 64) - 1)
    out = []
    for i in range(k):
        x, r = _splitmix64(x)
        j = i + r % (n - i)
        perm[i], perm[j] = perm[j], perm[i]
        out.append(perm[i])
    return np.array(out, np.int64)


def rounding_rows(X, conv=None, groups=1):
    """Per-group row matrices (N*P, d) of Linear X (N, P, d) or conv input X (N, C, H, W)."""
    X = np.asarray(X, np.float64)
    if conv is None:
        return [X.reshape(-1, X.shape[-1])]
    return im2col(X, conv["kernel_size"], conv["stride"], conv["padding"], conv["dilation"], groups)


def rounding_rows_loss_grad(Wt, X, Y, *, bias=None, conv=None, relu=False, batch=32, seed=0,
                            step=0, groups=1):
    """Rows objective on the minibatch of `step` (see rounding.h)."""
    Wt = np.asarray(Wt, np.float64)
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    N = X.shape[0]
    idx = np.arange(N) if batch >= N else rounding_sample_batch(seed, step, N, batch)
    Xb, Yb = X[idx], Y[idx]
    o = Wt.shape[0]
    og = o // groups
    # targets as (rows, o) in the rows' order (sample, position)
    Yr = Yb.reshape(len(idx), o, -1).transpose(0, 2, 1).reshape(-1, o) if conv else Yb.reshape(-1, o)
    rows = rounding_rows(Xb, conv, groups)
    loss, grad = 0.0, np.empty_like(Wt)
    for g in range(groups):
        sl = slice(g * og, (g + 1) * og)
        pre = rows[g] @ Wt[sl].T + (0 if bias is None else np.asarray(bias, np.float64)[sl])
        act = np.maximum(pre, 0) if relu else pre
        R = act - Yr[:, sl]
        loss += np.sum(R * R)
        if relu:
            R = R * (pre > 0)
        grad[sl] = 2 * R.T @ rows[g] / Yr.shape[0]
    return loss / Yr.shape[0], grad
