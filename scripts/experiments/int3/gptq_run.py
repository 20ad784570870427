"""Run GPTQ variants. usage: python3 gptq_run.py <rot|none> <damp> [seq]"""
import os, sys, time
from exp import *
from gptq import gptq

def run_gptq(name, rot=None, seed=0, vo=None, damp=0.1, seq=False, notes="", wimp=True, nu=False, damp_mode="mean"):
    t = time.time()
    m = build(rot, seed, vo)
    ids = encode(fields, calibration_text())
    rec = []
    forward(hp, m, ids, record=rec, hidden_only=True)
    imp, _ = importance(hp, m, fields)
    q = dict(m); q["layers"] = [dict(L) for L in m["layers"]]
    for li in range(hp["n_layer"]):
        if seq and li > 0:
            rec = []
            forward(hp, q, ids, record=rec, hidden_only=True)
        L = q["layers"][li]
        for k in MATS:
            lev = None
            if nu:
                from quant_nu import learn_levels
                lev = learn_levels(m["layers"][li][k], imp[li][IMP_KEY[k]])
            L[k] = gptq(m["layers"][li][k], rec[li][IMP_KEY[k]], imp[li][IMP_KEY[k]], damp=damp, wmode_imp=wimp, lev=lev, damp_mode=damp_mode)
    r = evaluate(hp, q, fields)
    log(name, r, notes, {"secs": round(time.time() - t, 1)})
    return r

if __name__ == "__main__":
    rot = None if sys.argv[1] == "none" else sys.argv[1]
    vo = None
    if rot and "+vo" in rot:
        rot = rot.replace("+vo", ""); vo = "had64"
    damp = float(sys.argv[2])
    seq = "seq" in sys.argv[3:]
    nu = "nu" in sys.argv[3:]
    dm = "diag" if "diag" in sys.argv[3:] else "mean"
    label = f"GPTQ damp={damp}" + (" x diag(H)" if dm == "diag" else "") + (f", rot {rot}" if rot else "") + (" +VO had64" if vo else "") + (", sequential inputs" if seq else ", fp inputs") + (", non-uniform levels" if nu else "")
    if os.environ.get("CALIB_FILE"):
        label += f", calibration {os.path.basename(os.environ['CALIB_FILE'])}"
    run_gptq(label, rot=rot, vo=vo, damp=damp, seq=seq, nu=nu, damp_mode=dm)
