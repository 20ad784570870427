import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import *
from quant import quantize
from bgptq import bgptq
hp, W, fields = load()
m = model_from(hp, W)
ids = encode(fields, calibration_text())
rec = []; forward(hp, m, ids, record=rec, hidden_only=True)
imp, _ = importance(hp, m, fields)
for li in (3, 20):
    for k in ("attn_q", "attn_output", "ffn_gate", "ffn_down"):
        Wm = m["layers"][li][k]; key = IMP_KEY[k]; X = rec[li][key].astype(np.float64)
        H = X.T @ X; C = H.shape[0]
        ev = np.linalg.eigvalsh(H)[::-1]
        mu = X.mean(0); r1 = len(X) * mu @ mu / np.trace(H)
        E = lambda Q: float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2))
        row = [f"base {E(quantize(Wm, imp[li][key])):.4f}"]
        for B in (64, 256, None):
            row.append(f"B{B or 'full'} {E(bgptq(Wm, X, imp[li][key], B=B)):.4f}")
        print(f"L{li} {k} C={C} top1/trace {ev[0]/ev.sum():.3f} top4 {ev[:4].sum()/ev.sum():.3f} mean^2 share {r1:.3f} T={len(X)} | " + " ".join(row), flush=True)
