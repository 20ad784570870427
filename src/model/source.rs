//! What the engine needs from any model source: hyper-parameters, a tokenizer, and
//! weights by canonical name, each with its on-disk format so that it can be uploaded
//! without loss where the GPU format matches.

use std::borrow::Cow;

use crate::error::Result;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

/// File bytes: owned (browser download, small files) or memory-mapped (native).
pub enum Blob {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mapped(m) => m,
        }
    }
}

/// Storage format of a tensor in its file (GGML type names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

/// One tensor as the source holds it. `shape` is in PyTorch order: a matrix is
/// `[rows, cols]` with `cols` contiguous (GGUF's `ne` reversed).
pub struct HostTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub format: HostFormat,
    pub bytes: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// `[rows, cols]` of a matrix (a vector is `[1, n]`).
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            s => (s[..s.len() - 1].iter().product(), s[s.len() - 1]),
        }
    }

    /// Dequantised copy in f32 (CPU reference path).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        crate::quant::ggml::dequantize(self.format, &self.bytes, self.numel())
    }
}

/// Canonical weight names used by the engine, independent of the file's naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightName {
    /// `[vocab, d_model]`
    TokenEmbd,
    /// `[d_model]`
    OutputNorm,
    /// `[vocab, d_model]`; absent when the embeddings are tied.
    Output,
    /// `[d_model]`
    AttnNorm(usize),
    /// `[n_heads * head_dim, d_model]`
    AttnQ(usize),
    /// `[n_kv_heads * head_dim, d_model]`
    AttnK(usize),
    /// `[n_kv_heads * head_dim, d_model]`
    AttnV(usize),
    /// `[n_heads * head_dim]` (qwen2 only)
    AttnQBias(usize),
    /// `[n_kv_heads * head_dim]` (qwen2 only)
    AttnKBias(usize),
    /// `[n_kv_heads * head_dim]` (qwen2 only)
    AttnVBias(usize),
    /// `[d_model, n_heads * head_dim]`
    AttnOutput(usize),
    /// `[d_model]`
    FfnNorm(usize),
    /// `[d_ff, d_model]`
    FfnGate(usize),
    /// `[d_ff, d_model]`
    FfnUp(usize),
    /// `[d_model, d_ff]`
    FfnDown(usize),
}

impl WeightName {
    /// The GGUF tensor name (`blk.3.attn_q.weight`).
    pub fn gguf_name(&self) -> String {
        match *self {
            WeightName::TokenEmbd => "token_embd.weight".into(),
            WeightName::OutputNorm => "output_norm.weight".into(),
            WeightName::Output => "output.weight".into(),
            WeightName::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            WeightName::AttnQ(l) => format!("blk.{l}.attn_q.weight"),
            WeightName::AttnK(l) => format!("blk.{l}.attn_k.weight"),
            WeightName::AttnV(l) => format!("blk.{l}.attn_v.weight"),
            WeightName::AttnQBias(l) => format!("blk.{l}.attn_q.bias"),
            WeightName::AttnKBias(l) => format!("blk.{l}.attn_k.bias"),
            WeightName::AttnVBias(l) => format!("blk.{l}.attn_v.bias"),
            WeightName::AttnOutput(l) => format!("blk.{l}.attn_output.weight"),
            WeightName::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            WeightName::FfnGate(l) => format!("blk.{l}.ffn_gate.weight"),
            WeightName::FfnUp(l) => format!("blk.{l}.ffn_up.weight"),
            WeightName::FfnDown(l) => format!("blk.{l}.ffn_down.weight"),
        }
    }

    /// The Hugging Face tensor name (`model.layers.3.self_attn.q_proj.weight`).
    pub fn hf_name(&self) -> String {
        match *self {
            WeightName::TokenEmbd => "model.embed_tokens.weight".into(),
            WeightName::OutputNorm => "model.norm.weight".into(),
            WeightName::Output => "lm_head.weight".into(),
            WeightName::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            WeightName::AttnQ(l) => format!("model.layers.{l}.self_attn.q_proj.weight"),
            WeightName::AttnK(l) => format!("model.layers.{l}.self_attn.k_proj.weight"),
            WeightName::AttnV(l) => format!("model.layers.{l}.self_attn.v_proj.weight"),
            WeightName::AttnQBias(l) => format!("model.layers.{l}.self_attn.q_proj.bias"),
            WeightName::AttnKBias(l) => format!("model.layers.{l}.self_attn.k_proj.bias"),
            WeightName::AttnVBias(l) => format!("model.layers.{l}.self_attn.v_proj.bias"),
            WeightName::AttnOutput(l) => format!("model.layers.{l}.self_attn.o_proj.weight"),
            WeightName::FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            WeightName::FfnGate(l) => format!("model.layers.{l}.mlp.gate_proj.weight"),
            WeightName::FfnUp(l) => format!("model.layers.{l}.mlp.up_proj.weight"),
            WeightName::FfnDown(l) => format!("model.layers.{l}.mlp.down_proj.weight"),
        }
    }
}

/// A model the engine can load: hyper-parameters, tokenizer, weights.
pub trait ModelSource {
    /// Normalised hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// The tokenizer this model was trained with.
    fn tokenizer(&self) -> Result<Tokenizer>;
    /// A weight by canonical name; `Ok(None)` when the model has no such tensor
    /// (tied output, absent biases). Q/K rows are in the layout `config().rope_layout` names.
    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor<'_>>>;
}
