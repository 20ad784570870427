//! The `WebGPUStreamingInference` JS class (DESIGN.md §4): construction with a validated
//! config, `load`, the profile switches, stats and the handler properties. Generation is
//! in `generate.rs`.
//!
//! The config's `device` picks the engine at `load()`: the GPU one (WebGPU), or the CPU one,
//! which needs no WebGPU at all (see `engine::any`).
//!
//! State lives in one `Rc<Inner>` shared with the futures behind the returned promises.
//! Generations take the engine out of its cell while any runs, so no `RefCell` borrow is
//! ever held across an `await`; a `generate` meanwhile joins them (batching, `batch.rs`),
//! other requests get a `busy` error.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use js_sys::{Function, Promise, Reflect};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_time::Instant;

use super::error::{call_handler, error_info, install_panic_hook, to_js_error};
use super::fetch::{Progress, fetch_model};
use super::stats::{self, Live};
use crate::browser::BrowserName;
use crate::config::{Device, StreamingConfig};
use crate::engine::any::resolve_device;
use crate::engine::{AnyEngine, Engine, EngineOptions};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::ModelSource;
use crate::model::open::open_bytes;

/// What the instance is doing; requests other than `stop()` and the getters need `Idle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Idle,
    Loading,
    Generating,
}

impl State {
    pub(crate) fn busy_error(self) -> Option<Error> {
        match self {
            State::Idle => None,
            State::Loading => Some(Error::Busy("the model is loading; wait for load() to finish".into())),
            State::Generating => {
                Some(Error::Busy("a generation is running on this instance; wait for it or call stop() first".into()))
            }
        }
    }
}

/// Page callbacks (`onError`, `onMemoryPressure`, `onTimeout`).
#[derive(Default)]
pub(crate) struct Handlers {
    pub on_error: Option<Function>,
    pub on_memory_pressure: Option<Function>,
    pub on_timeout: Option<Function>,
}

pub(crate) struct Inner {
    pub model_path: String,
    pub user_agent: String,
    pub config: RefCell<StreamingConfig>,
    pub state: Cell<State>,
    pub gpu: RefCell<Option<Gpu>>,
    /// The parsed model file, kept to rebuild the engine under another profile.
    pub source: RefCell<Option<Box<dyn ModelSource>>>,
    /// `None` while unloaded and while a generation holds it.
    pub engine: RefCell<Option<AnyEngine>>,
    /// The device `load()` resolved the config's `device` to (never `Auto`); `None` before.
    pub device: Cell<Option<Device>>,
    pub cancel: RefCell<Option<Arc<AtomicBool>>>,
    /// Stats of the loaded engine with zero counts (memory, profile, adapter).
    pub idle_stats: RefCell<Option<Value>>,
    pub live: RefCell<Option<Live>>,
    pub last_stats: RefCell<Option<Value>>,
    pub handlers: RefCell<Handlers>,
    /// Key of this instance in [`INSTANCES`] (for the device-lost callback).
    pub id: u64,
    /// Set when the GPU device was lost; the engine built on it is dropped.
    pub lost: Cell<bool>,
    /// `generate` calls waiting for the driver (see `batch.rs`).
    pub waiting: super::batch::Waiting,
}

thread_local! {
    /// Live instances, so that wgpu's `Send` device-lost callback (which runs on this,
    /// the only, thread) can find the instance by id.
    pub(crate) static INSTANCES: RefCell<HashMap<u64, Weak<Inner>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

impl Inner {
    /// Reports a failed request to `onError` and turns it into the JS Error to throw.
    pub fn fail(&self, e: &Error) -> JsValue {
        let handler = self.handlers.borrow().on_error.clone();
        call_handler(handler.as_ref(), "onError", &error_info(e));
        to_js_error(e)
    }

    pub fn emit(&self, which: fn(&Handlers) -> Option<Function>, name: &str, payload: &Value) {
        let handler = which(&self.handlers.borrow());
        if let Ok(v) = stats::to_js(payload) {
            call_handler(handler.as_ref(), name, &v);
        }
    }

    fn detected_browser(&self) -> &'static str {
        BrowserName::from_user_agent(&self.user_agent).as_str()
    }

    /// Builds the engine for the current config from the kept source (drops the old one
    /// first, so two copies of the weights never coexist), on the device `load()` resolved.
    pub(crate) fn build_engine(&self, progress: &Progress<'_>) -> Result<()> {
        let source = self.source.borrow();
        let src = source.as_ref().ok_or_else(|| Error::invalid("no model yet: call load() first"))?;
        let gpu = match self.device.get() {
            Some(Device::Cpu) => None,
            _ => Some(self.gpu.borrow().clone().ok_or_else(|| Error::invalid("no GPU yet: call load() first"))?),
        };
        drop(self.engine.borrow_mut().take());
        *self.idle_stats.borrow_mut() = None;
        *self.last_stats.borrow_mut() = None;
        let config = self.config.borrow().clone();
        let engine = match gpu {
            None => {
                let mut engine = AnyEngine::load_cpu(src.as_ref(), &config, &mut |done, total| {
                    progress.report("upload", done as f64, total as f64, None)
                })?;
                if let AnyEngine::Cpu(e) = &mut engine {
                    e.browser = self.detected_browser();
                }
                engine
            }
            Some(gpu) => {
                let options = EngineOptions::from_config_for(&config, &gpu.caps, src.config(), Some(&self.user_agent))?;
                let engine = Engine::load_with_progress(gpu, src.as_ref(), options, &mut |done, total| {
                    progress.report("upload", done as f64, total as f64, None)
                })?;
                // Memory limits are the GPU profile's: the CPU engine's memory is wasm's.
                let limit = engine.options.profile.as_ref().map(|p| p.memory_limit_mb(&config));
                if let Some(payload) = limit.and_then(|l| stats::load_pressure(&engine, l)) {
                    self.emit(|h| h.on_memory_pressure.clone(), "onMemoryPressure", &payload);
                }
                AnyEngine::from(engine)
            }
        };
        *self.cancel.borrow_mut() = Some(engine.cancel_handle());
        *self.idle_stats.borrow_mut() = Some(engine.stats_json(&Default::default()));
        *self.engine.borrow_mut() = Some(engine);
        Ok(())
    }

    /// A WebGPU device for this instance, requested once and watched for loss.
    async fn ensure_gpu(&self) -> Result<()> {
        if self.gpu.borrow().is_some() {
            return Ok(());
        }
        require_webgpu()?;
        let mut gpu = Gpu::new().await?;
        super::adapter::refine_caps(&mut gpu).await;
        super::recovery::watch_device(&gpu, self.id);
        self.lost.set(false);
        *self.gpu.borrow_mut() = Some(gpu);
        Ok(())
    }

    /// The config's `device` made concrete, with a GPU device acquired when it is the GPU.
    /// "cpu" touches no WebGPU API; "auto" asks `navigator.gpu` for an adapter (no device)
    /// to tell a software rasteriser, and takes a missing WebGPU as the CPU.
    async fn resolve_device(&self) -> Result<Device> {
        let (device, quantization) = {
            let cfg = self.config.borrow();
            (cfg.device, cfg.quantization)
        };
        let held = self.gpu.borrow().as_ref().map(|gpu| gpu.caps.is_cpu);
        let adapter_is_cpu = match (device, held) {
            (Device::Auto, None) => super::adapter::adapter_is_software().await,
            (_, known) => known,
        };
        let resolved = resolve_device(device, quantization, adapter_is_cpu);
        if resolved == Device::Gpu {
            self.ensure_gpu().await?;
        }
        Ok(resolved)
    }

    /// Applies `change` to the config and rebuilds a loaded engine with it; on failure
    /// the previous config comes back (and its engine, if it can be rebuilt).
    fn reconfigure(&self, change: impl FnOnce(&mut StreamingConfig)) -> Result<()> {
        if let Some(e) = self.state.get().busy_error() {
            return Err(e);
        }
        let before = self.config.borrow().clone();
        let mut next = before.clone();
        change(&mut next);
        next.validate()?;
        *self.config.borrow_mut() = next;
        if self.source.borrow().is_none() {
            return Ok(()); // applies at load()
        }
        let quiet = Progress { callback: None };
        if let Err(e) = self.build_engine(&quiet) {
            *self.config.borrow_mut() = before;
            let _ = self.build_engine(&quiet);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) async fn load(self: Rc<Self>, on_progress: Option<Function>) -> Result<Value> {
        let t0 = Instant::now();
        let progress = Progress { callback: on_progress.as_ref() };
        let device = self.resolve_device().await?;
        self.device.set(Some(device));
        let (bytes, origin) = fetch_model(&self.model_path, &progress).await?;
        let size = bytes.len();
        let t_fetch = Instant::now();
        let src = open_bytes(bytes)?;
        drop(self.engine.borrow_mut().take());
        *self.source.borrow_mut() = Some(src);
        // Let the page paint the finished download before the (synchronous) upload.
        gloo_timers::future::TimeoutFuture::new(0).await;
        let built = self.build_engine_checked(&progress).await;
        if built.is_err() {
            *self.source.borrow_mut() = None;
        }
        built?;
        let gpu = self.gpu.borrow().clone();
        if let Some(gpu) = gpu {
            gpu.take_errors()?;
        }
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let t_end = Instant::now();
        Ok(json!({
            "source": origin.as_str(),
            "bytes": size,
            "fetch_ms": ms(t0, t_fetch),
            "upload_ms": ms(t_fetch, t_end),
            "total_ms": ms(t0, t_end),
        }))
    }
}

/// `navigator.gpu` must exist before wgpu is asked for an adapter.
fn require_webgpu() -> Result<()> {
    let navigator = Reflect::get(&js_sys::global(), &JsValue::from_str("navigator")).unwrap_or(JsValue::UNDEFINED);
    let gpu = Reflect::get(&navigator, &JsValue::from_str("gpu")).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Err(Error::GpuUnavailable(
            "WebGPU is not available in this browser (navigator.gpu is undefined): use a browser with WebGPU \
             enabled, in a secure context (https or localhost)"
                .into(),
        ));
    }
    Ok(())
}

/// `navigator.userAgent` (window or worker); empty if there is none.
fn user_agent() -> String {
    let navigator = Reflect::get(&js_sys::global(), &JsValue::from_str("navigator")).unwrap_or(JsValue::UNDEFINED);
    Reflect::get(&navigator, &JsValue::from_str("userAgent")).ok().and_then(|v| v.as_string()).unwrap_or_default()
}

/// Streams tokens from a language model running on this device's GPU through WebGPU, or on
/// its CPU in WebAssembly (the config's `device`).
#[wasm_bindgen]
pub struct WebGPUStreamingInference {
    pub(crate) inner: Rc<Inner>,
}

#[wasm_bindgen]
impl WebGPUStreamingInference {
    /// `modelPath`: URL of a GGUF file. `config`: options of DESIGN.md §3, snake_case or
    /// camelCase keys. Throws an Error with `code === "invalid_request"` naming a bad key.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(js_name = modelPath)] model_path: String,
        #[wasm_bindgen(unchecked_optional_param_type = "StreamingConfig")] config: JsValue,
    ) -> std::result::Result<WebGPUStreamingInference, JsValue> {
        install_panic_hook();
        let parsed = stats::from_js(&config, "config").and_then(StreamingConfig::from_json_value);
        let config = parsed.map_err(|e| to_js_error(&e))?;
        if model_path.trim().is_empty() {
            return Err(to_js_error(&Error::invalid("modelPath is empty: give the URL of a GGUF file")));
        }
        let id = NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        let inner = Rc::new(Inner {
            model_path,
            user_agent: user_agent(),
            config: RefCell::new(config),
            state: Cell::new(State::Idle),
            gpu: RefCell::new(None),
            source: RefCell::new(None),
            engine: RefCell::new(None),
            device: Cell::new(None),
            cancel: RefCell::new(None),
            idle_stats: RefCell::new(None),
            live: RefCell::new(None),
            last_stats: RefCell::new(None),
            handlers: RefCell::new(Handlers::default()),
            id,
            lost: Cell::new(false),
            waiting: Default::default(),
        });
        INSTANCES.with(|m| {
            let mut m = m.borrow_mut();
            m.retain(|_, w| w.strong_count() > 0);
            m.insert(id, Rc::downgrade(&inner));
        });
        Ok(WebGPUStreamingInference { inner })
    }

    /// Downloads (or reads from the Cache API) and uploads the model. `onProgress` gets
    /// `{phase: "download" | "upload", loaded, total, progress, source?}`. Resolves to
    /// `{source, bytes, fetch_ms, upload_ms, total_ms}`.
    #[wasm_bindgen(unchecked_return_type = "Promise<LoadInfo>")]
    pub fn load(
        &self,
        #[wasm_bindgen(js_name = onProgress, unchecked_optional_param_type = "(progress: LoadProgress) => void")]
        on_progress: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            if let Some(e) = inner.state.get().busy_error() {
                return Err(inner.fail(&e));
            }
            inner.state.set(State::Loading);
            let result = inner.clone().load(on_progress).await;
            inner.state.set(State::Idle);
            match result.and_then(|info| stats::to_js(&info)) {
                Ok(v) => Ok(v),
                Err(e) => Err(inner.fail(&e)),
            }
        })
    }

    /// Asks the running generation to stop; it resolves with the text so far
    /// (`finish_reason: "cancelled"`). True if a generation was running.
    pub fn stop(&self) -> bool {
        let running = self.inner.state.get() == State::Generating;
        if let Some(flag) = self.inner.cancel.borrow().as_ref() {
            flag.store(running, Ordering::SeqCst);
        }
        running
    }

    /// The stats of the running or last generation (DESIGN.md §4, snake_case keys).
    #[wasm_bindgen(js_name = getPerformanceStats, unchecked_return_type = "PerformanceStats")]
    pub fn get_performance_stats(&self) -> std::result::Result<JsValue, JsValue> {
        let inner = &self.inner;
        let value = if let Some(live) = inner.live.borrow().as_ref() {
            let base = inner.idle_stats.borrow().clone().unwrap_or_else(|| json!({}));
            live.stats(base)
        } else if let Some(last) = inner.last_stats.borrow().as_ref() {
            last.clone()
        } else if let Some(idle) = inner.idle_stats.borrow().as_ref() {
            idle.clone()
        } else {
            stats::idle_stats(None, &inner.config.borrow(), inner.device.get(), inner.detected_browser())
        };
        stats::to_js(&value).map_err(|e| to_js_error(&e))
    }

    /// Favour first-token and per-token latency (smaller prefill chunks and submissions);
    /// rebuilds a loaded engine. True when applied.
    #[wasm_bindgen(js_name = optimizeForLatency)]
    pub fn optimize_for_latency(&self) -> std::result::Result<bool, JsValue> {
        let inner = &self.inner;
        inner.reconfigure(|c| c.optimize_for_latency = true).map_err(|e| inner.fail(&e))?;
        Ok(true)
    }

    /// Switches to the profile of `browser` ("chrome", "edge", "firefox", "safari"): its
    /// workgroup sizes, memory strategy and submission sizes; rebuilds the pipelines of a
    /// loaded engine. Feature detection still wins. True when applied.
    #[wasm_bindgen(js_name = optimizeForBrowser)]
    pub fn optimize_for_browser(
        &self,
        #[wasm_bindgen(unchecked_param_type = "BrowserName")] browser: JsValue,
    ) -> std::result::Result<bool, JsValue> {
        let inner = &self.inner;
        let name = match browser.as_string() {
            Some(s) => BrowserName::parse_forced("optimizeForBrowser", &s),
            None => Err(Error::invalid("optimizeForBrowser expects a string: chrome, edge, firefox or safari")),
        };
        let name = name.map_err(|e| inner.fail(&e))?;
        inner.reconfigure(|c| c.optimize_for_browser = Some(name)).map_err(|e| inner.fail(&e))?;
        Ok(true)
    }

    /// The config in force (snake_case keys, every option with its value).
    #[wasm_bindgen(getter, unchecked_return_type = "StreamingConfigOptions")]
    pub fn config(&self) -> std::result::Result<JsValue, JsValue> {
        stats::to_js(&self.inner.config.borrow().to_json_value()).map_err(|e| to_js_error(&e))
    }

    #[wasm_bindgen(getter = modelPath)]
    pub fn model_path(&self) -> String {
        self.inner.model_path.clone()
    }

    /// True once `load()` has finished and the engine holds the model (GPU or CPU).
    #[wasm_bindgen(getter = isLoaded)]
    pub fn is_loaded(&self) -> bool {
        self.inner.source.borrow().is_some()
            && (self.inner.engine.borrow().is_some() || self.inner.state.get() == State::Generating)
    }

    /// True while a generation runs.
    #[wasm_bindgen(getter = isGenerating)]
    pub fn is_generating(&self) -> bool {
        self.inner.state.get() == State::Generating
    }

    #[wasm_bindgen(getter = onError, unchecked_return_type = "((info: ErrorInfo) => void) | null")]
    pub fn on_error(&self) -> Option<Function> {
        self.inner.handlers.borrow().on_error.clone()
    }

    #[wasm_bindgen(setter = onError)]
    pub fn set_on_error(
        &self,
        #[wasm_bindgen(unchecked_param_type = "((info: ErrorInfo) => void) | null")] f: JsValue,
    ) -> std::result::Result<(), JsValue> {
        self.inner.handlers.borrow_mut().on_error = handler(f, "onError")?;
        Ok(())
    }

    #[wasm_bindgen(getter = onMemoryPressure, unchecked_return_type = "((info: MemoryPressureInfo) => void) | null")]
    pub fn on_memory_pressure(&self) -> Option<Function> {
        self.inner.handlers.borrow().on_memory_pressure.clone()
    }

    #[wasm_bindgen(setter = onMemoryPressure)]
    pub fn set_on_memory_pressure(
        &self,
        #[wasm_bindgen(unchecked_param_type = "((info: MemoryPressureInfo) => void) | null")] f: JsValue,
    ) -> std::result::Result<(), JsValue> {
        self.inner.handlers.borrow_mut().on_memory_pressure = handler(f, "onMemoryPressure")?;
        Ok(())
    }

    #[wasm_bindgen(getter = onTimeout, unchecked_return_type = "((info: TimeoutInfo) => void) | null")]
    pub fn on_timeout(&self) -> Option<Function> {
        self.inner.handlers.borrow().on_timeout.clone()
    }

    #[wasm_bindgen(setter = onTimeout)]
    pub fn set_on_timeout(
        &self,
        #[wasm_bindgen(unchecked_param_type = "((info: TimeoutInfo) => void) | null")] f: JsValue,
    ) -> std::result::Result<(), JsValue> {
        self.inner.handlers.borrow_mut().on_timeout = handler(f, "onTimeout")?;
        Ok(())
    }

    /// Removes `url` (or every model, without one) from the Cache API store.
    #[wasm_bindgen(js_name = clearCache, unchecked_return_type = "Promise<boolean>")]
    pub fn clear_cache(url: Option<String>) -> Promise {
        future_to_promise(async move {
            super::fetch::clear_cache(url.as_deref()).await.map(JsValue::from_bool).map_err(|e| to_js_error(&e))
        })
    }
}

/// A handler property's new value: a function, or null/undefined to remove it.
fn handler(v: JsValue, name: &str) -> std::result::Result<Option<Function>, JsValue> {
    if v.is_null() || v.is_undefined() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| to_js_error(&Error::invalid(format!("{name} must be a function or null"))))
}
