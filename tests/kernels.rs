//! Every kernel against a CPU reference, on shapes that are not multiples of the
//! workgroup or tile sizes.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, max_rel_err, rand_vec, read_f32, read_u32, run, run_with};
use wsi::gpu::params::{EmbedParams, KvParams, MatParams};
use wsi::gpu::{
    Kernel, KernelKey, Kernels, KvFormat, KvFormats, MATMUL_TILE_ROWS, MatMode, Q8, WeightFormat, decode_row,
    encode_row, matmul_tile,
};
use wsi::model::kv_cache::rope_table;
use wsi::model::reference::rope_head;
use wsi::model::upload::GpuMatrix;
use wsi::model::upload::upload_matrix;
use wsi::model::{ModelConfig, RopeLayout, RopeScaling};
use wsi::quant::fit::Quantizer;
use wsi::quant::gpu_formats::{self, Packed, dequantize, quantize_dequantize};
use wsi::sampling::{SampleSettings, sample_reference};

/// CPU reference of matvec/matmul: y[t, n] (+)= in(t) . W[n] (+ bias).
#[allow(clippy::too_many_arguments)]
fn mat_ref(
    w: &[f32],
    x: &[f32],
    y0: &[f32],
    n: usize,
    k: usize,
    t: usize,
    mode: MatMode,
    norm: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let xs = if mode.swiglu_in { 2 * k } else { k };
    let mut y = y0.to_vec();
    for ti in 0..t {
        let row = &x[ti * xs..(ti + 1) * xs];
        let mut inp: Vec<f32> = if mode.swiglu_in {
            (0..k).map(|i| row[i] / (1.0 + (-row[i]).exp()) * row[k + i]).collect()
        } else {
            row.to_vec()
        };
        if mode.fuse_norm {
            let ss: f32 = inp.iter().map(|v| v * v).sum::<f32>() / k as f32;
            let inv = 1.0 / (ss + 1e-5).sqrt();
            inp = inp.iter().zip(norm).map(|(v, g)| v * inv * g).collect();
        }
        for ni in 0..n {
            let mut v: f32 = w[ni * k..(ni + 1) * k].iter().zip(&inp).map(|(a, b)| a * b).sum();
            if mode.bias {
                v += bias[ni];
            }
            let yi = ti * n + ni;
            y[yi] = if mode.accumulate { y[yi] + v } else { v };
        }
    }
    y
}

fn check_matrix_kernel(tiled: bool, format: WeightFormat, mode: MatMode, n: usize, k: usize, t: usize) {
    // (threads per row group, rows, wide): the wide matvec takes 8 consecutive weights.
    for (tpr, rows, wide) in [(64u32, 4u32, false), (1, 2, false), (8, 3, false), (8, 4, true), (1, 3, true)] {
        if tiled && (tpr == 8 || wide) || wide && !k.is_multiple_of(8) {
            continue;
        }
        check_matrix_variant(tiled, format, mode, n, k, t, tpr, rows, wide, 1);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_matrix_variant(
    tiled: bool,
    format: WeightFormat,
    mode: MatMode,
    n: usize,
    k: usize,
    t: usize,
    tpr: u32,
    rows: u32,
    wide: bool,
    batch: u32,
) {
    let kernels = Kernels::default();
    let (got, want, kernel) =
        matrix_outputs(&kernels, tiled, format, mode, n, k, t, tpr, rows, wide, batch, Entry::Plain);
    let err = max_rel_err(&got[..want.len()], &want, 1.0);
    assert!(err < 1e-4, "{kernel:?} tpr={tpr} rows={rows} n={n} k={k} t={t}: max rel err {err}");
}

/// The matvec entry points beside the plain ones.
#[derive(Clone, Copy)]
enum Entry {
    Plain,
    /// `subgroup` in workgroups of this many threads.
    Subgroup(u32),
    /// The plain entry points in workgroups of this many threads.
    Workgroup(u32),
    /// `q8in` (int4): inputs quantised to int8 per 32.
    Q8in,
    /// `q8in` whose lanes share values by subgroup shuffles.
    Q8inShuffled,
    /// The tiled prefill product on tensor cores (`coop`, 128 threads).
    Coop,
}

/// The GPU's and the CPU reference's outputs of one matrix kernel variant.
#[allow(clippy::too_many_arguments)]
fn matrix_outputs(
    kernels: &Kernels,
    tiled: bool,
    format: WeightFormat,
    mode: MatMode,
    n: usize,
    k: usize,
    t: usize,
    tpr: u32,
    rows: u32,
    wide: bool,
    batch: u32,
    entry: Entry,
) -> (Vec<f32>, Vec<f32>, Kernel) {
    let wg = match entry {
        Entry::Subgroup(wg) | Entry::Workgroup(wg) => wg,
        Entry::Plain | Entry::Q8in | Entry::Q8inShuffled => 64,
        Entry::Coop => 128,
    };
    let gpu = gpu();
    let w = rand_vec(n * k, 1, 0.5);
    let xs = if mode.swiglu_in { 2 * k } else { k };
    let x = rand_vec(t * xs, 2, 1.0);
    let y0 = rand_vec(t * n, 3, 1.0);
    let norm = rand_vec(k, 4, 1.0);
    let bias = rand_vec(n, 5, 1.0);
    let m = upload_matrix(&gpu, "w", &[&w], k, format).expect("upload");
    let params = MatParams {
        n: n as u32,
        k: k as u32,
        x_stride: xs as u32,
        y_stride: n as u32,
        eps: 1e-5,
        last_row: 0,
        y_off: 0,
        head_dim: 0,
    };
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&params));
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&x));
    let yb = gpu.storage_init("y", bytemuck::cast_slice(&y0));
    let nb = gpu.storage_init("norm", bytemuck::cast_slice(&norm));
    let bb = gpu.storage_init("bias", bytemuck::cast_slice(&bias));
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[0u32, t as u32, 0, 0]));
    let format = m.format;
    let (kernel, grid) = if tiled {
        {
            let (tile, rows) = (matmul_tile(tpr > 1) as usize, MATMUL_TILE_ROWS as usize);
            let kernel = match entry {
                Entry::Coop => Kernel::MatmulCoop { format, mode },
                _ => Kernel::Matmul { format, mode, tiled: tpr > 1 },
            };
            (kernel, [n.div_ceil(rows) as u32, t.div_ceil(tile) as u32, 1])
        }
    } else {
        let groups = n.div_ceil((wg / tpr * rows) as usize) as u32;
        let subgroup = matches!(entry, Entry::Subgroup(_) | Entry::Q8inShuffled);
        let q8 = if matches!(entry, Entry::Q8in | Entry::Q8inShuffled) { Q8::In } else { Q8::Off };
        (Kernel::Matvec { format, mode, wide, batch, subgroup, q8 }, [groups, (t as u32).div_ceil(batch), 1])
    };
    let mut bindings = vec![(0, &ub), (3, &xb), (4, &yb), (5, &nb), (6, &bb), (7, &state)];
    bindings.extend(m.bindings());
    run_with(&gpu, kernels, KernelKey { kernel, wg, rows, tpr }, &bindings, grid);
    let got = read_f32(&gpu, &yb);
    // The weights as stored on the GPU (rounded to f16, or quantised and dequantised).
    let wr = stored_weights(&gpu, &m, &w);
    let want = mat_ref(&wr, &x, &y0, n, k, t, mode, &norm, &bias);
    (got, want, kernel)
}

#[test]
fn fp16_native_loads_match_the_packed_prelude_where_the_adapter_has_shader_f16() {
    let gpu = gpu();
    let native = Kernels::default();
    if !native.native_f16(&gpu.device) {
        eprintln!("{}: no shader-f16, only the packed fp16 prelude runs here", gpu.caps.adapter_name);
        return;
    }
    let packed = Kernels::packed_f16_only();
    let mode = MatMode { fuse_norm: true, ..Default::default() };
    for (tiled, n, k, t, tpr, rows, wide) in [
        (false, 37, 52, 1, 64, 4, false),
        (false, 130, 300, 2, 1, 2, false),
        (false, 130, 304, 2, 8, 4, true),
        (true, 70, 88, 45, 64, 4, false),
    ] {
        let (a, want, kernel) =
            matrix_outputs(&native, tiled, WeightFormat::F16, mode, n, k, t, tpr, rows, wide, 1, Entry::Plain);
        let (b, _, _) =
            matrix_outputs(&packed, tiled, WeightFormat::F16, mode, n, k, t, tpr, rows, wide, 1, Entry::Plain);
        // The same f16 values reach the same f32 arithmetic: equal outputs.
        assert_eq!(a, b, "{kernel:?} native vs packed");
        let err = max_rel_err(&a[..want.len()], &want, 1.0);
        assert!(err < 1e-4, "{kernel:?} native f16: max rel err {err}");
    }
}

#[test]
fn tensor_core_matmul_matches_the_cpu_reference_for_every_mode_and_format_where_the_adapter_has_them() {
    let gpu = gpu();
    if !gpu.caps.coop_f16 {
        eprintln!("{}: no f16 cooperative matrices, the tiled matmul serves prefill here", gpu.caps.adapter_name);
        return;
    }
    let kernels = Kernels::default();
    for format in WeightFormat::ALL {
        for mode in modes() {
            // Tokens and rows ragged against the 64 x 64 tile (a second token tile nearly
            // empty), K past one slab of 32 and, for the float formats, not a multiple of it.
            let mut shapes = vec![(70, 96, 45), (130, 320, 66)];
            if !format.has_scales() {
                shapes.push((37, 52, 3));
            }
            for (n, k, t) in shapes {
                let (got, want, kernel) =
                    matrix_outputs(&kernels, true, format, mode, n, k, t, 64, 4, false, 1, Entry::Coop);
                // Inputs and weights pass through f16 (a relative 2^-11 each), sums in f32.
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = max_rel_err(&got[..want.len()], &want, scale);
                assert!(err < 4e-3, "{kernel:?} n={n} k={k} t={t}: max rel err {err}");
            }
        }
    }
}

/// The weights a matrix holds on the GPU, dequantised by the CPU reference of the preludes
/// (`w`: the f32 weights it was uploaded from, for fp32 / fp16).
fn stored_weights(gpu: &wsi::gpu::Gpu, m: &GpuMatrix, w: &[f32]) -> Vec<f32> {
    if !m.format.has_scales() {
        return quantize_dequantize(m.format, w, Quantizer::Rtn).expect("reference weights");
    }
    let s = &m.shards[0];
    let scales = s.scales.as_ref().expect("scales");
    let packed = Packed { words: read_u32(gpu, &s.buf), scales: read_u32(gpu, scales) };
    dequantize(m.format, &packed, w.len()).expect("dequantize")
}

fn modes() -> Vec<MatMode> {
    vec![
        MatMode::default(),
        MatMode { fuse_norm: true, ..Default::default() },
        MatMode { fuse_norm: true, bias: true, ..Default::default() },
        MatMode { accumulate: true, ..Default::default() },
        MatMode { swiglu_in: true, accumulate: true, ..Default::default() },
    ]
}

#[test]
fn matvec_matches_cpu_reference_for_every_mode_and_format() {
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for mode in modes() {
            check_matrix_kernel(false, format, mode, 37, 52, 1);
            check_matrix_kernel(false, format, mode, 130, 300, 2);
        }
    }
}

#[test]
fn batched_matvec_reads_weights_once_for_up_to_four_rows_and_matches_cpu_reference() {
    // Row counts below, at and past a multiple of the batch; cooperative rows only (GPUs).
    // Every mode once (f32, int4), the other formats with the fused norm.
    let norm = MatMode { fuse_norm: true, ..Default::default() };
    let cases = [WeightFormat::F32, WeightFormat::Int4]
        .into_iter()
        .flat_map(|f| modes().into_iter().map(move |m| (f, m)))
        .chain([(WeightFormat::F16, norm), (WeightFormat::Int4Sym, norm), (WeightFormat::Int3, norm)]);
    for (format, mode) in cases {
        for (t, batch) in [(1, 4), (3, 4), (7, 4), (5, 2)] {
            for (tpr, rows, wide) in [(64u32, 4u32, false), (8, 3, false), (8, 4, true)] {
                check_matrix_variant(false, format, mode, 37, 192, t, tpr, rows, wide, batch);
            }
        }
    }
}

#[test]
fn subgroup_matvec_stages_input_tiles_reduces_by_shuffles_and_matches_cpu_reference() {
    let gpu = gpu();
    if !gpu.caps.subgroups {
        eprintln!("{}: no subgroups, the subgroup matvec is not built here", gpu.caps.adapter_name);
        return;
    }
    // Lane groups as wide as the smallest subgroup (lavapipe: 8); k past one 2048-element
    // input tile and ragged against the lanes; rows past the workgroup's.
    let tpr = gpu.caps.subgroup_min_size.min(32);
    let kernels = Kernels::default();
    let cases = [WeightFormat::F32, WeightFormat::Int4]
        .into_iter()
        .flat_map(|f| modes().into_iter().map(move |m| (f, m)))
        .chain(
            [WeightFormat::F16, WeightFormat::Int8, WeightFormat::Int4Sym, WeightFormat::Int3, WeightFormat::Int2].map(
                |f| {
                    let norm = MatMode { fuse_norm: true, ..Default::default() };
                    (f, norm)
                },
            ),
        );
    for (format, mode) in cases {
        for (n, k, t, wg, rows) in [(37, 4160, 2, 4 * tpr, 4), (130, 264, 1, 2 * tpr, 1), (9, 96, 1, tpr, 3)] {
            let (got, want, kernel) =
                matrix_outputs(&kernels, false, format, mode, n, k, t, tpr, rows, true, 1, Entry::Subgroup(wg));
            let err = max_rel_err(&got[..want.len()], &want, 1.0);
            assert!(err < 1e-4, "{kernel:?} tpr={tpr} wg={wg} rows={rows} n={n} k={k} t={t}: max rel err {err}");
        }
    }
}

#[test]
fn int8_input_matvec_stays_within_the_input_grid_of_the_cpu_reference_for_every_mode() {
    // int4 weights; k multiples of 32 (one group, ragged against the lanes, past the lanes of
    // a row group several times, and past the workgroup's 4096-element store twice, the last
    // chunk short); rows ragged against the workgroup's.
    // Int4Sym (Q4_0's layout) with the fused norm.
    // Where a row group fits in the adapter's subgroups, the lanes also share values by
    // shuffles: the same sums in the same order, so the same bits.
    let kernels = Kernels::default();
    let caps = gpu().caps.clone();
    let mut worst = 0f32;
    let mut shuffled = 0;
    let norm = MatMode { fuse_norm: true, ..Default::default() };
    let cases = modes().into_iter().map(|m| (WeightFormat::Int4, m)).chain([(WeightFormat::Int4Sym, norm)]);
    for (format, mode) in cases {
        for (n, k, t, tpr, rows) in
            [(37, 32, 1, 8, 4), (130, 800, 2, 16, 3), (9, 4096, 1, 32, 4), (70, 1536, 1, 64, 1), (6, 8480, 1, 16, 4)]
        {
            let (got, want, kernel) =
                matrix_outputs(&kernels, false, format, mode, n, k, t, tpr, rows, false, 1, Entry::Q8in);
            if caps.subgroups && tpr <= caps.subgroup_min_size {
                let (by_shuffles, _, _) =
                    matrix_outputs(&kernels, false, format, mode, n, k, t, tpr, rows, false, 1, Entry::Q8inShuffled);
                assert_eq!(
                    by_shuffles, got,
                    "{kernel:?} tpr={tpr} rows={rows} n={n} k={k}: shuffles vs workgroup memory"
                );
                shuffled += 1;
            }
            // An int8 grid per 32 inputs: each input is off by up to half a step (its group's
            // largest / 254), ~0.4% RMS for these uniform inputs, so an output is off by
            // ~0.5% of its typical size (1.6% of the largest of 9 outputs at k = 4096 seen);
            // a wrong byte or nibble order would be off by the whole value.
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = max_rel_err(&got[..want.len()], &want, scale);
            assert!(
                err < 4e-2,
                "{kernel:?} tpr={tpr} rows={rows} n={n} k={k} t={t}: error {err} of the largest output"
            );
            worst = worst.max(err);
        }
    }
    assert!(worst > 0.0, "the inputs were quantised");
    eprintln!("{}: {shuffled} cases also by subgroup shuffles", caps.adapter_name);
}

#[test]
fn packed_swiglu_product_feeds_the_down_projection_within_the_input_grid_of_the_cpu_reference() {
    // A decode step's gate/up (`q8pack`: 32 gate and the 32 matching up rows per workgroup,
    // the SwiGLU product packed as int8 per 32) and the down projection reading it (`q8pre`,
    // accumulating into the residual), against the CPU reference of the two matrices in
    // float. d = 4160 takes the gate/up input through the workgroup store in two chunks.
    let kernels = Kernels::default();
    let gpu = gpu();
    for (d, dff) in [(96, 160), (4160, 64)] {
        let norm_mode = MatMode { fuse_norm: true, ..Default::default() };
        let down_mode = MatMode { swiglu_in: true, accumulate: true, ..Default::default() };
        let (gu, dn) = (rand_vec(2 * dff * d, 11, 0.5), rand_vec(d * dff, 12, 0.5));
        let (x, norm, y0) = (rand_vec(d, 13, 1.0), rand_vec(d, 14, 1.0), rand_vec(d, 15, 1.0));
        // The second case in Q4_0's layout (no minimum), as a Q4_0 file loads.
        let format = if d == 96 { WeightFormat::Int4 } else { WeightFormat::Int4Sym };
        let mgu = upload_matrix(&gpu, "gate_up", &[&gu], d, format).expect("upload");
        let mdn = upload_matrix(&gpu, "down", &[&dn], dff, format).expect("upload");
        let params = |n: usize, k: usize, x_stride: usize| MatParams {
            n: n as u32,
            k: k as u32,
            x_stride: x_stride as u32,
            y_stride: n as u32,
            eps: 1e-5,
            last_row: 0,
            y_off: 0,
            head_dim: 0,
        };
        let pu = gpu.uniform_init("p gate_up", bytemuck::bytes_of(&params(2 * dff, d, d)));
        let pd = gpu.uniform_init("p down", bytemuck::bytes_of(&params(d, dff, 2 * dff)));
        let xb = gpu.storage_init("x", bytemuck::cast_slice(&x));
        let nb = gpu.storage_init("norm", bytemuck::cast_slice(&norm));
        let yb = gpu.storage_init("y", bytemuck::cast_slice(&y0));
        let hb = gpu.storage("gate_up out", (2 * dff * 4) as u64);
        let packed = gpu.storage("packed", (dff / 32 * 48) as u64);
        let filler = gpu.storage("filler", 16);
        let state = gpu.storage_init("state", bytemuck::cast_slice(&[0u32, 1, 0, 0]));
        let kernel = |mode, q8| Kernel::Matvec { format, mode, wide: false, batch: 1, subgroup: false, q8 };
        let mut b = vec![(0, &pu), (3, &xb), (4, &hb), (5, &nb), (6, &filler), (7, &state), (10, &packed)];
        b.extend(mgu.bindings());
        let key = KernelKey { kernel: kernel(norm_mode, Q8::Pack), wg: 256, rows: 4, tpr: 16 };
        run_with(&gpu, &kernels, key, &b, [(dff / 32) as u32, 1, 1]);
        let mut b = vec![(0, &pd), (4, &yb), (6, &filler), (7, &state), (11, &packed)];
        b.extend(mdn.bindings());
        let key = KernelKey { kernel: kernel(down_mode, Q8::Packed), wg: 128, rows: 4, tpr: 64 };
        run_with(&gpu, &kernels, key, &b, [d.div_ceil(8) as u32, 1, 1]);
        // Where subgroups hold 32 lanes, the 64-lane row groups reduce by shuffles below 32
        // lanes apart (q8_lanes_subgroup.wgsl): the same bits as the tree.
        if gpu.caps.subgroups && gpu.caps.subgroup_min_size >= 32 {
            let yb2 = gpu.storage_init("y shuffled", bytemuck::cast_slice(&y0));
            let mut b = vec![(0, &pd), (4, &yb2), (6, &filler), (7, &state), (11, &packed)];
            b.extend(mdn.bindings());
            let shuffled =
                Kernel::Matvec { format, mode: down_mode, wide: false, batch: 1, subgroup: true, q8: Q8::Packed };
            let key = KernelKey { kernel: shuffled, wg: 128, rows: 4, tpr: 64 };
            run_with(&gpu, &kernels, key, &b, [d.div_ceil(8) as u32, 1, 1]);
            let (tree, shuffles) = (read_f32(&gpu, &yb), read_f32(&gpu, &yb2));
            assert!(tree.iter().zip(&shuffles).all(|(a, b)| a.to_bits() == b.to_bits()), "d={d}: shuffled sums differ");
            eprintln!("d={d}: q8pre's 64-lane sums by shuffles give the tree's bits");
        }

        let want_h =
            mat_ref(&stored_weights(&gpu, &mgu, &gu), &x, &vec![0.0; 2 * dff], 2 * dff, d, 1, norm_mode, &norm, &[]);
        // Down against the reference fed the GPU's own gate/up rows, so that only the int8
        // grid of the packed product is between them (gate/up's own grid is checked above).
        let got_h = read_f32(&gpu, &hb);
        let want_y = mat_ref(&stored_weights(&gpu, &mdn, &dn), &got_h, &y0, d, dff, 1, down_mode, &[], &[]);
        // Both products see int8 inputs (gate/up its normed input, down the SwiGLU product):
        // within the grid as in the `q8in` test; a wrong row pairing or byte order is off by
        // the whole value.
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, a| m.max(a.abs()));
        let err_h = max_rel_err(&got_h, &want_h, largest(&want_h));
        let delta: Vec<f32> = want_y.iter().zip(&y0).map(|(a, b)| a - b).collect();
        let err_y = max_rel_err(&read_f32(&gpu, &yb), &want_y, largest(&delta));
        assert!(err_h < 4e-2 && err_y < 4e-2, "d={d} d_ff={dff}: gate/up {err_h}, down {err_y} of the largest output");
        assert!(err_y > 0.0, "the product went through int8");
    }
}

#[test]
fn matmul_matches_cpu_reference_on_ragged_tiles() {
    for format in [WeightFormat::F32, WeightFormat::F16] {
        for mode in modes() {
            check_matrix_kernel(true, format, mode, 70, 88, 45);
        }
    }
    check_matrix_kernel(true, WeightFormat::F32, MatMode::default(), 33, 20, 1);
    // Several 64-token tiles, a K that ends mid-slab.
    for mode in modes() {
        check_matrix_kernel(true, WeightFormat::F16, mode, 130, 100, 70);
    }
}

#[test]
fn integer_formats_match_cpu_reference_in_matvec_and_matmul() {
    // Odd N, K a multiple of the 32-weight group; every mode and tpr variant.
    for format in [WeightFormat::Int8, WeightFormat::Int4, WeightFormat::Int4Sym] {
        for mode in modes() {
            check_matrix_kernel(false, format, mode, 37, 96, 1);
            check_matrix_kernel(false, format, mode, 131, 320, 2);
            check_matrix_kernel(true, format, mode, 70, 96, 45);
        }
        check_matrix_kernel(true, format, MatMode::default(), 33, 32, 1);
    }
}

#[test]
fn int3_and_int2_match_cpu_reference_in_matvec_and_matmul() {
    // Odd N, K whole groups (64) but not a multiple of the matmul slab or workgroup.
    for format in [WeightFormat::Int3, WeightFormat::Int2] {
        for mode in modes() {
            check_matrix_kernel(false, format, mode, 37, 192, 1);
            check_matrix_kernel(false, format, mode, 131, 320, 2);
            check_matrix_kernel(true, format, mode, 70, 192, 45);
        }
        check_matrix_kernel(true, format, MatMode::default(), 33, 64, 1);
    }
}

#[test]
fn cpu_matvec_gives_each_thread_up_to_8_whole_rows_in_every_format() {
    // tpr 1 selects the CPU-rasteriser entry point: 1..=8 rows per thread, 32-weight groups,
    // a vec4 tail where k % 32 != 0 (fp32/fp16), rows past n clamped and not stored.
    for (format, k) in [
        (WeightFormat::F32, 300),
        (WeightFormat::F16, 300),
        (WeightFormat::F16, 36),
        (WeightFormat::Int8, 320),
        (WeightFormat::Int4, 320),
        (WeightFormat::Int4Sym, 320),
        (WeightFormat::Int3, 320),
        (WeightFormat::Int2, 320),
    ] {
        for rows in [5, 8] {
            check_matrix_variant(false, format, MatMode::default(), 131, k, 2, 1, rows, false, 1);
        }
        for mode in modes() {
            check_matrix_variant(false, format, mode, 37, k, 1, 1, 7, false, 1);
        }
        // The rasterisers' SIMD widths (`browser::cpu_matvec_workgroup`): 37 rows of 8 leave
        // the second workgroup of 4 threads one live thread.
        for wg in [4, 8] {
            let kernels = Kernels::default();
            let mode = MatMode { fuse_norm: true, ..Default::default() };
            let (got, want, _) =
                matrix_outputs(&kernels, false, format, mode, 37, k, 1, 1, 8, false, 1, Entry::Workgroup(wg));
            let err = max_rel_err(&got[..want.len()], &want, 1.0);
            assert!(err < 1e-4, "{format:?} cpu wg={wg}: max rel err {err}");
        }
    }
}

#[test]
fn integer_formats_fall_back_to_fp16_for_widths_not_a_multiple_of_32() {
    let gpu = gpu();
    for format in [WeightFormat::Int8, WeightFormat::Int4, WeightFormat::Int3, WeightFormat::Int2] {
        let m = upload_matrix(&gpu, "w", &[&rand_vec(37 * 52, 1, 0.5)], 52, format).expect("upload");
        assert_eq!((m.format, m.bytes(), m.shards[0].scales.is_none()), (WeightFormat::F16, 37 * 52 * 2, true));
        check_matrix_kernel(false, format, MatMode { fuse_norm: true, ..Default::default() }, 37, 52, 1);
        check_matrix_kernel(true, format, MatMode::default(), 37, 52, 3);
        let m = upload_matrix(&gpu, "w", &[&rand_vec(37 * 64, 1, 0.5)], 64, format).expect("upload");
        let want = match format {
            WeightFormat::Int8 => 37 * 64 + 37 * 4,
            WeightFormat::Int4 => 37 * 32 + 37 * 2 * 4,
            // int3 / int2 also bind a kept-columns table: here none are kept (no calibrated
            // importance), so it is the count and two words per 32 columns (quant::kept).
            WeightFormat::Int3 => 37 * 24 + 37 * 4 * (64 / gpu_formats::INT3_GROUP) as u64 + 4 * (1 + 2 * 2),
            _ => 37 * 16 + 37 * 4 * (64 / gpu_formats::INT2_GROUP) as u64 + 4 * (1 + 2 * 2),
        };
        assert_eq!((m.format, m.bytes()), (format, want), "bytes include the scale and kept-column buffers");
        // Widths that are whole 32-blocks but not whole int3/int2 groups are stored as int4.
        let m = upload_matrix(&gpu, "w", &[&rand_vec(37 * 96, 1, 0.5)], 96, format).expect("upload");
        let want = if 96 % gpu_formats::group(format) == 0 { format } else { WeightFormat::Int4 };
        assert_eq!(m.format, want, "{format:?} at width 96");
    }
}

#[test]
fn embed_gathers_rows_of_the_ids_on_the_gpu() {
    let gpu = gpu();
    let (vocab, d) = (50, 24);
    let e = rand_vec(vocab * d, 9, 1.0);
    let m = upload_matrix(&gpu, "e", &[&e], d, WeightFormat::F32).expect("upload");
    let ids = [0u32, 7, 49, 3, 999 /* out of range -> row 0 */];
    let ub = gpu.uniform_init(
        "p",
        bytemuck::bytes_of(&EmbedParams { d: d as u32, vocab: vocab as u32, row0: 0, rows: vocab as u32 }),
    );
    let mut tok = vec![0u32; 2];
    tok.extend_from_slice(&ids);
    let tb = gpu.storage_init("tokens", bytemuck::cast_slice(&tok));
    let out = gpu.storage("out", (ids.len() * d * 4) as u64);
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[2u32, ids.len() as u32, 0, 0]));
    run(
        &gpu,
        KernelKey { kernel: Kernel::Embed { format: WeightFormat::F32 }, wg: 64, rows: 1, tpr: 1 },
        &[(0, &ub), (1, &m.shards[0].buf), (3, &tb), (4, &out), (7, &state)],
        [1, ids.len() as u32, 1],
    );
    let got = read_f32(&gpu, &out);
    for (t, &id) in ids.iter().enumerate() {
        let id = if id as usize >= vocab { 0 } else { id as usize };
        assert_eq!(&got[t * d..(t + 1) * d], &e[id * d..(id + 1) * d]);
    }
}

/// The engine's layout for `rows` main rows (and a ring under progressive), one layer
/// of interest among `layers`: the KvParams the kernels get.
#[allow(clippy::too_many_arguments)]
fn kv_params(
    nh: usize,
    nkv: usize,
    hd: usize,
    layers: usize,
    layer: usize,
    f: KvFormats,
    rows: usize,
    sinks: usize,
    window: usize,
    ring: (usize, usize),
    rope_rows: usize,
) -> KvParams {
    let (ring_rows, ring_recent) = ring;
    let ring_words = ring_rows * layers * f.ring.row_words(nkv, hd);
    KvParams {
        n_heads: nh as u32,
        n_kv: nkv as u32,
        hd: hd as u32,
        layer: layer as u32,
        layers: layers as u32,
        scale: 1.0 / (hd as f32).sqrt(),
        sinks: sinks as u32,
        window: window as u32,
        main_rows: rows as u32,
        main_off: ring_words as u32,
        main_row: f.main.row_words(nkv, hd) as u32,
        ring_rows: ring_rows as u32,
        ring_recent: ring_recent as u32,
        ring_row: f.ring.row_words(nkv, hd) as u32,
        rope_rows: rope_rows as u32,
        score_stride: (sinks + window) as u32,
    }
}

/// Words of position `q`'s row in a cache laid out by `p` (main store unless `ring`).
fn row_words(p: &KvParams, f: KvFormats, cache: &[u32], q: usize, ring: bool) -> Vec<f32> {
    let (nkv, hd) = (p.n_kv as usize, p.hd as usize);
    let (base, fmt, n) = if ring {
        let slot = q % p.ring_rows as usize;
        ((slot * p.layers as usize + p.layer as usize) * p.ring_row as usize, f.ring, p.ring_row as usize)
    } else {
        let s = p.sinks as usize;
        let row = if q < s { q } else { s + (q - s) % (p.main_rows as usize - s) };
        (
            p.main_off as usize + (row * p.layers as usize + p.layer as usize) * p.main_row as usize,
            f.main,
            p.main_row as usize,
        )
    };
    decode_row(fmt, &cache[base..base + n], nkv, hd)
}

/// Tolerance of a stored value against the exact one: f16 and int8 round.
fn kv_tolerance(f: KvFormat, amax: f32) -> f32 {
    match f {
        KvFormat::F32 => 1e-5 * amax.max(1.0),
        KvFormat::F16 => 1e-3 * amax.max(1.0),
        KvFormat::Int8 => amax / 127.0 * 0.51 + 1e-6,
    }
}

#[test]
fn rope_kv_rotates_and_appends_in_every_storage_format_and_past_the_table() {
    let gpu = gpu();
    let (nh, nkv, hd, t, layers, layer) = (6usize, 2usize, 16usize, 3usize, 2usize, 1usize);
    let row = (nh + 2 * nkv) * hd;
    // rope_rows 8 with positions 11..14: every position goes through the angle addition;
    // a window ring of 4 sinks + 6 rows maps them onto wrapped rows.
    let (rows, sinks, rope_rows, max_pos, pos0) = (10usize, 4usize, 8usize, 64usize, 11usize);
    let formats = [
        KvFormats::plain(KvFormat::F32),
        KvFormats::plain(KvFormat::F16),
        KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 },
    ];
    for layout in [RopeLayout::Adjacent, RopeLayout::HalfSplit] {
        for f in formats {
            let ring = if f.main == KvFormat::Int8 { (7, 4) } else { (0, 0) };
            let cfg = ModelConfig { head_dim: hd, rope_theta: 10000.0, ..tiny_config() };
            let table = rope_table(&cfg, rope_rows, max_pos);
            let qkv = rand_vec(t * row, 17, 1.0);
            let kp = kv_params(nh, nkv, hd, layers, layer, f, rows, sinks, 3, ring, rope_rows);
            let words = kp.main_off as usize + rows * layers * kp.main_row as usize;
            let ub = gpu.uniform_init("p", bytemuck::bytes_of(&kp));
            let qb = gpu.storage_init("qkv", bytemuck::cast_slice(&qkv));
            let qo = gpu.storage("q", (t * nh * hd * 4) as u64);
            let kc = gpu.storage("k", (words * 4) as u64);
            let vc = gpu.storage("v", (words * 4) as u64);
            let rb = gpu.storage_init("rope", bytemuck::cast_slice(&table));
            let state = gpu.storage_init("state", bytemuck::cast_slice(&[pos0 as u32, t as u32, 0, 0]));
            let kernel = Kernel::RopeKv { adjacent: layout == RopeLayout::Adjacent, kv: f };
            run(
                &gpu,
                KernelKey { kernel, wg: 64, rows: 1, tpr: 1 },
                &[(0, &ub), (1, &qb), (2, &kc), (3, &vc), (4, &qo), (5, &rb), (7, &state)],
                [(nh + 2 * nkv) as u32, t as u32, 1],
            );
            let (gq, gk, gv) = (read_f32(&gpu, &qo), read_u32(&gpu, &kc), read_u32(&gpu, &vc));
            // Under progressive the new positions land in the ring at its (f16) format.
            let (in_ring, fmt) = if ring.0 > 0 { (true, f.ring) } else { (false, f.main) };
            for ti in 0..t {
                let pos = pos0 + ti;
                let src = &qkv[ti * row..(ti + 1) * row];
                let (k_got, v_got) = (row_words(&kp, f, &gk, pos, in_ring), row_words(&kp, f, &gv, pos, in_ring));
                for h in 0..nh + nkv {
                    let mut head = src[h * hd..(h + 1) * hd].to_vec();
                    rope_head(&mut head, pos, 10000.0, RopeScaling::None, layout);
                    if h < nh {
                        let got = &gq[ti * nh * hd + h * hd..][..hd];
                        assert!(
                            max_rel_err(got, &head, 1.0) < 1e-5,
                            "{layout:?} q head {h} pos {pos} {got:?} {head:?}"
                        );
                        continue;
                    }
                    let kh = h - nh;
                    let amax = head.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let err = k_got[kh * hd..][..hd].iter().zip(&head).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err <= kv_tolerance(fmt, amax), "{layout:?} {f:?} k head {kh} pos {pos}: err {err}");
                    let v = &src[(nh + nkv + kh) * hd..][..hd];
                    let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                    let err = v_got[kh * hd..][..hd].iter().zip(v).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err <= kv_tolerance(fmt, amax), "{layout:?} {f:?} v head {kh} pos {pos}: err {err}");
                }
            }
        }
    }
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: wsi::model::Arch::Llama,
        name: String::new(),
        n_layers: 1,
        d_model: 16,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 16,
        d_ff: 16,
        vocab_size: 16,
        context_length: 64,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        rope_layout: RopeLayout::Adjacent,
        tied_embeddings: true,
        qkv_bias: false,
    }
}

#[test]
fn kv_requant_moves_the_position_leaving_the_ring_to_int8() {
    let gpu = gpu();
    let (nkv, hd, layers, layer, t) = (2usize, 32usize, 3usize, 2usize, 4usize);
    let f = KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 };
    let (ring_rows, recent, rows, sinks) = (9usize, 5usize, 12usize, 2usize);
    let kp = kv_params(4, nkv, hd, layers, layer, f, rows, sinks, 6, (ring_rows, recent), 64);
    let words = kp.main_off as usize + rows * layers * kp.main_row as usize;
    // Ring rows hold known values (positions pos0 - recent .. pos0 + t - recent).
    let pos0 = 20usize;
    let mut k = vec![0u32; words];
    let mut v = vec![0u32; words];
    let mut want = Vec::new();
    for q in pos0 - recent..pos0 + t - recent {
        let (kv_k, kv_v) = (rand_vec(nkv * hd, q as u64, 2.0), rand_vec(nkv * hd, 100 + q as u64, 0.5));
        let base = ((q % ring_rows) * layers + layer) * kp.ring_row as usize;
        k[base..base + kp.ring_row as usize].copy_from_slice(&encode_row(f.ring, &kv_k, nkv, hd));
        v[base..base + kp.ring_row as usize].copy_from_slice(&encode_row(f.ring, &kv_v, nkv, hd));
        want.push((q, decode_row(f.ring, &encode_row(f.ring, &kv_k, nkv, hd), nkv, hd), kv_v));
    }
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&kp));
    let kc = gpu.storage_init("k", bytemuck::cast_slice(&k));
    let vc = gpu.storage_init("v", bytemuck::cast_slice(&v));
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[pos0 as u32, t as u32, 0, 0]));
    run(
        &gpu,
        KernelKey { kernel: Kernel::KvRequant { kv: f }, wg: 64, rows: 1, tpr: 1 },
        &[(0, &ub), (2, &kc), (3, &vc), (7, &state)],
        [2 * nkv as u32, t as u32, 1],
    );
    let (gk, gv) = (read_u32(&gpu, &kc), read_u32(&gpu, &vc));
    for (q, kx, vx) in want {
        let vx = decode_row(f.ring, &encode_row(f.ring, &vx, nkv, hd), nkv, hd);
        for (got, exact) in [(row_words(&kp, f, &gk, q, false), &kx), (row_words(&kp, f, &gv, q, false), &vx)] {
            for h in 0..nkv {
                let amax = exact[h * hd..][..hd].iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let err = got[h * hd..][..hd]
                    .iter()
                    .zip(&exact[h * hd..][..hd])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err <= kv_tolerance(KvFormat::Int8, amax), "position {q} head {h}: err {err}");
            }
        }
        // Its ring row is left alone (a rolled-back pass may still need it).
        assert_eq!(row_words(&kp, f, &gk, q, true), kx);
    }
}

#[test]
fn attention_matches_cpu_reference_with_gqa_and_causal_mask() {
    for (wg, hd, split) in
        [(64u32, 16usize, 1u32), (128, 64, 1), (32, 128, 1), (64, 64, 7), (128, 64, 16), (256, 128, 4)]
    {
        check_attention(wg, hd, split, KvFormats::plain(KvFormat::F32), None);
    }
}

/// A context longer than 1024 keys, in one workgroup per head and split in two.
#[test]
fn attention_over_more_than_1024_keys_matches_cpu_reference() {
    for split in [1u32, 2] {
        check_attention_at(64, 16, split, KvFormats::plain(KvFormat::F16), None, 1100);
    }
}

#[test]
fn attention_reads_every_storage_format_window_and_ring() {
    let progressive = KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 };
    for (f, window) in [
        (KvFormats::plain(KvFormat::F16), None),
        (KvFormats::plain(KvFormat::Int8), None),
        (KvFormats::plain(KvFormat::F16), Some((4usize, 100usize))),
        (progressive, Some((4, 100))),
        (KvFormats { main: KvFormat::Int8, ring: KvFormat::F32 }, Some((3, 150))),
    ] {
        for split in [1u32, 5] {
            check_attention(64, 64, split, f, window);
        }
    }
}

/// CPU reference of one head's attention in f64: softmax over `keys` of q . K[j] * scale,
/// applied to V[j], with K/V head `kvh` of each position's stored (K, V).
fn attend_ref(q: &[f32], keys: &[usize], stored: &[(Vec<f32>, Vec<f32>)], kvh: usize, scale: f64) -> Vec<f32> {
    let hd = q.len();
    let s: Vec<f64> = keys
        .iter()
        .map(|&j| q.iter().zip(&stored[j].0[kvh * hd..][..hd]).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale)
        .collect();
    let mx = s.iter().copied().fold(f64::MIN, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
    let z: f64 = e.iter().sum();
    (0..hd)
        .map(|dd| {
            let acc: f64 = keys.iter().zip(&e).map(|(&j, e)| e * stored[j].1[kvh * hd + dd] as f64).sum();
            (acc / z) as f32
        })
        .collect()
}

/// Cache words (K, V) holding random K/V rows for positions 0..n of layer `layer` (of
/// `layers`, `rows` main rows after `sinks` sinks) in `f`, positions newer than
/// `latest - ring.1` in the ring of `ring.0` rows when there is one; oldest first, so that
/// ring rows end up holding the newest positions. Also each position's (K, V) as stored.
#[allow(clippy::type_complexity)]
fn fill_cache(
    kp: &KvParams,
    f: KvFormats,
    (layers, layer, rows, sinks): (usize, usize, usize, usize),
    ring: (usize, usize),
    n: usize,
    latest: usize,
) -> (Vec<u32>, Vec<u32>, Vec<(Vec<f32>, Vec<f32>)>) {
    let (nkv, hd) = (kp.n_kv as usize, kp.hd as usize);
    let kv_row = nkv * hd;
    let words = kp.main_off as usize + rows * layers * kp.main_row as usize;
    let (mut kw, mut vw) = (vec![0u32; words], vec![0u32; words]);
    let mut stored: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for pos in 0..n {
        let (k, v) = (rand_vec(kv_row, 1000 + pos as u64, 1.0), rand_vec(kv_row, 5000 + pos as u64, 1.0));
        let in_ring = ring.0 > 0 && pos + ring.1 > latest;
        let (base, fmt, len) = if in_ring {
            ((((pos % ring.0) * layers) + layer) * kp.ring_row as usize, f.ring, kp.ring_row as usize)
        } else {
            let r = if pos < sinks { pos } else { sinks + (pos - sinks) % (rows - sinks) };
            (kp.main_off as usize + (r * layers + layer) * kp.main_row as usize, f.main, kp.main_row as usize)
        };
        let (ek, ev) = (encode_row(fmt, &k, nkv, hd), encode_row(fmt, &v, nkv, hd));
        kw[base..base + len].copy_from_slice(&ek);
        vw[base..base + len].copy_from_slice(&ev);
        stored.push((decode_row(fmt, &ek, nkv, hd), decode_row(fmt, &ev, nkv, hd)));
    }
    (kw, vw, stored)
}

/// Positions 0..=pos0+t-1 with random K/V, stored in `f` (sinks + window ring when
/// `window`, a 40-position ring of recent rows at f.ring when the formats differ); the
/// GPU's attention against the CPU's over the decoded stored values.
fn check_attention(wg: u32, hd: usize, split: u32, f: KvFormats, window: Option<(usize, usize)>) {
    check_attention_at(wg, hd, split, f, window, 190);
}

/// `check_attention` with the chunk's first position `pos0`.
fn check_attention_at(wg: u32, hd: usize, split: u32, f: KvFormats, window: Option<(usize, usize)>, pos0: usize) {
    let gpu = gpu();
    let (nh, nkv, t, layers, layer) = (6usize, 2usize, 5usize, 2usize, 1usize);
    let (sinks, win, rows) = match window {
        Some((s, w)) => (s, w, s + w + t + 3),
        None => (0, pos0 + 110, pos0 + 110),
    };
    let ring = if f.ring != f.main { (40 + t, 40) } else { (0, 0) };
    let kp = kv_params(nh, nkv, hd, layers, layer, f, rows, sinks, win, ring, 64);
    let latest = pos0 + t - 1;
    let q = rand_vec(t * nh * hd, 21, 1.0);
    let (kw, vw, stored) = fill_cache(&kp, f, (layers, layer, rows, sinks), ring, latest + 1, latest);
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&kp));
    let qb = gpu.storage_init("q", bytemuck::cast_slice(&q));
    let kb = gpu.storage_init("k", bytemuck::cast_slice(&kw));
    let vb = gpu.storage_init("v", bytemuck::cast_slice(&vw));
    let out = gpu.storage("out", (t * nh * hd * 4) as u64);
    let scores = gpu.storage("scores", (t * nh * (sinks + win) * 4) as u64);
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[pos0 as u32, t as u32, 0, 0]));
    let partial = gpu.storage("partial", (t * nh * split as usize * (hd + 4) * 4) as u64);
    run(
        &gpu,
        KernelKey { kernel: Kernel::Attention { split, kv: f }, wg, rows: 1, tpr: 1 },
        &[(0, &ub), (1, &qb), (2, &kb), (3, &vb), (4, &out), (5, &scores), (6, &partial), (7, &state)],
        [nh as u32, t as u32, split],
    );
    if split > 1 {
        run(
            &gpu,
            KernelKey { kernel: Kernel::AttentionCombine { split, pack: false }, wg, rows: 1, tpr: 1 },
            &[(0, &ub), (4, &out), (6, &partial), (7, &state)],
            [nh as u32, t as u32, 1],
        );
    }
    let got = read_f32(&gpu, &out);
    let mut want = vec![0.0f32; t * nh * hd];
    let scale = kp.scale as f64;
    for ti in 0..t {
        let p = pos0 + ti;
        let keys: Vec<usize> = (0..=p).filter(|&j| j < sinks || p - j < win).collect();
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qh = &q[ti * nh * hd + h * hd..][..hd];
            want[ti * nh * hd + h * hd..][..hd].copy_from_slice(&attend_ref(qh, &keys, &stored, kvh, scale));
        }
    }
    let err = max_rel_err(&got, &want, 0.1);
    assert!(err < 1e-4, "attention wg={wg} hd={hd} split={split} {f:?} {window:?}: max rel err {err}");
}

#[test]
fn fused_decode_attention_rotates_appends_and_attends_in_every_format_with_gqa() {
    let (f16, int8) = (KvFormats::plain(KvFormat::F16), KvFormats::plain(KvFormat::Int8));
    let progressive = KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 };
    let (adj, half) = (RopeLayout::Adjacent, RopeLayout::HalfSplit);
    // Workgroups of 64, and of 256 (GPUs' default, `EngineOptions`): 16 threads per
    // dimension group in the V phase, most of them past the keys of a short split. Lanes:
    // threads per key in the score phase (the new key's too), over passes of WG / lanes keys.
    for (f, window, split, pos0, layout, (wg, lanes)) in [
        (f16, None, 1u32, 190usize, adj, (64u32, 1u32)),
        (f16, None, 1, 190, half, (256, 4)),
        (int8, None, 5, 190, half, (64, 1)),
        (int8, None, 5, 190, adj, (256, 8)),
        // 10 keys over 8 splits of 2: the fifth holds the new key, the last three none.
        (KvFormats::plain(KvFormat::F32), None, 8, 9, adj, (64, 1)),
        (KvFormats::plain(KvFormat::F32), None, 8, 9, adj, (256, 4)),
        (f16, Some((4usize, 100usize)), 5, 190, half, (64, 4)),
        (progressive, Some((4, 100)), 1, 190, adj, (64, 1)),
        (progressive, Some((4, 100)), 7, 190, half, (256, 2)),
        (int8, Some((3, 150)), 3, 2, adj, (64, 16)),
    ] {
        check_decode_attention(split, f, window, pos0, layout, wg, lanes, 64);
    }
    // Heads of 32 (8 lanes: the subgroup kernel runs on lavapipe's 8-lane subgroups too).
    let mut subgroup_runs = 0;
    for (f, window, split, pos0, layout, wg) in [
        (f16, None, 1u32, 190usize, adj, 256u32),
        (int8, None, 5, 190, half, 64),
        (KvFormats::plain(KvFormat::F32), None, 8, 9, adj, 256),
        (progressive, Some((4usize, 100usize)), 7, 190, half, 256),
        (int8, Some((3, 150)), 3, 2, adj, 64),
    ] {
        subgroup_runs += usize::from(check_decode_attention(split, f, window, pos0, layout, wg, 2, 32));
    }
    let caps = &gpu().caps;
    if caps.subgroups && caps.subgroup_min_size >= 8 {
        assert_eq!(subgroup_runs, 5, "the subgroup kernel ran in every case with 8-lane heads");
    }
    // Heads of 128, the engine's case (32 lanes: GPUs whose subgroups hold 32).
    for (f, split, layout, wg) in [(f16, 4u32, half, 512u32), (int8, 1, adj, 256), (progressive, 3, adj, 512)] {
        let window = if f == progressive { Some((4, 100)) } else { None };
        let ran = check_decode_attention(split, f, window, 190, layout, wg, 4, 128);
        assert_eq!(ran, caps.subgroups && caps.subgroup_min_size >= 32);
    }
}

/// Row `row` of a packed attention output (`[rows, n / 32, 3]` vec4<u32>: code words, then
/// (d, sum)) against the floats `x` of that row: d = max|x| / 127 per group of 32, each code
/// within half a step of x / d at its place in the `q8pre` layout (byte j of word 2i holds
/// element 8i + 2j, of word 2i + 1 element 8i + 2j + 1), the sum exact; other rows stay zero.
fn check_packed_row(words: &[u32], x_rows: &[f32], row: usize, case: &str) {
    let groups = words.len() / 12 / 2;
    let x = &x_rows[row * groups * 32..][..groups * 32];
    for (r, chunk) in words.chunks(groups * 12).enumerate() {
        if r != row {
            assert!(chunk.iter().all(|&w| w == 0), "{case}: row {r} of the packed output was written");
            continue;
        }
        for (g, w) in chunk.chunks(12).enumerate() {
            let xg = &x[g * 32..][..32];
            let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let (d, sum) = (f32::from_bits(w[8]), f32::from_bits(w[9]));
            assert!((d - amax / 127.0).abs() <= 1e-6 * amax, "{case}: group {g}: d {d}, max {amax}");
            let exact: f32 = xg.iter().sum();
            assert!((sum - exact).abs() <= 1e-5 * (amax * 32.0).max(1e-6), "{case}: group {g}: sum {sum} vs {exact}");
            for (wi, word) in w[..8].iter().enumerate() {
                for (j, byte) in word.to_le_bytes().into_iter().enumerate() {
                    let e = 8 * (wi / 2) + 2 * j + wi % 2;
                    let got = f32::from(byte as i8) * d;
                    assert!((got - xg[e]).abs() <= 0.5 * d * 1.001 + 1e-7, "{case}: group {g} element {e}");
                }
            }
        }
    }
}

/// Positions 0..pos0 with random K/V stored in `f` (as in [`check_attention`]) and a lane
/// at activation row 1 decoding position pos0 from random QKV activations: the fused kernel
/// writes pos0's row (rotated K, V) in the cache's format and nothing else, and its output
/// equals the CPU's attention of the rotated query over the cache as read back afterwards
/// (so the new key is used as stored) and the unfused rope_kv + attention path's.
/// Where a head's hd / 4 lanes fit in the adapter's smallest subgroup, the subgroup kernel
/// (`head_lanes`, plain and merging, packing or not) writes the same caches bit for bit and
/// the same output within 1e-4; returns whether it ran.
#[allow(clippy::too_many_arguments)]
fn check_decode_attention(
    split: u32,
    f: KvFormats,
    window: Option<(usize, usize)>,
    pos0: usize,
    layout: RopeLayout,
    wg: u32,
    lanes: u32,
    hd: usize,
) -> bool {
    let gpu = gpu();
    let (nh, nkv, layers, layer) = (6usize, 2usize, 2usize, 1usize);
    let (qkv_row, rope_rows) = ((nh + 2 * nkv) * hd, 64usize);
    let (sinks, win, rows) = match window {
        Some((s, w)) => (s, w, s + w + 4),
        None => (0, 300, 300),
    };
    let ring = if f.ring != f.main { (41, 40) } else { (0, 0) };
    let kp = kv_params(nh, nkv, hd, layers, layer, f, rows, sinks, win, ring, rope_rows);
    let (kw, vw, mut stored) = fill_cache(&kp, f, (layers, layer, rows, sinks), ring, pos0, pos0);
    let cfg = ModelConfig { head_dim: hd, n_heads: nh, n_kv_heads: nkv, rope_layout: layout, ..tiny_config() };
    let table = rope_table(&cfg, rope_rows, 256);
    let qkv = rand_vec(2 * qkv_row, 33 + pos0 as u64, 1.0);
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&kp));
    let qkv_b = gpu.storage_init("qkv", bytemuck::cast_slice(&qkv));
    let rope_b = gpu.storage_init("rope", bytemuck::cast_slice(&table));
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[pos0 as u32, 1, 1, 0]));
    let scores = gpu.storage("scores", (2 * nh * (sinks + win) * 4) as u64);
    let partial = gpu.storage("partial", (2 * nh * split as usize * (hd + 4) * 4) as u64);
    let key = |kernel| KernelKey { kernel, wg, rows: 1, tpr: 1 };
    // The packed output (`pack`): 2 rows of nh * hd / 32 groups of 3 vec4<u32>.
    let packed = gpu.storage("packed", (2 * nh * hd / 32 * 48) as u64);
    let combine = |out: &wgpu::Buffer, pack: bool| {
        if split > 1 {
            let mut bindings = vec![(0, &ub), (4, out), (6, &partial), (7, &state)];
            if pack {
                bindings.push((10, &packed));
            }
            run(&gpu, key(Kernel::AttentionCombine { split, pack }), &bindings, [nh as u32, 1, 1]);
        }
    };
    let adjacent = layout == RopeLayout::Adjacent;
    // Fused, then fused packing its output for the o projection (at split 1 the decode kernel
    // packs, otherwise the combine).
    let fused = |pack: bool| {
        let (kb, vb) =
            (gpu.storage_init("k", bytemuck::cast_slice(&kw)), gpu.storage_init("v", bytemuck::cast_slice(&vw)));
        let out = gpu.storage("out", (2 * nh * hd * 4) as u64);
        let mut bindings =
            vec![(0, &ub), (2, &kb), (3, &vb), (4, &out), (5, &scores), (6, &partial), (7, &state), (8, &qkv_b)];
        bindings.push((9, &rope_b));
        if pack && split == 1 {
            bindings.push((10, &packed));
        }
        let kernel =
            Kernel::AttentionDecode { split, adjacent, kv: f, pack: pack && split == 1, merge: false, head_lanes: 0 };
        run(&gpu, KernelKey { tpr: lanes, ..key(kernel) }, &bindings, [nh as u32, 1, split]);
        combine(&out, pack);
        (read_f32(&gpu, &out), read_u32(&gpu, &kb), read_u32(&gpu, &vb))
    };
    let (got, gk, gv) = fused(false);
    let (got_p, gk_p, gv_p) = fused(true);
    let packed_words = read_u32(&gpu, &packed);
    // The same step with each head's last split merging (`decode_merge`, packing too),
    // dispatched twice over one counter buffer: both give the combine's output bit for bit,
    // so the counters count every split and are zero again after each dispatch (at split 1,
    // where there is nothing to merge, the plain kernel's output and packing).
    let done = gpu.storage("split done", (2 * nh * 4) as u64);
    for pack in [false, true] {
        let kernel = Kernel::AttentionDecode { split, adjacent, kv: f, pack, merge: true, head_lanes: 0 };
        for round in 0..2 {
            let (kb, vb) =
                (gpu.storage_init("k", bytemuck::cast_slice(&kw)), gpu.storage_init("v", bytemuck::cast_slice(&vw)));
            let out = gpu.storage("out", (2 * nh * hd * 4) as u64);
            let packed_m = gpu.storage("packed", (2 * nh * hd / 32 * 48) as u64);
            let mut bindings = vec![(0, &ub), (2, &kb), (3, &vb), (4, &out), (5, &scores), (6, &partial)];
            bindings.extend([(7, &state), (8, &qkv_b), (9, &rope_b), (11, &done)]);
            if pack {
                bindings.push((10, &packed_m));
            }
            run(&gpu, KernelKey { tpr: lanes, ..key(kernel) }, &bindings, [nh as u32, 1, split]);
            let case = format!("split={split} {f:?} pos={pos0} wg={wg} merge pack={pack} round {round}");
            assert_eq!(read_f32(&gpu, &out), got, "{case}: output differs from the combine's");
            assert_eq!((read_u32(&gpu, &kb), read_u32(&gpu, &vb)), (gk.clone(), gv.clone()), "{case}: caches");
            if pack {
                assert_eq!(read_u32(&gpu, &packed_m), packed_words, "{case}: packed output");
            }
            assert!(read_u32(&gpu, &done).iter().all(|&c| c == 0), "{case}: counters left non-zero");
        }
    }
    // The subgroup kernel: no scores scratch (binding 5).
    let head_lanes = (hd / 4) as u32;
    let subgroups = gpu.caps.subgroups && gpu.caps.subgroup_min_size >= head_lanes;
    for (merge, pack) in [(false, false), (false, true), (true, false), (true, true)] {
        if !subgroups {
            break;
        }
        let (kb, vb) =
            (gpu.storage_init("k", bytemuck::cast_slice(&kw)), gpu.storage_init("v", bytemuck::cast_slice(&vw)));
        let out = gpu.storage("out", (2 * nh * hd * 4) as u64);
        let packed_s = gpu.storage("packed", (2 * nh * hd / 32 * 48) as u64);
        let mut bindings = vec![(0, &ub), (2, &kb), (3, &vb), (4, &out), (6, &partial), (7, &state)];
        bindings.extend([(8, &qkv_b), (9, &rope_b)]);
        let kernel_packs = pack && (merge || split == 1);
        if kernel_packs {
            bindings.push((10, &packed_s));
        }
        if merge {
            bindings.push((11, &done));
        }
        let kernel = Kernel::AttentionDecode { split, adjacent, kv: f, pack: kernel_packs, merge, head_lanes };
        run(&gpu, key(kernel), &bindings, [nh as u32, 1, split]);
        if !merge && split > 1 {
            let mut bindings = vec![(0, &ub), (4, &out), (6, &partial), (7, &state)];
            if pack {
                bindings.push((10, &packed_s));
            }
            run(&gpu, key(Kernel::AttentionCombine { split, pack }), &bindings, [nh as u32, 1, 1]);
        }
        let case =
            format!("subgroups split={split} {f:?} {window:?} pos={pos0} wg={wg} hd={hd} merge={merge} pack={pack}");
        let sg_out = read_f32(&gpu, &out);
        let err = max_rel_err(&sg_out, &got, 0.1);
        assert!(err < 1e-4, "{case}: max rel err {err} against the workgroup-memory kernel");
        assert_eq!((read_u32(&gpu, &kb), read_u32(&gpu, &vb)), (gk.clone(), gv.clone()), "{case}: caches");
        if pack {
            check_packed_row(&read_u32(&gpu, &packed_s), &sg_out, 1, &case);
        }
        assert!(read_u32(&gpu, &done).iter().all(|&c| c == 0), "{case}: counters left non-zero");
    }
    // Unfused: rope_kv then attention over the rotated query.
    let (kb2, vb2) =
        (gpu.storage_init("k", bytemuck::cast_slice(&kw)), gpu.storage_init("v", bytemuck::cast_slice(&vw)));
    let (q_rot, out2) = (gpu.storage("q", (2 * nh * hd * 4) as u64), gpu.storage("out", (2 * nh * hd * 4) as u64));
    let bindings = [(0, &ub), (1, &qkv_b), (2, &kb2), (3, &vb2), (4, &q_rot), (5, &rope_b), (7, &state)];
    run(&gpu, key(Kernel::RopeKv { adjacent, kv: f }), &bindings, [(nh + 2 * nkv) as u32, 1, 1]);
    run(
        &gpu,
        key(Kernel::Attention { split, kv: f }),
        &[(0, &ub), (1, &q_rot), (2, &kb2), (3, &vb2), (4, &out2), (5, &scores), (6, &partial), (7, &state)],
        [nh as u32, 1, split],
    );
    combine(&out2, false);
    let unfused = read_f32(&gpu, &out2);
    let case = format!("split={split} {f:?} {window:?} pos={pos0} {layout:?} wg={wg} lanes={lanes}");
    assert_eq!((&gk, &gv), (&read_u32(&gpu, &kb2), &read_u32(&gpu, &vb2)), "{case}: caches differ from rope_kv's");
    // The two kernels sum in different orders: within 1e-5 on lavapipe, 2.2e-5 on the H200
    // (split 1, f16 caches, position 190), with the caches equal bit for bit.
    let err = max_rel_err(&got, &unfused, 0.1);
    assert!(err < 1e-4, "{case}: fused vs unfused max rel err {err}");
    assert_eq!((&gk_p, &gv_p), (&gk, &gv), "{case}: packing changed the caches");
    assert!(max_rel_err(&got_p, &got, 0.1) < 1e-6, "{case}: packing changed the float output");
    check_packed_row(&packed_words, &got, 1, &case);

    // The new row: rotated K and V of row 1 in the write format; every other word unchanged.
    let src = &qkv[qkv_row..];
    let in_ring = ring.0 > 0;
    let (wfmt, wbase, wn) = if in_ring {
        (f.ring, ((pos0 % ring.0) * layers + layer) * kp.ring_row as usize, kp.ring_row as usize)
    } else {
        let r = if pos0 < sinks { pos0 } else { sinks + (pos0 - sinks) % (rows - sinks) };
        (f.main, kp.main_off as usize + (r * layers + layer) * kp.main_row as usize, kp.main_row as usize)
    };
    for (cache, before) in [(&gk, &kw), (&gv, &vw)] {
        assert_eq!(cache[..wbase], before[..wbase], "{case}: words before the new row");
        assert_eq!(cache[wbase + wn..], before[wbase + wn..], "{case}: words after the new row");
    }
    let (new_k, new_v) =
        (decode_row(wfmt, &gk[wbase..wbase + wn], nkv, hd), decode_row(wfmt, &gv[wbase..wbase + wn], nkv, hd));
    for kh in 0..nkv {
        let mut k = src[(nh + kh) * hd..][..hd].to_vec();
        rope_head(&mut k, pos0, 10000.0, RopeScaling::None, layout);
        let v = &src[(nh + nkv + kh) * hd..][..hd];
        for (got, exact, what) in [(&new_k[kh * hd..][..hd], &k[..], "k"), (&new_v[kh * hd..][..hd], v, "v")] {
            let amax = exact.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let err = got.iter().zip(exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= kv_tolerance(wfmt, amax), "{case}: {what} head {kh}: err {err}");
        }
    }
    stored.push((new_k, new_v));

    let scale = kp.scale as f64;
    let keys: Vec<usize> = (0..=pos0).filter(|&j| j < sinks || pos0 - j < win).collect();
    let mut want = vec![0.0f32; nh * hd];
    for h in 0..nh {
        let kvh = h / (nh / nkv);
        let mut qh = src[h * hd..][..hd].to_vec();
        rope_head(&mut qh, pos0, 10000.0, RopeScaling::None, layout);
        want[h * hd..][..hd].copy_from_slice(&attend_ref(&qh, &keys, &stored, kvh, scale));
    }
    let err = max_rel_err(&got[nh * hd..], &want, 0.1);
    assert!(err < 1e-4, "{case}: max rel err {err} against the CPU");
    subgroups
}

fn gpu_sample(logits: &[f32], history: &[u32], s: &SampleSettings) -> (u32, Vec<u32>) {
    let gpu = gpu();
    let vocab = logits.len() as u32;
    let p = s.to_params(vocab, false);
    let ub = gpu.uniform_init("p", bytemuck::bytes_of(&p));
    let lb = gpu.storage_init("logits", bytemuck::cast_slice(logits));
    let mut toks = history.to_vec();
    toks.extend([0u32; 4]);
    let tb = gpu.storage_init("tokens", bytemuck::cast_slice(&toks));
    // The sampler writes at pos + n_tokens = history.len().
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[history.len() as u32 - 1, 1, 0, 0]));
    run(
        &gpu,
        KernelKey { kernel: Kernel::Sample, wg: 256, rows: 1, tpr: 1 },
        &[(0, &ub), (1, &lb), (2, &tb), (3, &state)],
        [1, 1, 1],
    );
    let toks = read_u32(&gpu, &tb);
    (toks[history.len()], read_u32(&gpu, &state))
}

#[test]
fn gpu_sampler_matches_cpu_reference_and_advances_the_state() {
    let vocab = 5003;
    let logits: Vec<f32> = rand_vec(vocab, 31, 4.0);
    let history: Vec<u32> = vec![5, 17, 17, 4000, 12, 5];
    let cases = [
        SampleSettings::greedy(),
        SampleSettings { repetition_penalty: 1.5, ..SampleSettings::greedy() },
        SampleSettings { temperature: 0.7, top_p: 0.9, seed: 1, ..Default::default() },
        SampleSettings { temperature: 1.0, top_k: 40, seed: 2, ..Default::default() },
        SampleSettings {
            temperature: 1.3,
            top_k: 50,
            top_p: 0.8,
            repetition_penalty: 1.2,
            seed: 3,
            ..Default::default()
        },
    ];
    let mut agree = 0;
    let mut total = 0;
    for s in &cases {
        for seed_off in 0..6u64 {
            let s = SampleSettings { seed: s.seed + seed_off * 1000, ..s.clone() };
            let want = sample_reference(&mut logits.clone(), &history, &s);
            let (got, state) = gpu_sample(&logits, &history, &s);
            assert_eq!(state[0], history.len() as u32, "state.pos advanced to the written index");
            assert_eq!(state[1], 1);
            total += 1;
            if got == want {
                agree += 1;
            }
            if s.temperature == 0.0 {
                assert_eq!(got, want, "greedy pick");
            }
        }
    }
    // Float exp() may differ in the last bit between CPU and GPU; picks near a boundary can flip.
    assert!(agree * 10 >= total * 9, "only {agree}/{total} sampled picks agree with the CPU reference");
    // Greedy ties go to the lowest id, whichever thread and unrolled load holds each copy.
    for ids in [vec![4000usize, 300, 2900], vec![4999, 17], vec![256, 255]] {
        let mut tied = logits.clone();
        for &i in &ids {
            tied[i] = 9.0;
        }
        let (got, _) = gpu_sample(&tied, &history, &SampleSettings::greedy());
        assert_eq!(got as usize, *ids.iter().min().expect("ids"), "tie among {ids:?}");
    }
}

/// The ids top-k and top-p keep, from their definitions in f64: every id at or above the
/// k-th largest value, and every id at or above the largest value whose mass reaches top_p.
fn kept_ids(logits: &[f32], s: &SampleSettings) -> Vec<usize> {
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut thr = f32::MIN;
    if s.top_k > 0 && (s.top_k as usize) < logits.len() {
        thr = thr.max(sorted[s.top_k as usize - 1]);
    }
    if s.top_p < 1.0 {
        let mx = sorted[0] as f64;
        let w = |l: f32| ((l as f64 - mx) / s.temperature as f64).exp();
        let total: f64 = logits.iter().map(|&l| w(l)).sum();
        let mut mass = 0.0;
        let v = sorted.iter().copied().find(|&v| {
            mass = logits.iter().filter(|&&l| l >= v).map(|&l| w(l)).sum::<f64>();
            mass >= s.top_p as f64 * total
        });
        thr = thr.max(v.unwrap_or(f32::MIN));
    }
    (0..logits.len()).filter(|&i| logits[i] >= thr).collect()
}

#[test]
fn gpu_sampler_top_k_and_top_p_keep_ties_at_the_threshold_like_the_cpu_reference() {
    // 3001 ids (not a multiple of the workgroup): ten distinct leaders, seven ids tied at
    // 4.5 (ranks 11-17) and five just below it at 4.499. The mass of the leaders is ~18% of
    // the total, with the tie ~23%, with the ones below ~26%: top_p 0.2 ends in the tie,
    // 0.25 in the group below.
    let vocab = 3001;
    let mut logits = rand_vec(vocab, 41, 3.0);
    for i in 0..10 {
        logits[100 + 37 * i] = 5.0 + 0.1 * i as f32;
    }
    for i in 0..7 {
        logits[2000 + 131 * i] = 4.5;
    }
    for i in 0..5 {
        logits[7 + 590 * i] = 4.499;
    }
    let history: Vec<u32> = vec![3, 9];
    let t = |top_k, top_p| SampleSettings { temperature: 1.0, top_k, top_p, ..Default::default() };
    let cases = [t(12, 1.0), t(18, 1.0), t(0, 0.2), t(0, 0.25), t(12, 0.9), t(200, 0.2)];
    let (mut agree, mut total) = (0, 0);
    for s in &cases {
        let kept = kept_ids(&logits, s);
        for seed in 0..4u64 {
            let s = SampleSettings { seed, ..s.clone() };
            let want = sample_reference(&mut logits.clone(), &history, &s);
            let (got, _) = gpu_sample(&logits, &history, &s);
            assert!(kept.contains(&(want as usize)), "{s:?}: CPU pick {want} outside the kept ids {kept:?}");
            assert!(kept.contains(&(got as usize)), "{s:?}: GPU pick {got} outside the kept ids {kept:?}");
            total += 1;
            agree += usize::from(got == want);
        }
    }
    // As in the test above: exp() may differ in the last bit between CPU and GPU.
    assert!(agree * 10 >= total * 9, "only {agree}/{total} sampled picks agree with the CPU reference");
}

/// Every kernel module the engine can build (each family with each weight prelude, the
/// native-f16 loads, the int8-input matvecs, the attention that packs its output and the
/// tensor-core matmul) parses and validates as WGSL under naga, whichever of them this
/// adapter's paths select.
#[test]
fn every_kernel_source_parses_and_validates_as_wgsl() {
    use wgpu::naga;
    let sources = Kernels::all_sources_for_validation();
    assert!(sources.len() > 20, "{} sources", sources.len());
    for (name, src) in sources {
        let module =
            naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        let flags = naga::valid::ValidationFlags::all();
        naga::valid::Validator::new(flags, naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
    }
}
