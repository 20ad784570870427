//! Device, buffers, pipelines.
