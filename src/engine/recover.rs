//! Loading under GPU error scopes, and recovery from a lost device: a new adapter and
//! device, and the same model rebuilt on it from the kept source with the same options.

use super::{Engine, EngineOptions};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::ModelSource;

impl Engine {
    /// [`Engine::load_with_progress`] inside out-of-memory and validation error scopes: an
    /// allocation the GPU refuses (weights, KV cache, activations, staging) is reported as
    /// `memory_pressure` or `model_loading_error` here, not as a failure of a later call.
    pub async fn load_checked(
        gpu: Gpu,
        src: &dyn ModelSource,
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Engine> {
        let scopes = gpu.scopes();
        let loaded = Self::load_with_progress(gpu, src, options, progress);
        // A refused allocation often makes the load fail later for another reason: the
        // scope's error names the cause, so it wins.
        scopes.check_load("loading the model").await?;
        loaded
    }

    /// Rebuilds this engine on a new device after the old one was lost (or destroyed):
    /// `src` must be the source it was loaded from. The options resolved at the first load
    /// are reused, so the new engine runs the same kernels and gives the same greedy output.
    pub async fn recover(&mut self, src: &dyn ModelSource) -> Result<()> {
        let gpu = Gpu::new().await?;
        let fresh = Self::load_checked(gpu, src, self.options.clone(), &mut |_, _| {}).await?;
        *self = fresh;
        Ok(())
    }
}
