"""Variant 2: per-input-column gains refit by linear least squares on calibration outputs.
  gains: attn_norm (read by q,k,v) and ffn_norm (read by gate,up):  min sum_M ||W_M (g0*n) - W^_M (g*n)||^2
  vo:    per-row scales of V (192) = per-column scales of o's input (expanded over the 3 q-heads of a kv head)
  ud:    per-row scales of up (1536) = per-column scales of down's input
Ridge toward the original (g0, or 1): lam = damp * mean diag(normal matrix).
Closed form: G = (sum W^T W^) * Sqq, b = ((sum W^T W) * Sqf) g0, with Sqq = Xq^T Xq/T, Sqf = Xq^T Xf/T.
Inputs: fp calibration inputs (Xq = Xf), or with 'qin' Xq = inputs recorded from the quantised model.
usage: python3 postfit_norms.py DAMP[,DAMP...] PARTS(gains,vo,ud) [qin] [base=groups:DAMP|groupsdiag:DAMP|gptq:DAMP] [evalbase]"""
import sys
from postfit_common import *
from postfit_alpha import scale_rows


def col_fit(pairs, Sqq, Sqf, g0, damp, E=None):
    """pairs: list of (W, W^); returns the refit column gains (E maps reduced params to columns)."""
    A = sum(Wh.T.astype(np.float64) @ Wh for W_, Wh in pairs)
    B = sum(Wh.T.astype(np.float64) @ W_ for W_, Wh in pairs)
    G = A * Sqq
    b = (B * Sqf) @ g0
    if E is not None:
        G = E.T @ G @ E; b = E.T @ b
        g0 = np.ones(E.shape[1])
    lam = damp * np.mean(np.diag(G))
    return np.linalg.solve(G + lam * np.eye(len(G)), b + lam * g0)


def postfit(Q0, recf, recq, damp, parts):
    Q = dict(Q0); norms = {}
    grp = hp["H"] // hp["Hkv"]; hd = hp["hd"]
    # E: 576 o-input columns <- 192 V rows (head h reads kv head h // grp)
    E = np.zeros((hp["H"] * hd, hp["Hkv"] * hd))
    for h in range(hp["H"]):
        E[h * hd:(h + 1) * hd, (h // grp) * hd:(h // grp + 1) * hd] = np.eye(hd)
    for li in range(hp["n_layer"]):
        L = BASE["layers"][li]
        dq = lambda k: Q[(li, k)].deq() if isinstance(Q[(li, k)], QMat) else Q[(li, k)]
        if "gains" in parts:
            for nm, key, ks in (("attn_norm", "qkv", ("attn_q", "attn_k", "attn_v")),
                                ("ffn_norm", "gate_up", ("ffn_gate", "ffn_up"))):
                g0 = L[nm].astype(np.float64)
                safe = np.where(g0 == 0, 1.0, g0)
                nf = recf[li][key].astype(np.float64) / safe
                nq = recq[li][key].astype(np.float64) / safe
                T = len(nf)
                g = col_fit([(L[k], dq(k)) for k in ks], nq.T @ nq / T, nq.T @ nf / T, g0, damp)
                norms[(li, nm)] = g
        for part, key, tgt, src, Em in (("vo", "o", "attn_output", "attn_v", E),
                                        ("ud", "down", "ffn_down", "ffn_up", None)):
            if part in parts:
                xf = recf[li][key].astype(np.float64); xq = recq[li][key].astype(np.float64)
                T = len(xf)
                s = col_fit([(L[tgt], dq(tgt))], xq.T @ xq / T, xq.T @ xf / T, np.ones(xf.shape[1]), damp, Em)
                v = Q[(li, src)]   # a GPTQ base is a dequantised array: scale rows (f16 (d,m) rounding not modelled)
                Q[(li, src)] = scale_rows(v, s) if isinstance(v, QMat) else (v * s[:, None]).astype(np.float32)
        if li in (0, 15, 29) and (li, "attn_norm") in norms:
            r = norms[(li, "attn_norm")] / np.where(L["attn_norm"] == 0, 1, L["attn_norm"])
            print(f"  L{li} attn_norm ratio new/old: mean {r.mean():.4f} std {r.std():.4f}", flush=True)
    return Q, norms


def base_Q(spec, rec, imp):
    if spec.startswith("groups:") or spec.startswith("groupsdiag:"):
        from postfit_groups import postfit_all
        dg = spec.startswith("groupsdiag:"); v = spec.split(":")[1]
        return postfit_all(quant_all(imp), rec, float(v), report=False, diag=dg), f" on groups refit damp={v}" + (" x diag(H)" if dg else "")
    if spec.startswith("gptq:"):
        from gptq import gptq
        dmp = float(spec[5:])
        return {(li, k): gptq(BASE["layers"][li][k], rec[li][IMP_KEY[k]], imp[li][IMP_KEY[k]], damp=dmp)
                for li in range(hp["n_layer"]) for k in MATS}, f" on GPTQ damp={dmp}"
    return quant_all(imp), ""


if __name__ == "__main__":
    damps = [float(x) for x in sys.argv[1].split(",")]
    parts = sys.argv[2].split(",")
    qin = "qin" in sys.argv[3:]
    spec = ([a[5:] for a in sys.argv[3:] if a.startswith("base=")] or [""])[0]
    t = time.time()
    ids, rec, imp = calib()
    Q0, label = base_Q(spec, rec, imp)
    recq = rec
    if qin:
        recq = []
        forward(hp, model_with(Q0), ids, record=recq, hidden_only=True)
    setup = time.time() - t
    print(f"setup {setup:.1f}s", flush=True)
    if "evalbase" in sys.argv[3:]:
        run_eval("check: base alone" + label + " (postfit harness)", Q0, t)
    for dmp in damps:
        t1 = time.time() - setup
        Q, norms = postfit(Q0, rec, recq, dmp, parts)
        run_eval(f"postfit {'+'.join(parts)}: column-gain LS refit, damp={dmp}" + (", quantised-model inputs" if qin else ", fp inputs") + label, Q, t1, norms)
