//! What `navigator.gpu` says about the adapter that wgpu's WebGPU backend leaves out
//! (wgpu reports no name and no device type in the browser): vendor, architecture and
//! whether it is a fallback (software) adapter. Software rasterisers (SwiftShader in
//! Chromium, lavapipe in Firefox) get the CPU kernel variants, as natively.

use std::sync::Arc;

use js_sys::{Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::gpu::{Gpu, GpuCaps};

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `{vendor, architecture, device, description, isFallbackAdapter}` of the adapter
/// `navigator.gpu.requestAdapter({powerPreference: "high-performance"})` gives.
async fn adapter_info() -> Option<(String, bool)> {
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let request: js_sys::Function = get(&gpu, "requestAdapter").dyn_into().ok()?;
    let opts = js_sys::Object::new();
    let _ = Reflect::set(&opts, &"powerPreference".into(), &"high-performance".into());
    let promise: Promise = request.call1(&gpu, &opts).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = get(&adapter, "info");
    let text = |k: &str| get(&info, k).as_string().unwrap_or_default();
    let fallback = get(&info, "isFallbackAdapter").is_truthy() || get(&adapter, "isFallbackAdapter").is_truthy();
    let parts: Vec<String> =
        ["vendor", "architecture", "device", "description"].iter().map(|k| text(k)).filter(|s| !s.is_empty()).collect();
    let mut name = parts.join(" ");
    if fallback {
        name = if name.is_empty() { "fallback adapter".into() } else { format!("{name} (fallback adapter)") };
    }
    Some((name, fallback))
}

/// A software rasteriser's name.
fn is_software_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["swiftshader", "llvmpipe", "lavapipe"].iter().any(|k| lower.contains(k))
}

/// Completes `gpu.caps` from `navigator.gpu`: a readable adapter name and `is_cpu` for
/// fallback / software adapters.
pub async fn refine_caps(gpu: &mut Gpu) {
    let Some((name, fallback)) = adapter_info().await else { return };
    let mut caps: GpuCaps = (*gpu.caps).clone();
    if !name.is_empty() {
        caps.adapter_name = name;
    }
    caps.is_cpu = caps.is_cpu || fallback || is_software_name(&caps.adapter_name);
    gpu.caps = Arc::new(caps);
}

/// Whether the adapter `navigator.gpu` gives is a fallback or software one, asked without
/// creating a device (`device: "auto"`); `None` without WebGPU or without an adapter.
pub async fn adapter_is_software() -> Option<bool> {
    let (name, fallback) = adapter_info().await?;
    Some(fallback || is_software_name(&name))
}
