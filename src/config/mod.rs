//! StreamingConfig: every documented option (DESIGN.md §3), its default, parsing from
//! JSON with snake_case or camelCase keys, and validation whose errors name the key and
//! the accepted values. Per-call options live in [`GenerateOptions`].
//!
//! Parsing is hand-written over `serde_json::Value` (one reader per key) so that every
//! message says which key is wrong and what it accepts. `null` for a key means "the
//! default". Pure Rust: compiles for wasm32 unchanged.

mod checks;
mod enums;
mod generate;
pub(crate) mod value;

#[cfg(test)]
mod generate_tests;
#[cfg(test)]
mod tests;

use std::str::FromStr;

use serde_json::{Map, Value, json};

pub use enums::{BatchSizeStrategy, Device, KvCacheStrategy, PrefetchStrategy, Quantization};
pub use generate::{ChatMessage, GenerateOptions, SamplingParams};

use crate::browser::BrowserName;
use crate::error::{Error, Result};
pub(crate) use checks::{
    check_sampling, check_stop, check_workgroup, f32_json, read_max_tokens, read_repetition_penalty, read_temperature,
    read_top_p, read_workgroup,
};
use value::{Key, read_bool, read_seed, read_stop, read_u32, read_uint, value_error};

/// Largest batch the scheduler accepts.
pub const MAX_BATCH_SIZE: u32 = 64;
/// Largest number of decode steps in flight.
pub const MAX_PREFETCH_SIZE: u32 = 16;
/// WebGPU's guaranteed `maxComputeInvocationsPerWorkgroup`.
pub const MAX_WORKGROUP_INVOCATIONS: u32 = 256;
/// WebGPU's guaranteed `maxComputeWorkgroupSize{X,Y,Z}`.
pub const MAX_WORKGROUP_DIMS: [u32; 3] = [256, 256, 64];
/// Precisions used by `mixed` when `attention_precision` / `feedforward_precision` are
/// not given: (attention, feed-forward).
pub const MIXED_DEFAULT_PRECISIONS: (Quantization, Quantization) = (Quantization::Int4, Quantization::Int3);

/// Every option of the engine (DESIGN.md §3) plus the generation defaults that per-call
/// [`GenerateOptions`] override. `None` means "from the browser profile" unless noted.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingConfig {
    /// Where the model runs: gpu, cpu or auto. Default gpu.
    pub device: Device,
    /// Weight precision on the GPU. Default fp16.
    pub quantization: Quantization,
    /// With `mixed`: precision of the attention matrices (q, k, v, o). Never `Mixed`.
    pub attention_precision: Option<Quantization>,
    /// With `mixed`: precision of the MLP matrices (gate, up, down). Never `Mixed`.
    pub feedforward_precision: Option<Quantization>,
    /// Compact KV storage (f16, int8 under progressive) instead of f32. Default true.
    pub kv_cache_optimization: bool,
    /// Default dynamic.
    pub kv_cache_strategy: KvCacheStrategy,
    /// KV budget in MiB; `None` = from the profile.
    pub max_kv_cache_mb: Option<u32>,
    /// GPU-resident token feedback and async id readback. Default true.
    pub optimize_compute_transfer: bool,
    /// Favour first-token and per-token latency over throughput. Default true.
    pub optimize_for_latency: bool,
    /// Decode concurrent generations together, batch between min and max. Default true.
    pub adaptive_batch_size: bool,
    /// Default 1.
    pub initial_batch_size: u32,
    /// Default 1.
    pub min_batch_size: u32,
    /// Default 4; at most [`MAX_BATCH_SIZE`].
    pub max_batch_size: u32,
    /// Default balanced.
    pub batch_size_strategy: BatchSizeStrategy,
    /// Apply the detected browser profile (else the generic one). Default true.
    pub browser_optimizations: bool,
    /// Force a profile (chrome, edge, firefox, safari); `None` = detected.
    pub optimize_for_browser: Option<BrowserName>,
    /// Override the profile's conservative-memory mode; `None` = profile.
    pub conservative_memory: Option<bool>,
    /// Keep decode steps in flight. Default true.
    pub prefetch_enabled: bool,
    /// Decode steps in flight, 1..=16. Default 3.
    pub prefetch_size: u32,
    /// Default adaptive.
    pub prefetch_strategy: PrefetchStrategy,
    /// Speculative decoding by prompt lookup. Default false.
    pub token_prediction_enabled: bool,
    /// Matvec workgroup size override; `None` = profile. Powers of two within WebGPU's
    /// guaranteed limits.
    pub workgroup_size: Option<[u32; 3]>,
    /// Memory budget in MiB; `None` = profile.
    pub memory_limit_mb: Option<u32>,
    /// Deadline per token; `None` = none.
    pub token_timeout_ms: Option<u64>,
    /// Deadline per generation; `None` = none.
    pub generation_timeout_ms: Option<u64>,
    /// Default token budget per call; `None` = the caller's default.
    pub max_tokens: Option<usize>,
    /// >= 0; 0 is greedy. Default 0.7.
    pub temperature: f32,
    /// In (0, 1]. Default 0.9.
    pub top_p: f32,
    /// 0 = off. Default 0.
    pub top_k: u32,
    /// > 0; 1 = off. Default 1.0.
    pub repetition_penalty: f32,
    /// `None` = the caller picks one per call.
    pub seed: Option<u64>,
    /// Stop strings. Default none.
    pub stop: Vec<String>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            device: Device::Gpu,
            quantization: Quantization::Fp16,
            attention_precision: None,
            feedforward_precision: None,
            kv_cache_optimization: true,
            kv_cache_strategy: KvCacheStrategy::Dynamic,
            max_kv_cache_mb: None,
            optimize_compute_transfer: true,
            optimize_for_latency: true,
            adaptive_batch_size: true,
            initial_batch_size: 1,
            min_batch_size: 1,
            max_batch_size: 4,
            batch_size_strategy: BatchSizeStrategy::Balanced,
            browser_optimizations: true,
            optimize_for_browser: None,
            conservative_memory: None,
            prefetch_enabled: true,
            prefetch_size: 3,
            prefetch_strategy: PrefetchStrategy::Adaptive,
            token_prediction_enabled: false,
            workgroup_size: None,
            memory_limit_mb: None,
            token_timeout_ms: None,
            generation_timeout_ms: None,
            max_tokens: None,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// The generation keys shared by [`StreamingConfig`] and [`GenerateOptions`].
pub(crate) const GENERATION_KEYS: &[&str] =
    &["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop"];

/// Every key [`StreamingConfig`] accepts, snake_case.
pub const CONFIG_KEYS: &[&str] = &[
    "quantization",
    "device",
    "attention_precision",
    "feedforward_precision",
    "kv_cache_optimization",
    "kv_cache_strategy",
    "max_kv_cache_mb",
    "optimize_compute_transfer",
    "optimize_for_latency",
    "adaptive_batch_size",
    "initial_batch_size",
    "min_batch_size",
    "max_batch_size",
    "batch_size_strategy",
    "browser_optimizations",
    "optimize_for_browser",
    "conservative_memory",
    "prefetch_enabled",
    "prefetch_size",
    "prefetch_strategy",
    "token_prediction_enabled",
    "workgroup_size",
    "memory_limit_mb",
    "token_timeout_ms",
    "generation_timeout_ms",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
];

impl StreamingConfig {
    /// Parses a JSON object text (`{"quantization": "int4", "topP": 0.95}`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("config is not valid JSON: {e}")))?;
        Self::from_json_value(v)
    }

    /// Parses a JSON object; `null` gives the defaults.
    pub fn from_json_value(v: Value) -> Result<Self> {
        let mut cfg = StreamingConfig::default();
        cfg.update_from_json_value(&v)?;
        Ok(cfg)
    }

    /// Applies the keys of `v` over this config (a key set to `null` goes back to its
    /// default) and validates the result. On error `self` is unchanged.
    pub fn update_from_json_value(&mut self, v: &Value) -> Result<()> {
        let map = match v {
            Value::Null => return Ok(()),
            Value::Object(m) => m,
            other => {
                return Err(Error::invalid(format!("config must be a JSON object, got {}", value::describe(other))));
            }
        };
        let mut next = self.clone();
        let defaults = StreamingConfig::default().to_json_value();
        for (key, val) in value::keys("config", map)? {
            if !CONFIG_KEYS.contains(&key.canonical.as_str()) {
                return Err(value::unknown_key("config", key.written, &key.canonical, CONFIG_KEYS));
            }
            let val = match val {
                Value::Null => defaults.get(&key.canonical).unwrap_or(&Value::Null),
                v => v,
            };
            next.set(&key, val)?;
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Sets one key (already known to be in [`CONFIG_KEYS`]); `null` means `None`.
    fn set(&mut self, key: &Key<'_>, v: &Value) -> Result<()> {
        let k = key.written;
        let opt = !v.is_null();
        match key.canonical.as_str() {
            "device" => self.device = Device::read(k, v)?,
            "quantization" => self.quantization = Quantization::read(k, v)?,
            "attention_precision" => {
                self.attention_precision = opt.then(|| Quantization::read_single(k, v)).transpose()?
            }
            "feedforward_precision" => {
                self.feedforward_precision = opt.then(|| Quantization::read_single(k, v)).transpose()?
            }
            "kv_cache_optimization" => self.kv_cache_optimization = read_bool(k, v)?,
            "kv_cache_strategy" => self.kv_cache_strategy = KvCacheStrategy::read(k, v)?,
            "max_kv_cache_mb" => self.max_kv_cache_mb = opt.then(|| read_u32(k, v, 1, u32::MAX)).transpose()?,
            "optimize_compute_transfer" => self.optimize_compute_transfer = read_bool(k, v)?,
            "optimize_for_latency" => self.optimize_for_latency = read_bool(k, v)?,
            "adaptive_batch_size" => self.adaptive_batch_size = read_bool(k, v)?,
            "initial_batch_size" => self.initial_batch_size = read_u32(k, v, 1, MAX_BATCH_SIZE)?,
            "min_batch_size" => self.min_batch_size = read_u32(k, v, 1, MAX_BATCH_SIZE)?,
            "max_batch_size" => self.max_batch_size = read_u32(k, v, 1, MAX_BATCH_SIZE)?,
            "batch_size_strategy" => self.batch_size_strategy = BatchSizeStrategy::read(k, v)?,
            "browser_optimizations" => self.browser_optimizations = read_bool(k, v)?,
            "optimize_for_browser" => {
                self.optimize_for_browser = opt.then(|| BrowserName::read_forced(k, v)).transpose()?
            }
            "conservative_memory" => self.conservative_memory = opt.then(|| read_bool(k, v)).transpose()?,
            "prefetch_enabled" => self.prefetch_enabled = read_bool(k, v)?,
            "prefetch_size" => self.prefetch_size = read_u32(k, v, 1, MAX_PREFETCH_SIZE)?,
            "prefetch_strategy" => self.prefetch_strategy = PrefetchStrategy::read(k, v)?,
            "token_prediction_enabled" => self.token_prediction_enabled = read_bool(k, v)?,
            "workgroup_size" => self.workgroup_size = opt.then(|| read_workgroup(k, v)).transpose()?,
            "memory_limit_mb" => self.memory_limit_mb = opt.then(|| read_u32(k, v, 1, u32::MAX)).transpose()?,
            "token_timeout_ms" => self.token_timeout_ms = opt.then(|| read_uint(k, v, 1, u64::MAX)).transpose()?,
            "generation_timeout_ms" => {
                self.generation_timeout_ms = opt.then(|| read_uint(k, v, 1, u64::MAX)).transpose()?
            }
            "max_tokens" => self.max_tokens = opt.then(|| read_max_tokens(k, v)).transpose()?,
            "temperature" => self.temperature = read_temperature(k, v)?,
            "top_p" => self.top_p = read_top_p(k, v)?,
            "top_k" => self.top_k = read_u32(k, v, 0, u32::MAX)?,
            "repetition_penalty" => self.repetition_penalty = read_repetition_penalty(k, v)?,
            "seed" => self.seed = opt.then(|| read_seed(k, v)).transpose()?,
            "stop" => self.stop = if opt { read_stop(k, v)? } else { Vec::new() },
            other => {
                return Err(Error::internal(format!("config key \"{other}\" has no reader")));
            }
        }
        Ok(())
    }

    /// Checks the rules between options (and every range, for configs built in code).
    pub fn validate(&self) -> Result<()> {
        let (min, init, max) = (self.min_batch_size, self.initial_batch_size, self.max_batch_size);
        for (key, x) in [("min_batch_size", min), ("initial_batch_size", init), ("max_batch_size", max)] {
            if !(1..=MAX_BATCH_SIZE).contains(&x) {
                return Err(value_error(key, x, &format!("an integer from 1 to {MAX_BATCH_SIZE}")));
            }
        }
        if min > init || init > max {
            return Err(Error::invalid(format!(
                "batch sizes must satisfy \"min_batch_size\" <= \"initial_batch_size\" <= \"max_batch_size\", got {min} <= {init} <= {max}"
            )));
        }
        if !(1..=MAX_PREFETCH_SIZE).contains(&self.prefetch_size) {
            return Err(value_error(
                "prefetch_size",
                self.prefetch_size,
                &format!("an integer from 1 to {MAX_PREFETCH_SIZE}"),
            ));
        }
        for (key, p) in
            [("attention_precision", self.attention_precision), ("feedforward_precision", self.feedforward_precision)]
        {
            match p {
                Some(Quantization::Mixed) => {
                    return Err(value_error(key, "\"mixed\"", "one of fp32, fp16, int8, int4, int3, int2"));
                }
                Some(q) if self.quantization != Quantization::Mixed => {
                    return Err(Error::invalid(format!(
                        "\"{key}\" ({q}) is only used with \"quantization\": \"mixed\", but quantization is \"{}\"; remove it or set quantization to mixed",
                        self.quantization
                    )));
                }
                _ => {}
            }
        }
        if let Some(wg) = self.workgroup_size {
            check_workgroup("workgroup_size", wg)?;
        }
        for (key, x) in [("max_kv_cache_mb", self.max_kv_cache_mb), ("memory_limit_mb", self.memory_limit_mb)] {
            if x == Some(0) {
                return Err(value_error(key, 0, "an integer >= 1 (or null for the profile's)"));
            }
        }
        if let (Some(kv), Some(limit)) = (self.max_kv_cache_mb, self.memory_limit_mb)
            && kv > limit
        {
            return Err(Error::invalid(format!(
                "\"max_kv_cache_mb\" ({kv}) must not exceed \"memory_limit_mb\" ({limit})"
            )));
        }
        for (key, x) in
            [("token_timeout_ms", self.token_timeout_ms), ("generation_timeout_ms", self.generation_timeout_ms)]
        {
            if x == Some(0) {
                return Err(value_error(key, 0, "an integer >= 1 (or null for no deadline)"));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(value_error("max_tokens", 0, "an integer >= 1"));
        }
        check_sampling(self.temperature, self.top_p, self.repetition_penalty)?;
        check_stop("stop", &self.stop)
    }

    /// The options as a JSON object with snake_case keys (for stats and echo); parsing
    /// it back gives the same config.
    pub fn to_json_value(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("device", json!(self.device.as_str()));
        put("quantization", json!(self.quantization.as_str()));
        put("attention_precision", json!(self.attention_precision.map(Quantization::as_str)));
        put("feedforward_precision", json!(self.feedforward_precision.map(Quantization::as_str)));
        put("kv_cache_optimization", json!(self.kv_cache_optimization));
        put("kv_cache_strategy", json!(self.kv_cache_strategy.as_str()));
        put("max_kv_cache_mb", json!(self.max_kv_cache_mb));
        put("optimize_compute_transfer", json!(self.optimize_compute_transfer));
        put("optimize_for_latency", json!(self.optimize_for_latency));
        put("adaptive_batch_size", json!(self.adaptive_batch_size));
        put("initial_batch_size", json!(self.initial_batch_size));
        put("min_batch_size", json!(self.min_batch_size));
        put("max_batch_size", json!(self.max_batch_size));
        put("batch_size_strategy", json!(self.batch_size_strategy.as_str()));
        put("browser_optimizations", json!(self.browser_optimizations));
        put("optimize_for_browser", json!(self.optimize_for_browser.map(BrowserName::as_str)));
        put("conservative_memory", json!(self.conservative_memory));
        put("prefetch_enabled", json!(self.prefetch_enabled));
        put("prefetch_size", json!(self.prefetch_size));
        put("prefetch_strategy", json!(self.prefetch_strategy.as_str()));
        put("token_prediction_enabled", json!(self.token_prediction_enabled));
        put("workgroup_size", json!(self.workgroup_size));
        put("memory_limit_mb", json!(self.memory_limit_mb));
        put("token_timeout_ms", json!(self.token_timeout_ms));
        put("generation_timeout_ms", json!(self.generation_timeout_ms));
        put("max_tokens", json!(self.max_tokens));
        put("temperature", f32_json(self.temperature));
        put("top_p", f32_json(self.top_p));
        put("top_k", json!(self.top_k));
        put("repetition_penalty", f32_json(self.repetition_penalty));
        put("seed", json!(self.seed));
        put("stop", json!(self.stop));
        Value::Object(m)
    }

    /// (attention, feed-forward) matrix precisions: both `quantization` unless it is
    /// `mixed`, then the given ones or [`MIXED_DEFAULT_PRECISIONS`].
    pub fn matrix_precisions(&self) -> (Quantization, Quantization) {
        match self.quantization {
            Quantization::Mixed => (
                self.attention_precision.unwrap_or(MIXED_DEFAULT_PRECISIONS.0),
                self.feedforward_precision.unwrap_or(MIXED_DEFAULT_PRECISIONS.1),
            ),
            q => (q, q),
        }
    }

    /// Decode steps in flight: `prefetch_size` when prefetch is on, else 1.
    pub fn prefetch_depth(&self) -> u32 {
        if self.prefetch_enabled { self.prefetch_size } else { 1 }
    }
}

impl FromStr for StreamingConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_json_str(s)
    }
}
