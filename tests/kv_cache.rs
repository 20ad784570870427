//! KV-cache strategies on tiny random models against the CPU reference: static, dynamic and
//! progressive give the static output within their window; dynamic grows page by page;
//! progressive stays within its budget; past the budget the sliding window with attention
//! sinks goes on (and memory-pressure events fire); a rolled-back pass leaves the cache valid;
//! the static cache ends with context_length_exceeded.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, max_rel_err, read_f32, tiny_llama};
use wsi::config::KvCacheStrategy;
use wsi::engine::{Engine, EngineOptions, GenerateParams};
use wsi::gpu::WeightFormat;
use wsi::model::ModelSource;
use wsi::model::kv_cache::KvOptions;
use wsi::model::llama::LoadOptions;
use wsi::model::reference::forward_windowed;

const F32_ROW: u64 = 512;

fn kv(strategy: KvCacheStrategy, compact: bool, budget_rows: Option<u64>, page: usize, recent: usize) -> KvOptions {
    KvOptions { strategy, compact, budget_bytes: budget_rows.map(|r| r * F32_ROW), page, recent }
}

fn engine(src: &dyn ModelSource, kv: KvOptions, chunk: usize) -> Engine {
    let load = LoadOptions {
        format: WeightFormat::F32,
        context: 128,
        chunk,
        workgroup: 64,
        threads_per_row: 64,
        rows: 2,
        wide_threads_per_row: 8,
        attention_split: 5,
        // The full split from 8 keys on, as before short contexts took fewer splits.
        attention_keys_per_split: 1,
        max_binding: 0,
        kv,
        ..Default::default()
    };
    let options = EngineOptions { load, steps_per_submit: 3, in_flight: 2, ..Default::default() };
    Engine::load(gpu(), src, options).expect("engine loads")
}

fn greedy(e: &mut Engine, prompt: &[u32], n: usize) -> wsi::engine::Generation {
    let params = GenerateParams { max_tokens: n, ignore_eos: true, ..Default::default() };
    pollster::block_on(e.generate(prompt, &params, &mut |_| true)).expect("generate")
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).expect("argmax") as u32
}

/// Top-2 margin of a logits row: where it is tiny, f16/int8 storage may flip the pick.
fn margin(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

const PROMPT: [u32; 11] = [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50];

#[test]
fn every_strategy_matches_static_within_its_window() {
    let src = tiny_llama(5);
    let mut base = engine(&src, kv(KvCacheStrategy::Static, false, None, 1, 1), 8);
    let want = greedy(&mut base, &PROMPT, 30);
    let seq: Vec<u32> = PROMPT.iter().chain(&want.ids).copied().collect();
    // (strategy, compact, logits tolerance): f32 is exact; f16 storage rounds (measured
    // ~2e-3 here), int8 (per row and head scale) more (~6e-2).
    for (strategy, compact, tol) in [
        (KvCacheStrategy::Dynamic, false, 1e-4),
        (KvCacheStrategy::Dynamic, true, 1e-2),
        (KvCacheStrategy::Progressive, false, 1e-1),
        (KvCacheStrategy::Progressive, true, 1e-1),
    ] {
        // Page 8 and a recent ring of 6: growth and re-quantisation both happen in 41 positions.
        let mut e = engine(&src, kv(strategy, compact, None, 8, 6), 8);
        let plan = &e.model.kv().plan;
        assert!(plan.sinks + plan.window > seq.len(), "{strategy:?}: the window is not reached");
        let g = greedy(&mut e, &PROMPT, 30);
        if !compact && strategy == KvCacheStrategy::Dynamic {
            assert_eq!(g.ids, want.ids, "dynamic f32 equals static");
        }
        let mut flips = 0;
        for n in [PROMPT.len(), 25, seq.len()] {
            let got = pollster::block_on(e.next_logits(&seq[..n])).expect("logits");
            let exact = pollster::block_on(base.next_logits(&seq[..n])).expect("logits");
            let err = max_rel_err(&got, &exact, 0.5);
            assert!(err < tol, "{strategy:?} compact={compact} prefix {n}: max rel err {err}");
            if argmax(&got) != argmax(&exact) {
                assert!(margin(&exact) < 2.0 * tol * 10.0, "{strategy:?} flipped a clear pick at {n}");
                flips += 1;
            }
        }
        // Greedy ids agree wherever the static run's pick was clear.
        let same = g.ids.iter().zip(&want.ids).take_while(|(a, b)| a == b).count();
        assert!(same >= 10 || flips > 0, "{strategy:?} compact={compact}: only {same} equal greedy ids");
        assert!(g.memory_events.is_empty(), "no pressure without a budget: {:?}", g.memory_events);
    }
}

#[test]
fn dynamic_memory_grows_page_by_page() {
    let src = tiny_llama(6);
    let mut e = engine(&src, kv(KvCacheStrategy::Dynamic, true, None, 8, 1), 8);
    let plan = e.model.kv().plan.clone();
    let page_bytes = plan.buffer_bytes(8) * 2;
    assert_eq!(e.model.kv().bytes(), page_bytes, "one page at load");
    let mut seen = vec![e.model.kv().bytes()];
    for n in [3usize, 10, 20, 37] {
        greedy(&mut e, &PROMPT, n);
        // Positions 0 .. prompt + n - 2 hold K/V: whole pages of 8 rows cover them.
        let rows = (PROMPT.len() + n - 1).div_ceil(8) * 8;
        assert_eq!(e.model.kv().rows, rows, "after {n} tokens");
        assert_eq!(e.model.kv().bytes(), plan.buffer_bytes(rows) * 2);
        seen.push(e.model.kv().bytes());
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "grew at each step: {seen:?}");
    let stats = e.stats_json(&Default::default());
    assert_eq!(stats["kv_cache_strategy"], "dynamic");
    assert_eq!(stats["kv_cache_optimized"], true);
    assert!((stats["kv_cache_mb"].as_f64().unwrap() - *seen.last().unwrap() as f64 / 1_048_576.0).abs() < 1e-9);
    // f16 rows take half the bytes of f32 ones.
    assert_eq!(plan.buffer_bytes(8), 8 * 2 * 32 * 2);
}

/// Greedy ids with the CPU reference under the window, one step at a time.
fn reference_greedy(src: &dyn ModelSource, prompt: &[u32], n: usize, sinks: usize, window: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let logits = forward_windowed(src, &seq, sinks, window).expect("reference");
        seq.push(argmax(logits.last().expect("row")));
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn generation_goes_past_the_budget_with_the_window_and_sinks() {
    let src = tiny_llama(7);
    // 24 f32 rows: 4 sinks, chunk 8, a window of 12.
    let mut e = engine(&src, kv(KvCacheStrategy::Dynamic, false, Some(24), 8, 1), 8);
    let plan = e.model.kv().plan.clone();
    assert_eq!((plan.main_rows, plan.sinks, plan.chunk, plan.window), (24, 4, 8, 12));
    let g = greedy(&mut e, &PROMPT, 50);
    assert_eq!(g.ids.len(), 50, "went on well past the 16 positions the window holds");
    assert!(e.model.kv().bytes() <= 24 * F32_ROW, "within the budget");
    let want = reference_greedy(&src, &PROMPT, 50, plan.sinks, plan.window);
    assert_eq!(g.ids, want, "the CPU reference with the same sinks and window");
    // Prefill past the window too (chunks of 8 <= the spare rows).
    let seq: Vec<u32> = PROMPT.iter().chain(&g.ids).copied().collect();
    let got = pollster::block_on(e.next_logits(&seq)).expect("logits");
    let exact = forward_windowed(&src, &seq, plan.sinks, plan.window).expect("reference");
    assert!(max_rel_err(&got, exact.last().expect("row"), 0.5) < 1e-3);
    // Events: the window engages (position 16), then 80% and 90% of the budget's rows fill.
    let ev: Vec<(&str, &str)> = g.memory_events.iter().map(|e| (e.level, e.action)).collect();
    assert_eq!(
        ev,
        [("critical", "sliding_window"), ("warning", "sliding_window"), ("critical", "sliding_window")],
        "{:?}",
        g.memory_events
    );
    assert!(g.memory_events[0].message.contains("sliding window keeps the first 4"), "{}", g.memory_events[0].message);
    let warning = &g.memory_events[1];
    assert!((warning.limit_mb - 24.0 * 512.0 / 1_048_576.0).abs() < 1e-9);
    assert!(warning.current_mb >= 0.8 * warning.limit_mb && warning.current_mb < 0.9 * warning.limit_mb);
    // The handle a caller drains live holds the same events.
    assert_eq!(e.pressure_handle().lock().unwrap().len(), 3);
}

/// A decode step: per layer the QKV matvec, attention with RoPE and the KV append fused in,
/// O (merging the split attention's partials as it loads them), gate/up and down
/// (progressive: the requant before attention too), plus the embedding gather, lm_head and
/// sampler.
#[test]
fn a_decode_step_runs_five_dispatches_per_layer_plus_three() {
    let src = tiny_llama(11);
    let layers = src.config().n_layers;
    for (strategy, per_layer) in [(KvCacheStrategy::Static, 5), (KvCacheStrategy::Progressive, 6)] {
        let mut e = engine(&src, kv(strategy, false, None, 8, 4), 8);
        assert_eq!(e.model.dispatches_per_decode_step(0), per_layer * layers + 3, "{strategy:?}");
        let g = greedy(&mut e, &PROMPT, 4);
        assert_eq!(g.stats.dispatches_per_token, per_layer * layers + 3, "{strategy:?}: stats");
    }
}

#[test]
fn progressive_stays_within_its_budget_and_holds_more_tokens_than_f16() {
    let src = tiny_llama(8);
    let budget = Some(24);
    let e16 = engine(&src, kv(KvCacheStrategy::Dynamic, true, budget, 8, 1), 8);
    let mut e = engine(&src, kv(KvCacheStrategy::Progressive, true, budget, 8, 6), 8);
    let (p16, p) = (e16.model.kv().plan.clone(), e.model.kv().plan.clone());
    assert!(p.main_rows > p16.main_rows, "int8 holds more: {} vs {}", p.main_rows, p16.main_rows);
    let g = greedy(&mut e, &PROMPT, 110);
    assert_eq!(g.ids.len(), 110);
    assert!(e.model.kv().peak_bytes <= 24 * F32_ROW, "{} > budget", e.model.kv().peak_bytes);
    let ev: Vec<(&str, &str)> = g.memory_events.iter().map(|e| (e.level, e.action)).collect();
    assert_eq!(
        ev,
        [("warning", "kv_int8"), ("critical", "sliding_window"), ("critical", "sliding_window")],
        "{:?}",
        g.memory_events
    );
    // Still close to the reference with the same window (int8 keys and values).
    let seq: Vec<u32> = PROMPT.iter().chain(&g.ids).copied().collect();
    let got = pollster::block_on(e.next_logits(&seq)).expect("logits");
    let exact = forward_windowed(&src, &seq, p.sinks, p.window).expect("reference");
    let err = max_rel_err(&got, exact.last().expect("row"), 0.5);
    assert!(err < 5e-2, "max rel err {err}");
    let stats = e.stats_json(&Default::default());
    assert_eq!(stats["kv_cache_strategy"], "progressive");
    assert_eq!(stats["kv_cache_format"], "int8 + f16 recent");
}

/// Prefill `ids[p0..p1]` at positions p0.. without touching earlier positions; the logits of
/// the last row.
fn prefill_at(e: &mut Engine, ids: &[u32], p0: usize, p1: usize) -> Vec<f32> {
    assert!(p1 - p0 <= e.model.kv().plan.chunk, "a pass holds at most one chunk");
    let g = e.gpu.clone();
    e.model.write_tokens(&g, p0, &ids[p0..p1]);
    e.model.write_state(&g, p0 as u32, (p1 - p0) as u32);
    let mut enc = g.device.create_command_encoder(&Default::default());
    e.model.reserve_kv(&g, &mut enc, p1 - 1);
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        e.model.encode_prefill(&mut pass, (p1 - p0) as u32, false, false);
    }
    g.queue.submit([enc.finish()]);
    read_f32(&g, &e.model.logits)[..e.model.config.vocab_size].to_vec()
}

#[test]
fn rolling_the_position_back_after_a_pass_keeps_the_cache_valid_in_the_window() {
    let src = tiny_llama(9);
    let seq: Vec<u32> = (0..60).map(|i| (i * 37 + 5) % 290).collect();
    let junk: Vec<u32> = (0..60).map(|i| (i * 11 + 200) % 290).collect();
    // Budgets of 40 f32 rows, and of 32 int8 rows after a ring of 14 f32 rows: windows of
    // 28 and 20.
    for (strategy, budget, tol) in [(KvCacheStrategy::Dynamic, 40, 1e-3), (KvCacheStrategy::Progressive, 24, 1e-1)] {
        let mut outs = Vec::new();
        for rejected in [false, true] {
            let mut e = engine(&src, kv(strategy, false, Some(budget), 8, 6), 8);
            let plan = e.model.kv().plan.clone();
            assert!(plan.sinks + plan.window < 44, "{strategy:?}: the window slides before 44");
            for p0 in (0..44).step_by(8) {
                prefill_at(&mut e, &seq, p0, (p0 + 8).min(44));
            }
            if rejected {
                // A "verify" pass of 8 tokens at 44..52 whose tokens are all rejected.
                prefill_at(&mut e, &junk, 44, 52);
            }
            // Back at 44: go on with the real tokens, in a shorter chunk.
            let got = prefill_at(&mut e, &seq, 44, 47);
            let want = forward_windowed(&src, &seq[..47], plan.sinks, plan.window).expect("reference");
            let err = max_rel_err(&got, want.last().expect("row"), 0.5);
            assert!(err < tol, "{strategy:?} rejected={rejected}: max rel err {err}");
            outs.push(got);
        }
        assert_eq!(outs[0], outs[1], "{strategy:?}: the rolled-back pass left no trace");
    }
}

#[test]
fn static_cache_ends_with_context_length_exceeded() {
    let src = tiny_llama(10);
    let mut e = engine(&src, kv(KvCacheStrategy::Static, false, Some(32), 1, 1), 8);
    assert_eq!(e.model.kv().plan.max_positions, 32);
    let mut streamed = 0;
    let params = GenerateParams { max_tokens: 40, ignore_eos: true, ..Default::default() };
    let err = pollster::block_on(e.generate(&PROMPT, &params, &mut |ev| {
        streamed += usize::from(ev.id.is_some());
        true
    }))
    .expect_err("runs out");
    assert_eq!(err.code(), "context_length_exceeded");
    assert_eq!(streamed, 32 - PROMPT.len(), "every token that fit was streamed");
    // Within the context it generates normally, and the events said the cache would end.
    let g = greedy(&mut e, &PROMPT, 20);
    assert_eq!(g.ids.len(), 20);
    let actions: Vec<&str> = g.memory_events.iter().map(|e| e.action).collect();
    assert_eq!(actions, ["none", "none"], "{:?}", g.memory_events);
}

#[test]
fn the_config_keys_choose_the_storage_strategy_and_budget() {
    use wsi::config::StreamingConfig;
    use wsi::gpu::{KvFormat, KvFormats};
    let src = tiny_llama(11);
    let gpu = gpu();
    for (json, strategy, formats, budget_mb) in [
        (
            r#"{"kv_cache_strategy": "static", "kv_cache_optimization": false}"#,
            "static",
            KvFormats::plain(KvFormat::F32),
            None,
        ),
        (r#"{"max_kv_cache_mb": 1}"#, "dynamic", KvFormats::plain(KvFormat::F16), Some(1)),
        (
            r#"{"kv_cache_strategy": "progressive", "max_kv_cache_mb": 2}"#,
            "progressive",
            KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 },
            Some(2),
        ),
    ] {
        let cfg = StreamingConfig::from_json_str(json).expect("config");
        let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
        if let Some(mb) = budget_mb {
            assert_eq!(options.load.kv.budget_bytes, Some(mb * 1_048_576));
        }
        let e = Engine::load(gpu.clone(), &src, options).expect("engine");
        assert_eq!(e.model.kv().plan.formats, formats, "{json}");
        let stats = e.stats_json(&Default::default());
        assert_eq!(stats["kv_cache_strategy"], strategy, "{json}");
        assert_eq!(stats["kv_cache_optimized"], formats != KvFormats::plain(KvFormat::F32), "{json}");
        assert_eq!(stats["kv_cache_mb"].as_f64().unwrap(), e.model.kv().bytes() as f64 / 1_048_576.0);
    }
}

/// The figures of the README's KV table: bytes each strategy allocates for 2048 positions of
/// the real SmolLM2, measured from the buffers (`--nocapture` prints them), and the order
/// they must come in.
#[test]
fn smollm2_kv_bytes_at_2048_positions() {
    use wsi::config::StreamingConfig;
    let Some(path) = common::require_smollm2() else { return };
    let src = wsi::model::open::open_path(&path).expect("model");
    let gpu = gpu();
    let mut mib: Vec<(f64, f64)> = Vec::new();
    for json in [
        r#"{"kv_cache_strategy": "static", "kv_cache_optimization": false}"#,
        r#"{"kv_cache_strategy": "static"}"#,
        r#"{"kv_cache_strategy": "dynamic"}"#,
        r#"{"kv_cache_strategy": "progressive"}"#,
        r#"{"kv_cache_strategy": "dynamic", "max_kv_cache_mb": 24}"#,
        r#"{"kv_cache_strategy": "progressive", "max_kv_cache_mb": 24}"#,
    ] {
        let cfg = StreamingConfig::from_json_str(json).expect("config");
        let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
        let mut e = Engine::load(gpu.clone(), src.as_ref(), options).expect("engine");
        let at_load = e.model.kv().bytes();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        e.model.reserve_kv(&gpu, &mut enc, 2047);
        gpu.queue.submit([enc.finish()]);
        let plan = &e.model.kv().plan;
        eprintln!(
            "{json}: at load {:.1} MiB, at 2048 positions {:.1} MiB; {} rows ({} sinks + window {}), formats {:?}",
            at_load as f64 / 1_048_576.0,
            e.model.kv().bytes() as f64 / 1_048_576.0,
            plan.main_rows,
            plan.sinks,
            plan.window,
            plan.formats
        );
        mib.push((at_load as f64 / 1_048_576.0, e.model.kv().bytes() as f64 / 1_048_576.0));
    }
    let [f32_static, f16_static, dynamic, progressive, dynamic_24, progressive_24] = mib[..] else {
        panic!("six configurations")
    };
    assert_eq!(f32_static.0, 2.0 * f16_static.0, "f16 storage halves the static reservation");
    assert_eq!(f16_static.0, f16_static.1, "static reserves everything at load");
    assert!(dynamic.0 < f16_static.0 / 10.0, "dynamic starts small: {dynamic:?}");
    assert!((dynamic.1 - f16_static.1 / 2.0).abs() < 1.0, "2048 of 4096 positions: {dynamic:?}");
    assert!(progressive.1 < dynamic.1, "int8 behind the f16 ring: {progressive:?} vs {dynamic:?}");
    for (at_load, at_2048) in [dynamic_24, progressive_24] {
        assert!(at_load < 24.0 && at_2048 <= 24.0, "within the 24 MiB budget: {at_2048}");
    }
}

/// The default KV cache (dynamic, f16 storage) keeps the f32 reference's greedy ids on the
/// real model (progressive kept them too, but these prompts stay inside its f16 ring).
#[test]
fn smollm2_compact_kv_keeps_the_reference_greedy_ids() {
    use wsi::config::StreamingConfig;
    let Some(path) = common::require_smollm2() else { return };
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/golden_smollm2.json")).expect("fixture parses");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    let src = wsi::model::open::open_path(&path).expect("model");
    let gpu = gpu();
    for json in [r#"{"quantization": "fp32"}"#] {
        let cfg = StreamingConfig::from_json_str(json).expect("config");
        let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
        let mut e = Engine::load(gpu.clone(), src.as_ref(), options).expect("engine");
        for p in fx["prompts"].as_array().expect("prompts") {
            let want = ids(&p["greedy_ids"]);
            let g = greedy(&mut e, &ids(&p["prompt_token_ids"]), 16);
            assert_eq!(&g.ids[..], &want[..16], "{json}: greedy ids for {}", p["prompt"]);
        }
    }
}

#[test]
fn speculative_decoding_with_growing_and_sliding_kv_equals_plain_greedy() {
    use wsi::config::StreamingConfig;
    let src = tiny_llama(12);
    let phrase = [31u32, 47, 12, 200, 5, 77, 150, 9];
    let prompt: Vec<u32> = phrase.iter().cycle().take(30).copied().collect();
    for strategy in [KvCacheStrategy::Dynamic, KvCacheStrategy::Progressive] {
        let mut outs = Vec::new();
        for predict in [false, true] {
            // Pages of 8 rows: verify passes land on growth; dynamic's 60 rows also slide.
            let mut e = engine(&src, kv(strategy, false, Some(60), 8, 6), 8);
            e.options.config = StreamingConfig { token_prediction_enabled: predict, ..Default::default() };
            outs.push(greedy(&mut e, &prompt, 60));
        }
        assert_eq!(outs[0].ids, outs[1].ids, "{strategy:?}: token prediction changed the greedy output");
        assert!(outs[1].stats.accepted > 0, "{strategy:?}: no draft accepted: {:?}", outs[1].stats);
    }
}
