//! Whether this adapter gives WGSL its tensor cores, and how fast: lists the cooperative
//! matrix configurations wgpu accepts (`Features::EXPERIMENTAL_COOPERATIVE_MATRIX`, Vulkan's
//! `VK_KHR_cooperative_matrix`), checks a 16x16x16 f16 -> f32 product
//! (`examples/coop_probe.wgsl`) against the CPU, and times it on prefill-sized products. A
//! development tool for the prefill lead (README, session 13):
//!
//!   cargo run --release --example coop_probe -- [M N K]...
//!
//! Each M N K (multiples of 64, 64 and 16; default 512 4096 4096 and 512 11008 4096) is
//! timed over REPS dispatches in one submission and printed as ms per product and TFLOPS.
//! Not an engine path: the feature is experimental in wgpu 30 and native only.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    native::run();
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use half::f16;
    use wgpu::util::DeviceExt;

    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct P {
        m: u32,
        n: u32,
        k: u32,
        _pad: u32,
    }

    fn rand_f16(n: usize, seed: u64) -> Vec<f16> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                f16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    struct Ctx {
        device: wgpu::Device,
        queue: wgpu::Queue,
        pipeline: wgpu::ComputePipeline,
    }

    impl Ctx {
        /// C = A B for A [m, k], B [k, n]: the product, and ms per dispatch over `reps`.
        fn product(&self, m: u32, n: u32, k: u32, a: &[f16], b: &[f16], reps: u32) -> (Vec<f32>, f64) {
            let d = &self.device;
            let usage = wgpu::BufferUsages::STORAGE;
            let p = P { m, n, k, _pad: 0 };
            let pb = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::bytes_of(&p),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let ab = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(a),
                usage,
            });
            let bb = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(b),
                usage,
            });
            let size = u64::from(m) * u64::from(n) * 4;
            let cb = d.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: usage | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let rb = d.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let layout = self.pipeline.get_bind_group_layout(0);
            let entries: Vec<wgpu::BindGroupEntry> = [&pb, &ab, &bb, &cb]
                .iter()
                .enumerate()
                .map(|(i, buf)| wgpu::BindGroupEntry { binding: i as u32, resource: buf.as_entire_binding() })
                .collect();
            let bind =
                d.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
            let run = |count: u32| {
                let mut enc = d.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&self.pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    for _ in 0..count {
                        pass.dispatch_workgroups(n / 64, m / 64, 1);
                    }
                }
                enc.copy_buffer_to_buffer(&cb, 0, &rb, 0, size);
                self.queue.submit([enc.finish()]);
                let slice = rb.slice(..);
                slice.map_async(wgpu::MapMode::Read, |_| {});
                d.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
                let out: Vec<f32> = bytemuck::cast_slice(&slice.get_mapped_range().expect("mapped")).to_vec();
                rb.unmap();
                out
            };
            run(1);
            let t = Instant::now();
            let out = run(reps);
            (out, t.elapsed().as_secs_f64() * 1e3 / f64::from(reps))
        }
    }

    pub fn run() {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .expect("adapter");
        let info = adapter.get_info();
        let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        println!("{} ({:?}, {})", info.name, info.backend, info.driver_info);
        println!("cooperative matrices offered: {}", adapter.features().contains(coop));
        for c in adapter.cooperative_matrix_properties() {
            println!("  {c:?}");
        }
        let wanted = coop | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        if !adapter.features().contains(wanted) {
            println!("missing features: {:?}", wanted - adapter.features());
            return;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("coop probe"),
            required_features: wanted,
            required_limits: adapter.limits(),
            // SAFETY: an experimental feature of wgpu 30, used by this probe only.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            ..Default::default()
        }))
        .expect("device");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("coop_probe.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("coop_probe.wgsl").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let ctx = Ctx { device, queue, pipeline };

        // Correctness: a 64 x 64 x 48 product against the CPU (f32 sums of f16 products).
        let (m, n, k) = (64u32, 128u32, 48u32);
        let (a, b) = (rand_f16((m * k) as usize, 1), rand_f16((k * n) as usize, 2));
        let (got, _) = ctx.product(m, n, k, &a, &b, 1);
        let mut worst = 0f32;
        for i in 0..m as usize {
            for j in 0..n as usize {
                let want: f32 =
                    (0..k as usize).map(|t| a[i * k as usize + t].to_f32() * b[t * n as usize + j].to_f32()).sum();
                worst = worst.max((got[i * n as usize + j] - want).abs());
            }
        }
        println!("{m}x{n}x{k} against the CPU: max abs err {worst:.2e}");

        let args: Vec<u32> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
        let shapes: Vec<[u32; 3]> = if args.len() >= 3 {
            args.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
        } else {
            vec![[512, 4096, 4096], [512, 11008, 4096], [512, 4096, 11008]]
        };
        let reps: u32 = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        for [m, n, k] in shapes {
            let (a, b) = (rand_f16((m * k) as usize, 3), rand_f16((k * n) as usize, 4));
            let (_, ms) = ctx.product(m, n, k, &a, &b, reps);
            let tflops = 2.0 * f64::from(m) * f64::from(n) * f64::from(k) / (ms * 1e-3) / 1e12;
            println!("{m}x{n}x{k}: {ms:.3} ms per product, {tflops:.1} TFLOPS");
        }
    }
}
