//! Continuous batching: concurrent generations on one engine decoded together. Each
//! generation owns a lane of the model (its token ids, position, sampler parameters and KV
//! cache); a batched step runs every active lane one token further in one pass that reads
//! the weights once (`LlamaGpu::encode_batch_step`). Generations join between steps (their
//! prompt is prefilled on their lane and their first token read back) and leave between
//! steps (finished, cancelled, timed out), so the batch grows and shrinks as requests come
//! and go. How many lanes may run at once is `batch_capacity`, set by
//! `batch_size_strategy` within min/max_batch_size.
//!
//! At temperature 0 a lane's ids are exactly its solo ids: the rows of a step never mix
//! (matrix rows are independent dot products, attention reads only the lane's own cache).

use std::collections::VecDeque;

use web_time::Instant;

use super::emit::Emitter;
use super::{Engine, FinishReason, GenerateParams, Generation, GenerationStats, TokenEvent};
use crate::config::BatchSizeStrategy;
use crate::error::{Error, Result};
use crate::gpu::{PendingMap, finish_map, start_map};

/// Most decode steps per batched submission.
const MAX_STEPS: usize = 64;

/// One generation in the batch.
struct Seq {
    id: u64,
    /// Unique within the batch for each join (a request that leaves and rejoins under the
    /// same id must not receive what a submission still in flight made for its old lane).
    key: u64,
    lane: usize,
    prompt: Vec<u32>,
    prompt_len: usize,
    params: GenerateParams,
    em: Emitter,
    stats: GenerationStats,
    t_start: Instant,
    t_first: Instant,
    t_last: Instant,
    /// Ids sampled on the GPU so far (the first one by the prefill).
    submitted: usize,
    /// Most ids this generation may produce (max_tokens within the positions left).
    budget: usize,
    /// The positions, not max_tokens, set the budget.
    runs_out: bool,
}

/// A submission of batched steps whose ids are being read back.
struct InFlight {
    /// The [`Seq::key`] of each row.
    rows: Vec<u64>,
    steps: usize,
    slot: usize,
    rx: PendingMap,
    index: wgpu::SubmissionIndex,
}

/// The generations decoded together and the submissions in flight for them.
pub struct Batch {
    seqs: Vec<Seq>,
    /// Submissions kept in flight: while the CPU reads one back and delivers its ids, the
    /// GPU runs the next.
    pub depth: usize,
    inflight: VecDeque<InFlight>,
    /// One `[max_lanes, MAX_STEPS]` u32 staging buffer per submission in flight.
    staging: Vec<wgpu::Buffer>,
    next_slot: usize,
    next_key: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::with_depth(2)
    }
}

impl Batch {
    /// A batch that keeps `depth` submissions in flight (1: each is read back before the next).
    pub fn with_depth(depth: usize) -> Batch {
        Batch {
            seqs: Vec::new(),
            depth: depth.clamp(1, 8),
            inflight: VecDeque::new(),
            staging: Vec::new(),
            next_slot: 0,
            next_key: 0,
        }
    }

    /// Generations in the batch.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Whether generation `id` is in the batch.
    pub fn contains(&self, id: u64) -> bool {
        self.seqs.iter().any(|s| s.id == id)
    }
}

impl Engine {
    /// Lanes that may run at once now. `performance`: max_batch_size; `memory` and
    /// `balanced`: as many lanes as the memory limit leaves room for after weights and
    /// activations, each counted at its largest KV cache (`memory` keeps 50% of that room
    /// free, `balanced` 20%), within min/max_batch_size. 1 without adaptive_batch_size.
    pub fn batch_capacity(&self) -> usize {
        let cfg = &self.options.config;
        let max = self.model.max_lanes();
        if !cfg.adaptive_batch_size {
            return 1;
        }
        let min = (cfg.min_batch_size as usize).clamp(1, max);
        let keep = match cfg.batch_size_strategy {
            BatchSizeStrategy::Performance => return max,
            BatchSizeStrategy::Memory => 0.5,
            BatchSizeStrategy::Balanced => 0.2,
        };
        let (_, mem) = self.memory_limits();
        let Some(mem) = mem else { return max };
        let (w, _, act) = self.memory_bytes();
        let plan = self.model.kv_plan();
        let per_lane = plan.buffer_bytes(plan.rows_to_allocate(plan.main_rows)) * 2;
        let room = (mem.saturating_sub(w + act) as f64 * (1.0 - keep)) as u64;
        ((room / per_lane.max(1)) as usize).clamp(min, max)
    }

    /// Start generation `id` in the batch: prefill `prompt` on a free lane and deliver its
    /// first token. Returns the finished generation when that token already ends it (no lane
    /// is kept then). Call between [`Engine::batch_step`]s; fails with `busy` when the batch
    /// is at [`Engine::batch_capacity`].
    pub async fn batch_join(
        &mut self,
        batch: &mut Batch,
        id: u64,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Option<Generation>> {
        let t_start = Instant::now();
        if batch.len() >= self.batch_capacity() {
            return Err(Error::Busy(format!("the batch is full ({} generations)", batch.len())));
        }
        self.check_prompt(prompt, 1)?;
        if batch.is_empty() {
            // A stop() that ended the previous batch does not carry over.
            self.cancel.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let lane = (0..self.model.max_lanes())
            .find(|l| batch.seqs.iter().all(|s| s.lane != *l))
            .ok_or_else(|| Error::Busy("no free lane".into()))?;
        self.model.select_lane(&self.gpu, &self.kernels, lane)?;
        let vocab = self.model.config.vocab_size as u32;
        let (p, rows) = (params.sample.to_params(vocab, false), params.sample.to_every_row_params(vocab));
        self.model.write_sample_params(&self.gpu, &p, &rows);
        let ctx = self.model.kv_plan().max_positions;
        let budget = params.max_tokens.min(ctx - prompt.len());
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            dispatches_per_token: self.model.dispatches_per_decode_step(prompt.len()),
            ..Default::default()
        };
        batch.next_key += 1;
        let mut seq = Seq {
            id,
            key: batch.next_key,
            lane,
            prompt: prompt.to_vec(),
            prompt_len: prompt.len(),
            params: params.clone(),
            em: Emitter::new(&params.stop, params.ignore_eos),
            stats: GenerationStats::default(),
            t_start,
            t_first: t_start,
            t_last: t_start,
            submitted: 1,
            budget,
            runs_out: params.max_tokens > budget,
        };
        if budget == 0 {
            stats.finish_reason = Some(FinishReason::Length);
            seq.stats = stats;
            return self.end_seq(seq, FinishReason::Length, on_token).map(Some);
        }
        let index = self.submit_prefill(prompt, true, None).ok_or_else(|| Error::internal("no prefill submission"))?;
        let rx = start_map(&self.id_staging[0], 4);
        let bytes = finish_map(&self.gpu, &self.id_staging[0], 4, rx, Some(index)).await?;
        self.gpu.take_errors().map_err(crate::gpu::in_generation)?;
        let first: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        let now = Instant::now();
        stats.first_token_latency_ms = (now - t_start).as_secs_f64() * 1e3;
        stats.prefill_ms = stats.first_token_latency_ms;
        seq.stats = stats;
        seq.t_first = now;
        seq.t_last = now;
        let finish = match seq.em.push(&self.tokenizer, first[0], on_token)? {
            Some(f) => Some(f),
            None if seq.em.ids.len() >= budget => Some(FinishReason::Length),
            None => None,
        };
        match finish {
            Some(f) => self.end_seq(seq, f, on_token).map(Some),
            None => {
                batch.seqs.push(seq);
                Ok(None)
            }
        }
    }

    /// Keep up to `batch.depth` submissions of batched steps in flight (each runs every
    /// generation up to `steps_per_submit` tokens further), read the oldest back, deliver its
    /// ids (`on_token(id, event)`), and return the generations that ended (their lanes are
    /// free again). Ids a submission produced for a generation that ended before it was read
    /// are discarded, as in single-sequence decoding.
    pub async fn batch_step(
        &mut self,
        batch: &mut Batch,
        on_token: &mut dyn FnMut(u64, TokenEvent<'_>) -> bool,
    ) -> Result<Vec<(u64, Generation)>> {
        while batch.inflight.len() < batch.depth.max(1) {
            if !self.submit_batch(batch)? {
                break;
            }
        }
        let Some(job) = batch.inflight.pop_front() else { return Ok(Vec::new()) };
        let staging = &batch.staging[job.slot];
        let total = job.rows.len() as u64 * job.steps as u64 * 4;
        let got = finish_map(&self.gpu, staging, total, job.rx, Some(job.index)).await?;
        self.gpu.take_errors().map_err(crate::gpu::in_generation)?;
        let ids: Vec<u32> = bytemuck::pod_collect_to_vec(&got);
        let now = Instant::now();
        let b = job.rows.len();
        let steps = job.steps;
        let dispatches = self.model.dispatches_per_batch_step(b);
        let cancelled = self.cancel.load(std::sync::atomic::Ordering::SeqCst);
        let mut ended = Vec::new();
        for (r, &key) in job.rows.iter().enumerate() {
            let Some(i) = batch.seqs.iter().position(|s| s.key == key) else { continue };
            let s = &mut batch.seqs[i];
            let seq_id = s.id;
            s.stats.submissions += 1;
            s.stats.steps_run += steps;
            s.stats.dispatches_per_token = dispatches.div_ceil(b);
            if s.stats.batch_sizes.last() != Some(&b) {
                s.stats.batch_sizes.push(b);
            }
            let per_token_ms = (now - s.t_last).as_secs_f64() * 1e3 / steps as f64;
            let elapsed_ms = (now - s.t_start).as_secs_f64() * 1e3;
            s.t_last = now;
            let mut finish = None;
            let mut cb = |e: TokenEvent<'_>| on_token(seq_id, e);
            for &id in &ids[r * steps..(r + 1) * steps] {
                if let Some(f) = s.em.push(&self.tokenizer, id, &mut cb)? {
                    finish = Some(f);
                    break;
                }
                if s.em.ids.len() >= s.budget {
                    finish = Some(FinishReason::Length);
                    break;
                }
            }
            let timed_out = s.params.token_timeout_ms.is_some_and(|ms| per_token_ms > ms as f64)
                || s.params.generation_timeout_ms.is_some_and(|ms| elapsed_ms > ms as f64);
            if finish.is_none() && cancelled {
                finish = Some(FinishReason::Cancelled);
            }
            if finish.is_none() && timed_out {
                finish = Some(FinishReason::Timeout);
            }
            if let Some(f) = finish {
                let s = batch.seqs.remove(i);
                ended.push((seq_id, self.end_seq(s, f, &mut cb)?));
            }
        }
        Ok(ended)
    }

    /// Encode and submit one submission of batched steps over every generation with budget
    /// left; false when none has any.
    fn submit_batch(&mut self, batch: &mut Batch) -> Result<bool> {
        let runnable: Vec<usize> =
            (0..batch.seqs.len()).filter(|&i| batch.seqs[i].submitted < batch.seqs[i].budget).collect();
        if runnable.is_empty() {
            return Ok(false);
        }
        // No lane runs past its budget: the steps that would are never needed.
        let left = runnable.iter().map(|&i| batch.seqs[i].budget - batch.seqs[i].submitted).min().unwrap_or(1);
        let steps = (self.options.steps_per_submit as usize).min(left).clamp(1, MAX_STEPS);
        let slot = batch.next_slot;
        while batch.staging.len() <= slot {
            let bytes = (self.model.max_lanes() * MAX_STEPS * 4) as u64;
            batch.staging.push(self.gpu.staging("batch ids", bytes));
        }
        batch.next_slot = (slot + 1) % batch.depth.max(1);
        let lanes: Vec<usize> = runnable.iter().map(|&i| batch.seqs[i].lane).collect();
        self.model.begin_batch(&self.gpu, &self.kernels, &lanes)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        for &i in &runnable {
            let s = &batch.seqs[i];
            self.model.reserve_lane_kv(&self.gpu, &mut enc, s.lane, s.prompt_len + s.submitted + steps - 2);
        }
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..steps {
                self.model.encode_batch_step(&mut pass, &lanes);
            }
        }
        let bytes = (steps * 4) as u64;
        let staging = &batch.staging[slot];
        for (r, &i) in runnable.iter().enumerate() {
            let s = &batch.seqs[i];
            let from = (s.prompt_len + s.submitted) as u64 * 4;
            enc.copy_buffer_to_buffer(self.model.lane_tokens(s.lane), from, staging, r as u64 * bytes, bytes);
        }
        let index = self.gpu.queue.submit([enc.finish()]);
        let rx = start_map(staging, runnable.len() as u64 * bytes);
        let rows = runnable.iter().map(|&i| batch.seqs[i].key).collect();
        for &i in &runnable {
            batch.seqs[i].submitted += steps;
        }
        batch.inflight.push_back(InFlight { rows, steps, slot, rx, index });
        Ok(true)
    }

    /// Take generation `id` out of the batch (its lane is free again), ending it as cancelled.
    pub fn batch_cancel(
        &mut self,
        batch: &mut Batch,
        id: u64,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Option<Generation>> {
        let Some(i) = batch.seqs.iter().position(|s| s.id == id) else { return Ok(None) };
        let s = batch.seqs.remove(i);
        self.end_seq(s, FinishReason::Cancelled, on_token).map(Some)
    }

    fn end_seq(
        &mut self,
        mut s: Seq,
        finish: FinishReason,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Generation> {
        s.em.flush(&self.tokenizer, on_token)?;
        let t_end = Instant::now();
        let mut stats = s.stats;
        stats.tokens_generated = s.em.ids.len();
        stats.generation_time_ms = (t_end - s.t_start).as_secs_f64() * 1e3;
        stats.decode_ms = (t_end - s.t_first).as_secs_f64() * 1e3;
        stats.prefill_tokens_per_second = s.prompt_len as f64 / (stats.prefill_ms / 1e3).max(1e-9);
        let decoded = s.em.ids.len().saturating_sub(1);
        if decoded > 0 && stats.decode_ms > 0.0 {
            stats.tokens_per_second = decoded as f64 / (stats.decode_ms / 1e3);
            stats.avg_token_latency_ms = stats.decode_ms / decoded as f64;
        }
        if stats.batch_sizes.is_empty() {
            stats.batch_sizes.push(1);
        }
        stats.finish_reason = Some(finish);
        if s.runs_out && finish == FinishReason::Length {
            return Err(Error::ContextLengthExceeded(format!(
                "the KV cache is full after {} prompt + {} generated tokens",
                s.prompt_len,
                s.em.ids.len()
            )));
        }
        let Emitter { ids, text, .. } = s.em;
        Ok(Generation { text, prompt_ids: s.prompt, ids, finish_reason: finish, stats, memory_events: Vec::new() })
    }
}
