//! One error type for the whole crate. Every variant maps to a stable `code()` that the
//! JS class and the WebSocket protocol expose unchanged.

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the library reports. The message is for humans; `code()` is for programs.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A caller's request or configuration is wrong (bad key, bad value, bad prompt).
    #[error("{0}")]
    InvalidRequest(String),
    /// The model file or folder could not be read, parsed or understood.
    #[error("{0}")]
    ModelLoading(String),
    /// The prompt plus the requested tokens do not fit the context or the KV budget.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// A memory budget was exceeded and nothing could be freed.
    #[error("{0}")]
    MemoryPressure(String),
    /// A token or generation deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The engine serves another request and cannot take this one.
    #[error("{0}")]
    Busy(String),
    /// No usable GPU adapter / device, or the device lacks something required.
    #[error("{0}")]
    GpuUnavailable(String),
    /// The GPU reported an error (validation, out of memory, device lost).
    #[error("{0}")]
    Gpu(String),
    /// A bug or an unexpected state inside the library.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Stable, snake_case code shared by the JS API and the WebSocket protocol.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::ModelLoading(_) => "model_loading_error",
            Error::ContextLengthExceeded(_) => "context_length_exceeded",
            Error::MemoryPressure(_) => "memory_pressure",
            Error::Timeout(_) => "timeout",
            Error::Busy(_) => "busy",
            Error::GpuUnavailable(_) => "webgpu_unavailable",
            Error::Gpu(_) => "gpu_error",
            Error::Internal(_) => "internal_error",
        }
    }

    /// Whether the same instance can go on serving requests after this error.
    pub fn recoverable(&self) -> bool {
        !matches!(self, Error::GpuUnavailable(_) | Error::Internal(_))
    }

    /// Shorthand for a model-loading error.
    pub fn model(msg: impl Into<String>) -> Self {
        Error::ModelLoading(msg.into())
    }

    /// Shorthand for an invalid-request error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }

    /// Shorthand for an internal error.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::ModelLoading(format!("I/O error: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case() {
        assert_eq!(Error::invalid("x").code(), "invalid_request");
        assert_eq!(Error::model("x").code(), "model_loading_error");
        assert_eq!(Error::ContextLengthExceeded("x".into()).code(), "context_length_exceeded");
        assert!(!Error::internal("x").recoverable());
    }
}
