import os
import sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import *
from gptq import gptq
from lrgptq import lrgptq, prep
hp, W, fields = load()
m = model_from(hp, W)
ids = encode(fields, calibration_text())
rec = []; forward(hp, m, ids, record=rec, hidden_only=True)
imp, _ = importance(hp, m, fields)
for li in (5, 20):
  for k in ("attn_q", "ffn_down"):
    Wm = m["layers"][li][k]; key = IMP_KEY[k]; X = rec[li][key]
    E = lambda Q: float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2))
    t = time.time(); A = gptq(Wm, X, imp[li][key], damp=3.0); t1 = time.time() - t
    t = time.time(); P = prep(X, 3.0); t2 = time.time() - t
    t = time.time(); L = lrgptq(Wm, X, imp[li][key], damp=3.0, pre=P); t3 = time.time() - t
    dif = A != L
    print(li, k, "frac differing", dif.mean(), "first diff col median", np.median([np.argmax(r) for r in dif if r.any()]) if dif.any() else None,
          f"err gptq {E(A):.5f} lr {E(L):.5f}  times gptq {t1:.1f}s prep {t2:.2f}s lr {t3:.1f}s", flush=True)
