//! KV-cache storage formats: how `shaders/kv_cache.wgsl` stores one row of `n_kv * hd`
//! values (selected by the `MAIN_FMT` / `RING_FMT` override constants).

/// The prelude of the kernels that read or write the KV cache.
pub(crate) const KV_PRELUDE: &str = include_str!("../../shaders/kv_cache.wgsl");
/// RoPE and the cache-format stores (after [`KV_PRELUDE`]), for the kernels that write the cache.
pub(crate) const KV_WRITE: &str = include_str!("../../shaders/kv_write.wgsl");

/// Storage of a KV row on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvFormat {
    /// One f32 per value.
    F32,
    /// f16 packed two per u32 (no shader-f16 needed).
    F16,
    /// Signed bytes four per u32, then one f32 scale (max |x|) per head.
    Int8,
}

impl KvFormat {
    /// The `MAIN_FMT` / `RING_FMT` value.
    fn code(self) -> f64 {
        match self {
            KvFormat::F32 => 0.0,
            KvFormat::F16 => 1.0,
            KvFormat::Int8 => 2.0,
        }
    }

    /// u32 words of one row of `n_kv` heads of `hd` values (`hd % 4 == 0`).
    pub fn row_words(self, n_kv: usize, hd: usize) -> usize {
        let n = n_kv * hd;
        match self {
            KvFormat::F32 => n,
            KvFormat::F16 => n / 2,
            KvFormat::Int8 => n / 4 + n_kv,
        }
    }

    /// Name used in stats.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::Int8 => "int8",
        }
    }
}

/// The formats of the main store and of the recent ring (progressive; unused otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvFormats {
    pub main: KvFormat,
    pub ring: KvFormat,
}

impl KvFormats {
    /// One format for everything (no ring).
    pub fn plain(f: KvFormat) -> Self {
        KvFormats { main: f, ring: f }
    }

    pub(crate) fn main_constant(self) -> (&'static str, f64) {
        ("MAIN_FMT", self.main.code())
    }

    pub(crate) fn ring_constant(self) -> (&'static str, f64) {
        ("RING_FMT", self.ring.code())
    }
}

/// CPU reference of a row's storage (`n_kv` heads of `hd` values): the words the kernels
/// write, rounding as they do (f16 round-to-nearest-even; int8 `round(127 x / max|x|)`).
pub fn encode_row(f: KvFormat, values: &[f32], n_kv: usize, hd: usize) -> Vec<u32> {
    match f {
        KvFormat::F32 => values.iter().map(|v| v.to_bits()).collect(),
        KvFormat::F16 => values
            .chunks_exact(2)
            .map(|p| {
                u32::from(half::f16::from_f32(p[0]).to_bits()) | (u32::from(half::f16::from_f32(p[1]).to_bits()) << 16)
            })
            .collect(),
        KvFormat::Int8 => {
            let scales: Vec<f32> =
                values.chunks_exact(hd).map(|h| h.iter().fold(0.0f32, |m, v| m.max(v.abs()))).collect();
            let mut out: Vec<u32> = values
                .chunks_exact(4)
                .enumerate()
                .map(|(i, q)| {
                    let s = scales[i * 4 / hd];
                    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                    q.iter().enumerate().fold(0u32, |w, (b, v)| {
                        let byte = ((v * inv).clamp(-1.0, 1.0) * 127.0).round() as i8 as u8;
                        w | (u32::from(byte) << (8 * b))
                    })
                })
                .collect();
            out.extend(scales.iter().map(|s| s.to_bits()));
            debug_assert_eq!(out.len(), f.row_words(n_kv, hd));
            out
        }
    }
}

/// The values a stored row reads back as (inverse of [`encode_row`]).
pub fn decode_row(f: KvFormat, words: &[u32], n_kv: usize, hd: usize) -> Vec<f32> {
    let n = n_kv * hd;
    match f {
        KvFormat::F32 => words[..n].iter().map(|w| f32::from_bits(*w)).collect(),
        KvFormat::F16 => words[..n / 2]
            .iter()
            .flat_map(|w| [half::f16::from_bits(*w as u16).to_f32(), half::f16::from_bits((*w >> 16) as u16).to_f32()])
            .collect(),
        KvFormat::Int8 => (0..n)
            .map(|i| {
                let byte = (words[i / 4] >> (8 * (i % 4))) as u8 as i8;
                let scale = f32::from_bits(words[n / 4 + i / hd]);
                (f32::from(byte) / 127.0).max(-1.0) * scale
            })
            .collect(),
    }
}
