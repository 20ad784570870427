#!/usr/bin/env python3
"""Independent f32 reference for SmolLM2-135M-Instruct.Q4_1.gguf -> golden fixtures.

Uses only PyPI gguf + numpy + tokenizers + jinja2 (no torch, no llama.cpp, no crate
code): reads the GGUF, dequantises every tensor to f32, builds the byte-level BPE
tokenizer from the GGUF metadata, and runs the llama forward pass with a KV cache.

(Re)generate the fixtures from the repo root:

    bash scripts/fetch-model.sh                       # -> models/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 -m venv .venv
    .venv/bin/pip install -r scripts/reference/requirements.txt
    .venv/bin/python scripts/reference/golden.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/fixtures/golden_smollm2.json

Takes well under a minute on 2 CPU cores (about 1.3 GB RAM for the f32 weights).
Set OMP_NUM_THREADS/OPENBLAS_NUM_THREADS to limit BLAS threads on a shared box.

Conventions worth knowing (they are what a from-scratch implementation gets wrong):
  * numpy shape of a GGUF 2-D tensor is (ne1, ne0) = (out_features, in_features),
    so y = W @ x.
  * GGUF llama files store Q/K rows permuted relative to HF so that RoPE rotates
    ADJACENT pairs (2i, 2i+1) inside each head, theta_i = base^(-2i/head_dim).
  * no output.weight in this file: lm_head is tied to token_embd.
  * GQA: query head h uses kv head h // (n_head / n_head_kv).

Using the fixture: greedy_margins[i] is the top1-top2 logit gap at greedy step i. Some
are tiny (0.02 at step 2 of the cat prompt, 0.05 at step 0 of the 1492 prompt), so an
implementation with another summation order / f16 may legitimately diverge there.
Robust check: teacher-force the fixture's greedy_ids and require argmax agreement only
at steps whose margin exceeds your tolerance; compare top10 logits with an abs tol.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from model_ref import LlamaRef, load_gguf  # noqa: E402
from tokenizer_ref import build_tokenizer  # noqa: E402

PROMPTS = [
    "Once upon a time, there was a little cat named",
    "The capital of France is",
    "def fibonacci(n):",
    "In 1492, Columbus sailed \u2014 caf\u00e9 \u2713",
]
SANITY_PROMPT = PROMPTS[0]
SANITY_EXPECT = " Max who lived in a big, beautiful house."
N_GREEDY = 32
N_CHAT = 16
LOGIT_IDS = [0, 1, 2, 3, 17, 100, 500, 1000, 2000, 4000, 8000, 12000, 16000,
             20000, 25000, 30000, 35000, 40000, 45000, 49151]
NLL_TEXT = ("The sun rose slowly over the quiet village. Children ran to the river, "
            "laughing as they splashed in the cold water, while their parents "
            "prepared breakfast and talked about the harvest.")
CHAT_MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def r6(x):
    return round(float(x), 6)


def top_k(logits, k=10):
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), r6(logits[i])] for i in idx]


def greedy(model, ids, n):
    """Prefill ids, then greedy-decode n tokens. Returns (next-token logits after the
    prompt, generated ids, top1-top2 logit gap at each greedy step)."""
    model.reset()
    logits = model.forward(ids)[-1]
    first = logits.copy()
    out, margins = [], []
    for _ in range(n):
        nxt = int(np.argmax(logits))
        out.append(nxt)
        top2 = np.partition(logits, -2)[-2:]
        margins.append(round(float(top2[1] - top2[0]), 4))
        logits = model.forward([nxt])[-1]
    return first, out, margins


def main():
    ap = argparse.ArgumentParser()
    root = os.path.abspath(os.path.join(HERE, "..", ".."))
    ap.add_argument("--model", default=os.path.join(root, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "golden_smollm2.json"))
    args = ap.parse_args()

    t0 = time.time()
    g = load_gguf(args.model)
    t_load = time.time() - t0
    tok, tokinfo = build_tokenizer(g.fields)
    model = LlamaRef(g)
    hp = model.hp
    print(f"loaded+dequantised in {t_load:.1f}s: {hp}", file=sys.stderr)

    eos = tokinfo["eos_token_id"]

    def dec(ids):
        return tok.decode(ids, skip_special_tokens=False)

    fixture = {
        "model": {
            "file": os.path.basename(args.model),
            "sha256": sha256_file(args.model),
            "size": os.path.getsize(args.model),
        },
        "generator": {
            "script": "scripts/reference/golden.py",
            "precision": "f32 numpy, weights dequantised from the GGUF",
            "versions": {},
        },
        "hparams": hp,
        "tokenizer": tokinfo,
        "prompts": [],
    }
    import gguf, tokenizers, jinja2  # noqa: E401
    fixture["generator"]["versions"] = {
        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "?",
        "numpy": np.__version__, "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
    }

    # --- prompts
    for p in PROMPTS:
        t = time.time()
        ids = tok.encode(p).ids
        assert dec(ids) == p, (p, dec(ids))
        first, gen, margins = greedy(model, ids, N_GREEDY)
        entry = {
            "prompt": p,
            "prompt_token_ids": ids,
            "prompt_tokens": tok.encode(p).tokens,
            "top10": top_k(first),
            "greedy_ids": gen,
            "greedy_text": dec(gen),
            "greedy_margins": margins,
            "eos_in_greedy": eos in gen,
            "eos_index": gen.index(eos) if eos in gen else None,
            "endoftext_in_greedy": 0 in gen,
        }
        if p == SANITY_PROMPT:
            entry["logits_sample"] = {
                "ids": LOGIT_IDS,
                "logits": [r6(first[i]) for i in LOGIT_IDS],
            }
            # small intermediate probes for debugging an implementation layer by layer
            entry["probes"] = model.probes(ids)
        fixture["prompts"].append(entry)
        print(f"[{time.time()-t:.1f}s] {p!r} -> {entry['greedy_text']!r}", file=sys.stderr)

    # --- sanity check against transformers' f32 reference
    s = fixture["prompts"][0]["greedy_text"]
    fixture["sanity"] = {
        "prompt": SANITY_PROMPT,
        "expected_prefix_transformers_f32": SANITY_EXPECT,
        "matches": s.startswith(SANITY_EXPECT),
    }
    if not s.startswith(SANITY_EXPECT):
        exp_ids = tok.encode(SANITY_EXPECT).ids
        got = fixture["prompts"][0]["greedy_ids"]
        n = 0
        while n < len(exp_ids) and n < len(got) and exp_ids[n] == got[n]:
            n += 1
        fixture["sanity"]["matching_prefix_tokens"] = n
        print(f"WARNING: sanity mismatch, {n} tokens agree", file=sys.stderr)

    # --- perplexity check
    t = time.time()
    nll_ids = tok.encode(NLL_TEXT).ids
    model.reset()
    logits = model.forward(nll_ids)  # (T, V)
    lg = logits[:-1].astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
    tgt = np.array(nll_ids[1:])
    nll = lse - lg[np.arange(len(tgt)), tgt]
    fixture["nll"] = {
        "text": NLL_TEXT,
        "token_ids": nll_ids,
        "scored_tokens": len(tgt),
        "mean_nll": round(float(nll.mean()), 6),
        "perplexity": round(float(math.exp(nll.mean())), 6),
        "note": "natural-log NLL of token t given tokens < t, t = 1..T-1 (first token not scored), one prefill pass",
    }
    print(f"[{time.time()-t:.1f}s] mean_nll={nll.mean():.4f} ppl={math.exp(nll.mean()):.3f}", file=sys.stderr)

    # --- chat template
    t = time.time()
    rendered = render_chat(g.fields, CHAT_MESSAGES, tokinfo)
    chat_ids = tok.encode(rendered).ids  # special tokens in the text are parsed
    first, gen, margins = greedy(model, chat_ids, N_CHAT)
    fixture["chat"] = {
        "messages": CHAT_MESSAGES,
        "add_generation_prompt": True,
        "rendered": rendered,
        "token_ids": chat_ids,
        "top10": top_k(first),
        "greedy_ids": gen,
        "greedy_text": dec(gen),
        "greedy_margins": margins,
        "eos_in_greedy": eos in gen,
        "eos_index": gen.index(eos) if eos in gen else None,
    }
    print(f"[{time.time()-t:.1f}s] chat -> {fixture['chat']['greedy_text']!r}", file=sys.stderr)

    fixture["generator"]["seconds"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time()-t0:.1f}s", file=sys.stderr)
    if not fixture["sanity"]["matches"]:
        print("NOTE: greedy continuation differs from the transformers f32 reference", file=sys.stderr)


def render_chat(fields, messages, tokinfo):
    import jinja2
    toks = fields["tokenizer.ggml.tokens"]
    src = fields["tokenizer.chat_template"]
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
    return env.from_string(src).render(messages=messages, add_generation_prompt=True,
                                       bos_token=toks[tokinfo["bos_token_id"]],
                                       eos_token=toks[tokinfo["eos_token_id"]])


if __name__ == "__main__":
    main()
