//! The CPU generation loop: prefill eight tokens at a time, then one decode step per token,
//! sampled with the GPU sampler's reference (same ids for the same seed), yielding to the
//! browser's event loop between tokens so that the page stays live and `stop()` works.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use web_time::Instant;

use super::kernels::TOKENS;
use super::model::CpuModel;
use crate::config::{SamplingParams, StreamingConfig};
use crate::engine::emit::Emitter;
use crate::engine::stats::json_object;
use crate::engine::{FinishReason, GenerateParams, Generation, GenerationStats, TokenEvent};
use crate::error::{Error, Result};
use crate::model::ModelSource;
use crate::sampling::sample_reference;
use crate::tokenizer::Tokenizer;

/// A model loaded for the CPU with its tokenizer.
pub struct CpuEngine {
    pub model: CpuModel,
    pub tokenizer: Tokenizer,
    /// The configuration it was loaded with.
    pub config: StreamingConfig,
    /// The browser it runs in, for the stats ("native" outside one).
    pub browser: &'static str,
    cancel: Arc<AtomicBool>,
}

impl CpuEngine {
    /// Repacks the source's matrices for the CPU (int4 or int8 per `config.quantization`;
    /// `progress(done, total)` counts bytes of weights).
    pub fn load(
        src: &dyn ModelSource,
        config: &StreamingConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CpuEngine> {
        let model = CpuModel::load(src, config, progress)?;
        Ok(CpuEngine {
            model,
            tokenizer: src.tokenizer()?,
            config: config.clone(),
            browser: "native",
            cancel: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set to end the running generation with `Cancelled` after the current token.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Bytes of (weights, KV cache, activations) in memory.
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        self.model.memory_bytes()
    }

    /// Positions the KV cache can hold.
    pub fn context(&self) -> usize {
        self.model.context
    }

    /// The weights' format name ("int4", "int8").
    pub fn quantization_name(&self) -> &'static str {
        self.model.quantization_name()
    }

    /// Generation parameters from resolved sampling parameters and the config's deadlines.
    pub fn params_for(&self, p: &SamplingParams) -> GenerateParams {
        GenerateParams::for_config(p, &self.config)
    }

    /// The stats object of DESIGN.md §4 for a generation on the CPU: the GPU engine's keys,
    /// with the GPU-only ones at their "not used" values.
    pub fn stats_json(&self, s: &GenerationStats) -> Value {
        let (w, kv, act) = self.memory_bytes();
        let mb = |b: u64| b as f64 / 1_048_576.0;
        let mut m = s.measured_json();
        m.extend(json_object(json!({
            "device": "cpu",
            "kv_cache_mb": mb(kv),
            "model_memory_mb": mb(w),
            "peak_memory_mb": mb(w + kv + act),
            "quantization": self.quantization_name(),
            "quantize_ms": 0.0,
            "kv_cache_strategy": "static",
            "kv_cache_format": "f32",
            "kv_cache_tokens": self.model.cached().len(),
            "browser": self.browser,
            "adapter": ADAPTER,
            "workgroup_size": [1, 1, 1],
            "latency_optimized": self.config.optimize_for_latency,
            "kv_cache_optimized": false,
            "steps_per_submit": 1,
            "in_flight": 1,
            "token_prediction": false,
            "prefetch_strategy": "none",
        })));
        Value::Object(m)
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let ctx = self.model.context;
        if ids.len() + 1 > ctx {
            return Err(Error::ContextLengthExceeded(format!(
                "the prompt has {} tokens; with 1 more it exceeds the cpu KV cache's {ctx} positions",
                ids.len()
            )));
        }
        Ok(())
    }

    /// Generate from prompt ids; `on_token` as in [`crate::engine::Engine::generate`].
    /// The KV cache keeps the longest prefix this prompt shares with the last context.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Generation> {
        let t_start = Instant::now();
        self.cancel.store(false, Ordering::SeqCst);
        self.check_prompt(prompt)?;
        let ctx = self.model.context;
        let budget = params.max_tokens.min(ctx - prompt.len());
        let runs_out = params.max_tokens > budget;
        let mut stats = GenerationStats { prompt_tokens: prompt.len(), batch_sizes: vec![1], ..Default::default() };
        let mut em = Emitter::new(&params.stop, params.ignore_eos);
        let done = |em: Emitter, finish, stats| {
            let Emitter { ids, text, .. } = em;
            Generation {
                text,
                prompt_ids: prompt.to_vec(),
                ids,
                finish_reason: finish,
                stats,
                memory_events: Vec::new(),
            }
        };
        if budget == 0 {
            return Ok(done(em, FinishReason::Length, stats));
        }
        let shared = self.model.cached().iter().zip(prompt).take_while(|(a, b)| a == b).count();
        // The last prompt token always runs: its step gives the logits.
        self.model.truncate(shared.min(prompt.len() - 1));
        let mut logits = Vec::new();
        let mut finish = None;
        let mut since_yield = Instant::now();
        let rest = &prompt[self.model.cached().len()..];
        let n_chunks = rest.len().div_ceil(TOKENS);
        for (i, chunk) in rest.chunks(TOKENS).enumerate() {
            let last = i + 1 == n_chunks;
            self.model.steps(chunk, last.then_some(&mut logits))?;
            if !last && pause(&mut since_yield).await && self.cancel.load(Ordering::SeqCst) {
                finish = Some(FinishReason::Cancelled);
                break;
            }
        }
        let mut history = prompt.to_vec();
        let mut t_first = None;
        let mut t_last = t_start;
        while finish.is_none() {
            let id = sample_reference(&mut logits, &history, &params.sample);
            let now = Instant::now();
            let token_ms = (now - t_last).as_secs_f64() * 1e3;
            t_last = now;
            if t_first.is_none() {
                stats.first_token_latency_ms = (now - t_start).as_secs_f64() * 1e3;
                stats.prefill_ms = stats.first_token_latency_ms;
                t_first = Some(now);
            }
            history.push(id);
            if let Some(f) = em.push(&self.tokenizer, id, on_token)? {
                finish = Some(f);
            } else if self.cancel.load(Ordering::SeqCst) {
                finish = Some(FinishReason::Cancelled);
            } else if em.ids.len() >= budget {
                finish = Some(FinishReason::Length);
            } else if params.token_timeout_ms.is_some_and(|ms| t_first != Some(now) && token_ms > ms as f64)
                || params.generation_timeout_ms.is_some_and(|ms| (now - t_start).as_secs_f64() * 1e3 > ms as f64)
            {
                finish = Some(FinishReason::Timeout);
            } else {
                // Between tokens the page runs: its callbacks, rendering, and `stop()`.
                yield_now().await;
                if self.cancel.load(Ordering::SeqCst) {
                    finish = Some(FinishReason::Cancelled);
                } else {
                    self.model.step(id, Some(&mut logits))?;
                    stats.steps_run += 1;
                }
            }
        }
        let finish = finish.unwrap_or(FinishReason::Length);
        em.flush(&self.tokenizer, on_token)?;
        let t_end = Instant::now();
        stats.close(t_start, t_first, t_end, em.ids.len());
        stats.finish_reason = Some(finish);
        if runs_out && finish == FinishReason::Length {
            return Err(Error::ContextLengthExceeded(format!(
                "the cpu KV cache is full after {} prompt + {} generated tokens ({ctx} positions); max_tokens was {}",
                prompt.len(),
                em.ids.len(),
                params.max_tokens
            )));
        }
        Ok(done(em, finish, stats))
    }
}

/// What `adapter` reports for the CPU engine: which kernels `cpu::kernels` compiled.
const ADAPTER: &str =
    if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) { "cpu (wasm simd128)" } else { "cpu (scalar)" };

/// During a long prompt: yields to the page every ~50 ms of work; true when it did.
async fn pause(since: &mut Instant) -> bool {
    if since.elapsed().as_secs_f64() < 0.05 {
        return false;
    }
    yield_now().await;
    *since = Instant::now();
    true
}

/// Lets the browser run a task: a message through a `MessageChannel`, which, unlike
/// `setTimeout(0)`, is not clamped to 4 ms when repeated. Natively nothing waits.
#[cfg(target_arch = "wasm32")]
async fn yield_now() {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;
    let Ok(channel) = web_sys::MessageChannel::new() else { return };
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let on_message = Closure::once_into_js(move || {
            let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
        });
        channel.port1().set_onmessage(Some(on_message.unchecked_ref()));
    });
    if channel.port2().post_message(&wasm_bindgen::JsValue::NULL).is_err() {
        return;
    }
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    channel.port1().set_onmessage(None);
}

#[cfg(not(target_arch = "wasm32"))]
async fn yield_now() {}
