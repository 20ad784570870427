import json
LABEL = {
 "baseline": "int3 refined calibrated fit (no GPTQ)",
 "fullref:3.0": "full-H GPTQ damp 3.0 (int3exp/gptq.py, reproduction)",
 "B=full": "full-H GPTQ damp 3.0 (bgptq.py, B=C)",
 "lr:3.0": "full-H GPTQ damp 3.0, low-rank exact (lrgptq.py, no CxC matrix)",
 "lr:10.0": "full-H GPTQ damp 10.0, low-rank exact (lrgptq.py)",
 "lract:3.0": "full-H GPTQ damp 3.0, act-order over whole matrix (lrgptq_act)",
}
def label(n):
    if n in LABEL: return LABEL[n]
    if n.startswith("lr:"): return f"full-H GPTQ damp {n[3:]}, low-rank exact (lrgptq.py)"
    o = dict(kv.split("=") for kv in n.split(","))
    s = f"block-diag B={o['B']}, damp {o.get('damp','3.0')} x mean diag ({'per block' if o.get('dm')=='block' else 'whole matrix'})"
    s += ", act-order in block" if o.get("order") == "act" else ", plain order"
    if o.get("groups") == "static": s += ", static groups"
    return s
rows = {json.loads(l)["name"]: json.loads(l) for l in open("results.jsonl")}
ORDER = ["baseline", "fullref:3.0", "B=full", "lr:3.0", "lr:5.0", "lr:10.0", "lract:3.0",
 "B=32", "B=64", "B=128", "B=256",
 "B=32,dm=block", "B=64,dm=block", "B=128,dm=block", "B=256,dm=block",
 "B=32,order=act", "B=64,order=act", "B=128,order=act", "B=256,order=act",
 "B=256,damp=1.0", "B=256,damp=10.0", "B=256,groups=static"]
rows = [rows[n] for n in ORDER if n in rows] + [r for n, r in rows.items() if n not in ORDER]
print("| variant | GPL-3 512 | held-out pooled | prose | terms | formatted | calib rel. out err |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {label(r['name'])} | {r['gpl3']:.2f} | {r['heldout']:.2f} | {r['prose']:.2f} | {r['terms']:.2f} | {r['formatted']:.2f} | {r['calib_relerr_mean']:.5f} |")
