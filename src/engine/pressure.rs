//! Memory-pressure events: the KV bytes in use (and all GPU memory) against the KV budget
//! (`max_kv_cache_mb`) and `memory_limit_mb`, checked before each submission. Each level
//! fires once per generation and limit: "warning" from 80%, "critical" from 90%; and once
//! when the sliding window starts dropping positions. `action` says what the cache does.

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::KvCacheStrategy;
use crate::model::kv_cache::KvCache;

/// One `onMemoryPressure` event: {level, message, current_mb, limit_mb, action}.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPressureEvent {
    /// "warning" or "critical".
    pub level: &'static str,
    pub message: String,
    pub current_mb: f64,
    pub limit_mb: f64,
    /// "sliding_window" (dynamic, progressive at the limit), "kv_int8" (progressive: older
    /// tokens are held in int8), "none" (static: the generation will end at its context).
    pub action: &'static str,
}

impl MemoryPressureEvent {
    pub fn to_value(&self) -> Value {
        json!({
            "level": self.level, "message": self.message, "current_mb": self.current_mb,
            "limit_mb": self.limit_mb, "action": self.action,
        })
    }
}

const MB: f64 = 1_048_576.0;

/// Tracks which events fired during one generation.
pub struct PressureMonitor {
    /// KV budget and memory limit, bytes.
    kv_limit: Option<u64>,
    mem_limit: Option<u64>,
    /// Bytes outside the KV cache (weights, activations, staging).
    other_bytes: u64,
    /// Highest level fired so far per limit: 0 none, 1 warning, 2 critical.
    fired: [u8; 2],
    slid: bool,
}

impl PressureMonitor {
    /// A generation starts: levels already reached before it (e.g. weights over the memory
    /// limit, reported at load) do not fire again.
    pub fn new(kv_limit: Option<u64>, mem_limit: Option<u64>, other_bytes: u64) -> Self {
        let mut m = PressureMonitor { kv_limit, mem_limit, other_bytes, fired: [0; 2], slid: false };
        let base = m.levels(0);
        m.fired[1] = base[1];
        m
    }

    fn levels(&self, kv_used: u64) -> [u8; 2] {
        let level = |used: u64, limit: Option<u64>| match limit {
            Some(l) if used as f64 >= 0.9 * l as f64 => 2,
            Some(l) if used as f64 >= 0.8 * l as f64 => 1,
            _ => 0,
        };
        [level(kv_used, self.kv_limit), level(kv_used + self.other_bytes, self.mem_limit)]
    }

    /// Before a pass writing positions up to `latest`: the events it newly triggers.
    pub fn check(&mut self, kv: &KvCache, latest: usize) -> Vec<MemoryPressureEvent> {
        let plan = &kv.plan;
        let used = kv.used_bytes(latest);
        let mut out = Vec::new();
        let now = self.levels(used);
        let names = ["max_kv_cache_mb", "memory_limit_mb"];
        for i in 0..2 {
            if now[i] <= self.fired[i] {
                continue;
            }
            self.fired[i] = now[i];
            let (limit, current) = if i == 0 {
                (self.kv_limit.unwrap_or(0), used)
            } else {
                (self.mem_limit.unwrap_or(0), used + self.other_bytes)
            };
            let level = if now[i] == 2 { "critical" } else { "warning" };
            let action = match plan.strategy {
                KvCacheStrategy::Static => "none",
                KvCacheStrategy::Progressive if now[i] == 1 => "kv_int8",
                _ => "sliding_window",
            };
            let what = match action {
                "none" => format!("the static cache ends the generation at {} tokens", plan.max_positions),
                "kv_int8" => format!("tokens older than the last {} are held in int8", plan.ring_recent),
                _ => format!(
                    "at {} tokens a sliding window keeps the first {} and the last {}",
                    plan.sinks + plan.window,
                    plan.sinks,
                    plan.window
                ),
            };
            out.push(MemoryPressureEvent {
                level,
                message: format!(
                    "{} at {:.0}% of {} ({:.2} of {:.2} MiB): {what}",
                    if i == 0 { "KV cache" } else { "GPU memory" },
                    current as f64 * 100.0 / limit.max(1) as f64,
                    names[i],
                    current as f64 / MB,
                    limit as f64 / MB
                ),
                current_mb: current as f64 / MB,
                limit_mb: limit as f64 / MB,
                action,
            });
        }
        if plan.slides() && !self.slid && latest >= plan.sinks + plan.window {
            self.slid = true;
            out.push(MemoryPressureEvent {
                level: "critical",
                message: format!(
                    "KV cache full: position {latest} is past the {} the cache holds; the sliding window keeps the \
                     first {} and the last {} positions",
                    plan.sinks + plan.window,
                    plan.sinks,
                    plan.window
                ),
                current_mb: used as f64 / MB,
                limit_mb: self.kv_limit.unwrap_or(kv.bytes()) as f64 / MB,
                action: "sliding_window",
            });
        }
        out
    }
}
