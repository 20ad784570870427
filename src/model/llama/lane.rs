//! A lane: one sequence's state on the GPU (its token ids, step state, sampler parameters and
//! KV cache) with the dispatch lists that run it. The single-sequence paths (prefill, decode,
//! verify) run on the current lane; a batched step runs several lanes together, each at its
//! own activation row (`state.row`), sharing the weight-reading matrix dispatches.

use std::ops::Range;

use super::{Builder, Dispatch, Grid, LlamaGpu, Partials, u32_of};
use crate::error::Result;
use crate::gpu::params::{EmbedParams, QkvParams, SampleParams};
use crate::gpu::{Gpu, Kernel, KernelKey, MatMode, WeightFormat};
use crate::model::RopeLayout;
use crate::model::kv_cache::KvCache;

/// A binding of a KV-using dispatch: a fixed buffer or the current K / V cache.
#[derive(Clone)]
pub(super) enum KvBind {
    Buf(wgpu::Buffer),
    K,
    V,
}

/// Where a KV-using dispatch sits (`lists[list][index]`) and what it binds.
pub(super) struct KvUse {
    list: usize,
    index: usize,
    entries: Vec<(u32, KvBind)>,
}

/// One sequence's buffers and dispatch lists.
pub struct Lane {
    /// `[max_positions + 1]` u32: every token id of the sequence; samplers write here.
    pub tokens: wgpu::Buffer,
    /// `[4]` u32: (pos, n_tokens, row, 0) of the step about to run; `row` is the lane's first
    /// activation row (0 outside batched steps).
    pub state: wgpu::Buffer,
    /// Sampler parameters for the lane's generation.
    pub sample_params: wgpu::Buffer,
    /// The same in every-row mode (verification of several rows in one pass).
    pub sample_rows_params: wgpu::Buffer,
    /// The lane's KV cache (its buffers grow under the dynamic and progressive strategies).
    pub kv: KvCache,
    /// A decode step at the model's full attention split (what batched steps and the
    /// profiler run).
    pub(super) decode: Vec<Dispatch>,
    /// The same step at each power-of-two split below the model's, `(split, list)`: short
    /// contexts (`LlamaGpu::decode_split`).
    pub(super) decode_short: Vec<(u32, Vec<Dispatch>)>,
    pub(super) prefill: Vec<Dispatch>,
    pub(super) prefill_all_logits: Vec<Dispatch>,
    pub(super) sample: Dispatch,
    /// The sampler over every row of a prefill chunk: grid y = rows.
    pub(super) sample_rows: Dispatch,
    /// Dispatches that bind the KV buffers, rebound when they grow.
    kv_uses: Vec<KvUse>,
    /// `decode[..embed_len]`: the embedding gather; `decode[attn[l]]`: layer l's attention
    /// with its RoPE/KV append fused in (and the progressive requant before it): what a
    /// batched step runs per lane.
    pub(super) embed_len: usize,
    pub(super) attn: Vec<Range<usize>>,
}

pub(super) fn resolve<'a>(
    entries: &'a [(u32, KvBind)],
    k: &'a wgpu::Buffer,
    v: &'a wgpu::Buffer,
) -> Vec<(u32, &'a wgpu::Buffer)> {
    entries
        .iter()
        .map(|(i, e)| {
            (
                *i,
                match e {
                    KvBind::Buf(b) => b,
                    KvBind::K => k,
                    KvBind::V => v,
                },
            )
        })
        .collect()
}

/// Default fewest keys per attention split of a decode step (`LoadOptions::
/// attention_keys_per_split`). Splitting a short context costs more than it saves: every
/// workgroup pays the query and reduction latency, and the partials must be merged (a
/// combine dispatch, or more loads in the o projection). GPU µs per step over the 64 steps
/// after position P (H100, int4, splits 1 / 2 / 4 / 8): tinyllama-1.1b P=1: 1042 / 1063 /
/// 1093 / 1145, P=64: 1148 / 1115 / 1125 / 1161, P=128: 1303 / 1175 / 1147 / 1178, P=512:
/// 2114 / 1611 / 1380 / 1275; smollm2-135m P=1: 930 / 930 / 939 / 984, P=128: 1305 / 1077 /
/// 1012 / 1030, P=256: 1659 / 1298 / 1094 / 1065.
pub const KEYS_PER_SPLIT: usize = 32;

impl Lane {
    /// The decode dispatch list whose attention runs `split` key splits (the full list for
    /// the model's split or any split without a list of its own).
    pub(super) fn decode_list(&self, split: u32) -> &[Dispatch] {
        self.decode_short.iter().find(|(s, _)| *s == split).map_or(&self.decode, |(_, list)| list)
    }

    /// Build a lane over `m`'s weights and activations: new token, state and sampler buffers,
    /// a KV cache of `m`'s plan, and the three dispatch lists.
    pub(super) fn build(m: &LlamaGpu, gpu: &Gpu, kernels: &crate::gpu::Kernels) -> Result<Lane> {
        let cfg = &m.config;
        let w = &m.weights;
        let a = &m.acts;
        let g = &m.geo;
        let (d, hd, nh, nkv, vocab) = (cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size);
        let ctx = m.options.context;
        let kv = KvCache::new(gpu, m.plan.clone());
        let tokens = gpu.storage("tokens", (m.plan.max_positions as u64 + 1) * 4);
        let state = gpu.storage("state", 16);
        let b = m.builder(gpu, kernels, &state, 1);
        let embd = &w.embd;
        // One gather per shard of the table; each writes the ids that fall in its rows.
        let embed = |b: &Builder| -> Result<Vec<Dispatch>> {
            let pipeline = b.pipeline(Kernel::Embed { format: embd.format })?;
            embd.shards
                .iter()
                .map(|shard| {
                    let ep = EmbedParams {
                        d: u32_of(d, "d_model")?,
                        vocab: u32_of(vocab, "vocab")?,
                        row0: shard.row0,
                        rows: shard.rows,
                    };
                    let params = gpu.uniform_init("embed params", bytemuck::bytes_of(&ep));
                    let mut entries = vec![(0, &params), (3, &tokens), (4, &a.x), (7, &state)];
                    entries.extend(shard.bindings());
                    let bind = b.bind(&pipeline, &entries);
                    let grid = Grid::PerToken((d as u32 / 4).div_ceil(64));
                    Ok(Dispatch { pipeline: pipeline.clone(), bind, grid, family: "embed" })
                })
                .collect()
        };
        let rope_heads = u32_of(nh + 2 * nkv, "heads")?;
        let kv_formats = kv.plan.formats;
        let mut kv_uses = Vec::new();
        // Records a dispatch that binds the KV cache (rebuilt when the cache grows).
        let mut kv_dispatch = |list: &mut Vec<Dispatch>,
                               li: usize,
                               pipeline: wgpu::ComputePipeline,
                               entries: Vec<(u32, KvBind)>,
                               grid: Grid,
                               family: &'static str| {
            let bind = b.bind(&pipeline, &resolve(&entries, &kv.k, &kv.v));
            kv_uses.push(KvUse { list: li, index: list.len(), entries });
            list.push(Dispatch { pipeline, bind, grid, family });
        };

        // Attention: every 4 dimensions of a head need a thread in the V phase; decode's score
        // phase takes `lanes` threads per key, a power of two dividing hd / 4 and at most a
        // quarter of the workgroup.
        let hd4 = u32_of(hd / 4, "head dim")?;
        // The largest power-of-two workgroup the device runs.
        let max_wg = 1 << gpu.caps.max_invocations.max(64).ilog2();
        let attn_wg = match m.options.attention_workgroup {
            0 => g.wg,
            w => w.next_power_of_two(),
        }
        .max(hd4.next_power_of_two())
        .min(max_wg);
        let mut lanes = match m.options.attention_key_lanes {
            0 => (hd4 / 8).max(1),
            l => l,
        }
        .next_power_of_two()
        .min(attn_wg / 4)
        .max(1);
        while hd4 % lanes != 0 {
            lanes /= 2;
        }

        // Decode attention shuffles between a head's hd / 4 lanes where they fill at least
        // 32 lanes of the adapter's smallest subgroup (`LoadOptions::attention_subgroups`;
        // figures in shaders/attention_sg.wgsl: heads of 64 measured slower).
        let caps = &gpu.caps;
        let head_lanes = match m.options.attention_subgroups {
            true if caps.subgroups
                && hd4.is_power_of_two()
                && hd4 >= m.options.attention_subgroup_min_lanes
                && hd4 <= caps.subgroup_min_size =>
            {
                hd4
            }
            _ => 0,
        };
        let sg_wg = m.options.attention_subgroup_workgroup.clamp(hd4, max_wg);
        // The fused QKV + attention kernel: its QKV rows per workgroup, and its parameters
        // (every layer's QKV matrix has the same shape).
        let fused_wg = m.options.fused_qkv_workgroup.clamp(hd4, max_wg);
        let fused_rows = fused_wg.checked_div(head_lanes).map_or(0, |groups| groups * 4);
        let qkv_rows = u32_of((nh + 2 * nkv) * hd, "qkv rows")?;
        let qkv_params = QkvParams { k: u32_of(d, "d_model")?, rows: qkv_rows, eps: cfg.rms_eps, _pad: 0 };
        let qkv_params = gpu.uniform_init("qkv params", bytemuck::bytes_of(&qkv_params));

        // Lists 0 (decode at the full split), 1 (prefill), 2 (prefill keeping every row's
        // logits), then a decode list per smaller split (1, 2, 4, ... below g.split).
        let short_splits: Vec<u32> = (0..16).map(|i| 1u32 << i).take_while(|&s| s < g.split).collect();
        let mut lists: Vec<Vec<Dispatch>> = (0..3 + short_splits.len()).map(|_| Vec::new()).collect();
        let mut embed_len = 0;
        let mut attn_ranges = Vec::new();
        for (li, list) in lists.iter_mut().enumerate() {
            let tiled = li == 1 || li == 2;
            let list_split = match li {
                0 => g.split,
                1 | 2 => 1,
                _ => short_splits[li - 3],
            };
            list.extend(embed(&b)?);
            if li == 0 {
                embed_len = list.len();
            }
            for (l, layer) in w.layers.iter().enumerate() {
                let norm_mode = MatMode { fuse_norm: true, bias: layer.qkv_bias.is_some(), ..Default::default() };
                // Short decode lists may compute QKV inside the attention dispatch.
                let fuse_qkv = li >= 3
                    && list_split <= m.options.fused_qkv_max_split
                    && head_lanes > 0
                    && nkv == nh
                    && kv.plan.ring_rows == 0
                    && m.o_packed(&layer.o, list_split)
                    && m.fits_fused_qkv(&layer.qkv, layer.qkv_bias.is_some(), fused_wg, fused_rows);
                if !fuse_qkv {
                    list.extend(b.matrix(
                        tiled,
                        &layer.qkv,
                        norm_mode,
                        &a.x,
                        &a.qkv,
                        Some(&layer.attn_norm),
                        layer.qkv_bias.as_ref(),
                        false,
                    )?);
                }
                let attn_start = list.len();
                let kp = kv.plan.params(cfg, l, ctx)?;
                let rp = gpu.uniform_init("kv params", bytemuck::bytes_of(&kp));
                let buf = |x: &wgpu::Buffer| KvBind::Buf(x.clone());
                let adjacent = cfg.rope_layout == RopeLayout::Adjacent;
                // Decode: the attention kernel does the RoPE and KV append itself.
                if tiled {
                    let pipeline = b.pipeline(Kernel::RopeKv { adjacent, kv: kv_formats })?;
                    let entries = vec![
                        (0, buf(&rp)),
                        (1, buf(&a.qkv)),
                        (2, KvBind::K),
                        (3, KvBind::V),
                        (4, buf(&a.q)),
                        (5, buf(&a.rope)),
                        (7, buf(&state)),
                    ];
                    kv_dispatch(list, li, pipeline, entries, Grid::PerToken(rope_heads), "rope_kv");
                }
                // Progressive: the positions leaving the recent ring move to int8, after the
                // chunk's own writes (a chunk may hold positions it re-quantises) and before
                // attention reads them from the main store (a decode step's requant only
                // reads rows of earlier steps).
                if kv.plan.ring_rows > 0 {
                    let pipeline = b.pipeline(Kernel::KvRequant { kv: kv_formats })?;
                    let entries = vec![(0, buf(&rp)), (2, KvBind::K), (3, KvBind::V), (7, buf(&state))];
                    let grid = Grid::PerToken(u32_of(2 * nkv, "kv heads")?);
                    kv_dispatch(list, li, pipeline, entries, grid, "kv_requant");
                }
                let heads = u32_of(nh, "heads")?;
                let key = |kernel| KernelKey { kernel, wg: attn_wg, rows: 1, tpr: 1 };
                // The o projection reads the attention output packed: the decode kernel packs
                // it at split 1, the combine otherwise.
                let o_packed = !tiled && m.o_packed(&layer.o, list_split);
                // Attention packs o's input where it writes the whole output itself.
                let partials = m.partials(list_split);
                let merges = partials == Partials::LastSplit;
                let attention_packs = o_packed && (partials == Partials::Whole || merges);
                let kernel = if tiled {
                    Kernel::Attention { split: list_split, kv: kv_formats }
                } else {
                    Kernel::AttentionDecode {
                        split: list_split,
                        adjacent,
                        kv: kv_formats,
                        pack: attention_packs,
                        merge: merges,
                        head_lanes,
                    }
                };
                let mut entries = vec![
                    (0, buf(&rp)),
                    (2, KvBind::K),
                    (3, KvBind::V),
                    (4, buf(&a.attn)),
                    (6, buf(&a.partial)),
                    (7, buf(&state)),
                ];
                // The subgroup kernel keeps no scores.
                if tiled || head_lanes == 0 {
                    entries.push((5, buf(&a.scores)));
                }
                if tiled {
                    entries.push((1, buf(&a.q)));
                } else {
                    entries.extend([(8, buf(&a.qkv)), (9, buf(&a.rope))]);
                    if attention_packs || fuse_qkv {
                        entries.push((10, buf(&a.attn_packed)));
                    }
                    // Split counters: the merging kernel's, and the fused kernel's per head.
                    if merges || fuse_qkv {
                        entries.push((11, buf(&a.split_done)));
                    }
                }
                if fuse_qkv {
                    // The fused kernel also reads the QKV weights, the residual and the norm.
                    let shard = &layer.qkv.shards[0];
                    let sym = layer.qkv.format == WeightFormat::Int4Sym;
                    let kernel = Kernel::AttentionQkv { adjacent, kv: kv_formats, head_lanes, sym };
                    let pipeline = kernels.get(&gpu.device, KernelKey { kernel, wg: fused_wg, rows: 1, tpr: 1 })?;
                    entries.extend([
                        (12, buf(&qkv_params)),
                        (13, buf(&shard.buf)),
                        (15, buf(&a.x)),
                        (16, buf(&layer.attn_norm)),
                    ]);
                    if let Some(scales) = &shard.scales {
                        entries.push((14, buf(scales)));
                    }
                    let grid = Grid::Fixed([qkv_rows / fused_rows, 1, 1]);
                    kv_dispatch(list, li, pipeline, entries, grid, "attention");
                } else {
                    let tpr = if tiled { 1 } else { lanes };
                    let wg = if !tiled && head_lanes > 0 { sg_wg } else { attn_wg };
                    let pipeline = kernels.get(&gpu.device, KernelKey { tpr, wg, ..key(kernel) })?;
                    let grid = if list_split > 1 { Grid::Fixed([heads, 1, list_split]) } else { Grid::PerToken(heads) };
                    kv_dispatch(list, li, pipeline, entries, grid, "attention");
                }
                if partials == Partials::Combine && !fuse_qkv {
                    let combine = Kernel::AttentionCombine { split: list_split, pack: o_packed };
                    let pipeline = kernels.get(&gpu.device, key(combine))?;
                    let mut entries = vec![(0, &rp), (4, &a.attn), (6, &a.partial), (7, &state)];
                    if o_packed {
                        entries.push((10, &a.attn_packed));
                    }
                    let bind = b.bind(&pipeline, &entries);
                    list.push(Dispatch {
                        pipeline,
                        bind,
                        grid: Grid::Fixed([heads, 1, 1]),
                        family: "attention_combine",
                    });
                }
                if li == 0 {
                    attn_ranges.push(attn_start..list.len());
                }
                let (o_mode, o_in) = if tiled {
                    (MatMode { accumulate: true, ..Default::default() }, &a.attn)
                } else {
                    m.decode_o_input(list_split)
                };
                if o_packed {
                    list.push(b.on_packed(&layer.o, o_mode, o_in, &a.x, &a.attn_packed)?);
                } else {
                    list.extend(b.matrix(tiled, &layer.o, o_mode, o_in, &a.x, None, None, false)?);
                }
                list.extend(b.ffn(
                    tiled,
                    &layer.gate_up,
                    &layer.down,
                    &a.x,
                    &a.gate_up,
                    &a.h_packed,
                    &layer.ffn_norm,
                )?);
            }
            let head = w.lm_head.as_ref().unwrap_or(&w.embd);
            let norm = MatMode { fuse_norm: true, ..Default::default() };
            // Decode and plain prefill: logits of the last row only; li == 2: every row.
            list.extend(b.matrix(li == 2, head, norm, &a.x, &m.logits, Some(&w.out_norm), None, li == 1)?);
        }
        let mut lists = lists.into_iter();
        let (decode, prefill, prefill_all_logits) =
            (lists.next().unwrap_or_default(), lists.next().unwrap_or_default(), lists.next().unwrap_or_default());
        let decode_short = short_splits.into_iter().zip(lists).collect();

        let sp = SampleParams {
            vocab: u32_of(vocab, "vocab")?,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            rep_penalty: 1.0,
            rep_window: 0,
            seed_lo: 0,
            seed_hi: 0,
            last_row: 0,
            _pad: [0; 3],
        };
        let sample_params = gpu.uniform_init("sample params", bytemuck::bytes_of(&sp));
        let pipeline = b.pipeline(Kernel::Sample)?;
        let bind = b.bind(&pipeline, &[(0, &sample_params), (1, &m.logits), (2, &tokens), (3, &state)]);
        let sample = Dispatch { pipeline: pipeline.clone(), bind, grid: Grid::Fixed([1, 1, 1]), family: "sample" };
        let sample_rows_params = gpu.uniform_init("sample rows params", bytemuck::bytes_of(&sp));
        let bind = b.bind(&pipeline, &[(0, &sample_rows_params), (1, &m.logits), (2, &tokens), (3, &state)]);
        let sample_rows = Dispatch { pipeline, bind, grid: Grid::PerToken(1), family: "sample" };
        Ok(Lane {
            tokens,
            state,
            sample_params,
            sample_rows_params,
            kv,
            decode,
            decode_short,
            prefill,
            prefill_all_logits,
            sample,
            sample_rows,
            kv_uses,
            embed_len,
            attn: attn_ranges,
        })
    }

    /// Bytes of this lane's token and state buffers (activations in the stats).
    pub(super) fn buffer_bytes(&self) -> u64 {
        self.tokens.size() + self.state.size()
    }

    /// Grow the KV cache for positions up to `latest` (copy in `enc`) and rebind what reads it.
    pub(super) fn reserve_kv(&mut self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, latest: usize) {
        if !self.kv.reserve(gpu, enc, latest) {
            return;
        }
        for u in &self.kv_uses {
            let list = match u.list {
                0 => &mut self.decode,
                1 => &mut self.prefill,
                2 => &mut self.prefill_all_logits,
                i => &mut self.decode_short[i - 3].1,
            };
            let d = &mut list[u.index];
            let layout = d.pipeline.get_bind_group_layout(0);
            let entries = resolve(&u.entries, &self.kv.k, &self.kv.v);
            let entries: Vec<wgpu::BindGroupEntry> = entries
                .iter()
                .map(|(binding, buf)| wgpu::BindGroupEntry { binding: *binding, resource: buf.as_entire_binding() })
                .collect();
            d.bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
        }
    }
}
