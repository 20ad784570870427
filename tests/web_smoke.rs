//! Browser smoke tests: WebGPU through wgpu's `webgpu` backend, run by
//! `wasm-pack test --headless --chrome --firefox` (`webdriver.json` holds the flags that
//! give headless Chromium WebGPU on SwiftShader and headless Firefox WebGPU on lavapipe).
#![cfg(target_arch = "wasm32")]

use futures_channel::oneshot;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Element count: deliberately not a multiple of the workgroup size.
const N: usize = 1000;
const WORKGROUP: u32 = 64;

const ADD_WGSL: &str = r#"
override WG: u32 = 1u;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < arrayLength(&out)) {
        out[i] = a[i] + b[i];
    }
}
"#;

async fn adapter() -> wgpu::Adapter {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .expect("navigator.gpu gave no adapter: is WebGPU enabled (see webdriver.json)?")
}

async fn device(adapter: &wgpu::Adapter) -> (wgpu::Device, wgpu::Queue) {
    adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("web_smoke"),
            required_limits: wgpu::Limits::downlevel_defaults(),
            ..Default::default()
        })
        .await
        .expect("request_device failed")
}

fn storage_with(device: &wgpu::Device, queue: &wgpu::Queue, label: &str, data: &[f32]) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: std::mem::size_of_val(data) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
    buffer
}

/// Maps `buffer` for reading and awaits the browser's `mapAsync` through a oneshot channel.
async fn read_back(buffer: &wgpu::Buffer) -> Vec<f32> {
    let (tx, rx) = oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        let _ = tx.send(result);
    });
    rx.await.expect("map_async callback dropped").expect("map_async failed");
    let values = {
        let view = buffer.get_mapped_range(..).expect("get_mapped_range");
        bytemuck::cast_slice::<u8, f32>(&view).to_vec()
    };
    buffer.unmap();
    values
}

#[wasm_bindgen_test]
async fn compute_shader_adds_two_arrays() {
    let adapter = adapter().await;
    let (device, queue) = device(&adapter).await;

    let a: Vec<f32> = (0..N).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..N).map(|i| 1000.0 - i as f32).collect();
    let a_buf = storage_with(&device, &queue, "a", &a);
    let b_buf = storage_with(&device, &queue, "b", &b);
    let size = (N * std::mem::size_of::<f32>()) as u64;
    let out_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("out"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("add"),
        source: wgpu::ShaderSource::Wgsl(ADD_WGSL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("add"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[("WG", f64::from(WORKGROUP))],
            ..Default::default()
        },
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("add"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: a_buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: b_buf.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: out_buf.as_entire_binding() },
        ],
    });

    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("add") });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups((N as u32).div_ceil(WORKGROUP), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&out_buf, 0, &readback, 0, size);
    queue.submit([encoder.finish()]);

    let got = read_back(&readback).await;
    assert_eq!(got.len(), N);
    for (i, value) in got.iter().enumerate() {
        let want = a[i] + b[i];
        assert_eq!(*value, want, "out[{i}] = {value}, expected {want}");
    }
    console_log!("compute_shader_adds_two_arrays: {N} sums correct on {:?}", adapter.get_info().name);
}

/// What the browser itself reports, read straight from `navigator.gpu` (wgpu's WebGPU backend
/// maps only some browser features to `wgpu::Features`, and leaves most adapter info empty).
async fn browser_adapter_report() -> String {
    use js_sys::Reflect;
    use wasm_bindgen::{JsCast, JsValue};

    let get = |target: &JsValue, key: &str| Reflect::get(target, &JsValue::from_str(key));
    let navigator = get(&js_sys::global(), "navigator").expect("navigator");
    let gpu = get(&navigator, "gpu").expect("navigator.gpu");
    assert!(!gpu.is_undefined(), "navigator.gpu is undefined: WebGPU is off");
    let request: js_sys::Function =
        get(&gpu, "requestAdapter").expect("requestAdapter").dyn_into().expect("requestAdapter is a function");
    let promise: js_sys::Promise =
        request.call0(&gpu).expect("requestAdapter()").dyn_into().expect("requestAdapter() returns a promise");
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.expect("requestAdapter() rejected");
    assert!(!adapter.is_null(), "navigator.gpu.requestAdapter() gave null");
    let mut features: Vec<String> =
        js_sys::Array::from(&get(&adapter, "features").unwrap()).iter().filter_map(|v| v.as_string()).collect();
    features.sort();
    let info = get(&adapter, "info").unwrap_or(JsValue::UNDEFINED);
    let field = |key: &str| {
        get(&info, key)
            .ok()
            .filter(|v| !v.is_undefined())
            .map(|v| {
                v.as_string()
                    .or_else(|| v.as_f64().map(|n| n.to_string()))
                    .or_else(|| v.as_bool().map(|b| b.to_string()))
                    .unwrap_or_else(|| format!("{v:?}"))
            })
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "navigator.gpu adapter: vendor={:?} architecture={:?} device={:?} description={:?} \
         subgroupMinSize={} subgroupMaxSize={} isFallbackAdapter={} features=[{}]",
        field("vendor"),
        field("architecture"),
        field("device"),
        field("description"),
        field("subgroupMinSize"),
        field("subgroupMaxSize"),
        field("isFallbackAdapter"),
        features.join(", ")
    )
}

#[wasm_bindgen_test]
async fn reports_adapter_features_and_limits() {
    console_log!("{}", browser_adapter_report().await);
    let adapter = adapter().await;
    let info = adapter.get_info();
    let features = adapter.features();
    let limits = adapter.limits();
    let user_agent = web_sys::window().and_then(|w| w.navigator().user_agent().ok()).unwrap_or_default();

    console_log!("user agent: {user_agent}");
    console_log!(
        "adapter: name={:?} vendor={:#x} device={:#x} type={:?} driver={:?} driver_info={:?} backend={:?}",
        info.name,
        info.vendor,
        info.device,
        info.device_type,
        info.driver,
        info.driver_info,
        info.backend
    );
    console_log!(
        "wgpu features: shader-f16={} subgroups={}",
        features.contains(wgpu::Features::SHADER_F16),
        features.contains(wgpu::Features::SUBGROUP)
    );
    console_log!(
        "wgpu limits: maxStorageBufferBindingSize={} maxBufferSize={} maxComputeWorkgroupSizeX={} \
         maxComputeInvocationsPerWorkgroup={} maxComputeWorkgroupStorageSize={} \
         maxStorageBuffersPerShaderStage={} maxComputeWorkgroupsPerDimension={}",
        limits.max_storage_buffer_binding_size,
        limits.max_buffer_size,
        limits.max_compute_workgroup_size_x,
        limits.max_compute_invocations_per_workgroup,
        limits.max_compute_workgroup_storage_size,
        limits.max_storage_buffers_per_shader_stage,
        limits.max_compute_workgroups_per_dimension
    );

    // The WebGPU spec's minimums, which both software adapters exceed.
    assert!(limits.max_storage_buffer_binding_size >= 128 << 20);
    assert!(limits.max_compute_invocations_per_workgroup >= 256);
    assert!(limits.max_storage_buffers_per_shader_stage >= 8);
}

/// The decode attention kernels pass the browser's WGSL compiler: the workgroup-memory kernel
/// (its reduction arrays sized by the `WG` override), packing and merging or not, and the
/// subgroup kernel (shaders/attention_sg.wgsl) wherever wgpu reports subgroups. wgpu 30's
/// WebGPU backend does not map the browser's `subgroups` feature (Chromium's SwiftShader lists
/// it, with 4-lane subgroups; wgpu's features do not), so today's browsers run the
/// workgroup-memory kernel, and the subgroup half runs once wgpu maps the feature.
#[wasm_bindgen_test]
async fn decode_attention_kernels_compile_in_the_browser() {
    use wsi::gpu::{Gpu, Kernel, KernelKey, Kernels, KvFormat, KvFormats};
    let gpu = Gpu::from_adapter(adapter().await).await.expect("device");
    let kernels = Kernels::default();
    let mut lanes = vec![0];
    if gpu.caps.subgroups {
        lanes.push(gpu.caps.subgroup_min_size.clamp(1, 32));
    }
    let kv = KvFormats { main: KvFormat::Int8, ring: KvFormat::F16 };
    for head_lanes in lanes {
        for (split, pack, merge) in [(1, true, false), (4, false, true), (4, true, true)] {
            let kernel = Kernel::AttentionDecode { split, adjacent: true, kv, pack, merge, head_lanes };
            let key = KernelKey { kernel, wg: 64.max(head_lanes), rows: 1, tpr: 1 };
            let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
            kernels.get(&gpu.device, key).expect("pipeline");
            let error = scope.pop().await;
            assert!(error.is_none(), "{kernel:?}: {error:?}");
        }
        console_log!("decode attention with head_lanes {head_lanes} compiled ({:?})", gpu.caps.adapter_name);
    }
}
