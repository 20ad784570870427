//! Measured figures of one generation.

use serde::Serialize;

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
    /// Accepted / proposed drafts (0 when nothing was proposed).
    pub fn prefetch_hit_rate(&self) -> f64 {
        if self.proposed == 0 { 0.0 } else { self.accepted as f64 / self.proposed as f64 }
    }
}
