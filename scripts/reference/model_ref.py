"""GGUF loading, dequantisation and the f32 llama forward pass (numpy only)."""

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT


class Loaded:
    def __init__(self, fields, tensors, types):
        self.fields = fields      # metadata key -> python value
        self.tensors = tensors    # name -> f32 ndarray, numpy shape (ne1, ne0)
        self.types = types        # name -> quant type name


def _own_dequant(raw, qtype, shape):
    """Hand-written Q4_1 / Q8_0 dequantisers, used to cross-check gguf.quants."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    if qtype == QT.Q8_0:      # block 32: f16 d, 32 x i8 ; x = d * q
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    if qtype == QT.Q4_1:      # block 32: f16 d, f16 m, 16 bytes ; x[j]=lo*d+m, x[j+16]=hi*d+m
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        return (q * d + m).reshape(shape)
    raise ValueError(qtype)


def load_gguf(path, check_dequant=True):
    r = gguf.GGUFReader(path)
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        fields[k] = f.contents()
    tensors, types = {}, {}
    checked = set()
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order (ne1, ne0)
        if t.tensor_type == QT.F32:
            w = np.array(t.data, dtype=np.float32).reshape(shape)
        else:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            if check_dequant and t.tensor_type not in checked:
                mine = _own_dequant(t.data, t.tensor_type, shape)
                assert np.array_equal(mine, w), f"dequant mismatch for {t.name}"
                checked.add(t.tensor_type)
        tensors[t.name] = w
        types[t.name] = t.tensor_type.name
    return Loaded(fields, tensors, types)


def rms_norm(x, w, eps):
    x = x.astype(np.float32)
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x * (1.0 / np.sqrt(ms + np.float32(eps)))).astype(np.float32) * w


def silu(x):
    return x / (np.float32(1.0) + np.exp(-x))


class LlamaRef:
    def __init__(self, g):
        f = g.fields
        a = f["general.architecture"]
        self.hp = hp = {
            "n_layer": int(f[f"{a}.block_count"]),
            "d_model": int(f[f"{a}.embedding_length"]),
            "n_head": int(f[f"{a}.attention.head_count"]),
            "n_head_kv": int(f[f"{a}.attention.head_count_kv"]),
            "d_ff": int(f[f"{a}.feed_forward_length"]),
            "rope_base": float(f[f"{a}.rope.freq_base"]),
            "rms_eps": float(f[f"{a}.attention.layer_norm_rms_epsilon"]),
            "n_vocab": int(g.tensors["token_embd.weight"].shape[0]),
            "tied_embeddings": "output.weight" not in g.tensors,
        }
        self.head_dim = hp["d_model"] // hp["n_head"]
        self.group = hp["n_head"] // hp["n_head_kv"]
        T = g.tensors
        self.emb = T["token_embd.weight"]                        # (V, d)
        self.out_w = T.get("output.weight", self.emb)             # (V, d)
        self.out_norm = T["output_norm.weight"]
        self.layers = []
        for i in range(hp["n_layer"]):
            p = f"blk.{i}."
            self.layers.append({k: T[p + k + ".weight"] for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")})
        hd = self.head_dim
        self.inv_freq = (hp["rope_base"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd))  # (hd/2,)
        self._probe = None
        self.reset()

    def reset(self):
        self.k_cache = [[] for _ in self.layers]
        self.v_cache = [[] for _ in self.layers]
        self.pos = 0

    def rope(self, x, positions):
        """x: (T, H, hd). Rotate adjacent pairs (2i, 2i+1) by pos * theta_i."""
        ang = positions[:, None].astype(np.float64) * self.inv_freq[None, :]   # (T, hd/2)
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def forward(self, ids):
        """Append ids at the current position; returns logits (T, V) f32."""
        hp = self.hp
        hd, H, Hkv = self.head_dim, hp["n_head"], hp["n_head_kv"]
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        positions = np.arange(self.pos, self.pos + T)
        x = self.emb[ids].astype(np.float32)                      # (T, d)
        self._rec("embedding", x)
        scale = np.float32(1.0 / np.sqrt(hd))
        for li, L in enumerate(self.layers):
            h = rms_norm(x, L["attn_norm"], hp["rms_eps"])
            q = (h @ L["attn_q"].T).reshape(T, H, hd)
            k = (h @ L["attn_k"].T).reshape(T, Hkv, hd)
            v = (h @ L["attn_v"].T).reshape(T, Hkv, hd)
            q = self.rope(q, positions)
            k = self.rope(k, positions)
            self.k_cache[li].append(k)
            self.v_cache[li].append(v)
            K = np.concatenate(self.k_cache[li], axis=0)          # (S, Hkv, hd)
            V = np.concatenate(self.v_cache[li], axis=0)
            S = K.shape[0]
            # causal mask: query at absolute pos p sees keys 0..p
            mask = np.arange(S)[None, :] > positions[:, None]     # (T, S)
            att_out = np.empty((T, H, hd), dtype=np.float32)
            for hh in range(H):
                kv = hh // self.group
                s = (q[:, hh, :] @ K[:, kv, :].T) * scale         # (T, S)
                s = np.where(mask, np.float32(-np.inf), s)
                s = s - s.max(axis=1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=1, keepdims=True)
                att_out[:, hh, :] = pr @ V[:, kv, :]
            x = x + att_out.reshape(T, H * hd) @ L["attn_output"].T
            h = rms_norm(x, L["ffn_norm"], hp["rms_eps"])
            ff = silu(h @ L["ffn_gate"].T) * (h @ L["ffn_up"].T)
            x = x + ff @ L["ffn_down"].T
            if li == 0:
                self._rec("after_layer0", x)
        self._rec("after_last_layer", x)
        h = rms_norm(x, self.out_norm, hp["rms_eps"])
        self._rec("final_norm", h)
        self.pos += T
        return (h @ self.out_w.T).astype(np.float32)

    def _rec(self, name, x):
        if self._probe is not None:
            self._probe[name] = x

    def probes(self, ids, n=8):
        """First n values of the residual stream at the last prompt position at a few
        points, plus a few dequantised weights. Small, for layer-by-layer debugging."""
        self._probe = {}
        self.reset()
        self.forward(ids)
        rec, self._probe = self._probe, None
        self.reset()
        out = {"position": len(ids) - 1, "n_values": n}
        for k, v in rec.items():
            out[k] = [round(float(t), 6) for t in v[-1, :n]]
        L0 = self.layers[0]
        out["weights"] = {
            "token_embd.weight[row=ids[0], :8]": [round(float(t), 7) for t in self.emb[ids[0], :n]],
            "blk.0.attn_q.weight[row 0, :8]": [round(float(t), 7) for t in L0["attn_q"][0, :n]],
            "blk.0.ffn_down.weight[row 0, :8]": [round(float(t), 7) for t in L0["ffn_down"][0, :n]],
            "blk.0.attn_norm.weight[:8]": [round(float(t), 7) for t in L0["attn_norm"][:n]],
        }
        return out
