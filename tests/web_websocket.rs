//! `streamWebsocket` in the browser: the page opens a WebSocket to the peer that
//! scripts/test.sh starts (examples/ws_peer.rs, `WSI_TEST_PEER_URL` at build time points
//! elsewhere) and serves it with an instance whose model is not loaded yet. The peer sends
//! bad frames and three requests (one paused and resumed, one stopped), checks every frame
//! and closes the socket with 1000 "pass" or 4000 and what failed. The model (int4, the
//! file's own 4-bit weights) comes over HTTP like in tests/web_engine.rs.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use serde::Serialize;
use serde_json::json;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{CloseEvent, WebSocket};
use wsi::wasm::WebGPUStreamingInference;

wasm_bindgen_test_configure!(run_in_browser);

const MODEL_URL: &str = match option_env!("WSI_TEST_MODEL_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:8089/SmolLM2-135M-Instruct.Q4_1.gguf",
};
const PEER_URL: &str = match option_env!("WSI_TEST_PEER_URL") {
    Some(url) => url,
    None => "ws://127.0.0.1:8091",
};

#[wasm_bindgen_test]
async fn stream_websocket_serves_the_peers_requests_until_the_socket_closes() {
    let cfg = json!({"quantization": "int4"}).serialize(&serde_wasm_bindgen::Serializer::json_compatible());
    let llm = WebGPUStreamingInference::new(MODEL_URL.into(), cfg.expect("config")).expect("constructor");
    let (errors, on_error) = error_log();
    llm.set_on_error(on_error.as_ref().clone()).expect("handler");
    let ws = WebSocket::new(PEER_URL).expect("a WebSocket to the peer");
    let closed: Rc<RefCell<Option<(u16, String)>>> = Rc::new(RefCell::new(None));
    let c = closed.clone();
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
        *c.borrow_mut() = Some((e.code(), e.reason()));
    });
    ws.add_event_listener_with_callback("close", on_close.as_ref().unchecked_ref()).expect("listener");
    // Served from the first frame on (the socket may still be connecting).
    JsFuture::from(llm.stream_websocket(ws, JsValue::UNDEFINED)).await.expect("resolves when the socket closes");
    let (code, reason) = closed.borrow().clone().expect("the close event was seen");
    console_log!("peer closed with {code} {reason}");
    assert_eq!((code, reason.as_str()), (1000, "pass"), "the peer's verdict (details in its log)");
    assert!(llm.is_loaded(), "the first request loaded the model");
    // Each error frame the peer got (its bad frames) also reached onError.
    let errors = errors.borrow();
    assert_eq!(errors.len(), 3, "the peer sends three bad frames: {errors:?}");
    assert!(errors.iter().all(|(code, _)| code == "invalid_request"), "{errors:?}");
    assert!(errors.iter().all(|(_, recoverable)| *recoverable), "{errors:?}");
    drop((on_close, on_error));
}

#[wasm_bindgen_test]
async fn stream_websocket_rejects_bad_defaults_with_a_coded_error() {
    let llm = WebGPUStreamingInference::new(MODEL_URL.into(), JsValue::UNDEFINED).expect("constructor");
    let (errors, on_error) = error_log();
    llm.set_on_error(on_error.as_ref().clone()).expect("handler");
    // A socket that never connects is enough: the defaults are checked first.
    let ws = WebSocket::new("ws://127.0.0.1:9/").expect("socket object");
    let bad = json!({"max_tokenz": 3}).serialize(&serde_wasm_bindgen::Serializer::json_compatible()).expect("js");
    let err = JsFuture::from(llm.stream_websocket(ws.clone(), bad)).await.expect_err("rejected");
    let code = js_sys::Reflect::get(&err, &JsValue::from_str("code")).ok().and_then(|c| c.as_string());
    assert_eq!(code.as_deref(), Some("invalid_request"));
    let _ = ws.close();
    assert_eq!(*errors.borrow(), vec![("invalid_request".to_string(), true)], "onError fired once");
}

type ErrorLog = Rc<RefCell<Vec<(String, bool)>>>;

/// An `onError` handler recording `(code, recoverable)` of each call.
fn error_log() -> (ErrorLog, Closure<dyn FnMut(JsValue)>) {
    let log: ErrorLog = Rc::default();
    let l = log.clone();
    let handler = Closure::<dyn FnMut(JsValue)>::new(move |info: JsValue| {
        let get = |k: &str| js_sys::Reflect::get(&info, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        l.borrow_mut().push((get("code").as_string().unwrap_or_default(), get("recoverable") == JsValue::TRUE));
    });
    (log, handler)
}
