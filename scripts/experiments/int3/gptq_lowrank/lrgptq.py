"""Exact full-Hessian GPTQ without any C x C matrix, using H = X^T X + lam*I with X (T, C), T << C.

For a row w, after columns P = [0, j) are fixed with errors delta_P = q_P - w_P, the GPTQ/OBS state of the
free columns F = [j, C) is w_F + delta*_F with
    delta*_F = -(lam I + X_F^T X_F)^{-1} X_F^T r,   r = X_P delta_P  (T-vector: output-space residual)
             = -X_F^T (lam I_T + X_F X_F^T)^{-1} r  (push-through identity)
so with M_j = (lam I_T + sum_{k>=j} x_k x_k^T)^{-1} (T x T, x_k = column k of X):
    target of column j:      w~_j = w_j - r . (M_j x_j)
    current values of group g starting at j0: w_g - r @ (M_j0 X_g)
M_j is built backwards by Sherman-Morrison (O(C T^2) once per Hessian), the forward pass is O(R C T).
Identical (up to rounding) to GPTQ with H + lam I, plain column order, lam = damp * mean(diag X^T X).
"""
import os
import sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from quant import fit_groups, GS


def prep(X, damp=3.0):
    """Per-Hessian precomputation (shared by all matrices with the same input X).
    Returns v (C, T): M_j x_j, and Vg (C/GS, T, GS): M_{j0} X_g."""
    X = X.astype(np.float64)
    T, C = X.shape
    lam = damp * np.mean(np.einsum("tc,tc->c", X, X))
    M = np.eye(T) / lam
    v = np.zeros((C, T)); Vg = np.zeros((C // GS, T, GS))
    for j in range(C - 1, -1, -1):
        x = X[:, j]
        Mx = M @ x
        den = 1.0 + x @ Mx
        v[j] = Mx / den                      # = M_j x_j
        M -= np.outer(Mx, Mx) / den          # M_j
        if j % GS == 0:
            Vg[j // GS] = M @ X[:, j:j + GS]
    return v, Vg


def lrgptq(W, X, imp, damp=3.0, bits=3, pre=None):
    R, C = W.shape
    hi = np.float32((1 << bits) - 1)
    v, Vg = prep(X, damp) if pre is None else pre
    X = X.astype(np.float64)
    Wd = W.astype(np.float64)
    r = np.zeros((R, X.shape[0]))
    Q = np.zeros((R, C), np.float32)
    for j in range(C):
        if j % GS == 0:
            g = j // GS
            cur = (Wd[:, j:j + GS] - r @ Vg[g]).astype(np.float32)[:, None, :]
            d, m, _ = fit_groups(cur, imp[j:j + GS][None, None, :], bits)
            d = d[:, 0, 0]; m = m[:, 0, 0]
            ds = np.where(d == 0, np.float32(1), d)
        wt = Wd[:, j] - r @ v[j]
        q = np.clip(np.rint((wt.astype(np.float32) - m) / ds), 0, hi)
        q = np.where(d == 0, np.float32(0), q)
        qv = q * d + m
        Q[:, j] = qv
        r += np.outer(qv - Wd[:, j], X[:, j])     # r = X_P (q_P - w_P)
    return Q


def lrgptq_act(W, X, imp, damp=3.0, bits=3):
    """Same, processing columns in descending diag(H) order over the whole matrix (act-order).
    A group's (d, m) is fitted on the current values of its 32 columns when its first column is reached."""
    R, C = W.shape
    hi = np.float32((1 << bits) - 1)
    X = X.astype(np.float64); T = X.shape[0]
    dg = np.einsum("tc,tc->c", X, X)
    lam = damp * np.mean(dg)
    perm = np.argsort(-dg, kind="stable")
    invp = np.argsort(perm)
    grp = perm // GS
    ng = C // GS
    gpos = invp.reshape(ng, GS)                      # permuted positions of each group's columns
    first = gpos.min(axis=1)
    starts = {}
    for g in range(ng):
        starts.setdefault(int(first[g]), []).append(g)
    Xp = X[:, perm]
    M = np.eye(T) / lam
    v = np.zeros((C, T)); Vg = np.zeros((ng, T, GS))
    for j in range(C - 1, -1, -1):
        x = Xp[:, j]; Mx = M @ x; den = 1.0 + x @ Mx
        v[j] = Mx / den; M -= np.outer(Mx, Mx) / den
        for g in starts.get(j, ()):
            Vg[g] = M @ Xp[:, gpos[g]]
    Wp = W.astype(np.float64)[:, perm]
    r = np.zeros((R, T)); Qp = np.zeros((R, C), np.float32)
    dd = np.zeros((R, ng), np.float32); mm = np.zeros((R, ng), np.float32)
    for j in range(C):
        for g in starts.get(j, ()):
            cur = (Wp[:, gpos[g]] - r @ Vg[g]).astype(np.float32)[:, None, :]
            d, m, _ = fit_groups(cur, imp[g * GS:(g + 1) * GS][None, None, :], bits)
            dd[:, g] = d[:, 0, 0]; mm[:, g] = m[:, 0, 0]
        g = grp[j]; d = dd[:, g]; m = mm[:, g]
        ds = np.where(d == 0, np.float32(1), d)
        wt = Wp[:, j] - r @ v[j]
        q = np.where(d == 0, np.float32(0), np.clip(np.rint((wt.astype(np.float32) - m) / ds), 0, hi))
        qv = q * d + m
        Qp[:, j] = qv
        r += np.outer(qv - Wp[:, j], Xp[:, j])
    return Qp[:, invp]
