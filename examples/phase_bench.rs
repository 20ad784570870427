//! What a dispatch boundary costs a decode step: times a chain of dependent int8 matvecs
//! (`examples/phase_probes.wgsl`) run as one dispatch per phase against one persistent
//! dispatch with a grid barrier between phases (and the same with the next phase's first
//! weights loaded before the wait). A development tool for the H100:
//!
//!   cargo run --release --example phase_bench -- N PHASES GROUPS...
//!
//! N is the square matrix size (a multiple of 16, at most 8192), PHASES the chain length,
//! each GROUPS a persistent workgroup count (all must be resident at once: a count past the
//! GPU's capacity hangs, as 264 did on the H100 with this kernel). Prints µs per phase, GB/s
//! of weights, and whether every variant's final activations equal the per-dispatch chain's
//! bit for bit.
//!
//! Not an engine path: WGSL has no cross-workgroup ordering (its atomics are relaxed and
//! `storageBarrier` orders one workgroup), so the grid barrier is outside the language's
//! guarantees. lavapipe gave wrong activations in about a third of the runs; the H100 gave
//! equal ones. H100 (session 10, 132 workgroups, REPS=30-50), µs per phase, dispatch /
//! persistent: N 576 8.34 / 6.05, 2048 17.27 / 15.02, 4096 41.93 / 39.28, 8192 128.38 /
//! 122.62; the early loads of PREFETCH changed nothing. So a dispatch boundary costs about
//! 2.3-2.7 µs more than a grid barrier, which itself is not free.

use std::time::Instant;

use wsi::gpu::Gpu;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P {
    n: u32,
    k: u32,
    phases: u32,
    groups: u32,
    phase: u32,
    scale: f32,
    _a: u32,
    _b: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let phases: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    let groups: Vec<u32> = args.iter().skip(2).filter_map(|s| s.parse().ok()).collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let tpr: f64 = std::env::var("TPR").ok().and_then(|v| v.parse().ok()).unwrap_or(32.0);
    let gpu: Gpu = pollster::block_on(Gpu::new()).expect("adapter");
    println!("{} n {n} phases {phases} reps {reps} tpr {tpr}", gpu.caps.adapter_name);
    let k = n;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let weights: Vec<u8> = (0..phases * n * k)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect();
    let w = gpu.storage_init("w", &weights);
    drop(weights);
    let x0: Vec<f32> = (0..k).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 2.0).collect();
    let act = gpu.storage("act", ((phases + 1) * k * 4) as u64);
    let bar = gpu.storage("bar", 256);
    let scale = 1.0 / (73.0 * (k as f32).sqrt());
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(include_str!("phase_probes.wgsl").into()),
    });
    let pipeline = |entry: &str, prefetch: bool| {
        let c = [("TPR", tpr), ("PREFETCH", if prefetch { 1.0 } else { 0.0 })];
        gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &c,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    let bind = |pl: &wgpu::ComputePipeline, p: P| {
        let ub = gpu.uniform_init("p", bytemuck::bytes_of(&p));
        let entries = [
            wgpu::BindGroupEntry { binding: 0, resource: ub.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: w.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: act.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 3, resource: bar.as_entire_binding() },
        ];
        // `phase_one` does not use the counter.
        let entries = &entries[..if p.groups == 0 { 3 } else { 4 }];
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pl.get_bind_group_layout(0),
            entries,
        })
    };
    let base = P { n: n as u32, k: k as u32, phases: phases as u32, groups: 0, phase: 0, scale, _a: 0, _b: 0 };
    let rows = (256.0 / tpr) as usize;
    let blocks = n.div_ceil(rows) as u32;
    // (name, pipeline, bind groups, workgroups per dispatch)
    let mut variants = Vec::new();
    let one = pipeline("phase_one", false);
    let binds: Vec<_> = (0..phases).map(|ph| bind(&one, P { phase: ph as u32, ..base })).collect();
    variants.push(("dispatch per phase".to_string(), one, binds, blocks));
    for &g in &groups {
        for pf in [false, true] {
            let pl = pipeline("persistent", pf);
            let b = vec![bind(&pl, P { groups: g, ..base })];
            let name = format!("persistent {g}{}", if pf { " + prefetch" } else { "" });
            variants.push((name, pl, b, g));
        }
    }
    let record = |enc: &mut wgpu::CommandEncoder, v: &(String, wgpu::ComputePipeline, Vec<wgpu::BindGroup>, u32)| {
        enc.clear_buffer(&bar, 0, None);
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&v.1);
        for b in &v.2 {
            pass.set_bind_group(0, b, &[]);
            pass.dispatch_workgroups(v.3, 1, 1);
        }
    };
    let staging = gpu.staging("out", (k * 4) as u64);
    let mut outputs = Vec::new();
    for v in &variants {
        gpu.queue.write_buffer(&act, 0, bytemuck::cast_slice(&x0));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&act, (k * 4) as u64, None);
        record(&mut enc, v);
        enc.copy_buffer_to_buffer(&act, (phases * k * 4) as u64, &staging, 0, (k * 4) as u64);
        gpu.queue.submit([enc.finish()]);
        let bytes = pollster::block_on(wsi::gpu::read_buffer(&gpu, &staging, (k * 4) as u64)).expect("readback");
        outputs.push(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes));
        eprintln!("checked {}", v.0);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..10 {
        for (v, t) in variants.iter().zip(times.iter_mut()) {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for _ in 0..reps {
                record(&mut enc, v);
            }
            let start = Instant::now();
            gpu.queue.submit([enc.finish()]);
            gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            if round > 0 {
                t.push(start.elapsed().as_secs_f64() * 1e6 / (reps * phases) as f64);
            }
        }
    }
    if let Err(e) = gpu.take_errors() {
        println!("GPU errors: {e}");
    }
    let bytes = (n * k) as f64;
    let rms = (outputs[0].iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / k as f64).sqrt();
    println!("final rms {rms:.4}");
    for ((v, t), out) in variants.iter().zip(times.iter_mut()).zip(&outputs) {
        t.sort_by(f64::total_cmp);
        let same = out.iter().zip(&outputs[0]).all(|(a, b)| a.to_bits() == b.to_bits());
        println!(
            "{:28} min {:8.2} us/phase {:7.1} GB/s  median {:8.2} us/phase  equal {same}",
            v.0,
            t[0],
            bytes / t[0] / 1e3,
            t[t.len() / 2]
        );
    }
}
