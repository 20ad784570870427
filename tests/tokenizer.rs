//! Tokenizer behaviour on small hand-made vocabularies of both GGUF kinds.
#![cfg(not(target_arch = "wasm32"))]

use wsi::tokenizer::{ChatMessage, GgufTokenizerData, HfTokenizerConfig, StreamDecoder, Tokenizer};

/// GPT-2's byte -> char map (the byte-level alphabet).
fn byte_char(b: u8) -> char {
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        return char::from(b);
    }
    let extra = (0..b).filter(|x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)).count() as u32;
    char::from_u32(256 + extra).unwrap()
}

/// Byte-level BPE: 3 control tokens, the 256 byte chars, then merged tokens.
fn byte_level_data() -> GgufTokenizerData {
    let mut tokens: Vec<String> =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; 3];
    for b in 0..=255u8 {
        tokens.push(byte_char(b).to_string());
        types.push(1);
    }
    let merges =
        ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ t", "Ġt he", "1 2", "Ã ©"];
    for m in merges {
        let (a, b) = m.split_once(' ').unwrap();
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    GgufTokenizerData {
        model: "gpt2".into(),
        pre: Some("gpt2".into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|s| s.to_string()).collect()),
        bos_id: Some(0),
        eos_id: Some(2),
        add_bos: Some(false),
        chat_template: None,
        ..Default::default()
    }
}

fn id(tok: &Tokenizer, s: &str) -> u32 {
    tok.token_to_id(s).unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

/// SentencePiece: <unk> <s> </s>, 256 byte pieces, then scored pieces.
fn spm_data() -> GgufTokenizerData {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "t", "é", "c", "a", "f", "1", "2", "▁h", "he", "ll", "▁he", "▁hell",
        "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "ca", "caf", "▁caf", "▁café", "[INST]",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(if *p == "[INST]" { 4 } else { 1 });
        scores.push(-(i as f32));
    }
    GgufTokenizerData {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..Default::default()
    }
}

const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const SAMPLES: &[&str] = &[
    "hello world",
    "the 1234 digits 0.5",
    "café, naïve",
    "emoji 🐱🚀 and CJK 你好世界",
    "  leading and\ttabs\nnewlines  ",
    "",
];

#[test]
fn byte_level_encodes_with_merges_and_round_trips() {
    let tok = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    assert_eq!(tok.vocab_size(), 3 + 256 + 13);
    let ids = tok.encode("hello world").unwrap();
    assert_eq!(ids, vec![id(&tok, "hello"), id(&tok, "Ġworld")]);
    assert_eq!(tok.encode("é").unwrap(), vec![id(&tok, "Ã©")]);
    for s in SAMPLES {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), *s, "{ids:?}");
    }
    assert_eq!(tok.bos_id(), Some(0));
    // eos first, then <|im_end|>-style names that are control tokens.
    assert_eq!(tok.eos_ids(), &[2, 0]);
}

#[test]
fn byte_level_parses_special_tokens_in_text() {
    let tok = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    let ids = tok.encode("<|im_start|>hello<|im_end|>\n").unwrap();
    assert_eq!(ids, vec![1, id(&tok, "hello"), 2, id(&tok, "Ċ")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>hello<|im_end|>\n");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello\n");
    assert_eq!(tok.token_to_bytes(2).unwrap(), b"<|im_end|>");
    assert_eq!(tok.token_to_bytes(id(&tok, "Ġ")).unwrap(), b" ");
    assert!(tok.token_to_bytes(100_000).is_none());
    assert_eq!(tok.decode(&[100_000], false).unwrap_err().code(), "invalid_request");
}

#[test]
fn smollm_pre_tokenizer_splits_digits() {
    let mut data = byte_level_data();
    data.pre = Some("smollm".into());
    let tok = Tokenizer::from_gguf(&data).unwrap();
    // "12" is a merge, but SmolLM splits every digit first.
    assert_eq!(tok.encode("12").unwrap(), vec![id(&tok, "1"), id(&tok, "2")]);
    let gpt2 = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    assert_eq!(gpt2.encode("12").unwrap(), vec![id(&gpt2, "12")]);
    for s in SAMPLES {
        assert_eq!(tok.decode(&tok.encode(s).unwrap(), false).unwrap(), *s);
    }
}

#[test]
fn llama3_pre_tokenizer_round_trips() {
    let mut data = byte_level_data();
    data.pre = Some("llama-bpe".into());
    let tok = Tokenizer::from_gguf(&data).unwrap();
    assert_eq!(tok.encode("hello world").unwrap(), vec![id(&tok, "hello"), id(&tok, "Ġworld")]);
    for s in SAMPLES {
        assert_eq!(tok.decode(&tok.encode(s).unwrap(), false).unwrap(), *s);
    }
}

#[test]
fn bos_is_added_only_when_asked() {
    let mut data = byte_level_data();
    data.add_bos = Some(true);
    let tok = Tokenizer::from_gguf(&data).unwrap();
    assert_eq!(tok.encode("hello").unwrap(), vec![0, id(&tok, "hello")]);
    let spm = Tokenizer::from_gguf(&spm_data()).unwrap(); // llama defaults to BOS
    assert_eq!(spm.encode("hello").unwrap()[0], 1);
    let mut no_bos = spm_data();
    no_bos.add_bos = Some(false);
    let spm = Tokenizer::from_gguf(&no_bos).unwrap();
    assert_ne!(spm.encode("hello").unwrap()[0], 1);
}

#[test]
fn sentencepiece_uses_scores_byte_fallback_and_spaces() {
    let tok = Tokenizer::from_gguf(&spm_data()).unwrap();
    let ids = tok.encode("hello world").unwrap();
    assert_eq!(ids, vec![1, id(&tok, "▁hello"), id(&tok, "▁world")]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s> hello world");
    assert_eq!(tok.encode("café").unwrap(), vec![1, id(&tok, "▁café")]);
    // "ñ" is not in the vocabulary: its two UTF-8 bytes.
    let ids = tok.encode("ñ").unwrap();
    assert_eq!(ids, vec![1, id(&tok, "▁"), id(&tok, "<0xC3>"), id(&tok, "<0xB1>")]);
    for s in SAMPLES {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), *s, "{ids:?}");
    }
    // User-defined pieces are matched whole and are not special.
    let ids = tok.encode("[INST]hello").unwrap();
    assert_eq!(ids[1], id(&tok, "[INST]"));
    assert_eq!(tok.decode(&ids, true).unwrap(), "[INST] hello");
    assert_eq!(tok.encode("</s>").unwrap(), vec![1, 2]);
    assert_eq!(tok.eos_ids(), &[2]);
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = Tokenizer::from_gguf(&spm_data()).unwrap();
    let ids = tok.encode("a🐱b").unwrap();
    // BOS, ▁, a, then the emoji as four byte pieces, then b.
    let mut dec = StreamDecoder::new();
    let mut pieces = Vec::new();
    for &i in &ids {
        let p = dec.push(&tok, i).unwrap();
        assert!(!p.contains('\u{FFFD}'), "{p:?}");
        pieces.push(p);
    }
    pieces.push(dec.finish(&tok).unwrap());
    assert_eq!(dec.text(), " a🐱b");
    assert!(pieces.contains(&"🐱".to_string()), "{pieces:?}");
    assert_eq!(pieces.iter().filter(|p| p.is_empty()).count(), 1 + 3 + 1); // BOS, 3 held bytes, finish

    let bl = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    let ids = bl.encode("<|im_start|>x🚀你").unwrap();
    let mut dec = StreamDecoder::new();
    for &i in &ids {
        assert!(!dec.push(&bl, i).unwrap().contains('\u{FFFD}'));
    }
    assert_eq!(dec.text(), "x🚀你");
    let mut dec = StreamDecoder::new().keep_special(true);
    for &i in &ids {
        dec.push(&bl, i).unwrap();
    }
    assert_eq!(dec.text(), "<|im_start|>x🚀你");
    // A truncated character comes out as U+FFFD only at the end.
    let mut dec = StreamDecoder::new();
    assert_eq!(dec.push(&bl, id(&bl, "Ã")).unwrap(), "");
    assert_eq!(dec.finish(&bl).unwrap(), "\u{FFFD}");
}

#[test]
fn chat_templates_render() {
    let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "hi")];
    let mut data = byte_level_data();
    data.chat_template = Some(CHATML_TEMPLATE.into());
    let tok = Tokenizer::from_gguf(&data).unwrap();
    assert_eq!(tok.chat_template(), Some(CHATML_TEMPLATE));
    let want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(tok.apply_chat_template(&msgs, true).unwrap(), want);
    let without = tok.apply_chat_template(&msgs, false).unwrap();
    assert_eq!(without, want.trim_end_matches("<|im_start|>assistant\n"));
    // The rendered prompt encodes with the specials as single ids.
    let ids = tok.encode(&without).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);

    // No template: ChatML fallback.
    let plain = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    assert_eq!(plain.chat_template(), None);
    assert_eq!(plain.apply_chat_template(&msgs, true).unwrap(), want);

    // bos_token / eos_token variables and raise_exception.
    let mut data = spm_data();
    data.chat_template = Some(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}[INST] {{ m.content }} [/INST]{{ eos_token }}{% endfor %}".into(),
    );
    let tok = Tokenizer::from_gguf(&data).unwrap();
    let out = tok.apply_chat_template(&msgs[1..], false).unwrap();
    assert_eq!(out, "<s>[INST] hi [/INST]</s>");
    let err = tok.apply_chat_template(&msgs, false).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("no system role"));
}

#[test]
fn hf_json_round_trips() {
    for data in [byte_level_data(), spm_data(), {
        let mut d = byte_level_data();
        d.pre = Some("smollm".into());
        d.chat_template = Some(CHATML_TEMPLATE.into());
        d
    }] {
        let tok = Tokenizer::from_gguf(&data).unwrap();
        let json = tok.to_hf_json().unwrap();
        let back = Tokenizer::from_hf_json(json.as_bytes(), &tok.hf_config()).unwrap();
        assert_eq!(back.vocab_size(), tok.vocab_size());
        assert_eq!(back.bos_id(), tok.bos_id());
        assert_eq!(back.eos_ids(), tok.eos_ids());
        assert_eq!(back.chat_template(), tok.chat_template());
        assert_eq!(back.to_hf_json().unwrap(), json);
        for s in SAMPLES.iter().chain(&["<|im_start|>hi<|im_end|>", "</s>[INST]x"]) {
            let ids = tok.encode(s).unwrap();
            assert_eq!(back.encode(s).unwrap(), ids, "{s:?}");
            assert_eq!(back.decode(&ids, false).unwrap(), tok.decode(&ids, false).unwrap());
            assert_eq!(back.decode(&ids, true).unwrap(), tok.decode(&ids, true).unwrap());
        }
        // Without a config the tokenizer.json alone still says whether BOS is added.
        let bare = Tokenizer::from_hf_json(json.as_bytes(), &HfTokenizerConfig::default()).unwrap();
        assert_eq!(bare.encode("hello").unwrap(), tok.encode("hello").unwrap());
    }
}

#[test]
fn hf_config_controls_bos() {
    let tok = Tokenizer::from_gguf(&byte_level_data()).unwrap();
    let json = tok.to_hf_json().unwrap();
    let cfg = HfTokenizerConfig {
        bos_token: Some("<|endoftext|>".into()),
        eos_token: Some("<|im_end|>".into()),
        add_bos_token: Some(true),
        ..Default::default()
    };
    let with_bos = Tokenizer::from_hf_json(json.as_bytes(), &cfg).unwrap();
    assert_eq!(with_bos.encode("hello").unwrap(), vec![0, id(&tok, "hello")]);
    assert_eq!(with_bos.eos_ids(), &[2, 0]);
    let back =
        Tokenizer::from_hf_json(with_bos.to_hf_json().unwrap().as_bytes(), &HfTokenizerConfig::default()).unwrap();
    assert_eq!(back.encode("hello").unwrap(), vec![0, id(&tok, "hello")]);
    let cfg = HfTokenizerConfig { add_bos_token: Some(false), bos_token_id: Some(0), ..Default::default() };
    let without = Tokenizer::from_hf_json(with_bos.to_hf_json().unwrap().as_bytes(), &cfg).unwrap();
    assert_eq!(without.encode("hello").unwrap(), vec![id(&tok, "hello")]);

    let bad = HfTokenizerConfig { bos_token: Some("<nope>".into()), ..Default::default() };
    let err = Tokenizer::from_hf_json(json.as_bytes(), &bad).unwrap_err();
    assert_eq!(err.code(), "model_loading_error");
    assert_eq!(Tokenizer::from_hf_json(b"{not json", &cfg).unwrap_err().code(), "model_loading_error");
}

#[test]
fn bad_data_is_a_model_error() {
    let mut data = byte_level_data();
    data.merges.as_mut().unwrap().push("Ġ zzz".into());
    let err = Tokenizer::from_gguf(&data).unwrap_err();
    assert_eq!(err.code(), "model_loading_error");
    assert!(err.to_string().contains("zzz"), "{err}");

    let mut data = byte_level_data();
    data.merges.as_mut().unwrap().push("nospace".into());
    assert_eq!(Tokenizer::from_gguf(&data).unwrap_err().code(), "model_loading_error");

    let mut data = byte_level_data();
    data.merges = None;
    assert_eq!(Tokenizer::from_gguf(&data).unwrap_err().code(), "model_loading_error");

    for model in ["gpt2", "llama"] {
        let empty = GgufTokenizerData { model: model.into(), merges: Some(vec![]), ..Default::default() };
        let err = Tokenizer::from_gguf(&empty).unwrap_err();
        assert_eq!(err.code(), "model_loading_error");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    let mut data = spm_data();
    data.scores.as_mut().unwrap().pop();
    assert_eq!(Tokenizer::from_gguf(&data).unwrap_err().code(), "model_loading_error");

    let mut data = spm_data();
    data.eos_id = Some(1_000_000);
    assert_eq!(Tokenizer::from_gguf(&data).unwrap_err().code(), "model_loading_error");
}
