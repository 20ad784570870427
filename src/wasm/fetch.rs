//! Downloading a model file: `fetch` with the body read chunk by chunk (progress as bytes
//! done / total), kept in the Cache API so that a reload reads it from disk instead of
//! the network. A failed or short download is an error; nothing partial is ever cached
//! or handed to the engine.

use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, ReadableStreamDefaultReader, Response, ResponseInit};

use super::error::{call_handler, describe, set};
use crate::error::{Error, Result};

/// Cache API bucket holding downloaded model files, keyed by absolute URL.
pub const CACHE_NAME: &str = "wsi-models-v1";
/// Header recording the byte count of a cached file (checked when it is read back).
const SIZE_HEADER: &str = "x-wsi-size";

/// Where the bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Network,
    Cache,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Network => "network",
            Origin::Cache => "cache",
        }
    }
}

/// Reports `{phase, loaded, total, source}` to the page's `onProgress` (a throwing
/// callback is logged, not fatal).
pub struct Progress<'a> {
    pub callback: Option<&'a Function>,
}

impl Progress<'_> {
    pub fn report(&self, phase: &str, loaded: f64, total: f64, source: Option<Origin>) {
        if self.callback.is_none() {
            return;
        }
        let info = Object::new();
        set(&info, "phase", &JsValue::from_str(phase));
        set(&info, "loaded", &JsValue::from_f64(loaded));
        set(&info, "total", &JsValue::from_f64(total));
        set(&info, "progress", &JsValue::from_f64(if total > 0.0 { (loaded / total).min(1.0) } else { 0.0 }));
        if let Some(s) = source {
            set(&info, "source", &JsValue::from_str(s.as_str()));
        }
        call_handler(self.callback, "onProgress", &info);
    }
}

fn global_get(key: &str) -> JsValue {
    Reflect::get(&js_sys::global(), &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

async fn await_js(p: JsValue, context: &str) -> Result<JsValue> {
    let p: Promise = p.dyn_into().map_err(|_| Error::internal(format!("{context}: not a promise")))?;
    JsFuture::from(p).await.map_err(|e| Error::model(format!("{context}: {}", describe(&e))))
}

/// The absolute form of `url` against the page (cache keys must not depend on how the
/// page spelled a relative path).
pub fn absolute_url(url: &str) -> String {
    let base = Reflect::get(&global_get("location"), &JsValue::from_str("href")).ok().and_then(|v| v.as_string());
    match base.and_then(|b| web_sys::Url::new_with_base(url, &b).ok()) {
        Some(u) => u.href(),
        None => url.to_string(),
    }
}

/// The model cache, if this context has the Cache API (secure contexts only).
pub async fn open_cache() -> Option<Cache> {
    let caches: CacheStorage = global_get("caches").dyn_into().ok()?;
    let p = caches.open(CACHE_NAME);
    JsFuture::from(p).await.ok()?.dyn_into().ok()
}

/// Downloads `url` (or reads it from the cache), reporting progress, and caches a
/// complete download. Returns the bytes and where they came from.
pub async fn fetch_model(url: &str, progress: &Progress<'_>) -> Result<(Vec<u8>, Origin)> {
    let url = absolute_url(url);
    let cache = open_cache().await;
    if let Some(cache) = &cache {
        match read_cached(cache, &url, progress).await {
            Ok(Some(bytes)) => return Ok((bytes, Origin::Cache)),
            Ok(None) => {}
            Err(e) => {
                // A damaged entry: forget it and download again.
                web_sys::console::warn_1(&JsValue::from_str(&format!("wsi: cached {url} unusable ({e}); downloading")));
                let _ = JsFuture::from(cache.delete_with_str(&url)).await;
            }
        }
    }
    let bytes = download(&url, progress).await?;
    if let Some(cache) = &cache
        && let Err(e) = store(cache, &url, &bytes).await
    {
        // Quota or a private window: the model still loads, only the next visit pays again.
        web_sys::console::warn_1(&JsValue::from_str(&format!("wsi: could not cache {url}: {e}")));
    }
    Ok((bytes, Origin::Network))
}

async fn read_cached(cache: &Cache, url: &str, progress: &Progress<'_>) -> Result<Option<Vec<u8>>> {
    let hit = JsFuture::from(cache.match_with_str(url))
        .await
        .map_err(|e| Error::model(format!("cache lookup failed: {}", describe(&e))))?;
    let Ok(response) = hit.dyn_into::<Response>() else {
        return Ok(None);
    };
    let want = response
        .headers()
        .get(SIZE_HEADER)
        .ok()
        .flatten()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| Error::model("cached entry has no size"))?;
    let bytes = read_body(&response, want, progress, Origin::Cache).await?;
    Ok(Some(bytes))
}

async fn download(url: &str, progress: &Progress<'_>) -> Result<Vec<u8>> {
    let fetch: Function = global_get("fetch").dyn_into().map_err(|_| Error::model("fetch() is not available"))?;
    let p = fetch
        .call1(&JsValue::NULL, &JsValue::from_str(url))
        .map_err(|e| Error::model(format!("fetch {url}: {}", describe(&e))))?;
    let response: Response = await_js(p, &format!("fetch {url}"))
        .await?
        .dyn_into()
        .map_err(|_| Error::model(format!("fetch {url}: no Response")))?;
    if !response.ok() {
        return Err(Error::model(format!("fetch {url}: HTTP {} {}", response.status(), response.status_text())));
    }
    let headers = response.headers();
    let header = |k: &str| headers.get(k).ok().flatten();
    // With a content encoding, Content-Length counts the compressed bytes.
    let total = match header("content-encoding") {
        Some(enc) if enc != "identity" => 0.0,
        _ => header("content-length").and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0),
    };
    read_body(&response, total, progress, Origin::Network).await
}

/// Reads a body chunk by chunk. With `total > 0`, any other byte count is an error.
async fn read_body(response: &Response, total: f64, progress: &Progress<'_>, origin: Origin) -> Result<Vec<u8>> {
    let body = response.body().ok_or_else(|| Error::model("the response has no body"))?;
    let reader: ReadableStreamDefaultReader =
        body.get_reader().dyn_into().map_err(|_| Error::internal("body reader has an unexpected type"))?;
    let mut bytes: Vec<u8> = Vec::new();
    if total > 0.0 {
        bytes.try_reserve_exact(total as usize).map_err(|_| {
            Error::MemoryPressure(format!("cannot allocate {} MiB for the model file", total as u64 >> 20))
        })?;
    }
    progress.report("download", 0.0, total, Some(origin));
    loop {
        let step = JsFuture::from(reader.read())
            .await
            .map_err(|e| Error::model(format!("download interrupted after {} bytes: {}", bytes.len(), describe(&e))))?;
        let done = Reflect::get(&step, &JsValue::from_str("done")).map(|v| v.is_truthy()).unwrap_or(true);
        if done {
            break;
        }
        let chunk: Uint8Array = Reflect::get(&step, &JsValue::from_str("value"))
            .ok()
            .and_then(|v| v.dyn_into().ok())
            .ok_or_else(|| Error::model("download chunk is not bytes"))?;
        let at = bytes.len();
        bytes.resize(at + chunk.length() as usize, 0);
        chunk.copy_to(&mut bytes[at..]);
        progress.report("download", bytes.len() as f64, total, Some(origin));
    }
    if total > 0.0 && bytes.len() as f64 != total {
        return Err(Error::model(format!("incomplete download: got {} of {} bytes", bytes.len(), total as u64)));
    }
    if bytes.is_empty() {
        return Err(Error::model("the model file is empty"));
    }
    Ok(bytes)
}

async fn store(cache: &Cache, url: &str, bytes: &[u8]) -> Result<()> {
    let headers = web_sys::Headers::new().map_err(|e| Error::internal(describe(&e)))?;
    let len = bytes.len().to_string();
    let _ = headers.set(SIZE_HEADER, &len);
    let _ = headers.set("content-type", "application/octet-stream");
    let init = ResponseInit::new();
    init.set_headers(&headers);
    let body = Uint8Array::from(bytes);
    let response = Response::new_with_opt_buffer_source_and_init(Some(&body), &init)
        .map_err(|e| Error::internal(format!("Response: {}", describe(&e))))?;
    JsFuture::from(cache.put_with_str(url, &response))
        .await
        .map_err(|e| Error::model(format!("cache.put: {}", describe(&e))))?;
    Ok(())
}

/// Removes `url` (or, with `None`, every cached model) from the cache. True if something
/// was removed.
pub async fn clear_cache(url: Option<&str>) -> Result<bool> {
    let Ok(caches) = global_get("caches").dyn_into::<CacheStorage>() else {
        return Ok(false);
    };
    let p = match url {
        Some(u) => match open_cache().await {
            Some(cache) => cache.delete_with_str(&absolute_url(u)),
            None => return Ok(false),
        },
        None => caches.delete(CACHE_NAME),
    };
    let removed = JsFuture::from(p).await.map_err(|e| Error::model(format!("cache delete: {}", describe(&e))))?;
    Ok(removed.is_truthy())
}
