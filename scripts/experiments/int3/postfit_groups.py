"""Variant 1: keep the int3 codes, refit every row's 2G group parameters (d, m) by linear least
squares against the full input second moment H = E[x x^T] (fp calibration inputs):
    min_theta (w - A theta)^T (H + lam I) (w - A theta),  lam = damp * mean diag H.
Optionally alternate: re-round codes with the new (d, m) (nearest), refit, `rounds` times.
usage: python3 postfit_groups.py DAMP[,DAMP...] [ROUNDS] [base] [diag]   ('base' also evaluates the baseline;
'diag': ridge damp*diag(H) instead of damp*mean(diag H)*I)"""
import sys
from postfit_common import *


def refit_groups(Wm, qm, H, damp, chunk=96, diag=False):
    """Wm (R, C) target; qm QMat (codes kept); H (C, C) f64. Returns a new QMat (f16 d, m)."""
    R, C = Wm.shape
    G = C // GS
    # ridge lam*I (default) or, with diag, damp*diag(H) (limit = the diagonal-weighted fit)
    Hd = H + (damp * np.diag(np.diag(H)) if diag else damp * np.mean(np.diag(H)) * np.eye(C))
    Hb = Hd.reshape(G, GS, G, GS)
    M11 = Hb.sum(axis=(1, 3))
    Hw = (Wm.astype(np.float64) @ Hd).reshape(R, G, GS)
    d_new = np.empty((R, G)); m_new = np.empty((R, G))
    for a in range(0, R, chunk):
        b = min(a + chunk, R)
        Z = qm.q[a:b].astype(np.float64)                       # (r, G, GS)
        T = np.matmul(Z.transpose(1, 0, 2), Hb.reshape(G, GS, C))             # (G, r, C) via BLAS
        T = T.reshape(G, b - a, G, GS).transpose(1, 0, 2, 3)                  # (r, G, G, GS)
        Mqq = np.einsum('rghj,rhj->rgh', T, Z)
        Mq1 = T.sum(-1)
        M = np.empty((b - a, 2 * G, 2 * G))
        M[:, :G, :G] = Mqq; M[:, :G, G:] = Mq1
        M[:, G:, :G] = Mq1.transpose(0, 2, 1); M[:, G:, G:] = M11
        rhs = np.concatenate([(Z * Hw[a:b]).sum(-1), Hw[a:b].sum(-1)], axis=1)
        th0 = np.concatenate([qm.d[a:b, :, 0], qm.m[a:b, :, 0]], axis=1).astype(np.float64)
        eps = 1e-6 * np.einsum('rii->r', M)[:, None, None] / (2 * G)    # tiny ridge toward old (d, m)
        M += eps * np.eye(2 * G)[None]
        rhs += eps[:, :, 0] * th0
        th = np.linalg.solve(M, rhs[..., None])[..., 0]
        d_new[a:b] = th[:, :G]; m_new[a:b] = th[:, G:]
    return QMat(qm.q, F16(d_new)[..., None], F16(m_new)[..., None])


def reround(Wm, qm):
    R, C = Wm.shape
    xg = Wm.reshape(R, C // GS, GS)
    d, m = qm.d, qm.m
    safe = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.rint((xg - m) / safe), 0, 7)
    q = np.where(d == 0, np.float32(0), q).astype(np.float32)
    return QMat(q, d, m)


def out_err(Wm, qm, H):
    E = Wm.astype(np.float64) - qm.deq()
    return np.einsum('rc,cd,rd->', E, H, E) / np.einsum('rc,cd,rd->', Wm.astype(np.float64), H, Wm.astype(np.float64))


def postfit_all(Q0, rec, damp, rounds=0, report=True, diag=False):
    Q = {}
    e0 = e1 = 0.0
    for li in range(hp["n_layer"]):
        Hs = {key: hess(rec[li][key]) for key in ("qkv", "o", "gate_up", "down")}
        for k in MATS:
            Wm = BASE["layers"][li][k]; H = Hs[IMP_KEY[k]]
            qm = refit_groups(Wm, Q0[(li, k)], H, damp, diag=diag)
            for _ in range(rounds):
                qm = refit_groups(Wm, reround(Wm, qm), H, damp, diag=diag)
            Q[(li, k)] = qm
            if report and li in (0, 15, 29):
                a, b = out_err(Wm, Q0[(li, k)], H), out_err(Wm, qm, H)
                print(f"  L{li} {k}: calib rel out err {a:.5f} -> {b:.5f}", flush=True)
    return Q


if __name__ == "__main__":
    damps = [float(x) for x in sys.argv[1].split(",")]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    diag = "diag" in sys.argv[3:]
    t = time.time()
    ids, rec, imp = calib()
    Q0 = quant_all(imp)
    setup = time.time() - t
    print(f"setup {setup:.1f}s", flush=True)
    if "base" in sys.argv[3:]:
        run_eval("check: int3 baseline refined calibrated (postfit harness)", Q0, t)
    for dmp in damps:
        t1 = time.time() - setup
        Q = postfit_all(Q0, rec, dmp, rounds, diag=diag)
        run_eval(f"postfit groups: (d,m) LS refit vs full H, damp={dmp}" + (" x diag(H)" if diag else "") + (f", {rounds} re-round rounds" if rounds else ""), Q, t1)
