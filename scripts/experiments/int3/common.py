"""Shared pieces: cached f32 weights, tokenizer, fast batched forward, perplexity, importance."""
import os, sys, re, time
import numpy as np
# The repository root (this file is scripts/experiments/int3/common.py).
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "scripts/reference"))

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
GGUF = os.path.join(REPO, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
MATS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "ffn_norm")


def _fields():
    import gguf
    r = gguf.GGUFReader(GGUF)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def load():
    """Returns (hp, weights dict name->f32 array (numpy shape (rows, cols)), fields)."""
    path = os.path.join(CACHE, "weights.npz")
    fields = _fields()
    if not os.path.exists(path):
        from model_ref import load_gguf
        g = load_gguf(GGUF)
        np.savez(path, **g.tensors)
    z = np.load(path)
    W = {k: z[k] for k in z.files}
    a = fields["general.architecture"]
    hp = dict(n_layer=int(fields[f"{a}.block_count"]), d=int(fields[f"{a}.embedding_length"]),
              H=int(fields[f"{a}.attention.head_count"]), Hkv=int(fields[f"{a}.attention.head_count_kv"]),
              dff=int(fields[f"{a}.feed_forward_length"]), rope=float(fields[f"{a}.rope.freq_base"]),
              eps=float(fields[f"{a}.attention.layer_norm_rms_epsilon"]))
    hp["hd"] = hp["d"] // hp["H"]
    return hp, W, fields


_TOK = None
def tokenizer(fields):
    global _TOK
    if _TOK is None:
        from tokenizer_ref import build_tokenizer
        _TOK = build_tokenizer(fields)[0]
    return _TOK


def encode(fields, text):
    return tokenizer(fields).encode(text, add_special_tokens=False).ids


def calibration_text():
    # CALIB_FILE: a calibration text from a file instead of the engine's built-in one.
    if os.environ.get("CALIB_FILE"):
        return open(os.environ["CALIB_FILE"]).read()
    src = open(os.path.join(REPO, "src/quant/calibrate.rs")).read()
    m = re.search(r'pub const CALIBRATION_TEXT: &str = "(.*?)";\n', src, re.S)
    s = m.group(1)
    s = re.sub(r'\\\n\s*', '', s)          # Rust string line continuation
    s = s.replace('\\"', '"')
    assert '\\' not in s
    return s


def texts():
    out = {"gpl3": open("/usr/share/common-licenses/GPL-3").read()}
    for n in ("prose", "terms", "formatted"):
        out[n] = open(os.path.join(REPO, f"tests/fixtures/quant_selection/{n}.txt")).read()
    return out


def model_from(hp, W):
    """Build a model dict. Keys: emb (V,d) for lookup, head (V,d) for logits, out_norm (d,) or None,
    layers: list of dicts of mats + norms (norm None means weight 1)."""
    m = {"emb": W["token_embd.weight"], "head": W.get("output.weight", W["token_embd.weight"]),
         "out_norm": W["output_norm.weight"], "layers": []}
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        m["layers"].append({k: W[p + k + ".weight"] for k in MATS + NORMS})
    return m


def rms_norm(x, w, eps):
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    y = (x * (1.0 / np.sqrt(ms + np.float32(eps)))).astype(np.float32)
    return y if w is None else y * w


def rope_tables(hp, T):
    hd = hp["hd"]
    inv = hp["rope"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T)[:, None].astype(np.float64) * inv[None, :]
    return np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]


def rope(x, cs):
    cos, sin = cs
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(hp, m, ids, record=None, hidden_only=False):
    """Batched causal forward from position 0. record: dict to fill with per-layer inputs
    (list per layer of dict qkv/o/gate_up/down -> (T, cols) arrays) if not None."""
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    hd, H, Hkv = hp["hd"], hp["H"], hp["Hkv"]
    grp = H // Hkv
    eps = hp["eps"]
    cs = rope_tables(hp, T)
    x = m["emb"][ids].astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(hd))
    mask = np.triu(np.ones((T, T), bool), 1)
    for li, L in enumerate(m["layers"]):
        h = rms_norm(x, L["attn_norm"], eps)
        q = rope((h @ L["attn_q"].T).reshape(T, H, hd), cs)
        k = rope((h @ L["attn_k"].T).reshape(T, Hkv, hd), cs)
        v = (h @ L["attn_v"].T).reshape(T, Hkv, hd)
        qh = q.transpose(1, 0, 2).reshape(Hkv, grp * T, hd)       # heads of a kv group stacked
        kh = k.transpose(1, 2, 0)                                  # (Hkv, hd, T)
        s = (qh @ kh).reshape(Hkv, grp, T, T) * scale
        s = np.where(mask, np.float32(-np.inf), s)
        s = s - s.max(axis=-1, keepdims=True)
        e = np.exp(s)
        pr = (e / e.sum(axis=-1, keepdims=True)).reshape(Hkv, grp * T, T)
        att = (pr @ v.transpose(1, 0, 2)).reshape(H, T, hd).transpose(1, 0, 2).reshape(T, H * hd)
        x = x + att @ L["attn_output"].T
        h2 = rms_norm(x, L["ffn_norm"], eps)
        g = h2 @ L["ffn_gate"].T
        act = g / (np.float32(1.0) + np.exp(-g)) * (h2 @ L["ffn_up"].T)
        x = x + act @ L["ffn_down"].T
        if record is not None:
            record.append({"qkv": h, "o": att, "gate_up": h2, "down": act})
    h = rms_norm(x, m["out_norm"], eps)
    if hidden_only:
        return h
    return (h @ m["head"].T).astype(np.float32)


def nll(hp, m, ids, chunk=128):
    """Sum of NLL and count for predicting ids[t+1] from ids[:t+1]."""
    h = forward(hp, m, ids, hidden_only=True)
    tot = 0.0
    for a in range(0, len(ids) - 1, chunk):
        b = min(a + chunk, len(ids) - 1)
        lg = (h[a:b] @ m["head"].T).astype(np.float64)
        mx = lg.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1))
        tot += float(np.sum(lse - lg[np.arange(b - a), ids[a + 1:b + 1]]))
    return tot, len(ids) - 1


_EVAL_IDS = None
def eval_ids(fields, n=512):
    global _EVAL_IDS
    if _EVAL_IDS is None:
        _EVAL_IDS = {k: encode(fields, t)[:n] for k, t in texts().items()}
    return _EVAL_IDS


def evaluate(hp, m, fields):
    ids = eval_ids(fields)
    r = {}
    for k, v in ids.items():
        r[k] = nll(hp, m, v)
    out = {k: float(np.exp(a / c)) for k, (a, c) in r.items()}
    a = sum(r[k][0] for k in ("prose", "terms", "formatted"))
    c = sum(r[k][1] for k in ("prose", "terms", "formatted"))
    out["heldout"] = float(np.exp(a / c))
    return out


def fmt(r):
    return (f"GPL3 {r['gpl3']:.3f} | held-out {r['heldout']:.3f} "
            f"(prose {r['prose']:.3f}, terms {r['terms']:.3f}, formatted {r['formatted']:.3f})")


def importance(hp, m, fields, floor=True):
    """Per layer dict qkv/o/gate_up/down -> mean square per column, scaled to mean 1, floored 1e-3
    (as calibrate.rs)."""
    ids = encode(fields, calibration_text())
    rec = []
    forward(hp, m, ids, record=rec, hidden_only=True)
    out = []
    for r in rec:
        d = {}
        for k, x in r.items():
            s = np.sum(x.astype(np.float64) ** 2, axis=0) / len(ids)
            mean = s.mean()
            d[k] = np.maximum(s / mean, 1e-3).astype(np.float32) if floor else (s / mean).astype(np.float32)
        out.append(d)
    return out, len(ids)


def calib_inputs(hp, m, fields):
    ids = encode(fields, calibration_text())
    rec = []
    forward(hp, m, ids, record=rec, hidden_only=True)
    return rec


IMP_KEY = {"attn_q": "qkv", "attn_k": "qkv", "attn_v": "qkv", "attn_output": "o",
           "ffn_gate": "gate_up", "ffn_up": "gate_up", "ffn_down": "down"}
