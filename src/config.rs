//! StreamingConfig: every documented option, serde, defaults, validation.
