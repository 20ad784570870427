//! Packing of the GPU weight formats int8 and int4 (CPU side), and their CPU reference
//! dequantisation, which mirrors `shaders/weights/int8.wgsl` / `int4.wgsl` operation by
//! operation.
//!
//! Both formats quantise groups of [`GROUP`] consecutive weights along a row (k), so a
//! matrix's width must be a multiple of 32. Storage (two buffers, u32 words):
//! - int8 (symmetric, Q8_0-compatible): `words` holds 4 signed bytes per u32, k ascending
//!   from the low byte; `scales` holds one f16 scale per group, two per u32 (group `g` in
//!   half `g % 2` of word `g / 2`). Weight `q * d`: 8.5 bits per weight.
//! - int4 (asymmetric, Q4_1-compatible): `words` holds 8 nibbles per u32, k ascending from
//!   the low nibble (so 4 consecutive k share one 16-bit half); `scales` holds one u32 per
//!   group, f16 `d` in the low half and f16 `m` in the high half. Weight `q * d + m`:
//!   5 bits per weight. Q4_0 blocks map to `m = -8 d` (exact in f16 while `|8 d| <= 65504`).
//!
//! File blocks that already hold these formats (Q8_0 for int8; Q4_0, Q4_1 for int4) are
//! repacked without touching a value, so the GPU dequantises them to the same bits as
//! [`crate::quant::ggml::dequantize`]: every product `q * d` is exact in f32 (at most
//! 8 + 11 significant bits), so fused or separate multiply-add round identically. (One
//! difference in bits, none in value: a Q4_0 weight `(8 - 8) * d` with `d < 0` is -0.0 in
//! GGML and +0.0 here.)
//! Other sources are quantised round-to-nearest on the CPU through the same GGML block
//! quantisers (Q8_0 / Q4_1), then repacked.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::WeightFormat;
use crate::model::HostFormat;
use crate::quant::ggml;

/// Weights per quantisation group (along k) of the integer formats.
pub const GROUP: usize = 32;

/// A packed matrix: `words` are bound at binding 1, `scales` at binding 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Quantised values, `[rows, k / 4]` (int8) or `[rows, k / 8]` (int4) u32.
    pub words: Vec<u32>,
    /// Per-group f16 parameters packed in u32 (see the module docs).
    pub scales: Vec<u32>,
}

/// Whether blocks in `host` can be repacked into `gpu` without changing a value.
pub fn passthrough(gpu: WeightFormat, host: HostFormat) -> bool {
    matches!(
        (gpu, host),
        (WeightFormat::Int8, HostFormat::Q8_0) | (WeightFormat::Int4, HostFormat::Q4_0 | HostFormat::Q4_1)
    )
}

/// Accumulates row-concatenated parts of one matrix in an integer GPU format.
pub struct Packer {
    format: WeightFormat,
    words: Vec<u32>,
    /// f16 bits: one per group (int8) or `d, m` per group (int4).
    halves: Vec<u16>,
}

fn half_bits(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Packer {
    /// A packer for `format` (int8 or int4) with room for `n` weights.
    pub fn new(format: WeightFormat, n: usize) -> Result<Packer> {
        let (words, halves) = match format {
            WeightFormat::Int8 => (n / 4, n / GROUP),
            WeightFormat::Int4 => (n / 8, 2 * n / GROUP),
            other => return Err(Error::internal(format!("{other:?} is not a grouped integer format"))),
        };
        Ok(Packer { format, words: Vec::with_capacity(words), halves: Vec::with_capacity(halves) })
    }

    /// Append file blocks `bytes` of `host` (which must satisfy [`passthrough`]).
    /// bytes: whole GGML blocks -> 32 weights each, bit-exact.
    pub fn push_blocks(&mut self, host: HostFormat, bytes: &[u8]) -> Result<()> {
        if !passthrough(self.format, host) {
            return Err(Error::internal(format!("{host:?} blocks cannot be repacked as {:?}", self.format)));
        }
        let bb = ggml::block_bytes(host);
        if !bytes.len().is_multiple_of(bb) {
            return Err(Error::model(format!("{} bytes are not whole {host:?} blocks", bytes.len())));
        }
        for b in bytes.chunks_exact(bb) {
            match host {
                HostFormat::Q8_0 => {
                    self.halves.push(half_bits(b, 0));
                    self.words.extend(b[2..34].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
                HostFormat::Q4_0 | HostFormat::Q4_1 => {
                    let d = f16::from_bits(half_bits(b, 0));
                    let (m, qs) = if host == HostFormat::Q4_1 {
                        (f16::from_bits(half_bits(b, 2)), &b[4..20])
                    } else {
                        let m = f16::from_f32(-8.0 * d.to_f32());
                        if m.to_f32() != -8.0 * d.to_f32() {
                            return Err(Error::model(format!("Q4_0 scale {d} is too large for an f16 minimum")));
                        }
                        (m, &b[2..18])
                    };
                    self.halves.extend([d.to_bits(), m.to_bits()]);
                    // Element i is the low nibble of qs[i] (i < 16) or the high nibble of
                    // qs[i - 16]; store element i at nibble i % 8 of word i / 8.
                    let q = |i: usize| u32::from(if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 });
                    for word in 0..4 {
                        self.words.push((0..8).fold(0u32, |acc, j| acc | (q(word * 8 + j) << (4 * j))));
                    }
                }
                _ => return Err(Error::internal(format!("{host:?} is not a block format"))),
            }
        }
        Ok(())
    }

    /// Append f32 weights, quantised round-to-nearest (int8: symmetric per group as Q8_0;
    /// int4: scale and minimum per group as Q4_1). x: `[n]`, n a multiple of 32.
    pub fn push_f32(&mut self, x: &[f32]) -> Result<()> {
        match self.format {
            WeightFormat::Int8 => self.push_blocks(HostFormat::Q8_0, &ggml::quantize_q8_0(x)?),
            _ => self.push_blocks(HostFormat::Q4_1, &ggml::quantize_q4_1(x)?),
        }
    }

    /// The packed buffers (scales zero-padded to whole u32 words).
    pub fn finish(self) -> Packed {
        let scales = self
            .halves
            .chunks(2)
            .map(|c| u32::from(c[0]) | (u32::from(c.get(1).copied().unwrap_or(0)) << 16))
            .collect();
        Packed { words: self.words, scales }
    }
}

/// Pack f32 weights (`[n]`, n a multiple of 32) round-to-nearest into `format`.
pub fn pack_f32(format: WeightFormat, x: &[f32]) -> Result<Packed> {
    let mut p = Packer::new(format, x.len())?;
    p.push_f32(x)?;
    Ok(p.finish())
}

/// CPU reference of the shader's `load_w4`: the f32 weights of `n` packed values.
pub fn dequantize(format: WeightFormat, packed: &Packed, n: usize) -> Result<Vec<f32>> {
    let half = |g: usize, which: usize| -> Result<f32> {
        let word = packed.scales.get(g).ok_or_else(|| Error::internal("scale buffer too short"))?;
        Ok(f16::from_bits((word >> (16 * which)) as u16).to_f32())
    };
    let word = |i: usize| packed.words.get(i).copied().ok_or_else(|| Error::internal("weight buffer too short"));
    let mut out = Vec::with_capacity(n);
    match format {
        WeightFormat::Int8 => {
            for i in 0..n {
                let g = i / GROUP;
                let d = half(g / 2, g % 2)?;
                let q = (word(i / 4)? >> (8 * (i % 4))) as u8 as i8;
                out.push(f32::from(q) * d);
            }
        }
        WeightFormat::Int4 => {
            for i in 0..n {
                let g = i / GROUP;
                let (d, m) = (half(g, 0)?, half(g, 1)?);
                let q = (word(i / 8)? >> (4 * (i % 8))) & 0x0f;
                out.push(q as f32 * d + m);
            }
        }
        other => return Err(Error::internal(format!("{other:?} is not a grouped integer format"))),
    }
    Ok(out)
}

/// The weights the GPU sees after uploading f32 `x` in `format` (every format).
pub fn quantize_dequantize(format: WeightFormat, x: &[f32]) -> Result<Vec<f32>> {
    match format {
        WeightFormat::F32 => Ok(x.to_vec()),
        WeightFormat::F16 => Ok(x.iter().map(|v| f16::from_f32(*v).to_f32()).collect()),
        _ => dequantize(format, &pack_f32(format, x)?, x.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 3.0
            })
            .collect()
    }

    #[test]
    fn passthrough_is_bit_exact_for_every_matching_block_format() {
        let x = values(32 * 40, 7);
        for (gpu, host) in [
            (WeightFormat::Int8, HostFormat::Q8_0),
            (WeightFormat::Int4, HostFormat::Q4_0),
            (WeightFormat::Int4, HostFormat::Q4_1),
        ] {
            let blocks = ggml::quantize(host, &x).expect("quantize");
            let want = ggml::dequantize(host, &blocks, x.len()).expect("dequantize");
            let mut p = Packer::new(gpu, x.len()).expect("packer");
            p.push_blocks(host, &blocks).expect("repack");
            let got = dequantize(gpu, &p.finish(), x.len()).expect("gpu dequantize");
            // Equal as numbers; bits too except the sign of an exact zero (Q4_0, q = 8, d < 0).
            let same = got.iter().zip(&want).all(|(a, b)| a == b && (a.to_bits() == b.to_bits() || *a == 0.0));
            assert!(same, "{host:?} -> {gpu:?}");
        }
    }

    #[test]
    fn sizes_are_8_5_and_5_bits_per_weight() {
        let x = values(32 * 3, 1);
        let p8 = pack_f32(WeightFormat::Int8, &x).expect("int8");
        assert_eq!((p8.words.len(), p8.scales.len()), (24, 2));
        let p4 = pack_f32(WeightFormat::Int4, &x).expect("int4");
        assert_eq!((p4.words.len(), p4.scales.len()), (12, 3));
    }

    #[test]
    fn round_to_nearest_error_is_within_half_a_step() {
        let x = values(32 * 16, 3);
        for (format, levels) in [(WeightFormat::Int8, 254.0), (WeightFormat::Int4, 15.0)] {
            let y = quantize_dequantize(format, &x).expect("round trip");
            for (gx, gy) in x.chunks(GROUP).zip(y.chunks(GROUP)) {
                let range = gx.iter().fold(0f32, |a, v| a.max(v.abs())) * 2.0;
                let step = range / levels;
                for (a, b) in gx.iter().zip(gy) {
                    assert!((a - b).abs() <= step * 0.51 + 4e-3, "{format:?}: {a} -> {b}");
                }
            }
        }
    }

    #[test]
    fn mismatched_blocks_are_refused() {
        let mut p = Packer::new(WeightFormat::Int8, 32).expect("packer");
        assert!(p.push_blocks(HostFormat::Q4_1, &[0u8; 20]).is_err());
        assert!(Packer::new(WeightFormat::F16, 32).is_err());
    }
}
