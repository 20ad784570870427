import json
rows = [
 ("fp32 (Q4_1 dequantised)", dict(gpl3=18.833, heldout=15.916, prose=18.023, terms=12.879, formatted=18.080), "engine 18.828 / 15.92; no BOS (with BOS: 20.03)"),
 ("int3 baseline: refined, calibrated", dict(gpl3=25.259, heldout=21.919, prose=26.103, terms=16.497, formatted=25.656), "reproduces engine 25.26 / 21.90"),
 ("int3 RTN (min/max)", dict(gpl3=76.686, heldout=73.517, prose=85.703, terms=45.529, formatted=122.961), "engine 76.69"),
 ("mixed (q/k/v/o = file Q4_1, gate/up/down int3 calibrated)", dict(gpl3=22.175, heldout=20.042, prose=22.956, terms=15.143, formatted=24.968), "engine 22.18"),
 ("int3 refined, weights |x|+mean|x|", dict(gpl3=44.521, heldout=47.844, prose=58.662, terms=33.249, formatted=60.617), "fit.rs default weights"),
]
for l in open("results.jsonl"):
    r = json.loads(l)
    rows.append((r["name"], r, r.get("notes", "")))
fp = 18.833; fph = 15.916
print("| variant | GPL-3 512 ppl (vs fp32) | held-out pooled (vs fp32) | prose | terms | formatted | notes |")
print("|---|---|---|---|---|---|---|")
for n, r, notes in rows:
    n = n.replace("|", "\\|")
    print(f"| {n} | {r['gpl3']:.2f} ({100*(r['gpl3']/fp-1):+.1f}%) | {r['heldout']:.2f} ({100*(r['heldout']/fph-1):+.1f}%) | {r['prose']:.2f} | {r['terms']:.2f} | {r['formatted']:.2f} | {notes} |")
