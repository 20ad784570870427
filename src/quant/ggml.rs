//! CPU dequantisation of GGML block formats (the reference the GPU kernels are tested against).

use crate::error::{Error, Result};
use crate::model::HostFormat;

/// Dequantise `n` elements stored in `format` from `bytes`.
pub fn dequantize(format: HostFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    match format {
        HostFormat::F32 => {
            if bytes.len() != n * 4 {
                return Err(Error::model("f32 tensor has the wrong byte length"));
            }
            Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        other => Err(Error::model(format!("dequantize {other:?}: not implemented yet"))),
    }
}
