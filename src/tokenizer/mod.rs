//! Tokenizers: built from GGUF metadata (byte-level BPE and SentencePiece with byte
//! fallback) or from a Hugging Face tokenizer.json; chat templates; streaming detokenizer.
//!
//! Encoding goes through the `tokenizers` crate. Decoding goes through a per-id byte table
//! built once at load ([`Tokenizer::token_to_bytes`]), which the [`StreamDecoder`] shares,
//! so streamed text and `decode` agree byte for byte.

mod chat;
mod gguf;
mod hf;
mod stream;

use crate::error::{Error, Result};

pub use stream::StreamDecoder;

/// Tokenizer fields read from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Clone, Debug, Default)]
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: pre-tokenizer name (e.g. "smollm", "llama-bpe").
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.eot_token_id`: end of turn (e.g. `<|eot_id|>`), also a stop token.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`: end of message (Llama 3.1 tool calls), also a stop token.
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.add_space_prefix`: SentencePiece prepends `▁` (default true for "llama").
    pub add_space_prefix: Option<bool>,
}

/// Fields of a Hugging Face `tokenizer_config.json` (plus `config.json`'s ids) that
/// `tokenizer.json` alone does not carry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HfTokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub chat_template: Option<String>,
    /// Ids from config.json, used when the token strings are absent.
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// One chat message for the chat template.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// How ids turn back into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeKind {
    /// GPT-2 byte-level BPE: every char of a token stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` is a raw byte; `strip_prefix` drops the one
    /// space the normaliser prepended from the start of a full decode.
    SentencePiece { strip_prefix: bool },
    /// Anything else: each id is decoded on its own by the `tokenizers` decoder.
    Other,
}

/// What one id decodes to.
#[derive(Clone, Debug, Default)]
struct Piece {
    bytes: Box<[u8]>,
    /// A special (control) token: skipped by `decode(.., skip_special = true)` and by default
    /// in the stream decoder.
    special: bool,
}

/// End-of-generation token names that chat models use besides their `eos`.
const END_TOKEN_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|return|>",
    "<EOT>",
];

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// id -> bytes and special flag, `[vocab_size]`.
    pieces: Vec<Piece>,
    kind: DecodeKind,
    bos: Option<u32>,
    /// eos first, then the other end-of-generation ids.
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("kind", &self.kind)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Build from GGUF metadata: "gpt2" (byte-level BPE with vocab + merges) or "llama"
    /// (SentencePiece: scores, `<0xNN>` byte fallback, `▁` for spaces).
    pub fn from_gguf(data: &GgufTokenizerData) -> Result<Self> {
        gguf::build(data)
    }

    /// Build from a Hugging Face `tokenizer.json` plus the fields of `tokenizer_config.json`.
    pub fn from_hf_json(json: &[u8], cfg: &HfTokenizerConfig) -> Result<Self> {
        hf::build(json, cfg)
    }

    /// A `tokenizer.json` that [`Tokenizer::from_hf_json`] (with [`Tokenizer::hf_config`])
    /// and Hugging Face `tokenizers` read back to the same tokenizer.
    pub fn to_hf_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| Error::internal(format!("tokenizer: cannot serialise: {e}")))
    }

    /// The `tokenizer_config.json` fields that go with [`Tokenizer::to_hf_json`].
    pub fn hf_config(&self) -> HfTokenizerConfig {
        HfTokenizerConfig {
            bos_token: self.bos.and_then(|id| self.inner.id_to_token(id)),
            eos_token: self.eos.first().and_then(|&id| self.inner.id_to_token(id)),
            add_bos_token: Some(self.add_bos),
            chat_template: self.chat_template.clone(),
            bos_token_id: self.bos,
            eos_token_ids: self.eos.clone(),
        }
    }

    /// Text -> ids. Adds BOS only if the model asks for it; special-token strings in the
    /// text (e.g. `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| Error::invalid(format!("tokenizer: cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids -> text. Bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if self.kind == DecodeKind::Other {
            for &id in ids {
                self.piece(id)?;
            }
            return self
                .inner
                .decode(ids, skip_special)
                .map_err(|e| Error::invalid(format!("tokenizer: cannot decode: {e}")));
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.piece(id)?;
            if !(skip_special && piece.special) {
                bytes.extend_from_slice(&piece.bytes);
            }
        }
        let start = match self.kind {
            DecodeKind::SentencePiece { strip_prefix: true } if bytes.first() == Some(&b' ') => 1,
            _ => 0,
        };
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }

    /// Number of ids (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`Tokenizer::encode`] puts BOS in front.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end a generation: eos first, then eot / `<|im_end|>`-style end tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether `id` ends a generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The model's own chat template (None if it has none; see
    /// [`Tokenizer::apply_chat_template`] for the fallback).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render messages with the model's chat template (ChatML if it has none), with
    /// `bos_token`, `eos_token`, `add_generation_prompt` and `raise_exception` available.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().unwrap_or(chat::CHATML);
        let token_text = |id: Option<u32>| {
            id.and_then(|id| self.pieces.get(id as usize))
                .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
                .unwrap_or_default()
        };
        chat::render(
            template,
            messages,
            add_generation_prompt,
            &token_text(self.bos),
            &token_text(self.eos.first().copied()),
        )
    }

    /// The bytes one id stands for (a special token gives its text); None for an unknown id.
    pub fn token_to_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.pieces.get(id as usize).map(|p| p.bytes.to_vec())
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.pieces.get(id as usize).is_some_and(|p| p.special)
    }

    /// The id of a token given by its vocabulary string (e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn piece(&self, id: u32) -> Result<&Piece> {
        self.pieces.get(id as usize).ok_or_else(|| {
            Error::invalid(format!("tokenizer: id {id} is outside the vocabulary of {}", self.pieces.len()))
        })
    }

    /// Shared last step of both constructors: the byte table and the end-token list.
    fn assemble(
        inner: tokenizers::Tokenizer,
        kind: DecodeKind,
        bos: Option<u32>,
        eos: impl IntoIterator<Item = u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let pieces = build_pieces(&inner, kind)?;
        let n = pieces.len();
        let check = |what: &str, id: u32| {
            if (id as usize) < n {
                Ok(id)
            } else {
                Err(Error::model(format!("tokenizer: {what} id {id} is outside the vocabulary of {n}")))
            }
        };
        let bos = bos.map(|id| check("bos", id)).transpose()?;
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in eos {
            let id = check("eos", id)?;
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        for name in END_TOKEN_NAMES {
            if let Some(id) = inner.token_to_id(name)
                && pieces.get(id as usize).is_some_and(|p| p.special)
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        Ok(Self {
            inner,
            pieces,
            kind,
            bos,
            eos: eos_ids,
            add_bos,
            chat_template: chat_template.filter(|t| !t.trim().is_empty()),
        })
    }
}

/// id -> bytes for every id of `inner`, `[vocab_size]`.
fn build_pieces(inner: &tokenizers::Tokenizer, kind: DecodeKind) -> Result<Vec<Piece>> {
    let added = inner.get_added_tokens_decoder();
    let model_n = inner.get_vocab_size(false);
    let max_added = added.keys().map(|&id| id as usize + 1).max().unwrap_or(0);
    let n = model_n.max(max_added);
    if n == 0 {
        return Err(Error::model("tokenizer: empty vocabulary"));
    }
    let byte_of = byte_level_decode_table();
    let mut pieces = Vec::with_capacity(n);
    let mut missing = 0usize;
    for id in 0..n as u32 {
        if let Some(tok) = added.get(&id) {
            pieces.push(Piece { bytes: tok.content.as_bytes().into(), special: tok.special });
            continue;
        }
        let Some(text) = inner.id_to_token(id) else {
            missing += 1;
            pieces.push(Piece::default());
            continue;
        };
        let bytes: Vec<u8> = match kind {
            DecodeKind::ByteLevel => byte_level_bytes(&text, &byte_of),
            DecodeKind::SentencePiece { .. } => spm_bytes(&text),
            DecodeKind::Other => inner.decode(&[id], false).map(String::into_bytes).unwrap_or_default(),
        };
        pieces.push(Piece { bytes: bytes.into(), special: false });
    }
    if missing > 0 {
        log::warn!("tokenizer: {missing} ids have no token (duplicate strings in the vocabulary?)");
    }
    Ok(pieces)
}

/// GPT-2's byte-to-char map, inverted: `table[c] = byte` for the 256 chars below U+0144.
fn byte_level_decode_table() -> [Option<u8>; 324] {
    let mut table = [None; 324];
    let mut extra = 0usize;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as usize
        } else {
            extra += 1;
            255 + extra
        };
        table[c] = Some(b);
    }
    table
}

/// A byte-level token's bytes; chars outside the byte alphabet keep their UTF-8.
fn byte_level_bytes(text: &str, table: &[Option<u8>; 324]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match table.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// A SentencePiece token's bytes: `<0xNN>` is that byte, `▁` is a space.
fn spm_bytes(text: &str) -> Vec<u8> {
    if let Some(b) = parse_byte_token(text) {
        return vec![b];
    }
    text.replace('\u{2581}', " ").into_bytes()
}

/// `<0xNN>` -> the byte NN.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
