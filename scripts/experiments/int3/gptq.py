"""GPTQ with group-wise (32) asymmetric int3 and the refined calibrated group fit."""
import numpy as np
from quant import fit_groups, GS
from quant_nu import fit_groups_nu, _assign


def gptq(W, X, imp, damp=0.1, bits=3, block=128, wmode_imp=True, lev=None, damp_mode="mean"):
    """W (R, C) f32; X (T, C) calibration inputs; imp (C,) column importance (for the group fit).
    damp: lambda as a fraction of mean(diag H). Returns dequantised (R, C) f32."""
    R, C = W.shape
    hi = np.float32((1 << bits) - 1)
    X = X.astype(np.float64)
    H = X.T @ X
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    if damp_mode == "mean":
        H += damp * np.mean(np.diag(H)) * np.eye(C)
    else:                                   # diagonal-proportional: H + damp * diag(H)
        H += damp * np.diag(np.diag(H))
    Hinv = np.linalg.inv(H)
    Hinv = (Hinv + Hinv.T) / 2
    U = np.linalg.cholesky(Hinv).T            # upper, Hinv = U^T U
    Wc = W.astype(np.float64).copy()
    Wc[:, dead] = 0
    Qout = np.zeros((R, C), np.float32)
    for i1 in range(0, C, block):
        i2 = min(i1 + block, C)
        W1 = Wc[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % GS == 0:
                g = W1[:, i:i + GS].astype(np.float32)[:, None, :]
                w = imp[col:col + GS][None, None, :] if wmode_imp else np.ones((1, 1, GS), np.float32)
                if lev is None:
                    d, m, _ = fit_groups(g, w, bits)
                else:
                    d, m, _, _ = fit_groups_nu(g, w, lev)    # here d is the span 7d
                d = d[:, 0, 0].astype(np.float64); m = m[:, 0, 0].astype(np.float64)
                ds = np.where(d == 0, 1.0, d)
            w = W1[:, i]
            if lev is not None:
                qi, _ = _assign(w.astype(np.float32), d.astype(np.float32), m.astype(np.float32), lev)
                qv = (lev[qi] * d.astype(np.float32) + m.astype(np.float32))
                Qout[:, col] = qv
                err = (w - qv) / U1[i, i]
                W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
                E1[:, i] = err
                continue
            # codes against f16 d, m (f32 arithmetic as the format)
            q = np.clip(np.rint(((w.astype(np.float32) - m.astype(np.float32)) / ds.astype(np.float32))), 0, hi)
            q = np.where(d == 0, 0, q)
            qv = (q.astype(np.float32) * d.astype(np.float32) + m.astype(np.float32))
            Qout[:, col] = qv
            err = (w - qv) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        Wc[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Qout
