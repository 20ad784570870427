//! GPU failures in the browser: loads run inside error scopes, and a lost device gets one
//! automatic recovery (a new adapter and device, the engine rebuilt from the kept model
//! bytes with the same config), reported through `onError` either way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use super::class::{INSTANCES, Inner, WebGPUStreamingInference};
use super::error::{call_handler, set};
use super::fetch::Progress;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

thread_local! {
    /// Per instance id, the watch number of the device it holds now: a loss reported for
    /// an older device (one we replaced or dropped ourselves) is ignored.
    static WATCHES: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
}

fn next_watch(id: u64) -> u64 {
    WATCHES.with(|w| {
        let mut w = w.borrow_mut();
        let n = w.get(&id).map_or(1, |n| n + 1);
        w.insert(id, n);
        n
    })
}

/// Watches `gpu`, the device instance `id` now holds, for loss (a driver reset, the
/// browser reclaiming it, `GPUDevice.destroy()`): the first loss starts one recovery.
pub(crate) fn watch_device(gpu: &Gpu, id: u64) {
    let watch = next_watch(id);
    gpu.device.set_device_lost_callback(move |_reason, message| {
        if WATCHES.with(|w| w.borrow().get(&id) != Some(&watch)) {
            return;
        }
        next_watch(id); // later reports of this device are ignored
        let Some(inner) = INSTANCES.with(|m| m.borrow().get(&id).and_then(std::rc::Weak::upgrade)) else {
            return;
        };
        inner.lost.set(true);
        *inner.gpu.borrow_mut() = None;
        drop(inner.engine.borrow_mut().take());
        *inner.idle_stats.borrow_mut() = None;
        wasm_bindgen_futures::spawn_local(recover(inner, message));
    });
}

/// One recovery attempt; `onError` says whether it worked (`recoverable`).
async fn recover(inner: Rc<Inner>, message: String) {
    let result = rebuild(&inner).await;
    let (e, recoverable) = match result {
        Ok(()) => {
            inner.lost.set(false);
            let e = Error::Gpu(format!(
                "the GPU device was lost ({message}) and recovered: a new device holds the model again; a generation \
                 that was running ended with an error"
            ));
            (e, true)
        }
        Err(cause) => {
            *inner.gpu.borrow_mut() = None;
            drop(inner.engine.borrow_mut().take());
            let e = Error::Gpu(format!(
                "the GPU device was lost ({message}) and could not be recovered ({}: {cause}); call load() to start \
                 again",
                cause.code()
            ));
            (e, false)
        }
    };
    report(&inner, e.code(), &e.to_string(), recoverable);
}

/// A new adapter and device, and the engine rebuilt on it from the kept model.
async fn rebuild(inner: &Rc<Inner>) -> Result<()> {
    if inner.source.borrow().is_none() {
        return Err(Error::invalid("no model was loaded"));
    }
    let mut gpu = Gpu::new().await?;
    super::adapter::refine_caps(&mut gpu).await;
    watch_device(&gpu, inner.id);
    *inner.gpu.borrow_mut() = Some(gpu);
    inner.build_engine_checked(&Progress { callback: None }).await
}

impl Inner {
    /// `build_engine` inside out-of-memory and validation error scopes: an allocation
    /// the GPU refuses is `memory_pressure` or `model_loading_error`, and no engine stays.
    /// The CPU engine allocates no GPU memory: it is built without scopes.
    pub(crate) async fn build_engine_checked(&self, progress: &Progress<'_>) -> Result<()> {
        if self.device.get() == Some(crate::config::Device::Cpu) {
            return self.build_engine(progress);
        }
        let gpu = self.gpu.borrow().clone().ok_or_else(|| Error::invalid("no GPU yet: call load() first"))?;
        let scopes = gpu.scopes();
        let built = self.build_engine(progress);
        if let Err(e) = scopes.check_load("uploading the model").await {
            drop(self.engine.borrow_mut().take());
            *self.idle_stats.borrow_mut() = None;
            return Err(e);
        }
        built
    }
}

/// `onError` with `{code, message, recoverable}` given as fields (an `error` frame of the
/// WebSocket protocol).
pub(crate) fn report(inner: &Inner, code: &str, message: &str, recoverable: bool) {
    let info = js_sys::Object::new();
    set(&info, "code", &JsValue::from_str(code));
    set(&info, "message", &JsValue::from_str(message));
    set(&info, "recoverable", &JsValue::from_bool(recoverable));
    let handler = inner.handlers.borrow().on_error.clone();
    call_handler(handler.as_ref(), "onError", &info);
}

#[wasm_bindgen]
impl WebGPUStreamingInference {
    /// Destroys the GPU device (`GPUDevice.destroy()`), as a driver reset would: the
    /// instance then recovers once by itself, and `onError` reports it. For testing the
    /// recovery path. False if no device is held.
    #[wasm_bindgen(js_name = destroyDevice)]
    pub fn destroy_device(&self) -> bool {
        let gpu = self.inner.gpu.borrow().clone();
        gpu.map(|g| g.device.destroy()).is_some()
    }
}
