//! Weight upload: host tensors (any file format) -> GPU matrices in the requested format.
//! Fused matrices (QKV, gate|up) are concatenated by rows here, once, at load.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, WeightFormat};
use crate::model::{HostFormat, HostTensor, ModelSource, WeightName};
use crate::quant::gpu_formats;

/// A weight matrix on the GPU: `[rows, cols]`, row-major, in `format`.
pub struct GpuMatrix {
    /// Row ranges, each within the storage-binding limit (one shard for most matrices).
    pub shards: Vec<MatrixShard>,
    pub rows: u32,
    pub cols: u32,
    pub format: WeightFormat,
}

/// Rows `row0 .. row0 + rows` of a matrix in their own buffers.
pub struct MatrixShard {
    pub buf: wgpu::Buffer,
    /// Per-group scales (binding 2) of the integer formats.
    pub scales: Option<wgpu::Buffer>,
    pub row0: u32,
    pub rows: u32,
}

impl MatrixShard {
    /// The buffers a matrix kernel binds: `(1, weights)` and, for the integer formats,
    /// `(2, scales)`.
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        let mut v = vec![(1, &self.buf)];
        if let Some(s) = &self.scales {
            v.push((2, s));
        }
        v
    }
}

impl GpuMatrix {
    /// Bytes allocated on the GPU (scales included).
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.buf.size() + s.scales.as_ref().map_or(0, |b| b.size())).sum()
    }

    /// The bindings of the first shard (the whole matrix unless it was sharded).
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        self.shards.first().map(|s| s.bindings()).unwrap_or_default()
    }
}

/// The format a matrix of width `cols` is stored in when `format` is asked for: the
/// integer formats quantise groups of 32 along a row, so other widths fall back to fp16
/// (which shows in the measured model memory).
pub fn matrix_format(format: WeightFormat, cols: usize) -> WeightFormat {
    if format.has_scales() && !cols.is_multiple_of(gpu_formats::GROUP) { WeightFormat::F16 } else { format }
}

/// The format of the token embedding and lm_head when `format` is asked for and the file
/// holds them in `host`: int8 or better (they are the most sensitive matrices; llama.cpp's
/// Q4 files keep them at Q8_0 too), except that 4-bit blocks in the file pass through
/// as int4 rather than being re-quantised.
pub fn embedding_format(format: WeightFormat, host: HostFormat) -> WeightFormat {
    if format == WeightFormat::Int4 && !gpu_formats::passthrough(format, host) { WeightFormat::Int8 } else { format }
}

/// Fetch a required tensor, checking its shape.
pub fn required<'a>(src: &'a dyn ModelSource, name: WeightName, shape: &[usize]) -> Result<HostTensor<'a>> {
    let t = src.tensor(name)?.ok_or_else(|| Error::model(format!("missing tensor {}", name.gguf_name())))?;
    if t.shape != shape {
        return Err(Error::model(format!("tensor {} has shape {:?}, expected {:?}", t.name, t.shape, shape)));
    }
    Ok(t)
}

/// Dequantised f32 data of a required tensor.
pub fn required_f32(src: &dyn ModelSource, name: WeightName, shape: &[usize]) -> Result<Vec<f32>> {
    required(src, name, shape)?.to_f32()
}

/// One row block of a matrix being uploaded.
enum Part<'a> {
    F32(&'a [f32]),
    Host(&'a HostTensor<'a>),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::F32(v) => v.len(),
            Part::Host(t) => t.numel(),
        }
    }

    fn to_f32(&self) -> Result<Cow<'_, [f32]>> {
        match self {
            Part::F32(v) => Ok(Cow::Borrowed(v)),
            Part::Host(t) => Ok(Cow::Owned(t.to_f32()?)),
        }
    }
}

/// Upload row-concatenated matrices `parts` (each `[rows_i, cols]` f32) as one matrix.
/// The integer formats are quantised round-to-nearest on the CPU.
pub fn upload_matrix(gpu: &Gpu, label: &str, parts: &[&[f32]], cols: usize, format: WeightFormat) -> Result<GpuMatrix> {
    let parts: Vec<Part> = parts.iter().map(|p| Part::F32(p)).collect();
    upload_parts(gpu, label, &parts, cols, format, 0)
}

/// Upload row-concatenated tensors `parts` (each `[rows_i, cols]`, any file format) as
/// one matrix. A part whose blocks already hold the requested integer format (Q8_0 for
/// int8, Q4_0/Q4_1 for int4) is repacked bit-exactly; others are dequantised and, for
/// the integer formats, re-quantised round-to-nearest on the CPU.
pub fn upload_tensors(
    gpu: &Gpu,
    label: &str,
    parts: &[&HostTensor],
    cols: usize,
    format: WeightFormat,
) -> Result<GpuMatrix> {
    upload_tensors_sharded(gpu, label, parts, cols, format, 0)
}

/// [`upload_tensors`] with row shards of at most `max_binding` bytes each (0: the
/// adapter's storage-binding limit), for browsers whose limit is below a weight's size
/// (Firefox: 128 MiB).
pub fn upload_tensors_sharded(
    gpu: &Gpu,
    label: &str,
    parts: &[&HostTensor],
    cols: usize,
    format: WeightFormat,
    max_binding: u64,
) -> Result<GpuMatrix> {
    for t in parts {
        if t.rows_cols().1 != cols {
            return Err(Error::model(format!("{label}: tensor {} {:?} is not {cols} wide", t.name, t.shape)));
        }
    }
    let parts: Vec<Part> = parts.iter().map(|t| Part::Host(t)).collect();
    upload_parts(gpu, label, &parts, cols, format, max_binding)
}

fn upload_parts(
    gpu: &Gpu,
    label: &str,
    parts: &[Part],
    cols: usize,
    format: WeightFormat,
    max_binding: u64,
) -> Result<GpuMatrix> {
    if !cols.is_multiple_of(4) {
        return Err(Error::model(format!("{label}: width {cols} is not a multiple of 4")));
    }
    let format = matrix_format(format, cols);
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if !total.is_multiple_of(cols) {
        return Err(Error::internal(format!("{label}: {total} values do not fill rows of {cols}")));
    }
    let rows = total / cols;
    let limit =
        if max_binding == 0 { gpu.caps.max_storage_binding } else { max_binding.min(gpu.caps.max_storage_binding) };
    let row_bytes = match format {
        WeightFormat::F32 => cols * 4,
        WeightFormat::F16 => cols * 2,
        WeightFormat::Int8 => cols,
        WeightFormat::Int4 => cols / 2,
    } as u64;
    // Shards hold an even number of rows, so that int8's two scales per word never straddle.
    let shard_rows = ((limit / row_bytes.max(1)) as usize / 2 * 2).min(rows.max(1));
    if shard_rows == 0 {
        return Err(Error::model(format!(
            "{label}: one row of {cols} weights exceeds the storage binding limit of {limit} bytes"
        )));
    }
    let (bytes, scales): (Vec<u8>, Option<Vec<u32>>) = match format {
        WeightFormat::F32 => {
            let mut v = Vec::with_capacity(total * 4);
            for p in parts {
                v.extend_from_slice(bytemuck::cast_slice(&p.to_f32()?));
            }
            (v, None)
        }
        WeightFormat::F16 => {
            let mut v = Vec::with_capacity(total * 2);
            for p in parts {
                for x in p.to_f32()?.iter() {
                    v.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
                }
            }
            (v, None)
        }
        WeightFormat::Int8 | WeightFormat::Int4 => {
            let mut packer = gpu_formats::Packer::new(format, total)?;
            for p in parts {
                match p {
                    Part::Host(t) if gpu_formats::passthrough(format, t.format) => {
                        packer.push_blocks(t.format, &t.bytes)?
                    }
                    _ => packer.push_f32(&p.to_f32()?)?,
                }
            }
            let packed = packer.finish();
            (bytemuck::cast_slice(&packed.words).to_vec(), Some(packed.scales))
        }
    };
    let to_u32 = |v: usize| u32::try_from(v).map_err(|_| Error::model(format!("{label}: too many rows")));
    let scale_words_per_row = scales.as_ref().map_or(0.0, |s| s.len() as f64 / rows.max(1) as f64);
    let mut shards = Vec::new();
    for r0 in (0..rows).step_by(shard_rows) {
        let r1 = (r0 + shard_rows).min(rows);
        let name = if shard_rows < rows { format!("{label}[{r0}..{r1}]") } else { label.to_string() };
        let buf = gpu.storage_init(&name, &bytes[r0 * row_bytes as usize..r1 * row_bytes as usize]);
        let scales = scales.as_ref().map(|s| {
            let w0 = (r0 as f64 * scale_words_per_row).round() as usize;
            let w1 = ((r1 as f64 * scale_words_per_row).ceil() as usize).min(s.len());
            gpu.storage_init(&format!("{name}.scales"), bytemuck::cast_slice(&s[w0..w1]))
        });
        shards.push(MatrixShard { buf, scales, row0: to_u32(r0)?, rows: to_u32(r1 - r0)? });
    }
    Ok(GpuMatrix {
        shards,
        rows: u32::try_from(rows).map_err(|_| Error::model("too many rows"))?,
        cols: u32::try_from(cols).map_err(|_| Error::model("too many columns"))?,
        format,
    })
}

/// Upload an f32 vector (norm weights, biases).
pub fn upload_vec(gpu: &Gpu, label: &str, v: &[f32]) -> wgpu::Buffer {
    gpu.storage_init(label, bytemuck::cast_slice(v))
}
