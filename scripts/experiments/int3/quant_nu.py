"""Non-uniform 3-bit grid: 8 levels in [0,1] shared per matrix, per-group (d, m):
x ~ level[q] * 7d + m. Group fit = the refined fit with level[q] in place of q/7;
levels learnt by weighted Lloyd iterations on group-normalised weights."""
import numpy as np
from quant import GS


def _assign(xg, s, m, lev):
    safe = np.where(s == 0, np.float32(1), s)
    u = (xg - m) / safe
    mids = (lev[1:] + lev[:-1]) / 2
    q = np.searchsorted(mids, u).astype(np.int64)   # nearest level (ties -> lower ... fine)
    q = np.where(s == 0, 0, q)
    return q, u


def fit_groups_nu(xg, w, lev, starts=4, iters=6):
    """Returns s (=7d) and m f16-rounded (7d: d rounded to f16 then *7), codes q (int)."""
    lev = lev.astype(np.float32)
    xg = xg.astype(np.float32)
    w = np.broadcast_to(np.asarray(w, np.float32), xg.shape)
    mn = xg.min(axis=-1, keepdims=True); mx = xg.max(axis=-1, keepdims=True)
    bs = np.zeros_like(mn); bm = np.zeros_like(mn); be = np.full_like(mn, np.inf)
    sw = w.sum(axis=-1, keepdims=True); swx = (w * xg).sum(axis=-1, keepdims=True)
    for st in range(starts):
        sh = np.float32(1.0 - 0.1 * st)
        # level range [lev0, lev7] maps onto the shrunk [min, max]
        span = np.float32(lev[-1] - lev[0])
        s = (mx - mn) * sh / span
        m = mn + (mx - mn) * (np.float32(1) - sh) * np.float32(0.5) - lev[0] * s
        active = np.ones(mn.shape, bool)
        for it in range(iters + 1):
            q, _ = _assign(xg, s, m, lev)
            L = lev[q]
            e = L * s + m - xg
            err = (w * e * e).sum(axis=-1, keepdims=True)
            better = active & (err < be)
            bs = np.where(better, s, bs); bm = np.where(better, m, bm); be = np.where(better, err, be)
            if it == iters:
                break
            wL = w * L
            swL = wL.sum(axis=-1, keepdims=True); swLL = (wL * L).sum(axis=-1, keepdims=True)
            swLx = (wL * xg).sum(axis=-1, keepdims=True)
            det = sw * swLL - swL * swL
            ok = active & (det > 0)
            ns = (sw * swLx - swL * swx) / np.where(ok, det, np.float32(1))
            nm = (swx - ns * swL) / np.where(ok, sw, np.float32(1))
            s = np.where(ok, ns, s); m = np.where(ok, nm, m)
            active = ok
    d16 = (bs / 7).astype(np.float16).astype(np.float32)
    s16 = d16 * 7
    m16 = bm.astype(np.float16).astype(np.float32)
    q, u = _assign(xg, s16, m16, lev)
    return s16, m16, q, u


def learn_levels(W, imp, rounds=6, init=None):
    R, C = W.shape
    xg = W.reshape(R, C // GS, GS)
    w = imp.reshape(1, C // GS, GS) if imp is not None else np.ones((1, C // GS, GS), np.float32)
    lev = np.arange(8, dtype=np.float32) / 7 if init is None else init.astype(np.float32)
    for r in range(rounds):
        s, m, q, u = fit_groups_nu(xg, w, lev)
        ww = np.broadcast_to(w, xg.shape) * (s * s)
        new = lev.copy()
        for k in range(8):
            sel = q == k
            tw = ww[sel].sum()
            if tw > 0:
                new[k] = (ww[sel] * u[sel]).sum() / tw
        # keep in [0,1]: renormalise so that level 0 -> 0, level 7 -> 1 (absorbed by s, m)
        new = np.sort(new)
        new = (new - new[0]) / (new[-1] - new[0])
        lev = new.astype(np.float32)
    return lev


def quantize_nu(W, imp, lev):
    R, C = W.shape
    xg = W.reshape(R, C // GS, GS)
    w = imp.reshape(1, C // GS, GS) if imp is not None else np.ones((1, C // GS, GS), np.float32)
    s, m, q, _ = fit_groups_nu(xg, w, lev)
    return (lev[q] * s + m).reshape(R, C).astype(np.float32)
