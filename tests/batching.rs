//! Continuous batching on the GPU (lavapipe in CI): generations decoded together in batched
//! steps give exactly their solo ids (greedy and seeded sampling), join and leave between
//! steps, and the batch size follows batch_size_strategy.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::collections::HashMap;

use common::{gpu, tiny_llama};
use wsi::config::{BatchSizeStrategy, KvCacheStrategy, StreamingConfig};
use wsi::engine::{Batch, Engine, EngineOptions, GenerateParams, Generation};
use wsi::model::ModelSource;
use wsi::model::kv_cache::KvOptions;
use wsi::model::llama::LoadOptions;
use wsi::sampling::SampleSettings;

/// `gpu_shaped`: cooperative matvec rows and split decode attention, as GPUs get them.
fn engine(src: &dyn ModelSource, gpu_shaped: bool, kv: KvOptions, config: StreamingConfig) -> Engine {
    let load = LoadOptions {
        kv,
        max_lanes: 4,
        // Every matrix of the tiny model through the batched matvec in steps of 2+ lanes.
        batch_matvec_min_weights: 1,
        ..common::tiny_load_options(gpu_shaped)
    };
    let options = EngineOptions { load, steps_per_submit: 3, in_flight: 2, config, ..Default::default() };
    Engine::load(gpu(), src, options).expect("engine loads")
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams { max_tokens, ignore_eos: true, ..Default::default() }
}

fn solo(e: &mut Engine, prompt: &[u32], params: &GenerateParams) -> Generation {
    pollster::block_on(e.generate(prompt, params, &mut |_| true)).expect("generate")
}

/// A request of the schedule: joins before batched step `at`.
struct Req {
    at: usize,
    prompt: Vec<u32>,
    params: GenerateParams,
}

/// Run the requests through one batch (`depth` submissions in flight), joining each before
/// its step; returns the
/// generations by request index and the ids each one streamed.
fn batched(e: &mut Engine, reqs: &[Req], depth: usize) -> HashMap<u64, (Generation, Vec<u32>)> {
    let mut batch = Batch::with_depth(depth);
    let mut streamed: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut done = HashMap::new();
    let mut step = 0;
    while done.len() < reqs.len() {
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| r.at == step) {
            let id = i as u64;
            let mut ids = Vec::new();
            let out = pollster::block_on(e.batch_join(&mut batch, id, &r.prompt, &r.params, &mut |ev| {
                ids.extend(ev.id);
                true
            }))
            .expect("join");
            streamed.insert(id, ids);
            if let Some(g) = out {
                done.insert(id, g);
            }
        }
        let ended = pollster::block_on(e.batch_step(&mut batch, &mut |id, ev| {
            streamed.entry(id).or_default().extend(ev.id);
            true
        }))
        .expect("batch step");
        done.extend(ended);
        step += 1;
        assert!(step < 200, "the batch finishes");
    }
    done.into_iter().map(|(id, g)| (id, (g, streamed.remove(&id).unwrap_or_default()))).collect()
}

/// `merge`: each head's last attention split merges the partials (`merge_splits`, native
/// GPUs' default) instead of the o projection's loads, in every lane's row.
fn check_equal_to_solo(gpu_shaped: bool, kv: KvOptions, merge: bool) {
    let src = tiny_llama(41);
    let mut e = engine(&src, gpu_shaped, kv, StreamingConfig::default());
    if merge {
        let load = LoadOptions { merge_splits: true, combine_in_o_max: 0, ..e.model.options.clone() };
        e = Engine::load(gpu(), &src, EngineOptions { load, ..e.options.clone() }).expect("engine loads");
    }
    let seeded = GenerateParams {
        max_tokens: 9,
        ignore_eos: true,
        sample: SampleSettings { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 7, ..SampleSettings::greedy() },
        ..Default::default()
    };
    let reqs = [
        Req { at: 0, prompt: vec![5, 17, 99, 3], params: greedy(12) },
        Req { at: 0, prompt: (1..=23).collect(), params: greedy(12) },
        Req { at: 1, prompt: vec![200, 7], params: seeded.clone() },
        Req { at: 2, prompt: (40..60).rev().collect(), params: greedy(10) },
    ];
    let solos: Vec<Generation> = reqs.iter().map(|r| solo(&mut e, &r.prompt, &r.params)).collect();
    let out = batched(&mut e, &reqs, 2);
    for (i, s) in solos.iter().enumerate() {
        let (g, streamed) = &out[&(i as u64)];
        assert_eq!(g.ids, s.ids, "request {i}: batched ids equal solo ids");
        assert_eq!(streamed, &s.ids, "request {i}: streamed ids");
        assert_eq!(g.text, s.text, "request {i}: text");
    }
    let widest = out.values().flat_map(|(g, _)| g.stats.batch_sizes.clone()).max();
    assert_eq!(widest, Some(4), "all four ran together at some step");
    // Shared: QKV, O (merging split partials), gate/up, down per layer and lm_head; per
    // lane: the embedding, each layer's attention (RoPE and KV append fused in), the sampler.
    let layers = src.config().n_layers;
    let per_lane = 2 + layers;
    assert_eq!(e.model.dispatches_per_batch_step(3), 4 * layers + 1 + 3 * per_lane, "dispatches of a 3-lane step");
}

#[test]
fn batched_greedy_and_seeded_ids_equal_solo_ids() {
    check_equal_to_solo(false, KvOptions::default(), false);
}

#[test]
fn batched_ids_equal_solo_ids_with_attention_splits_merged_by_their_last_workgroup() {
    check_equal_to_solo(true, KvOptions::default(), true);
}

#[test]
fn batched_ids_equal_solo_ids_with_gpu_kernel_shapes_and_a_growing_f16_cache() {
    let kv = KvOptions { strategy: KvCacheStrategy::Dynamic, compact: true, page: 8, ..Default::default() };
    check_equal_to_solo(true, kv, false);
}

#[test]
fn generations_join_and_leave_between_steps() {
    let src = tiny_llama(42);
    let mut e = engine(&src, false, KvOptions::default(), StreamingConfig::default());
    // steps_per_submit 3, and no step runs a lane past its max_tokens: request 0 runs alone
    // (1 prefill token + 3), with request 1 (+3, +1: it leaves with 8), request 1 runs alone
    // (+3), request 2 joins (+3, +2: it leaves with 6), request 1 ends alone (+1).
    let reqs = [
        Req { at: 0, prompt: vec![1, 2, 3], params: greedy(8) },
        Req { at: 1, prompt: vec![4, 5, 6], params: greedy(14) },
        Req { at: 4, prompt: vec![7, 8], params: greedy(6) },
    ];
    // One submission in flight, so that the batch sizes follow the schedule exactly.
    let out = batched(&mut e, &reqs, 1);
    assert_eq!(out[&0].0.stats.batch_sizes, vec![1, 2], "request 0 ran alone, then with request 1");
    assert_eq!(out[&1].0.stats.batch_sizes, vec![2, 1, 2, 1], "request 1 saw 0 leave, 2 join and leave");
    assert_eq!(out[&2].0.stats.batch_sizes, vec![2]);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(out[&(i as u64)].0.ids.len(), r.params.max_tokens, "request {i} got max_tokens");
    }
}

#[test]
fn a_cancelled_generation_frees_its_lane_for_the_next() {
    let src = tiny_llama(43);
    let mut e = engine(&src, false, KvOptions::default(), StreamingConfig::default());
    let want = solo(&mut e, &[9, 8, 7], &greedy(5));
    let mut batch = Batch::default();
    for id in 0..4 {
        pollster::block_on(e.batch_join(&mut batch, id, &[3, 4, 5], &greedy(50), &mut |_| true)).expect("join");
    }
    pollster::block_on(e.batch_step(&mut batch, &mut |_, _| true)).expect("step");
    let full = pollster::block_on(e.batch_join(&mut batch, 9, &[1], &greedy(5), &mut |_| true));
    assert_eq!(full.err().map(|e| e.code()), Some("busy"), "a fifth request waits");
    let g = e.batch_cancel(&mut batch, 2, &mut |_| true).expect("cancel").expect("was in the batch");
    assert_eq!(g.finish_reason, wsi::engine::FinishReason::Cancelled);
    assert_eq!(batch.len(), 3);
    let joined = pollster::block_on(e.batch_join(&mut batch, 9, &[9, 8, 7], &greedy(5), &mut |_| true));
    assert!(joined.expect("the freed lane takes the next request").is_none());
    let mut got = None;
    while got.is_none() {
        let ended = pollster::block_on(e.batch_step(&mut batch, &mut |_, _| true)).expect("step");
        got = ended.into_iter().find(|(id, _)| *id == 9).map(|(_, g)| g);
    }
    assert_eq!(got.expect("ended").ids, want.ids, "the reused lane's cache held nothing of the cancelled one");
}

#[test]
fn batch_capacity_follows_the_strategy_and_the_memory_limit() {
    let src = tiny_llama(44);
    let caps = |strategy, limit_mb: Option<u32>| {
        let config = StreamingConfig { batch_size_strategy: strategy, memory_limit_mb: limit_mb, ..Default::default() };
        engine(&src, false, KvOptions::default(), config).batch_capacity()
    };
    assert_eq!(caps(BatchSizeStrategy::Performance, Some(1)), 4, "performance: max_batch_size whatever the memory");
    assert_eq!(caps(BatchSizeStrategy::Balanced, None), 4, "no memory limit: max_batch_size");
    let (memory, balanced) = (caps(BatchSizeStrategy::Memory, Some(1)), caps(BatchSizeStrategy::Balanced, Some(1)));
    assert!(memory < 4, "a 1 MiB limit leaves room for fewer lanes ({memory})");
    assert!((1..=balanced).contains(&memory), "memory keeps more room free than balanced ({memory} vs {balanced})");
    let off = StreamingConfig { adaptive_batch_size: false, ..Default::default() };
    assert_eq!(
        engine(&src, false, KvOptions::default(), off).batch_capacity(),
        1,
        "adaptive_batch_size off: one at a time"
    );
}

#[test]
fn a_generation_that_leaves_and_rejoins_with_submissions_in_flight_continues_exactly() {
    let src = tiny_llama(45);
    let mut e = engine(&src, false, KvOptions::default(), StreamingConfig::default());
    let prompt = vec![11, 12, 13, 14];
    let want = solo(&mut e, &prompt, &greedy(20));
    let mut batch = Batch::with_depth(3);
    let mut ids = Vec::new();
    pollster::block_on(e.batch_join(&mut batch, 1, &prompt, &greedy(20), &mut |ev| {
        ids.extend(ev.id);
        true
    }))
    .expect("join");
    pollster::block_on(e.batch_step(&mut batch, &mut |_, ev| {
        ids.extend(ev.id);
        true
    }))
    .expect("step");
    // Leave while two more submissions are in flight, then rejoin under the same id from
    // the prompt and the ids so far (a pause and resume).
    e.batch_cancel(&mut batch, 1, &mut |_| true).expect("leave");
    let context: Vec<u32> = prompt.iter().chain(&ids).copied().collect();
    let rest = greedy(20 - ids.len());
    pollster::block_on(e.batch_join(&mut batch, 1, &context, &rest, &mut |ev| {
        ids.extend(ev.id);
        true
    }))
    .expect("rejoin");
    while !batch.is_empty() {
        pollster::block_on(e.batch_step(&mut batch, &mut |_, ev| {
            ids.extend(ev.id);
            true
        }))
        .expect("step");
    }
    assert_eq!(ids, want.ids, "nothing of the old lane's in-flight steps reached the rejoined generation");
}

#[test]
fn initial_batch_size_builds_that_many_lanes_at_load() {
    let src = tiny_llama(46);
    let one = engine(&src, false, KvOptions::default(), StreamingConfig::default());
    let config = StreamingConfig { initial_batch_size: 3, ..Default::default() };
    let three = engine(&src, false, KvOptions::default(), config);
    assert_eq!((one.model.lane_count(), three.model.lane_count()), (1, 3));
    assert_eq!(three.model.kv_bytes(), 3 * one.model.kv_bytes(), "each lane has its own KV cache");
}
