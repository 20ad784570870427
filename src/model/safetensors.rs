//! Hugging Face model folders: `config.json`, `tokenizer.json`, `tokenizer_config.json`
//! and `model.safetensors` (or shards listed in `model.safetensors.index.json`), with
//! f32 / f16 / bf16 weights. Q/K rows are in HF's half-split RoPE order.
//!
//! The safetensors header is parsed here and checked before use: header length within
//! the file, offsets inside the data section, byte counts that match dtype and shape, no
//! two tensors sharing bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Arch, Blob, HostFormat, HostTensor, ModelConfig, ModelSource, RopeLayout, RopeScaling, WeightName};
use crate::tokenizer::{HfTokenizerConfig, Tokenizer};

/// Largest safetensors header we read (the format's own limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct SafeTensorInfo {
    pub name: String,
    /// The dtype as written (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// `Some` for the float formats this crate reads.
    pub format: Option<HostFormat>,
    /// PyTorch order.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub range: std::ops::Range<usize>,
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn dtype_size(dtype: &str) -> Option<(usize, Option<HostFormat>)> {
    Some(match dtype {
        "F32" => (4, Some(HostFormat::F32)),
        "F16" => (2, Some(HostFormat::F16)),
        "BF16" => (2, Some(HostFormat::BF16)),
        "F64" | "I64" | "U64" => (8, None),
        "I32" | "U32" => (4, None),
        "I16" | "U16" => (2, None),
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => (1, None),
        _ => return None,
    })
}

/// Parse and check the header of a safetensors file; `file` names it in errors.
pub fn parse_safetensors(bytes: &[u8], file: &str) -> Result<Vec<SafeTensorInfo>> {
    let bad = |m: String| Error::model(format!("safetensors {file}: {m}"));
    let len8: [u8; 8] = bytes
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad(format!("{} bytes is too short for a header", bytes.len())))?;
    let n = u64::from_le_bytes(len8);
    let avail = bytes.len() as u64 - 8;
    if n > MAX_HEADER_BYTES || n > avail {
        return Err(bad(format!(
            "header length {n} exceeds the file ({avail} bytes after the length) or the \
             {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    let data_start = 8 + n as usize;
    let header = bytes.get(8..data_start).unwrap_or_default();
    let data_len = bytes.len() - data_start;
    let map: BTreeMap<String, Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawTensor = serde_json::from_value(v).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        let (size, format) =
            dtype_size(&raw.dtype).ok_or_else(|| bad(format!("tensor {name}: unknown dtype {}", raw.dtype)))?;
        let numel = raw.shape.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
        let nbytes = numel
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| bad(format!("tensor {name}: shape {:?} is too large", raw.shape)))?;
        let [begin, end] = raw.data_offsets;
        if begin > end || end > data_len as u64 {
            return Err(bad(format!(
                "tensor {name}: data offsets [{begin}, {end}] lie outside the {data_len}-byte \
                 data section"
            )));
        }
        if end - begin != nbytes as u64 {
            return Err(bad(format!(
                "tensor {name}: {} {:?} needs {nbytes} bytes but its offsets [{begin}, {end}] \
                 span {}",
                raw.dtype,
                raw.shape,
                end - begin
            )));
        }
        out.push(SafeTensorInfo {
            name,
            dtype: raw.dtype,
            format,
            shape: raw.shape.iter().map(|&d| d as usize).collect(),
            range: data_start + begin as usize..data_start + end as usize,
        });
    }
    let mut by_start: Vec<&SafeTensorInfo> = out.iter().filter(|t| !t.range.is_empty()).collect();
    by_start.sort_by_key(|t| t.range.start);
    for w in by_start.windows(2) {
        if let [a, b] = w
            && b.range.start < a.range.end
        {
            return Err(bad(format!("tensors {} and {} overlap", a.name, b.name)));
        }
    }
    Ok(out)
}

/// `config.json` as written (fields we read; others ignored).
#[derive(Deserialize, Default)]
struct RawHfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    num_hidden_layers: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    tie_word_embeddings: Option<bool>,
    rope_scaling: Option<Value>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect(),
        _ => Vec::new(),
    }
}

/// Normalise a `config.json` into the engine's hyper-parameters. `has_lm_head` decides
/// tying when `tie_word_embeddings` is absent.
fn config_from_raw(raw: &RawHfConfig, has_lm_head: bool) -> Result<ModelConfig> {
    let arch_name = raw
        .architectures
        .as_ref()
        .and_then(|a| a.first().cloned())
        .or_else(|| raw.model_type.clone())
        .ok_or_else(|| Error::model("config.json names no architectures or model_type"))?;
    let arch = match arch_name.as_str() {
        "LlamaForCausalLM" | "llama" => Arch::Llama,
        "MistralForCausalLM" | "mistral" => Arch::Mistral,
        "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::model(format!(
                "unsupported model architecture '{other}' (supported: LlamaForCausalLM, \
                 MistralForCausalLM, Qwen2ForCausalLM)"
            )));
        }
    };
    if let Some(act) = &raw.hidden_act
        && act != "silu"
    {
        return Err(Error::model(format!("config.json hidden_act '{act}' is not supported (silu)")));
    }
    let req = |v: Option<usize>, key: &str| v.ok_or_else(|| Error::model(format!("config.json is missing {key}")));
    let d_model = req(raw.hidden_size, "hidden_size")?;
    let n_heads = req(raw.num_attention_heads, "num_attention_heads")?;
    let rope_scaling = match &raw.rope_scaling {
        None | Some(Value::Null) => RopeScaling::None,
        Some(v) => {
            let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("");
            match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: v
                        .get("factor")
                        .and_then(Value::as_f64)
                        .ok_or_else(|| Error::model("config.json rope_scaling 'linear' has no numeric factor"))?
                        as f32,
                },
                other => {
                    return Err(Error::model(format!(
                        "config.json rope_scaling type '{other}' is not supported (linear)"
                    )));
                }
            }
        }
    };
    let cfg = ModelConfig {
        arch,
        name: raw.name_or_path.clone().unwrap_or_else(|| arch_name.clone()),
        n_layers: req(raw.num_hidden_layers, "num_hidden_layers")?,
        d_model,
        n_heads,
        n_kv_heads: raw.num_key_value_heads.unwrap_or(n_heads),
        head_dim: raw.head_dim.unwrap_or_else(|| d_model.checked_div(n_heads).unwrap_or(0)),
        d_ff: req(raw.intermediate_size, "intermediate_size")?,
        vocab_size: req(raw.vocab_size, "vocab_size")?,
        context_length: req(raw.max_position_embeddings, "max_position_embeddings")?,
        rms_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
        rope_theta: raw.rope_theta.unwrap_or(10000.0) as f32,
        rope_scaling,
        rope_layout: RopeLayout::HalfSplit,
        tied_embeddings: raw.tie_word_embeddings.unwrap_or(!has_lm_head),
        qkv_bias: arch == Arch::Qwen2 || raw.attention_bias.unwrap_or(false),
    };
    cfg.check()?;
    Ok(cfg)
}

/// A token in tokenizer_config.json: a string or an AddedToken object.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Build the tokenizer extras from `tokenizer_config.json` (optional) and config.json ids.
fn tokenizer_config(json: Option<&[u8]>, raw: &RawHfConfig) -> Result<HfTokenizerConfig> {
    let v: Value = match json {
        None => Value::Null,
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| Error::model(format!("tokenizer_config.json is not valid JSON: {e}")))?,
    };
    let chat_template = match v.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(n))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            named("default")
        }
        _ => None,
    };
    Ok(HfTokenizerConfig {
        bos_token: token_str(v.get("bos_token")),
        eos_token: token_str(v.get("eos_token")),
        add_bos_token: v.get("add_bos_token").and_then(Value::as_bool),
        chat_template,
        bos_token_id: ids(&raw.bos_token_id).first().copied(),
        eos_token_ids: ids(&raw.eos_token_id),
    })
}

struct Entry {
    blob: usize,
    info: SafeTensorInfo,
}

/// A Hugging Face model folder (or its files in memory).
pub struct HfSource {
    blobs: Vec<Blob>,
    tensors: HashMap<String, Entry>,
    config: ModelConfig,
    tokenizer_json: Vec<u8>,
    tokenizer_config: HfTokenizerConfig,
}

fn check_file_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(Error::model(format!(
            "model.safetensors.index.json names the shard '{name}', which is not a plain file name"
        )));
    }
    Ok(())
}

impl HfSource {
    /// Build from a loader of files by name (`config.json`, shards, ...); the loader
    /// returns `Ok(None)` for a missing file.
    fn build(load: &mut dyn FnMut(&str) -> Result<Option<Blob>>) -> Result<Self> {
        let need =
            |b: Option<Blob>, n: &str| b.ok_or_else(|| Error::model(format!("Hugging Face model: {n} is missing")));
        let config_bytes = need(load("config.json")?, "config.json")?;
        let raw: RawHfConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::model(format!("config.json: {e}")))?;
        let tokenizer_json = need(load("tokenizer.json")?, "tokenizer.json")?.to_vec();
        let tok_cfg_bytes = load("tokenizer_config.json")?;
        let mut tokenizer_config = tokenizer_config(tok_cfg_bytes.as_deref(), &raw)?;
        if let Some(gen_cfg) = load("generation_config.json")? {
            // Its eos ids (often a list, e.g. both <|im_end|> and <|endoftext|>) join ours.
            let v: Value =
                serde_json::from_slice(&gen_cfg).map_err(|e| Error::model(format!("generation_config.json: {e}")))?;
            for id in ids(&v.get("eos_token_id").cloned()) {
                if !tokenizer_config.eos_token_ids.contains(&id) {
                    tokenizer_config.eos_token_ids.push(id);
                }
            }
            if tokenizer_config.bos_token_id.is_none() {
                tokenizer_config.bos_token_id = ids(&v.get("bos_token_id").cloned()).first().copied();
            }
        }

        let shards: Vec<String> = match load("model.safetensors.index.json")? {
            Some(index) => {
                let v: Value = serde_json::from_slice(&index)
                    .map_err(|e| Error::model(format!("model.safetensors.index.json: {e}")))?;
                let map = v
                    .get("weight_map")
                    .and_then(Value::as_object)
                    .ok_or_else(|| Error::model("model.safetensors.index.json has no weight_map object"))?;
                let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(str::to_string).collect();
                files.sort();
                files.dedup();
                files
            }
            None => vec!["model.safetensors".to_string()],
        };
        let mut blobs = Vec::with_capacity(shards.len());
        let mut tensors = HashMap::new();
        for (i, file) in shards.iter().enumerate() {
            check_file_name(file)?;
            let blob = need(load(file)?, file)?;
            for info in parse_safetensors(&blob, file)? {
                if tensors.contains_key(&info.name) {
                    return Err(Error::model(format!("tensor {} appears in more than one shard", info.name)));
                }
                tensors.insert(info.name.clone(), Entry { blob: i, info });
            }
            blobs.push(blob);
        }
        let has_lm_head = tensors.contains_key(&WeightName::Output.hf_name());
        let config = config_from_raw(&raw, has_lm_head)?;
        let src = HfSource { blobs, tensors, config, tokenizer_json, tokenizer_config };
        src.validate()?;
        Ok(src)
    }

    /// Open a folder; safetensors files are memory-mapped.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_dir(dir: &std::path::Path) -> Result<Self> {
        let mut load = |name: &str| -> Result<Option<Blob>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let err = |e: std::io::Error| Error::model(format!("cannot read {}: {e}", path.display()));
            if name.ends_with(".safetensors") {
                let file = std::fs::File::open(&path).map_err(err)?;
                // SAFETY: read-only map; every access is bounds-checked against its length.
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(err)?;
                Ok(Some(Blob::Mapped(map)))
            } else {
                Ok(Some(Blob::Owned(std::fs::read(&path).map_err(err)?)))
            }
        };
        Self::build(&mut load).map_err(|e| Error::model(format!("{}: {e}", dir.display())))
    }

    /// From files in memory (the browser): `(file name, bytes)`; paths are reduced to
    /// their last component.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        let mut by_name: HashMap<String, Vec<u8>> = files
            .into_iter()
            .map(|(n, b)| {
                let base = n.rsplit(['/', '\\']).next().unwrap_or(&n).to_string();
                (base, b)
            })
            .collect();
        let mut load = |name: &str| Ok(by_name.remove(name).map(Blob::Owned));
        Self::build(&mut load)
    }

    /// The raw `tokenizer.json`.
    pub fn tokenizer_json(&self) -> &[u8] {
        &self.tokenizer_json
    }

    /// Fields of `tokenizer_config.json` and config.json's token ids.
    pub fn tokenizer_config(&self) -> &HfTokenizerConfig {
        &self.tokenizer_config
    }

    /// The directory entry of a tensor by HF name.
    pub fn tensor_info(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.get(name).map(|e| &e.info)
    }

    /// A tensor by HF name, borrowed; `Ok(None)` when absent.
    pub fn tensor_by_name(&self, name: &str) -> Result<Option<HostTensor<'_>>> {
        let Some(e) = self.tensors.get(name) else {
            return Ok(None);
        };
        let format = e
            .info
            .format
            .ok_or_else(|| Error::model(format!("tensor {name} has dtype {}, not F32/F16/BF16", e.info.dtype)))?;
        let bytes = self
            .blobs
            .get(e.blob)
            .and_then(|b| b.get(e.info.range.clone()))
            .ok_or_else(|| Error::model(format!("tensor {name}: bytes outside its file")))?;
        Ok(Some(HostTensor {
            name: name.to_string(),
            shape: e.info.shape.clone(),
            format,
            bytes: Cow::Borrowed(bytes),
        }))
    }

    /// Check that every weight the forward pass reads exists, with its shape and a float
    /// dtype.
    pub fn validate(&self) -> Result<()> {
        for (w, shape) in self.config.expected_weights() {
            let name = w.hf_name();
            let info = self
                .tensor_info(&name)
                .ok_or_else(|| Error::model(format!("missing tensor {name} (expected shape {shape:?})")))?;
            if info.shape != shape {
                return Err(Error::model(format!("tensor {name} has shape {:?}, expected {shape:?}", info.shape)));
            }
            if info.format.is_none() {
                return Err(Error::model(format!("tensor {name} has dtype {}, not F32/F16/BF16", info.dtype)));
            }
        }
        Ok(())
    }
}

impl ModelSource for HfSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tokenizer(&self) -> Result<Tokenizer> {
        Tokenizer::from_hf_json(&self.tokenizer_json, &self.tokenizer_config)
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor<'_>>> {
        match name {
            WeightName::Output if self.config.tied_embeddings => Ok(None),
            WeightName::AttnQBias(_) | WeightName::AttnKBias(_) | WeightName::AttnVBias(_) if !self.config.qkv_bias => {
                Ok(None)
            }
            _ => self.tensor_by_name(&name.hf_name()),
        }
    }
}

/// Serialise a safetensors header for `(name, dtype, shape, byte length)` laid out back
/// to back in the given order; returns the 8-byte length prefix + JSON, padded with
/// spaces to a multiple of 8.
pub fn safetensors_header(tensors: &[(String, &str, Vec<usize>, usize)]) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, len) in tensors {
        let end = offset + len;
        map.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut json =
        serde_json::to_vec(&Value::Object(map)).map_err(|e| Error::internal(format!("safetensors header: {e}")))?;
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}
