import time, copy, numpy as np
from common import *
from quant import quantize, rtn
hp, W, fields = load()
m = model_from(hp, W)
imp, n = importance(hp, m, fields)

def qmodel(m, fn):
    q = dict(m); q["layers"] = []
    for li, L in enumerate(m["layers"]):
        L2 = dict(L)
        for k in MATS:
            L2[k] = fn(li, k, L[k])
        q["layers"].append(L2)
    return q

t = time.time()
qb = qmodel(m, lambda li, k, w: quantize(w, imp[li][IMP_KEY[k]]))
print("quant time", time.time() - t)
print("int3 refined calibrated:", fmt(evaluate(hp, qb, fields)), flush=True)
qr = qmodel(m, lambda li, k, w: rtn(w))
print("int3 RTN:", fmt(evaluate(hp, qr, fields)), flush=True)
qm = qmodel(m, lambda li, k, w: w if k in ("attn_q", "attn_k", "attn_v", "attn_output") else quantize(w, imp[li][IMP_KEY[k]]))
print("mixed:", fmt(evaluate(hp, qm, fields)), flush=True)
qu = qmodel(m, lambda li, k, w: quantize(w, None))
print("int3 refined |x|+mean|x|:", fmt(evaluate(hp, qu, fields)), flush=True)
