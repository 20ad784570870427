//! Tests of the GGML block formats: known values, round trips, golden values from gguf-py.
use super::*;

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect()
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn type_ids_and_geometry() {
    assert_eq!(format_from_ggml_type(8), Some(HostFormat::Q8_0));
    assert_eq!(format_from_ggml_type(30), Some(HostFormat::BF16));
    assert_eq!(format_from_ggml_type(6), None);
    assert!(ggml_type_name(6).starts_with("Q5_0"));
    for f in ALL_FORMATS {
        assert_eq!(format_from_ggml_type(ggml_type_id(f)), Some(f));
    }
    assert_eq!(tensor_bytes(HostFormat::Q4_1, 64).ok(), Some(40));
    assert_eq!(tensor_bytes(HostFormat::Q6K, 512).ok(), Some(420));
    assert!(tensor_bytes(HostFormat::Q4_0, 33).is_err());
    assert!(tensor_bytes(HostFormat::F32, usize::MAX / 2).is_err());
}

#[test]
fn float_formats_round_trip() {
    let x = ramp(64);
    for (f, tol) in [(HostFormat::F32, 0.0), (HostFormat::F16, 1e-3), (HostFormat::BF16, 1e-2)] {
        let b = quantize(f, &x).unwrap();
        let y = dequantize(f, &b, x.len()).unwrap();
        assert!(max_err(&x, &y) <= tol, "{f:?}");
    }
}

#[test]
fn q8_0_round_trip_and_known_values() {
    let x = ramp(128);
    let b = quantize_q8_0(&x).unwrap();
    assert_eq!(b.len(), 4 * 34);
    let y = dequantize(HostFormat::Q8_0, &b, 128).unwrap();
    assert!(max_err(&x, &y) < 1.25 / 127.0 * 0.51 + 1e-3);
    // d = 0.5, q = [1, -2, 0, ...] -> [0.5, -1.0, 0, ...]
    let mut blk = vec![0u8; 34];
    blk[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    blk[2] = 1;
    blk[3] = (-2i8) as u8;
    let y = dequantize(HostFormat::Q8_0, &blk, 32).unwrap();
    assert_eq!(&y[..3], &[0.5, -1.0, 0.0]);
}

#[test]
fn q4_0_nibble_order() {
    // d = 2, byte 0 = 0x9_1: element 0 is (1 - 8) * 2, element 16 is (9 - 8) * 2.
    let mut blk = vec![0x88u8; 18];
    blk[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    blk[2] = 0x91;
    let y = dequantize(HostFormat::Q4_0, &blk, 32).unwrap();
    assert_eq!(y[0], -14.0);
    assert_eq!(y[16], 2.0);
    assert_eq!(y[1], 0.0);
    let x = ramp(96);
    let y = dequantize(HostFormat::Q4_0, &quantize_q4_0(&x).unwrap(), 96).unwrap();
    assert!(max_err(&x, &y) < 1.25 / 8.0 + 1e-3, "{}", max_err(&x, &y));
}

#[test]
fn q4_1_round_trip_and_known_values() {
    let mut blk = vec![0u8; 20];
    blk[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
    blk[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
    blk[4] = 0xf3;
    let y = dequantize(HostFormat::Q4_1, &blk, 32).unwrap();
    assert_eq!((y[0], y[16], y[1]), (-0.25, 2.75, -1.0));
    let x = ramp(64);
    let y = dequantize(HostFormat::Q4_1, &quantize_q4_1(&x).unwrap(), 64).unwrap();
    assert!(max_err(&x, &y) < 2.5 / 15.0 * 0.51 + 2e-3, "{}", max_err(&x, &y));
    // A constant block dequantises exactly.
    let c = vec![0.75f32; 32];
    let y = dequantize(HostFormat::Q4_1, &quantize_q4_1(&c).unwrap(), 32).unwrap();
    assert!(y.iter().all(|v| *v == 0.75));
}

#[test]
fn q2_k_known_values() {
    let mut b = vec![0u8; 84];
    // sub-block 0: scale 3, min 1; sub-block 1: scale 2, min 0
    b[0] = 0x13;
    b[1] = 0x02;
    b[16] = 0b11_10_01_10; // element 0: q = 2 (shift 0); element 32: q = 1 (shift 2)
    b[32] = 0b01; // element 16 (second half of first 32 qs bytes): q = 1
    b[80..82].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[82..84].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
    let y = dequantize(HostFormat::Q2K, &b, 256).unwrap();
    assert_eq!(y[0], 0.5 * 3.0 * 2.0 - 0.25);
    assert_eq!(y[1], -0.25);
    assert_eq!(y[16], 0.5 * 2.0 * 1.0);
    // element 32 uses scales[2] = 0 -> 0
    assert_eq!(y[32], 0.0);
}

#[test]
fn q3_k_known_values() {
    let mut b = vec![0u8; 110];
    // all hmask bits set -> no -4 offset; scale 0 = 33 (low 1, high 2) -> 1
    b[96] = 0x01;
    b[104] = 0b10; // high bits of scale 0 (i = 0 -> shift 0)
    b[32] = 0b11; // element 0: low = 3
    b[0..32].fill(0xff);
    b[108..110].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    let y = dequantize(HostFormat::Q3K, &b, 256).unwrap();
    assert_eq!(y[0], 2.0 * 1.0 * 3.0);
    assert_eq!(y[1], 0.0);
    // clear the hmask bit of element 1 -> (0 - 4) * scale
    b[1] = 0xfe;
    let y = dequantize(HostFormat::Q3K, &b, 256).unwrap();
    assert_eq!(y[1], 2.0 * 1.0 * -4.0);
    // other sub-blocks have scale 0 - 32 = -32 with q = 0 -> 0
    assert_eq!(y[200], 0.0);
}

#[test]
fn q4_k_and_q5_k_known_values() {
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[4] = 2; // scale 0
    b[8] = 3; // min 0
    b[5] = 4; // scale 1
    b[16] = 0x75; // element 0: q 5, element 32: q 7
    let y = dequantize(HostFormat::Q4K, &b, 256).unwrap();
    assert_eq!(y[0], 2.0 * 5.0 - 1.5);
    assert_eq!(y[32], 4.0 * 7.0);
    // scale 4 (j >= 4): low bits from s[8] & 0xf, high from s[0] >> 6
    assert_eq!(k4_scale_min(4, &[0xc0, 0, 0, 0, 0, 0, 0, 0, 0x21, 0, 0, 0]), (49, 2));

    let mut b5 = vec![0u8; 176];
    b5[0..4].copy_from_slice(&b[0..4]);
    b5[4..16].copy_from_slice(&b[4..16]);
    b5[16] = 0b01; // qh bit for element 0 -> +16
    b5[48] = 0x75;
    let y = dequantize(HostFormat::Q5K, &b5, 256).unwrap();
    assert_eq!(y[0], 2.0 * 21.0 - 1.5);
    assert_eq!(y[32], 4.0 * 7.0);
}

#[test]
fn q6_k_known_values() {
    let mut b = vec![0u8; 210];
    b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[192] = 3; // scale for elements 0..16
    b[194] = (-1i8) as u8; // scale for elements 32..48
    b[0] = 0x0f; // element 0 low 4 bits = 15; element 64 low = 0
    b[128] = 0b10_00_01_10; // element 0 high = 2, element 32 high = 1, element 96 high = 2
    let y = dequantize(HostFormat::Q6K, &b, 256).unwrap();
    assert_eq!(y[0], 0.5 * 3.0 * ((15 | (2 << 4)) - 32) as f32);
    assert_eq!(y[32], -0.5 * ((1 << 4) - 32) as f32);
    assert_eq!(y[1], 0.5 * 3.0 * -32.0);
}

/// Golden values from gguf-py 0.19 (`gguf.quants.dequantize`) for two blocks of bytes
/// `(i * 73 + 11) % 256` whose f16 scales are set to `value * (block + 1)`.
#[test]
#[allow(clippy::excessive_precision)] // golden values printed by gguf-py
fn all_formats_match_gguf_py() {
    type Case = (HostFormat, &'static [(usize, f32)], f64, f64, [f32; 4]);
    let cases: [Case; 8] = [
        (HostFormat::Q2K, &[(80, 0.5), (82, 0.25)], 2870.5, 816217.0, [16.5, 0.0, 5.5, 11.0]),
        (HostFormat::Q3K, &[(108, 0.125)], -39.125, -6821.125, [10.125, -13.5, 3.375, -6.75]),
        (HostFormat::Q4K, &[(0, 0.0625), (2, 0.03125)], 8358.5, 2406458.5, [31.71875, 11.15625, 37.59375, 17.03125]),
        (HostFormat::Q5K, &[(0, 0.0625), (2, 0.03125)], 23054.5, 7056660.5, [78.71875, 11.15625, 84.59375, 17.03125]),
        (
            HostFormat::Q6K,
            &[(208, 0.01)],
            -347.8742980957031,
            -153432.56973266602,
            [-14.313057, 14.84317, 1.5903397, -3.1806793],
        ),
        (
            HostFormat::Q8_0,
            &[(0, 0.02)],
            8.641845703125,
            248.693115234375,
            [-1.9804229736328125, -0.520111083984375, 0.9402008056640625, 2.4005126953125],
        ),
        (
            HostFormat::Q4_0,
            &[(0, 0.1)],
            -7.2982177734375,
            -347.115234375,
            [0.4998779296875, -0.199951171875, 0.6998291015625, 0.0],
        ),
        (
            HostFormat::Q4_1,
            &[(0, 0.1), (2, -0.3)],
            40.0784912109375,
            1500.0902099609375,
            [1.1995849609375, 0.499755859375, -0.2000732421875, 0.69970703125],
        ),
    ];
    for (f, halves, sum, wsum, first) in cases {
        let bs = block_bytes(f);
        let mut b: Vec<u8> = (0..2 * bs).map(|i| ((i * 73 + 11) % 256) as u8).collect();
        for k in 0..2 {
            for &(off, v) in halves {
                let h = f16::from_f32(v * (k + 1) as f32).to_le_bytes();
                b[k * bs + off..k * bs + off + 2].copy_from_slice(&h);
            }
        }
        let y = dequantize(f, &b, 2 * block_elems(f)).unwrap();
        let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
        let ws: f64 = y.iter().enumerate().map(|(i, &v)| f64::from(v) * (i + 1) as f64).sum();
        assert!((s - sum).abs() <= 1e-4 * sum.abs().max(1.0), "{f:?} sum {s} vs {sum}");
        assert!((ws - wsum).abs() <= 1e-4 * wsum.abs().max(1.0), "{f:?} wsum {ws} vs {wsum}");
        for (a, e) in y.iter().zip(first) {
            assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{f:?} {a} vs {e}");
        }
    }
}

#[test]
fn wrong_lengths_are_errors() {
    assert!(dequantize(HostFormat::Q8_0, &[0u8; 33], 32).is_err());
    assert!(dequantize(HostFormat::Q4_0, &[0u8; 18], 31).is_err());
    assert!(quantize_q4_1(&[0.0; 31]).is_err());
    assert!(quantize(HostFormat::Q5K, &[0.0; 255]).is_err());
}

#[test]
fn k_quants_round_trip() {
    // A smooth signal with an offset plus outliers, over 4 super-blocks.
    let x: Vec<f32> = (0..1024)
        .map(|i| {
            let t = i as f32;
            0.3 * (t * 0.37).sin() + 0.1 * (t * 0.011).cos() + if i % 97 == 0 { 0.9 } else { 0.0 }
        })
        .collect();
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (f, bound) in [
        (HostFormat::Q2K, 0.35),
        (HostFormat::Q3K, 0.2),
        (HostFormat::Q4K, 0.06),
        (HostFormat::Q5K, 0.03),
        (HostFormat::Q6K, 0.02),
    ] {
        let b = quantize(f, &x).unwrap();
        assert_eq!(b.len(), 4 * block_bytes(f));
        let y = dequantize(f, &b, x.len()).unwrap();
        let err = max_err(&x, &y);
        let rms = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / 1024.0).sqrt();
        eprintln!("{f:?}: max err {:.4} rms {:.4} (of amax {amax})", err / amax, rms / amax);
        assert!(err <= bound * amax, "{f:?} max error {err} of {amax}");
        // all-zero and constant blocks are exact (or nearly)
        let z = dequantize(f, &quantize(f, &[0.0; 256]).unwrap(), 256).unwrap();
        assert!(z.iter().all(|v| *v == 0.0), "{f:?}");
    }
}
