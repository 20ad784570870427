import numpy as np
from common import *
from rotate import *
hp, W, fields = load()
m = model_from(hp, W)
ids = eval_ids(fields)["gpl3"][:128]
a = forward(hp, m, ids)
for kind in ("random", "had64_x_rand9", "hadamard", "rand_hadamard"):
    Q = make_Q(kind, seed=0)
    print(kind, "orth err", np.abs(Q @ Q.T - np.eye(576)).max())
    r = rotate(fold_norms(m), Q)
    r = rotate_vo(r, hp, hadamard_pow2(64) / 8)
    b = forward(hp, r, ids)
    print("  max rel logit diff", np.abs(a - b).max() / np.abs(a).max(), "max abs", np.abs(a - b).max())
