"""Residual-stream rotation (QuaRot/SpinQuant style), exact in fp32."""
import numpy as np


def hadamard_pow2(n):
    H = np.array([[1.0]])
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    assert H.shape[0] == n
    return H


def hadamard12():
    q = 11
    sq = {(i * i) % q for i in range(1, q)}
    chi = lambda a: 0 if a % q == 0 else (1 if a % q in sq else -1)
    Qm = np.array([[chi(j - i) for j in range(q)] for i in range(q)], float)
    S = np.zeros((12, 12)); S[0, 1:] = 1; S[1:, 0] = -1; S[1:, 1:] = Qm
    H = np.eye(12) + S
    assert np.allclose(H @ H.T, 12 * np.eye(12))
    return H


def random_orth(n, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    Qm, R = np.linalg.qr(A)
    return Qm * np.sign(np.diag(R))[None, :]


def make_Q(kind, d=576, seed=0):
    """Orthogonal (d, d) float64."""
    if kind == "random":
        return random_orth(d, seed)
    if kind == "had64_x_rand9":
        return np.kron(hadamard_pow2(64) / 8.0, random_orth(9, seed))
    if kind == "hadamard":                     # H4 (x) H12 (x) H12 / 24 (a true Hadamard of order 576)
        H = np.kron(np.kron(hadamard_pow2(4), hadamard12()), hadamard12())
        return H / np.sqrt(d)
    if kind == "rand_hadamard":                # diag(random signs) @ Hadamard576 (QuaRot)
        rng = np.random.default_rng(seed)
        s = rng.choice([-1.0, 1.0], size=d)
        H = np.kron(np.kron(hadamard_pow2(4), hadamard12()), hadamard12()) / np.sqrt(d)
        return s[:, None] * H
    raise ValueError(kind)


def fold_norms(m):
    """Fold RMSNorm weights into the matrices reading them; returns a new model dict with an
    untied head (head * out_norm) and norm weights None (=1)."""
    r = {"emb": m["emb"], "head": (m["head"] * m["out_norm"][None, :]).astype(np.float32),
         "out_norm": None, "layers": []}
    for L in m["layers"]:
        L2 = dict(L)
        for k in ("attn_q", "attn_k", "attn_v"):
            L2[k] = (L[k] * L["attn_norm"][None, :]).astype(np.float32)
        for k in ("ffn_gate", "ffn_up"):
            L2[k] = (L[k] * L["ffn_norm"][None, :]).astype(np.float32)
        L2["attn_norm"] = None; L2["ffn_norm"] = None
        r["layers"].append(L2)
    return r


def rotate(m, Q):
    """m must be norm-folded. Q (d, d) orthogonal. Residual r -> r Q."""
    Q64 = Q.astype(np.float64)
    f = lambda a: a.astype(np.float32)
    r = {"emb": f(m["emb"].astype(np.float64) @ Q64), "head": f(m["head"].astype(np.float64) @ Q64),
         "out_norm": None, "layers": []}
    for L in m["layers"]:
        L2 = dict(L)
        for k in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
            L2[k] = f(L[k].astype(np.float64) @ Q64)
        for k in ("attn_output", "ffn_down"):
            L2[k] = f(Q64.T @ L[k].astype(np.float64))
        r["layers"].append(L2)
    return r


def rotate_vo(m, hp, R):
    """Per-kv-head rotation of V rows (R @ Wv_block) and matching attn_output columns
    (Wo[:, head block] @ R.T) for every query head of that kv group. R (hd, hd) orthogonal."""
    hd, H, Hkv = hp["hd"], hp["H"], hp["Hkv"]
    grp = H // Hkv
    R = R.astype(np.float64)
    r = dict(m); r["layers"] = []
    for L in m["layers"]:
        L2 = dict(L)
        V = L["attn_v"].astype(np.float64).copy()
        O = L["attn_output"].astype(np.float64).copy()
        for k in range(Hkv):
            V[k * hd:(k + 1) * hd] = R @ V[k * hd:(k + 1) * hd]
            for h in range(k * grp, (k + 1) * grp):
                O[:, h * hd:(h + 1) * hd] = O[:, h * hd:(h + 1) * hd] @ R.T
        L2["attn_v"] = V.astype(np.float32); L2["attn_output"] = O.astype(np.float32)
        r["layers"].append(L2)
    return r
