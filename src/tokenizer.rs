//! Tokenizers: built from GGUF metadata (byte-level BPE and SentencePiece with byte
//! fallback) or from a Hugging Face tokenizer.json; chat templates; streaming detokenizer.

use crate::error::{Error, Result};

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
}

/// Fields of a Hugging Face `tokenizer_config.json` (plus `config.json`'s ids) that
/// `tokenizer.json` alone does not carry.
#[derive(Clone, Debug, Default)]
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
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A model's tokenizer.
pub struct Tokenizer {
    _private: (),
}

impl Tokenizer {
    /// Build from GGUF metadata.
    pub fn from_gguf(_data: &GgufTokenizerData) -> Result<Self> {
        Err(Error::model("tokenizer: not implemented yet"))
    }
}

// TEMP-STUBS (replaced by the tokenizer branch)
impl Tokenizer {
    pub fn eos_ids(&self) -> &[u32] {
        &[]
    }
}
/// Streaming detokenizer.
pub struct StreamDecoder;
impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder
    }
    pub fn push(&mut self, _t: &Tokenizer, _id: u32) -> Result<String> {
        Ok(String::new())
    }
    pub fn finish(&mut self, _t: &Tokenizer) -> Result<String> {
        Ok(String::new())
    }
}
