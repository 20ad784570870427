import os
import sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import *
from gptq import gptq
from bgptq import bgptq
hp, W, fields = load()
m = model_from(hp, W)
ids = encode(fields, calibration_text())
rec = []; forward(hp, m, ids, record=rec, hidden_only=True)
imp, _ = importance(hp, m, fields)
li = 5
for k in ("attn_q", "ffn_down"):
    Wm = m["layers"][li][k]; key = IMP_KEY[k]; X = rec[li][key]
    t = time.time(); A = gptq(Wm, X, imp[li][key], damp=3.0); t1 = time.time() - t
    t = time.time(); Bq = bgptq(Wm, X, imp[li][key], B=None, damp=3.0); t2 = time.time() - t
    E = lambda Q: float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2)); print(k, "max diff full", np.abs(A - Bq).max(), "frac differing", np.mean(A != Bq), E(A), E(Bq), f"{t1:.1f}s {t2:.1f}s"); dif = A != Bq; print("first differing col per row (median)", np.median([np.argmax(r) for r in dif if r.any()]))
    # block 64 vs gptq on slices with global lambda emulated: compare with per-block via slices
    Bb = bgptq(Wm, X, imp[li][key], B=64, damp=3.0, damp_mode="block")
    S = np.concatenate([gptq(Wm[:, a:a+64], X[:, a:a+64], imp[li][key][a:a+64], damp=3.0) for a in range(0, Wm.shape[1], 64)], 1)
    print(k, "B=64 per-block vs sliced gptq maxdiff", np.abs(Bb - S).max(), np.mean(Bb != S))
    for o in ("plain", "act"):
        for gm in ("dynamic", "static"):
            t = time.time(); Q = bgptq(Wm, X, imp[li][key], B=128, damp=3.0, order=o, groups=gm)
            e = float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2))
            print(k, o, gm, f"calib rel err {e:.5f} {time.time()-t:.1f}s")
