//! The browser binding (wasm-bindgen): the `WebGPUStreamingInference` class.
//!
//! - `class.rs`: construction, `load`, profile switches, stats, handler properties
//! - `generate.rs`: `generate` / `generateAsync`
//! - `batch.rs`: the driver of an instance's generations: alone, or batched when they overlap
//! - `fetch.rs`: model download with progress and the Cache API
//! - `error.rs`: coded JS errors, safe calls of page handlers
//! - `adapter.rs`: adapter name and software detection from `navigator.gpu`
//! - `stats.rs`: stats and event payloads as JS objects
//! - `recovery.rs`: error scopes at load, one automatic recovery from a lost device
//! - `websocket.rs`: `streamWebsocket`, the WebSocket protocol on a page's socket
//! - `types.rs`: TypeScript declarations of configs, options, stats and events

mod adapter;
mod batch;
mod class;
pub mod error;
pub mod fetch;
mod generate;
mod recovery;
pub mod stats;
mod types;
mod websocket;

pub use class::WebGPUStreamingInference;
