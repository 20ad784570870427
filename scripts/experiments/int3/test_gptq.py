import time
from common import *
from quant import quantize
from gptq import gptq
hp, W, fields = load()
m = model_from(hp, W)
ids = encode(fields, calibration_text())
rec = []; forward(hp, m, ids, record=rec, hidden_only=True)
imp, _ = importance(hp, m, fields)
# held-out inputs for eval of layer error
rec2 = []; forward(hp, m, eval_ids(fields)["prose"], record=rec2, hidden_only=True)
li = 5
for k in ("attn_q", "ffn_down"):
    Wm = m["layers"][li][k]; key = IMP_KEY[k]
    X, Xe = rec[li][key], rec2[li][key]
    base = quantize(Wm, imp[li][key])
    e = lambda Q, X: float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2))
    print(k, "refined: calib err", e(base, X), "heldout err", e(base, Xe))
    for damp in (100.0, 3.0, 1.0, 0.3, 0.1, 0.01):
        t = time.time(); Q = gptq(Wm, X, imp[li][key], damp=damp)
        print(f"  gptq damp {damp}: calib {e(Q, X):.5f} heldout {e(Q, Xe):.5f}  ({time.time()-t:.1f}s)")
