//! Model loading without a GPU: malformed GGUF and safetensors inputs are clear
//! `model_loading_error`s (never panics), valid ones load; and the real SmolLM2 file when
//! it is present (`WSI_MODEL`, or `models/` under the crate root).
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;

use wsi::Error;
use wsi::model::gguf::{GgufFile, GgufSource, GgufValue};
use wsi::model::gguf_write::{GgufWriter, SplitMix64, TinySpec, tiny_llama_gguf};
use wsi::model::safetensors::{HfSource, parse_safetensors, safetensors_header};
use wsi::model::{HostFormat, ModelSource, RopeLayout, RopeScaling, WeightName};

fn check_err(e: Error, needles: &[&str]) -> String {
    assert_eq!(e.code(), "model_loading_error", "{e}");
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
    msg
}

fn gguf_err(bytes: Vec<u8>, needles: &[&str]) -> String {
    match GgufSource::from_bytes(bytes) {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => check_err(e, needles),
    }
}

fn hf_err(files: Vec<(String, Vec<u8>)>, needles: &[&str]) -> String {
    match HfSource::from_files(files) {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => check_err(e, needles),
    }
}

fn tiny(format: HostFormat) -> Vec<u8> {
    tiny_llama_gguf(&TinySpec::default(), 5, format)
}

/// Parse the tiny model, let `edit` change it, write it again.
fn edited(edit: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let bytes = tiny(HostFormat::Q8_0);
    let parsed = GgufFile::parse(&bytes).unwrap();
    let mut w = GgufWriter::from_parsed(&parsed, &bytes).unwrap();
    edit(&mut w);
    w.to_bytes()
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn push_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn push_tensor(b: &mut Vec<u8>, name: &str, ne: &[u64], ty: u32, offset: u64) {
    push_str(b, name);
    b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
    for d in ne {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
}

fn parse_err(bytes: &[u8], needles: &[&str]) -> String {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => check_err(e, needles),
    }
}

#[test]
fn valid_tiny_model_loads_in_every_writable_format() {
    for f in [HostFormat::F32, HostFormat::F16, HostFormat::BF16, HostFormat::Q8_0, HostFormat::Q4_0, HostFormat::Q4_1]
    {
        let src = wsi::model::open::open_bytes(tiny(f)).unwrap();
        assert_eq!(src.config().n_layers, 2);
        assert_eq!(src.tensor(WeightName::FfnDown(1)).unwrap().unwrap().format, f);
    }
}

#[test]
fn truncated_gguf_is_an_error_at_every_cut() {
    let bytes = tiny(HostFormat::Q4_0);
    let data_offset = GgufFile::parse(&bytes).unwrap().data_offset;
    let mut cuts: Vec<usize> = (0..64).collect();
    cuts.extend((64..data_offset + 64).step_by(7));
    cuts.extend([bytes.len() - 1, bytes.len() - 40]);
    for cut in cuts {
        let msg = gguf_err(bytes[..cut].to_vec(), &[]);
        assert!(!msg.is_empty());
    }
    gguf_err(bytes[..10].to_vec(), &["truncated", "tensor count"]);
    gguf_err(bytes[..bytes.len() - 1].to_vec(), &["past the end"]);
}

#[test]
fn wrong_magic() {
    let mut b = tiny(HostFormat::F32);
    b[..4].copy_from_slice(b"GGML");
    gguf_err(b.clone(), &["not a GGUF file"]);
    match wsi::model::open::open_bytes(b) {
        Ok(_) => panic!("wrong magic accepted"),
        Err(e) => check_err(e, &["not a GGUF file"]),
    };
}

#[test]
fn gguf_versions() {
    for v in [0u32, 1, 4, 0xffff_ffff] {
        let mut b = tiny(HostFormat::F32);
        b[4..8].copy_from_slice(&v.to_le_bytes());
        gguf_err(b, &["unsupported GGUF version", &v.to_string()]);
    }
    let mut b = tiny(HostFormat::F32);
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    gguf_err(b, &["big-endian"]);
    let mut b = tiny(HostFormat::F32);
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufSource::from_bytes(b).unwrap().parsed().version, 2);
}

#[test]
fn tensor_data_past_the_end() {
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "w", &[8], 0, 0);
    parse_err(&b, &["tensor w", "past the end"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "w", &[8], 0, 1 << 63);
    b.resize(b.len() + 64, 0);
    parse_err(&b, &["tensor w", "past the end"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "w", &[8], 0, 4);
    b.resize(b.len() + 64, 0);
    parse_err(&b, &["tensor w", "alignment"]);
}

#[test]
fn absurd_dimensions() {
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "big", &[1 << 62], 0, 0);
    parse_err(&b, &["tensor big", "overflow"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "big2", &[1 << 62, 1 << 62], 8, 0);
    parse_err(&b, &["tensor big2", "overflow"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "big3", &[1 << 62], 8, 0);
    parse_err(&b, &["tensor big3", "past the end"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "odd", &[33, 2], 2, 0);
    b.resize(b.len() + 256, 0);
    parse_err(&b, &["tensor odd", "blocks"]);
    let mut b = header(3, 1, 0);
    push_tensor(&mut b, "dims", &[1, 1, 1, 1, 1, 1, 1], 0, 0);
    parse_err(&b, &["tensor dims", "7 dimensions"]);
}

#[test]
fn absurd_counts() {
    parse_err(&header(3, 1 << 60, 0), &["tensor count", "1152921504606846976"]);
    parse_err(&header(3, 0, 1 << 60), &["metadata count"]);
    parse_err(&header(3, u64::MAX, u64::MAX), &["tensor count"]);
    // A key whose length is 2^60.
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.resize(b.len() + 64, b'a');
    parse_err(&b, &["length of metadata key"]);
    // A string value whose length is 2^60.
    let mut b = header(3, 0, 1);
    push_str(&mut b, "k");
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.resize(b.len() + 64, b'a');
    parse_err(&b, &["length of k"]);
    // An array of 2^60 u32.
    let mut b = header(3, 0, 1);
    push_str(&mut b, "arr");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.resize(b.len() + 64, 0);
    parse_err(&b, &["array length of arr"]);
    // Arrays nested 100 deep.
    let mut b = header(3, 0, 1);
    push_str(&mut b, "deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    parse_err(&b, &["deep", "nested"]);
    // An unknown value type.
    let mut b = header(3, 0, 1);
    push_str(&mut b, "k");
    b.extend_from_slice(&99u32.to_le_bytes());
    b.resize(b.len() + 16, 0);
    parse_err(&b, &["unknown value type 99"]);
}

#[test]
fn missing_tokenizer_metadata() {
    let b = edited(|w| {
        w.remove("tokenizer.ggml.tokens");
    });
    gguf_err(b, &["missing tokenizer metadata", "tokenizer.ggml.tokens"]);
    let b = edited(|w| {
        w.remove("tokenizer.ggml.model");
    });
    gguf_err(b, &["missing tokenizer metadata", "tokenizer.ggml.model"]);
    let b = edited(|w| {
        w.set("tokenizer.ggml.eos_token_id", GgufValue::U32(100_000)).unwrap();
    });
    gguf_err(b, &["eos_token_id", "100000"]);
}

#[test]
fn unknown_architecture() {
    let b = edited(|w| {
        w.set("general.architecture", GgufValue::String("gpt-neox".into())).unwrap();
    });
    gguf_err(b, &["unsupported model architecture", "gpt-neox"]);
    let b = edited(|w| {
        w.remove("general.architecture");
    });
    gguf_err(b, &["general.architecture"]);
}

#[test]
fn missing_or_misshapen_weights_and_hparams() {
    let b = edited(|w| {
        w.remove_tensor("blk.1.ffn_up.weight");
    });
    gguf_err(b, &["missing tensor blk.1.ffn_up.weight", "[128, 64]"]);
    let b = edited(|w| {
        w.remove_tensor("blk.0.attn_k.weight");
        w.add_f32("blk.0.attn_k.weight", &[64, 64], HostFormat::F32, &[0.0; 4096]).unwrap();
    });
    gguf_err(b, &["blk.0.attn_k.weight", "[64, 64]", "[32, 64]"]);
    let b = edited(|w| {
        w.remove("llama.embedding_length");
    });
    gguf_err(b, &["llama.embedding_length", "missing"]);
    let b = edited(|w| {
        w.set("llama.attention.head_count", GgufValue::String("nine".into())).unwrap();
    });
    gguf_err(b, &["llama.attention.head_count", "integer"]);
    let b = edited(|w| {
        w.set("llama.rope.scaling.type", GgufValue::String("yarn".into())).unwrap();
    });
    gguf_err(b, &["yarn"]);
    let b = edited(|w| {
        w.set("llama.rope.scaling.type", GgufValue::String("linear".into())).unwrap();
        w.set("llama.rope.scaling.factor", GgufValue::F32(4.0)).unwrap();
    });
    let src = GgufSource::from_bytes(b).unwrap();
    assert_eq!(src.config().rope_scaling, RopeScaling::Linear { factor: 4.0 });
}

fn st_file(header_json: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header_json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header_json.as_bytes());
    b.extend_from_slice(data);
    b
}

fn st_err(bytes: &[u8], needles: &[&str]) {
    match parse_safetensors(bytes, "model.safetensors") {
        Ok(t) => panic!("expected an error mentioning {needles:?}, got {t:?}"),
        Err(e) => {
            check_err(e, needles);
        }
    }
}

#[test]
fn safetensors_header_that_lies() {
    let ok = st_file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"x":"y"}}"#, &[0; 8]);
    assert_eq!(parse_safetensors(&ok, "f").unwrap().len(), 1);
    st_err(&[1, 2, 3], &["too short"]);
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    st_err(&huge, &["header length"]);
    let mut past = 1000u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    st_err(&past, &["header length 1000"]);
    st_err(&st_file("not json", &[]), &["JSON"]);
    st_err(&st_file(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]), &["tensor a", "outside"]);
    st_err(
        &st_file(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
        &["tensor a", "needs 12 bytes"],
    );
    st_err(
        &st_file(
            r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},
                "b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}"#,
            &[0; 12],
        ),
        &["overlap"],
    );
    st_err(&st_file(r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,4]}}"#, &[0; 4]), &["unknown dtype Q9"]);
    st_err(
        &st_file(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}}"#, &[0; 4]),
        &["tensor a", "too large"],
    );
    st_err(&st_file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#, &[0; 8]), &["tensor a"]);
    st_err(&st_file(r#"{"a":{"dtype":"F32"}}"#, &[]), &["tensor a"]);
}

/// The tiny model as Hugging Face files in memory (via convert).
fn hf_files(tag: &str) -> Vec<(String, Vec<u8>)> {
    let gguf = GgufSource::from_bytes(tiny(HostFormat::Q4_1)).unwrap();
    let tok = wsi::model::convert::hf_tokenizer_config_from_gguf(&gguf.tokenizer_data().unwrap());
    let dir = std::env::temp_dir().join(format!("wsi-test-{tag}-{}", std::process::id()));
    wsi::model::convert::convert_to_hf(&gguf, "{}", &tok, &dir).unwrap();
    let mut files = Vec::new();
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        files.push((name.to_string(), std::fs::read(dir.join(name)).unwrap()));
    }
    std::fs::remove_dir_all(&dir).ok();
    files
}

fn replace(files: &mut [(String, Vec<u8>)], name: &str, bytes: Vec<u8>) {
    for f in files.iter_mut() {
        if f.0 == name {
            f.1 = bytes.clone();
        }
    }
}

#[test]
fn hf_folder_in_memory_loads_and_rejects_lies() {
    let files = hf_files("mem");
    let src = HfSource::from_files(files.clone()).unwrap();
    assert_eq!(src.config().rope_layout, RopeLayout::HalfSplit);
    assert_eq!(src.config().d_model, 64);
    assert_eq!(src.tensor(WeightName::AttnQ(0)).unwrap().unwrap().shape, vec![64, 64]);

    // Sharded: split the tensors over two files listed by an index.
    let full = parse_safetensors(&files[3].1, "model.safetensors").unwrap();
    let mut shards = [Vec::new(), Vec::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, t) in full.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(t.name.clone(), serde_json::Value::String(file));
        shards[i % 2].push(t);
    }
    let mut sharded: Vec<(String, Vec<u8>)> = files[..3].to_vec();
    for (i, shard) in shards.iter().enumerate() {
        let entries: Vec<(String, &str, Vec<usize>, usize)> =
            shard.iter().map(|t| (t.name.clone(), t.dtype.as_str(), t.shape.clone(), t.range.len())).collect();
        let mut bytes = safetensors_header(&entries).unwrap();
        for t in shard {
            bytes.extend_from_slice(&files[3].1[t.range.clone()]);
        }
        sharded.push((format!("dir/model-0000{}-of-00002.safetensors", i + 1), bytes));
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    sharded.push(("model.safetensors.index.json".into(), index.to_string().into_bytes()));
    let sh = HfSource::from_files(sharded.clone()).unwrap();
    for (w, _) in src.config().expected_weights() {
        let a = src.tensor(w).unwrap().unwrap();
        let b = sh.tensor(w).unwrap().unwrap();
        assert_eq!(a.bytes, b.bytes, "{w:?}");
    }
    // A missing shard, and a shard name that escapes the folder.
    let no_second: Vec<_> = sharded.iter().filter(|f| !f.0.contains("00002-of")).cloned().collect();
    hf_err(no_second, &["model-00002-of-00002.safetensors", "missing"]);
    let mut evil = sharded.clone();
    let bad_index = serde_json::json!({"weight_map": {"model.norm.weight": "../../etc/passwd"}});
    replace(&mut evil, "model.safetensors.index.json", bad_index.to_string().into_bytes());
    hf_err(evil, &["../../etc/passwd"]);

    // A header that claims more bytes than the file has.
    let mut lying = files.clone();
    let mut st = files[3].1.clone();
    st.truncate(st.len() - 4);
    replace(&mut lying, "model.safetensors", st);
    hf_err(lying, &["safetensors model.safetensors", "outside"]);
    let mut lying = files.clone();
    let mut st = files[3].1.clone();
    st[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    replace(&mut lying, "model.safetensors", st);
    hf_err(lying, &["header length"]);

    // config.json problems.
    hf_err(files[1..].to_vec(), &["config.json is missing"]);
    let cfg: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    for (key, value, needle) in [
        ("architectures", serde_json::json!(["GPTNeoXForCausalLM"]), "GPTNeoXForCausalLM"),
        ("hidden_size", serde_json::json!("wide"), "config.json"),
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8}), "llama3"),
        ("num_key_value_heads", serde_json::json!(3), "n_kv_heads"),
        ("intermediate_size", serde_json::json!(96), "model.layers.0.mlp.gate_proj.weight"),
    ] {
        let mut c = cfg.clone();
        c[key] = value;
        let mut f = files.clone();
        replace(&mut f, "config.json", c.to_string().into_bytes());
        hf_err(f, &[needle]);
    }
    let mut f = files.clone();
    f.push(("generation_config.json".into(), br#"{"eos_token_id": [2, 0], "bos_token_id": 1}"#.to_vec()));
    let s = HfSource::from_files(f).unwrap();
    assert_eq!(s.tokenizer_config().eos_token_ids, vec![2, 0]);
    let mut c = cfg.clone();
    c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    let mut f = files.clone();
    replace(&mut f, "config.json", c.to_string().into_bytes());
    let s = HfSource::from_files(f).unwrap();
    assert_eq!(s.config().rope_scaling, RopeScaling::Linear { factor: 2.0 });
}

#[test]
fn open_path_dispatch() {
    let dir = std::env::temp_dir().join(format!("wsi-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, tiny(HostFormat::Q8_0)).unwrap();
    let src = wsi::model::open_path(&gguf).unwrap();
    assert_eq!(src.config().rope_layout, RopeLayout::Adjacent);

    let txt = dir.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    match wsi::model::open_path(&txt) {
        Ok(_) => panic!("text file accepted"),
        Err(e) => check_err(e, &["neither a GGUF file", "notes.txt"]),
    };
    match wsi::model::open_path(&dir.join("absent.gguf")) {
        Ok(_) => panic!("missing file accepted"),
        Err(e) => check_err(e, &["cannot open", "absent.gguf"]),
    };
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    match wsi::model::open_path(&hf) {
        Ok(_) => panic!("empty folder accepted"),
        Err(e) => check_err(e, &["config.json is missing"]),
    };
    for (name, bytes) in hf_files("open") {
        std::fs::write(hf.join(name), bytes).unwrap();
    }
    let src = wsi::model::open_path(&hf).unwrap();
    assert_eq!(src.config().rope_layout, RopeLayout::HalfSplit);
    assert_eq!(src.tensor(WeightName::TokenEmbd).unwrap().unwrap().format, HostFormat::F32);
    std::fs::remove_dir_all(&dir).ok();
}

fn real_model_path() -> Option<PathBuf> {
    let p = match std::env::var_os("WSI_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    p.is_file().then_some(p)
}

#[test]
#[allow(clippy::excessive_precision)] // golden values printed by gguf-py
fn real_smollm2_q4_1() {
    let Some(path) = real_model_path() else {
        eprintln!("SmolLM2-135M-Instruct.Q4_1.gguf not found (set WSI_MODEL): skipped");
        return;
    };
    let src = GgufSource::open(&path).unwrap();
    let c = src.config();
    assert_eq!(c.arch, wsi::model::Arch::Llama);
    assert_eq!((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads), (30, 576, 9, 3));
    assert_eq!((c.head_dim, c.d_ff, c.vocab_size), (64, 1536, 49152));
    assert_eq!(c.rope_theta, 100_000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert_eq!(c.rope_layout, RopeLayout::Adjacent);
    assert!(c.tied_embeddings && !c.qkv_bias);
    assert!(c.context_length >= 2048);
    assert!(c.rms_eps > 0.0 && c.rms_eps < 1e-4);

    let tok = src.tokenizer_data().unwrap();
    assert_eq!(tok.model, "gpt2");
    assert_eq!(tok.tokens.len(), 49152);
    assert_eq!(tok.eos_id, Some(2));
    assert_eq!(tok.add_bos, Some(false));
    assert!(tok.merges.as_ref().is_some_and(|m| m.len() > 40_000));
    assert!(tok.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));

    let embd = src.tensor(WeightName::TokenEmbd).unwrap().unwrap();
    assert_eq!(embd.format, HostFormat::Q8_0);
    assert_eq!(embd.shape, vec![49152, 576]);
    let mut formats = std::collections::HashSet::new();
    for (w, shape) in c.expected_weights() {
        let t = src.tensor(w).unwrap().unwrap();
        assert_eq!(t.shape, shape);
        formats.insert(t.format);
        let x = t.to_f32().unwrap();
        assert!(x.iter().all(|v| v.is_finite()), "{w:?} has non-finite values");
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        assert!(rms > 1e-3 && rms < 10.0, "{w:?} rms {rms}");
    }
    assert!(formats.contains(&HostFormat::Q4_1) && formats.contains(&HostFormat::F32));
    assert_eq!(c.context_length, 8192);
    assert_eq!(c.rms_eps, 1e-5);
    assert_eq!(tok.bos_id, Some(1));
    assert_eq!(tok.pre.as_deref(), Some("smollm"));

    // Golden checksums from gguf-py 0.19 (`gguf.quants.dequantize`): sum, sum of
    // x[i] * (i % 1000 + 1), first values.
    let golden: [(WeightName, HostFormat, f64, f64, [f32; 3]); 5] = [
        (
            WeightName::TokenEmbd,
            HostFormat::Q8_0,
            -15353.04449415207,
            -7633473.04289484,
            [-0.10654449462890625, 0.032978057861328125, 0.048198699951171875],
        ),
        (
            WeightName::AttnQ(0),
            HostFormat::Q4_1,
            59.22322082519531,
            9388.28125,
            [-0.0963134765625, 0.1573486328125, -0.0963134765625],
        ),
        (
            WeightName::FfnDown(29),
            HostFormat::Q4_1,
            49.83570861816406,
            -724.3623352050781,
            [-0.2733154296875, 0.186279296875, 0.186279296875],
        ),
        (
            WeightName::AttnK(3),
            HostFormat::Q4_1,
            -52.82200622558594,
            -39734.251693725586,
            [0.1629638671875, 0.06451416015625, 0.015289306640625],
        ),
        (WeightName::OutputNorm, HostFormat::F32, 1038.33203125, 299776.453125, [1.7578125, 1.8203125, 1.78125]),
    ];
    for (w, format, sum, wsum, first) in golden {
        let t = src.tensor(w).unwrap().unwrap();
        assert_eq!(t.format, format, "{w:?}");
        let x = t.to_f32().unwrap();
        let s: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let ws: f64 = x.iter().enumerate().map(|(i, &v)| f64::from(v) * (i % 1000 + 1) as f64).sum();
        assert!((s - sum).abs() <= 1e-6 * sum.abs().max(1.0) * 100.0, "{w:?} sum {s} vs {sum}");
        assert!((ws - wsum).abs() <= 1e-4 * wsum.abs().max(1.0), "{w:?} {ws} vs {wsum}");
        assert_eq!(x[..3], first, "{w:?}");
    }
}

/// Everything a loaded source offers, exercised (must not panic on any input).
fn exercise(src: &dyn ModelSource) {
    for (w, _) in src.config().expected_weights() {
        if let Ok(Some(t)) = src.tensor(w) {
            let _ = t.to_f32();
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = tiny(HostFormat::Q4_1);
    let data_offset = GgufFile::parse(&bytes).unwrap().data_offset;
    let mut rng = SplitMix64(42);
    let mut loaded = 0;
    let iters = std::env::var("WSI_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    for i in 0..iters {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            // Mostly the header, sometimes anywhere.
            let span = if i % 4 == 0 { b.len() } else { data_offset };
            let at = (rng.next_u64() % span as u64) as usize;
            b[at] = match rng.next_u64() % 4 {
                0 => 0xff,
                1 => 0,
                2 => b[at] ^ (1 << (rng.next_u64() % 8)),
                _ => rng.next_u64() as u8,
            };
        }
        match GgufSource::from_bytes(b) {
            Ok(src) => {
                loaded += 1;
                exercise(&src);
                let _ = src.tokenizer_data();
            }
            Err(e) => assert_eq!(e.code(), "model_loading_error"),
        }
    }
    assert!(loaded > 0, "some corruptions (inside strings, weights) should still load");

    let files = hf_files("fuzz");
    let st = files[3].1.clone();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize + 8;
    for _ in 0..300 {
        let mut b = st.clone();
        let at = (rng.next_u64() % header_len as u64) as usize;
        b[at] = rng.next_u64() as u8;
        let mut f = files.clone();
        replace(&mut f, "model.safetensors", b);
        match HfSource::from_files(f) {
            Ok(src) => exercise(&src),
            Err(e) => assert_eq!(e.code(), "model_loading_error"),
        }
    }
}
