//! Stats and event payloads for JS: the engine's stats object (DESIGN.md §4, snake_case,
//! every figure measured) converted to a plain JS object, live figures while a generation
//! runs, and the `onMemoryPressure` / `onTimeout` payloads.

use serde::Serialize;
use serde_json::{Value, json};
use wasm_bindgen::JsValue;
use web_time::Instant;

use crate::config::{Device, StreamingConfig};
use crate::engine::{AnyEngine, Engine};
use crate::error::{Error, Result};

/// serde_json::Value -> a plain JS object (maps as objects, not `Map`s).
pub fn to_js(v: &Value) -> Result<JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| Error::internal(format!("stats to JS: {e}")))
}

/// A plain JS value -> serde_json::Value (`undefined` -> null).
pub fn from_js(v: &JsValue, what: &str) -> Result<Value> {
    if v.is_undefined() || v.is_null() {
        return Ok(Value::Null);
    }
    serde_wasm_bindgen::from_value(v.clone()).map_err(|e| Error::invalid(format!("{what} is not plain JSON data: {e}")))
}

/// The stats before any generation: the loaded engine's memory and profile, zero counts;
/// without an engine, what the config says (`device`: the one `load()` resolved, if any).
pub fn idle_stats(engine: Option<&AnyEngine>, cfg: &StreamingConfig, device: Option<Device>, browser: &str) -> Value {
    if let Some(e) = engine {
        return e.stats_json(&Default::default());
    }
    json!({
        "device": device.unwrap_or(cfg.device).as_str(),
        "tokens_generated": 0, "prompt_tokens": 0, "first_token_latency_ms": 0.0,
        "avg_token_latency_ms": 0.0, "tokens_per_second": 0.0, "prefill_tokens_per_second": 0.0,
        "generation_time_ms": 0.0, "prefetch_hit_rate": 0.0, "current_batch_size": 0,
        "batch_size_history": [], "kv_cache_mb": 0.0, "model_memory_mb": 0.0, "peak_memory_mb": 0.0,
        "quantization": cfg.quantization.as_str(), "kv_cache_strategy": cfg.kv_cache_strategy.as_str(), "browser": browser,
        "adapter": "", "workgroup_size": cfg.workgroup_size.unwrap_or([0, 0, 0]),
        "latency_optimized": cfg.optimize_for_latency, "kv_cache_optimized": cfg.kv_cache_optimization, "finish_reason": null,
    })
}

/// Figures of the generation in progress, measured as ids reach the CPU.
pub struct Live {
    pub start: Instant,
    pub prompt_tokens: usize,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub tokens: usize,
    /// Generations decoded together now (1 alone).
    pub batch_size: usize,
}

impl Live {
    pub fn new(prompt_tokens: usize) -> Self {
        Live { start: Instant::now(), prompt_tokens, first: None, last: None, tokens: 0, batch_size: 1 }
    }

    /// One more id arrived.
    pub fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens += 1;
    }

    /// `base` (the engine's idle stats) with the counts so far; `finish_reason` null.
    pub fn stats(&self, mut base: Value) -> Value {
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let now = Instant::now();
        let first_ms = self.first.map_or(0.0, |f| ms(self.start, f));
        let decode_ms = match (self.first, self.last) {
            (Some(f), Some(l)) => ms(f, l),
            _ => 0.0,
        };
        let decoded = self.tokens.saturating_sub(1);
        let tps = if decoded > 0 && decode_ms > 0.0 { decoded as f64 / (decode_ms / 1e3) } else { 0.0 };
        if let Value::Object(m) = &mut base {
            m.insert("tokens_generated".into(), json!(self.tokens));
            m.insert("prompt_tokens".into(), json!(self.prompt_tokens));
            m.insert("first_token_latency_ms".into(), json!(first_ms));
            m.insert("avg_token_latency_ms".into(), json!(if decoded > 0 { decode_ms / decoded as f64 } else { 0.0 }));
            m.insert("tokens_per_second".into(), json!(tps));
            let prefill = if first_ms > 0.0 { self.prompt_tokens as f64 / (first_ms / 1e3) } else { 0.0 };
            m.insert("prefill_tokens_per_second".into(), json!(prefill));
            m.insert("generation_time_ms".into(), json!(ms(self.start, now)));
            m.insert("finish_reason".into(), Value::Null);
            m.insert("current_batch_size".into(), json!(self.batch_size));
        }
        base
    }
}

/// Deadlines of one generation (`token_timeout_ms`, `generation_timeout_ms`).
#[derive(Clone, Copy)]
pub struct Deadlines {
    pub token_ms: Option<u64>,
    pub generation_ms: Option<u64>,
}

/// `onTimeout` payload: {message, elapsed_ms, limit_ms, tokens_generated}.
pub struct TimeoutInfo {
    pub message: String,
    pub elapsed_ms: f64,
    pub limit_ms: u64,
    pub tokens_generated: usize,
}

impl Deadlines {
    /// Checked as each id arrives: the first deadline passed, if any.
    pub fn check(&self, live: &Live, prev: Instant) -> Option<TimeoutInfo> {
        let now = Instant::now();
        let since = |t: Instant| (now - t).as_secs_f64() * 1e3;
        if let Some(limit) = self.generation_ms
            && since(live.start) > limit as f64
        {
            return Some(TimeoutInfo {
                message: format!("generation_timeout_ms of {limit} ms passed"),
                elapsed_ms: since(live.start),
                limit_ms: limit,
                tokens_generated: live.tokens,
            });
        }
        if let Some(limit) = self.token_ms
            && since(prev) > limit as f64
        {
            return Some(TimeoutInfo {
                message: format!("token_timeout_ms of {limit} ms passed waiting for token {}", live.tokens + 1),
                elapsed_ms: since(prev),
                limit_ms: limit,
                tokens_generated: live.tokens,
            });
        }
        None
    }
}

impl TimeoutInfo {
    pub fn to_value(&self) -> Value {
        json!({
            "message": self.message, "elapsed_ms": self.elapsed_ms,
            "limit_ms": self.limit_ms, "tokens_generated": self.tokens_generated,
        })
    }
}

/// `onMemoryPressure` payload: {level, message, current_mb, limit_mb, action}.
pub fn memory_pressure(level: &str, message: String, current_mb: f64, limit_mb: f64, action: &str) -> Value {
    json!({ "level": level, "message": message, "current_mb": current_mb, "limit_mb": limit_mb, "action": action })
}

/// After a GPU load: the engine's GPU memory against `memory_limit_mb` (warning from 80%).
pub fn load_pressure(engine: &Engine, limit_mb: u32) -> Option<Value> {
    let (w, kv, act) = engine.memory_bytes();
    let used = (w + kv + act) as f64 / 1_048_576.0;
    let limit = f64::from(limit_mb);
    if used > limit {
        Some(memory_pressure(
            "critical",
            format!("the model needs {used:.0} MiB of GPU memory, above memory_limit_mb {limit_mb}"),
            used,
            limit,
            "none: the model stays loaded; lower the precision or the KV budget",
        ))
    } else if used > 0.8 * limit {
        Some(memory_pressure(
            "warning",
            format!("the model uses {used:.0} MiB, over 80% of memory_limit_mb {limit_mb}"),
            used,
            limit,
            "none",
        ))
    } else {
        None
    }
}
