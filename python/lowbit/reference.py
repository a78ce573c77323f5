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


def _floor_ws(W, s):
    # floor of the float32 quotient, as the C++ computes it
    return np.floor(W / s.astype(np.float32)).astype(np.float64)


def rounding_init(W, scale, zero, bits):
    W, s, z = _grid_full(W, scale, zero)
    x = W.astype(np.float64) / s
    frac = x - np.floor(x)
    return -np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def rounding_soft_weight(W, scale, zero, bits, V):
    """(W~, h, dW~/dV) in float64."""
    W, s, z = _grid_full(W, scale, zero)
    sig = 1.0 / (1.0 + np.exp(-np.asarray(V, np.float64)))
    hraw = sig * (ZETA - GAMMA) + GAMMA
    h = np.clip(hraw, 0.0, 1.0)
    q = _floor_ws(W, s) + h + z
    qmax = 2**bits - 1
    Wt = s * (np.clip(q, 0, qmax) - z)
    dh = np.where((hraw >= 0) & (hraw <= 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
    dWt = np.where((q >= 0) & (q <= qmax), s, 0.0) * dh
    return Wt, h, dWt


def rounding_hard_codes(W, scale, zero, bits, V):
    W, s, z = _grid_full(W, scale, zero)
    q = _floor_ws(W, s) + (np.asarray(V) >= 0) + z
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def rounding_apply_grad(W, scale, zero, bits, V, m, v, grad, t, sched):
    """One step; returns new (V, m, v, reg_loss, soft_frac) (float64)."""
    W, s, z = _grid_full(W, scale, zero)
    Wt, h, dWt = rounding_soft_weight(W, scale, zero, bits, V)
    sig = 1.0 / (1.0 + np.exp(-np.asarray(V, np.float64)))
    hraw = sig * (ZETA - GAMMA) + GAMMA
    dh = np.where((hraw >= 0) & (hraw <= 1), sig * (1 - sig) * (ZETA - GAMMA), 0.0)
    q = _floor_ws(W, s) + h + z
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
