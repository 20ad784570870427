//! [`GgufSource`]: hyper-parameters from `{arch}.*` metadata, tokenizer fields from
//! `tokenizer.*`, weights borrowed from the file bytes, and the load-time checks.

use std::borrow::Cow;

use super::{GgufFile, GgufType, GgufValue};
use crate::error::{Error, Result};
use crate::model::{Arch, Blob, HostTensor, ModelConfig, ModelSource, RopeLayout, RopeScaling, WeightName};
use crate::quant::ggml;
use crate::tokenizer::{GgufTokenizerData, Tokenizer};

/// Build the engine's hyper-parameters from `general.architecture` and `{arch}.*`.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let arch_name = f
        .opt_str("general.architecture")?
        .ok_or_else(|| Error::model("GGUF metadata general.architecture is missing"))?;
    let (arch, rope_layout) = match arch_name {
        "llama" => (Arch::Llama, RopeLayout::Adjacent),
        "mistral" => (Arch::Mistral, RopeLayout::Adjacent),
        "qwen2" => (Arch::Qwen2, RopeLayout::HalfSplit),
        other => {
            return Err(Error::model(format!(
                "unsupported model architecture '{other}' (supported: llama, mistral, qwen2)"
            )));
        }
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    if matches!(f.get(&k("attention.head_count_kv")), Some(GgufValue::Array(..))) {
        return Err(Error::model(format!(
            "GGUF metadata {}: per-layer head counts are not supported",
            k("attention.head_count_kv")
        )));
    }
    let d_model = f.req_usize(&k("embedding_length"))?;
    let n_heads = f.req_usize(&k("attention.head_count"))?;
    let n_kv_heads = f.opt_usize(&k("attention.head_count_kv"))?.unwrap_or(n_heads);
    let head_dim = match f.opt_usize(&k("attention.key_length"))? {
        Some(h) => h,
        None => match f.opt_usize(&k("rope.dimension_count"))? {
            Some(h) => h,
            None => d_model.checked_div(n_heads).unwrap_or(0),
        },
    };
    if let Some(v) = f.opt_usize(&k("attention.value_length"))?
        && v != head_dim
    {
        return Err(Error::model(format!("GGUF: value_length {v} differs from key_length {head_dim} (not supported)")));
    }
    if let Some(r) = f.opt_usize(&k("rope.dimension_count"))?
        && r != head_dim
    {
        return Err(Error::model(format!(
            "GGUF: rope.dimension_count {r} differs from head_dim {head_dim} (partial rotary \
             embeddings are not supported)"
        )));
    }
    let vocab_size = match f.opt_array("tokenizer.ggml.tokens", &[GgufType::String])? {
        Some(t) => t.len(),
        None => match f.opt_usize(&k("vocab_size"))? {
            Some(v) => v,
            None => f
                .tensor_info("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
                .ok_or_else(|| Error::model("GGUF: cannot tell the vocabulary size"))?,
        },
    };
    let rope_scaling = match f.opt_str(&k("rope.scaling.type"))? {
        None | Some("none") => match f.opt_f32(&k("rope.scale_linear"))? {
            Some(factor) if factor != 1.0 => RopeScaling::Linear { factor },
            _ => RopeScaling::None,
        },
        Some("linear") => RopeScaling::Linear {
            factor: f
                .opt_f32(&k("rope.scaling.factor"))?
                .ok_or_else(|| Error::model(format!("GGUF metadata {} is missing", k("rope.scaling.factor"))))?,
        },
        Some(other) => {
            return Err(Error::model(format!(
                "GGUF: rope scaling type '{other}' is not supported (supported: none, linear)"
            )));
        }
    };
    let qkv_bias = arch == Arch::Qwen2 || f.tensor_info("blk.0.attn_q.bias").is_some();
    let cfg = ModelConfig {
        arch,
        name: f.opt_str("general.name")?.unwrap_or(arch_name).to_string(),
        n_layers: f.req_usize(&k("block_count"))?,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff: f.req_usize(&k("feed_forward_length"))?,
        vocab_size,
        context_length: f.req_usize(&k("context_length"))?,
        rms_eps: f.opt_f32(&k("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| {
            Error::model(format!("GGUF metadata {} is missing", k("attention.layer_norm_rms_epsilon")))
        })?,
        rope_theta: f.opt_f32(&k("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling,
        rope_layout,
        tied_embeddings: f.tensor_info("output.weight").is_none(),
        qkv_bias,
    };
    cfg.check()?;
    Ok(cfg)
}

fn opt_id(f: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    match f.opt_u64(key)? {
        None => Ok(None),
        Some(id) if (id as u128) < n_tokens as u128 => Ok(Some(id as u32)),
        Some(id) => {
            Err(Error::model(format!("GGUF metadata {key} = {id} is not a token id (vocabulary of {n_tokens})")))
        }
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| Error::model(format!("GGUF metadata {key} should be a bool, found {:?}", v.ty()))),
    }
}

fn strings(v: &[GgufValue]) -> Vec<String> {
    v.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
}

/// Read `tokenizer.ggml.*` and `tokenizer.chat_template`.
pub fn tokenizer_data_from_gguf(f: &GgufFile) -> Result<GgufTokenizerData> {
    let model = f
        .opt_str("tokenizer.ggml.model")?
        .ok_or_else(|| Error::model("missing tokenizer metadata: GGUF key tokenizer.ggml.model is absent"))?;
    let tokens = f
        .opt_array("tokenizer.ggml.tokens", &[GgufType::String])?
        .ok_or_else(|| Error::model("missing tokenizer metadata: GGUF key tokenizer.ggml.tokens is absent"))?;
    let n = tokens.len();
    let check_len = |key: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(Error::model(format!("GGUF metadata {key} has {len} entries for {n} tokens")))
        }
    };
    let scores = match f.opt_array("tokenizer.ggml.scores", &[GgufType::F32, GgufType::F64])? {
        None => None,
        Some(v) => {
            check_len("tokenizer.ggml.scores", v.len())?;
            Some(v.iter().map(|s| s.as_f64().unwrap_or(0.0) as f32).collect())
        }
    };
    let token_types =
        match f.opt_array("tokenizer.ggml.token_type", &[GgufType::I32, GgufType::U32, GgufType::I8, GgufType::U8])? {
            None => None,
            Some(v) => {
                check_len("tokenizer.ggml.token_type", v.len())?;
                Some(v.iter().map(|t| t.as_i64().unwrap_or(0) as i32).collect())
            }
        };
    let merges = f.opt_array("tokenizer.ggml.merges", &[GgufType::String])?.map(strings);
    Ok(GgufTokenizerData {
        model: model.to_string(),
        pre: f.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: strings(tokens),
        scores,
        token_types,
        merges,
        bos_id: opt_id(f, "tokenizer.ggml.bos_token_id", n)?,
        eos_id: opt_id(f, "tokenizer.ggml.eos_token_id", n)?,
        unk_id: opt_id(f, "tokenizer.ggml.unknown_token_id", n)?,
        pad_id: opt_id(f, "tokenizer.ggml.padding_token_id", n)?,
        eot_id: opt_id(f, "tokenizer.ggml.eot_token_id", n)?,
        eom_id: opt_id(f, "tokenizer.ggml.eom_token_id", n)?,
        add_space_prefix: opt_bool(f, "tokenizer.ggml.add_space_prefix")?,
        add_bos: opt_bool(f, "tokenizer.ggml.add_bos_token")?,
        add_eos: opt_bool(f, "tokenizer.ggml.add_eos_token")?,
        chat_template: f.opt_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

/// A GGUF model: the file bytes, its parsed header and its hyper-parameters.
pub struct GgufSource {
    blob: Blob,
    parsed: GgufFile,
    config: ModelConfig,
}

impl GgufSource {
    /// Parse, build the config, and check every weight and the tokenizer metadata.
    pub fn from_blob(blob: Blob) -> Result<Self> {
        let parsed = GgufFile::parse(&blob)?;
        let config = config_from_gguf(&parsed)?;
        let src = GgufSource { blob, parsed, config };
        src.validate()?;
        tokenizer_data_from_gguf(&src.parsed)?;
        Ok(src)
    }

    /// From bytes in memory (a browser download).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_blob(Blob::Owned(bytes))
    }

    /// Memory-map a file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).map_err(|e| Error::model(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the map is read-only; a file changed underneath us by another process
        // would only give wrong weights, and every read is bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::model(format!("cannot map {}: {e}", path.display())))?;
        Self::from_blob(Blob::Mapped(map)).map_err(|e| Error::model(format!("{}: {e}", path.display())))
    }

    /// The parsed header.
    pub fn parsed(&self) -> &GgufFile {
        &self.parsed
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.blob
    }

    /// Tokenizer fields from the metadata.
    pub fn tokenizer_data(&self) -> Result<GgufTokenizerData> {
        tokenizer_data_from_gguf(&self.parsed)
    }

    /// A tensor by GGUF name, borrowed from the file; `Ok(None)` when absent.
    pub fn tensor_by_name(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let Some(info) = self.parsed.tensor_info(name) else {
            return Ok(None);
        };
        let format = info.format.ok_or_else(|| {
            Error::model(format!(
                "tensor {name} has GGML type {}, which this crate does not read",
                ggml::ggml_type_name(info.ggml_type)
            ))
        })?;
        let bytes = self
            .blob
            .get(info.range.clone())
            .ok_or_else(|| Error::model(format!("tensor {name}: byte range {:?} outside the file", info.range)))?;
        Ok(Some(HostTensor { name: name.to_string(), shape: info.shape.clone(), format, bytes: Cow::Borrowed(bytes) }))
    }

    /// Check that every weight the forward pass reads exists with the expected shape and
    /// a supported format.
    pub fn validate(&self) -> Result<()> {
        for (w, shape) in self.config.expected_weights() {
            let name = w.gguf_name();
            let info = self
                .parsed
                .tensor_info(&name)
                .ok_or_else(|| Error::model(format!("missing tensor {name} (expected shape {shape:?})")))?;
            if info.shape != shape {
                return Err(Error::model(format!("tensor {name} has shape {:?}, expected {shape:?}", info.shape)));
            }
            if info.format.is_none() {
                return Err(Error::model(format!(
                    "tensor {name} has GGML type {}, which this crate does not read",
                    ggml::ggml_type_name(info.ggml_type)
                )));
            }
        }
        Ok(())
    }
}

impl ModelSource for GgufSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_gguf(&self.tokenizer_data()?)
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor<'_>>> {
        match name {
            WeightName::Output if self.config.tied_embeddings => Ok(None),
            WeightName::AttnQBias(_) | WeightName::AttnKBias(_) | WeightName::AttnVBias(_) if !self.config.qkv_bias => {
                Ok(None)
            }
            _ => self.tensor_by_name(&name.gguf_name()),
        }
    }
}
