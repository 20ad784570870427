//! The generation loop: prefill in chunks, then decode steps encoded several per command
//! buffer with the sampled id fed back on the GPU; only ids are read back, asynchronously,
//! while later steps already run. Written async once: natively driven by pollster, in the
//! browser by the event loop.

pub mod any;
mod batch;
mod bench;
pub(crate) mod emit;
pub mod lookup;
mod options;
pub mod prefetch;
mod pressure;
mod recover;
pub mod speculative;
pub(crate) mod stats;
mod stop;
mod top1;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use web_time::Instant;

pub use any::{AnyEngine, Backend};
pub use batch::Batch;
pub use bench::{
    BatchBenchReport, BenchReport, REPETITIVE_PROMPT, bench, bench_again, bench_batch, bench_ids, bench_prompt,
    synthetic_prompt,
};
#[cfg(not(target_arch = "wasm32"))]
pub use bench::{ablate, profile, profile_batch, profile_prefill_in_pass};
pub use options::weight_format;
pub use pressure::{MemoryPressureEvent, PressureMonitor};
pub use stats::{FinishReason, GenerationStats};
pub use stop::{StopMatcher, StopStep};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernels, PendingMap, finish_map, start_map};
use crate::model::ModelSource;
use crate::model::llama::{LlamaGpu, LoadOptions};
use crate::sampling::SampleSettings;
use crate::tokenizer::Tokenizer;
use emit::Emitter;
use lookup::NgramIndex;
use prefetch::Prefetch;

/// Engine options fixed at load.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub load: LoadOptions,
    /// Decode steps encoded into one command buffer.
    pub steps_per_submit: u32,
    /// Submissions kept in flight (1 = wait for each before the next).
    pub in_flight: u32,
    /// The browser profile in force (None: plain native defaults).
    pub profile: Option<crate::browser::BrowserProfile>,
    /// The configuration these options came from.
    pub config: crate::config::StreamingConfig,
    /// Prompts of at most this many tokens are prefilled through decode steps, one per
    /// token, instead of a prefill chunk (0: never). On GPUs the tiled matrix-matrix kernels
    /// walk K serially in few workgroups when a chunk is short, so a one-token prompt costs
    /// 7B about 50 decode steps.
    pub step_prefill: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            load: LoadOptions::default(),
            steps_per_submit: 4,
            in_flight: 3,
            profile: None,
            config: crate::config::StreamingConfig::default(),
            step_prefill: 0,
        }
    }
}

/// Per-call generation parameters.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sample: SampleSettings,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence ids (benchmarks).
    pub ignore_eos: bool,
    /// End with `FinishReason::Timeout` when a token takes longer than this (ms).
    pub token_timeout_ms: Option<u64>,
    /// End with `FinishReason::Timeout` when the whole generation takes longer (ms).
    pub generation_timeout_ms: Option<u64>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            sample: SampleSettings::greedy(),
            max_tokens: 128,
            stop: Vec::new(),
            ignore_eos: false,
            token_timeout_ms: None,
            generation_timeout_ms: None,
        }
    }
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
    /// Memory-pressure events this generation raised, in order.
    pub memory_events: Vec<MemoryPressureEvent>,
}

/// What the callback sees for each generated token.
pub struct TokenEvent<'a> {
    /// The token; `None` for text held back until the end (an incomplete character or a
    /// stop-string prefix that never completed).
    pub id: Option<u32>,
    /// Text this token completes (may be empty while a character or stop string is pending).
    pub text: &'a str,
    /// The engine's tokenizer, for callers that decode the ids themselves (a generation
    /// resumed in several engine calls keeps one decoder across them).
    pub tokenizer: &'a Tokenizer,
}

/// One decode submission whose ids are being read back.
struct InFlight {
    slot: usize,
    count: usize,
    rx: PendingMap,
    index: wgpu::SubmissionIndex,
}

/// A loaded model ready to generate.
pub struct Engine {
    pub gpu: Gpu,
    pub kernels: Kernels,
    pub model: LlamaGpu,
    pub tokenizer: Tokenizer,
    pub options: EngineOptions,
    /// Ring of staging buffers for token ids: `[steps_per_submit]` u32 each.
    id_staging: Vec<wgpu::Buffer>,
    /// `[chunk, vocab]` f32 staging for logits readback.
    logits_staging: wgpu::Buffer,
    cancel: Arc<AtomicBool>,
    /// The prefetch strategy with what it measured so far.
    pub prefetch: Prefetch,
    /// Memory-pressure events not yet taken by the caller (see [`Engine::pressure_handle`]).
    pressure: Arc<Mutex<Vec<MemoryPressureEvent>>>,
    /// Time spent loading (weights upload, pipelines), ms.
    pub load_ms: f64,
}

/// Negative log-likelihood of `target` under the softmax of one row of logits (f64 sums).
fn nll(row: &[f32], target: u32) -> f64 {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&l| (l as f64 - mx).exp()).sum();
    z.ln() + mx - row[target as usize] as f64
}

impl Engine {
    /// Upload `src` to the GPU and build everything the decode loop needs.
    pub fn load(gpu: Gpu, src: &dyn ModelSource, options: EngineOptions) -> Result<Engine> {
        Self::load_with_progress(gpu, src, options, &mut |_, _| {})
    }

    /// [`Engine::load`] reporting `(layers uploaded, total)` as it goes.
    pub fn load_with_progress(
        gpu: Gpu,
        src: &dyn ModelSource,
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Engine> {
        let t0 = Instant::now();
        let tokenizer = src.tokenizer()?;
        let kernels = if options.load.shader_checks { Kernels::with_all_checks() } else { Kernels::default() };
        let mut model = LlamaGpu::load(&gpu, &kernels, src, options.load.clone(), progress)?;
        // initial_batch_size: lanes (KV cache, token buffer, dispatch lists) built now, so
        // the first concurrent generations do not build theirs; more come when needed.
        let initial = (options.config.initial_batch_size as usize).clamp(1, model.max_lanes());
        model.select_lane(&gpu, &kernels, initial - 1)?;
        model.select_lane(&gpu, &kernels, 0)?;
        gpu.take_errors()?;
        let mut options = options;
        options.load = model.options.clone();
        options.steps_per_submit = options.steps_per_submit.clamp(1, 64);
        options.in_flight = options.in_flight.clamp(1, 16);
        // A slot holds a submission's ids or a verification's (drafts + 1).
        let slot_bytes = u64::from(options.steps_per_submit).max(prefetch::MAX_DRAFT as u64 + 1) * 4;
        // One slot per submission in flight (the adaptive strategy may go deeper) + one.
        let slots = options.in_flight.max(prefetch::MAX_DEPTH as u32);
        let id_staging = (0..=slots).map(|i| gpu.staging(&format!("ids {i}"), slot_bytes)).collect();
        let logits_staging = gpu.staging("logits staging", model.logits.size());
        let prefetch = Prefetch::new(
            options.config.prefetch_strategy,
            options.in_flight as usize,
            options.steps_per_submit as usize,
        );
        Ok(Engine {
            gpu,
            kernels,
            model,
            tokenizer,
            options,
            id_staging,
            logits_staging,
            cancel: Arc::new(AtomicBool::new(false)),
            prefetch,
            pressure: Arc::new(Mutex::new(Vec::new())),
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// A flag that stops the running generation within one readback when set.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Memory-pressure events pushed as they happen during a generation: a caller (the
    /// browser class) drains it from its token callback to fire `onMemoryPressure` live.
    pub fn pressure_handle(&self) -> Arc<Mutex<Vec<MemoryPressureEvent>>> {
        self.pressure.clone()
    }

    /// Bytes on the GPU: weights, KV cache (allocated now), activations and staging.
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        let staging: u64 = self.id_staging.iter().map(|b| b.size()).sum::<u64>() + self.logits_staging.size();
        (self.model.weight_bytes, self.model.kv_bytes(), self.model.activation_bytes + staging)
    }

    /// The KV budget and the memory limit in bytes, where configured.
    fn memory_limits(&self) -> (Option<u64>, Option<u64>) {
        let mb = |v: u32| u64::from(v) * 1_048_576;
        let mem = match &self.options.profile {
            Some(p) => Some(mb(p.memory_limit_mb(&self.options.config))),
            None => self.options.config.memory_limit_mb.map(mb),
        };
        (self.options.load.kv.budget_bytes, mem)
    }

    /// Grow the KV cache for a pass writing positions up to `latest` (in `enc`, before the
    /// pass) and, during a generation (`watch`), record the memory-pressure events it raises.
    fn reserve_kv(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
        latest: usize,
        watch: Option<(&mut PressureMonitor, &mut Vec<MemoryPressureEvent>)>,
    ) {
        self.model.reserve_kv(&self.gpu, enc, latest);
        let Some((monitor, events)) = watch else { return };
        let new = monitor.check(self.model.kv(), latest);
        if !new.is_empty() {
            if let Ok(mut q) = self.pressure.lock() {
                q.extend(new.iter().cloned());
            }
            events.extend(new);
        }
    }

    fn monitor(&self) -> PressureMonitor {
        let (w, _, act) = self.memory_bytes();
        let (kv, mem) = self.memory_limits();
        PressureMonitor::new(kv, mem, w + act)
    }

    /// The single-sequence paths (generate, logits, score) run on lane 0; a batch that is
    /// alive at the same time must not hold lane 0 (callers use one or the other).
    fn solo_lane(&mut self) -> Result<()> {
        self.model.select_lane(&self.gpu, &self.kernels, 0)
    }

    fn check_prompt(&self, ids: &[u32], extra: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let ctx = self.model.kv().plan.max_positions;
        if ids.len() + extra > ctx {
            return Err(Error::ContextLengthExceeded(format!(
                "the prompt has {} tokens; with {extra} more it exceeds the {} KV cache's {ctx} positions",
                ids.len(),
                self.model.kv().plan.strategy.as_str()
            )));
        }
        Ok(())
    }

    /// Encode and submit the prefill of `ids`, chunk by chunk. The last chunk samples the
    /// first new id (when `sample`) and copies it to staging slot 0.
    fn submit_prefill(
        &mut self,
        ids: &[u32],
        sample: bool,
        mut watch: Option<(&mut PressureMonitor, &mut Vec<MemoryPressureEvent>)>,
    ) -> Option<wgpu::SubmissionIndex> {
        self.model.write_tokens(&self.gpu, 0, ids);
        // A short prompt is one "chunk" run as decode steps (`EngineOptions::step_prefill`).
        let steps = sample && ids.len() <= self.options.step_prefill;
        let chunk = if steps { ids.len().max(1) } else { self.model.options.chunk };
        let mut last = None;
        let n_chunks = ids.len().div_ceil(chunk);
        for c in 0..n_chunks {
            let p0 = c * chunk;
            let len = (ids.len() - p0).min(chunk);
            let is_last = c + 1 == n_chunks;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            let w = watch.as_mut().map(|(m, e)| (&mut **m, &mut **e));
            self.reserve_kv(&mut enc, p0 + len - 1, w);
            if steps {
                self.model.encode_prompt_steps(&self.gpu, &mut enc, len);
            } else {
                self.model.write_state(&self.gpu, p0 as u32, len as u32);
                let mut pass = enc.begin_compute_pass(&Default::default());
                self.model.encode_prefill(&mut pass, len as u32, sample && is_last, false);
            }
            if is_last && sample {
                enc.copy_buffer_to_buffer(&self.model.lane().tokens, ids.len() as u64 * 4, &self.id_staging[0], 0, 4);
            }
            last = Some(self.gpu.queue.submit([enc.finish()]));
        }
        last
    }

    /// Logits `[vocab]` for the token after `ids` (teacher-forced prefill, no sampling).
    pub async fn next_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.solo_lane()?;
        self.check_prompt(ids, 0)?;
        self.submit_prefill(ids, false, None);
        let vocab = self.model.config.vocab_size as u64;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.model.logits, 0, &self.logits_staging, 0, vocab * 4);
        let idx = self.gpu.queue.submit([enc.finish()]);
        let rx = start_map(&self.logits_staging, vocab * 4);
        let bytes = finish_map(&self.gpu, &self.logits_staging, vocab * 4, rx, Some(idx)).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Teacher-forced prefill over `ids` with the logits of every row read back: `each(p0,
    /// rows)` gets the `[len, vocab]` logits of the chunk starting at position `p0`.
    pub(crate) async fn each_logits_chunk(&mut self, ids: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        self.solo_lane()?;
        self.check_prompt(ids, 0)?;
        self.model.write_tokens(&self.gpu, 0, ids);
        let chunk = self.model.options.chunk;
        let vocab = self.model.config.vocab_size;
        for p0 in (0..ids.len()).step_by(chunk) {
            let len = (ids.len() - p0).min(chunk);
            self.model.write_state(&self.gpu, p0 as u32, len as u32);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            self.reserve_kv(&mut enc, p0 + len - 1, None);
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                self.model.encode_prefill(&mut pass, len as u32, false, true);
            }
            let bytes_len = (len * vocab * 4) as u64;
            enc.copy_buffer_to_buffer(&self.model.logits, 0, &self.logits_staging, 0, bytes_len);
            let idx = self.gpu.queue.submit([enc.finish()]);
            let rx = start_map(&self.logits_staging, bytes_len);
            let bytes = finish_map(&self.gpu, &self.logits_staging, bytes_len, rx, Some(idx)).await?;
            each(p0, &bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
        }
        Ok(())
    }

    /// Mean negative log-likelihood of `ids[1..]` given their prefixes: `(sum_nll, count)`.
    pub async fn score(&mut self, ids: &[u32]) -> Result<(f64, usize)> {
        let vocab = self.model.config.vocab_size;
        let (mut sum, mut count) = (0.0f64, 0usize);
        self.each_logits_chunk(ids, &mut |p0, logits| {
            for (r, row) in logits.chunks_exact(vocab).enumerate() {
                let Some(&target) = ids.get(p0 + r + 1) else {
                    break;
                };
                sum += nll(row, target);
                count += 1;
            }
        })
        .await?;
        Ok((sum, count))
    }

    /// [`Engine::score`] through the decode path: every position runs as a decode step (the
    /// single-row matvecs, split attention and partial merges of a generation), fed the
    /// text's ids instead of its own picks, with each step's logits read back. One
    /// submission per token: a measurement of the decode kernels' accuracy, not a fast path.
    pub async fn score_decode(&mut self, ids: &[u32]) -> Result<(f64, usize)> {
        self.solo_lane()?;
        self.check_prompt(ids, 0)?;
        let vocab = self.model.config.vocab_size;
        let bytes_len = vocab as u64 * 4;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for pos in 0..ids.len().saturating_sub(1) {
            // The previous step's sampler wrote its own pick at `pos`: the text's ids go back.
            self.model.write_tokens(&self.gpu, pos, &ids[pos..pos + 2]);
            self.model.write_state(&self.gpu, pos as u32, 1);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            self.reserve_kv(&mut enc, pos, None);
            self.model.encode_decode_steps(&mut enc, pos, 1);
            enc.copy_buffer_to_buffer(&self.model.logits, 0, &self.logits_staging, 0, bytes_len);
            let idx = self.gpu.queue.submit([enc.finish()]);
            let rx = start_map(&self.logits_staging, bytes_len);
            let bytes = finish_map(&self.gpu, &self.logits_staging, bytes_len, rx, Some(idx)).await?;
            sum += nll(bytemuck::cast_slice(&bytes), ids[pos + 1]);
            count += 1;
        }
        self.gpu.take_errors().map_err(crate::gpu::in_generation)?;
        Ok((sum, count))
    }

    /// Generate from prompt ids. `on_token` gets every kept token with the text it
    /// completes; returning `false` stops the generation.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Generation> {
        let t_start = Instant::now();
        self.cancel.store(false, Ordering::SeqCst);
        self.solo_lane()?;
        self.check_prompt(prompt, 1)?;
        if let Ok(mut q) = self.pressure.lock() {
            q.clear();
        }
        // Positions run out at the static cache's context (the windowed strategies go on to
        // MAX_WINDOW_POSITIONS): the generation then ends with context_length_exceeded.
        let ctx = self.model.kv().plan.max_positions;
        let budget = params.max_tokens.min(ctx - prompt.len());
        let runs_out = params.max_tokens > budget;
        let mut monitor = self.monitor();
        let mut events = Vec::new();
        let vocab = self.model.config.vocab_size as u32;
        self.model.write_sample_params(
            &self.gpu,
            &params.sample.to_params(vocab, false),
            &params.sample.to_every_row_params(vocab),
        );
        let (depth, steps) = (self.options.in_flight as usize, self.options.steps_per_submit as usize);
        self.prefetch.configure(self.options.config.prefetch_strategy, depth, steps);
        self.prefetch.begin();
        // Token prediction: the context (prompt + kept ids) indexed for prompt lookup.
        let mut lookup = self.options.config.token_prediction_enabled.then(|| NgramIndex::new(prompt));

        let (mut decode_dispatches, mut decode_steps) = (0usize, 0usize);
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            dispatches_per_token: self.model.dispatches_per_decode_step(prompt.len()),
            batch_sizes: vec![1],
            ..Default::default()
        };
        let mut em = Emitter::new(&params.stop, params.ignore_eos);
        let mut finish = None;
        if budget == 0 {
            return Ok(Generation {
                text: String::new(),
                prompt_ids: prompt.to_vec(),
                ids: Vec::new(),
                finish_reason: FinishReason::Length,
                stats,
                memory_events: events,
            });
        }

        let Some(prefill_index) = self.submit_prefill(prompt, true, Some((&mut monitor, &mut events))) else {
            return Err(Error::internal("no prefill submission"));
        };
        let mut queue: VecDeque<InFlight> = VecDeque::new();
        queue.push_back(InFlight { slot: 0, count: 1, rx: start_map(&self.id_staging[0], 4), index: prefill_index });
        let mut submitted = 1usize;
        let mut next_slot = 1usize;
        let slot_ids = (self.id_staging[0].size() / 4) as usize;
        let mut t_first: Option<Instant> = None;
        let mut t_last_batch = t_start;

        loop {
            let len = prompt.len() + submitted;
            let max_drafts = self.max_drafts(len, budget - submitted);
            let draft =
                lookup.as_ref().and_then(|ix| self.prefetch.draft_len(ix, max_drafts).map(|(m, k)| ix.draft(m, k)));
            let batch: Vec<u32> = match draft {
                // Verify with nothing in flight, so that the context is known.
                Some(draft) if finish.is_none() && queue.is_empty() => {
                    let sampled = self.verify_rows(len, &draft).await?;
                    let accepted = speculative::accepted_prefix(&draft, &sampled);
                    self.prefetch.on_verify(draft.len(), accepted);
                    stats.verify_passes += 1;
                    stats.submissions += 1;
                    stats.proposed += draft.len();
                    stats.accepted += accepted;
                    submitted += accepted + 1;
                    // Roll back: the next step reads the correction at its position.
                    self.model.write_state(&self.gpu, (prompt.len() + submitted - 1) as u32, 1);
                    sampled[..=accepted].to_vec()
                }
                draft => {
                    // A pending draft waits for the submissions in flight instead of adding more.
                    let plan = self.prefetch.plan(em.holding());
                    let depth = plan.depth.min(self.id_staging.len() - 1);
                    while draft.is_none() && finish.is_none() && queue.len() < depth && submitted < budget {
                        let s = plan.steps.min(slot_ids).min(budget - submitted);
                        let slot = next_slot;
                        next_slot = (next_slot + 1) % self.id_staging.len();
                        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                        // The first step reads the id at `first` and the last writes KV `latest`.
                        let first = prompt.len() + submitted - 1;
                        let latest = first + s - 1;
                        self.reserve_kv(&mut enc, latest, Some((&mut monitor, &mut events)));
                        decode_dispatches += self.model.encode_decode_steps(&mut enc, first, s);
                        decode_steps += s;
                        let from = (prompt.len() + submitted) as u64 * 4;
                        enc.copy_buffer_to_buffer(
                            &self.model.lane().tokens,
                            from,
                            &self.id_staging[slot],
                            0,
                            s as u64 * 4,
                        );
                        let index = self.gpu.queue.submit([enc.finish()]);
                        let rx = start_map(&self.id_staging[slot], s as u64 * 4);
                        queue.push_back(InFlight { slot, count: s, rx, index });
                        submitted += s;
                        stats.submissions += 1;
                        stats.steps_run += s;
                    }
                    let Some(job) = queue.pop_front() else { break };
                    let t_wait = Instant::now();
                    let bytes = finish_map(
                        &self.gpu,
                        &self.id_staging[job.slot],
                        job.count as u64 * 4,
                        job.rx,
                        Some(job.index),
                    )
                    .await?;
                    self.gpu.take_errors().map_err(crate::gpu::in_generation)?;
                    let now = Instant::now();
                    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                    self.prefetch.on_readback(ms(t_wait, now), ms(t_last_batch, now));
                    bytemuck::pod_collect_to_vec(&bytes)
                }
            };
            if t_first.is_none() {
                let now = Instant::now();
                stats.first_token_latency_ms = (now - t_start).as_secs_f64() * 1e3;
                stats.prefill_ms = stats.first_token_latency_ms;
                t_first = Some(now);
            }
            if finish.is_some() {
                continue; // steps that ran past a stop are discarded
            }
            // Deadlines: the ids of a batch arrive together, so a token's time is its share
            // of the wait for the batch. The batch is still delivered.
            let t_batch = Instant::now();
            let per_token_ms = (t_batch - t_last_batch).as_secs_f64() * 1e3 / batch.len() as f64;
            let timed_out = params.token_timeout_ms.is_some_and(|ms| per_token_ms > ms as f64)
                || params.generation_timeout_ms.is_some_and(|ms| (t_batch - t_start).as_secs_f64() * 1e3 > ms as f64);
            t_last_batch = t_batch;
            for id in batch {
                if let Some(f) = em.push(&self.tokenizer, id, on_token)? {
                    finish = Some(f);
                    break;
                }
                if let Some(ix) = lookup.as_mut() {
                    ix.push(id);
                }
                if self.cancel.load(Ordering::SeqCst) {
                    finish = Some(FinishReason::Cancelled);
                    break;
                }
                if em.ids.len() >= budget {
                    finish = Some(FinishReason::Length);
                    break;
                }
            }
            if timed_out && finish.is_none() {
                finish = Some(FinishReason::Timeout);
            }
        }
        let finish = finish.unwrap_or(FinishReason::Length);
        self.prefetch.on_finish(em.ids.len(), matches!(finish, FinishReason::Stop | FinishReason::Cancelled));
        em.flush(&self.tokenizer, on_token)?;
        let Emitter { ids, text, .. } = em;
        let t_end = Instant::now();
        stats.close(t_start, t_first, t_end, ids.len());
        if decode_steps > 0 {
            // The attention split, and with it the dispatch count, follows the context length.
            stats.dispatches_per_token = (decode_dispatches as f64 / decode_steps as f64).round() as usize;
        }
        stats.finish_reason = Some(finish);
        self.gpu.take_errors().map_err(crate::gpu::in_generation)?;
        if runs_out && finish == FinishReason::Length {
            return Err(Error::ContextLengthExceeded(format!(
                "the {} KV cache is full after {} prompt + {} generated tokens ({} positions); max_tokens was {}",
                self.model.kv().plan.strategy.as_str(),
                prompt.len(),
                ids.len(),
                ctx,
                params.max_tokens
            )));
        }
        Ok(Generation { text, prompt_ids: prompt.to_vec(), ids, finish_reason: finish, stats, memory_events: events })
    }
}
