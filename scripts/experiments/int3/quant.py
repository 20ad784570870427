"""Vectorised group quantiser mirroring src/quant/fit.rs (asymmetric, f32 arithmetic)."""
import numpy as np

GS = 32


def _code(x, d, m, hi):
    safe = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint((x - m) / safe), 0, hi)
    return np.where(d == 0, np.float32(0), q).astype(np.float32)


def fit_groups(xg, w, bits=3, starts=4, iters=6):
    """xg: (..., GS) f32 groups; w: broadcastable error weights (or None -> mean|x|+|x|).
    Returns (d, m) f16-rounded as f32 with shape (..., 1), and codes."""
    hi = np.float32((1 << bits) - 1)
    xg = xg.astype(np.float32)
    if w is None:
        w = np.abs(xg).mean(axis=-1, keepdims=True) + np.abs(xg)
    w = np.broadcast_to(np.asarray(w, np.float32), xg.shape)
    mn = xg.min(axis=-1, keepdims=True)
    mx = xg.max(axis=-1, keepdims=True)
    bd = np.zeros_like(mn); bm = np.zeros_like(mn); be = np.full_like(mn, np.inf)
    sw = w.sum(axis=-1, keepdims=True)
    swx = (w * xg).sum(axis=-1, keepdims=True)
    for s in range(starts):
        sh = np.float32(1.0 - 0.1 * s)
        d = (mx - mn) * sh / hi
        m = mn + (mx - mn) * (np.float32(1) - sh) * np.float32(0.5)
        active = np.ones(mn.shape, bool)
        for it in range(iters + 1):
            q = _code(xg, d, m, hi)
            e = q * d + m - xg
            err = (w * e * e).sum(axis=-1, keepdims=True)
            better = active & (err < be)
            bd = np.where(better, d, bd); bm = np.where(better, m, bm); be = np.where(better, err, be)
            if it == iters:
                break
            wq = w * q
            swq = wq.sum(axis=-1, keepdims=True)
            swqq = (wq * q).sum(axis=-1, keepdims=True)
            swqx = (wq * xg).sum(axis=-1, keepdims=True)
            det = sw * swq.dtype.type(1) * swqq - swq * swq
            ok = active & (det > 0)
            dets = np.where(ok, det, np.float32(1))
            nd = (sw * swqx - swq * swx) / dets
            nm = (swx - nd * swq) / np.where(ok, sw, np.float32(1))
            d = np.where(ok, nd, d); m = np.where(ok, nm, m)
            active = ok
    d16 = bd.astype(np.float16).astype(np.float32)
    m16 = bm.astype(np.float16).astype(np.float32)
    q = _code(xg, d16, m16, hi)
    return d16, m16, q


def quantize(W, imp=None, bits=3, starts=4, iters=6):
    """W (R, C); imp (C,) column importance or None. Returns dequantised f32 (R, C)."""
    R, C = W.shape
    xg = W.reshape(R, C // GS, GS)
    w = None if imp is None else imp.reshape(1, C // GS, GS)
    d, m, q = fit_groups(xg, w, bits, starts, iters)
    return (q * d + m).reshape(R, C).astype(np.float32)


def rtn(W, bits=3):
    return quantize(W, None, bits, starts=1, iters=0)
