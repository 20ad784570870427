//! Weight upload: host tensors (any file format) -> GPU matrices in the requested format.
//! Fused matrices (QKV, gate|up) are concatenated by rows here, once, at load.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, WeightFormat};
use crate::model::{HostTensor, ModelSource, WeightName};

/// A weight matrix on the GPU: `[rows, cols]`, row-major, in `format`.
pub struct GpuMatrix {
    pub buf: wgpu::Buffer,
    pub rows: u32,
    pub cols: u32,
    pub format: WeightFormat,
}

impl GpuMatrix {
    /// Bytes allocated on the GPU.
    pub fn bytes(&self) -> u64 {
        self.buf.size()
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

/// Upload row-concatenated matrices `parts` (each `[rows_i, cols]` f32) as one matrix.
pub fn upload_matrix(gpu: &Gpu, label: &str, parts: &[&[f32]], cols: usize, format: WeightFormat) -> Result<GpuMatrix> {
    if !cols.is_multiple_of(4) {
        return Err(Error::model(format!("{label}: width {cols} is not a multiple of 4")));
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if !total.is_multiple_of(cols) {
        return Err(Error::internal(format!("{label}: {total} values do not fill rows of {cols}")));
    }
    let rows = total / cols;
    if u64::try_from(total).unwrap_or(u64::MAX) as f64 * format.bytes_per_weight() > gpu.caps.max_storage_binding as f64
    {
        return Err(Error::model(format!(
            "{label}: {rows}x{cols} exceeds the adapter's storage binding limit of {} bytes",
            gpu.caps.max_storage_binding
        )));
    }
    let bytes: Vec<u8> = match format {
        WeightFormat::F32 => {
            let mut v = Vec::with_capacity(total * 4);
            for p in parts {
                v.extend_from_slice(bytemuck::cast_slice(p));
            }
            v
        }
        WeightFormat::F16 => {
            let mut v = Vec::with_capacity(total * 2);
            for p in parts {
                for x in p.iter() {
                    v.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
                }
            }
            v
        }
    };
    let buf = gpu.storage_init(label, &bytes);
    Ok(GpuMatrix {
        buf,
        rows: u32::try_from(rows).map_err(|_| Error::model("too many rows"))?,
        cols: u32::try_from(cols).map_err(|_| Error::model("too many columns"))?,
        format,
    })
}

/// Upload an f32 vector (norm weights, biases).
pub fn upload_vec(gpu: &Gpu, label: &str, v: &[f32]) -> wgpu::Buffer {
    gpu.storage_init(label, bytemuck::cast_slice(v))
}
