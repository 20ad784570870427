//! Model sources (GGUF files, Hugging Face folders), hyper-parameters and the forward pass.

pub mod convert;
pub mod gguf;
pub mod gguf_write;
pub mod hparams;
pub mod kv_cache;
pub mod llama;
pub mod open;
pub mod reference;
pub mod safetensors;
pub mod source;
pub mod upload;

pub use hparams::{Arch, ModelConfig, RopeLayout, RopeScaling};
pub use open::open_path;
pub use source::{Blob, HostFormat, HostTensor, ModelSource, WeightName};
