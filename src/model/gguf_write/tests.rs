//! Tests of the GGUF writer and the tiny synthetic models.
use super::*;
use crate::model::gguf::{GgufFile, GgufSource};
use crate::model::{ModelSource, RopeLayout, WeightName};

#[test]
fn metadata_round_trip_all_types() {
    let mut w = GgufWriter::new();
    let nested = GgufValue::Array(GgufType::Array, vec![i32_array([1, -2]), i32_array([]), i32_array([3])]);
    let values = vec![
        ("a.u8", GgufValue::U8(7)),
        ("a.i8", GgufValue::I8(-7)),
        ("a.u16", GgufValue::U16(65535)),
        ("a.i16", GgufValue::I16(-300)),
        ("a.u32", GgufValue::U32(1 << 31)),
        ("a.i32", GgufValue::I32(-5)),
        ("a.f32", GgufValue::F32(0.25)),
        ("a.bool", GgufValue::Bool(true)),
        ("a.str", GgufValue::String("héllo".into())),
        ("a.u64", GgufValue::U64(u64::MAX)),
        ("a.i64", GgufValue::I64(i64::MIN)),
        ("a.f64", GgufValue::F64(-1.5)),
        ("a.strs", string_array(["x", "", "yz"])),
        ("a.nested", nested),
        ("a.empty", f32_array([])),
    ];
    for (k, v) in &values {
        w.set(k, v.clone()).unwrap();
    }
    w.add_f32("t", &[2, 32], HostFormat::Q8_0, &[0.5; 64]).unwrap();
    let bytes = w.to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.version, 3);
    for (k, v) in &values {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    let t = f.tensor_info("t").unwrap();
    assert_eq!(t.shape, vec![2, 32]);
    assert_eq!(t.ne, vec![32, 2]);
    assert_eq!(t.range.start % 32, 0);
    assert_eq!(t.range.len(), 68);
    assert_eq!(f.data_offset % 32, 0);
}

#[test]
fn mixed_array_is_rejected() {
    let mut w = GgufWriter::new();
    let bad = GgufValue::Array(GgufType::U8, vec![GgufValue::U8(1), GgufValue::I8(1)]);
    assert!(w.set("k", bad).is_err());
    assert!(w.add_f32("t", &[3, 31], HostFormat::Q4_0, &[0.0; 93]).is_err());
    assert!(w.add_tensor("t", &[4], HostFormat::F32, vec![0; 15]).is_err());
}

#[test]
fn custom_alignment() {
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_f32("a", &[3], HostFormat::F32, &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32("b", &[2], HostFormat::F16, &[4.0, 5.0]).unwrap();
    let bytes = w.to_bytes();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.alignment, 64);
    let b = f.tensor_info("b").unwrap();
    assert_eq!(b.offset, 64);
    let y = ggml::dequantize(HostFormat::F16, &bytes[b.range.clone()], 2).unwrap();
    assert_eq!(y, vec![4.0, 5.0]);
}

#[test]
fn tiny_model_loads_and_is_deterministic() {
    let spec = TinySpec::default();
    for format in [HostFormat::F32, HostFormat::F16, HostFormat::Q8_0, HostFormat::Q4_1] {
        let bytes = tiny_llama_gguf(&spec, 7, format);
        assert_eq!(bytes, tiny_llama_gguf(&spec, 7, format));
        let src = GgufSource::from_bytes(bytes).unwrap();
        let c = src.config();
        assert_eq!((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads), (2, 64, 4, 2));
        assert_eq!((c.head_dim, c.d_ff, c.vocab_size, c.context_length), (16, 128, 320, 256));
        assert_eq!(c.rope_layout, RopeLayout::Adjacent);
        assert!(c.tied_embeddings && !c.qkv_bias);
        assert!(src.tensor(WeightName::Output).unwrap().is_none());
        let q = src.tensor(WeightName::AttnQ(1)).unwrap().unwrap();
        assert_eq!(q.shape, vec![64, 64]);
        assert_eq!(q.format, format);
        assert!(matches!(q.bytes, std::borrow::Cow::Borrowed(_)));
        let v = q.to_f32().unwrap();
        let sd = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((0.08..0.17).contains(&sd), "{sd}");
        let n = src.tensor(WeightName::FfnNorm(0)).unwrap().unwrap();
        assert_eq!(n.format, HostFormat::F32);
        assert!(n.to_f32().unwrap().iter().all(|x| (0.89..1.11).contains(x)));
        let tok = src.tokenizer_data().unwrap();
        assert_eq!(tok.tokens.len(), 320);
        assert_eq!(tok.tokens[0], "<|endoftext|>");
        assert_eq!(tok.tokens[3 + 32], "Ġ");
        assert_eq!(tok.merges.as_ref().map(Vec::len), Some(24));
        assert_eq!((tok.bos_id, tok.eos_id, tok.add_bos), (Some(1), Some(2), Some(false)));
        assert!(tok.chat_template.is_some());
    }
    let untied = TinySpec { tied: false, ..TinySpec::default() };
    let src = GgufSource::from_bytes(tiny_llama_gguf(&untied, 1, HostFormat::Q4_0)).unwrap();
    assert!(!src.config().tied_embeddings);
    assert_eq!(src.tensor(WeightName::Output).unwrap().unwrap().shape, vec![320, 64]);
    assert_ne!(tiny_llama_gguf(&untied, 1, HostFormat::F32), tiny_llama_gguf(&untied, 2, HostFormat::F32));
}

#[test]
fn tiny_qwen2_has_biases_and_half_split_rope() {
    let spec = TinySpec::default();
    let bytes = tiny_gguf(&spec, Arch::Qwen2, 3, HostFormat::Q8_0).unwrap();
    let src = GgufSource::from_bytes(bytes).unwrap();
    let c = src.config();
    assert_eq!((c.arch, c.rope_layout), (Arch::Qwen2, RopeLayout::HalfSplit));
    assert!(c.qkv_bias);
    assert_eq!((c.rope_theta, c.rms_eps), (1e6, 1e-6));
    let b = src.tensor(WeightName::AttnKBias(1)).unwrap().unwrap();
    assert_eq!((b.shape.as_slice(), b.format), (&[32][..], HostFormat::F32));
    // The llama weights do not depend on the biases being drawn.
    let llama = GgufSource::from_bytes(tiny_llama_gguf(&spec, 3, HostFormat::Q8_0)).unwrap();
    let q = |s: &GgufSource| s.tensor(WeightName::AttnQ(1)).unwrap().unwrap().to_f32();
    assert_eq!(q(&src).unwrap(), q(&llama).unwrap());
    let m = tiny_gguf(&spec, Arch::Mistral, 3, HostFormat::F32).unwrap();
    assert_eq!(GgufSource::from_bytes(m).unwrap().config().arch, Arch::Mistral);
}

#[test]
fn bad_specs_are_errors() {
    let s = TinySpec { vocab: 10, ..TinySpec::default() };
    assert!(try_tiny_llama_gguf(&s, 0, HostFormat::F32).is_err());
    let s = TinySpec { n_kv_heads: 3, ..TinySpec::default() };
    assert!(try_tiny_llama_gguf(&s, 0, HostFormat::F32).is_err());
}

#[test]
fn byte_map_is_a_bijection() {
    let chars: std::collections::HashSet<char> = (0..=255u8).map(gpt2_byte_char).collect();
    assert_eq!(chars.len(), 256);
    assert_eq!(gpt2_byte_char(b' '), 'Ġ');
    assert_eq!(gpt2_byte_char(b'\n'), 'Ċ');
    assert_eq!(gpt2_byte_char(b'a'), 'a');
}

#[test]
fn tiny_model_in_k_quants() {
    let spec = TinySpec { n_layers: 1, d_model: 256, n_heads: 4, n_kv_heads: 2, d_ff: 512, ..TinySpec::default() };
    for f in [HostFormat::Q2K, HostFormat::Q3K, HostFormat::Q4K, HostFormat::Q5K, HostFormat::Q6K] {
        let src = GgufSource::from_bytes(tiny_llama_gguf(&spec, 9, f)).unwrap();
        for w in [WeightName::AttnK(0), WeightName::FfnDown(0), WeightName::TokenEmbd] {
            let t = src.tensor(w).unwrap().unwrap();
            assert_eq!(t.format, f, "{w:?}");
            assert!(t.to_f32().unwrap().iter().all(|v| v.is_finite() && v.abs() < 1.0));
        }
    }
}
