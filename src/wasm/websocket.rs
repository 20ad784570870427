//! `streamWebsocket(websocket, config?)`: the WebSocket protocol (DESIGN.md §5) served by
//! this instance on a socket the page opened, through the same [`Session`] state machine
//! and [`Job`] as `wsi serve`.
//!
//! Event-driven on the page's one thread: `onmessage` feeds the session and carries out
//! its actions at once (a stop or pause only sets the running segment's [`Interrupt`],
//! read before each token is kept); a request runs in a spawned task that takes the
//! engine for one segment at a time, so a paused request holds no engine and the page can
//! generate meanwhile. The returned promise resolves when the socket closes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, MessageEvent, WebSocket};

use super::class::{Inner, State, WebGPUStreamingInference};
use super::stats;
use crate::engine::FinishReason;
use crate::error::Error;
use crate::protocol::{
    Action, Control, Interrupt, Job, Outgoing, Phase, Request, RequestDefaults, SegmentEnd, Session,
};

/// A socket event handler.
type Handler = Closure<dyn FnMut(JsValue)>;

/// One socket served by the instance.
struct Conn {
    inner: Rc<Inner>,
    ws: WebSocket,
    session: RefCell<Session>,
    /// What the running segment does at its next token.
    interrupt: Cell<Interrupt>,
    /// A paused request.
    parked: RefCell<Option<Job>>,
    /// Resolves the promise `streamWebsocket` returned.
    resolve: RefCell<Option<Function>>,
    /// The socket's handlers, dropped after close.
    handlers: RefCell<Vec<Handler>>,
}

impl Conn {
    fn send_all(self: &Rc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                // A socket that closed meanwhile just drops the frame.
                Action::Send(frame) => {
                    // Every failed frame or request also reaches the page's onError.
                    if let Outgoing::Error { error, message, recoverable } = &frame {
                        super::recovery::report(&self.inner, error, message, *recoverable);
                    }
                    let _ = self.ws.send_with_str(&frame.to_text());
                }
                Action::Start(req) => {
                    let conn = self.clone();
                    wasm_bindgen_futures::spawn_local(async move { conn.start(req).await });
                }
                Action::Control(c) => self.control(c),
            }
        }
    }

    fn control(self: &Rc<Self>, c: Control) {
        match c {
            Control::Stop => {
                if let Some(mut job) = self.parked.borrow_mut().take() {
                    let end = job.finish(FinishReason::Cancelled);
                    let actions = self.session.borrow_mut().on_finished(end);
                    self.send_all(actions);
                } else {
                    self.interrupt.set(Interrupt::Stop);
                }
            }
            Control::Pause => {
                if self.interrupt.get() == Interrupt::None {
                    self.interrupt.set(Interrupt::Pause);
                }
            }
            Control::Resume => {
                if self.interrupt.get() == Interrupt::Pause {
                    self.interrupt.set(Interrupt::None); // the segment had not stopped yet
                }
                if let Some(job) = self.parked.borrow_mut().take() {
                    let conn = self.clone();
                    wasm_bindgen_futures::spawn_local(async move { conn.run(job).await });
                }
            }
        }
    }

    fn on_message(self: &Rc<Self>, event: JsValue) {
        let data = event.dyn_into::<MessageEvent>().map(|e| e.data()).unwrap_or(JsValue::UNDEFINED);
        let actions = match data.as_string() {
            Some(text) => self.session.borrow_mut().on_frame(&text),
            None => {
                let len = Reflect::get(&data, &JsValue::from_str("byteLength")).ok().and_then(|v| v.as_f64());
                self.session.borrow_mut().on_binary(len.unwrap_or(0.0) as usize)
            }
        };
        self.send_all(actions);
    }

    fn on_close(self: &Rc<Self>) {
        let actions = self.session.borrow_mut().on_close();
        if actions.contains(&Action::Control(Control::Stop)) {
            self.interrupt.set(Interrupt::Stop);
        }
        drop(self.parked.borrow_mut().take());
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        // Handlers are dropped after this one has returned.
        let handlers = std::mem::take(&mut *self.handlers.borrow_mut());
        wasm_bindgen_futures::spawn_local(async move { drop(handlers) });
        if let Some(resolve) = self.resolve.borrow_mut().take() {
            let _ = resolve.call0(&JsValue::NULL);
        }
    }

    fn fail(self: &Rc<Self>, e: &Error) {
        let actions = self.session.borrow_mut().on_failed(e);
        self.send_all(actions);
    }

    /// Loads the model if needed (with `status` frames), then runs the request.
    async fn start(self: Rc<Self>, req: Box<Request>) {
        self.interrupt.set(Interrupt::None);
        let ready = self.ensure_loaded().await;
        if let Err(e) = ready {
            return self.fail(&e);
        }
        match self.session.borrow().phase() {
            Phase::Closed => return,
            Phase::Idle | Phase::Generating | Phase::Paused => {}
        }
        let job = match self.inner.engine.borrow().as_ref() {
            Some(engine) => {
                let seed = (js_sys::Math::random() * 2f64.powi(53)) as u64;
                Job::new(engine, &req, seed).map(|job| (job, crate::protocol::model_info(engine)))
            }
            None => Err(busy_or_missing(self.inner.state.get())),
        };
        let (job, info) = match job {
            Ok(v) => v,
            Err(e) => return self.fail(&e),
        };
        let actions = self.session.borrow_mut().on_started(info);
        self.send_all(actions);
        let phase = self.session.borrow().phase();
        match (self.interrupt.get(), phase) {
            (Interrupt::Stop, _) => {
                let mut job = job;
                let actions = self.session.borrow_mut().on_finished(job.finish(FinishReason::Cancelled));
                self.send_all(actions);
            }
            (_, Phase::Paused) => {
                *self.parked.borrow_mut() = Some(job);
                let actions = self.session.borrow_mut().on_paused();
                self.send_all(actions);
            }
            _ => self.run(job).await,
        }
    }

    /// The model on the GPU, loading it here when nothing has (status frames show the
    /// progress) and waiting for a `load()` the page started.
    async fn ensure_loaded(self: &Rc<Self>) -> Result<(), Error> {
        if self.inner.state.get() == State::Loading {
            let actions = self.session.borrow().status("loading", None, "waiting for load() to finish");
            self.send_all(actions);
            while self.inner.state.get() == State::Loading {
                // The page's load() has no completion hook of its own to await here.
                gloo_timers::future::TimeoutFuture::new(50).await;
            }
        }
        if self.inner.engine.borrow().is_some() || self.inner.state.get() != State::Idle {
            return Ok(());
        }
        let conn = self.clone();
        let last = Cell::new((String::new(), -1.0f64));
        let progress = Handler::new(move |p: JsValue| {
            let get = |k: &str| Reflect::get(&p, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
            let phase = get("phase").as_string().unwrap_or_default();
            let fraction = get("progress").as_f64().unwrap_or(0.0);
            let (last_phase, last_fraction) = last.take();
            // One frame per phase change and per 5% of progress.
            if phase != last_phase || fraction - last_fraction >= 0.05 || fraction >= 1.0 && last_fraction < 1.0 {
                let message = format!(
                    "{phase}: {} of {}",
                    get("loaded").as_f64().unwrap_or(0.0),
                    get("total").as_f64().unwrap_or(0.0)
                );
                let actions = conn.session.borrow().status("loading", Some(fraction), message);
                conn.send_all(actions);
                last.set((phase, fraction));
            } else {
                last.set((last_phase, last_fraction));
            }
        });
        let actions = self.session.borrow().status("loading", Some(0.0), "loading the model");
        self.send_all(actions);
        self.inner.state.set(State::Loading);
        let f: Function = progress.as_ref().unchecked_ref::<Function>().clone();
        let loaded = self.inner.clone().load(Some(f)).await;
        self.inner.state.set(State::Idle);
        drop(progress);
        loaded.map(|_| ())
    }

    /// Runs segments of `job` until it ends or pauses.
    async fn run(self: Rc<Self>, mut job: Job) {
        if self.session.borrow().phase() == Phase::Closed {
            return;
        }
        let taken = match self.inner.state.get() {
            State::Idle => self.inner.engine.borrow_mut().take(),
            _ => None,
        };
        let Some(mut engine) = taken else {
            return self.fail(&busy_or_missing(self.inner.state.get()));
        };
        self.inner.state.set(State::Generating);
        let conn = self.clone();
        let end = job
            .run(&mut engine, &mut || self.interrupt.get(), &mut |text, id| {
                let actions = conn.session.borrow_mut().on_token(text, id);
                conn.send_all(actions);
            })
            .await;
        if !self.inner.lost.get() {
            *self.inner.engine.borrow_mut() = Some(engine);
        }
        self.inner.state.set(State::Idle);
        match end {
            Ok(SegmentEnd::Paused) => {
                if self.session.borrow().phase() != Phase::Closed {
                    *self.parked.borrow_mut() = Some(job);
                    let actions = self.session.borrow_mut().on_paused();
                    self.send_all(actions);
                }
            }
            Ok(SegmentEnd::Finished(end)) => {
                let actions = self.session.borrow_mut().on_finished(end);
                self.send_all(actions);
            }
            Err(e) => self.fail(&e),
        }
    }
}

fn busy_or_missing(state: State) -> Error {
    state.busy_error().unwrap_or_else(|| Error::invalid("the model is not loaded"))
}

#[wasm_bindgen]
impl WebGPUStreamingInference {
    /// Serves the WebSocket protocol (config and control frames in; init, status, token,
    /// completion and error out) on `websocket`, which the page opened. `config`: defaults
    /// for the `config` frames (any of their keys but `type` and `prompt`). Loads the model
    /// at the first request if `load()` has not. Requests on one socket run in turn.
    /// Resolves when the socket closes.
    #[wasm_bindgen(js_name = streamWebsocket, unchecked_return_type = "Promise<void>")]
    pub fn stream_websocket(
        &self,
        websocket: WebSocket,
        #[wasm_bindgen(unchecked_optional_param_type = "WebSocketRequestDefaults")] config: JsValue,
    ) -> Promise {
        let defaults = stats::from_js(&config, "config").and_then(|v| RequestDefaults::from_json_value(&v));
        let defaults = match defaults {
            Ok(d) => d,
            Err(e) => return Promise::reject(&self.inner.fail(&e)),
        };
        if websocket.ready_state() >= WebSocket::CLOSING {
            return Promise::resolve(&JsValue::UNDEFINED);
        }
        websocket.set_binary_type(BinaryType::Arraybuffer);
        let conn = Rc::new(Conn {
            inner: self.inner.clone(),
            ws: websocket.clone(),
            session: RefCell::new(Session::new(defaults)),
            interrupt: Cell::new(Interrupt::None),
            parked: RefCell::new(None),
            resolve: RefCell::new(None),
            handlers: RefCell::new(Vec::new()),
        });
        let promise = Promise::new(&mut |resolve, _reject| *conn.resolve.borrow_mut() = Some(resolve));
        let c = conn.clone();
        let on_message = Handler::new(move |e: JsValue| c.on_message(e));
        let c = conn.clone();
        let on_close = Handler::new(move |_| c.on_close());
        // An error is always followed by close; nothing to do before it.
        let on_error = Handler::new(move |_| {});
        websocket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        websocket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        websocket.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        conn.handlers.borrow_mut().extend([on_message, on_close, on_error]);
        promise
    }
}
