//! Inference on the CPU in WebAssembly SIMD (scalar natively), for devices whose only
//! WebGPU adapter is a software rasteriser: SwiftShader and lavapipe run our kernels
//! through generated code that is 4-8x slower than a direct int4 x int8 dot product
//! (DESIGN.md §6). Chosen by the config's `device`.
//!
//! Single-threaded: wasm threads need cross-origin isolation and a nightly toolchain.

mod engine;
pub mod kernels;
mod model;

pub use engine::CpuEngine;
pub use model::CpuModel;
