//! Tokenizer from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json` fields).

use serde_json::Value;
use tokenizers::PostProcessorWrapper;
use tokenizers::processors::sequence::Sequence as PostSequence;

use super::gguf::template_processor;
use super::{DecodeKind, HfTokenizerConfig, Tokenizer};
use crate::error::{Error, Result};

/// Build a [`Tokenizer`] from `tokenizer.json` bytes.
pub(super) fn build(json: &[u8], cfg: &HfTokenizerConfig) -> Result<Tokenizer> {
    let mut inner =
        tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::model(format!("tokenizer.json: {e}")))?;
    let kind = decode_kind(&inner);
    let id_of = |inner: &tokenizers::Tokenizer, what: &str, name: &str| {
        inner.token_to_id(name).ok_or_else(|| {
            Error::model(format!("tokenizer_config.json: {what} {name:?} is not in tokenizer.json's vocabulary"))
        })
    };
    let bos = match &cfg.bos_token {
        Some(name) => Some(id_of(&inner, "bos_token", name)?),
        None => cfg.bos_token_id,
    };
    let mut eos = Vec::new();
    if let Some(name) = &cfg.eos_token {
        eos.push(id_of(&inner, "eos_token", name)?);
    }
    eos.extend(cfg.eos_token_ids.iter().copied());

    // tokenizer.json's post-processor decides about BOS unless the config says otherwise
    // (as transformers' fast tokenizers rebuild it from `add_bos_token`).
    let mut add_bos = adds_bos(&inner, bos)?;
    match (cfg.add_bos_token, bos) {
        (Some(true), Some(bos_id)) if !add_bos => {
            let name = inner
                .id_to_token(bos_id)
                .ok_or_else(|| Error::model(format!("tokenizer: bos id {bos_id} has no token")))?;
            let template: PostProcessorWrapper =
                template_processor(&[name.clone(), "$A".into()], vec![(name, bos_id)])?.into();
            let post = match inner.get_post_processor().cloned() {
                Some(existing) => PostSequence::new(vec![existing, template]).into(),
                None => template,
            };
            inner.with_post_processor(Some(post));
        }
        (Some(false), _) if add_bos => {
            inner.with_post_processor(None::<PostProcessorWrapper>);
        }
        _ => {}
    }
    if cfg.add_bos_token.is_some() {
        add_bos = adds_bos(&inner, bos)?;
    }
    Tokenizer::assemble(inner, kind, bos, eos, add_bos, cfg.chat_template.clone())
}

/// Whether encoding puts `bos` in front.
fn adds_bos(inner: &tokenizers::Tokenizer, bos: Option<u32>) -> Result<bool> {
    let Some(bos) = bos else { return Ok(false) };
    let enc = inner.encode_fast("", true).map_err(|e| Error::model(format!("tokenizer.json: cannot encode: {e}")))?;
    Ok(enc.get_ids().first() == Some(&bos))
}

/// Which byte table fits the decoder of `tokenizer.json`.
fn decode_kind(inner: &tokenizers::Tokenizer) -> DecodeKind {
    let Some(decoder) = inner.get_decoder() else {
        return DecodeKind::Other;
    };
    let Ok(v) = serde_json::to_value(decoder) else {
        return DecodeKind::Other;
    };
    let parts: Vec<&Value> = match v.get("decoders").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![&v],
    };
    let ty = |p: &Value| p.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
    if parts.iter().any(|p| ty(p) == "ByteLevel") {
        return DecodeKind::ByteLevel;
    }
    let spm = parts.iter().any(|p| match ty(p).as_str() {
        "ByteFallback" | "Metaspace" => true,
        "Replace" => p.pointer("/pattern/String").and_then(Value::as_str) == Some("\u{2581}"),
        _ => false,
    });
    if !spm {
        return DecodeKind::Other;
    }
    let strip_prefix = parts.iter().any(|p| match ty(p).as_str() {
        "Strip" => {
            p.get("content").and_then(Value::as_str) == Some(" ")
                && p.get("start").and_then(Value::as_u64).unwrap_or(0) >= 1
        }
        "Metaspace" => {
            p.get("prepend_scheme").and_then(Value::as_str) != Some("never")
                && p.get("add_prefix_space").and_then(Value::as_bool) != Some(false)
        }
        _ => false,
    });
    DecodeKind::SentencePiece { strip_prefix }
}
