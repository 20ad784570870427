//! Measured figures of one generation.

use serde::Serialize;
use web_time::Instant;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// `stop()` or the callback asked to stop.
    Cancelled,
    /// A token or generation deadline passed.
    Timeout,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Timeout => "timeout",
        }
    }
}

/// Every figure is measured on the wall clock around real GPU work.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub tokens_generated: usize,
    /// From the call to the first generated id on the CPU.
    pub first_token_latency_ms: f64,
    /// Prefill wall time (prompt submitted -> first id read back).
    pub prefill_ms: f64,
    pub prefill_tokens_per_second: f64,
    /// Decode wall time (first id -> last id read back).
    pub decode_ms: f64,
    /// Decode tokens per second (tokens after the first / decode time).
    pub tokens_per_second: f64,
    pub avg_token_latency_ms: f64,
    pub generation_time_ms: f64,
    /// Command-buffer submissions for the decode steps and verifications.
    pub submissions: usize,
    /// Verification passes of drafted tokens (token prediction).
    pub verify_passes: usize,
    /// Drafted tokens proposed for verification.
    pub proposed: usize,
    /// Drafted tokens the model agreed with.
    pub accepted: usize,
    /// Decode steps the GPU ran (including steps discarded after a stop).
    pub steps_run: usize,
    pub dispatches_per_token: usize,
    /// Sizes of the batches this generation was decoded in, each change once (`[1]` alone).
    pub batch_sizes: Vec<usize>,
    pub finish_reason: Option<FinishReason>,
}

impl GenerationStats {
    /// The keys of the stats object (DESIGN.md §4) that a generation measures, whichever
    /// engine ran it; each engine adds its own (memory, adapter, options).
    pub fn measured_json(&self) -> serde_json::Map<String, serde_json::Value> {
        json_object(serde_json::json!({
            "tokens_generated": self.tokens_generated,
            "prompt_tokens": self.prompt_tokens,
            "first_token_latency_ms": self.first_token_latency_ms,
            "avg_token_latency_ms": self.avg_token_latency_ms,
            "tokens_per_second": self.tokens_per_second,
            "prefill_tokens_per_second": self.prefill_tokens_per_second,
            "generation_time_ms": self.generation_time_ms,
            "prefetch_hit_rate": self.prefetch_hit_rate(),
            "current_batch_size": self.batch_sizes.last().copied().unwrap_or(1),
            "batch_size_history": if self.batch_sizes.is_empty() { vec![1] } else { self.batch_sizes.clone() },
            "finish_reason": self.finish_reason.map(|f| f.as_str()),
            "submissions": self.submissions,
            "verify_passes": self.verify_passes,
            "tokens_proposed": self.proposed,
            "tokens_accepted": self.accepted,
            "dispatches_per_token": self.dispatches_per_token,
        }))
    }

    /// Closes the timing of a generation that kept `generated` ids: its total time, and the
    /// decode time and rates counted from the first token (`prefill_ms` already set).
    pub fn close(&mut self, t_start: Instant, t_first: Option<Instant>, t_end: Instant, generated: usize) {
        self.tokens_generated = generated;
        self.generation_time_ms = (t_end - t_start).as_secs_f64() * 1e3;
        if let Some(t1) = t_first {
            self.decode_ms = (t_end - t1).as_secs_f64() * 1e3;
        }
        self.prefill_tokens_per_second = self.prompt_tokens as f64 / (self.prefill_ms / 1e3).max(1e-9);
        let decoded = generated.saturating_sub(1);
        if decoded > 0 && self.decode_ms > 0.0 {
            self.tokens_per_second = decoded as f64 / (self.decode_ms / 1e3);
            self.avg_token_latency_ms = self.decode_ms / decoded as f64;
        }
    }

    /// Accepted / proposed drafts (0 when nothing was proposed).
    pub fn prefetch_hit_rate(&self) -> f64 {
        if self.proposed == 0 { 0.0 } else { self.accepted as f64 / self.proposed as f64 }
    }
}

/// The members of a JSON object (none for any other value).
pub fn json_object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
