//! The generations of one instance: every `generate` call becomes a request; one driver task
//! owns the engine while any request is alive. A lone request runs on the single-sequence
//! path (deep prefetch, token prediction); when another arrives meanwhile (and
//! `adaptive_batch_size` allows more than one), the running one is interrupted at a token,
//! and from then on all of them are decoded together in batched steps (continuous
//! batching: requests join and leave between steps), until none is left. A request keeps
//! its own detokenizer and stop strings across that switch (`protocol::Job`), and the GPU
//! sampler's random numbers are keyed by position, so its text is what it would be alone.
//! The CPU engine never batches (`batching()` is false): its requests run one at a time.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use futures_channel::oneshot;
use serde_json::Value;
use wasm_bindgen::JsValue;
use web_time::Instant;

use super::class::{Inner, State};
use super::error::describe;
use super::stats::{Deadlines, Live, TimeoutInfo};
use crate::config::Device;
use crate::engine::{AnyEngine, Backend, Batch, Engine, FinishReason, Generation, TokenEvent};
use crate::error::{Error, Result};
use crate::protocol::{Finished, Interrupt, Job, Request, SegmentEnd};

/// Receives each piece: `(piece, tokenId)`; returning `false` stops the generation.
pub type Sink = Box<dyn FnMut(&str, Option<u32>) -> std::result::Result<bool, JsValue>>;

/// A `generate` call waiting for the driver.
pub struct Waiter {
    pub req: Request,
    pub seed: u64,
    pub sink: Sink,
    pub tx: oneshot::Sender<Result<String>>,
}

/// What a running request does with its tokens.
struct Delivery {
    sink: Sink,
    tx: oneshot::Sender<Result<String>>,
    text: String,
    deadlines: Deadlines,
    live: Live,
    prev: Instant,
    timed_out: Option<TimeoutInfo>,
    thrown: Option<JsValue>,
    /// The callback asked to stop, threw, or a deadline passed.
    halt: bool,
}

impl Delivery {
    /// One kept token's text (from the job): to the page's callback, deadlines checked.
    fn push(&mut self, inner: &Inner, text: &str, id: u32) {
        self.live.token();
        if let Some(live) = inner.live.borrow_mut().as_mut() {
            live.token();
        }
        if self.timed_out.is_none() {
            self.timed_out = self.deadlines.check(&self.live, self.prev);
        }
        self.prev = Instant::now();
        self.text.push_str(text);
        match (self.sink)(text, Some(id)) {
            Ok(go_on) => self.halt |= !go_on || self.timed_out.is_some(),
            Err(e) => {
                self.thrown = Some(e);
                self.halt = true;
            }
        }
    }
}

/// A request the driver holds.
struct Active {
    id: u64,
    job: Job,
    d: Delivery,
    in_batch: bool,
}

impl Inner {
    /// Whether concurrent generations are decoded together (else a second one is `busy`):
    /// only the GPU engine batches.
    pub(crate) fn batching(&self) -> bool {
        let cfg = self.config.borrow();
        cfg.adaptive_batch_size && cfg.max_batch_size > 1 && self.device.get() != Some(Device::Cpu)
    }

    /// Queue a request and wait for its text; starts the driver when none runs.
    pub(crate) async fn submit(self: &Rc<Self>, w: Waiter, rx: oneshot::Receiver<Result<String>>) -> Result<String> {
        self.waiting.borrow_mut().push_back(w);
        if self.state.get() == State::Idle {
            self.state.set(State::Generating);
            let inner = self.clone();
            wasm_bindgen_futures::spawn_local(async move { inner.drive().await });
        }
        rx.await.map_err(|_| Error::internal("the generation was dropped"))?
    }

    /// Owns the engine while requests are alive.
    async fn drive(self: Rc<Self>) {
        let Some(mut engine) = self.engine.borrow_mut().take() else {
            for w in self.waiting.borrow_mut().drain(..) {
                let _ = w.tx.send(Err(Error::internal("engine missing")));
            }
            self.state.set(State::Idle);
            return;
        };
        *self.live.borrow_mut() = Some(Live::new(0));
        let mut active: Vec<Active> = Vec::new();
        let mut batch = Batch::default();
        let mut next_id = 0u64;
        loop {
            if active.is_empty() {
                let Some(w) = self.waiting.borrow_mut().pop_front() else { break };
                next_id += 1;
                let Some(a) = self.start(&engine, w, next_id) else { continue };
                // Live figures (getPerformanceStats while running): this request's, then the batch's.
                *self.live.borrow_mut() = Some(Live::new(a.job.prompt_tokens()));
                if let Some(a) = self.solo(&mut engine, a).await {
                    active.push(a); // interrupted by a new request: batch from here on
                }
                continue;
            }
            self.admit(&mut engine, &mut batch, &mut active, &mut next_id).await;
            if let Some(live) = self.live.borrow_mut().as_mut() {
                live.batch_size = batch.len().max(1);
            }
            if batch.is_empty() {
                continue;
            }
            let result = match engine.gpu_mut() {
                Some(gpu) => {
                    let inner = &*self;
                    let active = &mut active;
                    let mut on_token = |id: u64, ev: TokenEvent<'_>| {
                        let Some(a) = active.iter_mut().find(|a| a.id == id) else { return false };
                        deliver(inner, &mut a.job, &mut a.d, &ev)
                    };
                    gpu.batch_step(&mut batch, &mut on_token).await
                }
                None => Err(not_batched()),
            };
            match result {
                Ok(ended) => {
                    for (id, g) in ended {
                        if let Some(i) = active.iter().position(|a| a.id == id) {
                            let a = active.remove(i);
                            self.complete(&engine, a, Ok(g));
                        }
                    }
                }
                Err(e) => {
                    for a in active.drain(..) {
                        self.complete(&engine, a, Err(e.clone()));
                    }
                    batch = Batch::default();
                }
            }
        }
        *self.live.borrow_mut() = None;
        // Dropped with its lost device; a recovered engine may already hold the cell.
        if !self.lost.get() && self.engine.borrow().is_none() {
            *self.engine.borrow_mut() = Some(engine);
        }
        self.state.set(State::Idle);
    }

    /// The request's job (tokenized, checked), or its error sent back.
    fn start(&self, engine: &AnyEngine, w: Waiter, id: u64) -> Option<Active> {
        let job = match Job::new(engine, &w.req, w.seed) {
            Ok(job) => job,
            Err(e) => {
                let _ = w.tx.send(Err(e));
                return None;
            }
        };
        let cfg = engine.config();
        let d = Delivery {
            sink: w.sink,
            tx: w.tx,
            text: String::new(),
            deadlines: Deadlines { token_ms: cfg.token_timeout_ms, generation_ms: cfg.generation_timeout_ms },
            live: Live::new(job.prompt_tokens()),
            prev: Instant::now(),
            timed_out: None,
            thrown: None,
            halt: false,
        };
        Some(Active { id, job, d, in_batch: false })
    }

    /// A lone request on the single-sequence path. Returns it when a new request
    /// interrupted it (it goes on in a batch), else completes it.
    async fn solo(&self, engine: &mut AnyEngine, a: Active) -> Option<Active> {
        let Active { id, mut job, d, .. } = a;
        let d = RefCell::new(d);
        let batching = self.batching();
        let mut interrupt = || {
            if d.borrow().halt {
                Interrupt::Stop
            } else if batching && !self.waiting.borrow().is_empty() {
                Interrupt::Pause
            } else {
                Interrupt::None
            }
        };
        let pressure = engine.gpu().map(Engine::pressure_handle);
        let end = {
            let mut on_token = |text: &str, id: u32| {
                self.fire_pressure(pressure.as_deref());
                d.borrow_mut().push(self, text, id);
            };
            job.run(engine, &mut interrupt, &mut on_token).await
        };
        self.fire_pressure(pressure.as_deref());
        let a = Active { id, job, d: d.into_inner(), in_batch: false };
        match end {
            Ok(SegmentEnd::Paused) => Some(a),
            Ok(SegmentEnd::Finished(f)) => {
                self.finish(engine, a, f);
                None
            }
            Err(e) => {
                self.complete(engine, a, Err(e));
                None
            }
        }
    }

    /// Requests that left the single-sequence path rejoin, and waiting ones join while the
    /// batch has room; each is prefilled on its lane and its first token delivered.
    async fn admit(&self, engine: &mut AnyEngine, batch: &mut Batch, active: &mut Vec<Active>, next_id: &mut u64) {
        let capacity = engine.gpu().map_or(1, Engine::batch_capacity);
        while active.len() < capacity {
            let Some(w) = self.waiting.borrow_mut().pop_front() else { break };
            *next_id += 1;
            if let Some(a) = self.start(engine, w, *next_id) {
                active.push(a);
            }
        }
        let mut i = 0;
        while i < active.len() {
            if active[i].in_batch {
                i += 1;
                continue;
            }
            let a = &mut active[i];
            let Some((context, params)) = a.job.segment() else {
                let a = active.remove(i);
                let f = {
                    let mut a = a;
                    let f = a.job.finish(FinishReason::Length);
                    (a, f)
                };
                self.finish(engine, f.0, f.1);
                continue;
            };
            let joined = match engine.gpu_mut() {
                Some(gpu) => {
                    let (job, d) = (&mut a.job, &mut a.d);
                    let mut on_token = |ev: TokenEvent<'_>| deliver(self, job, d, &ev);
                    gpu.batch_join(batch, a.id, &context, &params, &mut on_token).await
                }
                None => Err(not_batched()),
            };
            match joined {
                Ok(None) => {
                    a.in_batch = true;
                    i += 1;
                }
                Ok(Some(g)) => {
                    let a = active.remove(i);
                    self.complete(engine, a, Ok(g));
                }
                Err(e) => {
                    let a = active.remove(i);
                    self.complete(engine, a, Err(e));
                }
            }
        }
    }

    /// A request whose generation ended (or failed) in the batch.
    fn complete(&self, engine: &AnyEngine, mut a: Active, result: Result<Generation>) {
        match result {
            Ok(g) => {
                a.job.account(&g.stats);
                let reason = if a.job.stopped_by_string() { FinishReason::Stop } else { g.finish_reason };
                let f = a.job.finish(reason);
                self.finish(engine, a, f);
            }
            Err(e) => {
                let _ = a.d.tx.send(Err(e));
            }
        }
    }

    /// Flush the held-back text, record the stats, fire onTimeout, resolve the call.
    fn finish(&self, engine: &AnyEngine, a: Active, f: Finished) {
        let Active { job, mut d, .. } = a;
        if !f.tail.is_empty() {
            d.text.push_str(&f.tail);
            if let Err(e) = (d.sink)(&f.tail, None) {
                d.thrown.get_or_insert(e);
            }
        }
        let mut stats = engine.stats_json(&job.stats());
        stats["finish_reason"] = Value::from(f.reason.as_str());
        if d.timed_out.is_some() {
            stats["finish_reason"] = Value::from("timeout");
        }
        *self.last_stats.borrow_mut() = Some(stats);
        if let Some(info) = &d.timed_out {
            self.emit(|h| h.on_timeout.clone(), "onTimeout", &info.to_value());
        }
        let result = match d.thrown {
            Some(e) => Err(Error::invalid(format!("the token callback threw: {}", describe(&e)))),
            None => Ok(d.text),
        };
        let _ = d.tx.send(result);
    }

    /// The engine's memory-pressure events (KV budget, memory limit, sliding window), fired
    /// as they are raised.
    fn fire_pressure(&self, pressure: Option<&std::sync::Mutex<Vec<crate::engine::MemoryPressureEvent>>>) {
        let Some(pressure) = pressure else { return };
        let events: Vec<_> = pressure.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
        for ev in events {
            self.emit(|h| h.on_memory_pressure.clone(), "onMemoryPressure", &ev.to_value());
        }
    }
}

/// One token event of a batched generation: to its job (detokenizer, stop strings) and on
/// to the page. Returns whether the generation goes on.
fn deliver(inner: &Inner, job: &mut Job, d: &mut Delivery, ev: &TokenEvent<'_>) -> bool {
    let Some(id) = ev.id else {
        return true; // the engine's own flush: the job decodes the ids itself
    };
    let stopped = match job.accept(ev.tokenizer, id, &mut |text, id| d.push(inner, text, id)) {
        Ok(stopped) => stopped,
        Err(e) => {
            d.thrown.get_or_insert(JsValue::from_str(&e.to_string()));
            true
        }
    };
    !stopped && !d.halt
}

/// A request reached the batched path on an engine that does not batch (the CPU's): never
/// expected, since `batching()` keeps a second request out, but it must end, not hang.
fn not_batched() -> Error {
    Error::internal("concurrent generations are not batched on the CPU engine")
}

/// Every request of an instance in one queue: `VecDeque` of [`Waiter`]s.
pub type Waiting = RefCell<VecDeque<Waiter>>;
