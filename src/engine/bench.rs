//! The benchmark behind `wsi bench` and the browser bench page: prefill a synthetic prompt
//! (or a given one, e.g. [`REPETITIVE_PROMPT`] for token prediction), decode a fixed number
//! of tokens (EOS ignored; greedy unless sampling settings are given), report measured rates.

use serde::Serialize;

use super::{Engine, GenerateParams};
use crate::error::Result;
use crate::sampling::SampleSettings;

/// Measured figures of one benchmark run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub adapter: String,
    pub backend: String,
    pub quantization: String,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub first_token_latency_ms: f64,
    pub dispatches_per_token: usize,
    pub submissions_per_token: f64,
    pub steps_per_submit: u32,
    pub in_flight: u32,
    pub prefetch_strategy: String,
    pub token_prediction: bool,
    /// Accepted / proposed drafts.
    pub prefetch_hit_rate: f64,
    pub tokens_proposed: usize,
    pub tokens_accepted: usize,
    pub verify_passes: usize,
    pub weight_mb: f64,
    pub kv_cache_mb: f64,
    pub load_ms: f64,
    /// Of which quantising weights (ms).
    pub quantize_ms: f64,
    /// CPU time to encode one decode step into a command buffer (µs; 64 steps encoded and
    /// finished, not submitted): a floor on the time per token where the GPU is faster.
    pub encode_us_per_step: f64,
    /// GPU time per decode step (µs) with 64 steps in one submission, timed from the submit
    /// to its completion (native only): what decode would cost without CPU or readback.
    pub gpu_us_per_step: Option<f64>,
}

/// One kernel family's share of a step: (family, dispatches, total ms).
#[cfg(not(target_arch = "wasm32"))]
pub type FamilyTime = (String, usize, f64);

/// Per kernel family: (calls, total ms) for one decode step (`prefill_tokens == 0`) or one
/// prefill chunk, slowest first; and whether the times are GPU timestamps (else CPU-timed
/// dispatches run alone).
#[cfg(not(target_arch = "wasm32"))]
pub fn profile(engine: &Engine, reps: u32, prefill_tokens: u32) -> Result<(Vec<FamilyTime>, bool)> {
    let times = engine.model.profile(&engine.gpu, reps, prefill_tokens)?;
    Ok((by_family(times.rows), times.gpu_timestamps))
}

/// Per kernel family, a prefill chunk of `n` tokens timed inside the one pass the engine
/// runs it in (timestamps between dispatches), `reps` times; None without timestamps
/// inside passes.
#[cfg(not(target_arch = "wasm32"))]
pub fn profile_prefill_in_pass(engine: &Engine, n: u32, reps: u32) -> Result<Option<Vec<FamilyTime>>> {
    Ok(engine.model.profile_prefill_in_pass(&engine.gpu, n, reps)?.map(|t| by_family(t.rows)))
}

/// In-stream cost of each decode kernel family (µs per step saved without it, see
/// `LlamaGpu::ablate`) after a bench run that left the sequence at `pos`, and the whole step.
#[cfg(not(target_arch = "wasm32"))]
pub fn ablate(engine: &mut Engine, pos: usize, steps: u32) -> Result<(Vec<FamilyTime>, f64)> {
    let mut enc = engine.gpu.device.create_command_encoder(&Default::default());
    engine.model.reserve_kv(&engine.gpu, &mut enc, pos + 1);
    engine.gpu.queue.submit([enc.finish()]);
    let (rows, whole) = engine.model.ablate(&engine.gpu, pos as u32, steps)?;
    Ok((rows.into_iter().map(|(f, n, us)| (f.to_string(), n, us / 1e3)).collect(), whole / 1e3))
}

/// Per kernel family, like [`profile`], for a batched step of `b` lanes (built by a
/// [`bench_batch`] of at least `b` before); None without timestamp queries.
#[cfg(not(target_arch = "wasm32"))]
pub fn profile_batch(engine: &mut Engine, b: usize, reps: u32) -> Result<Option<Vec<FamilyTime>>> {
    let lanes: Vec<usize> = (0..b.min(engine.model.lane_count())).collect();
    engine.model.begin_batch(&engine.gpu, &engine.kernels, &lanes)?;
    let Some(times) = engine.model.profile_batch(&engine.gpu, &lanes, reps)? else { return Ok(None) };
    Ok(Some(by_family(times.rows)))
}

#[cfg(not(target_arch = "wasm32"))]
fn by_family(rows: Vec<(&'static str, f64)>) -> Vec<FamilyTime> {
    let mut agg: Vec<FamilyTime> = Vec::new();
    for (fam, ms) in rows {
        match agg.iter_mut().find(|a| a.0 == fam) {
            Some(a) => {
                a.1 += 1;
                a.2 += ms;
            }
            None => agg.push((fam.to_string(), 1, ms)),
        }
    }
    agg.sort_by(|a, b| b.2.total_cmp(&a.2));
    agg
}

/// Deterministic prompt ids spread over the vocabulary (special ids avoided).
pub fn synthetic_prompt(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (256 + s % (vocab as u64 - 256).max(1)) as u32
        })
        .collect()
}

/// A text that repeats itself and asks for one more copy: its greedy continuation copies
/// the story, which prompt lookup finds in the context (the token-prediction benchmark).
pub const REPETITIVE_PROMPT: &str = concat!(
    "The lighthouse stood on a rock at the mouth of the bay. Every evening the keeper climbed the one ",
    "hundred and twelve steps, trimmed the wick, wound the clockwork that turned the lens, and wrote the ",
    "time, the weather and the ships he had seen in a small leather book. In winter the waves broke over ",
    "the gallery and the glass rattled in its frame; in summer the gulls nested on the ledges and woke him ",
    "before dawn. He had kept the light for thirty years, and in all that time it had never once gone dark.",
    "\n\nThe same story, copied word for word:\n\n",
    "The lighthouse stood on a rock at the mouth of the bay. Every evening the keeper climbed the one ",
    "hundred and twelve steps, trimmed the wick, wound the clockwork that turned the lens, and wrote the ",
    "time, the weather and the ships he had seen in a small leather book. In winter the waves broke over ",
    "the gallery and the glass rattled in its frame; in summer the gulls nested on the ledges and woke him ",
    "before dawn. He had kept the light for thirty years, and in all that time it had never once gone dark.",
    "\n\nThe same story, copied word for word once more:\n\nThe lighthouse stood on a rock",
);

/// Run the benchmark on a synthetic prompt of `prompt_tokens` ids.
pub async fn bench(engine: &mut Engine, prompt_tokens: usize, gen_tokens: usize) -> Result<BenchReport> {
    bench_prompt(engine, &bench_ids(engine, prompt_tokens), gen_tokens, &SampleSettings::greedy(), gen_tokens).await
}

/// The synthetic prompt of [`bench`]: `prompt_tokens` ids within the context.
pub fn bench_ids(engine: &Engine, prompt_tokens: usize) -> Vec<u32> {
    let ctx = engine.model.options.context;
    synthetic_prompt(prompt_tokens.clamp(1, ctx.saturating_sub(2).max(1)), engine.model.config.vocab_size)
}

/// Run the benchmark on `prompt` (cut to leave room for a token) with the sampling settings
/// `sample` (seeded, so runs repeat): a warm-up generation of `warmup_tokens` (0: none),
/// then the measured one.
///
/// The warm-up should be as long as the measured run (llama-bench runs one such warm-up):
/// a GPU that has idled for a second or more (during a load from disk, say) runs its first
/// few hundred ms of work about three times slower. H200, 7B int4, 128 tokens after a
/// 1-token prompt: a 4-token warm-up gave 283 tok/s, the first ~50 steps taking 6-9 ms
/// instead of 2.3; a 64- or 128-token warm-up 437; 3 s idle after the warm-up 242, 0.5 s 436.
pub async fn bench_prompt(
    engine: &mut Engine,
    prompt: &[u32],
    gen_tokens: usize,
    sample: &SampleSettings,
    warmup_tokens: usize,
) -> Result<BenchReport> {
    bench_run(engine, prompt, gen_tokens, sample, warmup_tokens).await
}

/// One measured run without the warm-up (for repeated rounds on a warm engine).
pub async fn bench_again(
    engine: &mut Engine,
    prompt: &[u32],
    gen_tokens: usize,
    sample: &SampleSettings,
) -> Result<BenchReport> {
    bench_run(engine, prompt, gen_tokens, sample, 0).await
}

async fn bench_run(
    engine: &mut Engine,
    prompt: &[u32],
    gen_tokens: usize,
    sample: &SampleSettings,
    warmup_tokens: usize,
) -> Result<BenchReport> {
    let ctx = engine.model.options.context;
    let prompt = &prompt[..prompt.len().min(ctx.saturating_sub(2).max(1))];
    let prompt_tokens = prompt.len();
    let gen_tokens = gen_tokens.clamp(1, ctx - prompt_tokens);
    let params =
        GenerateParams { max_tokens: gen_tokens, ignore_eos: true, sample: sample.clone(), ..Default::default() };
    if warmup_tokens > 0 {
        let warm = GenerateParams { max_tokens: warmup_tokens.min(ctx - prompt_tokens), ..params.clone() };
        engine.generate(prompt, &warm, &mut |_| true).await?;
    }
    let g = engine.generate(prompt, &params, &mut |_| true).await?;
    let (w, kv, _) = engine.memory_bytes();
    Ok(BenchReport {
        adapter: engine.gpu.caps.adapter_name.clone(),
        backend: engine.gpu.caps.backend.clone(),
        quantization: engine.model.options.quantization_name().to_string(),
        prompt_tokens,
        gen_tokens: g.ids.len(),
        prefill_tokens_per_second: g.stats.prefill_tokens_per_second,
        decode_tokens_per_second: g.stats.tokens_per_second,
        first_token_latency_ms: g.stats.first_token_latency_ms,
        dispatches_per_token: g.stats.dispatches_per_token,
        submissions_per_token: g.stats.submissions as f64 / g.ids.len().max(1) as f64,
        steps_per_submit: engine.options.steps_per_submit,
        in_flight: engine.options.in_flight,
        prefetch_strategy: engine.prefetch.strategy().as_str().to_string(),
        token_prediction: engine.options.config.token_prediction_enabled,
        prefetch_hit_rate: g.stats.prefetch_hit_rate(),
        tokens_proposed: g.stats.proposed,
        tokens_accepted: g.stats.accepted,
        verify_passes: g.stats.verify_passes,
        weight_mb: w as f64 / 1048576.0,
        kv_cache_mb: kv as f64 / 1048576.0,
        load_ms: engine.load_ms,
        quantize_ms: engine.model.quantize_ms,
        encode_us_per_step: encode_us_per_step(engine, prompt_tokens + g.ids.len(), 64),
        gpu_us_per_step: gpu_us_per_step(engine, prompt_tokens + g.ids.len(), 64),
    })
}

/// GPU µs per decode step: `steps` steps from position `pos` in one submission (run twice,
/// the second timed). The ids written are past the generation and never read.
#[cfg(not(target_arch = "wasm32"))]
fn gpu_us_per_step(engine: &mut Engine, pos: usize, steps: u32) -> Option<f64> {
    if pos + steps as usize + 1 >= engine.model.kv_plan().max_positions {
        return None;
    }
    let mut us = None;
    for _ in 0..2 {
        let mut enc = engine.gpu.device.create_command_encoder(&Default::default());
        engine.model.reserve_kv(&engine.gpu, &mut enc, pos + steps as usize);
        engine.model.write_state(&engine.gpu, pos as u32, 1);
        engine.model.encode_decode_steps(&mut enc, pos, steps as usize);
        let cb = enc.finish();
        let t = web_time::Instant::now();
        engine.gpu.queue.submit([cb]);
        engine.gpu.device.poll(wgpu::PollType::wait_indefinitely()).ok()?;
        us = Some(t.elapsed().as_secs_f64() * 1e6 / f64::from(steps));
    }
    us
}

#[cfg(target_arch = "wasm32")]
fn gpu_us_per_step(_: &mut Engine, _: usize, _: u32) -> Option<f64> {
    None
}

/// CPU µs per decode step to encode `steps` steps and finish the command buffer.
fn encode_us_per_step(engine: &Engine, pos: usize, steps: u32) -> f64 {
    let t = web_time::Instant::now();
    let mut enc = engine.gpu.device.create_command_encoder(&Default::default());
    engine.model.encode_decode_steps(&mut enc, pos, steps as usize);
    drop(enc.finish());
    t.elapsed().as_secs_f64() * 1e6 / f64::from(steps)
}

/// Throughput of `b` generations decoded together (continuous batching).
#[derive(Clone, Debug, Serialize)]
pub struct BatchBenchReport {
    pub batch: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Decoded tokens of every generation (after each one's first) per second of the
    /// batched decode (from the last join to the last token).
    pub aggregate_tokens_per_second: f64,
    /// The same per generation.
    pub per_sequence_tokens_per_second: f64,
    /// Dispatches of one batched step.
    pub dispatches_per_step: usize,
    pub kv_cache_mb: f64,
}

/// Decode `b` generations of `gen_tokens` together from `b` different synthetic prompts of
/// `prompt_tokens` ids (after a short warm-up that builds the lanes).
pub async fn bench_batch(
    engine: &mut Engine,
    prompt_tokens: usize,
    gen_tokens: usize,
    b: usize,
) -> Result<BatchBenchReport> {
    let b = b.clamp(1, engine.batch_capacity());
    let ctx = engine.model.kv_plan().max_positions;
    let n = prompt_tokens.clamp(1, ctx.saturating_sub(2).max(1));
    let gen_tokens = gen_tokens.clamp(2, ctx - n);
    let vocab = engine.model.config.vocab_size;
    // Different prompts per lane: the synthetic sequence shifted.
    let all = synthetic_prompt(n + b, vocab);
    let prompts: Vec<&[u32]> = (0..b).map(|i| &all[i..i + n]).collect();
    run_batch(engine, &prompts, 4).await?;
    let (decoded, secs) = run_batch(engine, &prompts, gen_tokens).await?;
    let aggregate = decoded as f64 / secs.max(1e-9);
    Ok(BatchBenchReport {
        batch: b,
        prompt_tokens: n,
        gen_tokens,
        aggregate_tokens_per_second: aggregate,
        per_sequence_tokens_per_second: aggregate / b as f64,
        dispatches_per_step: engine.model.dispatches_per_batch_step(b),
        kv_cache_mb: engine.model.kv_bytes() as f64 / 1_048_576.0,
    })
}

/// Join every prompt, then step the batch until all end: (tokens decoded after each
/// generation's first, seconds from the last join to the end).
async fn run_batch(engine: &mut Engine, prompts: &[&[u32]], max_tokens: usize) -> Result<(usize, f64)> {
    let params = GenerateParams { max_tokens, ignore_eos: true, ..Default::default() };
    let mut batch = super::Batch::default();
    for (i, p) in prompts.iter().enumerate() {
        engine.batch_join(&mut batch, i as u64, p, &params, &mut |_| true).await?;
    }
    let t0 = web_time::Instant::now();
    let mut decoded = 0usize;
    while !batch.is_empty() {
        for (_, g) in engine.batch_step(&mut batch, &mut |_, _| true).await? {
            decoded += g.ids.len().saturating_sub(1);
        }
    }
    Ok((decoded, t0.elapsed().as_secs_f64()))
}
