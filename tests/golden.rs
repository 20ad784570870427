//! The real SmolLM2-135M model against golden values from the independent numpy
//! reference (scripts/reference/golden.py -> tests/fixtures/golden_smollm2.json).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::sync::Mutex;

use common::{gpu, require_smollm2};
use serde_json::Value;
use wsi::engine::{Engine, EngineOptions, GenerateParams};
use wsi::gpu::WeightFormat;
use wsi::model::llama::LoadOptions;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/golden_smollm2.json")).expect("fixture parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// One engine per format for the whole binary (loading takes seconds on lavapipe).
fn with_engine<R>(format: WeightFormat, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    static F32: Mutex<Option<Engine>> = Mutex::new(None);
    static F16: Mutex<Option<Engine>> = Mutex::new(None);
    let path = require_smollm2()?;
    let slot = if format == WeightFormat::F32 { &F32 } else { &F16 };
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let src = wsi::model::open_path(&path).expect("open model");
        let options =
            EngineOptions { load: LoadOptions { format, context: 512, ..Default::default() }, ..Default::default() };
        *guard = Some(Engine::load(gpu(), src.as_ref(), options).expect("load engine"));
    }
    Some(f(guard.as_mut().expect("engine")))
}

#[test]
fn prompt_tokenization_matches_reference() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F32, |e| {
        for p in fx["prompts"].as_array().expect("prompts") {
            let got = e.tokenizer.encode(p["prompt"].as_str().expect("prompt")).expect("encode");
            assert_eq!(got, ids(&p["prompt_token_ids"]), "prompt {}", p["prompt"]);
        }
        let chat = &fx["chat"];
        let got = e.tokenizer.encode(chat["rendered"].as_str().expect("rendered")).expect("encode");
        assert_eq!(got, ids(&chat["token_ids"]));
    }) else {
        return;
    };
}

#[test]
fn next_token_top10_and_logits_match_reference() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F32, |e| {
        for p in fx["prompts"].as_array().expect("prompts") {
            let logits = pollster::block_on(e.next_logits(&ids(&p["prompt_token_ids"]))).expect("logits");
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let top = p["top10"].as_array().expect("top10");
            let want_ids: Vec<usize> = top.iter().map(|x| x[0].as_u64().expect("id") as usize).collect();
            assert_eq!(&order[..10], &want_ids[..], "top-10 ids for {}", p["prompt"]);
            for pair in top {
                let (id, want) = (pair[0].as_u64().expect("id") as usize, pair[1].as_f64().expect("logit") as f32);
                let rel = (logits[id] - want).abs() / want.abs().max(1.0);
                assert!(rel < 1e-3, "logit of {id} for {}: {} vs {want}", p["prompt"], logits[id]);
            }
            if let Some(sample) = p.get("logits_sample").filter(|s| s.is_object()) {
                for (id, want) in ids(&sample["ids"]).iter().zip(sample["logits"].as_array().expect("logits")) {
                    let want = want.as_f64().expect("logit") as f32;
                    let got = logits[*id as usize];
                    assert!((got - want).abs() / want.abs().max(1.0) < 1e-3, "logit {id}: {got} vs {want}");
                }
            }
        }
    }) else {
        return;
    };
}

#[test]
fn greedy_32_token_continuations_match_reference() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F32, |e| {
        for p in fx["prompts"].as_array().expect("prompts") {
            let want = ids(&p["greedy_ids"]);
            let params = GenerateParams { max_tokens: want.len(), ..Default::default() };
            let g =
                pollster::block_on(e.generate(&ids(&p["prompt_token_ids"]), &params, &mut |_| true)).expect("generate");
            // The reference does not stop at EOS; compare up to where we stopped.
            assert_eq!(&g.ids[..], &want[..g.ids.len()], "greedy ids for {}", p["prompt"]);
            if p["eos_index"].is_null() {
                assert_eq!(g.ids.len(), want.len());
                assert_eq!(g.text, p["greedy_text"].as_str().expect("text"));
            } else {
                assert_eq!(g.ids.len(), p["eos_index"].as_u64().expect("eos index") as usize);
            }
        }
    }) else {
        return;
    };
}

#[test]
fn greedy_continuations_match_reference_when_the_prompt_is_prefilled_by_decode_steps() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F32, |e| {
        // Every prompt through decode steps, one per token (GPUs do this for short prompts);
        // the first 8 ids show the prefill's KV and logits are right.
        let before = e.options.step_prefill;
        e.options.step_prefill = 4096;
        for p in fx["prompts"].as_array().expect("prompts") {
            let want = ids(&p["greedy_ids"]);
            let params = GenerateParams { max_tokens: 8, ..Default::default() };
            let g = pollster::block_on(e.generate(&ids(&p["prompt_token_ids"]), &params, &mut |_| true));
            let g = g.expect("generate");
            assert_eq!(&g.ids[..], &want[..g.ids.len()], "greedy ids for {}", p["prompt"]);
        }
        e.options.step_prefill = before;
    }) else {
        return;
    };
}

#[test]
fn perplexity_matches_reference() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F32, |e| {
        let nll = &fx["nll"];
        let (sum, n) = pollster::block_on(e.score(&ids(&nll["token_ids"]))).expect("score");
        let mean = sum / n as f64;
        let want = nll["mean_nll"].as_f64().expect("mean_nll");
        assert!((mean - want).abs() < 1e-3, "mean nll {mean} vs {want}");
    }) else {
        return;
    };
}

#[test]
fn fp16_weights_keep_the_greedy_continuation() {
    let fx = fixture();
    let Some(()) = with_engine(WeightFormat::F16, |e| {
        // The chat case: every greedy step has a top-1 margin >= 0.54, far above f16 noise.
        let chat = &fx["chat"];
        let want = ids(&chat["greedy_ids"]);
        let eos = chat["eos_index"].as_u64().expect("eos index") as usize;
        let params = GenerateParams { max_tokens: want.len(), ..Default::default() };
        let g = pollster::block_on(e.generate(&ids(&chat["token_ids"]), &params, &mut |_| true)).expect("generate");
        assert_eq!(&g.ids[..], &want[..eos]);
    }) else {
        return;
    };
}

#[test]
fn safetensors_copy_gives_the_same_logits_as_the_gguf() {
    let fx = fixture();
    let Some(path) = require_smollm2() else { return };
    let src = wsi::model::open_path(&path).expect("open");
    let tok = src.tokenizer().expect("tokenizer");
    let dir = std::env::temp_dir().join(format!("wsi-smollm2-hf-{}", std::process::id()));
    wsi::model::convert::convert_to_hf(src.as_ref(), &tok.to_hf_json().expect("json"), &tok.hf_config(), &dir)
        .expect("convert");
    let hf = wsi::model::open_path(&dir).expect("open HF copy");
    let p = &fx["prompts"][1];
    let prompt = p["prompt"].as_str().expect("prompt");
    let hf_ids = hf.tokenizer().expect("hf tokenizer").encode(prompt).expect("encode");
    assert_eq!(hf_ids, ids(&p["prompt_token_ids"]));
    let options = EngineOptions { load: LoadOptions { context: 64, ..Default::default() }, ..Default::default() };
    let mut e = Engine::load(gpu(), hf.as_ref(), options).expect("load HF copy");
    let hf_logits = pollster::block_on(e.next_logits(&hf_ids)).expect("logits");
    drop(e);
    let gguf_logits = with_engine(WeightFormat::F32, |e| pollster::block_on(e.next_logits(&hf_ids)).expect("logits"))
        .expect("engine");
    let err = common::max_rel_err(&hf_logits, &gguf_logits, 1.0);
    assert!(err < 1e-4, "safetensors vs GGUF logits: max rel err {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
