//! Convert any model source to a Hugging Face folder: `model.safetensors` (all f32,
//! dequantised, Q/K rows in HF's half-split RoPE order), `config.json`, `tokenizer.json`
//! and `tokenizer_config.json`.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{ModelConfig, RopeScaling};
use crate::tokenizer::{GgufTokenizerData, HfTokenizerConfig};

fn check_heads(len: usize, rows: usize, cols: usize, n_heads: usize) -> Result<usize> {
    let hd = rows.checked_div(n_heads).unwrap_or(0);
    if hd == 0 || !hd.is_multiple_of(2) || hd * n_heads != rows || rows.checked_mul(cols) != Some(len) {
        return Err(Error::model(format!(
            "cannot permute {len} values as {rows} rows x {cols} cols in {n_heads} heads of even size"
        )));
    }
    Ok(hd)
}

/// GGUF's adjacent-pair order -> HF's half-split order, per head: HF row `j*(hd/2)+i`
/// is GGUF row `2*i+j`. x: [n_heads * hd, cols] -> [n_heads * hd, cols].
pub fn unpermute_rows(x: &[f32], rows: usize, cols: usize, n_heads: usize) -> Result<Vec<f32>> {
    let hd = check_heads(x.len(), rows, cols, n_heads)?;
    let mut out = vec![0f32; x.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let to = (h * hd + j * (hd / 2) + i) * cols;
                let from = (h * hd + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&x[from..from + cols]);
            }
        }
    }
    Ok(out)
}

/// The inverse of [`unpermute_rows`]: HF half-split order -> GGUF adjacent-pair order
/// (what llama.cpp's converter does). x: [n_heads * hd, cols] -> same shape.
pub fn permute_rows(x: &[f32], rows: usize, cols: usize, n_heads: usize) -> Result<Vec<f32>> {
    let hd = check_heads(x.len(), rows, cols, n_heads)?;
    let mut out = vec![0f32; x.len()];
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let from = (h * hd + j * (hd / 2) + i) * cols;
                let to = (h * hd + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&x[from..from + cols]);
            }
        }
    }
    Ok(out)
}

/// Tokenizer-config fields of a GGUF tokenizer (token strings looked up by id).
pub fn hf_tokenizer_config_from_gguf(data: &GgufTokenizerData) -> HfTokenizerConfig {
    let token = |id: Option<u32>| id.and_then(|i| data.tokens.get(i as usize).cloned());
    HfTokenizerConfig {
        bos_token: token(data.bos_id),
        eos_token: token(data.eos_id),
        add_bos_token: data.add_bos,
        chat_template: data.chat_template.clone(),
        bos_token_id: data.bos_id,
        eos_token_ids: data.eos_id.into_iter().collect(),
    }
}

/// `config.json` for a model (f32 weights, SiLU MLP).
pub fn hf_config_json(cfg: &ModelConfig, tok: &HfTokenizerConfig) -> Value {
    let rope_scaling = match cfg.rope_scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => {
            json!({"type": "linear", "rope_type": "linear", "factor": factor})
        }
    };
    let eos = match tok.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "architectures": [cfg.arch.hf_architecture()],
        "model_type": cfg.arch.hf_model_type(),
        "_name_or_path": cfg.name,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": cfg.n_layers,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tied_embeddings,
        "attention_bias": cfg.qkv_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": eos,
    })
}

/// `tokenizer_config.json` for the tokenizer extras.
pub fn hf_tokenizer_config_json(tok: &HfTokenizerConfig) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "add_bos_token": tok.add_bos_token.unwrap_or(false),
        "chat_template": tok.chat_template,
        "clean_up_tokenization_spaces": false,
    })
}

/// Write `src` as a Hugging Face folder in `out_dir` (created if needed): every weight
/// dequantised to f32 (streamed, one tensor in memory at a time), Q/K rows (and biases)
/// un-permuted when the source is [`RopeLayout::Adjacent`](crate::model::RopeLayout),
/// plus config.json, `tokenizer_json` as tokenizer.json, and tokenizer_config.json from
/// `tok` (see [`hf_tokenizer_config_from_gguf`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn convert_to_hf(
    src: &dyn crate::model::ModelSource,
    tokenizer_json: &str,
    tok: &HfTokenizerConfig,
    out_dir: &std::path::Path,
) -> Result<()> {
    use std::io::Write;

    use crate::model::{RopeLayout, WeightName};

    let cfg = src.config();
    let io = |what: &str, e: std::io::Error| Error::model(format!("convert: {what}: {e}"));
    std::fs::create_dir_all(out_dir).map_err(|e| io(&out_dir.display().to_string(), e))?;
    let weights = cfg.expected_weights();
    let entries: Vec<(String, &str, Vec<usize>, usize)> = weights
        .iter()
        .map(|(w, shape)| (w.hf_name(), "F32", shape.clone(), shape.iter().product::<usize>() * 4))
        .collect();
    let header = crate::model::safetensors::safetensors_header(&entries)?;
    let path = out_dir.join("model.safetensors");
    let file = std::fs::File::create(&path).map_err(|e| io("model.safetensors", e))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&header).map_err(|e| io("model.safetensors", e))?;
    for (w, shape) in &weights {
        let t = src.tensor(*w)?.ok_or_else(|| Error::model(format!("convert: source lacks {}", w.gguf_name())))?;
        if &t.shape != shape {
            return Err(Error::model(format!(
                "convert: tensor {} has shape {:?}, expected {shape:?}",
                t.name, t.shape
            )));
        }
        let mut x = t.to_f32()?;
        if cfg.rope_layout == RopeLayout::Adjacent {
            let heads = match w {
                WeightName::AttnQ(_) | WeightName::AttnQBias(_) => Some(cfg.n_heads),
                WeightName::AttnK(_) | WeightName::AttnKBias(_) => Some(cfg.n_kv_heads),
                _ => None,
            };
            if let Some(n_heads) = heads {
                let rows = shape.first().copied().unwrap_or(0);
                let cols = shape.get(1).copied().unwrap_or(1);
                x = unpermute_rows(&x, rows, cols, n_heads)
                    .map_err(|e| Error::model(format!("convert: tensor {}: {e}", t.name)))?;
            }
        }
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(|e| io("model.safetensors", e))?;
    }
    out.flush().map_err(|e| io("model.safetensors", e))?;

    let write_json = |name: &str, v: &Value| -> Result<()> {
        let s = serde_json::to_string_pretty(v).map_err(|e| Error::internal(format!("convert: {name}: {e}")))?;
        std::fs::write(out_dir.join(name), s).map_err(|e| io(name, e))
    };
    write_json("config.json", &hf_config_json(cfg, tok))?;
    write_json("tokenizer_config.json", &hf_tokenizer_config_json(tok))?;
    std::fs::write(out_dir.join("tokenizer.json"), tokenizer_json).map_err(|e| io("tokenizer.json", e))?;
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::model::gguf::GgufSource;
    use crate::model::gguf_write::{TinySpec, tiny_gguf};
    use crate::model::safetensors::HfSource;
    use crate::model::{Arch, HostFormat, ModelSource, RopeLayout, WeightName};

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // 2 heads of hd 4, 1 column: HF rows [a0 a1 b0 b1] (a = first half) become
        // GGUF rows [a0 b0 a1 b1] per head.
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let gguf = permute_rows(&hf, 8, 1, 2).unwrap();
        assert_eq!(gguf, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(unpermute_rows(&gguf, 8, 1, 2).unwrap(), hf);
        let m: Vec<f32> = (0..48).map(|v| v as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&m, 12, 4, 3).unwrap(), 12, 4, 3).unwrap(), m);
        assert!(unpermute_rows(&m, 12, 4, 5).is_err());
        assert!(unpermute_rows(&m, 12, 3, 3).is_err());
    }

    #[test]
    fn gguf_to_hf_round_trip() {
        let cases = [
            (Arch::Llama, HostFormat::Q4_1, false),
            (Arch::Llama, HostFormat::F16, true),
            (Arch::Qwen2, HostFormat::Q8_0, true),
        ];
        for (arch, format, tied) in cases {
            let spec = TinySpec { tied, ..TinySpec::default() };
            let gguf = GgufSource::from_bytes(tiny_gguf(&spec, arch, 11, format).unwrap()).unwrap();
            let tok = hf_tokenizer_config_from_gguf(&gguf.tokenizer_data().unwrap());
            assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));
            let dir =
                std::env::temp_dir().join(format!("wsi-convert-{}-{arch:?}-{format:?}-{tied}", std::process::id()));
            convert_to_hf(&gguf, "{\"model\": {}}", &tok, &dir).unwrap();
            let hf = HfSource::open_dir(&dir).unwrap();
            let expected = ModelConfig { rope_layout: RopeLayout::HalfSplit, ..gguf.config().clone() };
            assert_eq!(hf.config(), &expected);
            assert_eq!(hf.tokenizer_config().eos_token_ids, vec![2]);
            assert_eq!(hf.tokenizer_config().chat_template, tok.chat_template);
            assert_eq!(hf.tokenizer_config().bos_token.as_deref(), Some("<|im_start|>"));
            assert_eq!(hf.tensor(WeightName::Output).unwrap().is_some(), !tied);
            let c = gguf.config();
            for (w, shape) in c.expected_weights() {
                let a = gguf.tensor(w).unwrap().unwrap().to_f32().unwrap();
                let b = hf.tensor(w).unwrap().unwrap();
                assert_eq!(b.format, HostFormat::F32);
                let mut b = b.to_f32().unwrap();
                let heads = match w {
                    _ if arch == Arch::Qwen2 => None,
                    WeightName::AttnQ(_) => Some(c.n_heads),
                    WeightName::AttnK(_) => Some(c.n_kv_heads),
                    _ => None,
                };
                if let Some(h) = heads {
                    assert_ne!(a, b, "{w:?} should be permuted");
                    b = permute_rows(&b, shape[0], shape[1], h).unwrap();
                }
                assert_eq!(a, b, "{w:?}");
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
