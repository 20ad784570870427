//! The config's `device`: which engine runs a model, GPU ([`Engine`]) or CPU
//! ([`CpuEngine`]), and what the callers that serve either one (the browser class, the
//! protocol [`crate::protocol::Job`], the CLI) need of it ([`Backend`]). Batching, memory
//! pressure and device-loss recovery belong to the GPU engine alone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use super::{Engine, GenerateParams, Generation, GenerationStats, TokenEvent};
use crate::config::{Device, Quantization, SamplingParams, StreamingConfig};
use crate::cpu::CpuEngine;
use crate::error::{Error, Result};
use crate::model::ModelSource;
use crate::tokenizer::Tokenizer;

/// Weight precisions the CPU backend runs. `device: "auto"` picks the CPU only for these,
/// and `device: "cpu"` refuses the others before any weight is read.
pub const CPU_QUANTIZATIONS: &[Quantization] = &[Quantization::Int4, Quantization::Int8];

/// The device `device` means here: `adapter_is_cpu` is `None` without a WebGPU adapter,
/// else whether the adapter is a software rasteriser. Never returns [`Device::Auto`].
pub fn resolve_device(device: Device, quantization: Quantization, adapter_is_cpu: Option<bool>) -> Device {
    match (device, adapter_is_cpu) {
        (Device::Gpu | Device::Cpu, _) => device,
        // Without an adapter the CPU is the only way; its load explains an unsupported precision.
        (Device::Auto, None) => Device::Cpu,
        (Device::Auto, Some(true)) if CPU_QUANTIZATIONS.contains(&quantization) => Device::Cpu,
        (Device::Auto, Some(_)) => Device::Gpu,
    }
}

/// `Error::invalid` when the CPU backend does not run `config.quantization`.
pub fn check_cpu_quantization(config: &StreamingConfig) -> Result<()> {
    if CPU_QUANTIZATIONS.contains(&config.quantization) {
        return Ok(());
    }
    let names: Vec<&str> = CPU_QUANTIZATIONS.iter().map(|q| q.as_str()).collect();
    Err(Error::invalid(format!(
        "\"quantization\": \"{}\" does not run on the CPU (\"device\": \"cpu\", or \"auto\" without a hardware \
         GPU); the CPU runs {}: set \"quantization\" to one of them",
        config.quantization,
        names.join(" or ")
    )))
}

/// What serving a model needs of an engine, GPU or CPU.
pub trait Backend {
    /// The model's tokenizer.
    fn tokenizer(&self) -> &Tokenizer;
    /// The configuration the engine was loaded with.
    fn config(&self) -> &StreamingConfig;
    /// The model's name (from its metadata).
    fn model_name(&self) -> &str;
    /// The context length the engine serves (`init`'s `context_length`).
    fn context(&self) -> usize;
    /// Positions a generation may fill: prompt and generated tokens together.
    fn max_positions(&self) -> usize;
    /// The weights' format name.
    fn quantization_name(&self) -> &'static str;
    /// Per-call parameters from resolved sampling settings plus the config's deadlines.
    fn params_for(&self, p: &SamplingParams) -> GenerateParams;
    /// Generate from prompt ids; `on_token` as in [`Engine::generate`].
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> impl Future<Output = Result<Generation>>;
}

impl Backend for Engine {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn config(&self) -> &StreamingConfig {
        &self.options.config
    }
    fn model_name(&self) -> &str {
        &self.model.config.name
    }
    fn context(&self) -> usize {
        self.model.options.context
    }
    fn max_positions(&self) -> usize {
        self.model.kv_plan().max_positions
    }
    fn quantization_name(&self) -> &'static str {
        self.model.options.format.name()
    }
    fn params_for(&self, p: &SamplingParams) -> GenerateParams {
        Engine::params_for(self, p)
    }
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> impl Future<Output = Result<Generation>> {
        Engine::generate(self, prompt, params, on_token)
    }
}

impl Backend for CpuEngine {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn config(&self) -> &StreamingConfig {
        &self.config
    }
    fn model_name(&self) -> &str {
        &self.model.config.name
    }
    fn context(&self) -> usize {
        CpuEngine::context(self)
    }
    fn max_positions(&self) -> usize {
        CpuEngine::context(self)
    }
    fn quantization_name(&self) -> &'static str {
        CpuEngine::quantization_name(self)
    }
    fn params_for(&self, p: &SamplingParams) -> GenerateParams {
        CpuEngine::params_for(self, p)
    }
    fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> impl Future<Output = Result<Generation>> {
        CpuEngine::generate(self, prompt, params, on_token)
    }
}

/// A loaded model on either device. Boxed: the engines are large and of different sizes,
/// and the browser class moves one in and out of its cell for every generation.
pub enum AnyEngine {
    Gpu(Box<Engine>),
    Cpu(Box<CpuEngine>),
}

impl From<Engine> for AnyEngine {
    fn from(e: Engine) -> Self {
        AnyEngine::Gpu(Box::new(e))
    }
}

impl From<CpuEngine> for AnyEngine {
    fn from(e: CpuEngine) -> Self {
        AnyEngine::Cpu(Box::new(e))
    }
}

impl AnyEngine {
    /// Loads `src` on the CPU (the config's quantization checked first); `progress(done,
    /// total)` counts bytes of weights repacked.
    pub fn load_cpu(
        src: &dyn ModelSource,
        config: &StreamingConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<AnyEngine> {
        check_cpu_quantization(config)?;
        CpuEngine::load(src, config, progress).map(AnyEngine::from)
    }

    /// Which device runs it: [`Device::Gpu`] or [`Device::Cpu`].
    pub fn device(&self) -> Device {
        match self {
            AnyEngine::Gpu(_) => Device::Gpu,
            AnyEngine::Cpu(_) => Device::Cpu,
        }
    }

    /// The GPU engine, for what only it does (batching, memory pressure, profiling).
    pub fn gpu(&self) -> Option<&Engine> {
        match self {
            AnyEngine::Gpu(e) => Some(e),
            AnyEngine::Cpu(_) => None,
        }
    }

    /// [`AnyEngine::gpu`], mutably.
    pub fn gpu_mut(&mut self) -> Option<&mut Engine> {
        match self {
            AnyEngine::Gpu(e) => Some(&mut **e),
            AnyEngine::Cpu(_) => None,
        }
    }

    /// A flag that ends the running generation (`Cancelled`) when set.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        match self {
            AnyEngine::Gpu(e) => e.cancel_handle(),
            AnyEngine::Cpu(e) => e.cancel_handle(),
        }
    }

    /// Bytes of (weights, KV cache, activations): on the GPU, or in wasm memory.
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        match self {
            AnyEngine::Gpu(e) => e.memory_bytes(),
            AnyEngine::Cpu(e) => e.memory_bytes(),
        }
    }

    /// The stats object of DESIGN.md §4 plus `device` ("gpu" or "cpu").
    pub fn stats_json(&self, s: &GenerationStats) -> Value {
        let mut v = match self {
            AnyEngine::Gpu(e) => e.stats_json(s),
            AnyEngine::Cpu(e) => e.stats_json(s),
        };
        if let Value::Object(m) = &mut v {
            m.insert("device".into(), json!(self.device().as_str()));
        }
        v
    }
}

impl Backend for AnyEngine {
    fn tokenizer(&self) -> &Tokenizer {
        match self {
            AnyEngine::Gpu(e) => e.tokenizer(),
            AnyEngine::Cpu(e) => e.tokenizer(),
        }
    }
    fn config(&self) -> &StreamingConfig {
        match self {
            AnyEngine::Gpu(e) => Backend::config(&**e),
            AnyEngine::Cpu(e) => Backend::config(&**e),
        }
    }
    fn model_name(&self) -> &str {
        match self {
            AnyEngine::Gpu(e) => e.model_name(),
            AnyEngine::Cpu(e) => e.model_name(),
        }
    }
    fn context(&self) -> usize {
        match self {
            AnyEngine::Gpu(e) => Backend::context(&**e),
            AnyEngine::Cpu(e) => Backend::context(&**e),
        }
    }
    fn max_positions(&self) -> usize {
        match self {
            AnyEngine::Gpu(e) => e.max_positions(),
            AnyEngine::Cpu(e) => e.max_positions(),
        }
    }
    fn quantization_name(&self) -> &'static str {
        match self {
            AnyEngine::Gpu(e) => Backend::quantization_name(&**e),
            AnyEngine::Cpu(e) => Backend::quantization_name(&**e),
        }
    }
    fn params_for(&self, p: &SamplingParams) -> GenerateParams {
        match self {
            AnyEngine::Gpu(e) => e.params_for(p),
            AnyEngine::Cpu(e) => e.params_for(p),
        }
    }
    async fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Generation> {
        match self {
            AnyEngine::Gpu(e) => e.generate(prompt, params, on_token).await,
            AnyEngine::Cpu(e) => e.generate(prompt, params, on_token).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_and_cpu_are_taken_as_they_are() {
        for adapter in [None, Some(true), Some(false)] {
            for q in Quantization::ALL {
                assert_eq!(resolve_device(Device::Gpu, *q, adapter), Device::Gpu);
                assert_eq!(resolve_device(Device::Cpu, *q, adapter), Device::Cpu);
            }
        }
    }

    #[test]
    fn auto_picks_the_cpu_for_software_adapters_and_no_webgpu() {
        let int4 = Quantization::Int4;
        assert_eq!(resolve_device(Device::Auto, int4, Some(true)), Device::Cpu, "software rasteriser");
        assert_eq!(resolve_device(Device::Auto, Quantization::Int8, Some(true)), Device::Cpu);
        assert_eq!(resolve_device(Device::Auto, int4, None), Device::Cpu, "no WebGPU");
        assert_eq!(resolve_device(Device::Auto, int4, Some(false)), Device::Gpu, "a hardware GPU");
        // A precision only the GPU runs stays on a software adapter; without WebGPU the CPU's
        // load says what to change.
        assert_eq!(resolve_device(Device::Auto, Quantization::Fp16, Some(true)), Device::Gpu);
        assert_eq!(resolve_device(Device::Auto, Quantization::Fp16, None), Device::Cpu);
    }

    #[test]
    fn cpu_precisions_are_checked_with_a_code() {
        let cfg = |q| StreamingConfig { quantization: q, ..Default::default() };
        assert!(check_cpu_quantization(&cfg(Quantization::Int4)).is_ok());
        assert!(check_cpu_quantization(&cfg(Quantization::Int8)).is_ok());
        let e = check_cpu_quantization(&cfg(Quantization::Fp16)).unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("\"fp16\"") && e.to_string().contains("int4 or int8"), "{e}");
    }
}
