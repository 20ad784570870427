"""Experiment helpers: build (possibly rotated) model, quantise, evaluate, log to results.jsonl."""
import json, time, sys
import numpy as np
from common import *
from rotate import *
from quant import quantize

hp, W, fields = load()
BASE = model_from(hp, W)


def build(rot=None, seed=0, vo=None, fold=False):
    m = BASE
    if rot is not None or fold:
        m = fold_norms(m)
    if rot is not None:
        m = rotate(m, make_Q(rot, seed=seed))
    if vo == "had64":
        m = rotate_vo(m, hp, hadamard_pow2(64) / 8)
    elif vo == "rand64":
        m = rotate_vo(m, hp, random_orth(64, seed + 1000))
    return m


def qmodel(m, fn, skip=()):
    q = dict(m); q["layers"] = []
    for li, L in enumerate(m["layers"]):
        L2 = dict(L)
        for k in MATS:
            if k not in skip:
                L2[k] = fn(li, k, L[k])
        q["layers"].append(L2)
    return q


def weights_fn(m, mode):
    """mode: 'calib' (importance), 'ones', 'absx' (fit.rs default), 'calib^p'"""
    if mode == "ones":
        return lambda li, k, C: np.ones(C, np.float32)
    if mode == "absx":
        return lambda li, k, C: None
    p = 1.0
    if mode.startswith("calib^"):
        p = float(mode[6:])
    imp, _ = importance(hp, m, fields)
    return lambda li, k, C: imp[li][IMP_KEY[k]] ** p


def log(name, r, notes="", extra=None):
    rec = {"name": name, **r, "notes": notes}
    if extra: rec.update(extra)
    with open("results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{name}: {fmt(r)}  {notes}", flush=True)


def run_refined(name, rot=None, seed=0, vo=None, fold=False, wmode="calib", notes=""):
    t = time.time()
    m = build(rot, seed, vo, fold)
    wf = weights_fn(m, wmode)
    q = qmodel(m, lambda li, k, w: quantize(w, wf(li, k, w.shape[1])))
    r = evaluate(hp, q, fields)
    log(name, r, notes, {"secs": round(time.time() - t, 1)})
    return r
