//! Weight formats: CPU reference (de)quantisation of file blocks and of GPU formats, and
//! the load-time quantiser (CPU reference and GPU driver).

pub mod calibrate;
pub mod fit;
pub mod ggml;
pub mod gpu_formats;
pub mod kept;
pub mod on_gpu;
