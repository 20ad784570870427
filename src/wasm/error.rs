//! Errors across the JS boundary: every failure becomes a JS `Error` carrying the stable
//! `code` of [`Error::code`] and `recoverable`, and handlers the page installed are called
//! so that a throwing handler never breaks the engine.

use js_sys::{Function, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

use crate::error::Error;

/// A JS `Error` with `name = "WsiError"`, `code` and `recoverable` properties.
pub fn to_js_error(e: &Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    err.set_name("WsiError");
    set(&err, "code", &JsValue::from_str(e.code()));
    set(&err, "recoverable", &JsValue::from_bool(e.recoverable()));
    err.into()
}

/// `{code, message, recoverable}`: what `onError` receives (DESIGN.md §4).
pub fn error_info(e: &Error) -> JsValue {
    let info = Object::new();
    set(&info, "code", &JsValue::from_str(e.code()));
    set(&info, "message", &JsValue::from_str(&e.to_string()));
    set(&info, "recoverable", &JsValue::from_bool(e.recoverable()));
    info.into()
}

/// Reads the code back from a value thrown by this module (`None` for foreign values).
pub fn code_of(v: &JsValue) -> Option<String> {
    Reflect::get(v, &JsValue::from_str("code")).ok().and_then(|c| c.as_string())
}

/// A thrown JS value (a page callback's exception, a rejected browser promise) as an
/// [`Error`] of the given kind, keeping its message.
pub fn from_js(v: &JsValue, wrap: fn(String) -> Error, context: &str) -> Error {
    wrap(format!("{context}: {}", describe(v)))
}

/// Human-readable text of any thrown JS value.
pub fn describe(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    if let Some(s) = v.as_string() {
        return s;
    }
    js_sys::JSON::stringify(v).ok().and_then(|s| s.as_string()).unwrap_or_else(|| format!("{v:?}"))
}

/// Calls a page handler with one argument. A handler that throws is logged and ignored:
/// the engine's state never depends on page code returning normally.
pub fn call_handler(handler: Option<&Function>, name: &str, arg: &JsValue) {
    if let Some(f) = handler
        && let Err(thrown) = f.call1(&JsValue::NULL, arg)
    {
        web_sys::console::error_2(&JsValue::from_str(&format!("WebGPUStreamingInference: {name} threw")), &thrown);
    }
}

/// `Reflect.set` on a plain object we created (cannot fail for those).
pub fn set(target: &JsValue, key: &str, value: &JsValue) {
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

/// Logs panics to the console (a panic in wasm aborts the instance; the message at least
/// reaches the developer). Installed once, by the first constructor call.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&JsValue::from_str(&format!("wsi panicked: {info}")));
        }));
    });
}
