//! WebGPU Streaming Inference: run transformer language models on the user's GPU through
//! WebGPU (wgpu natively) and stream the tokens as they are produced.
//!
//! The native API: open a model with [`model::open_path`], build an [`engine::Engine`] on a
//! [`gpu::Gpu`], then call [`engine::Engine::generate`] with a callback per text piece.

pub mod browser;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod model;
pub mod protocol;
pub mod quant;
pub mod sampling;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod serve;
pub mod tokenizer;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
