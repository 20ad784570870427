"""Shared pieces for the low-parameter post-quantisation corrections (postfit_*.py).
Base quantisation = the engine's refined calibrated int3 fit (quant.fit_groups), kept as
codes + f16 (d, m) per group so the corrections can refit them."""
import time
import numpy as np
from exp import *                      # hp, W, fields, BASE, log, evaluate, importance, ...
from quant import fit_groups, GS

F16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


class QMat:
    """int3 matrix: codes q (R, G, GS) f32 in 0..7, d, m (R, G, 1) f16-valued f32."""
    def __init__(self, q, d, m):
        self.q, self.d, self.m = q, d, m

    def deq(self):
        R, G, _ = self.q.shape
        return (self.q * self.d + self.m).reshape(R, G * GS).astype(np.float32)


def base_quant(Wm, imp):
    R, C = Wm.shape
    d, m, q = fit_groups(Wm.reshape(R, C // GS, GS), imp.reshape(1, C // GS, GS))
    return QMat(q, d, m)


def calib():
    """fp calibration inputs per layer (dict qkv/o/gate_up/down -> (T, cols) f32) and importance."""
    ids = encode(fields, calibration_text())
    rec = []
    forward(hp, BASE, ids, record=rec, hidden_only=True)
    imp, _ = importance(hp, BASE, fields)
    return ids, rec, imp


def hess(X):
    X = X.astype(np.float64)
    return X.T @ X / len(X)


def quant_all(imp):
    """Baseline quantisation of every matrix -> dict (li, k) -> QMat."""
    return {(li, k): base_quant(BASE["layers"][li][k], imp[li][IMP_KEY[k]])
            for li in range(hp["n_layer"]) for k in MATS}


def model_with(Q, norms=None):
    """Model with dequantised matrices from Q ((li,k)->QMat or array); norms: (li, name)->gain."""
    q = dict(BASE); q["layers"] = []
    for li, L in enumerate(BASE["layers"]):
        L2 = dict(L)
        for k in MATS:
            v = Q[(li, k)]
            L2[k] = v.deq() if isinstance(v, QMat) else v
        if norms:
            for n in NORMS:
                if (li, n) in norms:
                    L2[n] = norms[(li, n)].astype(np.float32)
        q["layers"].append(L2)
    return q


def run_eval(name, Q, t0, norms=None, notes=""):
    r = evaluate(hp, model_with(Q, norms), fields)
    log(name, r, notes, {"secs": round(time.time() - t0, 1)})
    return r
