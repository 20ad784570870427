//! The whole GPU forward pass on tiny random models of every supported variant, against
//! the CPU reference forward pass: llama (tied and untied, several file formats), mistral,
//! qwen2 (q/k/v biases, half-split RoPE), a GGUF -> Hugging Face conversion, and shapes
//! that are not multiples of any workgroup or tile size.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, max_rel_err};
use wsi::engine::{Engine, EngineOptions, GenerateParams};
use wsi::gpu::WeightFormat;
use wsi::model::gguf::GgufSource;
use wsi::model::gguf_write::{TinySpec, tiny_gguf};
use wsi::model::llama::LoadOptions;
use wsi::model::reference::forward_all;
use wsi::model::{Arch, HostFormat, ModelSource};

fn engine(src: &dyn ModelSource, format: WeightFormat, tpr: u32, chunk: usize) -> Engine {
    engine_sharded(src, format, tpr, chunk, 0)
}

/// `max_binding` > 0 splits every weight bigger than that into row shards.
fn engine_sharded(src: &dyn ModelSource, format: WeightFormat, tpr: u32, chunk: usize, max_binding: u64) -> Engine {
    engine_loaded(src, format, tpr, chunk, max_binding, |load| load)
}

/// `engine` with its load options changed by `edit` before the one load.
fn engine_with(
    src: &dyn ModelSource,
    format: WeightFormat,
    chunk: usize,
    edit: impl FnOnce(LoadOptions) -> LoadOptions,
) -> Engine {
    engine_loaded(src, format, 64, chunk, 0, edit)
}

fn engine_loaded(
    src: &dyn ModelSource,
    format: WeightFormat,
    tpr: u32,
    chunk: usize,
    max_binding: u64,
    edit: impl FnOnce(LoadOptions) -> LoadOptions,
) -> Engine {
    let load = LoadOptions {
        format,
        context: 64,
        chunk,
        workgroup: 64,
        threads_per_row: tpr,
        rows: 2,
        // GPUs' wide matvec (k a multiple of 8: d_model 96, d_ff 136).
        wide_threads_per_row: if tpr == 1 { 0 } else { 8 },
        attention_split: if tpr == 1 { 1 } else { 5 },
        // Decoding after an 11-token prompt (12 to 30 keys) runs split 4 (up to 23 keys) and
        // then the full 5, switching dispatch lists inside a submission.
        attention_keys_per_split: 3,
        max_binding,
        ..Default::default()
    };
    let options = EngineOptions { load: edit(load), steps_per_submit: 3, in_flight: 2, ..Default::default() };
    Engine::load(gpu(), src, options).expect("engine loads")
}

fn spec(tied: bool) -> TinySpec {
    TinySpec { n_layers: 2, d_model: 96, n_heads: 6, n_kv_heads: 2, d_ff: 136, vocab: 300, context: 128, tied }
}

/// GPU logits for every prefix of `ids` (via `score`'s per-row logits path is internal,
/// so compare the last position after each prefix) against the CPU reference.
fn check_against_reference(src: &dyn ModelSource, e: &mut Engine, ids: &[u32], tol: f32) {
    let want = forward_all(src, ids).expect("reference");
    for n in [1, ids.len() / 2, ids.len()] {
        let got = pollster::block_on(e.next_logits(&ids[..n])).expect("logits");
        let err = max_rel_err(&got, &want[n - 1], 0.5);
        assert!(err < tol, "prefix {n}: max rel err {err}");
    }
}

#[test]
fn llama_variants_match_the_cpu_reference() {
    let ids: Vec<u32> = (0..37).map(|i| (i * 7 + 3) % 290).collect();
    for (tied, format, arch) in [
        (true, HostFormat::F32, Arch::Llama),
        (false, HostFormat::Q8_0, Arch::Llama),
        (false, HostFormat::F16, Arch::Mistral),
        (true, HostFormat::F32, Arch::Qwen2),
    ] {
        let bytes = tiny_gguf(&spec(tied), arch, 11, format).expect("tiny model");
        let src = GgufSource::from_bytes(bytes).expect("parse");
        // Prefill chunk 16 forces several chunks; both matvec variants run.
        for tpr in [64, 1] {
            let mut e = engine(&src, WeightFormat::F32, tpr, 16);
            check_against_reference(&src, &mut e, &ids, 1e-3);
        }
    }
}

#[test]
fn tensor_core_prefill_stays_within_f16_of_the_cpu_reference_where_the_adapter_has_them() {
    if !gpu().caps.coop_f16 {
        eprintln!("{}: no f16 cooperative matrices, prefill keeps the tiled kernel", gpu().caps.adapter_name);
        return;
    }
    let ids: Vec<u32> = (0..37).map(|i| (i * 7 + 3) % 290).collect();
    for (tied, format, arch, weights) in [
        (true, HostFormat::F32, Arch::Llama, WeightFormat::F32),
        (false, HostFormat::Q4_0, Arch::Llama, WeightFormat::Int4),
        (true, HostFormat::F32, Arch::Qwen2, WeightFormat::F16),
    ] {
        let src = GgufSource::from_bytes(tiny_gguf(&spec(tied), arch, 11, format).expect("tiny")).expect("parse");
        let mut e = engine_with(&src, weights, 16, |load| LoadOptions { coop_matmul: true, ..load });
        // Every activation enters the products as f16 (a relative 2^-11), two layers deep;
        // the reference takes the weights as stored (int4: the file's blocks).
        check_against_reference(&src, &mut e, &ids, 1e-2);
    }
}

#[test]
fn decode_steps_equal_teacher_forced_greedy() {
    let bytes = tiny_gguf(&spec(false), Arch::Llama, 5, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    // The split attention's partials merged by a combine dispatch, then (the default for
    // small models) in the o projection's input loads: one dispatch fewer per layer.
    let mut dispatches = Vec::new();
    for combine_in_o_max in [0, usize::MAX] {
        let mut e = engine_with(&src, WeightFormat::F32, 8, |load| LoadOptions { combine_in_o_max, ..load });
        // Position 40: the full split; position 11: split 4, whose partials are merged by
        // the combine dispatch or in the o projection alike.
        dispatches.push([40, 11].map(|pos| e.model.dispatches_per_decode_step(pos)));
        greedy_equals_teacher_forced(&src, &mut e);
    }
    assert_eq!(dispatches[0][0] - dispatches[1][0], 2, "one combine dispatch per layer removed");
    assert_eq!(dispatches[0][1] - dispatches[1][1], 2, "the same at a smaller split");
    let e = engine(&src, WeightFormat::F32, 64, 8);
    let splits = [1, 5, 10, 11, 22, 23, 40].map(|pos| e.model.decode_split(pos));
    assert_eq!(splits, [1, 2, 2, 4, 4, 5, 5], "the largest power of two with 3 keys each, then the model's");
    // Qwen2: q/k/v biases and half-split RoPE through the decode attention's own RoPE.
    let bytes = tiny_gguf(&spec(false), Arch::Qwen2, 5, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    greedy_equals_teacher_forced(&src, &mut engine(&src, WeightFormat::F32, 64, 8));
    // int4 from whole Q4_0 blocks (the reference runs on the file's weights exactly): the
    // o projection's `wide` matvec merges the attention partials as it loads them.
    let exact = TinySpec { d_ff: 160, ..spec(false) };
    let bytes = tiny_gguf(&exact, Arch::Llama, 5, HostFormat::Q4_0).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    greedy_equals_teacher_forced(&src, &mut engine(&src, WeightFormat::Int4, 64, 8));
    // The same with int8 inputs (`q8_inputs`): every decode matvec's k (96, 160) is whole
    // 32-groups, so QKV (fused norm), o (merging the split partials) and the lm_head take
    // `q8in`; gate/up packs the SwiGLU product for down (`q8pack`, `q8pre`: d_ff = 160 is 5
    // groups), or with `q8_pack` off down quantises it itself (`q8in`, SwiGLU input).
    for q8_pack in [true, false] {
        let mut e =
            engine_with(&src, WeightFormat::Int4, 8, |load| LoadOptions { q8_inputs: Some(1), q8_pack, ..load });
        greedy_near_teacher_forced(&src, &mut e, 0.3);
    }
    // The o projection on the attention output packed as int8 (`q8_pack_o`; head_dim 32, so
    // whole groups): the decode kernel packs it at split 1, the combine at larger splits (the
    // partials are not merged in o's loads here). Decode-path scores: packed, o gets the int8
    // grid its own `q8in` would give it (bit-equal scores), and not the float inputs it has
    // without int8 inputs (o has 128 rows, the others 256 and 320). With `merge_splits` each
    // head's last split merges and packs instead of the combine: the same scores bit for bit.
    let wide_heads = TinySpec { d_model: 128, n_heads: 4, d_ff: 160, ..spec(false) };
    let bytes = tiny_gguf(&wide_heads, Arch::Llama, 5, HostFormat::Q4_0).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 300).collect();
    let mut nll = Vec::new();
    for (q8_min_rows, q8_pack_o, merge_splits) in
        [(200, false, false), (200, true, false), (1, false, false), (200, true, true)]
    {
        let q8_inputs = Some(q8_min_rows);
        let mut e = engine_with(&src, WeightFormat::Int4, 8, |load| LoadOptions {
            q8_inputs,
            q8_pack_o,
            merge_splits,
            combine_in_o_max: 0,
            ..load
        });
        greedy_near_teacher_forced(&src, &mut e, 0.3);
        nll.push(pollster::block_on(e.score_decode(&ids)).expect("score").0);
    }
    let (float_o, packed, q8in, merged) = (nll[0], nll[1], nll[2], nll[3]);
    assert_eq!(packed, q8in, "packed by attention vs quantised by o's workgroups");
    assert_eq!(merged, packed, "merged by the last split vs by the combine dispatch");
    assert!(packed != float_o && (packed - float_o).abs() < 0.02 * float_o.abs(), "{nll:?}");
}

#[test]
fn kernels_without_wgpus_runtime_checks_give_the_same_bits_as_with_them() {
    // The engine drops wgpu's workgroup zeroing, division guards and (outside the matvecs
    // that quantise their input) loop counters; none may change a result. int4 with int8
    // inputs, packed o input and merged splits: every decode kernel family runs.
    use wsi::gpu::{Kernel, MatMode, Q8, ShaderChecks};
    let q8in = Kernel::Matvec {
        format: WeightFormat::Int4,
        mode: MatMode::default(),
        wide: false,
        batch: 1,
        subgroup: false,
        q8: Q8::In,
    };
    let packed = Kernel::Matvec {
        q8: Q8::Packed,
        format: WeightFormat::Int4,
        mode: MatMode::default(),
        wide: false,
        batch: 1,
        subgroup: false,
    };
    assert!(ShaderChecks::for_kernel(&q8in).loop_bounding && !ShaderChecks::for_kernel(&packed).loop_bounding);
    assert!(!ShaderChecks::for_kernel(&q8in).zero_workgroup && ShaderChecks::ALL.zero_workgroup);
    let wide_heads = TinySpec { d_model: 128, n_heads: 4, d_ff: 160, ..spec(false) };
    let bytes = tiny_gguf(&wide_heads, Arch::Llama, 5, HostFormat::Q4_0).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 300).collect();
    let mut runs = Vec::new();
    for shader_checks in [false, true] {
        let q8_inputs = Some(1);
        let mut e = engine_with(&src, WeightFormat::Int4, 8, |load| LoadOptions {
            q8_inputs,
            q8_pack_o: true,
            merge_splits: true,
            shader_checks,
            ..load
        });
        let decoded = pollster::block_on(e.score_decode(&ids)).expect("score").0;
        let prefilled = pollster::block_on(e.next_logits(&ids)).expect("logits");
        runs.push((decoded.to_bits(), prefilled.iter().map(|v| v.to_bits()).collect::<Vec<_>>()));
    }
    assert_eq!(runs[0], runs[1], "decode scores and prefill logits, engine's checks vs all of wgpu's");
}

fn greedy_equals_teacher_forced(src: &GgufSource, e: &mut Engine) {
    greedy_near_teacher_forced(src, e, 0.0);
}

/// Each decoded id against the CPU reference run on the same prefix: the best id, or with
/// `slack` > 0 one whose reference logit is within `slack` of the best (int8 inputs move
/// logits by ~1% of their range; a kernel bug would pick far from the best).
fn greedy_near_teacher_forced(src: &GgufSource, e: &mut Engine, slack: f32) {
    let prompt: Vec<u32> = vec![40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50];
    let params = GenerateParams { max_tokens: 20, ignore_eos: true, ..Default::default() };
    let g = pollster::block_on(e.generate(&prompt, &params, &mut |_| true)).expect("generate");
    assert_eq!(g.ids.len(), 20);
    // Recompute each step from scratch with the CPU reference: argmax must agree.
    let mut seq = prompt.clone();
    for &id in &g.ids {
        let logits = forward_all(src, &seq).expect("reference");
        let last = logits.last().expect("row");
        let best = (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a))).expect("argmax");
        let step = seq.len() - prompt.len();
        if slack > 0.0 {
            let (ours, top) = (last[id as usize], last[best]);
            assert!(ours >= top - slack, "step {step}: id {id} at {ours}, best {best} at {top}");
        } else {
            assert_eq!(id as usize, best, "step {step}");
        }
        seq.push(id);
    }
    assert!(g.stats.submissions >= 19 / 3, "decode steps were batched into submissions");
}

#[test]
fn decode_attention_through_subgroups_follows_the_cpu_reference_and_prefill() {
    // Heads of 128: where the adapter's subgroups hold 32 lanes (the H200), the decode
    // attention runs shaders/attention_sg.wgsl (512 threads; split 1 up to 5 keys, then 2, 4,
    // 5); elsewhere the workgroup-memory kernel. Either way greedy decoding follows the CPU
    // reference and teacher-forced decode scores equal prefill's up to float order, and the
    // subgroup kernel scores like the workgroup-memory one.
    let heads_128 = TinySpec { d_model: 256, n_heads: 2, n_kv_heads: 1, ..spec(false) };
    let bytes = tiny_gguf(&heads_128, Arch::Llama, 5, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let ids: Vec<u32> = (0..40).map(|i| (i * 11 + 5) % 290).collect();
    let mut decoded = Vec::new();
    for attention_subgroups in [true, false] {
        let mut e = engine_with(&src, WeightFormat::F32, 8, |load| LoadOptions {
            attention_subgroups,
            attention_subgroup_workgroup: 512,
            ..load
        });
        greedy_equals_teacher_forced(&src, &mut e);
        let (prefill, _) = pollster::block_on(e.score(&ids)).expect("score");
        let (decode, _) = pollster::block_on(e.score_decode(&ids)).expect("score_decode");
        assert!((prefill - decode).abs() < 1e-4 * prefill.abs(), "prefill {prefill} vs decode {decode}");
        decoded.push(decode);
    }
    assert!((decoded[0] - decoded[1]).abs() < 1e-5 * decoded[1].abs(), "{decoded:?}");
}

#[test]
fn qkv_fused_into_the_attention_dispatch_scores_like_separate_dispatches() {
    // Multi-head attention, int4 (Q4_0) weights on int8 inputs, the subgroup attention: short
    // decode lists compute QKV inside the attention dispatch (shaders/attention_qkv.wgsl,
    // QKV rows 16 per workgroup here, the last workgroup of a head's rows attending at split
    // 1). Heads of 32 take 8 lanes (lavapipe's subgroups), heads of 128 32 lanes where
    // subgroups hold them (the H200). Fused or not, the decode scores agree up to the QKV
    // sums' order (and the int8 codes of o's input that order flips: up to 4.2e-4 of the
    // score on the H200, 3.5e-6 on lavapipe) and greedy decoding stays with the CPU
    // reference, with one dispatch per layer fewer.
    let caps = gpu().caps.clone();
    let mut ran = 0;
    for hd in [32usize, 128] {
        let lanes = (hd / 4) as u32;
        if !caps.subgroups || lanes > caps.subgroup_min_size {
            continue;
        }
        let mha = TinySpec { d_model: 2 * hd, n_heads: 2, n_kv_heads: 2, d_ff: 160, ..spec(false) };
        let bytes = tiny_gguf(&mha, Arch::Llama, 23, HostFormat::Q4_0).expect("tiny model");
        let src = GgufSource::from_bytes(bytes).expect("parse");
        let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 290).collect();
        let mut scores = Vec::new();
        let mut dispatches = Vec::new();
        for fused in [0, 8] {
            let mut e = engine_with(&src, WeightFormat::Int4, 8, |load| LoadOptions {
                q8_inputs: Some(1),
                q8_pack_o: true,
                merge_splits: true,
                combine_in_o_max: 0,
                attention_subgroups: true,
                attention_subgroup_min_lanes: lanes,
                attention_subgroup_workgroup: lanes * 4,
                fused_qkv_workgroup: lanes * 4,
                fused_qkv_max_split: fused,
                ..load
            });
            greedy_near_teacher_forced(&src, &mut e, 0.1);
            let (decode, _) = pollster::block_on(e.score_decode(&ids)).expect("score_decode");
            scores.push(decode);
            let params = GenerateParams { max_tokens: 2, ignore_eos: true, ..Default::default() };
            let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| true)).expect("generate");
            dispatches.push(g.stats.dispatches_per_token);
        }
        eprintln!("heads of {hd}: decode scores {scores:?}, dispatches per token {dispatches:?}");
        assert!((scores[0] - scores[1]).abs() < 1e-3 * scores[0].abs(), "heads of {hd}: {scores:?}");
        assert_eq!(dispatches[1] + mha.n_layers, dispatches[0], "heads of {hd}: one dispatch per layer fewer");
        ran += 1;
    }
    assert!(ran > 0 || !caps.subgroups, "the fused kernel ran");
}

#[test]
fn decode_path_scoring_equals_prefill_scoring() {
    // Teacher-forced decode steps (split attention, single-row matvecs) against prefill
    // chunks (tiled matmul): the same log-likelihood up to float order.
    let bytes = tiny_gguf(&spec(false), Arch::Llama, 5, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let ids: Vec<u32> = (0..40).map(|i| (i * 11 + 5) % 290).collect();
    let mut e = engine(&src, WeightFormat::F32, 64, 8);
    let (prefill, n) = pollster::block_on(e.score(&ids)).expect("score");
    let (decode, m) = pollster::block_on(e.score_decode(&ids)).expect("score_decode");
    assert_eq!((n, m), (39, 39));
    assert!((prefill - decode).abs() < 1e-4 * prefill.abs(), "prefill {prefill} vs decode {decode}");
}

#[test]
fn fp16_weights_stay_close_to_fp32() {
    let bytes = tiny_gguf(&spec(true), Arch::Llama, 9, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let ids: Vec<u32> = (0..20).map(|i| (i * 13 + 1) % 290).collect();
    let mut e = engine(&src, WeightFormat::F16, 64, 16);
    check_against_reference(&src, &mut e, &ids, 2e-2);
}

#[test]
fn int8_and_int4_from_matching_blocks_match_the_cpu_reference_on_the_file_weights() {
    // d_ff 160: every matrix is whole 32-groups, so every block passes through unchanged and
    // the CPU reference on the file's dequantised weights is the exact target.
    let ids: Vec<u32> = (0..29).map(|i| (i * 17 + 2) % 290).collect();
    let exact = TinySpec { d_ff: 160, ..spec(false) };
    for (format, file, tied) in [
        (WeightFormat::Int8, HostFormat::Q8_0, false),
        (WeightFormat::Int4, HostFormat::Q4_1, true),
        (WeightFormat::Int4, HostFormat::Q4_0, false),
    ] {
        let src = GgufSource::from_bytes(
            tiny_gguf(&TinySpec { tied, ..exact.clone() }, Arch::Llama, 13, file).expect("tiny"),
        )
        .expect("parse");
        for tpr in [64, 1] {
            let mut e = engine(&src, format, tpr, 16);
            check_against_reference(&src, &mut e, &ids, 1e-3);
        }
        let (q, h) =
            (engine(&src, format, 64, 16).memory_bytes().0, engine(&src, WeightFormat::F16, 64, 16).memory_bytes().0);
        assert!(q < h, "{format:?} weights take {q} bytes, fp16 {h}");
    }
    // d_ff 136: ffn_down (136 wide) falls back to fp16, the rest stays int8.
    let src = GgufSource::from_bytes(tiny_gguf(&spec(true), Arch::Llama, 14, HostFormat::Q8_0).expect("tiny"))
        .expect("parse");
    let mut e = engine(&src, WeightFormat::Int8, 64, 16);
    check_against_reference(&src, &mut e, &ids, 2e-2);
}

#[test]
fn converted_hugging_face_folder_gives_the_same_logits() {
    let bytes = tiny_gguf(&spec(false), Arch::Llama, 21, HostFormat::Q8_0).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let dir = std::env::temp_dir().join(format!("wsi-tiny-hf-{}", std::process::id()));
    let tok = src.tokenizer().expect("tokenizer");
    wsi::model::convert::convert_to_hf(&src, &tok.to_hf_json().expect("json"), &tok.hf_config(), &dir)
        .expect("convert");
    let hf = wsi::model::open_path(&dir).expect("open HF folder");
    assert_eq!(hf.config().rope_layout, wsi::model::RopeLayout::HalfSplit);
    let ids: Vec<u32> = (0..25).map(|i| (i * 11 + 5) % 290).collect();
    let mut a = engine(&src, WeightFormat::F32, 64, 16);
    let mut b = engine(hf.as_ref(), WeightFormat::F32, 64, 16);
    let la = pollster::block_on(a.next_logits(&ids)).expect("gguf logits");
    let lb = pollster::block_on(b.next_logits(&ids)).expect("hf logits");
    assert!(max_rel_err(&lb, &la, 0.5) < 1e-4);
    assert_eq!(
        hf.tokenizer().expect("hf tokenizer").encode("hello 123").expect("encode"),
        tok.encode("hello 123").expect("encode")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prompt_past_the_context_is_a_context_length_error() {
    let bytes = tiny_gguf(&spec(true), Arch::Llama, 3, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let mut e = engine(&src, WeightFormat::F32, 64, 16);
    let ids = vec![5u32; 64];
    let err = pollster::block_on(e.generate(&ids, &GenerateParams::default(), &mut |_| true)).expect_err("too long");
    assert_eq!(err.code(), "context_length_exceeded");
    let err = pollster::block_on(e.generate(&[9999], &GenerateParams::default(), &mut |_| true)).expect_err("bad id");
    assert_eq!(err.code(), "invalid_request");
    // The engine still works afterwards.
    let params = GenerateParams { max_tokens: 5, ignore_eos: true, ..Default::default() };
    let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| true)).expect("generate");
    assert_eq!(g.ids.len(), 5);
}

#[test]
fn generation_stops_at_max_tokens_and_when_the_callback_says_so() {
    let bytes = tiny_gguf(&spec(true), Arch::Llama, 4, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let mut e = engine(&src, WeightFormat::F32, 64, 16);
    let params = GenerateParams { max_tokens: 7, ignore_eos: true, ..Default::default() };
    let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| true)).expect("generate");
    assert_eq!((g.ids.len(), g.finish_reason.as_str()), (7, "length"));
    let params = GenerateParams { max_tokens: 30, ignore_eos: true, ..Default::default() };
    let mut seen = 0;
    let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| {
        seen += 1;
        seen < 4
    }))
    .expect("generate");
    assert_eq!((g.ids.len(), g.finish_reason.as_str()), (4, "cancelled"));
    // The steps already in flight were discarded: the next run starts clean and agrees.
    let again = pollster::block_on(e.generate(&[5, 6, 7], &GenerateParams { max_tokens: 4, ..params }, &mut |_| true))
        .expect("generate");
    assert_eq!(&again.ids[..], &g.ids[..]);
}

#[test]
fn same_seed_gives_the_same_sampled_text() {
    let bytes = tiny_gguf(&spec(true), Arch::Llama, 8, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let mut e = engine(&src, WeightFormat::F32, 64, 16);
    let run = |e: &mut Engine, seed: u64| {
        let sample = wsi::sampling::SampleSettings {
            temperature: 1.2,
            top_p: 0.95,
            top_k: 50,
            repetition_penalty: 1.1,
            seed,
            ..Default::default()
        };
        let params = GenerateParams { sample, max_tokens: 24, ignore_eos: true, ..Default::default() };
        pollster::block_on(e.generate(&[10, 20, 30], &params, &mut |_| true)).expect("generate").ids
    };
    let a = run(&mut e, 42);
    let b = run(&mut e, 42);
    let c = run(&mut e, 43);
    assert_eq!(a, b, "same seed, same ids");
    assert_ne!(a, c, "another seed samples other ids");
    let greedy = pollster::block_on(e.generate(
        &[10, 20, 30],
        &GenerateParams { max_tokens: 24, ignore_eos: true, ..Default::default() },
        &mut |_| true,
    ))
    .expect("generate")
    .ids;
    assert_ne!(a, greedy, "temperature 1.2 does not reduce to greedy");
}

#[test]
fn generation_timeout_ends_with_finish_reason_timeout() {
    let bytes = tiny_gguf(&spec(true), Arch::Llama, 6, HostFormat::F32).expect("tiny model");
    let src = GgufSource::from_bytes(bytes).expect("parse");
    let mut e = engine(&src, WeightFormat::F32, 64, 16);
    // 0 ms: the deadline has passed when the first batch of ids arrives; that batch is kept.
    let params =
        GenerateParams { max_tokens: 40, ignore_eos: true, generation_timeout_ms: Some(0), ..Default::default() };
    let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| true)).expect("generate");
    assert_eq!(g.finish_reason.as_str(), "timeout");
    assert!(g.ids.len() < 40, "stopped early: {} ids", g.ids.len());
    let params =
        GenerateParams { max_tokens: 6, ignore_eos: true, token_timeout_ms: Some(60_000), ..Default::default() };
    let g = pollster::block_on(e.generate(&[5, 6, 7], &params, &mut |_| true)).expect("generate");
    assert_eq!(g.finish_reason.as_str(), "length");
}

#[test]
fn weights_above_the_binding_limit_are_split_into_row_shards() {
    // 6 KiB per binding: the 300 x 96 embedding/lm_head (f32: 112 KiB) becomes 20 shards,
    // every projection several; the output must not change.
    let ids: Vec<u32> = (0..21).map(|i| (i * 19 + 7) % 290).collect();
    for (format, file, tied) in [
        (WeightFormat::F32, HostFormat::F32, true),
        (WeightFormat::Int8, HostFormat::Q8_0, false),
        (WeightFormat::F16, HostFormat::F32, false),
        // Quantised at load by the GPU kernel straight into each shard.
        (WeightFormat::Int3, HostFormat::F32, false),
        (WeightFormat::Int2, HostFormat::F16, true),
    ] {
        let src = GgufSource::from_bytes(
            tiny_gguf(&TinySpec { d_ff: 160, ..spec(tied) }, Arch::Qwen2, 17, file).expect("tiny"),
        )
        .expect("parse");
        let mut whole = engine(&src, format, 64, 16);
        for tpr in [64, 1] {
            let mut sharded = engine_sharded(&src, format, tpr, 16, 6 * 1024);
            let a = pollster::block_on(whole.next_logits(&ids)).expect("logits");
            let b = pollster::block_on(sharded.next_logits(&ids)).expect("sharded logits");
            assert!(max_rel_err(&b, &a, 0.5) < 1e-5, "{format:?} tpr {tpr}: sharded logits differ");
            let params = GenerateParams { max_tokens: 6, ignore_eos: true, ..Default::default() };
            let ga = pollster::block_on(whole.generate(&ids, &params, &mut |_| true)).expect("generate");
            let gb = pollster::block_on(sharded.generate(&ids, &params, &mut |_| true)).expect("generate");
            assert_eq!(ga.ids, gb.ids, "{format:?} tpr {tpr}: decode through shards");
        }
    }
}
