//! Token prediction and prefetch strategies on the GPU (lavapipe in CI): drafts verified in
//! one pass give exactly the ids of plain decoding (greedy and seeded sampling), stops act
//! within the verified batch, and each prefetch strategy changes what is submitted.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, rand_vec, read_u32, require_smollm2, tiny_llama};
use wsi::config::{PrefetchStrategy, StreamingConfig};
use wsi::engine::{Engine, EngineOptions, GenerateParams, Generation};
use wsi::gpu::{Kernel, KernelKey, WeightFormat};
use wsi::model::ModelSource;
use wsi::model::llama::LoadOptions;
use wsi::sampling::{SampleSettings, sample_reference};

fn engine(src: &dyn ModelSource, strategy: PrefetchStrategy, steps: u32) -> Engine {
    engine_shaped(src, strategy, steps, false)
}

/// `gpu_shaped`: the kernel shapes GPUs get (cooperative matvec rows, tiled matmul, split
/// decode attention), whose sums differ more from the verification's prefill kernels.
fn engine_shaped(src: &dyn ModelSource, strategy: PrefetchStrategy, steps: u32, gpu_shaped: bool) -> Engine {
    let load = common::tiny_load_options(gpu_shaped);
    let config = StreamingConfig { prefetch_strategy: strategy, ..Default::default() };
    let options = EngineOptions { load, steps_per_submit: steps, in_flight: 2, config, ..Default::default() };
    Engine::load(gpu(), src, options).expect("engine loads")
}

fn run(e: &mut Engine, predict: bool, prompt: &[u32], params: &GenerateParams) -> Generation {
    e.options.config.token_prediction_enabled = predict;
    pollster::block_on(e.generate(prompt, params, &mut |_| true)).expect("generate")
}

/// A prompt that repeats itself: prompt lookup finds drafts from the start.
fn repetitive_prompt() -> Vec<u32> {
    let phrase = [31, 47, 12, 200, 5, 77, 150, 9];
    phrase.iter().cycle().take(30).copied().collect()
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, ignore_eos: true, ..Default::default() }
}

/// The every-row sampler over `[rows, vocab]` logits with `tokens` (history, then one
/// draft per row but the last) and state (pos, rows): the ids it writes and the state after.
fn gpu_sample_rows(logits: &[f32], tokens: &[u32], pos: u32, rows: u32, s: &SampleSettings) -> (Vec<u32>, Vec<u32>) {
    let gpu = gpu();
    let vocab = (logits.len() / rows as usize) as u32;
    let p = s.to_every_row_params(vocab);
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&p));
    let lb = gpu.storage_init("logits", bytemuck::cast_slice(logits));
    let mut toks = tokens.to_vec();
    toks.resize(pos as usize + rows as usize + 1, 0);
    let tb = gpu.storage_init("tokens", bytemuck::cast_slice(&toks));
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[pos, rows, 0, 0]));
    let key = KernelKey { kernel: Kernel::Sample, wg: 256, rows: 1, tpr: 1 };
    common::run(&gpu, key, &[(0, &ub), (1, &lb), (2, &tb), (3, &state)], [1, rows, 1]);
    let out = read_u32(&gpu, &tb)[pos as usize + 1..].to_vec();
    (out, read_u32(&gpu, &state))
}

#[test]
fn every_row_sampler_equals_the_one_row_sampler_run_row_by_row() {
    let (vocab, rows) = (1003usize, 5u32);
    let logits = rand_vec(vocab * rows as usize, 77, 4.0);
    let history: Vec<u32> = vec![3, 900, 17, 17, 250, 3];
    let pos = history.len() as u32 - 1;
    for s in [
        SampleSettings::greedy(),
        SampleSettings { repetition_penalty: 1.5, ..SampleSettings::greedy() },
        SampleSettings { temperature: 0.8, top_p: 0.9, repetition_penalty: 1.2, seed: 5, ..Default::default() },
        SampleSettings { temperature: 1.2, top_k: 30, seed: 6, ..Default::default() },
    ] {
        // Drafts that are what the CPU reference samples row after row: every row then
        // sees the same history as plain decoding would, and must pick the same id.
        let mut seq = history.clone();
        for r in 0..rows as usize {
            let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
            let id = sample_reference(&mut row, &seq, &s);
            seq.push(id);
        }
        let want = seq[history.len()..].to_vec();
        let (got, state) = gpu_sample_rows(&logits, &seq[..seq.len() - 1], pos, rows, &s);
        let agree = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        // Float exp() may differ in the last bit between CPU and GPU (as in the one-row test).
        if s.temperature == 0.0 {
            assert_eq!(got, want, "{s:?}");
        } else {
            assert!(agree + 1 >= rows as usize, "{s:?}: {got:?} vs {want:?}");
        }
        assert_eq!(state, vec![pos, rows, 0, 0], "the every-row sampler leaves the state alone");
    }
}

#[test]
fn speculative_decoding_equals_greedy_on_repetitive_and_fresh_prompts() {
    let src = tiny_llama(21);
    let fresh: Vec<u32> = (0..23).map(|i| (i * 37 + 11) % 290).collect();
    for (strategy, gpu_shaped) in [
        (PrefetchStrategy::Fixed, false),
        (PrefetchStrategy::Adaptive, false),
        (PrefetchStrategy::ContextAware, false),
        (PrefetchStrategy::Fixed, true),
    ] {
        let mut e = engine_shaped(&src, strategy, 3, gpu_shaped);
        for prompt in [repetitive_prompt(), fresh.clone()] {
            let plain = run(&mut e, false, &prompt, &greedy(40));
            let spec = run(&mut e, true, &prompt, &greedy(40));
            assert_eq!(spec.ids, plain.ids, "{strategy:?}: speculative ids differ from greedy");
            assert_eq!(spec.text, plain.text);
            assert_eq!(plain.stats.verify_passes, 0);
            if prompt[0] == 31 {
                assert!(spec.stats.verify_passes > 0, "{strategy:?}: nothing drafted on a repetitive prompt");
                assert!(spec.stats.accepted > 0, "{strategy:?}: no draft accepted: {:?}", spec.stats);
            }
        }
    }
}

#[test]
fn seeded_sampling_with_prediction_equals_plain_sampling() {
    let src = tiny_llama(21);
    let mut e = engine(&src, PrefetchStrategy::Fixed, 3);
    let mut accepted = 0;
    for (seed, temperature) in [(7, 0.3), (8, 0.6), (9, 1.0)] {
        let sample = SampleSettings {
            temperature,
            top_p: 0.95,
            top_k: 40,
            repetition_penalty: 1.05,
            seed,
            ..Default::default()
        };
        let params = GenerateParams { sample, ..greedy(40) };
        let plain = run(&mut e, false, &repetitive_prompt(), &params);
        let spec = run(&mut e, true, &repetitive_prompt(), &params);
        assert_eq!(spec.ids, plain.ids, "seed {seed} temperature {temperature}");
        accepted += spec.stats.accepted;
    }
    assert!(accepted > 0, "no draft was accepted: the check would be vacuous");
}

#[test]
fn prefetch_hit_rate_is_accepted_over_proposed() {
    let src = tiny_llama(21);
    let mut e = engine(&src, PrefetchStrategy::Fixed, 3);
    let g = run(&mut e, true, &repetitive_prompt(), &greedy(40));
    let s = &g.stats;
    assert!(s.proposed > 0 && s.accepted <= s.proposed, "{s:?}");
    let json = e.stats_json(s);
    let rate = json["prefetch_hit_rate"].as_f64().expect("prefetch_hit_rate");
    assert_eq!(rate, s.accepted as f64 / s.proposed as f64);
    assert!(rate > 0.0);
    assert_eq!(json["verify_passes"], s.verify_passes);
    // Verifications yield more than one token each on a repetitive prompt.
    assert!(g.ids.len() > 1 + s.verify_passes, "{} ids from {} verifications", g.ids.len(), s.verify_passes);
    let plain = run(&mut e, false, &repetitive_prompt(), &greedy(40));
    assert_eq!(e.stats_json(&plain.stats)["prefetch_hit_rate"].as_f64(), Some(0.0));
}

#[test]
fn stops_act_within_a_verified_batch() {
    let src = tiny_llama(21);
    let mut e = engine(&src, PrefetchStrategy::Fixed, 3);
    let prompt = repetitive_prompt();
    let plain = run(&mut e, false, &prompt, &greedy(40));
    // max_tokens in the middle of a verification: exactly that many ids.
    for max in [1, 2, 5, 11] {
        let g = run(&mut e, true, &prompt, &greedy(max));
        assert_eq!(g.ids, plain.ids[..max], "max_tokens {max}");
        assert_eq!(g.finish_reason.as_str(), "length");
    }
    // The callback stops after 6 tokens: nothing after them, and the next generation is
    // not disturbed by the rows that ran past the stop.
    e.options.config.token_prediction_enabled = true;
    let mut seen = 0;
    let g = pollster::block_on(e.generate(&prompt, &greedy(40), &mut |_| {
        seen += 1;
        seen < 6
    }))
    .expect("generate");
    assert_eq!((g.ids.len(), g.finish_reason.as_str()), (6, "cancelled"));
    assert_eq!(g.ids, plain.ids[..6]);
    // A stop string inside accepted drafts: the text ends before it, as in plain decoding.
    let cut = plain.text.char_indices().nth(plain.text.chars().count() / 2).map_or(0, |(i, _)| i);
    let stop: String = plain.text[cut..].chars().take(2).collect();
    let params = GenerateParams { stop: vec![stop.clone()], ..greedy(40) };
    let a = run(&mut e, false, &prompt, &params);
    let b = run(&mut e, true, &prompt, &params);
    assert_eq!(a.finish_reason.as_str(), "stop", "stop string {stop:?} not met");
    assert_eq!((b.text.as_str(), b.finish_reason), (a.text.as_str(), a.finish_reason));
    // A deadline that has passed when the first batch arrives: timeout, as in plain decoding.
    let params = GenerateParams { generation_timeout_ms: Some(0), ..greedy(40) };
    let t = run(&mut e, true, &prompt, &params);
    assert_eq!(t.finish_reason.as_str(), "timeout");
    assert!(t.ids.len() < 40 && t.ids[..] == plain.ids[..t.ids.len()]);
    // Verified drafts past the stop were discarded: the KV cache is rolled back.
    let again = run(&mut e, true, &prompt, &greedy(40));
    assert_eq!(again.ids, plain.ids);
}

#[test]
fn prefetch_strategies_change_what_is_submitted() {
    let src = tiny_llama(21);
    let prompt = repetitive_prompt();
    // Token prediction: adaptive lengthens its drafts while they are accepted (and stops
    // drafting where verification measured slower than decoding, which depends on the
    // machine's timing), so it verifies fewer drafts, never shorter ones, than fixed.
    let mut fixed = engine(&src, PrefetchStrategy::Fixed, 8);
    let mut adaptive = engine(&src, PrefetchStrategy::Adaptive, 8);
    let f = run(&mut fixed, true, &prompt, &greedy(60));
    let a = run(&mut adaptive, true, &prompt, &greedy(60));
    assert_eq!(f.ids, a.ids);
    let drafted_ids = f.ids.clone();
    // Fixed drafts 4 at a time (the last draft may be cut short by max_tokens).
    let (fp, fv) = (f.stats.proposed, f.stats.verify_passes);
    assert!(fp <= 4 * fv && fp > 4 * (fv - 1), "fixed: {fp} drafts in {fv} passes");
    let (ap, av) = (a.stats.proposed, a.stats.verify_passes);
    assert!(av < fv && ap >= 4 * av, "adaptive: {ap} drafts in {av} passes; fixed {fp} in {fv}");
    // Plain decoding: after generations that were stopped early, adaptive submits fewer
    // steps at a time (less work to discard at a stop), fixed keeps 8.
    let fresh: Vec<u32> = (0..23).map(|i| (i * 37 + 11) % 290).collect();
    for _ in 0..10 {
        let mut n = 0;
        pollster::block_on(adaptive.generate(&fresh, &greedy(40), &mut |_| {
            n += 1;
            n < 1
        }))
        .expect("generate");
    }
    let f = run(&mut fixed, false, &fresh, &greedy(25));
    let a = run(&mut adaptive, false, &fresh, &greedy(25));
    assert_eq!(f.ids, a.ids);
    assert_eq!(f.stats.submissions, 3, "24 steps after the prefill, 8 per submission");
    assert!(a.stats.submissions > 3, "adaptive: {} submissions", a.stats.submissions);
    // Context-aware drafts as long as the match and the repetition suggest (up to 8 here).
    let mut aware = engine(&src, PrefetchStrategy::ContextAware, 8);
    let c = run(&mut aware, true, &prompt, &greedy(60));
    assert_eq!(c.ids, drafted_ids);
    let (cp, cv) = (c.stats.proposed, c.stats.verify_passes);
    assert!(cv < fv && cp > 4 * cv, "context-aware: {cp} drafts in {cv} passes; fixed {fp} in {fv}");
    // And one step at a time while a possible stop string is pending. Stop strings that
    // start with a character of the text and never complete: where the text ends with that
    // character between readbacks, context-aware submits single steps and fixed does not.
    let mut fixed = engine(&src, PrefetchStrategy::Fixed, 4);
    let mut aware = engine(&src, PrefetchStrategy::ContextAware, 4);
    let plain = run(&mut fixed, false, &fresh, &greedy(40));
    let mut chars: Vec<char> = plain.text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let mut more = 0;
    for c in chars {
        let params = GenerateParams { stop: vec![format!("{c}\u{7}never")], ..greedy(40) };
        let f = run(&mut fixed, false, &fresh, &params);
        let a = run(&mut aware, false, &fresh, &params);
        assert_eq!((&a.ids, f.stats.submissions), (&plain.ids, 10), "39 steps, 4 per submission");
        assert!(a.stats.submissions >= f.stats.submissions);
        more += usize::from(a.stats.submissions > f.stats.submissions);
    }
    assert!(more > 0, "context-aware never held back");
}

#[test]
fn smollm2_repetitive_text_is_drafted_and_equals_greedy() {
    let Some(path) = require_smollm2() else { return };
    let src = wsi::model::open_path(&path).expect("open");
    let load = LoadOptions { format: WeightFormat::Int4, context: 256, ..Default::default() };
    let config = StreamingConfig { prefetch_strategy: PrefetchStrategy::Adaptive, ..Default::default() };
    let mut e =
        Engine::load(gpu(), src.as_ref(), EngineOptions { load, config, ..Default::default() }).expect("engine loads");
    let text = "Repeat the list exactly.\nred, green, blue, yellow, purple, orange, black, white.\n\
                red, green, blue, yellow, purple, orange, black, white.\nred, green,";
    let prompt = e.tokenizer.encode(text).expect("encode");
    let plain = run(&mut e, false, &prompt, &greedy(12));
    let spec = run(&mut e, true, &prompt, &greedy(12));
    assert_eq!(spec.text, plain.text);
    assert_eq!(spec.ids, plain.ids);
    let s = &spec.stats;
    eprintln!(
        "smollm2: {:?} -> {} ids, {} verifications, hit rate {:.2}",
        plain.text,
        spec.ids.len(),
        s.verify_passes,
        s.prefetch_hit_rate()
    );
    assert!(s.prefetch_hit_rate() > 0.5, "{s:?}");
    assert!(s.verify_passes < spec.ids.len() / 2, "{s:?}");
}
