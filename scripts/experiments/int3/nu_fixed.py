"""One fixed non-uniform 3-bit table for every matrix (the Lloyd tables of nu_run.py were
all close to it): does it keep the per-matrix tables' gain?"""
import time
from exp import *
from quant_nu import quantize_nu
t = time.time()
m = BASE
imp, _ = importance(hp, m, fields)
LEV = np.array([0, .167, .302, .434, .566, .698, .833, 1], dtype=np.float32)
q = qmodel(m, lambda li, k, w: quantize_nu(w, imp[li][IMP_KEY[k]], LEV))
log("refined calib + one fixed non-uniform table [0 .167 .302 .434 .566 .698 .833 1]", evaluate(hp, q, fields), "",
    {"secs": round(time.time() - t, 1)})
