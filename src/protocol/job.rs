//! One protocol request as a generation that can be cut into several engine calls
//! ("segments"): a pause, or a turn given to another connection, ends the running call
//! keeping the ids so far; the next segment generates from prompt + those ids with the
//! budget that is left. The GPU sampler's random numbers are keyed by seed and position
//! (shaders/sample.wgsl), so greedy and sampled output alike are what one uninterrupted
//! call gives. The detokenizer and the stop-string matcher live here, across segments, so
//! that a character or a stop string split by a pause comes out whole.

use super::messages::{ModelInfo, Request, Timing, Usage};
use crate::engine::{Backend, FinishReason, GenerateParams, GenerationStats, StopMatcher};
use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};

/// Token budget when neither the request nor the engine's config gives one.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// What the owner of a running segment wants at the next token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Go on.
    None,
    /// End this segment, keeping the ids so far (pause, or another request's turn).
    Pause,
    /// End the request (`finish_reason: "cancelled"`).
    Stop,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// Text held back until the end (an incomplete character, a stop-string prefix).
    pub tail: String,
    pub usage: Usage,
    pub timing: Timing,
}

/// How a segment ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SegmentEnd {
    /// Interrupted with [`Interrupt::Pause`]; run again to go on.
    Paused,
    Finished(Finished),
}

/// A request in progress.
pub struct Job {
    prompt_ids: Vec<u32>,
    /// Ids generated so far (every one already reported to the peer).
    ids: Vec<u32>,
    /// Per-call parameters with `stop` emptied (stop strings are matched here).
    params: GenerateParams,
    budget: usize,
    detok: StreamDecoder,
    stops: StopMatcher,
    /// A stop string ended the text: nothing held back may come out.
    stopped_by_string: bool,
    timing: Timing,
    decode_ms: f64,
    decoded: usize,
    /// The engine's figures over every segment so far (counts of the whole request).
    stats: Option<GenerationStats>,
}

/// The model an engine (GPU or CPU) serves, for `init`.
pub fn model_info(engine: &impl Backend) -> ModelInfo {
    ModelInfo {
        name: engine.model_name().to_string(),
        quantization: engine.quantization_name().to_string(),
        context_length: engine.context(),
    }
}

impl Job {
    /// Tokenizes the request (through the chat template when it has messages or `chat`)
    /// and checks it against the context. `seed` is used when neither the request nor the
    /// engine's config fixes one.
    pub fn new(engine: &impl Backend, req: &Request, seed: u64) -> Result<Job> {
        let opts = &req.options;
        opts.validate()?;
        let text = if opts.uses_chat_template() {
            let mut messages = opts.messages.clone();
            if !req.prompt.is_empty() {
                messages.push(ChatMessage::new("user", req.prompt.as_str()));
            }
            engine.tokenizer().apply_chat_template(&messages, true)?
        } else {
            req.prompt.clone()
        };
        let prompt_ids = engine.tokenizer().encode(&text)?;
        if prompt_ids.is_empty() {
            return Err(Error::invalid("the prompt encodes to no tokens"));
        }
        let context = engine.max_positions();
        if prompt_ids.len() >= context {
            return Err(Error::ContextLengthExceeded(format!(
                "the prompt has {} tokens; the context holds {context} (prompt and generated tokens together)",
                prompt_ids.len()
            )));
        }
        let mut params = engine.params_for(&opts.resolve(engine.config(), DEFAULT_MAX_TOKENS, seed));
        let stops = StopMatcher::new(&std::mem::take(&mut params.stop));
        let budget = params.max_tokens.min(context - prompt_ids.len());
        Ok(Job {
            prompt_ids,
            ids: Vec::new(),
            params,
            budget,
            detok: StreamDecoder::new(),
            stops,
            stopped_by_string: false,
            timing: Timing::default(),
            decode_ms: 0.0,
            decoded: 0,
            stats: None,
        })
    }

    /// Prompt tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_ids.len()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.ids
    }

    /// Runs one segment. `interrupt` is asked before each new token is kept, so a stop or
    /// pause takes effect within one token; `on_token(text, id)` gets every kept token with
    /// the text it completes (possibly empty).
    pub async fn run(
        &mut self,
        engine: &mut impl Backend,
        interrupt: &mut dyn FnMut() -> Interrupt,
        on_token: &mut dyn FnMut(&str, u32),
    ) -> Result<SegmentEnd> {
        let Some((context, params)) = self.segment() else {
            return Ok(SegmentEnd::Finished(self.finish(FinishReason::Length)));
        };
        let mut asked: Option<Interrupt> = None;
        let mut stopped_by_string = false;
        let mut failed: Option<Error> = None;
        let generation = engine
            .generate(&context, &params, &mut |ev| {
                let Some(id) = ev.id else {
                    return true; // the engine's own flush: this job decodes the ids itself
                };
                match interrupt() {
                    Interrupt::None => {}
                    other => {
                        asked = Some(other);
                        return false;
                    }
                }
                match self.accept(ev.tokenizer, id, on_token) {
                    Ok(stopped) => {
                        stopped_by_string = stopped;
                        !stopped
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.account(&generation.stats);
        let reason = if stopped_by_string {
            FinishReason::Stop
        } else {
            match asked {
                Some(Interrupt::Stop) => FinishReason::Cancelled,
                Some(_) => return Ok(SegmentEnd::Paused),
                None => generation.finish_reason,
            }
        };
        Ok(SegmentEnd::Finished(self.finish(reason)))
    }

    /// The next segment's context (prompt + ids so far) and parameters (the budget left);
    /// None when the budget is spent.
    pub fn segment(&self) -> Option<(Vec<u32>, GenerateParams)> {
        let left = self.budget.saturating_sub(self.ids.len());
        if left == 0 {
            return None;
        }
        let mut context = self.prompt_ids.clone();
        context.extend_from_slice(&self.ids);
        Some((context, GenerateParams { max_tokens: left, ..self.params.clone() }))
    }

    /// Keeps generated id `id`: decodes it, matches stop strings and reports the text it
    /// completes. Returns true when a stop string ended the text (the request is over).
    pub fn accept(&mut self, tok: &Tokenizer, id: u32, on_token: &mut dyn FnMut(&str, u32)) -> Result<bool> {
        self.ids.push(id);
        let piece = self.detok.push(tok, id)?;
        let step = self.stops.push(&piece);
        on_token(&step.emit, id);
        self.stopped_by_string |= step.stopped;
        Ok(step.stopped)
    }

    /// Whether a stop string ended the text.
    pub fn stopped_by_string(&self) -> bool {
        self.stopped_by_string
    }

    /// Adds a finished segment's measured times to the request's timing.
    pub fn account(&mut self, s: &GenerationStats) {
        if self.timing.segments == 0 {
            self.timing.first_token_latency_ms = s.first_token_latency_ms;
        }
        self.timing.segments += 1;
        self.timing.generation_time_ms += s.generation_time_ms;
        self.decode_ms += s.decode_ms;
        self.decoded += s.tokens_generated.saturating_sub(1);
        let widest = s.batch_sizes.iter().copied().max().unwrap_or(1);
        self.timing.max_batch_size = self.timing.max_batch_size.max(widest);
        let mut merged = s.clone();
        if let Some(prev) = self.stats.take() {
            merged.first_token_latency_ms = prev.first_token_latency_ms;
            merged.prefill_ms = prev.prefill_ms;
            merged.prefill_tokens_per_second = prev.prefill_tokens_per_second;
            merged.generation_time_ms += prev.generation_time_ms;
            merged.submissions += prev.submissions;
            merged.steps_run += prev.steps_run;
            merged.verify_passes += prev.verify_passes;
            merged.proposed += prev.proposed;
            merged.accepted += prev.accepted;
            let mut sizes = prev.batch_sizes;
            for b in s.batch_sizes.iter().copied() {
                if sizes.last() != Some(&b) {
                    sizes.push(b);
                }
            }
            merged.batch_sizes = sizes;
        }
        merged.prompt_tokens = self.prompt_ids.len();
        merged.tokens_generated = self.ids.len();
        if self.decoded > 0 && self.decode_ms > 0.0 {
            merged.decode_ms = self.decode_ms;
            merged.tokens_per_second = self.decoded as f64 / (self.decode_ms / 1e3);
            merged.avg_token_latency_ms = self.decode_ms / self.decoded as f64;
        }
        self.stats = Some(merged);
    }

    /// The engine's figures of the request so far, summed over its segments.
    pub fn stats(&self) -> GenerationStats {
        self.stats.clone().unwrap_or_default()
    }

    /// Ends the request now (also a stop while paused): flushes what is held back.
    pub fn finish(&mut self, reason: FinishReason) -> Finished {
        let mut tail = String::new();
        if !self.stopped_by_string {
            // An incomplete character comes out as U+FFFD, as at the end of any generation.
            let rest = self.detok.flush();
            let step = self.stops.push(&rest);
            tail.push_str(&step.emit);
            if !step.stopped {
                tail.push_str(&self.stops.finish());
            }
        }
        let completion = self.ids.len();
        let mut timing = self.timing.clone();
        if self.decoded > 0 && self.decode_ms > 0.0 {
            timing.tokens_per_second = self.decoded as f64 / (self.decode_ms / 1e3);
        }
        Finished {
            reason,
            tail,
            usage: Usage {
                prompt_tokens: self.prompt_ids.len(),
                completion_tokens: completion,
                total_tokens: self.prompt_ids.len() + completion,
            },
            timing,
        }
    }
}
