//! The CPU engine's SIMD kernels (`src/cpu/kernels.rs`, built with `simd128`) against their
//! scalar reference, in both browsers' WebAssembly engines.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use wsi::cpu::kernels::{Matrix, QuantVec};
use wsi::quant::ggml;

wasm_bindgen_test_configure!(run_in_browser);

fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[wasm_bindgen_test]
fn simd_matvecs_equal_the_scalar_ones_for_int4_and_int8() {
    const { assert!(cfg!(target_feature = "simd128"), "the wasm build lost simd128 (.cargo/config.toml)") };
    for (rows, cols) in [(1, 32), (7, 96), (37, 576), (130, 1536)] {
        let w = rand_vec(rows * cols, rows as u64, 1.0);
        let mut x = QuantVec::default();
        x.quantize(&rand_vec(cols, 99, 3.0));
        for m in [
            Matrix::from_q4_1(&ggml::quantize_q4_1(&w).unwrap(), rows, cols).unwrap(),
            Matrix::from_q4_0(&ggml::quantize_q4_0(&w).unwrap(), rows, cols).unwrap(),
            Matrix::from_q8_0(&ggml::quantize_q8_0(&w).unwrap(), rows, cols).unwrap(),
        ] {
            let (mut y, mut want) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            m.matvec(&x, &mut y).unwrap();
            m.matvec_scalar(&x, &mut want).unwrap();
            let scale = want.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
            let err = y.iter().zip(&want).fold(0.0f32, |a, (p, q)| a.max((p - q).abs())) / scale;
            // Same integer sums; only the order of the float additions differs.
            assert!(err < 1e-5, "{} [{rows}, {cols}]: error {err}", m.format_name());
        }
    }
    console_log!("simd128 int4/int8 matvecs agree with the scalar reference");
}

#[wasm_bindgen_test]
fn simd_activation_quantiser_gives_the_scalar_codes() {
    for (n, scale) in [(32, 1.0), (576, 40.0), (1536, 1e-3)] {
        let mut x = rand_vec(n, n as u64, scale);
        x[5] = 0.0;
        x[n - 1] = -scale; // a group's largest magnitude negative
        let (mut a, mut b) = (QuantVec::default(), QuantVec::default());
        a.quantize(&x);
        b.quantize_scalar(&x);
        assert_eq!(a.q, b.q, "codes of {n}");
        assert_eq!((a.scale, a.sum), (b.scale, b.sum), "scales and sums of {n}");
    }
    let mut z = QuantVec::default();
    z.quantize(&[0.0; 64]);
    assert!(z.q.iter().all(|&q| q == 0) && z.scale == [0.0, 0.0], "an all-zero group");
}

#[wasm_bindgen_test]
fn simd_matmul_of_several_vectors_is_the_same_bits_as_matvec_of_each() {
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
        for n in 1..=xs.len() {
            let mut y = vec![0.0; n * rows];
            m.matmul(&xs[..n], &mut y).unwrap();
            for (x, yt) in xs.iter().zip(y.chunks_exact(rows)) {
                let mut want = vec![0.0; rows];
                m.matvec(x, &mut want).unwrap();
                assert_eq!(yt, &want[..], "{} with {n} vectors", m.format_name());
            }
        }
    }
}
