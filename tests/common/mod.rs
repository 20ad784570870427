//! Shared helpers for the native GPU tests (run on lavapipe in CI).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use wsi::gpu::{Gpu, KernelKey, Kernels};
use wsi::model::gguf::GgufSource;
use wsi::model::gguf_write::{TinySpec, tiny_gguf};
use wsi::model::{Arch, HostFormat};

/// One device for the whole test binary.
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| pollster::block_on(Gpu::new()).expect("a GPU adapter (lavapipe in CI)")).clone()
}

/// A tiny random llama (f32): 2 layers, d_model 96, 6 heads over 2 KV heads of 16, d_ff 136,
/// vocab 300, tied embeddings. One f32 KV token row is 2 * 2 * 32 * 4 = 512 bytes.
pub fn tiny_llama(seed: u64) -> GgufSource {
    let spec = TinySpec {
        n_layers: 2,
        d_model: 96,
        n_heads: 6,
        n_kv_heads: 2,
        d_ff: 136,
        vocab: 300,
        context: 128,
        tied: true,
    };
    GgufSource::from_bytes(tiny_gguf(&spec, Arch::Llama, seed, HostFormat::F32).expect("tiny model")).expect("parse")
}

/// Load options for [`tiny_llama`] engines: f32 weights, 128 positions, 16-token chunks.
/// `gpu_shaped`: the kernel shapes GPUs get (cooperative matvec rows, the wide matvec, split
/// decode attention), whose sums differ more from the prefill kernels'; otherwise those of
/// CPU rasterisers.
pub fn tiny_load_options(gpu_shaped: bool) -> wsi::model::llama::LoadOptions {
    wsi::model::llama::LoadOptions {
        format: wsi::gpu::WeightFormat::F32,
        context: 128,
        chunk: 16,
        workgroup: 64,
        threads_per_row: if gpu_shaped { 64 } else { 1 },
        wide_threads_per_row: if gpu_shaped { 8 } else { 0 },
        rows: 2,
        attention_split: if gpu_shaped { 5 } else { 1 },
        // GPUs' decode attention: 256 threads, several per key (the default would give
        // these 16-dim heads one; 2 exercises the lanes' sum).
        attention_workgroup: if gpu_shaped { 256 } else { 0 },
        attention_key_lanes: if gpu_shaped { 2 } else { 1 },
        // The full split from 8 keys on (the short contexts of these tests would run split
        // 1 at the default 32 keys per split).
        attention_keys_per_split: 1,
        max_binding: 0,
        ..Default::default()
    }
}

/// Deterministic pseudo-random values in [-scale, scale].
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Read a storage buffer back as f32.
pub fn read_f32(gpu: &Gpu, buf: &wgpu::Buffer) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&read_bytes(gpu, buf))
}

/// Read a storage buffer back as u32.
pub fn read_u32(gpu: &Gpu, buf: &wgpu::Buffer) -> Vec<u32> {
    bytemuck::pod_collect_to_vec(&read_bytes(gpu, buf))
}

pub fn read_bytes(gpu: &Gpu, buf: &wgpu::Buffer) -> Vec<u8> {
    let staging = gpu.staging("test staging", buf.size());
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    gpu.queue.submit([enc.finish()]);
    pollster::block_on(wsi::gpu::read_buffer(gpu, &staging, buf.size())).expect("readback")
}

/// The real SmolLM2 file, if present (CI fetches it; `WSI_MODEL` overrides the path).
pub fn smollm2_path() -> Option<PathBuf> {
    let p = std::env::var_os("WSI_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    p.exists().then_some(p)
}

/// Like `smollm2_path` but fails loudly in CI, where the model must be there.
pub fn require_smollm2() -> Option<PathBuf> {
    let p = smollm2_path();
    if p.is_none() && std::env::var_os("CI").is_some() {
        panic!("models/SmolLM2-135M-Instruct.Q4_1.gguf is missing: run scripts/fetch-model.sh");
    }
    if p.is_none() {
        eprintln!("SmolLM2 model not found: skipping (run scripts/fetch-model.sh)");
    }
    p
}

/// Max |a-b| / max(|b|, floor).
pub fn max_rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f32::max)
}

/// Run one kernel once on the given bindings and grid.
pub fn run(gpu: &Gpu, key: KernelKey, bindings: &[(u32, &wgpu::Buffer)], grid: [u32; 3]) {
    run_with(gpu, &Kernels::default(), key, bindings, grid)
}

/// [`run`] with pipelines from `kernels`.
pub fn run_with(gpu: &Gpu, kernels: &Kernels, key: KernelKey, bindings: &[(u32, &wgpu::Buffer)], grid: [u32; 3]) {
    let pipeline = kernels.get(&gpu.device, key).expect("pipeline");
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<_> = bindings
        .iter()
        .map(|(b, buf)| wgpu::BindGroupEntry { binding: *b, resource: buf.as_entire_binding() })
        .collect();
    let bind =
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
    }
    gpu.queue.submit([enc.finish()]);
    gpu.take_errors().expect("no GPU validation errors");
}
