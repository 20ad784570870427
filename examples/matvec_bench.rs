//! Times matvec variants on the native adapter (lavapipe, or SwiftShader through
//! `VK_DRIVER_FILES`), alternating them in one process so that load from elsewhere hits
//! every variant alike. A development tool for picking CPU-rasteriser layouts:
//!
//!   cargo run --release --example matvec_bench -- int4 3072x576 main:256:1:2 cpu:32:1:8
//!
//! Each variant is `entry:WG:TPR:ROWS[:norm|swiglu|plain[:prelude.wgsl[:matvec.wgsl|+appended.wgsl]]]`;
//! the matrix is `NxK`. Prints the median time per dispatch and per weight over rounds of
//! `REPS` (default 20) dispatches; `COPIES=N` cycles N copies of the matrix (past the L2).

use std::time::Instant;

use wgpu::util::DeviceExt;
use wsi::gpu::params::MatParams;
use wsi::gpu::{Gpu, WeightFormat};
use wsi::model::upload::upload_matrix;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = match args.first().map(String::as_str) {
        Some("fp32") => WeightFormat::F32,
        Some("fp16") | Some("fp16n") => WeightFormat::F16,
        Some("int8") => WeightFormat::Int8,
        _ => WeightFormat::Int4,
    };
    let (n, k) = args
        .get(1)
        .and_then(|s| s.split_once('x'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap_or((3072, 576));
    let variants: Vec<&String> = args.iter().skip(2).collect();
    let gpu: Gpu = pollster::block_on(Gpu::new()).expect("adapter");
    println!("{} {:?} {n}x{k} subgroups {}", gpu.caps.adapter_name, format, gpu.caps.subgroups);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect();
    // COPIES > 1: that many copies of the matrix, used in turn, so that a large total
    // defeats the L2 cache (H100: 50 MB) and the figures show HBM bandwidth.
    let copies: usize = std::env::var("COPIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mats: Vec<_> = (0..copies).map(|_| upload_matrix(&gpu, "w", &[&w], k, format).expect("upload")).collect();
    let m = &mats[0];
    // UNIFORM_IO=1: x and aux also usable as 64 KiB uniform buffers (a matvec.wgsl variant that
    // declares them `var<uniform>`).
    let uniform_io = std::env::var("UNIFORM_IO").is_ok_and(|v| v == "1");
    let io = |label: &str, v: Vec<f32>| {
        if !uniform_io {
            return gpu.storage_init(label, bytemuck::cast_slice(&v));
        }
        let mut padded = v;
        padded.resize(padded.len().max(16384), 0.0);
        gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&padded),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    };
    let x = io("x", vec![0.5f32; 2 * k]);
    let y = gpu.storage("y", n as u64 * 4);
    let aux = io("aux", vec![1.0f32; k]);
    let filler = gpu.storage("filler", 16);
    let state = gpu.storage_init("state", bytemuck::cast_slice(&[0u32, 1, 0, 0]));
    let mut built = Vec::new();
    for v in &variants {
        let f: Vec<&str> = v.split(':').collect();
        // An optional 6th field: a prelude file read at run time (A/B of shader edits).
        let prelude_text = match f.get(5).filter(|p| !p.is_empty()) {
            Some(path) => std::fs::read_to_string(path).expect("prelude file"),
            None => m.format.matvec_prelude(args[0] == "fp16n"),
        };
        // An optional 7th: a matvec.wgsl to use instead of the built-in one, or with a
        // leading `+` a file appended to it (examples/matvec_probes.wgsl).
        let builtin = include_str!("../shaders/matvec.wgsl");
        let body = match f.get(6) {
            Some(path) if path.starts_with('+') => {
                format!("{builtin}\n{}", std::fs::read_to_string(&path[1..]).expect("appended file"))
            }
            Some(path) => std::fs::read_to_string(path).expect("matvec file"),
            None => builtin.to_string(),
        };
        let source = format!("{prelude_text}\n{body}");
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let (entry, wg, tpr, rows) =
            (f[0], f[1].parse::<u32>().unwrap(), f[2].parse::<u32>().unwrap(), f[3].parse::<u32>().unwrap());
        let mode = f.get(4).copied().unwrap_or("");
        let c = [
            ("WG", f64::from(wg)),
            ("TPR", f64::from(tpr)),
            ("ROWS", f64::from(rows)),
            ("FUSE_NORM", if mode == "norm" { 1.0 } else { 0.0 }),
            ("SWIGLU_IN", if mode == "swiglu" { 1.0 } else { 0.0 }),
        ];
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &c,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            println!("{v}: {e}");
        }
        let params = MatParams {
            n: n as u32,
            k: k as u32,
            x_stride: if mode == "swiglu" { 2 * k as u32 } else { k as u32 },
            y_stride: n as u32,
            eps: 1e-5,
            last_row: 0,
            y_off: 0,
            head_dim: 0,
        };
        let ub = gpu.uniform_init("p", bytemuck::bytes_of(&params));
        let layout = pipeline.get_bind_group_layout(0);
        let binds: Vec<_> = mats
            .iter()
            .map(|m| {
                let mut entries = vec![(0, &ub), (3, &x), (4, &y), (5, &aux), (6, &filler), (7, &state)];
                entries.extend(m.shards[0].bindings());
                let e: Vec<_> = entries
                    .iter()
                    .map(|(b, buf)| wgpu::BindGroupEntry { binding: *b, resource: buf.as_entire_binding() })
                    .collect();
                gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &e })
            })
            .collect();
        let per_wg = wg / tpr * rows;
        built.push((v.to_string(), pipeline, binds, (n as u32).div_ceil(per_wg), Vec::new()));
    }
    // Each variant's output against the first variant's (max relative difference), so that a
    // variant that fails to compile or computes something else shows.
    let staging = gpu.staging("y readback", n as u64 * 4);
    let mut outputs: Vec<Vec<f32>> = Vec::new();
    for b in &built {
        gpu.queue.write_buffer(&y, 0, bytemuck::cast_slice(&vec![f32::NAN; n]));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&b.1);
            pass.set_bind_group(0, &b.2[0], &[]);
            pass.dispatch_workgroups(b.3, 1, 1);
        }
        enc.copy_buffer_to_buffer(&y, 0, &staging, 0, n as u64 * 4);
        gpu.queue.submit([enc.finish()]);
        let bytes = pollster::block_on(wsi::gpu::read_buffer(&gpu, &staging, n as u64 * 4)).expect("readback");
        outputs.push(bytemuck::pod_collect_to_vec(&bytes));
    }
    let errors: Vec<f64> = outputs
        .iter()
        .map(|o| {
            let scale = outputs[0].iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
            o.iter().zip(&outputs[0]).fold(0f64, |m, (a, b)| {
                let d = f64::from((a - b).abs());
                if d.is_nan() { f64::INFINITY } else { m.max(d / scale.max(1e-30)) }
            })
        })
        .collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    for round in 0..12 {
        for b in built.iter_mut() {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&b.1);
                for i in 0..reps {
                    pass.set_bind_group(0, &b.2[i % b.2.len()], &[]);
                    pass.dispatch_workgroups(b.3, 1, 1);
                }
            }
            let t = Instant::now();
            gpu.queue.submit([enc.finish()]);
            gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
            if round > 0 {
                b.4.push(t.elapsed().as_secs_f64() * 1e3 / reps as f64);
            }
        }
    }
    let bytes = (n * k) as f64 * m.format.bytes_per_weight();
    for (b, err) in built.iter_mut().zip(&errors) {
        b.4.sort_by(f64::total_cmp);
        let (min, med) = (b.4[0], b.4[b.4.len() / 2]);
        let per_w = |ms: f64| ms * 1e6 / (n * k) as f64;
        println!(
            "{:40} min {:7.3} ms {:6.3} ns/weight {:7.1} GB/s   median {:7.3} ms {:6.3} ns/weight   max rel diff {:.1e}",
            b.0,
            min,
            per_w(min),
            bytes / min / 1e6,
            med,
            per_w(med),
            err
        );
    }
}
