//! Weight upload: host tensors (any file format) -> GPU matrices in the requested format.
//! Fused matrices (QKV, gate|up) are concatenated by rows here, once, at load.

use std::borrow::Cow;
use std::cell::Cell;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, WeightFormat};
use crate::model::{HostFormat, HostTensor, ModelSource, WeightName};
use crate::quant::fit::Quantizer;
use crate::quant::on_gpu::{GpuQuantizer, code_words, scale_words};
use crate::quant::{gpu_formats, kept};

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
    /// int3 / int2: the kept columns' table and weights of these rows (binding 17,
    /// `quant::kept`).
    pub kept: Option<wgpu::Buffer>,
    pub row0: u32,
    pub rows: u32,
}

impl MatrixShard {
    /// The buffers a matrix kernel binds: `(1, weights)` and, for the integer formats,
    /// `(2, scales)`, for int3 / int2 `(17, kept columns)`.
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        let mut v = vec![(1, &self.buf)];
        if let Some(s) = &self.scales {
            v.push((2, s));
        }
        if let Some(k) = &self.kept {
            v.push((17, k));
        }
        v
    }
}

impl GpuMatrix {
    /// Bytes allocated on the GPU (scales and kept columns included).
    pub fn bytes(&self) -> u64 {
        let size = |b: &Option<wgpu::Buffer>| b.as_ref().map_or(0, |b| b.size());
        self.shards.iter().map(|s| s.buf.size() + size(&s.scales) + size(&s.kept)).sum()
    }

    /// The bindings of the first shard (the whole matrix unless it was sharded).
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        self.shards.first().map(|s| s.bindings()).unwrap_or_default()
    }
}

/// The format a matrix of width `cols` is stored in when `format` is asked for: the
/// integer formats quantise groups along a row, so int3 / int2 fall back to int4 for widths
/// that are not whole groups, and every integer format to fp16 for widths that are not a
/// multiple of 32 (which shows in the measured model memory).
pub fn matrix_format(format: WeightFormat, cols: usize) -> WeightFormat {
    if !format.has_scales() || cols.is_multiple_of(gpu_formats::group(format)) {
        format
    } else if cols.is_multiple_of(gpu_formats::GROUP) {
        WeightFormat::Int4
    } else {
        WeightFormat::F16
    }
}

/// The format of the token embedding and lm_head when `format` is asked for and the file
/// holds them in `host`: int8 or better (they are the most sensitive matrices; llama.cpp's
/// Q4 files keep them at Q8_0 too), except that 4-bit blocks in the file pass through
/// as int4 rather than being re-quantised.
pub fn embedding_format(format: WeightFormat, host: HostFormat) -> WeightFormat {
    match format {
        WeightFormat::Int4 | WeightFormat::Int3 | WeightFormat::Int2 => {
            if gpu_formats::passthrough(WeightFormat::Int4, host) { WeightFormat::Int4 } else { WeightFormat::Int8 }
        }
        other => other,
    }
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
/// The integer formats are quantised on the CPU (`quant: None`) or the GPU.
pub fn upload_matrix_with(
    gpu: &Gpu,
    quant: Option<&GpuQuantizer>,
    label: &str,
    parts: &[&[f32]],
    cols: usize,
    format: WeightFormat,
) -> Result<GpuMatrix> {
    let parts: Vec<Part> = parts.iter().map(|p| Part::F32(p)).collect();
    let ms = Cell::new(0.0);
    let q = Quant { gpu: quant, cpu: quant.map_or(Quantizer::default(), |q| q.quantizer), ms: &ms, imp: None, kept: 0 };
    upload_parts(gpu, q, label, &parts, cols, format, 0)
}

/// [`upload_matrix_with`] quantising on the GPU with the default quantiser.
pub fn upload_matrix(gpu: &Gpu, label: &str, parts: &[&[f32]], cols: usize, format: WeightFormat) -> Result<GpuMatrix> {
    let kernels = crate::gpu::Kernels::default();
    let q = GpuQuantizer::new(gpu, &kernels, Quantizer::default());
    upload_matrix_with(gpu, Some(&q), label, parts, cols, format)
}

/// Where the integer formats are quantised: on the GPU when `gpu` is set, else on the CPU
/// with `cpu`; `ms` adds up the time of every matrix that was quantised (file blocks
/// dequantised to f32, quantisation and, on the GPU, its completion).
#[derive(Clone, Copy)]
pub struct Quant<'a, 'b> {
    pub gpu: Option<&'a GpuQuantizer<'b>>,
    pub cpu: Quantizer,
    pub ms: &'a Cell<f64>,
    /// Error weight of each input column (`[cols]`, `quant::calibrate`) for int3 / int2;
    /// None: the fit's own weights `mean|x| + |x_i|`.
    pub imp: Option<&'a [f32]>,
    /// Columns of largest `imp` whose weights int3 / int2 keep at f16 (`quant::kept`).
    pub kept: usize,
}

/// Upload row-concatenated tensors `parts` (each `[rows_i, cols]`, any file format) as
/// one matrix. A part whose blocks already hold the requested integer format (Q8_0 for
/// int8, Q4_0/Q4_1 for int4) is repacked bit-exactly; others are dequantised and, for
/// the integer formats, re-quantised (on the CPU here).
pub fn upload_tensors(
    gpu: &Gpu,
    label: &str,
    parts: &[&HostTensor],
    cols: usize,
    format: WeightFormat,
) -> Result<GpuMatrix> {
    let ms = Cell::new(0.0);
    let q = Quant { gpu: None, cpu: Quantizer::default(), ms: &ms, imp: None, kept: 0 };
    upload_tensors_sharded(gpu, q, label, parts, cols, format, 0)
}

/// [`upload_tensors`] with row shards of at most `max_binding` bytes each (0: the
/// adapter's storage-binding limit), for browsers whose limit is below a weight's size
/// (Firefox: 128 MiB).
pub fn upload_tensors_sharded(
    gpu: &Gpu,
    quant: Quant,
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
    upload_parts(gpu, quant, label, &parts, cols, format, max_binding)
}

fn upload_parts(
    gpu: &Gpu,
    quant: Quant,
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
    // Q4_0 blocks keep their own layout (no minimum: 4.5 bits per weight, not 5) when every
    // part holds them; the products are the same bits.
    let all_q4_0 = parts.iter().all(|p| matches!(p, Part::Host(t) if t.format == HostFormat::Q4_0));
    let format = if format == WeightFormat::Int4 && all_q4_0 { WeightFormat::Int4Sym } else { format };
    // The calibrated weights are for the low-bit formats (quant::calibrate::for_load).
    let low_bit = matches!(format, WeightFormat::Int3 | WeightFormat::Int2);
    let quant = Quant { imp: quant.imp.filter(|_| low_bit), ..quant };
    // Their kept columns leave the groups before the fit (and the fit's weights).
    let kept_cols = kept::columns(quant.imp, quant.kept);
    let Taken { owned, values: kept_values, fit_imp } = take_kept(parts, cols, &kept_cols, format, quant)?;
    let taken: Vec<Part> = owned.iter().map(|v| Part::F32(v)).collect();
    let parts = if kept_cols.is_empty() { parts } else { &taken[..] };
    let quant = Quant { imp: fit_imp.as_deref().or(quant.imp), ..quant };
    let with_kept = |m: GpuMatrix| -> Result<GpuMatrix> {
        if low_bit { attach_kept(gpu, m, &kept_cols, &kept_values) } else { Ok(m) }
    };
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
        _ => code_words(format, cols) * 4,
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
        _ => {
            let passes = |p: &Part| matches!(p, Part::Host(t) if gpu_formats::passthrough(format, t.format));
            // The GPU writes whole scale words per unit: int8 rows must hold whole pairs of groups.
            // (The kernel has no Int4Sym: its f32 parts, in tests, go through the CPU reference.)
            let aligned = format != WeightFormat::Int4Sym
                && (format != WeightFormat::Int8 || cols.is_multiple_of(2 * gpu_formats::GROUP));
            let t0 = web_time::Instant::now();
            let timed = |m: Result<GpuMatrix>| {
                quant.ms.set(quant.ms.get() + t0.elapsed().as_secs_f64() * 1e3);
                m
            };
            if let Some(q) = quant.gpu.filter(|_| aligned && !parts.iter().all(passes)) {
                let imp = quant.imp;
                let m = upload_quantized_on_gpu(gpu, q, label, parts, rows, cols, format, shard_rows, imp);
                return timed(m).and_then(with_kept);
            }
            let mut packer = gpu_formats::Packer::new(format, total)?;
            for p in parts {
                match p {
                    Part::Host(t) if passes(p) => packer.push_blocks(t.format, &t.bytes)?,
                    _ => packer.push_f32_weighted(&p.to_f32()?, quant.imp, quant.cpu)?,
                }
            }
            let packed = packer.finish();
            if !parts.iter().all(passes) {
                quant.ms.set(quant.ms.get() + t0.elapsed().as_secs_f64() * 1e3);
            }
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
        shards.push(MatrixShard { buf, scales, kept: None, row0: to_u32(r0)?, rows: to_u32(r1 - r0)? });
    }
    with_kept(GpuMatrix {
        shards,
        rows: u32::try_from(rows).map_err(|_| Error::model("too many rows"))?,
        cols: u32::try_from(cols).map_err(|_| Error::model("too many columns"))?,
        format,
    })
}

/// A matrix's parts with its kept columns taken out (`quant::kept`).
#[derive(Default)]
struct Taken {
    /// The parts as f32, each kept weight replaced by its group's mean.
    owned: Vec<Vec<f32>>,
    /// The kept weights' f16 bits, `[rows, K]`.
    values: Vec<u16>,
    /// The fit's error weights, `[cols]`: the importance with the kept columns at 0.
    fit_imp: Option<Vec<f32>>,
}

/// Takes the kept columns out of `parts` (timed into `quant.ms`); nothing when none is kept.
fn take_kept(parts: &[Part], cols: usize, kept_cols: &[usize], format: WeightFormat, quant: Quant) -> Result<Taken> {
    if kept_cols.is_empty() {
        return Ok(Taken::default());
    }
    let t0 = web_time::Instant::now();
    let mut values = Vec::new();
    let mut owned = Vec::with_capacity(parts.len());
    for p in parts {
        let mut v = p.to_f32()?.into_owned();
        values.extend(kept::take(&mut v, cols, kept_cols, gpu_formats::group(format)));
        owned.push(v);
    }
    quant.ms.set(quant.ms.get() + t0.elapsed().as_secs_f64() * 1e3);
    Ok(Taken { owned, values, fit_imp: quant.imp.map(|imp| kept::fit_weights(imp, kept_cols)) })
}

/// Gives each shard of an int3 / int2 matrix its kept-column buffer (`quant::kept`; with
/// no kept columns, the table that says so, which the shaders still bind).
fn attach_kept(gpu: &Gpu, mut m: GpuMatrix, kept_cols: &[usize], values: &[u16]) -> Result<GpuMatrix> {
    let cols = m.cols as usize;
    for s in &mut m.shards {
        let (r0, r1) = (s.row0 as usize, (s.row0 + s.rows) as usize);
        let words = kept::words(cols, kept_cols, values, r0, r1)?;
        s.kept = Some(gpu.storage_init("kept columns", bytemuck::cast_slice(&words)));
    }
    Ok(m)
}

/// An integer matrix whose non-passthrough parts are quantised by the GPU kernel straight
/// into the shard buffers (passthrough parts are repacked on the CPU and written there).
#[allow(clippy::too_many_arguments)]
fn upload_quantized_on_gpu(
    gpu: &Gpu,
    q: &GpuQuantizer,
    label: &str,
    parts: &[Part],
    rows: usize,
    cols: usize,
    format: WeightFormat,
    shard_rows: usize,
    imp: Option<&[f32]>,
) -> Result<GpuMatrix> {
    let to_u32 = |v: usize| u32::try_from(v).map_err(|_| Error::model(format!("{label}: too many rows")));
    let (wpr, spr) = (code_words(format, cols), scale_words(format, cols));
    let mut shards = Vec::new();
    for r0 in (0..rows).step_by(shard_rows) {
        let r1 = (r0 + shard_rows).min(rows);
        let name = if shard_rows < rows { format!("{label}[{r0}..{r1}]") } else { label.to_string() };
        shards.push(MatrixShard {
            buf: gpu.storage(&name, ((r1 - r0) * wpr * 4) as u64),
            scales: Some(gpu.storage(&format!("{name}.scales"), ((r1 - r0) * spr * 4) as u64)),
            kept: None,
            row0: to_u32(r0)?,
            rows: to_u32(r1 - r0)?,
        });
    }
    let mut row = 0;
    for p in parts {
        let prows = p.len() / cols;
        let packed = match p {
            Part::Host(t) if gpu_formats::passthrough(format, t.format) => {
                let mut packer = gpu_formats::Packer::new(format, p.len())?;
                packer.push_blocks(t.format, &t.bytes)?;
                Some(packer.finish())
            }
            _ => None,
        };
        let values = if packed.is_none() { Some(p.to_f32()?) } else { None };
        for s in &shards {
            let (s0, s1) = (s.row0 as usize, (s.row0 + s.rows) as usize);
            let (a, b) = (row.max(s0), (row + prows).min(s1));
            if a >= b {
                continue;
            }
            let (w_off, s_off) = ((a - s0) * wpr, (a - s0) * spr);
            let scales = s.scales.as_ref().ok_or_else(|| Error::internal("integer shard without scales"))?;
            if let Some(pk) = &packed {
                let words = &pk.words[(a - row) * wpr..(b - row) * wpr];
                gpu.queue.write_buffer(&s.buf, (w_off * 4) as u64, bytemuck::cast_slice(words));
                let sc = &pk.scales[(a - row) * spr..(b - row) * spr];
                gpu.queue.write_buffer(scales, (s_off * 4) as u64, bytemuck::cast_slice(sc));
            } else if let Some(v) = &values {
                let v = &v[(a - row) * cols..(b - row) * cols];
                q.quantize(format, v, cols, imp, &s.buf, w_off, scales, s_off)?;
            }
        }
        row += prows;
    }
    Ok(GpuMatrix { shards, rows: to_u32(rows)?, cols: to_u32(cols)?, format })
}

/// Upload an f32 vector (norm weights, biases).
pub fn upload_vec(gpu: &Gpu, label: &str, v: &[f32]) -> wgpu::Buffer {
    gpu.storage_init(label, bytemuck::cast_slice(v))
}
