//! Typed kernel keys and the pipeline cache. Each kernel family lives in one
//! `shaders/*.wgsl` file specialised by `override` constants; kernels that read weights
//! get a small prelude per weight format (`shaders/weights/*.wgsl`) defining `load_w4`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::kv::{KV_PRELUDE, KV_WRITE, KvFormat, KvFormats};
use crate::error::{Error, Result};

/// Quantisation of a group of 32 values to int8 and its packed layout (the `q8` matvecs'
/// inputs; decode attention's output for a packed o projection).
const Q8_GROUP: &str = include_str!("../../shaders/q8_group.wgsl");
/// The decode attention entry points' step where the module has no attention_sg.wgsl.
const DECODE_STEP_SHARED: &str = "fn decode_step(wid: vec3<u32>, tid: u32) {\n    decode_head(wid, tid);\n}\n";

/// How a weight matrix is stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// `array<vec4<f32>>`, 4 bytes per weight.
    F32,
    /// f16 packed two per u32, unpacked in the shader (no shader-f16 needed).
    F16,
    /// Signed bytes, 4 per u32, one f16 scale per 32 weights in a second buffer
    /// (Q8_0-compatible; `quant::gpu_formats`).
    Int8,
    /// Nibbles, 8 per u32, f16 scale + minimum per 32 weights in a second buffer
    /// (Q4_0/Q4_1-compatible; `quant::gpu_formats`).
    Int4,
    /// int4 without a minimum (Q4_0's layout, used for Q4_0 file blocks): nibbles as
    /// `Int4`, one f16 scale per 32 weights, two per u32; weight `(q - 8) * d`. 4.5 bits per
    /// weight against int4's 5, and the same products bit for bit.
    Int4Sym,
    /// 3-bit codes, 32 in 3 u32, f16 scale + minimum per `INT3_GROUP` weights.
    Int3,
    /// 2-bit codes, 16 per u32, f16 scale + minimum per `INT2_GROUP` weights.
    Int2,
}

impl WeightFormat {
    /// Every format.
    pub const ALL: [WeightFormat; 7] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Int8,
        WeightFormat::Int4,
        WeightFormat::Int4Sym,
        WeightFormat::Int3,
        WeightFormat::Int2,
    ];

    /// The prelude defining `load_w4`; fp16 reads halves natively with `native_f16`.
    fn prelude(self, native_f16: bool) -> &'static str {
        match self {
            WeightFormat::F32 => include_str!("../../shaders/weights/f32.wgsl"),
            WeightFormat::F16 if native_f16 => include_str!("../../shaders/weights/f16_native.wgsl"),
            WeightFormat::F16 => include_str!("../../shaders/weights/f16.wgsl"),
            WeightFormat::Int8 => include_str!("../../shaders/weights/int8.wgsl"),
            WeightFormat::Int4 | WeightFormat::Int4Sym => include_str!("../../shaders/weights/int4.wgsl"),
            WeightFormat::Int3 => {
                concat!(
                    include_str!("../../shaders/weights/kept.wgsl"),
                    include_str!("../../shaders/weights/int3.wgsl")
                )
            }
            WeightFormat::Int2 => {
                concat!(
                    include_str!("../../shaders/weights/kept.wgsl"),
                    include_str!("../../shaders/weights/int2.wgsl")
                )
            }
        }
    }

    /// The matvec's weight prelude: [`Self::prelude`] plus `dot_w8` / `dot_w32` made from
    /// `load_w8` for the formats without their own (int4 has both; int8, fp16 and fp32 have
    /// `dot_w32`).
    pub fn matvec_prelude(self, native_f16: bool) -> String {
        let w32 = include_str!("../../shaders/weights/dot_w32_from_w8.wgsl");
        let w8 = include_str!("../../shaders/weights/dot_w8_from_w8.wgsl");
        let fallback = match self {
            WeightFormat::Int4 | WeightFormat::Int4Sym => String::new(),
            WeightFormat::Int3 | WeightFormat::Int2 => format!("{w32}\n{w8}"),
            _ => w8.to_string(),
        };
        format!("{}\n{fallback}", self.prelude(native_f16))
    }

    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::F16 => 2.0,
            WeightFormat::Int8 => 34.0 / 32.0,
            WeightFormat::Int4 => 20.0 / 32.0,
            WeightFormat::Int4Sym => 18.0 / 32.0,
            WeightFormat::Int3 => 3.0 / 8.0 + 4.0 / crate::quant::gpu_formats::INT3_GROUP as f64,
            WeightFormat::Int2 => 2.0 / 8.0 + 4.0 / crate::quant::gpu_formats::INT2_GROUP as f64,
        }
    }

    /// Whether the GPU matvec reads 8 weights per thread (`wide`) rather than 4. Measured on
    /// an H100 (Vulkan), decode tok/s 4 -> 8: int4 674 -> 713 (135M), 628 -> 680 (1.1B),
    /// 192 -> 221 (7B); int8 671 -> 599 (135M), so int8 keeps 4.
    pub fn prefers_wide_matvec(self) -> bool {
        self.is_int4()
    }

    /// Whether the scale buffer holds one f16 per group of 32, two per u32 (no minimum).
    pub fn one_scale_per_group(self) -> bool {
        matches!(self, WeightFormat::Int8 | WeightFormat::Int4Sym)
    }

    /// Whether the codes are int4 nibbles (with or without a minimum).
    pub fn is_int4(self) -> bool {
        matches!(self, WeightFormat::Int4 | WeightFormat::Int4Sym)
    }

    /// Whether the format has a second (scale) buffer at binding 2.
    pub fn has_scales(self) -> bool {
        !matches!(self, WeightFormat::F32 | WeightFormat::F16)
    }

    /// Override constants of the weight prelude: the scale group of int3 and int2, int4's
    /// scale layout.
    fn prelude_constants(self) -> Vec<(&'static str, f64)> {
        match self {
            WeightFormat::Int4Sym => vec![("INT4_SYM", 1.0)],
            WeightFormat::Int3 | WeightFormat::Int2 => {
                vec![("QG4", (crate::quant::gpu_formats::group(self) / 4) as f64)]
            }
            _ => vec![],
        }
    }

    /// Name used in stats.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "fp32",
            WeightFormat::F16 => "fp16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 | WeightFormat::Int4Sym => "int4",
            WeightFormat::Int3 => "int3",
            WeightFormat::Int2 => "int2",
        }
    }
}

/// Input/output variants of the matrix kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MatMode {
    /// RMS-normalise the input row (norm weight bound as `aux`).
    pub fuse_norm: bool,
    /// The input is `[gate | up]`; use `silu(gate) * up`.
    pub swiglu_in: bool,
    /// Add into the output (residual) instead of overwriting it.
    pub accumulate: bool,
    /// Add a bias vector.
    pub bias: bool,
    /// The input is the decode attention's partials over this many key splits
    /// (`[rows, n_heads, split, 4 + head_dim]`), merged as they are loaded instead of
    /// by a combine dispatch; 0 = a plain input.
    pub combine_split: u32,
}

/// How a single-row decode matvec of int4 weights meets int8 inputs (`matvec_q8in.wgsl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Q8 {
    /// Float inputs.
    #[default]
    Off,
    /// Entry `q8in`: each workgroup quantises the input row to int8 per 32 itself.
    In,
    /// Entry `q8pack` (SwiGLU gate/up, `[gate | up]` rows, 64 rows per workgroup): as `In`,
    /// and each workgroup also writes the SwiGLU product of its group of 32 quantised and
    /// packed (binding 10, `[d_ff / 32, 3]` vec4<u32>), the input of a `Packed` matvec.
    Pack,
    /// Entry `q8pre`: the input is packed already (binding 11, by a `Pack` matvec).
    Packed,
}

/// A kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Decode matrix-vector product; `wide` takes 8 consecutive weights per thread (entry
    /// point `wide`, k a multiple of 8), otherwise 4 (`main`). `batch` > 1 (up to 4): each
    /// workgroup reads its weights once for that many input rows (entry points `batch` and
    /// `batch_wide`, batched decode steps).
    /// `subgroup` (k a multiple of 8, single-row steps, devices with subgroups): entry
    /// point `subgroup` of `matvec_subgroup.wgsl`, shuffle reductions over `tpr` lanes.
    /// `q8` (int4, k a multiple of 32, single-row steps): int8 inputs through
    /// `dot4I8Packed` (`matvec_q8in.wgsl`), see [`Q8`]; with `subgroup` (`In` and `Pack`,
    /// `tpr` within the adapter's smallest subgroup) its lanes share values by shuffles.
    Matvec { format: WeightFormat, mode: MatMode, wide: bool, batch: u32, subgroup: bool, q8: Q8 },
    /// Prefill matrix-matrix product; `tiled` stages operands in workgroup memory (GPUs),
    /// otherwise reads them directly (CPU rasterisers).
    Matmul { format: WeightFormat, mode: MatMode, tiled: bool },
    /// The tiled prefill product on tensor cores (entry point `coop` of `matmul_coop.wgsl`,
    /// 128 threads, the tiled grid): adapters with `GpuCaps::coop_f16` only.
    MatmulCoop { format: WeightFormat, mode: MatMode },
    /// Embedding gather from token ids on the GPU.
    Embed { format: WeightFormat },
    /// RoPE + KV append in the cache's formats (`ring` under progressive).
    RopeKv { adjacent: bool, kv: KvFormats },
    /// Progressive KV: the position leaving the recent ring re-quantised into the main store.
    KvRequant { kv: KvFormats },
    /// Causal GQA attention over the sinks + window; with `split > 1` each (head, token)
    /// spreads its keys over `split` workgroups that write partials for
    /// [`Kernel::AttentionCombine`].
    Attention { split: u32, kv: KvFormats },
    /// Merge of the attention partials; `pack` (entry point `combine_q8`) also writes the
    /// output packed as int8 per 32 (binding 10) for a `Q8::Packed` o projection.
    AttentionCombine { split: u32, pack: bool },
    /// A decode step's attention with its RoPE and KV append fused in (entry point
    /// `decode`): reads the QKV activations instead of the rotated query; partials for
    /// [`Kernel::AttentionCombine`] with `split > 1`; `pack` (split 1, entry point
    /// `decode_q8`) also writes the output packed as int8 per 32 (binding 10) for a
    /// `Q8::Packed` o projection. `merge` (split > 1, entry points `decode_merge` and
    /// `decode_merge_q8`): the workgroup that finishes a head's last split merges the
    /// partials and writes the output (packed too with `pack`), counting splits in binding 11
    /// (`[lanes, n_heads]` u32, zero); no combine dispatch follows. `head_lanes` > 0
    /// (hd / 4, within the adapter's smallest subgroup): the head's lanes share the scores by
    /// subgroup shuffles (shaders/attention_sg.wgsl); 0: through workgroup memory.
    AttentionDecode { split: u32, adjacent: bool, kv: KvFormats, pack: bool, merge: bool, head_lanes: u32 },
    /// A decode step's QKV projection and attention in one dispatch (shaders/attention_qkv.wgsl,
    /// entry point `decode_qkv`): the int4 QKV matvec (`sym`: Q4_0's layout) on int8 inputs,
    /// `head_lanes` lanes per row group, 4 rows each; the last workgroup of each head's rows
    /// attends for it as `AttentionDecode` with the subgroup kernel at split 1 and packs the
    /// output. Multi-head attention only (n_kv = n_heads), hd a multiple of the workgroup's
    /// rows. Bindings 12-16: QKV params, codes, scales, residual, norm weights; binding 11
    /// counts each head's finished workgroups.
    AttentionQkv { adjacent: bool, kv: KvFormats, head_lanes: u32, sym: bool },
    /// Sampling + step advance.
    Sample,
    /// Load-time quantisation of f32 rows into an integer format.
    Quantize { format: WeightFormat, quantizer: crate::quant::fit::Quantizer },
}

/// Tokens one prefill matmul workgroup covers: 64 tiled, 32 untiled.
pub const fn matmul_tile(tiled: bool) -> u32 {
    if tiled { 64 } else { 32 }
}

/// Output rows one prefill matmul workgroup covers, tiled or not (untiled: 8 threads of 8
/// rows per token group, a full SIMD vector of a CPU rasteriser).
pub const MATMUL_TILE_ROWS: u32 = 64;

/// A kernel with its workgroup specialisation: the pipeline cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    pub kernel: Kernel,
    /// Threads per workgroup (x), for kernels that take it as an override.
    pub wg: u32,
    /// Rows per thread group (matvec): 1..=4, or 1..=8 with `tpr` 1.
    pub rows: u32,
    /// Threads sharing a group of rows (matvec): the workgroup size on GPUs; 1 on CPU
    /// rasterisers, which selects the `cpu` entry point (whole rows per thread). Decode
    /// attention: threads per key in the score phase (`KEY_LANES`).
    pub tpr: u32,
}

impl KernelKey {
    /// Output rows one matvec workgroup produces.
    pub fn rows_per_workgroup(&self) -> u32 {
        self.wg / self.tpr.clamp(1, self.wg) * self.rows
    }

    fn entry_point(&self) -> &'static str {
        match self.kernel {
            Kernel::AttentionCombine { pack: true, .. } => "combine_q8",
            Kernel::AttentionCombine { .. } => "combine",
            Kernel::KvRequant { .. } => "requant",
            Kernel::AttentionDecode { pack: true, merge: true, .. } => "decode_merge_q8",
            Kernel::AttentionDecode { merge: true, .. } => "decode_merge",
            Kernel::AttentionDecode { pack: true, .. } => "decode_q8",
            Kernel::AttentionDecode { .. } => "decode",
            Kernel::AttentionQkv { .. } => "decode_qkv",
            Kernel::Matvec { q8: Q8::In, batch: 0 | 1, .. } => "q8in",
            Kernel::Matvec { q8: Q8::Pack, batch: 0 | 1, .. } => "q8pack",
            Kernel::Matvec { q8: Q8::Packed, batch: 0 | 1, .. } => "q8pre",
            Kernel::Matvec { subgroup: true, batch: 0 | 1, .. } => "subgroup",
            Kernel::Matvec { wide: true, batch: 2.., .. } => "batch_wide",
            Kernel::Matvec { batch: 2.., .. } => "batch",
            Kernel::Matvec { .. } if self.is_cpu_matvec() => "cpu",
            Kernel::Matmul { .. } if self.is_cpu_int4_matmul() => "cpu_int4",
            Kernel::MatmulCoop { .. } => "coop",
            Kernel::Matvec { wide: true, .. } => "wide",
            _ => "main",
        }
    }

    /// The untiled (CPU rasteriser) prefill matmul of int4 weights: `cpu_int4` in
    /// shaders/matmul_cpu_int4.wgsl.
    fn is_cpu_int4_matmul(&self) -> bool {
        matches!(self.kernel, Kernel::Matmul { format: WeightFormat::Int4 | WeightFormat::Int4Sym, tiled: false, .. })
    }

    /// A matvec with one row group per thread: the `cpu` entry point (CPU rasterisers).
    pub fn is_cpu_matvec(&self) -> bool {
        matches!(self.kernel, Kernel::Matvec { batch: 0 | 1, subgroup: false, .. }) && self.tpr <= 1
    }

    fn source(&self, native_f16: bool) -> String {
        let (prelude, body) = match self.kernel {
            Kernel::Matvec { format, subgroup, q8, .. } => {
                // `cpu` reads fp16 as packed u32 pairs even with shader-f16: CPU rasterisers
                // load storage lane by lane, one scalar at a time, and 16-bit scalars halve
                // what each load brings (lavapipe, 3072x576: 0.47 vs 0.88 ns/weight).
                let native = native_f16 && !self.is_cpu_matvec();
                let q8in = include_str!("../../shaders/matvec_q8in.wgsl");
                let sums = include_str!("../../shaders/subgroup_sum.wgsl");
                // q8: lanes share values through shuffles where the key says the device has
                // subgroups that hold a row group, through workgroup memory otherwise.
                let (enable, entry) = match (q8 != Q8::Off, subgroup) {
                    (true, true) => {
                        let lanes = include_str!("../../shaders/q8_lanes_subgroup.wgsl");
                        ("", format!("{Q8_GROUP}\n{sums}\n{lanes}\n{q8in}"))
                    }
                    (true, false) => {
                        let lanes = include_str!("../../shaders/q8_lanes_shared.wgsl");
                        ("", format!("{Q8_GROUP}\n{lanes}\n{q8in}"))
                    }
                    (false, true) => {
                        // Browsers' WGSL compilers want the extension named; naga takes the
                        // device feature instead and rejects the directive.
                        let enable = if cfg!(target_arch = "wasm32") { "enable subgroups;\n" } else { "" };
                        (enable, format!("{sums}\n{}", include_str!("../../shaders/matvec_subgroup.wgsl")))
                    }
                    (false, false) => ("", String::new()),
                };
                return format!(
                    "{enable}{}\n{}\n{entry}",
                    format.matvec_prelude(native),
                    include_str!("../../shaders/matvec.wgsl")
                );
            }
            Kernel::Matmul { format, .. } if self.is_cpu_int4_matmul() => {
                let body = include_str!("../../shaders/matmul.wgsl");
                let cpu = include_str!("../../shaders/matmul_cpu_int4.wgsl");
                return format!("{}\n{body}\n{cpu}", format.prelude(native_f16));
            }
            Kernel::Matmul { format, .. } => (format.prelude(native_f16), include_str!("../../shaders/matmul.wgsl")),
            Kernel::MatmulCoop { format, .. } => {
                // The packed fp16 prelude: the module enables f16 itself, first.
                let body = include_str!("../../shaders/matmul.wgsl");
                let coop = include_str!("../../shaders/matmul_coop.wgsl");
                return format!(
                    "enable f16;\nenable wgpu_cooperative_matrix;\n{}\n{body}\n{coop}",
                    format.prelude(false)
                );
            }
            Kernel::Embed { format } => (format.prelude(native_f16), include_str!("../../shaders/embed.wgsl")),
            Kernel::RopeKv { .. } | Kernel::KvRequant { .. } => {
                return format!("{KV_PRELUDE}\n{KV_WRITE}\n{}", include_str!("../../shaders/rope_kv.wgsl"));
            }
            Kernel::Attention { .. }
            | Kernel::AttentionCombine { .. }
            | Kernel::AttentionDecode { .. }
            | Kernel::AttentionQkv { .. } => {
                let mut attention = include_str!("../../shaders/attention.wgsl").to_string();
                let mut qkv = String::new();
                if let Kernel::AttentionQkv { .. } = self.kernel {
                    // The fused kernel writes the QKV activations it attends over.
                    attention = attention.replace(
                        "@group(0) @binding(8) var<storage, read> qkv",
                        "@group(0) @binding(8) var<storage, read_write> qkv",
                    );
                    qkv = include_str!("../../shaders/attention_qkv.wgsl").to_string();
                }
                // The decode entry points' `decode_step`: the subgroup kernel or `decode_head`.
                let (enable, step) = match self.kernel {
                    Kernel::AttentionDecode { head_lanes: 1.., .. } | Kernel::AttentionQkv { .. } => {
                        let enable = if cfg!(target_arch = "wasm32") { "enable subgroups;\n" } else { "" };
                        let sums = include_str!("../../shaders/subgroup_sum.wgsl");
                        (enable, format!("{sums}\n{}", include_str!("../../shaders/attention_sg.wgsl")))
                    }
                    _ => ("", DECODE_STEP_SHARED.to_string()),
                };
                let q8 = match self.kernel {
                    Kernel::AttentionCombine { pack: true, .. }
                    | Kernel::AttentionDecode { pack: true, .. }
                    | Kernel::AttentionQkv { .. } => {
                        format!("{Q8_GROUP}\n{}", include_str!("../../shaders/attention_q8.wgsl"))
                    }
                    _ => String::new(),
                };
                return format!("{enable}{KV_PRELUDE}\n{KV_WRITE}\n{attention}\n{step}\n{q8}\n{qkv}");
            }
            Kernel::Sample => ("", include_str!("../../shaders/sample.wgsl")),
            Kernel::Quantize { .. } => ("", include_str!("../../shaders/quantize.wgsl")),
        };
        format!("{prelude}\n{body}")
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let mut c = match self.kernel {
            Kernel::Matvec { mode, batch, .. } => vec![
                ("WG", f64::from(self.wg)),
                ("BATCH", f64::from(batch.clamp(1, 4))),
                ("TPR", f64::from(self.tpr.clamp(1, self.wg))),
                ("ROWS", f64::from(self.rows)),
                ("FUSE_NORM", b(mode.fuse_norm)),
                ("SWIGLU_IN", b(mode.swiglu_in)),
                ("ACCUMULATE", b(mode.accumulate)),
                ("HAS_BIAS", b(mode.bias)),
                ("COMBINE_SPLIT", f64::from(mode.combine_split)),
            ],
            Kernel::MatmulCoop { mode, .. } => vec![
                ("FUSE_NORM", b(mode.fuse_norm)),
                ("SWIGLU_IN", b(mode.swiglu_in)),
                ("ACCUMULATE", b(mode.accumulate)),
                ("HAS_BIAS", b(mode.bias)),
            ],
            Kernel::Matmul { mode, tiled, .. } => vec![
                ("TILED", b(tiled)),
                ("FUSE_NORM", b(mode.fuse_norm)),
                ("SWIGLU_IN", b(mode.swiglu_in)),
                ("ACCUMULATE", b(mode.accumulate)),
                ("HAS_BIAS", b(mode.bias)),
            ],
            Kernel::RopeKv { adjacent, kv } => vec![("ADJACENT", b(adjacent)), kv.main_constant(), kv.ring_constant()],
            Kernel::KvRequant { kv } => vec![kv.main_constant(), kv.ring_constant()],
            Kernel::Attention { split, kv } => vec![
                ("WG", f64::from(self.wg)),
                ("SPLIT", f64::from(split.max(1))),
                kv.main_constant(),
                kv.ring_constant(),
            ],
            Kernel::AttentionDecode { split, adjacent, kv, head_lanes, .. } => {
                let mut c = vec![
                    ("WG", f64::from(self.wg)),
                    ("SPLIT", f64::from(split.max(1))),
                    ("KEY_LANES", f64::from(self.tpr.clamp(1, self.wg))),
                    ("ADJACENT", b(adjacent)),
                    kv.main_constant(),
                    kv.ring_constant(),
                ];
                if head_lanes > 0 {
                    c.push(("HEAD_LANES", f64::from(head_lanes)));
                }
                c
            }
            Kernel::AttentionQkv { adjacent, kv, head_lanes, sym } => vec![
                ("WG", f64::from(self.wg)),
                ("ADJACENT", b(adjacent)),
                kv.main_constant(),
                kv.ring_constant(),
                ("HEAD_LANES", f64::from(head_lanes)),
                ("QKV_SYM", b(sym)),
            ],
            Kernel::AttentionCombine { split, .. } => {
                vec![("WG", f64::from(self.wg)), ("SPLIT", f64::from(split.max(1)))]
            }
            Kernel::Quantize { format, quantizer } => {
                let (starts, iters) = quantizer.schedule();
                vec![
                    ("BITS", f64::from(crate::quant::gpu_formats::bits(format))),
                    ("QG", crate::quant::gpu_formats::group(format) as f64),
                    ("STARTS", f64::from(starts)),
                    ("ITERS", f64::from(iters)),
                    ("WG", f64::from(self.wg)),
                ]
            }
            Kernel::Embed { .. } | Kernel::Sample => vec![],
        };
        if let Kernel::Matvec { format, .. }
        | Kernel::Matmul { format, .. }
        | Kernel::MatmulCoop { format, .. }
        | Kernel::Embed { format } = self.kernel
        {
            c.extend(format.prelude_constants());
        }
        c
    }
}

/// Which of wgpu's runtime checks a kernel is compiled with (native only: on WebGPU the
/// browser applies its own). The engine's kernels are this crate's WGSL, so it drops the
/// checks that only guard against hostile shaders, where the H200 measured them:
/// - zeroing workgroup memory at every workgroup's start (no kernel reads workgroup memory
///   before writing it);
/// - integer-division guards (every divisor is a nonzero constant or extent);
/// - the iteration counter wgpu adds to every loop (every loop is counted over a buffer
///   extent with a nonzero constant step), except in the matvecs that quantise their own
///   input: there the counter makes them faster (7B, GPU µs per step: without any counter
///   2,086, with it only in those matvecs 1,988, with every check 2,065). The prefill
///   matmuls are faster without it (7B 512-token prefill 1,361 tok/s with it, 1,432 without).
///
/// Index clamping stays (Vulkan's robust buffer access bounds the buffers themselves).
/// `LoadOptions::shader_checks` compiles every kernel with all of them, for comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaderChecks {
    /// Zero every workgroup variable before the kernel's first instruction.
    pub zero_workgroup: bool,
    /// An iteration counter in every loop.
    pub loop_bounding: bool,
    /// Guards on integer division and modulo.
    pub int_div: bool,
}

impl ShaderChecks {
    /// Every check wgpu has.
    pub const ALL: ShaderChecks = ShaderChecks { zero_workgroup: true, loop_bounding: true, int_div: true };

    /// The checks the engine compiles `kernel` with.
    pub fn for_kernel(kernel: &Kernel) -> ShaderChecks {
        let quantises_input = matches!(kernel, Kernel::Matvec { q8: Q8::In | Q8::Pack, .. });
        ShaderChecks { zero_workgroup: false, loop_bounding: quantises_input, int_div: false }
    }

    fn module(&self, device: &wgpu::Device, desc: wgpu::ShaderModuleDescriptor) -> wgpu::ShaderModule {
        // Index clamping (bounds_checks) stays on in every mode.
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = self.loop_bounding;
        checks.int_div_checks = self.int_div;
        // SAFETY: wgpu asks that the shaders without these checks never loop forever, divide
        // by zero or overflow a signed division. The kernels are this crate's own WGSL: every
        // loop is a `for` over an extent with a nonzero constant step, every divisor is a
        // nonzero constant or extent, and there is no signed division by a variable.
        unsafe { device.create_shader_module_trusted(desc, checks) }
    }
}

/// Pipeline cache: one compute pipeline per key, created on first use (at load time;
/// the decode loop only looks pipelines up). fp16 weights are read with native f16 loads
/// where the device has shader-f16 (unless `packed_f16_only`), else unpacked from u32.
#[derive(Default)]
pub struct Kernels {
    cache: Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>,
    packed_f16_only: bool,
    all_checks: bool,
}

impl Kernels {
    /// A cache that always unpacks fp16 weights from u32 (for comparing the two paths).
    pub fn packed_f16_only() -> Kernels {
        Kernels { packed_f16_only: true, ..Default::default() }
    }

    /// A cache whose kernels keep every runtime check of wgpu ([`ShaderChecks::ALL`]).
    pub fn with_all_checks() -> Kernels {
        Kernels { all_checks: true, ..Default::default() }
    }

    /// Whether fp16 weights are read natively on `device`.
    pub fn native_f16(&self, device: &wgpu::Device) -> bool {
        !self.packed_f16_only && device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// The pipeline for `key`, compiling it if needed.
    pub fn get(&self, device: &wgpu::Device, key: KernelKey) -> Result<wgpu::ComputePipeline> {
        let mut cache = self.cache.lock().map_err(|_| Error::internal("pipeline cache poisoned"))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let label = format!("{:?}", key.kernel);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(key.source(self.native_f16(device)).into()),
        };
        let checks = if self.all_checks { ShaderChecks::ALL } else { ShaderChecks::for_kernel(&key.kernel) };
        let module = checks.module(device, desc);
        let constants = key.constants();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(key.entry_point()),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: checks.zero_workgroup,
            },
            cache: None,
        });
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Drop every pipeline (after a workgroup-size change).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// Every WGSL source with every specialisation the engine can ask for, for validation.
    pub fn all_sources_for_validation() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for format in WeightFormat::ALL {
            let mode = MatMode::default();
            for k in [
                Kernel::Matvec { format, mode, wide: false, batch: 1, subgroup: false, q8: Q8::Off },
                Kernel::Matmul { format, mode, tiled: true },
                Kernel::MatmulCoop { format, mode },
                Kernel::Embed { format },
            ] {
                let key = KernelKey { kernel: k, wg: 64, rows: 4, tpr: 64 };
                out.push((format!("{k:?}"), key.source(false)));
                if format == WeightFormat::F16 {
                    out.push((format!("{k:?} native f16"), key.source(true)));
                }
            }
        }
        let q = Kernel::Quantize { format: WeightFormat::Int3, quantizer: Default::default() };
        let q8 = |q8, mode, subgroup| Kernel::Matvec {
            format: WeightFormat::Int4,
            mode,
            wide: false,
            batch: 1,
            subgroup,
            q8,
        };
        let norm = MatMode { fuse_norm: true, ..Default::default() };
        let down = MatMode { swiglu_in: true, accumulate: true, ..Default::default() };
        let kv = KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 };
        for k in [
            Kernel::RopeKv { adjacent: true, kv },
            Kernel::KvRequant { kv },
            Kernel::Attention { split: 1, kv },
            Kernel::AttentionDecode { split: 4, adjacent: false, kv, pack: false, merge: false, head_lanes: 0 },
            Kernel::AttentionDecode { split: 1, adjacent: true, kv, pack: true, merge: false, head_lanes: 0 },
            Kernel::AttentionDecode { split: 4, adjacent: false, kv, pack: false, merge: true, head_lanes: 0 },
            Kernel::AttentionDecode { split: 4, adjacent: true, kv, pack: true, merge: true, head_lanes: 0 },
            Kernel::AttentionDecode { split: 1, adjacent: true, kv, pack: true, merge: false, head_lanes: 16 },
            Kernel::AttentionDecode { split: 4, adjacent: false, kv, pack: false, merge: true, head_lanes: 16 },
            Kernel::AttentionQkv { adjacent: true, kv, head_lanes: 16, sym: true },
            Kernel::AttentionCombine { split: 4, pack: true },
            Kernel::Sample,
            q,
            q8(Q8::In, norm, false),
            q8(Q8::Pack, norm, false),
            q8(Q8::Packed, down, false),
            q8(Q8::In, norm, true),
            q8(Q8::Pack, norm, true),
            q8(Q8::Off, norm, true),
        ] {
            let key = KernelKey { kernel: k, wg: 64, rows: 1, tpr: 64 };
            out.push((format!("{k:?}"), key.source(false)));
        }
        out
    }
}
