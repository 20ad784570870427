"""Why rotation hurts: per-matrix relative errors in weight space and output space (held-out inputs)."""
from exp import *
ids_c = encode(fields, calibration_text())
ids_e = eval_ids(fields)["prose"]
for label, m in (("orig", build()), ("fold", build(fold=True)), ("rot random s0", build("random", 0))):
    imp, _ = importance(hp, m, fields)
    rec = []; forward(hp, m, ids_e, record=rec, hidden_only=True)
    for li in (2, 15, 28):
        row = []
        for k in ("attn_q", "ffn_gate", "attn_output", "ffn_down"):
            Wm = m["layers"][li][k]; key = IMP_KEY[k]
            Q = quantize(Wm, imp[li][key])
            X = rec[li][key]
            we = np.sum((Wm - Q) ** 2) / np.sum(Wm ** 2)
            oe = np.sum((X @ (Wm - Q).T) ** 2) / np.sum((X @ Wm.T) ** 2)
            row.append(f"{k}: w {we:.4f} out {oe:.4f}")
        print(label, "L", li, " | ".join(row), flush=True)
    X = rec[15]["qkv"]
    ms = np.mean(X ** 2, axis=0); print(label, "L15 qkv input: max/mean col mean-square", ms.max() / ms.mean())
