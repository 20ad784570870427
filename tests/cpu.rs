//! The CPU engine (`src/cpu`): its kernels against dequantised products, its forward pass
//! against the f32 reference on tiny models, and the real SmolLM2 against the golden
//! fixture. Natively this runs the scalar kernels; `web_cpu.rs` runs the SIMD ones in the
//! browsers against them.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::sync::Mutex;

use common::{rand_vec, require_smollm2};
use serde_json::Value;
use wsi::config::StreamingConfig;
use wsi::cpu::CpuEngine;
use wsi::cpu::kernels::{Matrix, QuantVec};
use wsi::engine::{FinishReason, GenerateParams};
use wsi::model::gguf::GgufSource;
use wsi::model::gguf_write::{TinySpec, tiny_gguf};
use wsi::model::{Arch, HostFormat};
use wsi::quant::ggml;

fn config(quantization: &str) -> StreamingConfig {
    StreamingConfig::from_json_str(&format!(r#"{{"quantization": "{quantization}"}}"#)).expect("config")
}

fn dequantised_product(w: &Matrix, x: &QuantVec) -> Vec<f64> {
    let xs: Vec<f64> = x.q.iter().enumerate().map(|(i, &q)| f64::from(q) * f64::from(x.scale[i / 32])).collect();
    let mut row = vec![0.0f32; w.cols()];
    (0..w.rows())
        .map(|r| {
            w.row_into(r, &mut row).expect("row");
            row.iter().zip(&xs).map(|(&a, &b)| f64::from(a) * b).sum()
        })
        .collect()
}

#[test]
fn int4_and_int8_matvecs_equal_the_dequantised_product() {
    let (rows, cols) = (37, 160);
    let w = rand_vec(rows * cols, 3, 1.0);
    let mut x = QuantVec::default();
    x.quantize(&rand_vec(cols, 4, 2.0));
    for m in [
        Matrix::from_q4_1(&ggml::quantize_q4_1(&w).unwrap(), rows, cols).unwrap(),
        Matrix::from_q4_0(&ggml::quantize_q4_0(&w).unwrap(), rows, cols).unwrap(),
        Matrix::from_q8_0(&ggml::quantize_q8_0(&w).unwrap(), rows, cols).unwrap(),
    ] {
        let want = dequantised_product(&m, &x);
        let (mut y, mut ys) = (vec![0.0; rows], vec![0.0; rows]);
        m.matvec(&x, &mut y).unwrap();
        m.matvec_scalar(&x, &mut ys).unwrap();
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for r in 0..rows {
            let err = (f64::from(y[r]) - want[r]).abs() / scale;
            assert!(err < 1e-5, "{} row {r}: {} vs {} (err {err})", m.format_name(), y[r], want[r]);
            assert!((y[r] - ys[r]).abs() <= 1e-5 * scale as f32);
        }
    }
}

#[test]
fn gguf_blocks_are_kept_bit_for_bit() {
    let (rows, cols) = (5, 96);
    let w = rand_vec(rows * cols, 7, 1.0);
    for (format, m) in [
        (HostFormat::Q4_1, Matrix::from_q4_1 as fn(&[u8], usize, usize) -> wsi::Result<Matrix>),
        (HostFormat::Q4_0, Matrix::from_q4_0),
        (HostFormat::Q8_0, Matrix::from_q8_0),
    ] {
        let bytes = ggml::quantize(format, &w).unwrap();
        let want = ggml::dequantize(format, &bytes, rows * cols).unwrap();
        let m = m(&bytes, rows, cols).unwrap();
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            m.row_into(r, &mut row).unwrap();
            assert_eq!(row, want[r * cols..(r + 1) * cols], "{format:?} row {r}");
        }
    }
}

#[test]
fn a_matrix_of_partial_groups_or_short_bytes_is_refused_with_a_code() {
    let e = Matrix::from_q8_0(&[0; 34], 1, 40).unwrap_err();
    assert_eq!(e.code(), "invalid_request", "{e}");
    let e = Matrix::from_q4_1(&[0; 19], 1, 32).unwrap_err();
    assert_eq!(e.code(), "model_loading_error", "{e}");
}

/// A tiny model whose every dimension is whole 32-weight groups, with Q8_0 matrices, so the
/// reference and the CPU engine multiply the same weights.
fn tiny(arch: Arch, seed: u64, format: HostFormat) -> GgufSource {
    let spec = TinySpec {
        n_layers: 2,
        d_model: 96,
        n_heads: 6,
        n_kv_heads: 2,
        d_ff: 160,
        vocab: 320,
        context: 64,
        tied: arch != Arch::Qwen2,
    };
    GgufSource::from_bytes(tiny_gguf(&spec, arch, seed, format).expect("tiny model")).expect("parse")
}

fn logits_along(e: &mut CpuEngine, ids: &[u32]) -> Vec<Vec<f32>> {
    e.model.truncate(0);
    ids.iter()
        .map(|&id| {
            let mut l = Vec::new();
            e.model.step(id, Some(&mut l)).expect("step");
            l
        })
        .collect()
}

#[test]
fn tiny_models_follow_the_reference_forward_at_every_position() {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 300).collect();
    for (arch, format, quantization) in [
        (Arch::Llama, HostFormat::Q8_0, "int8"),
        (Arch::Qwen2, HostFormat::Q8_0, "int8"),
        (Arch::Llama, HostFormat::Q4_1, "int4"),
    ] {
        let src = tiny(arch, 11, format);
        let want = wsi::model::reference::forward_all(&src, &ids).expect("reference");
        let mut e = CpuEngine::load(&src, &config(quantization), &mut |_, _| {}).expect("load");
        let got = logits_along(&mut e, &ids);
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            let scale = w.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let err = g.iter().zip(w).fold(0.0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
            // Only the 16-bit activations differ from the reference.
            assert!(err < 0.005, "{arch:?} {quantization} position {t}: error {err} of {scale}");
        }
    }
}

#[test]
fn fp16_and_int3_are_refused_on_the_cpu_with_invalid_request() {
    let src = tiny(Arch::Llama, 1, HostFormat::F32);
    for q in ["fp16", "int3"] {
        let e = CpuEngine::load(&src, &config(q), &mut |_, _| {}).err().expect("refused");
        assert_eq!(e.code(), "invalid_request", "{e}");
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, ignore_eos: true, ..Default::default() }
}

#[test]
fn a_shared_prefix_is_reused_and_gives_the_same_tokens_as_a_fresh_cache() {
    let src = tiny(Arch::Llama, 5, HostFormat::Q8_0);
    let mut e = CpuEngine::load(&src, &config("int8"), &mut |_, _| {}).expect("load");
    let prompt: Vec<u32> = (0..10).map(|i| (i * 13 + 40) % 300).collect();
    let first = pollster::block_on(e.generate(&prompt, &greedy(6), &mut |_| true)).expect("generate");
    // The next turn: the prompt, the reply, and more.
    let mut next = prompt.clone();
    next.extend_from_slice(&first.ids);
    next.extend_from_slice(&[50, 60]);
    let reused = pollster::block_on(e.generate(&next, &greedy(6), &mut |_| true)).expect("generate");
    e.model.truncate(0);
    let fresh = pollster::block_on(e.generate(&next, &greedy(6), &mut |_| true)).expect("generate");
    assert_eq!(reused.ids, fresh.ids);
    assert_eq!(reused.stats.prompt_tokens, next.len());
}

#[test]
fn the_callback_stops_a_generation_and_the_context_limit_is_an_error() {
    let src = tiny(Arch::Llama, 5, HostFormat::Q8_0);
    let mut e = CpuEngine::load(&src, &config("int8"), &mut |_, _| {}).expect("load");
    let mut seen = 0;
    let g = pollster::block_on(e.generate(&[7, 8, 9], &greedy(20), &mut |ev| {
        seen += usize::from(ev.id.is_some());
        seen < 3
    }))
    .expect("generate");
    assert_eq!((g.ids.len(), g.finish_reason), (3, FinishReason::Cancelled));
    let e2 = pollster::block_on(e.generate(&[7, 8, 9], &greedy(100), &mut |_| true)).unwrap_err();
    assert_eq!(e2.code(), "context_length_exceeded", "{e2}");
    let e3 = pollster::block_on(e.generate(&[], &greedy(1), &mut |_| true)).unwrap_err();
    assert_eq!(e3.code(), "invalid_request");
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/golden_smollm2.json")).expect("fixture parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// One int4 engine on the real model for the binary.
fn with_smollm2<R>(f: impl FnOnce(&mut CpuEngine) -> R) -> Option<R> {
    static E: Mutex<Option<CpuEngine>> = Mutex::new(None);
    let path = require_smollm2()?;
    let mut guard = E.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let src = wsi::model::open_path(&path).expect("open model");
        *guard = Some(CpuEngine::load(src.as_ref(), &config("int4"), &mut |_, _| {}).expect("load"));
    }
    Some(f(guard.as_mut().expect("engine")))
}

/// Teacher-forced along the reference's greedy continuations: how often the CPU's top id is
/// the reference's. The weights are the file's; the 16-bit activations are the difference.
#[test]
fn smollm2_int4_on_the_cpu_agrees_with_the_reference_top1() {
    let fx = fixture();
    let Some(()) = with_smollm2(|e| {
        let (mut same, mut total) = (0, 0);
        for p in fx["prompts"].as_array().expect("prompts") {
            let (prompt, want) = (ids(&p["prompt_token_ids"]), ids(&p["greedy_ids"]));
            let mut context = prompt.clone();
            context.extend_from_slice(&want[..want.len() - 1]);
            let logits = logits_along(e, &context);
            for (i, &w) in want.iter().enumerate() {
                let row = &logits[prompt.len() - 1 + i];
                let top = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                same += usize::from(top as u32 == w);
                total += 1;
            }
        }
        eprintln!("cpu int4: top-1 agreement with the f32 reference {same}/{total}");
        assert_eq!(same, total, "top-1 agreement"); // 122 / 128 with int8 activations
    }) else {
        return;
    };
}

/// The chat case's greedy margins are >= 0.54: its continuation is the reference's exactly.
#[test]
fn smollm2_int4_on_the_cpu_continues_every_golden_prompt_like_the_reference() {
    let fx = fixture();
    let Some(()) = with_smollm2(|e| {
        for p in fx["prompts"].as_array().expect("prompts") {
            let want = ids(&p["greedy_ids"]);
            let n = p["eos_index"].as_u64().map_or(want.len(), |i| i as usize);
            let params = GenerateParams { max_tokens: want.len(), ..Default::default() };
            let prompt = ids(&p["prompt_token_ids"]);
            let g = pollster::block_on(e.generate(&prompt, &params, &mut |_| true)).expect("generate");
            assert_eq!(&g.ids[..], &want[..n], "{:?}: {:?}", p["prompt"], g.text);
        }
    }) else {
        return;
    };
}

#[test]
fn smollm2_int4_on_the_cpu_continues_the_chat_like_the_reference() {
    let fx = fixture();
    let Some(()) = with_smollm2(|e| {
        let chat = &fx["chat"];
        let want = ids(&chat["greedy_ids"]);
        let n = chat["eos_index"].as_u64().map_or(want.len(), |i| i as usize);
        let params = GenerateParams { max_tokens: want.len(), ..Default::default() };
        let g = pollster::block_on(e.generate(&ids(&chat["token_ids"]), &params, &mut |_| true)).expect("generate");
        assert_eq!(&g.ids[..], &want[..n], "{:?}", g.text);
        assert!(g.stats.tokens_per_second > 0.0 && g.stats.first_token_latency_ms > 0.0);
    }) else {
        return;
    };
}

#[test]
fn max_kv_cache_mb_caps_the_cpu_context() {
    let Some(path) = require_smollm2() else { return };
    let src = wsi::model::open_path(&path).expect("open model");
    // 30 layers x 2 x 192 floats: 46,080 bytes a position, so 1 MiB holds 22.
    let cfg = StreamingConfig::from_json_str(r#"{"quantization": "int4", "max_kv_cache_mb": 1}"#).unwrap();
    let mut e = CpuEngine::load(src.as_ref(), &cfg, &mut |_, _| {}).expect("load");
    assert_eq!(e.context(), 22);
    let err = pollster::block_on(e.generate(&[1; 20], &greedy(5), &mut |_| true)).unwrap_err();
    assert_eq!(err.code(), "context_length_exceeded", "{err}");
    let g = pollster::block_on(e.generate(&[1; 20], &greedy(2), &mut |_| true)).expect("fits");
    assert_eq!(g.ids.len(), 2);
}

#[test]
fn a_prompt_run_in_chunks_gives_the_bits_of_one_token_at_a_time() {
    for (arch, format, quantization) in
        [(Arch::Llama, HostFormat::Q4_1, "int4"), (Arch::Qwen2, HostFormat::Q8_0, "int8")]
    {
        let src = tiny(arch, 3, format);
        let mut e = CpuEngine::load(&src, &config(quantization), &mut |_, _| {}).expect("load");
        let ids: Vec<u32> = (0..11).map(|i| (i * 29 + 7) % 300).collect();
        let one = logits_along(&mut e, &ids).pop().expect("logits");
        e.model.truncate(0);
        let mut many = Vec::new();
        e.model.steps(&ids, Some(&mut many)).expect("steps");
        assert_eq!(one, many, "{arch:?} {quantization}");
        // And the next step reads the cache the chunks wrote.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        e.model.step(5, Some(&mut a)).expect("step");
        logits_along(&mut e, &ids);
        e.model.step(5, Some(&mut b)).expect("step");
        assert_eq!(a, b);
    }
}

#[test]
fn matmul_of_several_vectors_is_matvec_of_each() {
    let (rows, cols) = (19, 96);
    let w = rand_vec(rows * cols, 8, 1.0);
    let xs: Vec<QuantVec> = (0..6)
        .map(|i| {
            let mut x = QuantVec::default();
            x.quantize(&rand_vec(cols, 20 + i, 2.0));
            x
        })
        .collect();
    for m in [
        Matrix::from_q4_1(&ggml::quantize_q4_1(&w).unwrap(), rows, cols).unwrap(),
        Matrix::from_q8_0(&ggml::quantize_q8_0(&w).unwrap(), rows, cols).unwrap(),
    ] {
        let mut y = vec![0.0; xs.len() * rows];
        m.matmul(&xs, &mut y).unwrap();
        for (x, yt) in xs.iter().zip(y.chunks_exact(rows)) {
            let mut want = vec![0.0; rows];
            m.matvec(x, &mut want).unwrap();
            assert_eq!(yt, &want[..]);
        }
        assert!(m.matmul(&xs, &mut vec![0.0; rows]).is_err(), "a short y is refused");
    }
}
