//! The benchmark behind `wsi bench` and the browser bench page: prefill a synthetic prompt,
//! decode a fixed number of tokens greedily (EOS ignored), report measured rates.

use serde::Serialize;

use super::{Engine, GenerateParams};
use crate::error::Result;

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
    pub weight_mb: f64,
    pub kv_cache_mb: f64,
    pub load_ms: f64,
    /// Of which quantising weights (ms).
    pub quantize_ms: f64,
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
    let mut agg: Vec<FamilyTime> = Vec::new();
    for (fam, ms) in times.rows {
        match agg.iter_mut().find(|a| a.0 == fam) {
            Some(a) => {
                a.1 += 1;
                a.2 += ms;
            }
            None => agg.push((fam.to_string(), 1, ms)),
        }
    }
    agg.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok((agg, times.gpu_timestamps))
}

/// Deterministic prompt ids spread over the vocabulary (special ids avoided).
fn synthetic_prompt(n: usize, vocab: usize) -> Vec<u32> {
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

/// Run the benchmark: one warm-up generation, then the measured one.
pub async fn bench(engine: &mut Engine, prompt_tokens: usize, gen_tokens: usize) -> Result<BenchReport> {
    let vocab = engine.model.config.vocab_size;
    let ctx = engine.model.options.context;
    let prompt_tokens = prompt_tokens.clamp(1, ctx.saturating_sub(2).max(1));
    let gen_tokens = gen_tokens.clamp(1, ctx - prompt_tokens);
    let prompt = synthetic_prompt(prompt_tokens, vocab);
    let params = GenerateParams { max_tokens: gen_tokens, ignore_eos: true, ..Default::default() };
    let warm = GenerateParams { max_tokens: 4.min(gen_tokens), ..params.clone() };
    engine.generate(&prompt, &warm, &mut |_| true).await?;
    let g = engine.generate(&prompt, &params, &mut |_| true).await?;
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
        weight_mb: w as f64 / 1048576.0,
        kv_cache_mb: kv as f64 / 1048576.0,
        load_ms: engine.load_ms,
        quantize_ms: engine.model.quantize_ms,
    })
}
