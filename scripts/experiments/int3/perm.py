"""int3 with the input channels permuted so that each group of 32 holds columns of similar
calibrated importance (session 20). The format and the kernels stay as they are: a channel
permutation is exact when every reader and writer of the channel is permuted alike.

usage: python3 perm.py RESID [gptq:DAMP]
  RESID matrix: every matrix sorts its own columns by its own importance (an upper bound:
               q/k/v and gate/up of one layer read the same residual and would each need
               the permutation of the stream they read, which is one for the whole model).
  RESID global: one residual permutation for the whole model, by the summed importance of
               the qkv and gate_up inputs over all layers (what a load-time permutation can do).
  RESID none:  residual columns in place (o and down inputs are still sorted).
  o columns are sorted within each head (a channel cannot leave its head); down columns freely.
"""
import sys, time
import numpy as np
from exp import *
from quant import fit_groups, GS


def q8_group(g):
    """Q8_0 of groups (R, GS): f16 scale absmax / 127 per row, codes -127..127."""
    s = (np.abs(g).max(axis=1, keepdims=True) / 127.0).astype(np.float16).astype(np.float32)
    return np.clip(np.rint(g / np.where(s == 0, 1, s)), -127, 127) * s


def quant_perm(Wm, imp, perm, hi=0):
    """Quantises W[:, perm] with the refined calibrated fit and returns it in the original order.
    hi: the first `hi` groups (after the permutation) are stored at int8 (Q8_0) instead."""
    R, C = Wm.shape
    Wp = Wm[:, perm]
    ip = imp[perm]
    d, m, q = fit_groups(Wp.reshape(R, C // GS, GS), ip.reshape(1, C // GS, GS))
    deq = (q * d + m).reshape(R, C)
    for g in range(hi):
        deq[:, g * GS:(g + 1) * GS] = q8_group(Wp[:, g * GS:(g + 1) * GS])
    out = np.empty_like(Wm)
    out[:, perm] = deq
    return out


def quant_perm_gptq(Wm, X, imp, perm, damp):
    from gptq import gptq
    R, C = Wm.shape
    Qp = gptq(Wm[:, perm], X[:, perm], imp[perm], damp=damp)
    out = np.empty_like(Wm)
    out[:, perm] = Qp
    return out


def head_sort(imp, hd):
    """Columns sorted by importance within each block of hd."""
    C = len(imp)
    return np.concatenate([h * hd + np.argsort(-imp[h * hd:(h + 1) * hd], kind="stable") for h in range(C // hd)])


def main():
    resid = sys.argv[1]
    damp = None
    hi = {}
    for a in sys.argv[2:]:
        if a.startswith("hi:"):      # hi:qkv,gate_up,down[:N]
            parts = a.split(":")
            n = int(parts[2]) if len(parts) > 2 else 1
            hi = {k: n for k in parts[1].split(",")}
        if a.startswith("gptq:"):
            damp = float(a[5:])
    t = time.time()
    rec = calib_inputs(hp, BASE, fields) if damp is not None else None
    imp, _ = importance(hp, BASE, fields)
    tot = sum(imp[li]["qkv"] + imp[li]["gate_up"] for li in range(hp["n_layer"]))
    gperm = np.argsort(-tot, kind="stable")
    q = dict(BASE); q["layers"] = []
    for li, L in enumerate(BASE["layers"]):
        L2 = dict(L)
        for key in MATS:
            Wm = L[key]
            C = Wm.shape[1]
            ik = IMP_KEY[key]
            im = imp[li][ik]
            if ik == "o":
                perm = head_sort(im, hp["hd"])
            elif ik == "down":
                perm = np.argsort(-im, kind="stable")
            elif resid == "matrix":
                perm = np.argsort(-im, kind="stable")
            elif resid == "global":
                perm = gperm
            else:
                perm = np.arange(C)
            if damp is None:
                L2[key] = quant_perm(Wm, im, perm, hi.get(ik, 0))
            else:
                L2[key] = quant_perm_gptq(Wm, rec[li][ik], im, perm, damp)
        q["layers"].append(L2)
    r = evaluate(hp, q, fields)
    name = f"permuted groups: residual {resid}, o within heads, down free" + (f", GPTQ damp={damp}" if damp is not None else ", refined calib") + (f", first groups int8: {hi}" if hi else "")
    log(name, r, "", {"secs": round(time.time() - t, 1)})


if __name__ == "__main__":
    main()
