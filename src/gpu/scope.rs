//! GPU error scopes: work that may be refused by the GPU (the allocations of a load, the
//! submissions of a generation) runs between `push_error_scope` and `pop_error_scope`, so
//! a refusal becomes a coded [`Error`] at the place it happened instead of a later crash.

use super::Gpu;
use crate::error::{Error, Result};

/// An out-of-memory scope inside a validation scope, pushed by [`Gpu::scopes`].
pub struct Scopes {
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl Gpu {
    /// Starts catching out-of-memory and validation errors of this thread's GPU calls.
    pub fn scopes(&self) -> Scopes {
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        Scopes { validation, oom }
    }
}

impl Scopes {
    /// Pops both scopes (innermost first). An out-of-memory error is `memory_pressure`:
    /// the GPU could not hold the buffers, and a smaller configuration may fit. A
    /// validation error while loading is `model_loading_error`: the model's buffers or
    /// kernels break a device limit, which no retry fixes.
    pub async fn check_load(self, what: &str) -> Result<()> {
        let (oom, validation) = self.pop().await;
        if let Some(e) = oom {
            return Err(Error::MemoryPressure(format!(
                "the GPU is out of memory while {what} ({e}): choose a smaller quantization (int8, int4), a \
                 smaller max_kv_cache_mb or conservative_memory"
            )));
        }
        if let Some(e) = validation {
            return Err(Error::model(format!(
                "the GPU rejected a buffer or kernel while {what} (validation error: {e}); the model does not \
                 fit this device's limits"
            )));
        }
        Ok(())
    }

    async fn pop(self) -> (Option<wgpu::Error>, Option<wgpu::Error>) {
        // Popping takes effect at once; the futures only deliver what was caught.
        let oom = self.oom.pop();
        let validation = self.validation.pop();
        (oom.await, validation.await)
    }
}

/// A GPU error reported while a generation ran ends that request as `internal_error`:
/// the engine submitted work the GPU refused, which is a bug, not the caller's fault.
pub fn in_generation(e: Error) -> Error {
    match e {
        Error::Gpu(msg) => Error::internal(format!("GPU error during generation: {msg}")),
        other => other,
    }
}
