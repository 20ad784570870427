"""int3 with a few weights kept outside the groups (session 20).

usage: python3 outlier.py MODE K [gptq:DAMP] [int8]
  MODE col: the K input columns of each matrix with the largest calibrated E[x_j^2]
            (activation outliers) are kept for every row.
  MODE row: in each row, the K weights with the largest imp_j * err^2 after the group fit
            (SpQR-style weight outliers) are kept.
  The kept weights are stored at f16 (or, with `int8`, one int8 per weight with an f16 scale
  per kept column/row) and excluded from the group fit: they get error weight 0 and do not
  set the group's starting range. gptq:DAMP runs GPTQ (damping DAMP x mean diag H) with the
  kept weights stored as they stand when their column comes up (zero error, no update).
"""
import sys, time
import numpy as np
from exp import *
from quant import fit_groups, GS

F16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def masked_fit(g, w, keep):
    """g (R, G, GS) f32, w broadcastable weights, keep (R, G, GS) bool. Kept entries are
    replaced by their group's mean of the others and weighted 0 so they do not steer the fit."""
    w = np.broadcast_to(w, g.shape).astype(np.float32) * (~keep)
    cnt = np.maximum((~keep).sum(-1, keepdims=True), 1)
    mean = (g * (~keep)).sum(-1, keepdims=True) / cnt
    g2 = np.where(keep, mean, g).astype(np.float32)
    return fit_groups(g2, w)


def kept_values(v, int8):
    """v: the kept weights of one column (R,). f16, or int8 with one f16 scale for the column."""
    if not int8:
        return F16(v)
    s = F16(np.max(np.abs(v)) / 127.0) if v.size else np.float32(0)
    if s == 0:
        return np.zeros_like(v, dtype=np.float32)
    return (np.clip(np.rint(v / s), -127, 127) * s).astype(np.float32)


def choose_row_outliers(Wm, imp, k):
    R, C = Wm.shape
    g = Wm.reshape(R, C // GS, GS)
    w = imp.reshape(1, C // GS, GS)
    d, m, q = fit_groups(g, w)
    err = ((q * d + m) - g).reshape(R, C)
    score = imp[None, :] * err * err
    idx = np.argsort(-score, axis=1)[:, :k]
    keep = np.zeros((R, C), bool)
    np.put_along_axis(keep, idx, True, axis=1)
    return keep


def quant_plain(Wm, imp, keep, int8):
    R, C = Wm.shape
    g = Wm.reshape(R, C // GS, GS)
    kg = keep.reshape(R, C // GS, GS)
    d, m, q = masked_fit(g, imp.reshape(1, C // GS, GS), kg)
    out = (q * d + m).reshape(R, C).astype(np.float32)
    for c in np.nonzero(keep.any(0))[0]:
        r = keep[:, c]
        out[r, c] = kept_values(Wm[r, c], int8)
    return out


def quant_gptq(Wm, X, imp, keep, damp, int8):
    R, C = Wm.shape
    X = X.astype(np.float64)
    H = X.T @ X
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    H += damp * np.mean(np.diag(H)) * np.eye(C)
    Hinv = np.linalg.inv(H)
    Hinv = (Hinv + Hinv.T) / 2
    U = np.linalg.cholesky(Hinv).T
    Wc = Wm.astype(np.float64).copy()
    Wc[:, dead] = 0
    out = np.zeros((R, C), np.float32)
    for c in range(C):
        if c % GS == 0:
            g = Wc[:, c:c + GS].astype(np.float32)[:, None, :]
            kg = keep[:, c:c + GS][:, None, :]
            d, m, _ = masked_fit(g, imp[c:c + GS][None, None, :], kg)
            d = d[:, 0, 0]; m = m[:, 0, 0]
            ds = np.where(d == 0, np.float32(1), d)
        w = Wc[:, c]
        q = np.clip(np.rint((w.astype(np.float32) - m) / ds), 0, 7)
        q = np.where(d == 0, 0, q)
        qv = (q * d + m).astype(np.float64)
        kc = keep[:, c]
        if kc.any():
            qv[kc] = kept_values(w[kc], int8)
        err = (w - qv) / U[c, c]
        Wc[:, c:] -= err[:, None] * U[c, c:][None, :]
        out[:, c] = qv
    return out


def main():
    mode, k = sys.argv[1], int(sys.argv[2])
    damp = None
    int8 = "int8" in sys.argv[3:]
    for a in sys.argv[3:]:
        if a.startswith("gptq:"):
            damp = float(a[5:])
    t = time.time()
    rec = calib_inputs(hp, BASE, fields)
    imp, _ = importance(hp, BASE, fields)
    q = dict(BASE); q["layers"] = []
    extra_bits = []
    for li, L in enumerate(BASE["layers"]):
        L2 = dict(L)
        for key in MATS:
            Wm = L[key]
            R, C = Wm.shape
            im = imp[li][IMP_KEY[key]]
            if mode == "col":
                cols = np.argsort(-im)[:k]
                keep = np.zeros((R, C), bool)
                keep[:, cols] = True
                extra_bits.append((R * C, R * k * (8 if int8 else 16) + k * 32))
            else:
                keep = choose_row_outliers(Wm, im, k) if k else np.zeros((R, C), bool)
                extra_bits.append((R * C, R * k * 32))
            if damp is None:
                L2[key] = quant_plain(Wm, im, keep, int8)
            else:
                L2[key] = quant_gptq(Wm, rec[li][IMP_KEY[key]], im, keep, damp, int8)
        q["layers"].append(L2)
    n = sum(a for a, _ in extra_bits); b = sum(b for _, b in extra_bits)
    r = evaluate(hp, q, fields)
    name = f"outliers {mode} k={k}" + (f", GPTQ damp={damp}" if damp is not None else ", refined calib") + (", int8 kept" if int8 else ", f16 kept")
    log(name, r, f"+{b / n:.3f} bits/weight", {"secs": round(time.time() - t, 1)})


if __name__ == "__main__":
    main()
