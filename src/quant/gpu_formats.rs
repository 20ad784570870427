//! Packing of the integer GPU formats (CPU side), and their CPU reference dequantisation,
//! which mirrors `shaders/weights/int*.wgsl` operation by operation.
//!
//! Every format quantises groups of consecutive weights along a row (k): [`GROUP`] = 32
//! for int8 and int4, [`group`] for int3 and int2; a matrix's width must be a multiple of
//! the group. Storage (two buffers, u32 words):
//! - int8 (symmetric, Q8_0-compatible): `words` holds 4 signed bytes per u32, k ascending
//!   from the low byte; `scales` holds one f16 scale per group, two per u32 (group `g` in
//!   half `g % 2` of word `g / 2`). Weight `q * d`: 8.5 bits per weight.
//! - int4 (asymmetric, Q4_1-compatible): `words` holds 8 nibbles per u32, k ascending from
//!   the low nibble (so 4 consecutive k share one 16-bit half); `scales` holds one u32 per
//!   group, f16 `d` in the low half and f16 `m` in the high half. Weight `q * d + m`:
//!   5 bits per weight. Q4_0 blocks map to `m = -8 d` (exact in f16 while `|8 d| <= 65504`).
//! - int4 symmetric (`Int4Sym`, Q4_0-compatible, what Q4_0 blocks are uploaded as): `words`
//!   as int4; `scales` one f16 `d` per group, two per u32 as int8. Weight `q * d - 8 d`
//!   (the same f32 as int4 with `m = -8 d`): 4.5 bits per weight.
//! - int3 (asymmetric): each block of 32 weights is 3 words: the low 2 bits of weights
//!   0..16 (word 0) and 16..32 (word 1), 2 bits each from the low end, then the third bit
//!   of all 32 (word 2, bit i). 4 consecutive k are one byte of a low word plus one nibble
//!   of the high word, so no value straddles words. `scales` as int4, per [`group`].
//! - int2 (asymmetric): 16 codes per u32, k ascending from the low bits; `scales` as int4.
//!
//! File blocks that already hold these formats (Q8_0 for int8; Q4_0, Q4_1 for int4) are
//! repacked without touching a value, so the GPU dequantises them to the same bits as
//! [`crate::quant::ggml::dequantize`]: every product `q * d` is exact in f32 (at most
//! 8 + 11 significant bits), so fused or separate multiply-add round identically. (One
//! difference in bits, none in value: a Q4_0 weight `(8 - 8) * d` with `d < 0` is -0.0 in
//! GGML and +0.0 here.)
//! Other sources are quantised per group by [`crate::quant::fit`] (on the GPU at load by
//! `shaders/quantize.wgsl`; this CPU path is its reference).

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::WeightFormat;
use crate::model::HostFormat;
use crate::quant::fit::{Fit, Quantizer, fit_group_weighted};
use crate::quant::ggml;

/// Weights per quantisation group (along k) of int8 and int4 (the GGML block size).
pub const GROUP: usize = 32;
/// Weights per group of int3 (chosen by measured error and perplexity, README).
pub const INT3_GROUP: usize = 32;
/// Weights per group of int2.
pub const INT2_GROUP: usize = 32;

/// Weights per quantisation group of an integer format (a multiple of 32).
pub fn group(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Int3 => INT3_GROUP,
        WeightFormat::Int2 => INT2_GROUP,
        _ => GROUP,
    }
}

/// Code bits per weight of an integer format (8 for the others).
pub fn bits(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::Int4 | WeightFormat::Int4Sym => 4,
        WeightFormat::Int3 => 3,
        WeightFormat::Int2 => 2,
        _ => 8,
    }
}

/// A packed matrix: `words` are bound at binding 1, `scales` at binding 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Quantised values, `[rows, k * bits / 32]` u32.
    pub words: Vec<u32>,
    /// Per-group f16 parameters packed in u32 (see the module docs).
    pub scales: Vec<u32>,
}

/// Whether blocks in `host` can be repacked into `gpu` without changing a value.
pub fn passthrough(gpu: WeightFormat, host: HostFormat) -> bool {
    matches!(
        (gpu, host),
        (WeightFormat::Int8, HostFormat::Q8_0)
            | (WeightFormat::Int4, HostFormat::Q4_0 | HostFormat::Q4_1)
            | (WeightFormat::Int4Sym, HostFormat::Q4_0)
    )
}

/// Accumulates row-concatenated parts of one matrix in an integer GPU format.
pub struct Packer {
    format: WeightFormat,
    words: Vec<u32>,
    /// f16 bits: one per group (int8, int4 symmetric) or `d, m` per group (the asymmetric
    /// formats).
    halves: Vec<u16>,
}

fn half_bits(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Packer {
    /// A packer for an integer `format` with room for `n` weights.
    pub fn new(format: WeightFormat, n: usize) -> Result<Packer> {
        if !format.has_scales() {
            return Err(Error::internal(format!("{format:?} is not a grouped integer format")));
        }
        let words = n * bits(format) as usize / 32;
        let halves = if format.one_scale_per_group() { n / GROUP } else { 2 * n / group(format) };
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
                    self.push_scale(half_bits(b, 0), 0);
                    self.words.extend(b[2..34].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
                HostFormat::Q4_0 | HostFormat::Q4_1 => {
                    let d = f16::from_bits(half_bits(b, 0));
                    let (m, qs) = if host == HostFormat::Q4_1 {
                        (f16::from_bits(half_bits(b, 2)), &b[4..20])
                    } else {
                        let m = f16::from_f32(-8.0 * d.to_f32());
                        // Only a stored minimum must hold -8 d (Int4Sym derives it in f32).
                        if !self.format.one_scale_per_group() && m.to_f32() != -8.0 * d.to_f32() {
                            return Err(Error::model(format!("Q4_0 scale {d} is too large for an f16 minimum")));
                        }
                        (m, &b[2..18])
                    };
                    self.push_scale(d.to_bits(), m.to_bits());
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

    /// Append f32 weights quantised per group by `quantizer`. x: `[n]`, n a multiple of
    /// the format's group.
    pub fn push_f32(&mut self, x: &[f32], quantizer: Quantizer) -> Result<()> {
        self.push_f32_weighted(x, None, quantizer)
    }

    /// [`Packer::push_f32`] with the importance of each input column, `imp`: `[cols]`
    /// (x: `[rows, cols]`, cols a multiple of the group).
    pub fn push_f32_weighted(&mut self, x: &[f32], imp: Option<&[f32]>, quantizer: Quantizer) -> Result<()> {
        let g = group(self.format);
        if !x.len().is_multiple_of(g)
            || imp.is_some_and(|c| !c.len().is_multiple_of(g) || !x.len().is_multiple_of(c.len()))
        {
            return Err(Error::internal(format!("{} weights are not whole groups of {g} and rows", x.len())));
        }
        if self.format == WeightFormat::Int4Sym {
            // Q4_0's own round-to-nearest (only tests and non-Q4_0 sources asked for this
            // layout come here: Q4_0 files pass through).
            return self.push_blocks(HostFormat::Q4_0, &ggml::quantize(HostFormat::Q4_0, x)?);
        }
        for (i, xs) in x.chunks_exact(g).enumerate() {
            let w = imp.map(|c| {
                let c0 = i * g % c.len();
                &c[c0..c0 + g]
            });
            self.push_fit(&fit_group_weighted(xs, w, bits(self.format), quantizer));
        }
        Ok(())
    }

    /// Append one group's f16 scale `d` and minimum `m` (only `d` where the format has one
    /// scale per group).
    fn push_scale(&mut self, d: u16, m: u16) {
        self.halves.push(d);
        if !self.format.one_scale_per_group() {
            self.halves.push(m);
        }
    }

    /// Append one fitted group.
    fn push_fit(&mut self, f: &Fit) {
        let q = |i: usize| f.q[i] as u32;
        match self.format {
            WeightFormat::Int8 => {
                self.push_scale(f.d, f.m);
                self.words.extend(
                    f.q.chunks_exact(4)
                        .map(|c| c.iter().enumerate().fold(0u32, |acc, (j, v)| acc | ((*v as u32 & 0xff) << (8 * j)))),
                );
            }
            WeightFormat::Int3 => {
                self.push_scale(f.d, f.m);
                for b in (0..f.q.len()).step_by(32) {
                    let lo = |h: usize| (0..16).fold(0u32, |acc, j| acc | ((q(b + 16 * h + j) & 3) << (2 * j)));
                    let hi = (0..32).fold(0u32, |acc, j| acc | ((q(b + j) >> 2) << j));
                    self.words.extend([lo(0), lo(1), hi]);
                }
            }
            _ => {
                // int4, int2: codes ascending from the low bits of each word.
                let b = bits(self.format) as usize;
                self.push_scale(f.d, f.m);
                for c in (0..f.q.len()).step_by(32 / b) {
                    self.words.push((0..32 / b).fold(0u32, |acc, j| acc | (q(c + j) << (b * j))));
                }
            }
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

/// Pack f32 weights (`[n]`, n a multiple of the group) into `format`.
pub fn pack_f32(format: WeightFormat, x: &[f32], quantizer: Quantizer) -> Result<Packed> {
    let mut p = Packer::new(format, x.len())?;
    p.push_f32(x, quantizer)?;
    Ok(p.finish())
}

/// CPU reference of the shaders' `load_w4`: the f32 weights of `n` packed values.
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
        WeightFormat::Int4 | WeightFormat::Int4Sym | WeightFormat::Int3 | WeightFormat::Int2 => {
            for i in 0..n {
                let g = i / group(format);
                let (d, m) = if format == WeightFormat::Int4Sym {
                    let d = half(g / 2, g % 2)?;
                    (d, -8.0 * d)
                } else {
                    (half(g, 0)?, half(g, 1)?)
                };
                let q = match format {
                    WeightFormat::Int4 | WeightFormat::Int4Sym => (word(i / 8)? >> (4 * (i % 8))) & 0x0f,
                    WeightFormat::Int2 => (word(i / 16)? >> (2 * (i % 16))) & 3,
                    _ => {
                        let (b, j) = (i / 32, i % 32);
                        let lo = (word(3 * b + j / 16)? >> (2 * (j % 16))) & 3;
                        lo | (((word(3 * b + 2)? >> j) & 1) << 2)
                    }
                };
                out.push(q as f32 * d + m);
            }
        }
        other => return Err(Error::internal(format!("{other:?} is not a grouped integer format"))),
    }
    Ok(out)
}

/// The weights the CPU reference gives for f32 `x` in `format` (every format).
pub fn quantize_dequantize(format: WeightFormat, x: &[f32], quantizer: Quantizer) -> Result<Vec<f32>> {
    quantize_dequantize_weighted(format, x, None, quantizer)
}

/// [`quantize_dequantize`] with the error weights `imp` of each input column (`[cols]`,
/// x: `[rows, cols]`) for the integer formats.
pub fn quantize_dequantize_weighted(
    format: WeightFormat,
    x: &[f32],
    imp: Option<&[f32]>,
    quantizer: Quantizer,
) -> Result<Vec<f32>> {
    match format {
        WeightFormat::F32 => Ok(x.to_vec()),
        WeightFormat::F16 => Ok(x.iter().map(|v| f16::from_f32(*v).to_f32()).collect()),
        _ => {
            let mut p = Packer::new(format, x.len())?;
            p.push_f32_weighted(x, imp, quantizer)?;
            dequantize(format, &p.finish(), x.len())
        }
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
            (WeightFormat::Int4Sym, HostFormat::Q4_0),
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
    fn sizes_match_the_bits_per_weight_of_each_format() {
        let x = values(64 * 3, 1);
        let sizes = |f| {
            let p = pack_f32(f, &x, Quantizer::Rtn).expect("pack");
            (p.words.len(), p.scales.len())
        };
        assert_eq!(sizes(WeightFormat::Int8), (48, 3));
        assert_eq!(sizes(WeightFormat::Int4), (24, 6));
        assert_eq!(sizes(WeightFormat::Int4Sym), (24, 3));
        assert_eq!(sizes(WeightFormat::Int3), (18, 192 / INT3_GROUP));
        assert_eq!(sizes(WeightFormat::Int2), (12, 192 / INT2_GROUP));
    }

    #[test]
    fn every_code_unpacks_to_where_it_was_packed() {
        // Codes chosen per position (q = i mod levels) with d = 1, m = 0 come back exactly.
        for format in
            [WeightFormat::Int8, WeightFormat::Int4, WeightFormat::Int4Sym, WeightFormat::Int3, WeightFormat::Int2]
        {
            let g = group(format);
            let levels = if format == WeightFormat::Int8 { 255 } else { 1 << bits(format) };
            let mut p = Packer::new(format, 4 * g).expect("packer");
            let mut want = Vec::new();
            for gi in 0..4 {
                let q: Vec<i32> = (0..g)
                    .map(|i| {
                        let v = ((i * 7 + gi * 3) % levels) as i32;
                        if format == WeightFormat::Int8 { v - 127 } else { v }
                    })
                    .collect();
                // Int4Sym has no minimum: its weights are q - 8.
                let m = if format == WeightFormat::Int4Sym { -8.0 } else { 0.0 };
                want.extend(q.iter().map(|v| *v as f32 + m));
                p.push_fit(&Fit { d: f16::ONE.to_bits(), m: 0, q });
            }
            let got = dequantize(format, &p.finish(), 4 * g).expect("dequantize");
            assert_eq!(got, want, "{format:?}");
        }
    }

    #[test]
    fn round_to_nearest_error_is_within_half_a_step() {
        let x = values(32 * 16, 3);
        for (format, levels) in [
            (WeightFormat::Int8, 254.0),
            (WeightFormat::Int4, 15.0),
            (WeightFormat::Int4Sym, 16.0),
            (WeightFormat::Int3, 7.0),
            (WeightFormat::Int2, 3.0),
        ] {
            let y = quantize_dequantize(format, &x, Quantizer::Rtn).expect("round trip");
            // Q4_0's grid reaches -8 d but only +7 d: the far end of the range can be a whole
            // step from its code.
            let reach = if format == WeightFormat::Int4Sym { 1.01 } else { 0.51 };
            for (gx, gy) in x.chunks(group(format)).zip(y.chunks(group(format))) {
                let range = gx.iter().fold(0f32, |a, v| a.max(v.abs())) * 2.0;
                let step = range / levels;
                for (a, b) in gx.iter().zip(gy) {
                    assert!((a - b).abs() <= step * reach + 4e-3, "{format:?}: {a} -> {b}");
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
