//! The integer GPU weight formats: GGUF blocks that already hold them (Q8_0 -> int8,
//! Q4_0 / Q4_1 -> int4) dequantise on the GPU to exactly the values of the CPU reference
//! `quant::ggml::dequantize`, through every kernel that reads weights; other sources are
//! quantised per group (`quant::fit`) on the GPU at load, matching the CPU reference.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::borrow::Cow;

use common::{gpu, rand_vec, read_f32, run};
use wsi::gpu::params::{EmbedParams, MatParams};
use wsi::gpu::{Gpu, Kernel, KernelKey, MATMUL_TILE_ROWS, MatMode, Q8, WeightFormat, matmul_tile};
use wsi::model::HostFormat;
use wsi::model::HostTensor;
use wsi::model::upload::{GpuMatrix, embedding_format, upload_tensors};
use wsi::quant::fit::Quantizer;
use wsi::quant::ggml;
use wsi::quant::gpu_formats::{Packed, dequantize, pack_f32, quantize_dequantize, quantize_dequantize_weighted};
use wsi::quant::on_gpu::GpuQuantizer;

fn tensor(name: &str, rows: usize, cols: usize, format: HostFormat, seed: u64) -> HostTensor<'static> {
    let x = rand_vec(rows * cols, seed, 0.7);
    HostTensor {
        name: name.into(),
        shape: vec![rows, cols],
        format,
        bytes: Cow::Owned(ggml::quantize(format, &x).expect("quantize")),
    }
}

/// The whole matrix as the GPU dequantises it, `[rows, cols]`, read through a matrix
/// kernel with the identity as input (token t = e_t gives column t exactly: every other
/// product is a zero).
fn columns_through_kernel(gpu: &Gpu, m: &GpuMatrix, kernel: Kernel, tpr: u32) -> Vec<f32> {
    let (n, k) = (m.rows as usize, m.cols as usize);
    let mut eye = vec![0f32; k * k];
    for i in 0..k {
        eye[i * k + i] = 1.0;
    }
    let params = MatParams {
        n: n as u32,
        k: k as u32,
        x_stride: k as u32,
        y_stride: n as u32,
        eps: 0.0,
        last_row: 0,
        y_off: 0,
        head_dim: 0,
    };
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&params));
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&eye));
    let yb = gpu.storage("y", (k * n * 4) as u64);
    let dummy = gpu.storage("dummy", 16);
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[0u32, k as u32, 0, 0]));
    let key = KernelKey { kernel, wg: 64, rows: 2, tpr };
    let grid = match kernel {
        Kernel::Matmul { tiled, .. } => {
            let tile = matmul_tile(tiled) as usize;
            [n.div_ceil(MATMUL_TILE_ROWS as usize) as u32, k.div_ceil(tile) as u32, 1]
        }
        _ => [(n as u32).div_ceil(key.rows_per_workgroup()), k as u32, 1],
    };
    let mut bindings = vec![(0, &ub), (3, &xb), (4, &yb), (5, &dummy), (6, &dummy), (7, &state)];
    bindings.extend(m.bindings());
    run(gpu, key, &bindings, grid);
    let yt = read_f32(gpu, &yb); // [k, n]
    let mut w = vec![0f32; n * k];
    for t in 0..k {
        for r in 0..n {
            w[r * k + t] = yt[t * n + r];
        }
    }
    w
}

/// Every row through the embedding gather.
fn rows_through_embed(gpu: &Gpu, m: &GpuMatrix) -> Vec<f32> {
    let (n, d) = (m.rows as usize, m.cols as usize);
    let ub = gpu
        .uniform_init("p", bytemuck::bytes_of(&EmbedParams { d: d as u32, vocab: n as u32, row0: 0, rows: n as u32 }));
    let ids: Vec<u32> = (0..n as u32).collect();
    let tb = gpu.storage_init("tokens", bytemuck::cast_slice(&ids));
    let out = gpu.storage("out", (n * d * 4) as u64);
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[0u32, n as u32, 0, 0]));
    let mut bindings = vec![(0, &ub), (3, &tb), (4, &out), (7, &state)];
    bindings.extend(m.bindings());
    run(
        gpu,
        KernelKey { kernel: Kernel::Embed { format: m.format }, wg: 64, rows: 1, tpr: 1 },
        &bindings,
        [(d as u32 / 4).div_ceil(64), n as u32, 1],
    );
    read_f32(gpu, &out)
}

fn assert_same_values(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(a == b, "{what}: weight {i}: GPU {a} ({:#x}) vs file {b} ({:#x})", a.to_bits(), b.to_bits());
    }
}

/// `format` asked for, `stored` what the blocks are kept as.
fn check_passthrough(format: WeightFormat, host: HostFormat, stored: WeightFormat) {
    let gpu = gpu();
    // Two row blocks (as QKV and gate|up are uploaded), odd row counts.
    let (r1, r2, k) = (37, 22, 96);
    let a = tensor("a", r1, k, host, 1);
    let b = tensor("b", r2, k, host, 2);
    let m = upload_tensors(&gpu, "w", &[&a, &b], k, format).expect("upload");
    assert_eq!(m.format, stored);
    let format = stored;
    let mut want = ggml::dequantize(host, &a.bytes, r1 * k).expect("dequantize");
    want.extend(ggml::dequantize(host, &b.bytes, r2 * k).expect("dequantize"));
    // GPU memory: the file's blocks (Q4_0 without a stored minimum: 18 bytes per 32
    // weights) and at most one u32 of scale padding.
    let file = ggml::tensor_bytes(host, (r1 + r2) * k).expect("size");
    assert!((file..=file + 2).contains(&(m.bytes() as usize)), "{} bytes", m.bytes());
    assert_same_values(&rows_through_embed(&gpu, &m), &want, &format!("{host:?} embed"));
    for (tpr, wide) in [(64, false), (1, false), (8, false), (8, true), (1, true)] {
        let got = columns_through_kernel(
            &gpu,
            &m,
            Kernel::Matvec { format, mode: MatMode::default(), wide, batch: 1, subgroup: false, q8: Q8::Off },
            tpr,
        );
        assert_same_values(&got, &want, &format!("{host:?} matvec tpr={tpr} wide={wide}"));
    }
    for tiled in [true, false] {
        let got = columns_through_kernel(&gpu, &m, Kernel::Matmul { format, mode: MatMode::default(), tiled }, 64);
        assert_same_values(&got, &want, &format!("{host:?} matmul tiled={tiled}"));
    }
}

#[test]
fn q8_0_blocks_pass_through_to_int8_bit_exactly() {
    check_passthrough(WeightFormat::Int8, HostFormat::Q8_0, WeightFormat::Int8);
}

#[test]
fn q4_0_blocks_pass_through_to_int4_bit_exactly_in_their_own_layout() {
    check_passthrough(WeightFormat::Int4, HostFormat::Q4_0, WeightFormat::Int4Sym);
}

#[test]
fn q4_1_blocks_pass_through_to_int4_bit_exactly() {
    check_passthrough(WeightFormat::Int4, HostFormat::Q4_1, WeightFormat::Int4);
}

#[test]
fn other_sources_are_quantised_by_the_refined_quantiser_and_mixed_parts_work() {
    let gpu = gpu();
    let k = 64;
    for format in [WeightFormat::Int8, WeightFormat::Int4] {
        // An f32 part, an f16 part and (for int4) a passthrough Q4_0 part in one matrix.
        let f = tensor("f32", 9, k, HostFormat::F32, 3);
        let h = tensor("f16", 5, k, HostFormat::F16, 4);
        let q = tensor("q", 7, k, if format == WeightFormat::Int4 { HostFormat::Q4_0 } else { HostFormat::Q8_0 }, 5);
        let m = upload_tensors(&gpu, "w", &[&f, &h, &q], k, format).expect("upload");
        let refined = Quantizer::Refined;
        let mut want = quantize_dequantize(format, &f.to_f32().expect("f32"), refined).expect("refined");
        want.extend(quantize_dequantize(format, &h.to_f32().expect("f16"), refined).expect("refined"));
        want.extend(q.to_f32().expect("blocks"));
        assert_same_values(&rows_through_embed(&gpu, &m), &want, &format!("{format:?} mixed parts"));
        // Never worse than round-to-nearest against the source values.
        let src = f.to_f32().expect("f32");
        let rtn = quantize_dequantize(format, &src, Quantizer::Rtn).expect("rtn");
        let sse = |y: &[f32]| src.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        assert!(sse(&want[..src.len()]) <= sse(&rtn), "{format:?}: refined {} vs rtn {}", sse(&want), sse(&rtn));
    }
}

/// Share of equal values and the worst difference in steps of the group's scale.
fn compare_codes(format: WeightFormat, got: &Packed, want: &Packed, n: usize) -> (f64, f32) {
    let a = dequantize(format, got, n).expect("gpu");
    let b = dequantize(format, want, n).expect("cpu");
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / n as f64;
    let range = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / range;
    (same, worst)
}

#[test]
fn gpu_quantiser_matches_the_cpu_reference_for_every_format_and_quantiser() {
    let gpu = gpu();
    let kernels = wsi::gpu::Kernels::default();
    // 45 rows of 192 (whole groups of every format); values like weights (heavy tails).
    let (rows, k) = (45, 192);
    let x: Vec<f32> = rand_vec(rows * k, 11, 1.0).iter().map(|v| v * v * v * 0.2).collect();
    for quantizer in [Quantizer::Rtn, Quantizer::Refined] {
        let q = GpuQuantizer::new(&gpu, &kernels, quantizer);
        for format in [WeightFormat::Int8, WeightFormat::Int4, WeightFormat::Int3, WeightFormat::Int2] {
            let m = wsi::model::upload::upload_matrix_with(&gpu, Some(&q), "w", &[&x], k, format).expect("upload");
            let s = &m.shards[0];
            let got = Packed {
                words: common::read_u32(&gpu, &s.buf),
                scales: common::read_u32(&gpu, s.scales.as_ref().expect("scales")),
            };
            let want = pack_f32(format, &x, quantizer).expect("cpu");
            let (same, worst) = compare_codes(format, &got, &want, x.len());
            eprintln!(
                "{format:?} {quantizer:?}: {:.4}% of weights equal, worst {worst:.2e} of the range",
                same * 100.0
            );
            // Equal but for float-order and f16-conversion differences near rounding ties.
            assert!(same >= 0.999, "{format:?} {quantizer:?}: only {same} equal");
            assert!(worst <= 0.5, "{format:?} {quantizer:?}: worst difference {worst}");
        }
    }
}

#[test]
fn gpu_quantiser_with_column_weights_matches_the_cpu_reference() {
    use wsi::quant::gpu_formats::Packer;
    use wsi::quant::on_gpu::{code_words, scale_words};
    let gpu = gpu();
    let kernels = wsi::gpu::Kernels::default();
    let (rows, k) = (37, 192);
    let x: Vec<f32> = rand_vec(rows * k, 12, 1.0).iter().map(|v| v * v * v * 0.2).collect();
    // Importance spread over three decades, like mean squares of activations.
    let imp: Vec<f32> = rand_vec(k, 13, 1.0).iter().map(|v| 10f32.powf(3.0 * v.abs()) * 1e-2).collect();
    let q = GpuQuantizer::new(&gpu, &kernels, Quantizer::Refined);
    for format in [WeightFormat::Int3, WeightFormat::Int2] {
        let n = x.len();
        let words = gpu.storage("w", (code_words(format, n) * 4) as u64);
        let scales = gpu.storage("s", (scale_words(format, n) * 4) as u64);
        q.quantize(format, &x, k, Some(&imp), &words, 0, &scales, 0).expect("quantize");
        let got = Packed { words: common::read_u32(&gpu, &words), scales: common::read_u32(&gpu, &scales) };
        let mut p = Packer::new(format, n).expect("packer");
        p.push_f32_weighted(&x, Some(&imp), Quantizer::Refined).expect("cpu");
        let want = p.finish();
        let unweighted = pack_f32(format, &x, Quantizer::Refined).expect("cpu");
        let (same, worst) = compare_codes(format, &got, &want, n);
        eprintln!("{format:?} weighted: {:.4}% of weights equal, worst {worst:.2e} of the range", same * 100.0);
        assert!(same >= 0.999 && worst <= 0.5, "{format:?}: {same} equal, worst {worst}");
        // The weights change the fit: the importance-weighted error is lower than unweighted.
        let werr = |p: &Packed| {
            let y = dequantize(format, p, n).expect("dequantize");
            x.iter().zip(&y).enumerate().map(|(i, (a, b))| f64::from(imp[i % k] * (a - b) * (a - b))).sum::<f64>()
        };
        assert!(werr(&want) < werr(&unweighted), "{format:?}: {} vs {}", werr(&want), werr(&unweighted));
    }
}

#[test]
fn kept_columns_reach_every_weight_kernel_at_f16_and_leave_the_group_fit() {
    use std::cell::Cell;
    use wsi::model::upload::{Quant, upload_tensors_sharded};
    use wsi::quant::kept;
    let gpu = gpu();
    let kernels = wsi::gpu::Kernels::default();
    let (rows, k, n_kept) = (45, 192, 6);
    let x: Vec<f32> = rand_vec(rows * k, 14, 1.0).iter().map(|v| v * v * v * 0.2).collect();
    // A few outlier columns (as in the residual stream), two of them in one group.
    let mut imp: Vec<f32> = rand_vec(k, 15, 1.0).iter().map(|v| 0.5 + v.abs()).collect();
    for (c, v) in [(3, 300.0), (5, 120.0), (70, 80.0), (131, 60.0), (150, 40.0), (191, 30.0)] {
        imp[c] = v;
    }
    let cols = kept::columns(Some(&imp), n_kept);
    assert_eq!(cols, vec![3, 5, 70, 131, 150, 191]);
    let host = HostTensor {
        name: "w".into(),
        shape: vec![rows, k],
        format: HostFormat::F32,
        bytes: Cow::Borrowed(bytemuck::cast_slice(&x)),
    };
    let q = GpuQuantizer::new(&gpu, &kernels, Quantizer::Refined);
    let ms = Cell::new(0.0);
    for format in [WeightFormat::Int3, WeightFormat::Int2] {
        let want = kept::quantize_dequantize(format, &x, k, Some(&imp), n_kept, Quantizer::Refined).expect("cpu");
        let kept_values = kept::take(&mut x.clone(), k, &cols, wsi::quant::gpu_formats::group(format));
        for c in &cols {
            for r in 0..rows {
                assert_eq!(want[r * k + c], half::f16::from_f32(x[r * k + c]).to_f32(), "reference keeps ({r}, {c})");
            }
        }
        // The CPU reference's codes (exact through the kernels), then the GPU quantiser's.
        for gpu_quantize in [false, true] {
            let quant = Quant {
                gpu: gpu_quantize.then_some(&q),
                cpu: Quantizer::Refined,
                ms: &ms,
                imp: Some(&imp),
                kept: n_kept,
            };
            let m = upload_tensors_sharded(&gpu, quant, "w", &[&host], k, format, 0).expect("upload");
            let plain = upload_tensors(&gpu, "plain", &[&host], k, format).expect("upload");
            // Beside the table both have (1 + 2 * 6 words), each row's 6 weights at f16.
            assert_eq!(m.bytes() - plain.bytes(), (2 * rows * n_kept) as u64);
            let mut kernels_run = vec![];
            for tpr in [64, 8, 1] {
                kernels_run.push((
                    Kernel::Matvec {
                        format,
                        mode: MatMode::default(),
                        wide: false,
                        batch: 1,
                        subgroup: false,
                        q8: Q8::Off,
                    },
                    tpr,
                ));
            }
            for tiled in [true, false] {
                kernels_run.push((Kernel::Matmul { format, mode: MatMode::default(), tiled }, 64));
            }
            // What the kernels must give: the stored codes dequantised on the CPU, with the
            // kept weights in place. The GPU quantiser's codes agree with the CPU's but for
            // rounding ties (WGSL's division is not correctly rounded: 99.57% equal on an
            // H200, 99.9% on lavapipe), so they are read back rather than assumed.
            let s = &m.shards[0];
            let stored = Packed {
                words: common::read_u32(&gpu, &s.buf),
                scales: common::read_u32(&gpu, s.scales.as_ref().expect("scales")),
            };
            let mut exact = dequantize(format, &stored, rows * k).expect("dequantize");
            kept::restore(&mut exact, k, &cols, &kept_values);
            let same = exact.iter().zip(&want).filter(|(a, b)| a == b).count();
            assert!(
                same as f64 >= 0.99 * want.len() as f64,
                "{format:?}: {same} of {} weights as the CPU's",
                want.len()
            );
            for (kernel, tpr) in kernels_run {
                let got = columns_through_kernel(&gpu, &m, kernel, tpr);
                assert_same_values(
                    &got,
                    &exact,
                    &format!("{format:?} gpu quantiser {gpu_quantize} {kernel:?} tpr {tpr}"),
                );
                for c in &cols {
                    assert!((0..rows).all(|r| got[r * k + c] == want[r * k + c]), "{kernel:?}: column {c} at f16");
                }
            }
        }
        // The point of it: the calibrated error of the products falls.
        let plain = quantize_dequantize_weighted(format, &x, Some(&imp), Quantizer::Refined).expect("cpu");
        let werr = |y: &[f32]| {
            x.iter().zip(y).enumerate().map(|(i, (a, b))| f64::from(imp[i % k] * (a - b) * (a - b))).sum::<f64>()
        };
        eprintln!("{format:?}: weighted error {:.4e} plain, {:.4e} with kept columns", werr(&plain), werr(&want));
        assert!(werr(&want) < 0.8 * werr(&plain), "{format:?}: {} vs {}", werr(&want), werr(&plain));
    }
}

#[test]
fn the_quantization_option_selects_the_format_and_stats_report_its_memory() {
    use wsi::config::StreamingConfig;
    use wsi::engine::{Engine, EngineOptions, GenerationStats};
    use wsi::model::gguf::GgufSource;
    use wsi::model::gguf_write::{TinySpec, tiny_gguf};
    use wsi::model::{Arch, ModelSource};

    // Widths that are whole groups of every format.
    let spec = TinySpec {
        n_layers: 2,
        d_model: 128,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 192,
        vocab: 300,
        context: 64,
        tied: true,
    };
    let src = GgufSource::from_bytes(tiny_gguf(&spec, Arch::Llama, 2, HostFormat::Q4_1).expect("tiny")).expect("parse");
    let gpu = gpu();
    let mut memory = Vec::new();
    for q in ["fp32", "fp16", "int8", "int4", "int3", "int2"] {
        let cfg = StreamingConfig::from_json_str(&format!(r#"{{"quantization": "{q}"}}"#)).expect("config");
        let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
        let engine = Engine::load(gpu.clone(), &src, options).expect("load");
        let stats = engine.stats_json(&GenerationStats::default());
        assert_eq!(stats["quantization"], q);
        assert!(stats["quantize_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
        let mb = stats["model_memory_mb"].as_f64().expect("model_memory_mb");
        assert_eq!(mb, engine.model.weight_bytes as f64 / 1_048_576.0);
        memory.push(mb);
    }
    assert!(memory.windows(2).all(|w| w[1] < w[0]), "model_memory_mb falls with precision: {memory:?}");
    // mixed (attention int4, MLP int3 by default) lies between int4 and int3.
    let cfg = StreamingConfig::from_json_str(r#"{"quantization": "mixed"}"#).expect("config");
    let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
    let engine = Engine::load(gpu.clone(), &src, options).expect("load");
    let stats = engine.stats_json(&GenerationStats::default());
    assert_eq!(stats["quantization"], "mixed");
    let mixed = stats["model_memory_mb"].as_f64().expect("mb");
    assert!(mixed < memory[3] && mixed > memory[4], "mixed {mixed} between int4 and int3: {memory:?}");
    // Per-kind precisions are honoured: attention int8 and MLP int2.
    let cfg = StreamingConfig::from_json_str(
        r#"{"quantization": "mixed", "attention_precision": "int8", "feedforward_precision": "int2"}"#,
    )
    .expect("config");
    let options = EngineOptions::from_config(&cfg, &gpu.caps, src.config()).expect("options");
    assert_eq!(options.load.mixed, Some((WeightFormat::Int8, WeightFormat::Int2)));
}

#[test]
fn embeddings_stay_at_int8_or_better_unless_the_file_holds_4_bit_blocks() {
    use WeightFormat::{F16, Int4, Int8};
    for (asked, file, want) in [
        (Int4, HostFormat::Q8_0, Int8),
        (Int4, HostFormat::F32, Int8),
        (Int4, HostFormat::Q4_1, Int4),
        (Int4, HostFormat::Q4_0, Int4),
        (Int8, HostFormat::Q4_1, Int8),
        (F16, HostFormat::Q8_0, F16),
    ] {
        assert_eq!(embedding_format(asked, file), want, "{asked:?} from {file:?}");
    }
}

/// The real SmolLM2 file (Q4_1 matrices, Q8_0 embedding): int4 repacks every matrix and
/// keeps the embedding at int8, i.e. the file's exact weights, so its greedy continuations
/// equal the f32 reference's; int8 (Q4_1 re-quantised round-to-nearest) keeps the chat case.
#[test]
fn smollm2_int4_and_int8_keep_the_reference_greedy_continuations() {
    use serde_json::Value;
    use wsi::engine::{Engine, EngineOptions, GenerateParams};
    use wsi::model::llama::LoadOptions;

    let Some(path) = common::require_smollm2() else { return };
    let fx: Value = serde_json::from_str(include_str!("fixtures/golden_smollm2.json")).expect("fixture");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    let src = wsi::model::open_path(&path).expect("open model");
    for format in [WeightFormat::Int4, WeightFormat::Int8] {
        let options =
            EngineOptions { load: LoadOptions { format, context: 256, ..Default::default() }, ..Default::default() };
        let mut e = Engine::load(gpu(), src.as_ref(), options).expect("load");
        let mut cases: Vec<(Vec<u32>, Vec<u32>, Option<u64>)> = Vec::new();
        let chat = &fx["chat"];
        cases.push((ids(&chat["token_ids"]), ids(&chat["greedy_ids"]), chat["eos_index"].as_u64()));
        if format == WeightFormat::Int4 {
            let p = &fx["prompts"][0];
            cases.push((ids(&p["prompt_token_ids"]), ids(&p["greedy_ids"]), p["eos_index"].as_u64()));
        }
        for (prompt, want, eos) in cases {
            let params = GenerateParams { max_tokens: want.len(), ..Default::default() };
            let g = pollster::block_on(e.generate(&prompt, &params, &mut |_| true)).expect("generate");
            let n = eos.map_or(want.len(), |i| i as usize);
            assert_eq!(&g.ids[..], &want[..n], "{format:?}");
        }
    }
}

/// Measurement behind the int3 / int2 group sizes (README, which quotes every 4th layer):
/// relative squared error of the real SmolLM2 matrices of layer 0 per group size and
/// quantiser, with the bits per weight each costs (codes + f16 scale and minimum). The
/// refined quantiser beats round-to-nearest at every size, and groups of 32 beat 64.
/// `--nocapture` prints the table.
#[test]
fn group_size_error_table_for_smollm2() {
    use wsi::model::WeightName;
    use wsi::quant::fit::fit_group;
    let Some(path) = common::require_smollm2() else { return };
    let src = wsi::model::open_path(&path).expect("open model");
    let cfg = src.config().clone();
    let mut mats = Vec::new();
    for l in 0..cfg.n_layers.min(1) {
        for name in [
            WeightName::AttnQ(l),
            WeightName::AttnK(l),
            WeightName::AttnV(l),
            WeightName::AttnOutput(l),
            WeightName::FfnGate(l),
            WeightName::FfnUp(l),
            WeightName::FfnDown(l),
        ] {
            let t = src.tensor(name).expect("tensor").expect("present");
            let cols = t.rows_cols().1;
            mats.push((t.to_f32().expect("f32"), cols));
        }
    }
    for bits in [3u32, 2] {
        let mut by_size = Vec::new();
        for g in [32usize, 64, 128] {
            let mut pair = Vec::new();
            for quantizer in [Quantizer::Rtn, Quantizer::Refined] {
                let (mut err, mut norm) = (0f64, 0f64);
                for (x, cols) in &mats {
                    // Groups of 128 where the width allows (576-wide matrices: 64 instead).
                    let g = if cols % g == 0 { g } else { 64 };
                    for xs in x.chunks(g) {
                        let f = fit_group(xs, bits, quantizer);
                        let d = half::f16::from_bits(f.d).to_f32();
                        let m = half::f16::from_bits(f.m).to_f32();
                        for (v, q) in xs.iter().zip(&f.q) {
                            err += f64::from((*q as f32 * d + m - v).powi(2));
                            norm += f64::from(v * v);
                        }
                    }
                }
                let bpw = f64::from(bits) + 32.0 / g as f64;
                eprintln!(
                    "int{bits} group {g:>3} ({bpw:.2} bits/weight) {quantizer:?}: relative error {:.4}",
                    err / norm
                );
                pair.push(err / norm);
            }
            assert!(pair[1] < pair[0], "int{bits} group {g}: refined {} vs round-to-nearest {}", pair[1], pair[0]);
            by_size.push(pair[1]);
        }
        assert!(by_size[0] < by_size[1], "int{bits}: groups of 32 {} vs 64 {}", by_size[0], by_size[1]);
    }
}

/// Time of the calibration pass on the real model (README; `--ignored --nocapture`): it runs
/// at every int3 / int2 / mixed load.
#[test]
#[ignore]
fn calibration_pass_time_on_smollm2() {
    let Some(path) = common::require_smollm2() else { return };
    let src = wsi::model::open_path(&path).expect("open model");
    let tokens = wsi::quant::calibrate::calibration_tokens(src.as_ref());
    let t0 = std::time::Instant::now();
    let imp = wsi::quant::calibrate::importance(src.as_ref()).expect("calibrate");
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!("calibration: {} tokens, {} layers in {ms:.0} ms", tokens.len(), imp.len());
    assert_eq!(imp.len(), src.config().n_layers);
}

/// Teacher-forced top-1 agreement with fp32 over the golden prompts: the reference greedy
/// continuation (fp32's own, `tests/golden.rs`) is fed in, and each position's argmax is
/// compared with fp32's next id. Returns (same, total), or None without the model.
fn smollm2_top1_agreement(format: WeightFormat) -> Option<(usize, usize)> {
    use serde_json::Value;
    use wsi::engine::{Engine, EngineOptions};
    use wsi::model::llama::LoadOptions;

    let path = common::require_smollm2()?;
    let fx: Value = serde_json::from_str(include_str!("fixtures/golden_smollm2.json")).expect("fixture");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    let src = wsi::model::open_path(&path).expect("open model");
    let options =
        EngineOptions { load: LoadOptions { format, context: 256, ..Default::default() }, ..Default::default() };
    let mut e = Engine::load(gpu(), src.as_ref(), options).expect("load");
    let (mut same, mut total) = (0usize, 0usize);
    for p in fx["prompts"].as_array().expect("prompts") {
        let prompt = ids(&p["prompt_token_ids"]);
        let mut cont = ids(&p["greedy_ids"]);
        cont.truncate(p["eos_index"].as_u64().map_or(cont.len(), |i| i as usize));
        let seq: Vec<u32> = prompt.iter().chain(&cont).copied().collect();
        let top = pollster::block_on(e.top1_each(&seq)).expect("top1");
        // Position prompt.len() - 1 + i predicts cont[i].
        for (i, want) in cont.iter().enumerate() {
            same += usize::from(top[prompt.len() - 1 + i] == *want);
            total += 1;
        }
    }
    eprintln!("{format:?}: top-1 agreement with fp32 {same}/{total} = {:.1}%", 100.0 * same as f64 / total as f64);
    Some((same, total))
}

/// int4 from this Q4_1 file holds the file's exact weights: it agrees everywhere.
#[test]
fn smollm2_int4_top1_agreement_with_fp32_is_measured() {
    let Some((same, total)) = smollm2_top1_agreement(WeightFormat::Int4) else { return };
    assert!(same as f64 >= 0.99 * total as f64, "int4: {same}/{total}");
}

/// int3, quantised at load with its kept columns (the README's figure; 78.4% measured).
#[test]
fn smollm2_int3_top1_agreement_with_fp32_is_measured() {
    let Some((same, total)) = smollm2_top1_agreement(WeightFormat::Int3) else { return };
    assert!(same as f64 >= 0.5 * total as f64, "int3: {same}/{total}");
}

/// A model whose layer matrices are replaced by their CPU-reference quantised values (f32),
/// with the calibrated error weights (`quant::calibrate`) the load uses for int3 / int2.
struct Requantized<'a> {
    inner: &'a dyn wsi::model::ModelSource,
    format: WeightFormat,
    imp: Vec<wsi::quant::calibrate::LayerImportance>,
    /// Kept columns per matrix (`quant::kept`), as the load keeps them.
    kept: usize,
}

impl wsi::model::ModelSource for Requantized<'_> {
    fn config(&self) -> &wsi::model::ModelConfig {
        self.inner.config()
    }
    fn tokenizer(&self) -> wsi::error::Result<wsi::tokenizer::Tokenizer> {
        self.inner.tokenizer()
    }
    fn tensor(&self, name: wsi::model::WeightName) -> wsi::error::Result<Option<HostTensor<'_>>> {
        use wsi::model::WeightName::{Output, TokenEmbd};
        let Some(t) = self.inner.tensor(name)? else { return Ok(None) };
        if t.shape.len() != 2 {
            return Ok(Some(t));
        }
        // The embedding and lm_head take their own format (int8 from an f16 file).
        let format =
            if matches!(name, TokenEmbd | Output) { embedding_format(self.format, t.format) } else { self.format };
        use wsi::model::WeightName::*;
        let imp = match name {
            AttnQ(l) | AttnK(l) | AttnV(l) => Some(&self.imp[l].qkv),
            AttnOutput(l) => Some(&self.imp[l].o),
            FfnGate(l) | FfnUp(l) => Some(&self.imp[l].gate_up),
            FfnDown(l) => Some(&self.imp[l].down),
            _ => None,
        };
        let (x, cols) = (t.to_f32()?, t.shape[1]);
        let q = if matches!(format, WeightFormat::Int3 | WeightFormat::Int2) {
            let imp = imp.map(|v| &v[..]);
            wsi::quant::kept::quantize_dequantize(format, &x, cols, imp, self.kept, Quantizer::Refined)?
        } else {
            quantize_dequantize_weighted(format, &x, imp.map(|v| &v[..]), Quantizer::Refined)?
        };
        let bytes = Cow::Owned(bytemuck::cast_slice(&q).to_vec());
        Ok(Some(HostTensor { name: t.name.clone(), shape: t.shape.clone(), format: HostFormat::F32, bytes }))
    }
}

#[test]
fn int3_and_int2_models_give_the_logits_of_their_cpu_quantised_weights() {
    use wsi::engine::{Engine, EngineOptions};
    use wsi::model::gguf::GgufSource;
    use wsi::model::gguf_write::{TinySpec, tiny_gguf};
    use wsi::model::llama::LoadOptions;
    use wsi::model::{Arch, ModelSource};

    let spec = TinySpec {
        n_layers: 2,
        d_model: 128,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 192,
        vocab: 300,
        context: 64,
        tied: true,
    };
    let src = GgufSource::from_bytes(tiny_gguf(&spec, Arch::Llama, 5, HostFormat::F16).expect("tiny")).expect("parse");
    let ids = [1u32, 17, 42, 99, 7, 250, 3];
    let logits = |s: &dyn ModelSource, format| {
        let options =
            EngineOptions { load: LoadOptions { format, context: 64, ..Default::default() }, ..Default::default() };
        let mut e = Engine::load(gpu(), s, options).expect("load");
        pollster::block_on(e.next_logits(&ids)).expect("logits")
    };
    let kept = wsi::quant::kept::DEFAULT_COLUMNS;
    for format in [WeightFormat::Int3, WeightFormat::Int2] {
        let got = logits(&src, format);
        let imp = wsi::quant::calibrate::importance(&src).expect("calibration");
        let want = logits(&Requantized { inner: &src, format, imp: imp.clone(), kept }, WeightFormat::F32);
        let err = common::max_rel_err(&got, &want, 1.0);
        eprintln!("{format:?}: max rel err {err}");
        assert!(err < 1e-4, "{format:?}: max rel err {err}");
        // Without the kept columns the logits are those of the plain group fit, elsewhere.
        let plain = logits(&Requantized { inner: &src, format, imp, kept: 0 }, WeightFormat::F32);
        let moved = common::max_rel_err(&plain, &want, 1.0);
        assert!(moved > 1e-3, "{format:?}: kept columns change nothing ({moved})");
    }
}
