//! Tokenizer from GGUF metadata: byte-level BPE ("gpt2") and SentencePiece ("llama").

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{DecodeKind, GgufTokenizerData, Tokenizer};
use crate::error::{Error, Result};

/// GGUF `token_type` values (llama.cpp `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// Llama 3's split: numbers in groups of up to three digits.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tk_err(what: &str) -> impl FnOnce(tokenizers::Error) -> Error + '_ {
    move |e| Error::model(format!("tokenizer: {what}: {e}"))
}

/// Build a [`Tokenizer`] from GGUF metadata.
pub(super) fn build(data: &GgufTokenizerData) -> Result<Tokenizer> {
    let n = data.tokens.len();
    if n == 0 {
        return Err(Error::model("tokenizer: empty vocabulary (tokenizer.ggml.tokens)"));
    }
    if u32::try_from(n).is_err() {
        return Err(Error::model(format!("tokenizer: vocabulary of {n} tokens is too large")));
    }
    if let Some(s) = &data.scores
        && s.len() != n
    {
        return Err(Error::model(format!("tokenizer: {} scores for {n} tokens", s.len())));
    }
    let types: Vec<i32> = match &data.token_types {
        Some(t) if t.len() != n => {
            return Err(Error::model(format!("tokenizer: {} token types for {n} tokens", t.len())));
        }
        Some(t) => t.clone(),
        None => vec![TYPE_NORMAL; n],
    };
    for (what, id) in
        [("bos", data.bos_id), ("eos", data.eos_id), ("unk", data.unk_id), ("eot", data.eot_id), ("eom", data.eom_id)]
    {
        if let Some(id) = id
            && id as usize >= n
        {
            return Err(Error::model(format!("tokenizer: {what} id {id} is outside the vocabulary of {n}")));
        }
    }

    let mut vocab = Vocab::with_capacity(n);
    for (id, tok) in data.tokens.iter().enumerate() {
        // The first id of a duplicated string wins, as in llama.cpp's lookup.
        vocab.entry(tok.clone()).or_insert(id as u32);
    }

    let (mut inner, kind, default_add_bos) = match data.model.as_str() {
        "gpt2" => (byte_level(data, vocab)?, DecodeKind::ByteLevel, false),
        "llama" => {
            let prefix = data.add_space_prefix.unwrap_or(true);
            (sentencepiece(data, &types, vocab, prefix)?, DecodeKind::SentencePiece { strip_prefix: prefix }, true)
        }
        other => {
            return Err(Error::model(format!(
                "tokenizer: unsupported tokenizer.ggml.model {other:?} (expected \"gpt2\" or \"llama\")"
            )));
        }
    };

    // Control and unknown tokens are special; user-defined ones are matched in the text
    // like specials but render as text (llama.cpp prints them even without `special`).
    let added: Vec<AddedToken> = data
        .tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| matches!(**t, TYPE_CONTROL | TYPE_UNKNOWN | TYPE_USER_DEFINED))
        .filter(|(tok, _)| !tok.is_empty())
        .map(|(tok, &t)| AddedToken::from(tok.clone(), t != TYPE_USER_DEFINED).normalized(false))
        .collect();
    inner.add_special_tokens(&added);

    let add_bos = data.add_bos.unwrap_or(default_add_bos) && data.bos_id.is_some();
    let add_eos = data.add_eos.unwrap_or(false) && data.eos_id.is_some();
    if add_bos || add_eos {
        let name = |id: Option<u32>| id.and_then(|id| data.tokens.get(id as usize)).cloned().unwrap_or_default();
        let (bos, eos) = (name(data.bos_id), name(data.eos_id));
        let mut pieces: Vec<String> = Vec::new();
        let mut specials: Vec<(String, u32)> = Vec::new();
        if let (true, Some(id)) = (add_bos, data.bos_id) {
            pieces.push(bos.clone());
            specials.push((bos, id));
        }
        pieces.push("$A".into());
        if let (true, Some(id)) = (add_eos, data.eos_id) {
            pieces.push(eos.clone());
            if !specials.iter().any(|(s, _)| *s == eos) {
                specials.push((eos, id));
            }
        }
        let post = template_processor(&pieces, specials)?;
        inner.with_post_processor(Some(post));
    }

    let eos = [data.eos_id, data.eot_id, data.eom_id].into_iter().flatten();
    Tokenizer::assemble(inner, kind, data.bos_id, eos, add_bos, data.chat_template.clone())
}

/// `bos $A eos` as a post-processor (single sequences; pairs repeat it).
pub(super) fn template_processor(pieces: &[String], specials: Vec<(String, u32)>) -> Result<TemplateProcessing> {
    if pieces.iter().any(|p| p.split_whitespace().count() != 1) {
        return Err(Error::model(format!("tokenizer: special token names {pieces:?} cannot go into a template")));
    }
    let single = pieces.join(" ");
    let pair = format!("{single} {}", single.replace("$A", "$B"));
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| Error::model(format!("tokenizer: template {single:?}: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::model(format!("tokenizer: template {single:?}: {e}")))
}

/// Byte-level BPE: merges from `tokenizer.ggml.merges`, pre-tokenizer by `pre`.
fn byte_level(data: &GgufTokenizerData, vocab: Vocab) -> Result<tokenizers::Tokenizer> {
    let merge_lines =
        data.merges.as_ref().ok_or_else(|| Error::model("tokenizer: byte-level BPE without tokenizer.ggml.merges"))?;
    let mut merges = Vec::with_capacity(merge_lines.len());
    for (i, line) in merge_lines.iter().enumerate() {
        let (a, b) = line
            .split_once(' ')
            .ok_or_else(|| Error::model(format!("tokenizer: merge {i} {line:?} is not \"left right\"")))?;
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(Error::model(format!(
                    "tokenizer: merge {i} {line:?} names {part:?}, which is not in the vocabulary"
                )));
            }
        }
        if !vocab.contains_key(&format!("{a}{b}")) {
            return Err(Error::model(format!(
                "tokenizer: merge {i} {line:?} makes {:?}, which is not in the vocabulary",
                format!("{a}{b}")
            )));
        }
        merges.push((a.to_owned(), b.to_owned()));
    }
    let pre = data.pre.as_deref().unwrap_or("default");
    let llama3 = matches!(pre, "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" | "falcon3");
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build()
        .map_err(tk_err("byte-level BPE"))?;

    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(tk_err("pre-tokenizer regex"))?
            .into())
    };
    let bytes_only: PreTokenizerWrapper = ByteLevel::new(false, true, false).into();
    // `ByteLevel(use_regex = true)` applies GPT-2's split, the default for unknown names.
    let pre_tok: PreTokenizerWrapper = match pre {
        // StarCoder family (SmolLM, SmolLM2): each digit alone, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            PreSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        _ if llama3 => PreSequence::new(vec![split(LLAMA3_REGEX)?, bytes_only]).into(),
        "qwen2" | "deepseek-r1-qwen" => PreSequence::new(vec![split(QWEN2_REGEX)?, bytes_only]).into(),
        "gpt2" | "default" | "gpt-2" => ByteLevel::new(false, true, true).into(),
        other => {
            log::warn!("tokenizer: unknown pre-tokenizer {other:?}, using GPT-2's split");
            ByteLevel::new(false, true, true).into()
        }
    };

    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(DecoderWrapper::from(tokenizers::decoders::byte_level::ByteLevel::default())));
    Ok(tok)
}

/// SentencePiece BPE as a `tokenizers` BPE: merges derived from the scores (a pair merges
/// with the priority of the piece it makes), byte fallback through `<0xNN>` pieces.
fn sentencepiece(
    data: &GgufTokenizerData,
    types: &[i32],
    vocab: Vocab,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let tokens = &data.tokens;
    let score = |id: usize| -> f32 { data.scores.as_ref().and_then(|s| s.get(id).copied()).unwrap_or(-(id as f32)) };
    let normal = |id: u32| types.get(id as usize).copied() == Some(TYPE_NORMAL);
    // (merged id, left id, right id) for every split of every normal piece into two.
    let mut pairs: Vec<(u32, u32, u32)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if !normal(id as u32) {
            continue;
        }
        for (cut, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r))
                && normal(li)
                && normal(ri)
            {
                pairs.push((id as u32, li, ri));
            }
        }
    }
    pairs.sort_by(|a, b| {
        score(b.0 as usize).total_cmp(&score(a.0 as usize)).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    });
    let merges: Vec<(String, String)> =
        pairs.iter().map(|&(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect();

    let has_bytes = (0..=255u8).all(|b| vocab.contains_key(&format!("<0x{b:02X}>")));
    if !has_bytes && types.contains(&TYPE_BYTE) {
        log::warn!("tokenizer: SentencePiece vocabulary has only some <0xNN> pieces; no byte fallback");
    }
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(has_bytes).fuse_unk(true);
    if let Some(unk) = data.unk_id.and_then(|id| tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let model = builder.build().map_err(tk_err("SentencePiece BPE"))?;

    let mut tok = tokenizers::Tokenizer::new(model);
    let replace = Replace::new(" ", "\u{2581}").map_err(tk_err("normaliser"))?;
    let norm: NormalizerWrapper = if add_space_prefix {
        NormSequence::new(vec![Prepend::new("\u{2581}".into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(norm));
    let mut decoders: Vec<DecoderWrapper> = vec![
        tokenizers::decoders::DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tk_err("decoder"))?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_is_rejected() {
        let data = GgufTokenizerData { model: "bert".into(), tokens: vec!["a".into()], ..Default::default() };
        let err = build(&data).unwrap_err();
        assert_eq!(err.code(), "model_loading_error");
        assert!(err.to_string().contains("bert"), "{err}");
    }

    #[test]
    fn score_order_decides_merge_priority() {
        // "ab" outranks "bc": "abc" must become ["ab", "c"], not ["a", "bc"].
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc"].iter().map(|s| s.to_string()).collect();
        let data = GgufTokenizerData {
            model: "llama".into(),
            tokens,
            scores: Some(vec![0.0, -1.0, -1.0, -1.0, -2.0, -3.0]),
            token_types: Some(vec![2, 1, 1, 1, 1, 1]),
            unk_id: Some(0),
            add_bos: Some(false),
            add_space_prefix: Some(false),
            ..Default::default()
        };
        let tok = build(&data).unwrap();
        assert_eq!(tok.encode("abc").unwrap(), vec![4, 3]);
    }
}
