//! Device acquisition: ask for what the adapter has (features we can use, its limits),
//! and describe it so that the engine picks kernel variants by feature detection.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What the device can do, as detected (never assumed from the user agent).
#[derive(Clone, Debug)]
pub struct GpuCaps {
    pub adapter_name: String,
    pub backend: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// The adapter's smallest subgroup (lanes; 0 without subgroups).
    pub subgroup_min_size: u32,
    pub timestamps: bool,
    /// Timestamps between the dispatches of one pass (native profiling).
    pub timestamps_in_passes: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations: u32,
    /// A CPU implementation (lavapipe, SwiftShader): workgroups run as SIMD loops, so
    /// kernels avoid barriers there.
    pub is_cpu: bool,
    /// Tensor cores through wgpu's experimental cooperative matrices: 16x16x16 products of
    /// f16 with f32 accumulation in subgroups of 32 (native; `WSI_DISABLE_COOP=1` turns it off). The
    /// prefill matmul then runs `matmul_coop.wgsl`.
    pub coop_f16: bool,
}

/// A device + queue and what they can do.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Arc<GpuCaps>,
    /// GPU errors no scope caught (validation, out of memory), oldest first. Reported
    /// through `take_errors` instead of the default handler, which would panic.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Gpu {
    /// Acquire the best adapter and a device with every limit the adapter offers.
    /// `WSI_FORCE_F32=1`, `WSI_DISABLE_SUBGROUPS=1` and `WSI_DISABLE_COOP=1` (native) turn
    /// fast paths off.
    pub async fn new() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::GpuUnavailable(format!("no WebGPU adapter: {e}")))?;
        Self::from_adapter(adapter).await
    }

    /// Create the device on a given adapter.
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let offered = adapter.features();
        let mut wanted = wgpu::Features::empty();
        let force_f32 = env_flag("WSI_FORCE_F32");
        let no_subgroups = env_flag("WSI_DISABLE_SUBGROUPS");
        if offered.contains(wgpu::Features::SHADER_F16) && !force_f32 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if offered.contains(wgpu::Features::SUBGROUP) && !no_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        if offered.contains(wgpu::Features::TIMESTAMP_QUERY) {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if offered.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            wanted |= wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        }
        let coop = !env_flag("WSI_DISABLE_COOP") && coop_f16_offered(&adapter, wanted);
        if coop {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wsi"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features: experimental(coop),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::GpuUnavailable(format!("device request refused: {e}")))?;
        let caps = GpuCaps {
            adapter_name: if info.name.is_empty() { format!("{:?}", info.backend) } else { info.name.clone() },
            backend: format!("{:?}", info.backend),
            shader_f16: wanted.contains(wgpu::Features::SHADER_F16),
            subgroups: wanted.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: if wanted.contains(wgpu::Features::SUBGROUP) { info.subgroup_min_size } else { 0 },
            timestamps: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_passes: wanted.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            is_cpu: info.device_type == wgpu::DeviceType::Cpu || is_cpu_name(&info.name),
            coop_f16: coop,
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Gpu { device, queue, caps: Arc::new(caps), errors })
    }

    /// GPU errors since the last call, as one `Error::Gpu`, if any.
    pub fn take_errors(&self) -> Result<()> {
        let mut v = self.errors.lock().map_err(|_| Error::internal("error sink poisoned"))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(Error::Gpu(msg))
    }

    /// A storage buffer with the given contents.
    pub fn storage_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        })
    }

    /// A zeroed storage buffer of `size` bytes (at least 16).
    pub fn storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: super::round_up(size.max(16), 4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer with the given contents.
    pub fn uniform_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// A buffer the CPU maps to read results.
    pub fn staging(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: super::round_up(size.max(16), 4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// Whether `adapter` multiplies 16x16x16 f16 blocks into f32 in subgroups of exactly 32
/// lanes (what `matmul_coop.wgsl` is written for), with shader-f16 and subgroups among the
/// `wanted` features. Native only: browsers do not expose cooperative matrices.
fn coop_f16_offered(adapter: &wgpu::Adapter, wanted: wgpu::Features) -> bool {
    if cfg!(target_arch = "wasm32") {
        return false;
    }
    let info = adapter.get_info();
    let needed = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
    let f16 = wgpu::CooperativeScalarType::F16;
    adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && wanted.contains(needed)
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && adapter.cooperative_matrix_properties().iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
                && c.ab_type == f16
                && c.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// The experimental features to enable: cooperative matrices are one in wgpu 30.
fn experimental(coop: bool) -> wgpu::ExperimentalFeatures {
    if coop {
        // SAFETY: wgpu asks callers to accept that experimental features may have bugs. The
        // one used, cooperative matrices, is only reached by `matmul_coop.wgsl`, which the
        // kernel tests check against the CPU on adapters that offer it.
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    }
}

/// Names of the software adapters we know.
pub fn is_cpu_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader", "warp", "software"].iter().any(|k| n.contains(k))
}

fn env_flag(name: &str) -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name).map(|v| v == "1" || v == "true").unwrap_or(false)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        false
    }
}
