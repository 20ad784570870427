//! `generate` and `generateAsync`: the JS entry points. Each call becomes a request for the
//! instance's driver (`batch.rs`: the page's callback per token, live stats, deadlines and
//! `onTimeout`, the engine's `onMemoryPressure` events, batching of overlapping calls).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use futures_channel::oneshot;
use js_sys::{Function, Object, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::batch::{Sink, Waiter};
use super::class::{Inner, State, WebGPUStreamingInference};
use super::error::set;
use super::stats;
use crate::config::GenerateOptions;
use crate::error::{Error, Result};
use crate::protocol::{Request, StreamOptions};

/// The second and third arguments of `generate`: `(maxTokens | options, callback)`, or
/// `(callback)` alone.
fn split_args(options: JsValue, callback: JsValue) -> Result<(GenerateOptions, Option<Function>)> {
    let (options, callback) = if options.is_function() && callback.is_undefined() {
        (JsValue::UNDEFINED, options)
    } else {
        (options, callback)
    };
    let callback = if callback.is_undefined() || callback.is_null() {
        None
    } else {
        Some(callback.dyn_into::<Function>().map_err(|_| Error::invalid("callback must be a function"))?)
    };
    let opts = GenerateOptions::from_json_value(stats::from_js(&options, "options")?)?;
    Ok((opts, callback))
}

impl Inner {
    /// One generation, start to end: queued for the instance's driver (`batch.rs`), which
    /// runs it alone or batched with the others that overlap it.
    async fn run(self: &Rc<Self>, prompt: JsValue, options: GenerateOptions, sink: Sink) -> Result<String> {
        let prompt = prompt.as_string().ok_or_else(|| Error::invalid("prompt must be a string"))?;
        match self.state.get() {
            State::Generating if self.batching() => {}
            state => {
                if let Some(e) = state.busy_error() {
                    return Err(e);
                }
            }
        }
        if self.lost.get() {
            return Err(Error::Gpu(
                "the GPU device was lost: it is being recovered (onError reports the outcome); else call load()".into(),
            ));
        }
        if self.state.get() == State::Idle && self.engine.borrow().is_none() {
            return Err(Error::invalid("the model is not loaded: call load() first"));
        }
        let seed = (js_sys::Math::random() * 2f64.powi(53)) as u64;
        let req = Request { prompt, options, stream: StreamOptions::default() };
        let (tx, rx) = oneshot::channel();
        self.submit(Waiter { req, seed, sink, tx }, rx).await
    }
}

/// A JS callback as a [`Sink`]: called with `(piece, tokenId)`; a strict `false` return
/// stops the generation; an exception stops it and rejects the promise.
fn callback_sink(callback: Option<Function>) -> Sink {
    Box::new(move |piece, id| {
        let Some(f) = &callback else { return Ok(true) };
        let id = id.map_or(JsValue::UNDEFINED, JsValue::from);
        let ret = f.call2(&JsValue::NULL, &JsValue::from_str(piece), &id)?;
        Ok(ret != JsValue::FALSE)
    })
}

#[wasm_bindgen]
impl WebGPUStreamingInference {
    /// Generates from `prompt`; `callback(piece, tokenId)` gets each piece as it is
    /// produced (a final call without id flushes held-back text). The second argument is
    /// a token budget or an options object. Resolves to the whole text.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] prompt: JsValue,
        #[wasm_bindgen(
            js_name = maxTokensOrOptions,
            unchecked_optional_param_type = "number | GenerateOptions | TokenCallback"
        )]
        options: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "TokenCallback")] callback: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let result = match split_args(options, callback) {
                Ok((opts, cb)) => inner.run(prompt, opts, callback_sink(cb)).await,
                Err(e) => Err(e),
            };
            result.map(|t| JsValue::from_str(&t)).map_err(|e| inner.fail(&e))
        })
    }

    /// Like `generate`, but returns an async iterator of the pieces:
    /// `for await (const piece of llm.generateAsync(prompt, options)) …`. Breaking out
    /// of the loop stops the generation.
    #[wasm_bindgen(js_name = generateAsync, unchecked_return_type = "AsyncIterableIterator<string>")]
    pub fn generate_async(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] prompt: JsValue,
        #[wasm_bindgen(js_name = maxTokensOrOptions, unchecked_optional_param_type = "number | GenerateOptions")]
        options: JsValue,
    ) -> std::result::Result<JsValue, JsValue> {
        let inner = self.inner.clone();
        let (opts, _) = split_args(options, JsValue::UNDEFINED).map_err(|e| inner.fail(&e))?;
        let queue = Rc::new(RefCell::new(Queue::default()));
        let q = queue.clone();
        let sink: Sink = Box::new(move |piece, _| {
            if !piece.is_empty() {
                q.borrow_mut().push(Ok(Some(piece.to_string())));
            }
            Ok(true)
        });
        let q = queue.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let end = match inner.run(prompt, opts, sink).await {
                Ok(_) => Ok(None),
                Err(e) => Err(inner.fail(&e)),
            };
            q.borrow_mut().push(end);
        });
        Ok(iterator(queue, self.inner.clone()))
    }
}

/// Pieces produced but not yet taken by `next()`, and a `next()` waiting for one.
#[derive(Default)]
struct Queue {
    /// `Ok(Some(piece))`, then one `Ok(None)` (done) or `Err(error)`.
    items: VecDeque<std::result::Result<Option<String>, JsValue>>,
    waiting: Option<(Function, Function)>,
    finished: bool,
}

impl Queue {
    fn push(&mut self, item: std::result::Result<Option<String>, JsValue>) {
        match self.waiting.take() {
            Some((resolve, reject)) => {
                self.finished = !matches!(item, Ok(Some(_)));
                settle(item, &resolve, &reject);
            }
            None => self.items.push_back(item),
        }
    }
}

fn step(value: &JsValue, done: bool) -> JsValue {
    let o = Object::new();
    set(&o, "value", value);
    set(&o, "done", &JsValue::from_bool(done));
    o.into()
}

fn settle(item: std::result::Result<Option<String>, JsValue>, resolve: &Function, reject: &Function) {
    let _ = match item {
        Ok(Some(piece)) => resolve.call1(&JsValue::NULL, &step(&JsValue::from_str(&piece), false)),
        Ok(None) => resolve.call1(&JsValue::NULL, &step(&JsValue::UNDEFINED, true)),
        Err(e) => reject.call1(&JsValue::NULL, &e),
    };
}

/// `{next, return, [Symbol.asyncIterator]}` over the queue.
fn iterator(queue: Rc<RefCell<Queue>>, inner: Rc<Inner>) -> JsValue {
    let it = Object::new();
    let q = queue.clone();
    let next = Closure::<dyn FnMut() -> Promise>::new(move || {
        let q = q.clone();
        Promise::new(&mut |resolve, reject| {
            let mut queue = q.borrow_mut();
            if queue.finished {
                let _ = resolve.call1(&JsValue::NULL, &step(&JsValue::UNDEFINED, true));
            } else if let Some(item) = queue.items.pop_front() {
                queue.finished = !matches!(item, Ok(Some(_)));
                settle(item, &resolve, &reject);
            } else {
                queue.waiting = Some((resolve, reject));
            }
        })
    });
    let ret = Closure::<dyn FnMut() -> Promise>::new(move || {
        queue.borrow_mut().finished = true;
        if inner.state.get() == State::Generating
            && let Some(flag) = inner.cancel.borrow().as_ref()
        {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Promise::resolve(&step(&JsValue::UNDEFINED, true))
    });
    set(&it, "next", &next.into_js_value());
    set(&it, "return", &ret.into_js_value());
    let this = it.clone();
    let self_fn = Closure::<dyn FnMut() -> JsValue>::new(move || this.clone().into());
    let _ = js_sys::Reflect::set(&it, &js_sys::Symbol::async_iterator(), &self_fn.into_js_value());
    it.into()
}
