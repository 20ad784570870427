"""Build a HF `tokenizers` byte-level BPE tokenizer from GGUF metadata."""

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

TOKEN_TYPE_CONTROL = 3


def build_tokenizer(fields):
    model = fields["tokenizer.ggml.model"]
    if model != "gpt2":
        raise SystemExit(f"unsupported tokenizer.ggml.model {model!r} (only byte-level BPE 'gpt2')")
    pre = fields.get("tokenizer.ggml.pre", "default")
    tokens = list(fields["tokenizer.ggml.tokens"])
    ttypes = list(fields["tokenizer.ggml.token_type"])
    merges = []
    for m in fields["tokenizer.ggml.merges"]:
        a, b = m.split(" ")
        merges.append((a, b))
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in vocab"

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    if pre == "smollm":
        # HF SmolLM2 tokenizer.json: Sequence[Digits(individual), ByteLevel(no prefix
        # space, GPT-2 regex)]; llama.cpp's "smollm" pre-type uses the same pair of regexes.
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre in ("gpt2", "default"):
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise SystemExit(f"unsupported tokenizer.ggml.pre {pre!r}")
    tk.decoder = decoders.ByteLevel()

    specials = [tokens[i] for i, t in enumerate(ttypes) if t == TOKEN_TYPE_CONTROL]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    # sanity: added tokens must keep their GGUF ids
    for s in specials:
        assert tk.token_to_id(s) == vocab[s], s

    def tid(key):
        v = fields.get(key)
        return int(v) if v is not None else None

    info = {
        "model": model,
        "pre": pre,
        "n_vocab": len(tokens),
        "n_merges": len(merges),
        "bos_token_id": tid("tokenizer.ggml.bos_token_id"),
        "eos_token_id": tid("tokenizer.ggml.eos_token_id"),
        "unknown_token_id": tid("tokenizer.ggml.unknown_token_id"),
        "padding_token_id": tid("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        "add_space_prefix": bool(fields.get("tokenizer.ggml.add_space_prefix", False)),
        "control_tokens": {s: vocab[s] for s in specials},
    }
    if info["add_bos_token"]:
        raise SystemExit("add_bos_token=true not handled by this reference")
    return tk, info
