//! CPU dequantisation of GGML block formats (the reference the GPU kernels are tested
//! against), round-to-nearest quantisers for the simple block formats, and the GGML type
//! ids / block geometry of every format the crate reads.
//!
//! Block layouts (little endian, `d`/`m` are f16):
//! - `Q8_0`: 32 elements in 34 bytes: `d`, then 32 `i8`; value `q * d`.
//! - `Q4_0`: 32 elements in 18 bytes: `d`, then 16 bytes; the low nibbles are elements
//!   0..16, the high nibbles elements 16..32; value `(q - 8) * d`.
//! - `Q4_1`: 32 elements in 20 bytes: `d`, `m`, then 16 bytes as `Q4_0`; value `q * d + m`.
//! - K-quants: super-blocks of 256 elements (`Q2_K` 84, `Q3_K` 110, `Q4_K` 144,
//!   `Q5_K` 176, `Q6_K` 210 bytes) with 6- or 8-bit sub-block scales.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::model::HostFormat;

/// Every format, in GGML type-id order of appearance.
pub const ALL_FORMATS: [HostFormat; 11] = [
    HostFormat::F32,
    HostFormat::F16,
    HostFormat::BF16,
    HostFormat::Q8_0,
    HostFormat::Q4_0,
    HostFormat::Q4_1,
    HostFormat::Q2K,
    HostFormat::Q3K,
    HostFormat::Q4K,
    HostFormat::Q5K,
    HostFormat::Q6K,
];

/// Elements per block (1 for the float formats, 32 for `Q*_0/1`, 256 for K-quants).
pub fn block_elems(format: HostFormat) -> usize {
    match format {
        HostFormat::F32 | HostFormat::F16 | HostFormat::BF16 => 1,
        HostFormat::Q8_0 | HostFormat::Q4_0 | HostFormat::Q4_1 => 32,
        HostFormat::Q2K | HostFormat::Q3K | HostFormat::Q4K | HostFormat::Q5K | HostFormat::Q6K => 256,
    }
}

/// Bytes per block.
pub fn block_bytes(format: HostFormat) -> usize {
    match format {
        HostFormat::F32 => 4,
        HostFormat::F16 | HostFormat::BF16 => 2,
        HostFormat::Q8_0 => 34,
        HostFormat::Q4_0 => 18,
        HostFormat::Q4_1 => 20,
        HostFormat::Q2K => 84,
        HostFormat::Q3K => 110,
        HostFormat::Q4K => 144,
        HostFormat::Q5K => 176,
        HostFormat::Q6K => 210,
    }
}

/// The GGML type id (`ggml_type`) of a format.
pub fn ggml_type_id(format: HostFormat) -> u32 {
    match format {
        HostFormat::F32 => 0,
        HostFormat::F16 => 1,
        HostFormat::Q4_0 => 2,
        HostFormat::Q4_1 => 3,
        HostFormat::Q8_0 => 8,
        HostFormat::Q2K => 10,
        HostFormat::Q3K => 11,
        HostFormat::Q4K => 12,
        HostFormat::Q5K => 13,
        HostFormat::Q6K => 14,
        HostFormat::BF16 => 30,
    }
}

/// The format of a GGML type id, `None` for types this crate does not read.
pub fn format_from_ggml_type(id: u32) -> Option<HostFormat> {
    ALL_FORMATS.into_iter().find(|f| ggml_type_id(*f) == id)
}

/// A readable name for any GGML type id (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    let known = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        _ => "unknown",
    };
    format!("{known} (type id {id})")
}

/// Bytes that `n` elements take in `format`; an error when `n` is not a whole number of
/// blocks or the size overflows.
pub fn tensor_bytes(format: HostFormat, n: usize) -> Result<usize> {
    let be = block_elems(format);
    if !n.is_multiple_of(be) {
        return Err(Error::model(format!(
            "{format:?} tensor of {n} elements is not a whole number of {be}-element blocks"
        )));
    }
    (n / be)
        .checked_mul(block_bytes(format))
        .ok_or_else(|| Error::model(format!("{format:?} tensor of {n} elements: size overflows")))
}

/// Dequantise `n` elements stored in `format` from `bytes` (which must hold exactly `n`
/// elements).
pub fn dequantize(format: HostFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let expected = tensor_bytes(format, n)?;
    if bytes.len() != expected {
        return Err(Error::model(format!(
            "{format:?} tensor of {n} elements needs {expected} bytes, got {}",
            bytes.len()
        )));
    }
    let mut out = vec![0f32; n];
    dequantize_into(format, bytes, &mut out)?;
    Ok(out)
}

/// Dequantise into `out`; `bytes` must hold exactly `out.len()` elements.
pub fn dequantize_into(format: HostFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = tensor_bytes(format, out.len())?;
    if bytes.len() != expected {
        return Err(Error::model(format!(
            "{format:?} tensor of {} elements needs {expected} bytes, got {}",
            out.len(),
            bytes.len()
        )));
    }
    let bb = block_bytes(format);
    let be = block_elems(format);
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be));
    match format {
        HostFormat::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        HostFormat::F16 => blocks.for_each(|(b, y)| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        HostFormat::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        HostFormat::Q8_0 => blocks.for_each(|(b, y)| deq_q8_0(b, y)),
        HostFormat::Q4_0 => blocks.for_each(|(b, y)| deq_q4_0(b, y)),
        HostFormat::Q4_1 => blocks.for_each(|(b, y)| deq_q4_1(b, y)),
        HostFormat::Q2K => blocks.for_each(|(b, y)| deq_q2_k(b, y)),
        HostFormat::Q3K => blocks.for_each(|(b, y)| deq_q3_k(b, y)),
        HostFormat::Q4K => blocks.for_each(|(b, y)| deq_q4_k(b, y)),
        HostFormat::Q5K => blocks.for_each(|(b, y)| deq_q5_k(b, y)),
        HostFormat::Q6K => blocks.for_each(|(b, y)| deq_q6_k(b, y)),
    }
    Ok(())
}

// The block functions below get slices of exactly `block_bytes` / `block_elems` from
// `chunks_exact`, so their constant indices are in bounds.

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// b: 34 bytes -> y: 32
fn deq_q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = f32::from(q as i8) * d;
    }
}

/// b: 18 bytes -> y: 32
fn deq_q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
        *l = (f32::from(q & 0x0f) - 8.0) * d;
        *h = (f32::from(q >> 4) - 8.0) * d;
    }
}

/// b: 20 bytes -> y: 32
fn deq_q4_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
        *l = f32::from(q & 0x0f) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin -> 256.
fn deq_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = half_at(b, 80);
    let dmin = half_at(b, 82);
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                let base = half * 128 + j * 32 + part * 16;
                for l in 0..16 {
                    let qv = (q[part * 16 + l] >> shift) & 3;
                    y[base + l] = dl * f32::from(qv) - ml;
                }
            }
        }
    }
}

/// The 16 six-bit scales of a Q3_K block (12 packed bytes), already minus 32.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, v) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *v = i32::from(low | (high << 4)) - 32;
    }
    out
}

/// Q3_K: hmask[32], qs[64], scales[12], d -> 256.
fn deq_q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = half_at(b, 108);
    let mut is = 0;
    let mut bit = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let m = 1u8 << bit;
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                let base = half * 128 + j * 32 + part * 16;
                for l in 0..16 {
                    let k = part * 16 + l;
                    let low = i32::from((q[k] >> shift) & 3);
                    let high = if hmask[k] & m != 0 { 0 } else { 4 };
                    y[base + l] = dl * (low - high) as f32;
                }
            }
            bit += 1;
        }
    }
}

/// Scale and min `j` (0..8) of a Q4_K / Q5_K block's 12 packed scale bytes.
fn k4_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K: d, dmin, scales[12], qs[128] -> 256.
fn deq_q4_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let q = &qs[c * 32..c * 32 + 32];
        let (s1, m1) = k4_scale_min(2 * c, scales);
        let (s2, m2) = k4_scale_min(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        for l in 0..32 {
            y[c * 64 + l] = d1 * f32::from(q[l] & 0x0f) - m1;
            y[c * 64 + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
        }
    }
}

/// Q5_K: d, dmin, scales[12], qh[32], qs[128] -> 256.
fn deq_q5_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let q = &qs[c * 32..c * 32 + 32];
        let (s1, m1) = k4_scale_min(2 * c, scales);
        let (s2, m2) = k4_scale_min(2 * c + 1, scales);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let u1 = 1u8 << (2 * c);
        let u2 = 2u8 << (2 * c);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[c * 64 + l] = d1 * f32::from((q[l] & 0x0f) + h1) - m1;
            y[c * 64 + 32 + l] = d2 * f32::from((q[l] >> 4) + h2) - m2;
        }
    }
}

/// Q6_K: ql[128], qh[64], scales[16] (i8), d -> 256.
fn deq_q6_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let yb = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            yb[l] = s(0) * q1 as f32;
            yb[l + 32] = s(2) * q2 as f32;
            yb[l + 64] = s(4) * q3 as f32;
            yb[l + 96] = s(6) * q4 as f32;
        }
    }
}

fn check_blocks(what: &str, x: &[f32], block: usize) -> Result<()> {
    if x.len().is_multiple_of(block) {
        Ok(())
    } else {
        Err(Error::model(format!("{what}: {} elements is not a whole number of {block}-element blocks", x.len())))
    }
}

/// Round-to-nearest Q8_0: per block `d = max|x| / 127`, `q = round(x / d)`.
/// x: `[n]` f32 (n a multiple of 32) -> `n / 32 * 34` bytes.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>> {
    check_blocks("quantize_q8_0", x, 32)?;
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    Ok(out)
}

/// Round-to-nearest Q4_0: the element of largest magnitude maps to -8,
/// `d = max / -8`, `q = clamp(round(x / d) + 8, 0, 15)`.
/// x: `[n]` f32 (n a multiple of 32) -> `n / 32 * 18` bytes.
pub fn quantize_q4_0(x: &[f32]) -> Result<Vec<u8>> {
    check_blocks("quantize_q4_0", x, 32)?;
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for blk in x.chunks_exact(32) {
        let max = blk.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v * id).round() + 8.0).clamp(0.0, 15.0) as u8;
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend((0..16).map(|i| q(blk[i]) | (q(blk[i + 16]) << 4)));
    }
    Ok(out)
}

/// Round-to-nearest Q4_1: `m = min`, `d = (max - min) / 15`, `q = round((x - m) / d)`.
/// x: `[n]` f32 (n a multiple of 32) -> `n / 32 * 20` bytes.
pub fn quantize_q4_1(x: &[f32]) -> Result<Vec<u8>> {
    check_blocks("quantize_q4_1", x, 32)?;
    let mut out = Vec::with_capacity(x.len() / 32 * 20);
    for blk in x.chunks_exact(32) {
        let min = blk.iter().fold(f32::INFINITY, |a, &v| a.min(v));
        let max = blk.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let d = (max - min) / 15.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q = |v: f32| ((v - min) * id).round().clamp(0.0, 15.0) as u8;
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        out.extend((0..16).map(|i| q(blk[i]) | (q(blk[i + 16]) << 4)));
    }
    Ok(out)
}

/// Encode f32 values in `format`: every format; the K-quants with simple
/// round-to-nearest sub-block scales (valid blocks, not llama.cpp's optimised search).
/// x: `[n]` f32 -> `tensor_bytes(format, n)` bytes.
pub fn quantize(format: HostFormat, x: &[f32]) -> Result<Vec<u8>> {
    match format {
        HostFormat::F32 => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        HostFormat::F16 => Ok(x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        HostFormat::BF16 => Ok(x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
        HostFormat::Q8_0 => quantize_q8_0(x),
        HostFormat::Q4_0 => quantize_q4_0(x),
        HostFormat::Q4_1 => quantize_q4_1(x),
        HostFormat::Q2K => k_blocks(format, x, kquant::q2_k_block),
        HostFormat::Q3K => k_blocks(format, x, kquant::q3_k_block),
        HostFormat::Q4K => k_blocks(format, x, |x, o| kquant::q45_k_block(x, o, 4)),
        HostFormat::Q5K => k_blocks(format, x, |x, o| kquant::q45_k_block(x, o, 5)),
        HostFormat::Q6K => k_blocks(format, x, kquant::q6_k_block),
    }
}

/// Encode whole 256-element super-blocks with `block` (which gets exactly one block of
/// input and of output, zeroed).
fn k_blocks(format: HostFormat, x: &[f32], block: impl Fn(&[f32], &mut [u8])) -> Result<Vec<u8>> {
    check_blocks(&format!("quantize {format:?}"), x, 256)?;
    let bb = block_bytes(format);
    let mut out = vec![0u8; x.len() / 256 * bb];
    for (xb, ob) in x.chunks_exact(256).zip(out.chunks_exact_mut(bb)) {
        block(xb, ob);
    }
    Ok(out)
}

mod kquant;
#[cfg(test)]
mod tests;
