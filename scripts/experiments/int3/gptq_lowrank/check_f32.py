"""Does the low-rank exact GPTQ survive f32 arithmetic (for WGSL)?"""
import os
import sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import *
import lrgptq as L
from quant import fit_groups, GS
hp, W, fields = load()
m = model_from(hp, W)
ids = encode(fields, calibration_text())
rec = []; forward(hp, m, ids, record=rec, hidden_only=True)
imp, _ = importance(hp, m, fields)

def prep32(X, damp):
    X = X.astype(np.float32); T, C = X.shape
    lam = np.float32(damp * np.mean(np.einsum("tc,tc->c", X, X)))
    M = np.eye(T, dtype=np.float32) / lam
    v = np.zeros((C, T), np.float32); Vg = np.zeros((C // GS, T, GS), np.float32)
    for j in range(C - 1, -1, -1):
        x = X[:, j]; Mx = M @ x; den = np.float32(1) + x @ Mx
        v[j] = Mx / den; M -= np.outer(Mx, Mx) / den
        if j % GS == 0: Vg[j // GS] = M @ X[:, j:j + GS]
    return v, Vg

def lr32(W, X, imp, pre):
    R, C = W.shape; v, Vg = pre; X = X.astype(np.float32)
    r = np.zeros((R, X.shape[0]), np.float32); Q = np.zeros((R, C), np.float32)
    for j in range(C):
        if j % GS == 0:
            cur = (W[:, j:j + GS] - r @ Vg[j // GS])[:, None, :]
            d, mm, _ = fit_groups(cur, imp[j:j + GS][None, None, :]); d = d[:, 0, 0]; mm = mm[:, 0, 0]
            ds = np.where(d == 0, np.float32(1), d)
        wt = W[:, j] - r @ v[j]
        q = np.where(d == 0, 0, np.clip(np.rint((wt - mm) / ds), 0, 7)).astype(np.float32)
        qv = q * d + mm; Q[:, j] = qv
        r += np.outer(qv - W[:, j], X[:, j])
    return Q

for li in (5, 20, 29):
  for k in ("attn_q", "attn_output", "ffn_down"):
    Wm = m["layers"][li][k]; key = IMP_KEY[k]; X = rec[li][key]
    E = lambda Q: float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2))
    A = L.lrgptq(Wm, X, imp[li][key], 3.0)
    B = lr32(Wm, X, imp[li][key], prep32(X, 3.0))
    print(li, k, f"f64 err {E(A):.5f} f32 err {E(B):.5f} codes differing {np.mean(A != B):.4f}", flush=True)
