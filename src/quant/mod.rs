//! Weight formats: CPU reference (de)quantisation of file blocks and of GPU formats.

pub mod ggml;
pub mod gpu_formats;
