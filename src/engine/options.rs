//! From the user's StreamingConfig (+ the detected profile and the model) to the engine's
//! load-time options. Every option read here changes what the GPU runs.

use serde_json::{Value, json};

use super::stats::json_object;
use super::{Engine, EngineOptions, GenerateParams, GenerationStats};
use crate::browser::{AdapterCaps, BrowserProfile};
use crate::config::{Quantization, SamplingParams, StreamingConfig};
use crate::error::{Error, Result};
use crate::gpu::{GpuCaps, KvFormat, KvFormats, WeightFormat};
use crate::model::ModelConfig;
use crate::model::kv_cache::KvOptions;
use crate::model::llama::LoadOptions;
use crate::quant::fit::Quantizer;
use crate::sampling::SampleSettings;

/// Longest context the KV cache is sized for when the budget allows more.
const MAX_DEFAULT_CONTEXT: usize = 4096;

impl GpuCaps {
    /// The subset the browser profile needs.
    pub fn adapter_caps(&self) -> AdapterCaps {
        AdapterCaps {
            shader_f16: self.shader_f16,
            subgroups: self.subgroups,
            max_storage_binding: self.max_storage_binding,
            max_buffer_size: self.max_buffer_size,
            name: self.adapter_name.clone(),
            is_cpu: self.is_cpu,
        }
    }
}

/// A numeric debugging switch from the environment (native only), e.g. WSI_THREADS_PER_ROW.
fn env_u32(name: &str) -> Option<u32> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}

/// GPU weight format for a configured precision (`mixed` has one per kind of matrix:
/// see [`EngineOptions::from_config_for`]).
pub fn weight_format(q: Quantization) -> Result<WeightFormat> {
    match q {
        Quantization::Fp32 => Ok(WeightFormat::F32),
        Quantization::Fp16 => Ok(WeightFormat::F16),
        Quantization::Int8 => Ok(WeightFormat::Int8),
        Quantization::Int4 => Ok(WeightFormat::Int4),
        Quantization::Int3 => Ok(WeightFormat::Int3),
        Quantization::Int2 => Ok(WeightFormat::Int2),
        Quantization::Mixed => Err(Error::invalid("\"mixed\" is not one matrix format")),
    }
}

/// Native debugging switches of the load-time quantiser: `WSI_QUANTIZER=rtn` (plain
/// round-to-nearest, for the README's comparison) and `WSI_CPU_QUANTIZE=1` (the CPU
/// reference instead of the GPU kernel, for timing it).
fn quantizer_switches() -> (Quantizer, bool) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let rtn = std::env::var("WSI_QUANTIZER").is_ok_and(|v| v == "rtn");
        let cpu = std::env::var("WSI_CPU_QUANTIZE").is_ok_and(|v| v == "1");
        (if rtn { Quantizer::Rtn } else { Quantizer::Refined }, !cpu)
    }
    #[cfg(target_arch = "wasm32")]
    {
        (Quantizer::Refined, true)
    }
}

impl EngineOptions {
    /// Options for `model` under `cfg` on a device with `caps`, with the profile of
    /// `user_agent` (None natively).
    pub fn from_config_for(
        cfg: &StreamingConfig,
        caps: &GpuCaps,
        model: &ModelConfig,
        user_agent: Option<&str>,
    ) -> Result<EngineOptions> {
        cfg.validate()?;
        let profile = BrowserProfile::from_config(user_agent, &caps.adapter_caps(), cfg);
        let (attn, ffn) = cfg.matrix_precisions();
        let (attn, ffn) = (weight_format(attn)?, weight_format(ffn)?);
        let (format, mixed) =
            if cfg.quantization == Quantization::Mixed { (attn, Some((attn, ffn))) } else { (attn, None) };
        let (quantizer, gpu_quantize) = quantizer_switches();
        // KV rows: the model's context under a ceiling; the budget (in the chosen storage
        // format) may lower it further (model::kv_cache).
        let context = model.context_length.clamp(16, MAX_DEFAULT_CONTEXT.max(16));
        let kv = KvOptions {
            strategy: cfg.kv_cache_strategy,
            compact: cfg.kv_cache_optimization,
            budget_bytes: Some(u64::from(profile.kv_cache_mb(cfg)) * 1_048_576),
            ..KvOptions::default()
        };
        // Prefill chunk, the same in both modes (latency mode instead submits fewer decode
        // steps at a time, so each token reaches the caller sooner). 64-token chunks made the
        // first token slower everywhere measured (H100, 512-token prompt: 187 vs 51 ms;
        // lavapipe, 192 tokens: 15.7 vs 11.0 s against 256). GPUs take 512: a chunk's
        // matrix products get a workgroup per 64 tokens, and at 256 the o and down products
        // (4096 rows on 7B) leave most of the H100 idle (512-token prompt, first token
        // 256 -> 512: 7B 638 -> 465 ms, 1.1B 155.5 -> 107.8, 135M 53.3 -> 31.4). The model
        // halves it where its chunk-sized buffers would pass the binding limit.
        let chunk = env_u32("WSI_CHUNK").map_or(if caps.is_cpu { 256 } else { 512 }, |c| c.clamp(1, 4096)) as usize;
        let (steps, in_flight) = if cfg.optimize_compute_transfer && profile.compute_transfer_overlap {
            let steps = if cfg.optimize_for_latency {
                profile.max_steps_per_submit.min(4)
            } else {
                profile.max_steps_per_submit
            };
            (steps.max(1), cfg.prefetch_depth().max(1))
        } else {
            (1, 1)
        };
        let merge_splits = !cfg!(target_arch = "wasm32") && env_u32("WSI_MERGE_SPLITS") != Some(0);
        Ok(EngineOptions {
            load: LoadOptions {
                format,
                mixed,
                quantizer,
                kept_columns: env_u32("WSI_KEPT_COLUMNS").map_or(crate::quant::kept::DEFAULT_COLUMNS, |k| k as usize),
                gpu_quantize,
                context,
                chunk,
                workgroup: profile.workgroup_size[0],
                threads_per_row: env_u32("WSI_THREADS_PER_ROW").unwrap_or(if caps.is_cpu {
                    1
                } else {
                    profile.workgroup_size[0]
                }),
                cpu_matvec_workgroup: env_u32("WSI_CPU_MATVEC_WG").unwrap_or(profile.cpu_matvec_workgroup),
                rows: env_u32("WSI_ROWS").unwrap_or(profile.matvec_rows),
                wide_threads_per_row: env_u32("WSI_WIDE_THREADS_PER_ROW").unwrap_or(if caps.is_cpu {
                    0
                } else {
                    profile.workgroup_size[0]
                }),
                // Dispatches cost ~0.25 ms on CPU rasterisers: one attention dispatch there.
                // GPUs: 8 workgroups per head (H100, int4, 640 positions: 135M 704 -> 739,
                // 1.1B 673 -> 699, 7B 220 -> 221 tok/s against 16; 4 and 32 slower).
                attention_split: env_u32("WSI_ATTENTION_SPLIT").unwrap_or(if caps.is_cpu { 1 } else { 8 }),
                // GPUs: 256 threads per attention workgroup (H100 int4, GPU µs per step, 128 ->
                // 256: empty context 7B 2,942/2,935 -> 2,908/2,899, 1.1B 1,014 -> 1,007, 135M
                // 968 -> 960; after 512 7B 3,221 -> 3,127, 1.1B 1,162 -> 1,145, 135M 1,112 ->
                // 1,084; 64 and 32 slower still). CPU rasterisers keep the profile's 32.
                attention_workgroup: env_u32("WSI_ATTN_WG").unwrap_or(if caps.is_cpu { 0 } else { 256 }),
                // GPUs: a thread per 8 vec4 of a key in the score phase (H100 int4, GPU µs per
                // step, lanes 1 / 2 / 4 / 8: 7B (hd 128) 2,900 / 2,851 / 2,820 / 2,856, after 512
                // 3,130 / 3,136 / 3,097 / 3,110; 135M (hd 64) 956 / 932 / 931 / 966, after 512
                // 1,078 / 1,058 / 1,088 / 1,120; 1.1B (hd 64) 1,010 / 1,000 / 1,006 / 1,024).
                attention_key_lanes: env_u32("WSI_KEY_LANES").unwrap_or(if caps.is_cpu { 1 } else { 0 }),
                // Short contexts take fewer splits (H100 int4, 128 tokens from an empty
                // context: see `model::KEYS_PER_SPLIT`).
                attention_keys_per_split: env_u32("WSI_KEYS_PER_SPLIT")
                    .map_or(crate::model::llama::KEYS_PER_SPLIT, |v| v as usize),
                // The profile's binding cap (Firefox 128 MiB) within the device's limit.
                max_binding: profile.max_binding_bytes.min(caps.max_storage_binding),
                kv,
                // Concurrent generations share decode steps up to max_batch_size lanes.
                max_lanes: if cfg.adaptive_batch_size { cfg.max_batch_size as usize } else { 1 },
                matvec_batch: env_u32("WSI_MATVEC_BATCH").unwrap_or(4),
                // The subgroup matvec is opt-in (WSI_SUBGROUP_THREADS=32, capped by the
                // adapter's smallest subgroup): faster alone on large matrices but slower in
                // the model on the H100 (int4 decode, off -> on: 135M 740 -> 693, 1.1B
                // 700 -> 614, 7B 220 -> 199 tok/s), where matrices are short enough that
                // staging the input before the first weight load costs more than it saves.
                subgroup_threads: env_u32("WSI_SUBGROUP_THREADS")
                    .map_or(0, |t| if caps.is_cpu { 0 } else { t.min(caps.subgroup_min_size) }),
                subgroup_shape: env_u32("WSI_SG_WG").zip(env_u32("WSI_SG_ROWS")),
                // int8 inputs for tall int4 matrices on native GPUs (H100, empty context: 7B
                // 279.0 -> 321.8, 1.1B 927.4 -> 990.6 tok/s; decode-path perplexity of
                // SmolLM2 int4 with every matrix on it 18.828 -> 18.948). Browsers keep the
                // float path: their WGSL may lack `dot4I8Packed`, and CPU rasterisers gain
                // nothing from it.
                q8_inputs: match env_u32("WSI_Q8_MIN_ROWS") {
                    Some(r) => (r > 0).then_some(r),
                    None => (!cfg!(target_arch = "wasm32") && !caps.is_cpu).then_some(8192),
                },
                q8_shape: env_u32("WSI_Q8_WG").zip(env_u32("WSI_Q8_ROWS")).zip(env_u32("WSI_Q8_TPR")).map(
                    |((wg, rows), tpr)| {
                        // Powers of two within the kernel's 256-entry reduction arrays.
                        let wg = wg.clamp(2, 256).next_power_of_two();
                        (wg, rows.clamp(1, 4), tpr.clamp(1, wg).next_power_of_two())
                    },
                ),
                // `WSI_Q8_SHARED_LANES=1`: the q8 matvecs share values between lanes through
                // workgroup memory where subgroups could shuffle them.
                q8_shared_lanes: env_u32("WSI_Q8_SHARED_LANES") == Some(1),
                // Decode attention shuffles within subgroups on GPUs (`WSI_ATTN_SG=0`: through
                // workgroup memory).
                attention_subgroups: !caps.is_cpu && env_u32("WSI_ATTN_SG") != Some(0),
                // 512 threads: 16 key groups of 32 lanes (H200 7B int4, GPU µs per step, 256 ->
                // 512: empty context 1,979 -> 1,944, after 512 2,117 -> 2,084).
                attention_subgroup_workgroup: env_u32("WSI_ATTN_SG_WG").unwrap_or(512).next_power_of_two(),
                attention_subgroup_min_lanes: 32,
                // QKV and attention in one dispatch while attention runs at most 2 splits
                // (positions below 127; `WSI_FUSE_QKV`, 0: never). H200 7B int4, decode tok/s
                // from an empty context: separate 552.8 / 553.2, up to split 1 557.1, 2 561.9,
                // 4 561.4 (and the GPU step at positions 129-193 1,877 -> 1,904 µs).
                fused_qkv_max_split: if caps.is_cpu { 0 } else { env_u32("WSI_FUSE_QKV").unwrap_or(2) },
                // 1,024 threads: 128 QKV rows per workgroup and 128 keys per round of the
                // attending workgroup (H200 7B int4, with the fused kernel and the split
                // attention both at 512 threads: 563.4 / 564.1 tok/s; both at 1,024: 579.8).
                fused_qkv_workgroup: env_u32("WSI_FUSE_QKV_WG").unwrap_or(1024).next_power_of_two(),
                // `WSI_SHADER_CHECKS=1`: every kernel keeps all of wgpu's runtime checks.
                shader_checks: env_u32("WSI_SHADER_CHECKS") == Some(1),
                // The gate/up matvec packs the SwiGLU product for the down projection
                // (`WSI_Q8_PACK=0`: each down workgroup quantises it).
                q8_pack: env_u32("WSI_Q8_PACK") != Some(0),
                // Each head's last attention split merges the partials (`WSI_MERGE_SPLITS=0`:
                // a combine dispatch does). H100 int4, GPU µs per step after 512 (split 8):
                // 7B 2,932 -> 2,867, 1.1B 1,105 -> 1,073.
                merge_splits,
                // Decode attention packs its output for the o projection (`WSI_Q8_PACK_O=0`:
                // o loads the floats). H100 int4, GPU µs per step, empty context / after 512:
                // 7B 2,736-2,740 -> 2,648 / 3,023 -> 2,923; 1.1B 1,005-1,014 -> 1,000 / 1,117 ->
                // 1,101; 135M 948-951 -> 943-944 / 1,059 -> 1,051.
                q8_pack_o: env_u32("WSI_Q8_PACK_O") != Some(0),
                // Merging the attention partials in the o projection's loads pays with the
                // `wide` matvec (int4) and costs with `main` (H100, 135M, combine dispatch vs
                // merged: int4 751 -> 770 tok/s; int8 728 -> 656, fp16 748 -> 671). Where the
                // last split merges, only small rows keep it (H100 int4, GPU µs per step at
                // positions 129-193, split 4, in o vs by the last split: 1.1B, 2048 x 4, 996 ->
                // 961; 135M, 576 x 4, 944 -> 965, and after 512, 576 x 8, 1,054 -> 1,085).
                combine_in_o_max: env_u32("WSI_COMBINE_IN_O_MAX").map_or(
                    match (attn.prefers_wide_matvec(), merge_splits) {
                        (false, _) => 0,
                        (true, true) => 4608,
                        (true, false) => 8192,
                    },
                    |v| v as usize,
                ),
                batch_matvec_min_weights: 1 << 22,
                // Prefill on tensor cores where the device has them (native; `WSI_DISABLE_COOP=1` or
                // the device without them: the tiled f32 kernel).
                coop_matmul: caps.coop_f16,
            },
            steps_per_submit: steps,
            in_flight,
            profile: Some(profile),
            config: cfg.clone(),
            step_prefill: env_u32("WSI_STEP_PREFILL")
                .map_or(step_prefill_default(caps.is_cpu, model.d_model), |v| v as usize),
        })
    }

    /// Native: no user agent.
    pub fn from_config(cfg: &StreamingConfig, caps: &GpuCaps, model: &ModelConfig) -> Result<EngineOptions> {
        Self::from_config_for(cfg, caps, model, None)
    }
}

/// Most prompt tokens prefilled through decode steps by default. Native GPUs: where a chunk
/// of the tiled kernels starts to cost less, about d_model / 96 tokens (H100 int4, first
/// token with a chunk / with steps: 135M 1 token 18.5 / 2.5 ms, 16 tokens 19.8 / 26.8; 1.1B
/// 1: 46.7 / 6.5, 16: 47.5 / 18.8, 48: 56.1 / 73.1; 7B 1: 131.4 / 10.1, 32: 148.9 / 100.2),
/// at least 8. Elsewhere only a one-token prompt, which is one decode step instead of a
/// chunk's tiles (lavapipe, SmolLM2 int4, first token with a chunk / with steps: 1 token
/// 210.6 / 97.0 ms, 4 tokens 244.0 / 369.6); the crossover in browsers on GPUs is unmeasured.
fn step_prefill_default(is_cpu: bool, d_model: usize) -> usize {
    if is_cpu || cfg!(target_arch = "wasm32") { 1 } else { (d_model / 96).max(8) }
}

impl GenerateParams {
    /// From resolved per-call parameters with `cfg`'s deadlines (either engine).
    pub fn for_config(p: &SamplingParams, cfg: &StreamingConfig) -> Self {
        GenerateParams {
            token_timeout_ms: cfg.token_timeout_ms,
            generation_timeout_ms: cfg.generation_timeout_ms,
            ..GenerateParams::from_sampling(p)
        }
    }

    /// From resolved per-call parameters.
    pub fn from_sampling(p: &SamplingParams) -> Self {
        GenerateParams {
            sample: SampleSettings {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                repetition_penalty: p.repetition_penalty,
                repetition_window: 64,
                seed: p.seed,
            },
            max_tokens: p.max_tokens,
            stop: p.stop.clone(),
            ignore_eos: false,
            token_timeout_ms: None,
            generation_timeout_ms: None,
        }
    }
}

impl Engine {
    /// Per-call parameters from resolved sampling settings plus this engine's deadlines.
    pub fn params_for(&self, p: &SamplingParams) -> GenerateParams {
        GenerateParams::for_config(p, &self.options.config)
    }

    /// The stats object of DESIGN.md §4 for a generation (every figure measured).
    pub fn stats_json(&self, s: &GenerationStats) -> Value {
        let (w, kv, act) = self.memory_bytes();
        let mb = |b: u64| b as f64 / 1_048_576.0;
        let profile = self.options.profile.as_ref();
        let plan = &self.model.kv().plan;
        let kv_format = if plan.ring_rows > 0 {
            format!("{} + {} recent", plan.formats.main.name(), plan.formats.ring.name())
        } else {
            plan.formats.main.name().to_string()
        };
        let mut m = s.measured_json();
        m.extend(json_object(json!({
            "kv_cache_mb": mb(kv),
            "model_memory_mb": mb(w),
            "peak_memory_mb": mb(w + self.model.kv().peak_bytes.max(kv) + act),
            "quantization": self.model.options.quantization_name(),
            "quantize_ms": self.model.quantize_ms,
            "kv_cache_strategy": plan.strategy.as_str(),
            "kv_cache_format": kv_format,
            "kv_cache_tokens": plan.sinks + plan.window,
            "browser": profile.map(|p| p.browser.as_str()).unwrap_or("native"),
            "adapter": self.gpu.caps.adapter_name,
            "workgroup_size": [self.model.options.workgroup, 1, 1],
            "latency_optimized": self.options.config.optimize_for_latency,
            "kv_cache_optimized": plan.formats != KvFormats::plain(KvFormat::F32),
            "steps_per_submit": self.options.steps_per_submit,
            "in_flight": self.options.in_flight,
            "token_prediction": self.options.config.token_prediction_enabled,
            "prefetch_strategy": self.prefetch.strategy().as_str(),
        })));
        Value::Object(m)
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::step_prefill_default;

    #[test]
    fn short_prompts_take_decode_steps_up_to_a_width_dependent_length() {
        // Native GPUs: SmolLM2 (576) 8, TinyLlama (2048) 21, Llama-2-7B (4096) 42 tokens.
        assert_eq!(step_prefill_default(false, 576), 8);
        assert_eq!(step_prefill_default(false, 2048), 21);
        assert_eq!(step_prefill_default(false, 4096), 42);
        // CPU rasterisers: a one-token prompt only.
        assert_eq!(step_prefill_default(true, 4096), 1);
    }
}
