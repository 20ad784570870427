import time
from exp import *
from quant_nu import learn_levels, quantize_nu
t = time.time()
m = BASE
imp, _ = importance(hp, m, fields)
levs = {}
def fn(li, k, w):
    lev = learn_levels(w, imp[li][IMP_KEY[k]])
    levs[(li, k)] = lev
    return quantize_nu(w, imp[li][IMP_KEY[k]], lev)
# sanity: uniform levels reproduce the baseline
qu = qmodel(m, lambda li, k, w: quantize_nu(w, imp[li][IMP_KEY[k]], np.arange(8, dtype=np.float32) / 7))
print("nu-code with uniform levels:", fmt(evaluate(hp, qu, fields)), flush=True)
q = qmodel(m, fn)
log("refined calib + non-uniform per-matrix levels (Lloyd 6 rounds)", evaluate(hp, q, fields), "", {"secs": round(time.time() - t, 1)})
np.save("cache/levels_example.npy", np.array([levs[(l, k)] for l in (0, 15, 29) for k in MATS]))
print(np.array([levs[(15, k)] for k in MATS]).round(3))
