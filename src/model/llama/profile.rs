//! Time per dispatch of a decode step or a prefill chunk (native only; `wsi bench --profile`).
//! With TIMESTAMP_QUERY the GPU timestamps each dispatch in its own compute pass while the
//! whole step runs in order (caches as in real decoding); without it each dispatch is run
//! `reps` times alone and timed on the CPU around the submission. With timestamps inside
//! passes, a prefill chunk is also timed as the engine runs it: one pass, a timestamp after
//! each dispatch.

use super::{Dispatch, LlamaGpu, run};
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Per-dispatch times of one step, in dispatch order.
pub struct KernelTimes {
    /// `(kernel family, ms)` per dispatch, averaged over the repetitions.
    pub rows: Vec<(&'static str, f64)>,
    /// True when the times are GPU timestamps; false when CPU-timed submissions (which
    /// include the submit and wait overhead of each).
    pub gpu_timestamps: bool,
}

impl LlamaGpu {
    /// Time a decode step (`prefill_tokens == 0`) or a prefill chunk of `prefill_tokens`,
    /// `reps` times.
    pub fn profile(&self, gpu: &Gpu, reps: u32, prefill_tokens: u32) -> Result<KernelTimes> {
        let (list, tokens) = if prefill_tokens == 0 {
            (&self.lane().decode, 1)
        } else {
            (&self.lane().prefill, prefill_tokens.min(self.options.chunk as u32))
        };
        // The sampler ends a chunk by setting the state to one token at the next position, so
        // every repetition of a chunk starts from its own state (session 10's profile wrote it
        // once: repetitions after the first ran one token, and the chunk's dispatches seemed
        // to add up to 248 of its 464 ms on a 7B).
        let prepare = || {
            if prefill_tokens > 0 {
                self.write_state(gpu, 0, tokens);
            }
        };
        let step: Vec<&Dispatch> = list.iter().chain(std::iter::once(&self.lane().sample)).collect();
        let reps = reps.max(1);
        // A query set holds at most 4096 timestamps (WebGPU's limit): two per dispatch.
        if gpu.caps.timestamps && step.len() * 2 <= 4096 {
            let step: Vec<(&Dispatch, u32)> = step.iter().map(|d| (*d, tokens)).collect();
            return timestamped(gpu, &step, reps, prepare);
        }
        let mut rows = Vec::new();
        for d in step {
            prepare();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..reps {
                    run(&mut pass, std::slice::from_ref(d), tokens);
                }
            }
            let t0 = web_time::Instant::now();
            let idx = gpu.queue.submit([enc.finish()]);
            wait(gpu, idx)?;
            rows.push((d.family, t0.elapsed().as_secs_f64() * 1e3 / f64::from(reps)));
        }
        Ok(KernelTimes { rows, gpu_timestamps: false })
    }
}

impl LlamaGpu {
    /// GPU timestamps of each dispatch of a batched step over `lanes` (after
    /// [`LlamaGpu::begin_batch`]); None without timestamp queries.
    pub fn profile_batch(&self, gpu: &Gpu, lanes: &[usize], reps: u32) -> Result<Option<KernelTimes>> {
        let Some(shared) = &self.batched else { return Ok(None) };
        let b = lanes.len() as u32;
        let mut step: Vec<(&Dispatch, u32)> = Vec::new();
        for &l in lanes {
            step.extend(self.lanes[l].decode[..self.lanes[l].embed_len].iter().map(|d| (d, 1)));
        }
        for (i, seg) in shared.for_lanes(lanes.len()).iter().enumerate() {
            step.extend(seg.iter().map(|d| (d, b)));
            for &l in lanes {
                let lane = &self.lanes[l];
                match lane.attn.get(i) {
                    Some(r) => step.extend(lane.decode[r.clone()].iter().map(|d| (d, 1))),
                    None => step.push((&lane.sample, 1)),
                }
            }
        }
        if !gpu.caps.timestamps || step.len() * 2 > 4096 {
            return Ok(None);
        }
        timestamped(gpu, &step, reps.max(1), || {}).map(Some)
    }
}

fn wait(gpu: &Gpu, idx: wgpu::SubmissionIndex) -> Result<()> {
    gpu.device
        .poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None })
        .map(|_| ())
        .map_err(|e| Error::Gpu(format!("poll: {e}")))
}

/// A timestamp query set with its resolve and readback buffers.
struct Stamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    count: u32,
}

impl Stamps {
    fn new(gpu: &Gpu, count: u32) -> Stamps {
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let buffer = |label, usage| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: u64::from(count) * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer("profile resolve", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let staging = buffer("profile readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Stamps { set, resolve, staging, count }
    }

    /// Submit `enc` (whose passes wrote the timestamps) and read them back, in ms.
    fn submit(&self, gpu: &Gpu, mut enc: wgpu::CommandEncoder) -> Result<Vec<f64>> {
        let bytes = u64::from(self.count) * 8;
        enc.resolve_query_set(&self.set, 0..self.count, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, bytes);
        let idx = gpu.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        self.staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        wait(gpu, idx)?;
        rx.recv()
            .map_err(|e| Error::Gpu(format!("timestamp readback: {e}")))?
            .map_err(|e| Error::Gpu(format!("timestamp readback: {e}")))?;
        let period_ms = f64::from(gpu.queue.get_timestamp_period()) / 1e6;
        let ms = {
            let view = self.staging.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("map: {e}")))?;
            bytemuck::cast_slice::<u8, u64>(&view).iter().map(|t| *t as f64 * period_ms).collect()
        };
        self.staging.unmap();
        Ok(ms)
    }
}

/// Every dispatch in a pass of its own with begin/end timestamps; the step runs `reps`
/// times in order (`prepare` before each), and each dispatch's mean duration is returned.
fn timestamped(gpu: &Gpu, step: &[(&Dispatch, u32)], reps: u32, prepare: impl Fn()) -> Result<KernelTimes> {
    let stamps = Stamps::new(gpu, step.len() as u32 * 2);
    let mut total = vec![0f64; step.len()];
    for _ in 0..reps {
        prepare();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (i, (d, tokens)) in step.iter().enumerate() {
            let i = i as u32 * 2;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.family),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &stamps.set,
                    beginning_of_pass_write_index: Some(i),
                    end_of_pass_write_index: Some(i + 1),
                }),
            });
            run(&mut pass, std::slice::from_ref(*d), *tokens);
        }
        let ms = stamps.submit(gpu, enc)?;
        for (t, pair) in total.iter_mut().zip(ms.chunks_exact(2)) {
            *t += (pair[1] - pair[0]).max(0.0);
        }
    }
    let rows = step.iter().zip(total).map(|((d, _), t)| (d.family, t / f64::from(reps))).collect();
    Ok(KernelTimes { rows, gpu_timestamps: true })
}

impl LlamaGpu {
    /// Each dispatch's time within a prefill chunk of `n` tokens from position 0 run as the
    /// engine runs it, one pass, with a timestamp after each dispatch (written once the work
    /// before it has finished); the chunk runs `reps` times and each dispatch's mean is
    /// returned, in dispatch order. None without timestamps inside passes.
    pub fn profile_prefill_in_pass(&self, gpu: &Gpu, n: u32, reps: u32) -> Result<Option<KernelTimes>> {
        let n = n.min(self.options.chunk as u32);
        let step: Vec<&Dispatch> = self.lane().prefill.iter().chain(std::iter::once(&self.lane().sample)).collect();
        let count = step.len() as u32 + 1;
        if !gpu.caps.timestamps_in_passes || count > 4096 {
            return Ok(None);
        }
        let stamps = Stamps::new(gpu, count);
        let reps = reps.max(1);
        let mut total = vec![0f64; step.len()];
        for _ in 0..reps {
            self.write_state(gpu, 0, n);
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.write_timestamp(&stamps.set, 0);
                for (i, d) in step.iter().enumerate() {
                    run(&mut pass, std::slice::from_ref(*d), n);
                    pass.write_timestamp(&stamps.set, i as u32 + 1);
                }
            }
            let ms = stamps.submit(gpu, enc)?;
            for (t, w) in total.iter_mut().zip(ms.windows(2)) {
                *t += (w[1] - w[0]).max(0.0);
            }
        }
        let rows = step.iter().zip(total).map(|(d, t)| (d.family, t / f64::from(reps))).collect();
        Ok(Some(KernelTimes { rows, gpu_timestamps: true }))
    }
}

/// `(kernel family, dispatches per step, µs per step)`.
pub type FamilyShare = (&'static str, usize, f64);

impl LlamaGpu {
    /// In-stream cost of each kernel family of a decode step, in µs per step: the GPU time of
    /// `steps` steps in one submission from position `pos` (the KV cache reserved beforehand),
    /// whole and then with each family's dispatches left out. Per-dispatch passes (above)
    /// add each pass's own overhead; this measures what a family adds to the real stream.
    /// Left-out kernels leave stale inputs for the others, which changes no kernel's cost.
    /// Returns `(family, dispatches per step, µs saved without it)` and the whole step's µs.
    pub fn ablate(&self, gpu: &Gpu, pos: u32, steps: u32) -> Result<(Vec<FamilyShare>, f64)> {
        let lane = self.lane();
        // The list of the first step's attention split (steps that cross to another split
        // still run this one).
        let list = self.decode_list(pos as usize);
        let step: Vec<&Dispatch> = list.iter().chain(std::iter::once(&lane.sample)).collect();
        let mut families: Vec<(&'static str, usize)> = Vec::new();
        for d in &step {
            match families.iter_mut().find(|f| f.0 == d.family) {
                Some(f) => f.1 += 1,
                None => families.push((d.family, 1)),
            }
        }
        let time = |skip: Option<&str>| -> Result<f64> {
            let mut best = f64::MAX;
            for _ in 0..3 {
                self.write_state(gpu, pos, 1);
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for _ in 0..steps {
                        for d in step.iter().filter(|d| Some(d.family) != skip) {
                            run(&mut pass, std::slice::from_ref(*d), 1);
                        }
                    }
                }
                let cb = enc.finish();
                let t0 = web_time::Instant::now();
                let idx = gpu.queue.submit([cb]);
                wait(gpu, idx)?;
                best = best.min(t0.elapsed().as_secs_f64() * 1e6 / f64::from(steps));
            }
            Ok(best)
        };
        let whole = time(None)?;
        let mut rows = Vec::new();
        for (family, n) in families {
            rows.push((family, n, whole - time(Some(family))?));
        }
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok((rows, whole))
    }
}
