"""usage: python3 run.py VARIANT [VARIANT ...]
VARIANT: 'baseline' | 'fullref:DAMP' (gptq.py) | 'B=..,damp=..,dm=global|block,order=plain|act,groups=dynamic|static'
(B=full for the full Hessian)."""
import os
import sys, time, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import *
from quant import quantize
from gptq import gptq
from bgptq import bgptq
from lrgptq import lrgptq, prep, lrgptq_act

hp, W, fields = load()
M = model_from(hp, W)
ids = encode(fields, calibration_text())
REC = []; forward(hp, M, ids, record=REC, hidden_only=True)
IMP, _ = importance(hp, M, fields)


def parse(v):
    o = dict(B="full", damp="3.0", dm="global", order="plain", groups="dynamic")
    for kv in v.split(","):
        k, x = kv.split("="); o[k] = x
    return o


PRE = {}
def run(v):
    PRE.clear()
    t = time.time()
    q = dict(M); q["layers"] = []
    errs = []
    for li, L in enumerate(M["layers"]):
        L2 = dict(L)
        for k in MATS:
            key = IMP_KEY[k]; Wm = L[k]; X = REC[li][key]; imp = IMP[li][key]
            if v == "baseline":
                Q = quantize(Wm, imp)
            elif v.startswith("lr:"):
                dmp = float(v.split(":")[1])
                if (li, key) not in PRE: PRE.clear(); PRE[(li, key)] = prep(X, dmp)
                Q = lrgptq(Wm, X, imp, damp=dmp, pre=PRE[(li, key)])
            elif v.startswith("lract:"):
                Q = lrgptq_act(Wm, X, imp, damp=float(v.split(":")[1]))
            elif v.startswith("fullref:"):
                Q = gptq(Wm, X, imp, damp=float(v.split(":")[1]))
            else:
                o = parse(v)
                B = None if o["B"] == "full" else int(o["B"])
                Q = bgptq(Wm, X, imp, B=B, damp=float(o["damp"]), damp_mode=o["dm"], order=o["order"], groups=o["groups"])
            errs.append(float(np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2)))
            L2[k] = Q
        q["layers"].append(L2)
    tq = time.time() - t
    r = evaluate(hp, q, fields)
    rec = {"name": v, **r, "calib_relerr_mean": float(np.mean(errs)), "quant_secs": round(tq, 1), "secs": round(time.time() - t, 1)}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{v}: {fmt(r)}  calib relerr {np.mean(errs):.5f}  quant {tq:.0f}s total {time.time()-t:.0f}s", flush=True)


for v in sys.argv[1:]:
    run(v)
