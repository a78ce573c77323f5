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
