//! A batched decode step: the lanes of several sequences advance one token each in one pass.
//! The weight-reading matrix dispatches run once over all `B` rows (lane `r` at activation
//! row `r`, `state.n_tokens = B` in the batch state). On GPUs they are the matvec's `batch`
//! entry points: a workgroup reads its weights once for up to 4 lanes' rows, with the same
//! per-row arithmetic as a solo decode step (so greedy ids match). Each lane's embedding gather,
//! attention (with its RoPE/KV append) and sampler run on its own buffers (its KV cache, token
//! ids, position). Order of a step: embed (lanes), then per layer the QKV matrix (shared),
//! attention (lanes), O / gate-up / down (shared), and at the end lm_head (shared) and the samplers
//! (lanes). Lanes keep their positions on the GPU, so several steps fit in one submission.

use super::{Dispatch, LlamaGpu, run};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernels, MatMode};
use crate::model::upload::GpuMatrix;

/// The shared matrix dispatches of a batched step.
pub(super) struct Shared {
    /// `segs[i]` runs after lane group `i` (0: the embedding; `i >= 1`: layer `i - 1`'s
    /// attention): `segs[0]` is layer 0's QKV, `segs[i]` layer `i - 1`'s O, gate-up and down
    /// then layer `i`'s QKV, and the last ends with lm_head over every row.
    segs: Vec<Vec<Dispatch>>,
    /// The same for steps of 2 or more lanes, where big matrices use the `batch` matvec
    /// (None: every step uses `segs`).
    several: Option<Vec<Vec<Dispatch>>>,
    /// `[4]` u32: (0, B, 0, 0) for the shared dispatches.
    state: wgpu::Buffer,
}

impl Shared {
    fn build(m: &LlamaGpu, gpu: &Gpu, kernels: &Kernels) -> Result<Shared> {
        let state = gpu.storage("batch state", 16);
        // Cooperative rows (GPUs) only: CPU rasterisers keep one grid row per lane.
        let many = if m.geo.tpr > 1 { m.options.matvec_batch.clamp(1, 4) } else { 1 };
        let one = Self::segments(m, gpu, kernels, &state, 1)?;
        let several = if many > 1 { Some(Self::segments(m, gpu, kernels, &state, many)?) } else { None };
        Ok(Shared { segs: one, several, state })
    }

    /// The shared dispatches, big matrices reading their weights once for `batch` rows.
    fn segments(
        m: &LlamaGpu,
        gpu: &Gpu,
        kernels: &Kernels,
        state: &wgpu::Buffer,
        batch: u32,
    ) -> Result<Vec<Vec<Dispatch>>> {
        let (w, a) = (&m.weights, &m.acts);
        let (small, big) = (m.builder(gpu, kernels, state, 1), m.builder(gpu, kernels, state, batch));
        let min = m.options.batch_matvec_min_weights;
        let pick = |mat: &GpuMatrix| if mat.rows as usize * mat.cols as usize >= min { &big } else { &small };
        let mut segs: Vec<Vec<Dispatch>> = (0..=w.layers.len()).map(|_| Vec::new()).collect();
        for (l, layer) in w.layers.iter().enumerate() {
            let norm_mode = MatMode { fuse_norm: true, bias: layer.qkv_bias.is_some(), ..Default::default() };
            let b = pick(&layer.qkv);
            let qkv_bias = layer.qkv_bias.as_ref();
            segs[l].extend(b.matrix(
                false,
                &layer.qkv,
                norm_mode,
                &a.x,
                &a.qkv,
                Some(&layer.attn_norm),
                qkv_bias,
                false,
            )?);
            let after = &mut segs[l + 1];
            let (o_mode, o_in) = m.decode_o_input(m.geo.split);
            after.extend(pick(&layer.o).matrix(false, &layer.o, o_mode, o_in, &a.x, None, None, false)?);
            let norm = MatMode { fuse_norm: true, ..Default::default() };
            let b = pick(&layer.gate_up);
            after.extend(b.matrix(
                false,
                &layer.gate_up,
                norm,
                &a.x,
                &a.gate_up,
                Some(&layer.ffn_norm),
                None,
                false,
            )?);
            let down = MatMode { swiglu_in: true, accumulate: true, ..Default::default() };
            after.extend(pick(&layer.down).matrix(false, &layer.down, down, &a.gate_up, &a.x, None, None, false)?);
        }
        let head = w.lm_head.as_ref().unwrap_or(&w.embd);
        let norm = MatMode { fuse_norm: true, ..Default::default() };
        let last = segs.len() - 1;
        segs[last].extend(pick(head).matrix(false, head, norm, &a.x, &m.logits, Some(&w.out_norm), None, false)?);
        Ok(segs)
    }

    /// The segments for a step of `b` lanes.
    pub(super) fn for_lanes(&self, b: usize) -> &[Vec<Dispatch>] {
        match &self.several {
            Some(s) if b > 1 => s,
            _ => &self.segs,
        }
    }
}

impl LlamaGpu {
    /// Prepare batched steps over `lanes` (lane `lanes[r]` at activation and logits row `r`;
    /// every lane built and positioned by its prefill): writes each lane's row and the batch
    /// size, in queue order after everything submitted so far.
    pub fn begin_batch(&mut self, gpu: &Gpu, kernels: &Kernels, lanes: &[usize]) -> Result<()> {
        if lanes.is_empty() || lanes.len() > self.max_lanes() || lanes.iter().any(|&l| l >= self.lanes.len()) {
            return Err(Error::internal(format!("bad batch {lanes:?} for {} lanes", self.lanes.len())));
        }
        if self.batched.is_none() {
            self.batched = Some(Shared::build(self, gpu, kernels)?);
        }
        // A few bytes per submission: cheaper to write than to track (a prefill resets its
        // lane's row to 0).
        let Some(s) = &self.batched else { return Ok(()) };
        gpu.queue.write_buffer(&s.state, 0, bytemuck::cast_slice(&[0u32, lanes.len() as u32, 0, 0]));
        for (row, &l) in lanes.iter().enumerate() {
            gpu.queue.write_buffer(&self.lanes[l].state, 8, bytemuck::cast_slice(&[row as u32]));
        }
        Ok(())
    }

    /// Grow lane `lane`'s KV cache for positions up to `latest` (see [`LlamaGpu::reserve_kv`]).
    pub fn reserve_lane_kv(&mut self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, lane: usize, latest: usize) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.reserve_kv(gpu, enc, latest);
        }
    }

    /// Encode one batched decode step over `lanes` (as passed to [`LlamaGpu::begin_batch`]):
    /// each lane reads the id at its position, writes the next one and advances.
    pub fn encode_batch_step(&self, pass: &mut wgpu::ComputePass<'_>, lanes: &[usize]) {
        let Some(shared) = &self.batched else { return };
        let b = lanes.len() as u32;
        for &l in lanes {
            let lane = &self.lanes[l];
            run(pass, &lane.decode[..lane.embed_len], 1);
        }
        for (i, seg) in shared.for_lanes(lanes.len()).iter().enumerate() {
            run(pass, seg, b);
            for &l in lanes {
                let lane = &self.lanes[l];
                match lane.attn.get(i) {
                    Some(r) => run(pass, &lane.decode[r.clone()], 1),
                    None => run(pass, std::slice::from_ref(&lane.sample), 1),
                }
            }
        }
    }

    /// Lane `lane`'s token-id buffer (`[max_positions + 1]` u32).
    pub fn lane_tokens(&self, lane: usize) -> &wgpu::Buffer {
        &self.lanes[lane].tokens
    }

    /// Dispatches in a batched step of `b` lanes.
    pub fn dispatches_per_batch_step(&self, b: usize) -> usize {
        let lane = self.lane();
        let per_lane = lane.embed_len + lane.attn.iter().map(|r| r.len()).sum::<usize>() + 1;
        let shared = self.batched.as_ref().map_or(0, |s| s.for_lanes(b).iter().map(Vec::len).sum());
        shared + b * per_lane
    }
}
