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
        load_outcome(what, oom, validation)
    }

    async fn pop(self) -> (Option<wgpu::Error>, Option<wgpu::Error>) {
        // Popping takes effect at once; the futures only deliver what was caught.
        let oom = self.oom.pop();
        let validation = self.validation.pop();
        (oom.await, validation.await)
    }
}

/// What the two scopes of a load caught, as the load's result (see [`Scopes::check_load`]).
fn load_outcome(what: &str, oom: Option<wgpu::Error>, validation: Option<wgpu::Error>) -> Result<()> {
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

/// A GPU error reported while a generation ran ends that request as `internal_error`:
/// the engine submitted work the GPU refused, which is a bug, not the caller's fault.
pub fn in_generation(e: Error) -> Error {
    match e {
        Error::Gpu(msg) => Error::internal(format!("GPU error during generation: {msg}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Box<dyn std::error::Error + Send + Sync + 'static> {
        "refused".into()
    }

    // Software GPUs never run out of memory on demand, so the branch is checked here.
    #[test]
    fn an_out_of_memory_load_is_memory_pressure_and_a_validation_error_is_a_loading_error() {
        let oom = wgpu::Error::OutOfMemory { source: source() };
        let e = load_outcome("uploading", Some(oom), None).unwrap_err();
        assert_eq!(e.code(), "memory_pressure");
        assert!(e.recoverable(), "a smaller configuration may fit");
        let bad = wgpu::Error::Validation { source: source(), description: "too big".into() };
        let e = load_outcome("uploading", None, Some(bad)).unwrap_err();
        assert_eq!(e.code(), "model_loading_error");
        assert!(load_outcome("uploading", None, None).is_ok());
    }
}
