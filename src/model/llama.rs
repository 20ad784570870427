//! The llama-family forward pass on the GPU: weights, every activation buffer (allocated
//! once, at load), and the prebuilt dispatch lists for a prefill chunk and a decode step.
//! Nothing here allocates or creates pipelines after `LlamaGpu::load`.

use crate::error::{Error, Result};
use crate::gpu::params::{MatParams, SampleParams};
use crate::gpu::{Gpu, Kernel, KernelKey, Kernels, MATMUL_TILE_ROWS, MatMode, Q8, WeightFormat, matmul_tile};
use crate::model::kv_cache::{KvCache, KvOptions, KvPlan, rope_table};
use crate::model::upload::{
    GpuMatrix, MatrixShard, Quant, embedding_format, required, required_f32, upload_tensors_sharded, upload_vec,
};
use crate::model::{ModelConfig, ModelSource, WeightName};
use crate::quant::calibrate::LayerImportance;
use crate::quant::fit::Quantizer;
use crate::quant::on_gpu::GpuQuantizer;

mod batch;
mod lane;
#[cfg(not(target_arch = "wasm32"))]
mod profile;
pub use lane::{KEYS_PER_SPLIT, Lane};
#[cfg(not(target_arch = "wasm32"))]
pub use profile::KernelTimes;

/// Load-time options of the GPU model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub format: WeightFormat,
    /// `mixed`: (attention, MLP) formats, overriding `format` for those matrices.
    pub mixed: Option<(WeightFormat, WeightFormat)>,
    /// How integer formats choose their codes when quantising at load.
    pub quantizer: Quantizer,
    /// Input columns per matrix whose weights int3 / int2 keep at f16, the ones of largest
    /// calibrated importance (`quant::kept`; 0: none).
    pub kept_columns: usize,
    /// Quantise at load with the GPU kernel (false: the CPU reference, for comparisons).
    pub gpu_quantize: bool,
    /// Most tokens the KV cache holds (clamped to the model's context length; the KV budget
    /// may lower it, see `model::kv_cache`).
    pub context: usize,
    /// Most tokens in one prefill chunk.
    pub chunk: usize,
    /// Threads per workgroup for the matvec and attention kernels.
    pub workgroup: u32,
    /// Threads per matvec row group (1 on CPU rasterisers, `workgroup` on GPUs).
    pub threads_per_row: u32,
    /// Threads per workgroup of the CPU rasterisers' matvec (`threads_per_row` 1, entry
    /// point `cpu`); 0 = `workgroup`. See `browser::cpu_matvec_workgroup`.
    pub cpu_matvec_workgroup: u32,
    /// Rows per matvec thread group.
    pub rows: u32,
    /// Threads per row group of the `wide` matvec (8 consecutive weights per thread, for
    /// matrices whose k is a multiple of 8); 0 keeps every matvec on `main`.
    pub wide_threads_per_row: u32,
    /// Largest buffer bound for one weight (bytes; 0 = the adapter's limit): bigger matrices
    /// are split into row shards (Firefox binds at most 128 MiB).
    pub max_binding: u64,
    /// Workgroups per head over the keys in decode attention (1 = one workgroup per head,
    /// best where dispatches are costly; GPUs want more).
    pub attention_split: u32,
    /// Threads per workgroup of the attention kernels (0 = `workgroup`); at least a thread
    /// per 4 dimensions of a head either way.
    pub attention_workgroup: u32,
    /// Threads per key in decode attention's score phase (a power of two; clamped so that it
    /// divides hd / 4): 1 loads a whole key per thread; 0 gives each thread one batch of 8
    /// vec4 loads (hd / 32 lanes).
    pub attention_key_lanes: u32,
    /// Fewest keys per split: a decode step over fewer than `attention_split` times this many
    /// keys runs the largest power-of-two split that leaves each at least this many (a
    /// dispatch list per split is built at load). See `lane::KEYS_PER_SPLIT`.
    pub attention_keys_per_split: usize,
    /// KV-cache format, strategy and budget.
    pub kv: KvOptions,
    /// Most sequences a batched decode step runs (each lane has its own KV cache, built on
    /// first use).
    pub max_lanes: usize,
    /// Input rows one matvec workgroup of a batched step reads its weights for (1..=4; GPUs
    /// with cooperative rows only, `threads_per_row` > 1).
    pub matvec_batch: u32,
    /// Lanes per row group of the subgroup matvec (0 = off; a power of two no larger than the
    /// adapter's smallest subgroup): used for single-row steps of matrices whose k is a
    /// multiple of 8, on devices with subgroups.
    pub subgroup_threads: u32,
    /// (workgroup, rows per lane group) of the subgroup matvec for every matrix (None: chosen
    /// per matrix size).
    pub subgroup_shape: Option<(u32, u32)>,
    /// `Some(r)`: single-row decode steps of int4 matrices with at least `r` rows and k a
    /// multiple of 32 quantise their input to int8 per 32 elements and multiply through
    /// `dot4I8Packed` (`matvec_q8in.wgsl`; GPUs with cooperative rows only): fewer
    /// instructions per weight, at the cost of an int8 grid on the inputs. Each workgroup
    /// quantises the whole input first, which only pays on tall matrices.
    pub q8_inputs: Option<u32>,
    /// (workgroup, rows per lane group, lanes per row group) of the int8-input matvec for
    /// every matrix (None: chosen per matrix).
    pub q8_shape: Option<(u32, u32, u32)>,
    /// The `q8in` / `q8pack` lanes share values through workgroup memory even where the
    /// device's subgroups could shuffle them (for comparisons: `WSI_Q8_SHARED_LANES=1`).
    pub q8_shared_lanes: bool,
    /// Decode attention through subgroup shuffles (shaders/attention_sg.wgsl) where a head's
    /// hd / 4 lanes fit in the adapter's smallest subgroup (`WSI_ATTN_SG=0`: the
    /// workgroup-memory kernel everywhere, for comparisons).
    pub attention_subgroups: bool,
    /// Threads per workgroup of the subgroup decode attention (a power of two).
    pub attention_subgroup_workgroup: u32,
    /// The subgroup decode attention's smallest head (hd / 4 lanes): heads of 64 measured
    /// slower than the workgroup-memory kernel (32 lanes; tests use 8 to run it on
    /// lavapipe's 8-lane subgroups).
    pub attention_subgroup_min_lanes: u32,
    /// Decode steps whose attention runs at most this many key splits compute QKV and attend
    /// in one dispatch (`Kernel::AttentionQkv`; the fused kernel attends at split 1) where
    /// the model and device allow it (multi-head attention, int4 QKV on int8 inputs, the
    /// subgroup attention, o on packed inputs); 0: never.
    pub fused_qkv_max_split: u32,
    /// Threads per workgroup of the fused QKV + attention kernel (a power of two; its QKV
    /// rows per workgroup, wg / (hd / 4) * 4, must divide hd).
    pub fused_qkv_workgroup: u32,
    /// Compile every kernel with all of wgpu's runtime checks instead of the engine's
    /// [`crate::gpu::ShaderChecks::for_kernel`] (for comparisons: `WSI_SHADER_CHECKS=1`;
    /// native only, the browser keeps its own).
    pub shader_checks: bool,
    /// Under `q8_inputs`, a decode step's attention (or its combine) also writes its output
    /// packed as int8 per 32, and the int4 o projection reads that (`Q8::Packed`) instead of
    /// the floats.
    pub q8_pack_o: bool,
    /// Under `q8_inputs`, a decode step's gate/up matvec writes its SwiGLU product packed as
    /// int8 per 32 and the down projection reads it (`Q8::Pack`, `Q8::Packed`), instead of
    /// every down workgroup quantising the product again.
    pub q8_pack: bool,
    /// Decode steps with split attention merge each head's partials in the workgroup that
    /// finishes its last split (a counter per head, `decode_merge`), instead of a combine
    /// dispatch. Native only: the cross-workgroup ordering relies on naga's device-scope
    /// storage barriers.
    pub merge_splits: bool,
    /// Decode steps merge the split attention's partials in the o projection's input loads
    /// (no combine dispatch) when `n_heads * head_dim * split` is at most this; each o
    /// workgroup then re-reads every partial, which only pays on small models.
    pub combine_in_o_max: usize,
    /// Matrices with at least this many weights use that batched matvec in steps of 2 or
    /// more lanes; smaller ones, bound by dispatch count, keep one grid row per lane (H100,
    /// int4, 4 lanes: 7B 272 -> 341 tok/s and 1.1B 865 -> 942 with it, 135M 998 without
    /// against 896 with it everywhere).
    pub batch_matvec_min_weights: usize,
    /// Prefill products on tensor cores (`matmul_coop.wgsl`) where the device has them
    /// (`GpuCaps::coop_f16`): their inputs pass through f16, so it is opt-in here and on by
    /// default in the engine's native options.
    pub coop_matmul: bool,
}

impl LoadOptions {
    /// The `quantization` name of these options (stats).
    pub fn quantization_name(&self) -> &'static str {
        if self.mixed.is_some() { "mixed" } else { self.format.name() }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: WeightFormat::F32,
            mixed: None,
            quantizer: Quantizer::default(),
            kept_columns: crate::quant::kept::DEFAULT_COLUMNS,
            gpu_quantize: true,
            context: 2048,
            chunk: 64,
            workgroup: 64,
            threads_per_row: 64,
            cpu_matvec_workgroup: 0,
            rows: 4,
            wide_threads_per_row: 0,
            attention_split: 1,
            attention_workgroup: 0,
            attention_key_lanes: 1,
            attention_keys_per_split: KEYS_PER_SPLIT,
            max_binding: 0,
            kv: KvOptions::default(),
            max_lanes: 1,
            matvec_batch: 4,
            subgroup_threads: 0,
            subgroup_shape: None,
            q8_inputs: None,
            q8_shape: None,
            q8_shared_lanes: false,
            attention_subgroups: false,
            attention_subgroup_workgroup: 512,
            attention_subgroup_min_lanes: 32,
            fused_qkv_max_split: 0,
            fused_qkv_workgroup: 1024,
            shader_checks: false,
            q8_pack_o: false,
            q8_pack: true,
            merge_splits: false,
            combine_in_o_max: 8192,
            batch_matvec_min_weights: 1 << 22,
            coop_matmul: false,
        }
    }
}

/// How a dispatch's grid depends on the number of tokens in the step.
#[derive(Clone, Copy, Debug)]
enum Grid {
    /// Same grid whatever the token count.
    Fixed([u32; 3]),
    /// `x` workgroups by one y per token.
    PerToken(u32),
    /// `x` workgroups by one y per tile of this many tokens (matmul tiles).
    PerTile(u32, u32),
}

struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    grid: Grid,
    /// Kernel family, for profiles.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    family: &'static str,
}

impl Dispatch {
    fn grid_for(&self, tokens: u32) -> [u32; 3] {
        match self.grid {
            Grid::Fixed(g) => g,
            Grid::PerToken(x) => [x, tokens, 1],
            Grid::PerTile(x, tile) => [x, tokens.div_ceil(tile), 1],
        }
    }
}

struct Layer {
    attn_norm: wgpu::Buffer,
    qkv: GpuMatrix,
    qkv_bias: Option<wgpu::Buffer>,
    o: GpuMatrix,
    ffn_norm: wgpu::Buffer,
    gate_up: GpuMatrix,
    down: GpuMatrix,
}

/// The weights of the model on the GPU.
struct Weights {
    embd: GpuMatrix,
    lm_head: Option<GpuMatrix>,
    out_norm: wgpu::Buffer,
    layers: Vec<Layer>,
}

/// Activation and scratch buffers shared by every lane, allocated once.
struct Activations {
    /// `[chunk, d]`
    x: wgpu::Buffer,
    /// `[chunk, (n_heads + 2 n_kv) * hd]`
    qkv: wgpu::Buffer,
    /// `[chunk, n_heads * hd]` rotated queries.
    q: wgpu::Buffer,
    /// `[chunk, n_heads * hd]` attention output.
    attn: wgpu::Buffer,
    /// `[chunk, 2 * d_ff]`
    gate_up: wgpu::Buffer,
    /// `[d_ff / 32, 3]` vec4<u32>: a decode step's SwiGLU product packed as int8 per 32
    /// (`Q8::Pack`).
    h_packed: wgpu::Buffer,
    /// `[lanes, n_heads * hd / 32, 3]` vec4<u32>: a decode step's attention output packed as
    /// int8 per 32 for the o projection (`LoadOptions::q8_pack_o`).
    attn_packed: wgpu::Buffer,
    /// `[lanes, n_heads]` u32: splits of a decode step's attention finished per head
    /// (`LoadOptions::merge_splits`), zero between dispatches.
    split_done: wgpu::Buffer,
    /// `[chunk, n_heads, sinks + window]`
    scores: wgpu::Buffer,
    /// `[rope_rows + extra, hd / 2]` (cos, sin)
    rope: wgpu::Buffer,
    /// Bound where a kernel variant ignores a binding.
    filler: wgpu::Buffer,
    /// `[lanes, n_heads, split, 4 + hd]` split-attention partials (max, sum, 0, 0, sums).
    partial: wgpu::Buffer,
}

/// Where a decode step's attention output comes together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partials {
    /// Split 1: each head's workgroup writes the whole output.
    Whole,
    /// The o projection merges the split partials as it loads them (`combine_in_o_max`).
    InO,
    /// A combine dispatch after attention.
    Combine,
    /// Each head's last split merges them (`decode_merge`, `LoadOptions::merge_splits`).
    LastSplit,
}

/// Kernel geometry chosen at load.
struct Geometry {
    wg: u32,
    /// Threads per workgroup of the `cpu` matvec (tpr 1).
    cpu_wg: u32,
    rows: u32,
    tpr: u32,
    wide_tpr: u32,
    /// Lanes per row group of the subgroup matvec (0 = not used).
    sg_tpr: u32,
    /// Key splits of decode attention at long contexts (short ones use fewer:
    /// `lane::decode_split`).
    split: u32,
}

/// The model on the GPU: weights, shared activations, and one or more lanes (sequences).
pub struct LlamaGpu {
    pub config: ModelConfig,
    pub options: LoadOptions,
    /// `[chunk, vocab]` f32 (row 0 only in last-row mode; row r of a batched step's lane r).
    pub logits: wgpu::Buffer,
    /// Bytes of weights on the GPU.
    pub weight_bytes: u64,
    /// Bytes of activations and scratch on the GPU (every lane's token and state buffers included).
    pub activation_bytes: u64,
    /// Milliseconds spent quantising weights at load (measured; 0 when nothing needed it).
    pub quantize_ms: f64,
    weights: Weights,
    acts: Activations,
    geo: Geometry,
    /// The KV geometry every lane's cache follows.
    plan: KvPlan,
    /// Lane 0 always exists; more are built when a batch first needs them.
    lanes: Vec<Lane>,
    /// The lane the single-sequence methods act on.
    cur: usize,
    /// The shared matrix dispatches of a batched step (built on first use).
    batched: Option<batch::Shared>,
}

/// The largest of `chunk`, `chunk / 2`, `chunk / 4`, ... (at least 1) whose activation
/// buffers of `row_bytes` per token fit a binding of `limit` bytes.
fn fit_chunk(chunk: usize, row_bytes: u64, limit: u64) -> usize {
    let mut c = chunk.max(1);
    while c > 1 && c as u64 * row_bytes > limit {
        c /= 2;
    }
    c
}

pub(crate) fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::model(format!("{what} {v} is too large")))
}

impl LlamaGpu {
    /// Upload the weights of `src` and build every buffer and dispatch.
    pub fn load(
        gpu: &Gpu,
        kernels: &Kernels,
        src: &dyn ModelSource,
        options: LoadOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<LlamaGpu> {
        let cfg = src.config().clone();
        let fmt = options.format;
        let (attn_fmt, ffn_fmt) = options.mixed.unwrap_or((fmt, fmt));
        let (d, hd, nh, nkv, dff, vocab) =
            (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.vocab_size);
        if nh == 0 || nkv == 0 || nh % nkv != 0 || hd % 4 != 0 || hd > 256 || d % 4 != 0 || dff % 4 != 0 {
            return Err(Error::model(format!(
                "unsupported shape: {nh} heads, {nkv} kv heads, head_dim {hd}, d_model {d}, d_ff {dff}"
            )));
        }
        let ctx = options.context.clamp(1, cfg.context_length.max(1));
        // The widest chunk-sized activation row (`[chunk, ...]` buffers below; the prefill
        // scores hold at most `ctx` keys per head).
        let widest_row = [cfg.vocab_size, nh * ctx, 2 * dff, nh * hd + 2 * nkv * hd, d].into_iter().max().unwrap_or(d);
        let limit = match options.max_binding {
            0 => gpu.caps.max_storage_binding,
            b => b.min(gpu.caps.max_storage_binding),
        };
        let chunk = fit_chunk(options.chunk.clamp(1, ctx), widest_row as u64 * 4, limit);
        let plan = KvPlan::new(&cfg, ctx, chunk, &options.kv)?;
        let ctx = plan.main_rows;
        let chunk = plan.chunk;
        let mut options = options;
        options.context = ctx;
        options.chunk = chunk;
        let qdim = nh * hd;
        let kvdim = nkv * hd;
        let qkv_rows = qdim + 2 * kvdim;
        let t0 = web_time::Instant::now();
        let imps = crate::quant::calibrate::for_load(src, &[attn_fmt, ffn_fmt], options.quantizer)?;
        let imp = |l: usize, f: fn(&LayerImportance) -> &Vec<f32>| imps.as_ref().map(|v| &f(&v[l])[..]);
        let gpu_quant = GpuQuantizer::new(gpu, kernels, options.quantizer);
        let quantize_ms = std::cell::Cell::new(t0.elapsed().as_secs_f64() * 1e3);
        let quant = Quant {
            gpu: options.gpu_quantize.then_some(&gpu_quant),
            cpu: options.quantizer,
            ms: &quantize_ms,
            imp: None,
            kept: options.kept_columns,
        };
        // Row-concatenate the named tensors into one GPU matrix of width `cols`.
        let matrix_imp = |label: String, names: &[(WeightName, usize)], cols: usize, fmt: WeightFormat, imp| {
            let parts = names.iter().map(|&(n, rows)| required(src, n, &[rows, cols])).collect::<Result<Vec<_>>>()?;
            let parts = parts.iter().collect::<Vec<_>>();
            upload_tensors_sharded(gpu, Quant { imp, ..quant }, &label, &parts, cols, fmt, options.max_binding)
        };
        let matrix = |label, names: &[(WeightName, usize)], cols, fmt| matrix_imp(label, names, cols, fmt, None);
        let vector = |label: String, name: WeightName, n: usize| -> Result<wgpu::Buffer> {
            Ok(upload_vec(gpu, &label, &required_f32(src, name, &[n])?))
        };
        // Embedding and lm_head: int8 or better unless the file holds 4-bit blocks.
        let table_format = |name: WeightName| -> Result<WeightFormat> {
            Ok(embedding_format(attn_fmt, required(src, name, &[vocab, d])?.format))
        };

        let embd =
            matrix("token_embd".into(), &[(WeightName::TokenEmbd, vocab)], d, table_format(WeightName::TokenEmbd)?)?;
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(matrix("output".into(), &[(WeightName::Output, vocab)], d, table_format(WeightName::Output)?)?)
        };
        let out_norm = vector("output_norm".into(), WeightName::OutputNorm, d)?;

        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            progress(l, cfg.n_layers);
            use WeightName::*;
            let qkv_names = [(AttnQ(l), qdim), (AttnK(l), kvdim), (AttnV(l), kvdim)];
            let qkv = matrix_imp(format!("blk.{l}.qkv"), &qkv_names, d, attn_fmt, imp(l, |i| &i.qkv))?;
            let qkv_bias = if cfg.qkv_bias {
                let qb = required_f32(src, AttnQBias(l), &[qdim])?;
                let kb = required_f32(src, AttnKBias(l), &[kvdim])?;
                let vb = required_f32(src, AttnVBias(l), &[kvdim])?;
                let all: Vec<f32> = qb.iter().chain(&kb).chain(&vb).copied().collect();
                Some(upload_vec(gpu, &format!("blk.{l}.qkv_bias"), &all))
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(format!("blk.{l}.attn_norm"), AttnNorm(l), d)?,
                qkv,
                qkv_bias,
                o: matrix_imp(format!("blk.{l}.attn_output"), &[(AttnOutput(l), d)], qdim, attn_fmt, imp(l, |i| &i.o))?,
                ffn_norm: vector(format!("blk.{l}.ffn_norm"), FfnNorm(l), d)?,
                gate_up: matrix_imp(
                    format!("blk.{l}.gate_up"),
                    &[(FfnGate(l), dff), (FfnUp(l), dff)],
                    d,
                    ffn_fmt,
                    imp(l, |i| &i.gate_up),
                )?,
                down: matrix_imp(format!("blk.{l}.ffn_down"), &[(FfnDown(l), d)], dff, ffn_fmt, imp(l, |i| &i.down))?,
            });
        }
        // Measured from what was allocated.
        let weight_bytes = embd.bytes()
            + lm_head.as_ref().map_or(0, GpuMatrix::bytes)
            + out_norm.size()
            + layers
                .iter()
                .map(|l| {
                    l.qkv.bytes()
                        + l.o.bytes()
                        + l.gate_up.bytes()
                        + l.down.bytes()
                        + l.attn_norm.size()
                        + l.ffn_norm.size()
                        + l.qkv_bias.as_ref().map_or(0, wgpu::Buffer::size)
                })
                .sum::<u64>();

        progress(cfg.n_layers, cfg.n_layers);
        // Activations, allocated once.
        let f = 4u64;
        let c = chunk as u64;
        let lanes_max = options.max_lanes.clamp(1, chunk) as u64;
        let split = options.attention_split.clamp(1, 64);
        let keys = (plan.sinks + plan.window) as u64;
        let acts = Activations {
            x: gpu.storage("x", c * d as u64 * f),
            qkv: gpu.storage("qkv", c * qkv_rows as u64 * f),
            q: gpu.storage("q", c * qdim as u64 * f),
            attn: gpu.storage("attn", c * qdim as u64 * f),
            gate_up: gpu.storage("gate_up", c * 2 * dff as u64 * f),
            h_packed: gpu.storage("h packed", (dff as u64).div_ceil(32) * 48),
            attn_packed: gpu.storage("attn packed", lanes_max * (qdim as u64).div_ceil(32) * 48),
            split_done: gpu.storage("split done", lanes_max * nh as u64 * 4),
            scores: gpu.storage("scores", c * nh as u64 * keys * f),
            rope: gpu.storage_init("rope", bytemuck::cast_slice(&rope_table(&cfg, ctx, plan.max_positions))),
            filler: gpu.storage("unused binding", 16),
            partial: gpu.storage("attn partial", lanes_max * nh as u64 * u64::from(split) * (hd as u64 + 4) * f),
        };
        let logits = gpu.storage("logits", c * vocab as u64 * f); // [chunk, vocab]
        let a = &acts;
        let activation_bytes = [
            &a.x,
            &a.qkv,
            &a.q,
            &a.attn,
            &a.gate_up,
            &a.h_packed,
            &a.attn_packed,
            &a.split_done,
            &logits,
            &a.scores,
            &a.rope,
            &a.filler,
            &a.partial,
        ]
        .iter()
        .map(|b| b.size())
        .sum();
        let wg = options.workgroup.next_power_of_two().clamp(32, 256);
        let tpr = options.threads_per_row.clamp(1, wg).next_power_of_two();
        let geo = Geometry {
            wg,
            cpu_wg: match options.cpu_matvec_workgroup {
                0 => wg,
                c => c.next_power_of_two().clamp(1, 256),
            },
            // The CPU rasterisers' matvec (entry point `cpu`, tpr 1) takes up to 8 rows per thread.
            rows: options.rows.clamp(1, if tpr == 1 { 8 } else { 4 }),
            tpr,
            wide_tpr: match options.wide_threads_per_row {
                0 => 0,
                t => t.clamp(1, wg).next_power_of_two(),
            },
            sg_tpr: if gpu.caps.subgroups && options.subgroup_threads.is_power_of_two() {
                options.subgroup_threads.min(wg)
            } else {
                0
            },
            split,
        };
        let mut model = LlamaGpu {
            config: cfg,
            options,
            logits,
            weight_bytes,
            activation_bytes,
            quantize_ms: quantize_ms.get(),
            weights: Weights { embd, lm_head, out_norm, layers },
            acts,
            geo,
            plan,
            lanes: Vec::new(),
            cur: 0,
            batched: None,
        };
        let lane = Lane::build(&model, gpu, kernels)?;
        model.activation_bytes += lane.buffer_bytes();
        model.lanes.push(lane);
        Ok(model)
    }

    /// A dispatch builder with this model's kernel geometry, binding `state` as the step
    /// state and reading `batch` input rows per matvec workgroup.
    fn builder<'a>(&'a self, gpu: &'a Gpu, kernels: &'a Kernels, state: &'a wgpu::Buffer, batch: u32) -> Builder<'a> {
        Builder {
            gpu,
            kernels,
            geo: &self.geo,
            options: &self.options,
            head_dim: self.config.head_dim as u32,
            state,
            filler: &self.acts.filler,
            eps: self.config.rms_eps,
            batch,
        }
    }

    /// Key splits the decode o projection merges as it loads its input when attention runs
    /// with `split` of them (0: a combine dispatch merges them first).
    fn combine_in_o(&self, split: u32) -> u32 {
        let qdim = self.config.n_heads * self.config.head_dim;
        if split > 1 && qdim * split as usize <= self.options.combine_in_o_max { split } else { 0 }
    }

    /// Where decode steps at `split` key splits merge the attention partials.
    fn partials(&self, split: u32) -> Partials {
        if split <= 1 {
            Partials::Whole
        } else if self.combine_in_o(split) > 0 {
            Partials::InO
        } else if self.options.merge_splits {
            Partials::LastSplit
        } else {
            Partials::Combine
        }
    }

    /// Whether decode steps at `split` key splits give the o projection `o` its input packed
    /// as int8 per 32: attention (split 1) or its combine packs it, `q8pre` reads it, instead
    /// of each of o's workgroups loading the float row (7B: 1,024 workgroups of 4 rows, 16
    /// KiB each). H100 int4: 7B's GPU step 2,736 -> 2,648 µs (`options.rs` has the rest).
    fn o_packed(&self, o: &GpuMatrix, split: u32) -> bool {
        self.options.q8_pack_o
            && self.options.q8_inputs.is_some()
            && self.geo.tpr > 1
            && self.partials(split) != Partials::InO
            && o.format.is_int4()
            && o.shards.len() == 1
            && o.cols.is_multiple_of(32)
            && self.config.head_dim.is_multiple_of(32)
    }

    /// Whether the QKV matrix `qkv` suits the fused QKV + attention kernel at `wg` threads
    /// and `rows` rows per workgroup: int4 in one shard on int8 inputs, no bias, k a multiple
    /// of 32 up to 4096 with a thread per input group, whole workgroups per head.
    fn fits_fused_qkv(&self, qkv: &GpuMatrix, bias: bool, wg: u32, rows: u32) -> bool {
        let hd = self.config.head_dim as u32;
        self.options.q8_inputs.is_some()
            && qkv.format.is_int4()
            && qkv.shards.len() == 1
            && !bias
            && qkv.cols.is_multiple_of(32)
            && qkv.cols <= 4096
            && qkv.cols / 32 <= wg
            && rows > 0
            && hd.is_multiple_of(rows)
    }

    /// The decode o projection's mode and input after attention with `split` key splits:
    /// the attention partials merged as they load, or the combined attention output.
    fn decode_o_input(&self, split: u32) -> (MatMode, &wgpu::Buffer) {
        let acc = MatMode { accumulate: true, ..Default::default() };
        match self.combine_in_o(split) {
            0 => (acc, &self.acts.attn),
            s => (MatMode { combine_split: s, ..acc }, &self.acts.partial),
        }
    }

    /// The lane the single-sequence methods act on.
    pub fn lane(&self) -> &Lane {
        &self.lanes[self.cur]
    }

    /// The current lane's KV cache.
    pub fn kv(&self) -> &KvCache {
        &self.lane().kv
    }

    /// The KV geometry of every lane.
    pub fn kv_plan(&self) -> &KvPlan {
        &self.plan
    }

    /// Lanes built so far.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// Most lanes a batched step may run (`LoadOptions::max_lanes`, at most the chunk).
    pub fn max_lanes(&self) -> usize {
        self.options.max_lanes.clamp(1, self.options.chunk)
    }

    /// Make lane `i` the one the single-sequence methods act on, building lanes up to it.
    pub fn select_lane(&mut self, gpu: &Gpu, kernels: &Kernels, i: usize) -> Result<()> {
        if i >= self.max_lanes() {
            return Err(Error::internal(format!(
                "lane {i} is beyond the {} this model was loaded for",
                self.max_lanes()
            )));
        }
        while self.lanes.len() <= i {
            let lane = Lane::build(self, gpu, kernels)?;
            self.activation_bytes += lane.buffer_bytes();
            self.lanes.push(lane);
        }
        self.cur = i;
        Ok(())
    }

    /// KV bytes allocated by every lane.
    pub fn kv_bytes(&self) -> u64 {
        self.lanes.iter().map(|l| l.kv.bytes()).sum()
    }

    /// Before encoding a pass that writes positions up to `latest`: grow the KV cache if its
    /// strategy allocates as it goes (copying the old rows in `enc`) and rebind the kernels
    /// that read it. Call it for every prefill, decode or verify submission, never between
    /// the passes of one.
    pub fn reserve_kv(&mut self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, latest: usize) {
        let cur = self.cur;
        self.lanes[cur].reserve_kv(gpu, enc, latest);
    }

    /// Dispatches in the decode step at position `pos` (sampler included).
    pub fn dispatches_per_decode_step(&self, pos: usize) -> usize {
        self.decode_list(pos).len() + 1
    }

    /// The key splits of the decode step at position `pos` (`pos + 1` keys): the largest
    /// power of two that leaves each split `attention_keys_per_split` keys, at least 1. At or
    /// above the model's split, the model's split.
    pub fn decode_split(&self, pos: usize) -> u32 {
        let s = ((pos + 1) / self.options.attention_keys_per_split.max(1)).max(1);
        (1u32 << s.ilog2().min(16)).min(self.geo.split)
    }

    /// The current lane's decode list for the step at position `pos`.
    fn decode_list(&self, pos: usize) -> &[Dispatch] {
        self.lane().decode_list(self.decode_split(pos))
    }

    /// Set the step state (pos, n_tokens) before a submission.
    pub fn write_state(&self, gpu: &Gpu, pos: u32, n_tokens: u32) {
        gpu.queue.write_buffer(&self.lane().state, 0, bytemuck::cast_slice(&[pos, n_tokens, 0u32, 0u32]));
    }

    /// Write token ids at `pos..` of the token buffer.
    pub fn write_tokens(&self, gpu: &Gpu, pos: usize, ids: &[u32]) {
        gpu.queue.write_buffer(&self.lane().tokens, pos as u64 * 4, bytemuck::cast_slice(ids));
    }

    /// Set the sampler parameters of the next generation: `p` for the one-row sampler,
    /// `rows` (the same settings in every-row mode) for [`LlamaGpu::encode_rows`].
    pub fn write_sample_params(&self, gpu: &Gpu, p: &SampleParams, rows: &SampleParams) {
        gpu.queue.write_buffer(&self.lane().sample_params, 0, bytemuck::bytes_of(p));
        gpu.queue.write_buffer(&self.lane().sample_rows_params, 0, bytemuck::bytes_of(rows));
    }

    /// Encode `n` rows (the ids at `state.pos ..= state.pos + n - 1`, state written
    /// beforehand, `n <= chunk`) through the prefill path with every row's logits kept, then
    /// sample each row as if it were the last: row `r` writes the id at `pos + r + 1`.
    /// KV entries of all `n` rows are written; the state is left for the caller to set.
    pub fn encode_rows(&self, pass: &mut wgpu::ComputePass<'_>, n: u32) {
        let lane = self.lane();
        run(pass, &lane.prefill_all_logits, n);
        run(pass, std::slice::from_ref(&lane.sample_rows), n);
    }

    /// Encode a prefill chunk of `n` tokens (state written beforehand). With `sample`, the
    /// next token is sampled from the last row; with `all_logits`, every row's logits are kept.
    pub fn encode_prefill(&self, pass: &mut wgpu::ComputePass<'_>, n: u32, sample: bool, all_logits: bool) {
        let lane = self.lane();
        let list = if all_logits { &lane.prefill_all_logits } else { &lane.prefill };
        run(pass, list, n);
        if sample {
            run(pass, std::slice::from_ref(&lane.sample), 1);
        }
    }

    /// Encode one decode step at position `pos` (`state.pos` when it runs): reads the token
    /// there, writes the next one, advances. `pos` picks the attention split. Returns the
    /// dispatches encoded.
    pub fn encode_decode_step(&self, pass: &mut wgpu::ComputePass<'_>, pos: usize) -> usize {
        let list = self.decode_list(pos);
        run(pass, list, 1);
        run(pass, std::slice::from_ref(&self.lane().sample), 1);
        list.len() + 1
    }

    /// Encode the prefill of the `n` prompt tokens already in the token buffer as `n`
    /// decode steps (positions 0..n), sampling only after the last. Each step's state
    /// (position p, one token) is copied in from a small buffer, since the sampler, which
    /// advances the position, must not overwrite the prompt's next id.
    pub fn encode_prompt_steps(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, n: usize) {
        let lane = self.lane();
        let states: Vec<u32> = (0..n as u32).flat_map(|p| [p, 1, 0, 0]).collect();
        let states = gpu.storage_init("prompt step states", bytemuck::cast_slice(&states));
        for p in 0..n {
            enc.copy_buffer_to_buffer(&states, p as u64 * 16, &lane.state, 0, 16);
            let mut pass = enc.begin_compute_pass(&Default::default());
            run(&mut pass, self.decode_list(p), 1);
            if p + 1 == n {
                run(&mut pass, std::slice::from_ref(&lane.sample), 1);
            }
        }
    }

    /// Encode `steps` decode steps from position `pos` in one compute pass of `enc`; returns
    /// the dispatches encoded.
    pub fn encode_decode_steps(&self, enc: &mut wgpu::CommandEncoder, pos: usize, steps: usize) -> usize {
        let mut pass = enc.begin_compute_pass(&Default::default());
        (pos..pos + steps).map(|p| self.encode_decode_step(&mut pass, p)).sum()
    }
}

fn run(pass: &mut wgpu::ComputePass<'_>, list: &[Dispatch], tokens: u32) {
    for d in list {
        let [x, y, z] = d.grid_for(tokens);
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.bind, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Helper that creates pipelines and bind groups at load.
struct Builder<'a> {
    gpu: &'a Gpu,
    kernels: &'a Kernels,
    /// The model's kernel geometry and load options (the int8-input, subgroup and `cpu`
    /// matvec choices).
    geo: &'a Geometry,
    options: &'a LoadOptions,
    /// Attention head size (the partials a combining matvec reads).
    head_dim: u32,
    state: &'a wgpu::Buffer,
    filler: &'a wgpu::Buffer,
    eps: f32,
    /// Input rows per matvec workgroup (`Kernel::Matvec::batch`; 1 but in batched steps).
    batch: u32,
}

impl Builder<'_> {
    fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        self.kernels.get(&self.gpu.device, self.key(kernel))
    }

    fn key(&self, kernel: Kernel) -> KernelKey {
        let tpr = if matches!(kernel, Kernel::Matvec { wide: true, .. }) { self.geo.wide_tpr } else { self.geo.tpr };
        let key = KernelKey { kernel, wg: self.geo.wg, rows: self.geo.rows, tpr };
        if key.is_cpu_matvec() { KernelKey { wg: self.geo.cpu_wg, ..key } } else { key }
    }

    /// A `q8in` / `q8pack` key whose lanes share values by subgroup shuffles where a row
    /// group fits in the adapter's smallest subgroup (figures in `shaders/q8_lanes_subgroup.wgsl`).
    fn q8_lanes(&self, mut key: KernelKey) -> KernelKey {
        let caps = &self.gpu.caps;
        // Row groups wider than the smallest subgroup reduce across subgroups through workgroup
        // memory first (q8_lanes_subgroup.wgsl), which needs 32-lane subgroups at least.
        let fits = caps.subgroups
            && caps.subgroup_min_size >= 2
            && (key.tpr <= caps.subgroup_min_size || caps.subgroup_min_size >= 32);
        if let Kernel::Matvec { subgroup, .. } = &mut key.kernel {
            *subgroup = fits && !self.options.q8_shared_lanes;
        }
        key
    }

    /// The subgroup matvec's geometry for `n` rows: 128 threads on 4 rows per lane group,
    /// fewer rows per workgroup while that leaves under 256 workgroups (small matrices want
    /// the whole GPU busy more than they want the staged input shared by more rows).
    fn subgroup_key(&self, kernel: Kernel, n: u32) -> KernelKey {
        let tpr = self.geo.sg_tpr;
        if let Some((wg, rows)) = self.options.subgroup_shape {
            return KernelKey { kernel, wg: wg.max(tpr), rows: rows.clamp(1, 4), tpr };
        }
        let (mut wg, mut rows) = (128u32.max(tpr), 4);
        while n.div_ceil(wg / tpr * rows) < 256 && (rows > 1 || wg > 2 * tpr) {
            if rows > 1 {
                rows /= 2;
            } else {
                wg /= 2;
            }
        }
        KernelKey { kernel, wg, rows, tpr }
    }

    fn bind(&self, pipeline: &wgpu::ComputePipeline, entries: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(binding, buf)| wgpu::BindGroupEntry { binding: *binding, resource: buf.as_entire_binding() })
            .collect();
        self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        })
    }

    /// A matvec (decode) or tiled matmul (prefill) dispatch of `m` over `x` into `y`.
    #[allow(clippy::too_many_arguments)]
    fn matrix(
        &self,
        tiled: bool,
        m: &GpuMatrix,
        mode: MatMode,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        norm: Option<&wgpu::Buffer>,
        bias: Option<&wgpu::Buffer>,
        last_row: bool,
    ) -> Result<Vec<Dispatch>> {
        m.shards
            .iter()
            .map(|shard| self.matrix_shard(tiled, m, shard, mode, x, y, norm, bias, last_row, None))
            .collect()
    }

    /// Whether single-row decode steps of `m` take int8 inputs (`Q8::In`).
    fn q8_fits(&self, tiled: bool, m: &GpuMatrix) -> bool {
        !tiled
            && self.options.q8_inputs.is_some_and(|r| m.rows >= r)
            && self.geo.tpr > 1
            && self.batch <= 1
            && m.format.is_int4()
            && m.cols.is_multiple_of(32)
    }

    /// The feed-forward pair, gate/up (norm fused, into `h`) then down (SwiGLU input,
    /// accumulated into `x`). Decode steps whose matrices qualify (gate/up takes int8 inputs,
    /// one shard, halves of whole groups of 32; down int4, one shard) hand the product over
    /// packed (`Q8::Pack` then `Q8::Packed`, through `packed`).
    #[allow(clippy::too_many_arguments)]
    fn ffn(
        &self,
        tiled: bool,
        gate_up: &GpuMatrix,
        down: &GpuMatrix,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
        packed: &wgpu::Buffer,
        norm: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let norm_mode = MatMode { fuse_norm: true, ..Default::default() };
        let down_mode = MatMode { swiglu_in: true, accumulate: true, ..Default::default() };
        let fits = self.options.q8_pack
            && self.q8_fits(tiled, gate_up)
            && gate_up.shards.len() == 1
            && (gate_up.rows / 2).is_multiple_of(32)
            && down.format.is_int4()
            && down.shards.len() == 1
            && down.cols == gate_up.rows / 2;
        if !fits {
            let mut list = self.matrix(tiled, gate_up, norm_mode, x, h, Some(norm), None, false)?;
            list.extend(self.matrix(tiled, down, down_mode, h, x, None, None, false)?);
            return Ok(list);
        }
        let gs = &gate_up.shards[0];
        let pack =
            self.matrix_shard(tiled, gate_up, gs, norm_mode, x, h, Some(norm), None, false, Some((Q8::Pack, packed)))?;
        Ok(vec![pack, self.on_packed(down, down_mode, h, x, packed)?])
    }

    /// A decode matvec of `m` (one shard) on the input another dispatch packed as int8 per 32
    /// (`Q8::Packed`: the down projection after gate/up, the o projection after attention).
    fn on_packed(
        &self,
        m: &GpuMatrix,
        mode: MatMode,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        packed: &wgpu::Buffer,
    ) -> Result<Dispatch> {
        let shard = m.shards.first().ok_or_else(|| Error::model("a packed-input matrix has no rows"))?;
        self.matrix_shard(false, m, shard, mode, x, y, None, None, false, Some((Q8::Packed, packed)))
    }

    /// One shard's dispatch: its rows land at `shard.row0..` of each output row. With
    /// `packed`, a `Q8::Pack` / `Q8::Packed` matvec that writes / reads that buffer.
    #[allow(clippy::too_many_arguments)]
    fn matrix_shard(
        &self,
        tiled: bool,
        m: &GpuMatrix,
        shard: &MatrixShard,
        mode: MatMode,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        norm: Option<&wgpu::Buffer>,
        bias: Option<&wgpu::Buffer>,
        last_row: bool,
        packed: Option<(Q8, &wgpu::Buffer)>,
    ) -> Result<Dispatch> {
        let x_stride = if mode.swiglu_in { 2 * m.cols } else { m.cols };
        let params = MatParams {
            n: shard.rows,
            k: m.cols,
            x_stride,
            y_stride: m.rows,
            eps: self.eps,
            last_row: u32::from(last_row),
            y_off: shard.row0,
            head_dim: if mode.combine_split > 0 { self.head_dim } else { 0 },
        };
        let ub = self.gpu.uniform_init("mat params", bytemuck::bytes_of(&params));
        let q8 = match packed {
            Some((q8, _)) => q8,
            None if self.q8_fits(tiled, m) => Q8::In,
            None => Q8::Off,
        };
        let subgroup = q8 == Q8::Off && !tiled && self.geo.sg_tpr > 0 && self.batch <= 1 && m.cols.is_multiple_of(8);
        let kernel = if tiled && self.geo.tpr > 1 && self.options.coop_matmul && self.gpu.caps.coop_f16 {
            Kernel::MatmulCoop { format: m.format, mode }
        } else if tiled {
            Kernel::Matmul { format: m.format, mode, tiled: self.geo.tpr > 1 }
        } else {
            Kernel::Matvec {
                format: m.format,
                mode,
                wide: self.geo.wide_tpr > 0 && m.format.prefers_wide_matvec() && m.cols.is_multiple_of(8),
                batch: self.batch,
                subgroup,
                q8,
            }
        };
        let key = if let Kernel::MatmulCoop { .. } = kernel {
            KernelKey { kernel, wg: 128, rows: 1, tpr: 1 }
        } else if subgroup {
            self.subgroup_key(kernel, shard.rows)
        } else if q8 == Q8::Pack {
            // 64 rows per workgroup: 32 gate rows and the 32 up rows of one group of h.
            self.q8_lanes(KernelKey { kernel, wg: 256, rows: 4, tpr: 16 })
        } else if q8 == Q8::Packed {
            // H100, 4096x11008 with the input packed, GB/s from HBM: 128 threads on 64 lanes
            // x 4 rows 1,837; 128 lanes 1,819; 32 lanes 1,619; 256 threads x 32 lanes 1,019.
            // H200 in the model, 7B GPU µs per step (o and down), 64 lanes x 4 rows -> x 2:
            // 2,201 -> 2,173, after 512 2,500 -> 2,468 (1.1B 902 -> 899, 1,002 -> 990); x 1
            // 2,358, 128 lanes x 2 2,332, 256 threads x 4 rows 2,433, 64 threads 2,401.
            self.q8_lanes(KernelKey { kernel, wg: 128, rows: 2, tpr: 64 })
        } else if q8 == Q8::In {
            // 16 row groups of 16 lanes share the quantised input (H100, GB/s from HBM, with
            // the norm, `wide` -> this: 12288x4096 1,372 -> 1,691, 22016x4096 1,563 -> 1,981,
            // 11264x2048 964 -> 1,192; 128 threads on 32 lanes per row group: 1,252, 1,582, 902).
            // Up to 4096 rows, 32 lanes per row group keep twice the workgroups busy (4096x4096
            // 820 -> 940, 4096x11008 SwiGLU 1,004 -> 1,193 GB/s).
            let (wg, rows, tpr) =
                self.options.q8_shape.unwrap_or(if shard.rows <= 4096 { (256, 4, 32) } else { (256, 4, 16) });
            self.q8_lanes(KernelKey { kernel, wg, rows, tpr })
        } else {
            self.key(kernel)
        };
        let pipeline = self.kernels.get(&self.gpu.device, key)?;
        let mut entries = vec![
            (0, &ub),
            (3, x),
            (4, y),
            (5, norm.unwrap_or(self.filler)),
            (6, bias.unwrap_or(self.filler)),
            (7, self.state),
        ];
        match packed {
            Some((Q8::Pack, buf)) => entries.push((10, buf)),
            // `q8pre` reads neither the float input nor the norm weights.
            Some((_, buf)) => {
                entries.retain(|(binding, _)| *binding != 3 && *binding != 5);
                entries.push((11, buf));
            }
            None => {}
        }
        entries.extend(shard.bindings());
        let bind = self.bind(&pipeline, &entries);
        let per_wg = key.rows_per_workgroup();
        let grid = if tiled {
            let tile = matmul_tile(self.geo.tpr > 1);
            Grid::PerTile(shard.rows.div_ceil(MATMUL_TILE_ROWS), tile)
        } else if last_row {
            Grid::Fixed([shard.rows.div_ceil(per_wg), 1, 1])
        } else if self.batch > 1 {
            Grid::PerTile(shard.rows.div_ceil(per_wg), self.batch)
        } else {
            Grid::PerToken(shard.rows.div_ceil(per_wg))
        };
        let family = match (tiled, mode.fuse_norm, mode.swiglu_in, last_row) {
            (_, true, _, true) => "lm_head",
            (true, true, _, _) => "matmul_norm",
            (true, _, true, _) => "matmul_swiglu",
            (true, _, _, _) => "matmul",
            (false, true, _, _) => "matvec_norm",
            (false, _, true, _) => "matvec_swiglu",
            _ => "matvec",
        };
        Ok(Dispatch { pipeline, bind, grid, family })
    }
}

#[cfg(test)]
mod tests {
    use super::fit_chunk;

    #[test]
    fn prefill_chunk_halves_until_its_buffers_fit_the_binding_limit() {
        const MIB: u64 = 1 << 20;
        // 7B-like: 32 heads x 4096 keys of f32 scores per token (512 KiB).
        assert_eq!(fit_chunk(512, 512 * 1024, 4096 * MIB), 512);
        assert_eq!(fit_chunk(512, 512 * 1024, 128 * MIB), 256);
        assert_eq!(fit_chunk(512, 512 * 1024, 100 * MIB), 128);
        // Nothing fits: one token per pass rather than none.
        assert_eq!(fit_chunk(512, 512 * MIB, 128 * MIB), 1);
        assert_eq!(fit_chunk(0, 4, 128 * MIB), 1);
    }
}
