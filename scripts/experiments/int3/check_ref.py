import time, numpy as np
from common import *
hp, W, fields = load()
print(hp)
ids = eval_ids(fields)
print({k: len(v) for k, v in ids.items()}, "calib", len(encode(fields, calibration_text())))
print(repr(calibration_text()[:120]), repr(calibration_text()[-60:]))
m = model_from(hp, W)
from model_ref import load_gguf, LlamaRef
class G: pass
g = G(); g.fields = fields; g.tensors = W
ref = LlamaRef(g)
t = time.time(); a = ref.forward(ids["gpl3"][:64]); print("ref", time.time() - t)
t = time.time(); b = forward(hp, m, ids["gpl3"][:64]); print("mine", time.time() - t)
print("max rel diff", np.abs(a - b).max() / np.abs(a).max())
t = time.time(); r = evaluate(hp, m, fields); print("eval", time.time() - t)
print(fmt(r))
bos = fields.get("tokenizer.ggml.bos_token_id"); print("bos", bos)
ids2 = [int(bos)] + ids["gpl3"][:511]
s, c = nll(hp, m, ids2); print("with BOS gpl3", np.exp(s / c))
