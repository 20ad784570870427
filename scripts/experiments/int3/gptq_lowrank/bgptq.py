"""Block-diagonal GPTQ for group-wise (32) asymmetric int3 with the refined calibrated group fit.

H = X^T X (float64, X = calibration inputs (T, C)). Only the diagonal blocks H[b, b] of B consecutive
input columns (aligned to the 32-column groups) are used; error feedback stays inside each block.
B = C reproduces full GPTQ (identical maths to ../gptq.py).

damp_mode: 'global' -> lambda = damp * mean(diag H) over the whole matrix
           'block'  -> lambda = damp * mean(diag H[b, b]) per block
order:     'plain'  -> columns in natural order inside each block
           'act'    -> descending diag(H) inside each block (stable sort)
groups:    'dynamic'-> a group's (d, m) is fitted (refined weighted LSQ, weights = imp) on the
                       *current* (error-updated) values of its 32 columns when the first of its
                       columns is reached in processing order
           'static' -> all groups' (d, m) fitted on the original weights before GPTQ
"""
import os
import sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from quant import fit_groups, GS


def bgptq(W, X, imp, B=128, damp=3.0, damp_mode="global", order="plain", groups="dynamic", bits=3,
          lam_global=None):
    R, C = W.shape
    if B is None or B >= C:
        B = C
    assert C % GS == 0 and B % GS == 0
    if lam_global is None and damp_mode == "global":
        dg = np.einsum("tc,tc->c", X.astype(np.float64), X.astype(np.float64))
        lam_global = damp * np.mean(np.where(dg == 0, 1.0, dg))
    if C % B != 0:                      # ragged last block (e.g. C=576, B=128 -> 4x128 + 64)
        c0 = (C // B) * B
        kw = dict(damp=damp, damp_mode=damp_mode, order=order, groups=groups, bits=bits, lam_global=lam_global)
        return np.concatenate([bgptq(W[:, :c0], X[:, :c0], imp[:c0], B=B, **kw),
                               bgptq(W[:, c0:], X[:, c0:], imp[c0:], B=C - c0, **kw)], axis=1)
    nb, ng = C // B, B // GS
    hi = np.float32((1 << bits) - 1)
    X = X.astype(np.float64)
    dH = np.einsum("tc,tc->c", X, X)
    dead = dH == 0
    Xb = X.reshape(X.shape[0], nb, B)
    Hb = np.einsum("tki,tkj->kij", Xb, Xb)                 # (nb, B, B)
    ar = np.arange(B)
    Hb[:, ar, ar] = np.where(dead.reshape(nb, B), 1.0, Hb[:, ar, ar])
    if damp_mode == "global":
        lam = lam_global * np.ones(nb)
    else:
        lam = damp * np.mean(Hb[:, ar, ar], axis=1)
    Hb[:, ar, ar] += lam[:, None]
    if order == "act":
        perm = np.argsort(-Hb[:, ar, ar], axis=1, kind="stable")   # (nb, B) block-local columns
    else:
        perm = np.broadcast_to(ar, (nb, B)).copy()
    invp = np.argsort(perm, axis=1)
    kk = np.arange(nb)[:, None]
    Hp = Hb[kk[:, :, None], perm[:, :, None], perm[:, None, :]]
    Hinv = np.linalg.inv(Hp)
    Hinv = (Hinv + np.transpose(Hinv, (0, 2, 1))) / 2
    U = np.transpose(np.linalg.cholesky(Hinv), (0, 2, 1))   # upper, Hinv = U^T U, (nb, B, B)

    W0 = W.astype(np.float64).copy()
    W0[:, dead] = 0
    W0 = W0.reshape(R, nb, B)
    impb = imp.reshape(nb, ng, GS).astype(np.float32)
    Wp = np.take_along_axis(W0, perm[None], axis=2)         # (R, nb, B) permuted
    dd = np.zeros((R, nb, ng), np.float32); mm = np.zeros((R, nb, ng), np.float32)
    fitted = np.zeros((nb, ng), bool)
    if groups == "static":
        d, m, _ = fit_groups(W0.reshape(R, nb * ng, GS).astype(np.float32),
                             impb.reshape(1, nb * ng, GS))
        dd[:] = d.reshape(R, nb, ng); mm[:] = m.reshape(R, nb, ng)
        fitted[:] = True
    grp = perm // GS                                          # group of each permuted position
    Qp = np.zeros((R, nb, B), np.float32)
    cols = np.arange(nb)
    for i in range(B):
        g = grp[:, i]
        need = ~fitted[cols, g]
        if need.any():
            ks = cols[need]; gs = g[need]
            pos = invp[ks[:, None], gs[:, None] * GS + np.arange(GS)[None, :]]   # (n, GS)
            vals = Wp[:, ks[:, None], pos].astype(np.float32)                   # (R, n, GS)
            d, m, _ = fit_groups(vals, impb[ks, gs][None])
            dd[:, ks, gs] = d[..., 0]; mm[:, ks, gs] = m[..., 0]
            fitted[ks, gs] = True
        d = dd[:, cols, g]; m = mm[:, cols, g]                                   # (R, nb)
        w = Wp[:, :, i]
        ds = np.where(d == 0, np.float32(1), d)
        q = np.clip(np.rint((w.astype(np.float32) - m) / ds), 0, hi)
        q = np.where(d == 0, np.float32(0), q)
        qv = q * d + m
        Qp[:, :, i] = qv
        err = (w - qv) / U[:, i, i][None, :]                                     # (R, nb)
        Wp[:, :, i:] -= err[:, :, None] * U[None, :, i, i:]
    Q = np.take_along_axis(Qp, invp[None], axis=2)
    return Q.reshape(R, C).astype(np.float32)
