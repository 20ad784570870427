"""Variant 3: per-output-row scalar alpha_r = argmin (w - a w^)^T Hd (w - a w^), Hd = H + damp*mean(diag H)*I,
absorbed into every group's (d, m) of that row (f16 re-rounded), so free in storage.
usage: python3 postfit_alpha.py DAMP[,DAMP...]"""
import sys
from postfit_common import *


def alpha_rows(Wm, qm, H, damp):
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    Wh = qm.deq().astype(np.float64)
    HWh = Wh @ Hd
    a = np.einsum('rc,rc->r', HWh, Wm.astype(np.float64)) / np.maximum(np.einsum('rc,rc->r', HWh, Wh), 1e-30)
    return a


def scale_rows(qm, s):
    s = np.asarray(s, np.float32)[:, None, None]
    return QMat(qm.q, F16(qm.d * s), F16(qm.m * s))


def alpha_all(Q0, rec, damp):
    Q = {}; al = []
    for li in range(hp["n_layer"]):
        Hs = {key: hess(rec[li][key]) for key in ("qkv", "o", "gate_up", "down")}
        for k in MATS:
            a = alpha_rows(BASE["layers"][li][k], Q0[(li, k)], Hs[IMP_KEY[k]], damp)
            al.append(a)
            Q[(li, k)] = scale_rows(Q0[(li, k)], a)
    al = np.concatenate(al)
    print(f"  alpha: mean {al.mean():.4f} std {al.std():.4f} min {al.min():.3f} max {al.max():.3f}", flush=True)
    return Q


if __name__ == "__main__":
    damps = [float(x) for x in sys.argv[1].split(",")]
    t = time.time()
    ids, rec, imp = calib()
    Q0 = quant_all(imp)
    setup = time.time() - t
    for dmp in damps:
        t1 = time.time() - setup
        run_eval(f"postfit alpha: per-row scalar refit vs H, damp={dmp}", alpha_all(Q0, rec, dmp), t1)
