//! Simple round-to-nearest quantisers for the K-quant super-blocks (256 elements). They
//! are not llama.cpp's error-minimising searches, but they produce valid blocks whose
//! error is bounded by half a quantisation step of each sub-block, which is what tests
//! and synthetic models need.

use half::f16;

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

fn inv(v: f32) -> f32 {
    if v != 0.0 { 1.0 / v } else { 0.0 }
}

/// Per sub-block `(scale, min)` for an unsigned code `0..=qmax` with value
/// `scale * q - min`, `min >= 0` (the sub-block minimum, capped at zero).
fn scale_min(x: &[f32], qmax: f32) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(lo, |a, &v| a.max(v));
    ((hi - lo) / qmax, -lo)
}

/// Quantise `scales` (non-negative) to `bits`-bit codes under one f16 super-scale;
/// returns (super-scale as stored, codes).
fn super_scale(scales: &[f32], bits: u32) -> (f32, Vec<u8>) {
    let top = ((1u32 << bits) - 1) as f32;
    let max = scales.iter().fold(0f32, |a, &v| a.max(v));
    let d = f16_round(max / top);
    let id = inv(d);
    (d, scales.iter().map(|s| (s * id).round().clamp(0.0, top) as u8).collect())
}

/// Codes for `x` under effective scale `d` and offset `m` (value `d * q - m`).
fn codes(x: &[f32], d: f32, m: f32, qmax: f32) -> impl Iterator<Item = u8> + '_ {
    let id = inv(d);
    x.iter().map(move |&v| ((v + m) * id).round().clamp(0.0, qmax) as u8)
}

/// Q2_K: x: [256] -> 84 bytes (scales[16], qs[64], d, dmin).
pub(super) fn q2_k_block(x: &[f32], out: &mut [u8]) {
    let (scales, mins): (Vec<f32>, Vec<f32>) = x.chunks_exact(16).map(|c| scale_min(c, 3.0)).unzip();
    let (d, sc) = super_scale(&scales, 4);
    let (dmin, mc) = super_scale(&mins, 4);
    let mut q = [0u8; 256];
    for (j, c) in x.chunks_exact(16).enumerate() {
        let eff_d = d * f32::from(sc[j]);
        let eff_m = dmin * f32::from(mc[j]);
        for (k, v) in codes(c, eff_d, eff_m, 3.0).enumerate() {
            q[j * 16 + k] = v;
        }
        out[j] = sc[j] | (mc[j] << 4);
    }
    // element half*128 + j*32 + part*16 + l lives in qs[half*32 + part*16 + l] at bit 2j
    for (e, &v) in q.iter().enumerate() {
        let (half, j, rest) = (e / 128, (e % 128) / 32, e % 32);
        out[16 + half * 32 + rest] |= v << (2 * j);
    }
    put_f16(out, 80, d);
    put_f16(out, 82, dmin);
}

/// Q3_K: x: [256] -> 110 bytes (hmask[32], qs[64], scales[12], d).
pub(super) fn q3_k_block(x: &[f32], out: &mut [u8]) {
    // Signed sub-block scales: the element of largest magnitude maps to -4.
    let scales: Vec<f32> =
        x.chunks_exact(16).map(|c| c.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a }) / -4.0).collect();
    let amax = scales.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = f16_round(amax / 31.0);
    let id = inv(d);
    let sc: Vec<i32> = scales.iter().map(|s| (s * id).round().clamp(-32.0, 31.0) as i32).collect();
    for (i, &s) in sc.iter().enumerate() {
        let u = (s + 32) as u8;
        if i < 8 {
            out[96 + i] |= u & 0x0f;
        } else {
            out[96 + i - 8] |= (u & 0x0f) << 4;
        }
        out[96 + 8 + i % 4] |= (u >> 4) << (2 * (i / 4));
    }
    for (e, &v) in x.iter().enumerate() {
        let eff = d * sc[e / 16] as f32;
        let q = (v * inv(eff)).round().clamp(-4.0, 3.0) as i32 + 4; // 0..=7
        let (half, j, rest) = (e / 128, (e % 128) / 32, e % 32);
        out[32 + half * 32 + rest] |= ((q & 3) as u8) << (2 * j);
        if q >= 4 {
            out[rest] |= 1 << (half * 4 + j);
        }
    }
    put_f16(out, 108, d);
}

/// Pack eight 6-bit (scale, min) pairs into Q4_K / Q5_K's 12 bytes.
fn pack_k4_scales(sc: &[u8], mc: &[u8], s: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            s[j] |= sc[j];
            s[j + 4] |= mc[j];
        } else {
            s[j + 4] = (sc[j] & 0x0f) | ((mc[j] & 0x0f) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (mc[j] >> 4) << 6;
        }
    }
}

/// Q4_K (`bits` 4) or Q5_K (`bits` 5): x: [256] -> 144 / 176 bytes.
pub(super) fn q45_k_block(x: &[f32], out: &mut [u8], bits: u32) {
    let qmax = ((1u32 << bits) - 1) as f32;
    let (scales, mins): (Vec<f32>, Vec<f32>) = x.chunks_exact(32).map(|c| scale_min(c, qmax)).unzip();
    let (d, sc) = super_scale(&scales, 6);
    let (dmin, mc) = super_scale(&mins, 6);
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    pack_k4_scales(&sc, &mc, &mut out[4..16]);
    let qs_at = if bits == 5 { 48 } else { 16 };
    for (j, c) in x.chunks_exact(32).enumerate() {
        let q = codes(c, d * f32::from(sc[j]), dmin * f32::from(mc[j]), qmax);
        // sub-block j = 2*chunk + high: low nibbles hold even sub-blocks, high nibbles odd
        let (chunk, high) = (j / 2, j % 2);
        for (l, v) in q.enumerate() {
            out[qs_at + chunk * 32 + l] |= (v & 0x0f) << (4 * high);
            if bits == 5 && v >= 16 {
                out[16 + l] |= 1 << j;
            }
        }
    }
}

/// Q6_K: x: [256] -> 210 bytes (ql[128], qh[64], scales[16] i8, d).
pub(super) fn q6_k_block(x: &[f32], out: &mut [u8]) {
    let scales: Vec<f32> = x
        .chunks_exact(16)
        .map(|c| c.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a }) / -32.0)
        .collect();
    let amax = scales.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = f16_round(amax / 127.0);
    let id = inv(d);
    let sc: Vec<i8> = scales.iter().map(|s| (s * id).round().clamp(-128.0, 127.0) as i8).collect();
    for (i, &s) in sc.iter().enumerate() {
        out[192 + i] = s as u8;
    }
    for (e, &v) in x.iter().enumerate() {
        let eff = d * f32::from(sc[e / 16]);
        let q = ((v * inv(eff)).round().clamp(-32.0, 31.0) as i32 + 32) as u8; // 0..=63
        let (half, k, l) = (e / 128, (e % 128) / 32, e % 32);
        // k = 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high
        let ql = half * 64 + l + 32 * (k % 2);
        out[ql] |= (q & 0x0f) << (4 * (k / 2));
        out[128 + half * 32 + l] |= (q >> 4) << (2 * k);
    }
    put_f16(out, 208, d);
}
