//! The one owner of the engine in `wsi serve`: a thread that takes requests from every
//! connection over a channel and runs them on the GPU with continuous batching: running
//! requests are decoded together in batched steps (`Engine::batch_step`), new ones join
//! between steps while the batch has room (`Engine::batch_capacity`), finished, stopped,
//! paused and disconnected ones leave between steps. Commands (new requests, controls,
//! disconnects) are read between steps, so a stop takes effect within one submission
//! (`steps_per_submit` tokens).
//!
//! When more requests wait than the batch holds, a running one gives its place after
//! [`TURN_TOKENS`] tokens (its [`Job`] rejoins later from prompt + ids so far, with the
//! same output), so every connection is served. A paused request is parked off the queue
//! and costs nothing until it resumes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{Batch, Engine, FinishReason, Generation, TokenEvent};
use crate::error::{Error, Result};
use crate::protocol::{Control, Finished, Job, ModelInfo, Request, model_info};

/// Tokens a request generates before it gives its turn to a waiting one.
pub const TURN_TOKENS: usize = 32;

/// What the engine thread reports about one request, in order: `Started`, then `Token`s,
/// then `Finished` or `Failed` (or `Failed` alone).
#[derive(Debug)]
pub enum JobEvent {
    Started(ModelInfo),
    Token {
        text: String,
        id: u32,
    },
    /// A pause took effect (not sent for turns given to other requests).
    Paused,
    Finished(Finished),
    Failed(Error),
}

enum Command {
    Submit {
        id: u64,
        req: Box<Request>,
        events: UnboundedSender<JobEvent>,
    },
    Control {
        id: u64,
        control: Control,
    },
    /// The connection went away: drop the request, report nothing.
    Cancel {
        id: u64,
    },
}

/// A handle to the engine thread; cheap to share between connections.
pub struct Scheduler {
    tx: Sender<Command>,
    next_id: AtomicU64,
    info: ModelInfo,
    /// Requests the engine thread holds (queued, paused or running).
    held: Arc<AtomicUsize>,
}

impl Scheduler {
    /// Moves `engine` onto its own thread and starts serving.
    pub fn start(engine: Engine) -> Result<Scheduler> {
        let info = model_info(&engine);
        let (tx, rx) = channel();
        let held = Arc::new(AtomicUsize::new(0));
        let counter = held.clone();
        std::thread::Builder::new()
            .name("wsi-engine".into())
            .spawn(move || EngineLoop::new(engine, rx, counter).run())
            .map_err(|e| Error::internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Scheduler { tx, next_id: AtomicU64::new(1), info, held })
    }

    /// The model being served.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// Requests the engine thread holds now: queued, paused or running. A request leaves
    /// when it ends or its connection closes (its state, ids and detokenizer, are freed).
    pub fn requests_held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Queues a request; its events arrive on `events`. Returns its id for
    /// [`Scheduler::control`] and [`Scheduler::cancel`].
    pub fn submit(&self, req: Box<Request>, events: UnboundedSender<JobEvent>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.send(Command::Submit { id, req, events }) {
            // The engine thread is gone (it only ends when every handle is dropped).
            if let Command::Submit { events, .. } = e.0 {
                let _ = events.send(JobEvent::Failed(Error::internal("the engine thread has stopped")));
            }
        }
        id
    }

    /// Stop, pause or resume request `id`.
    pub fn control(&self, id: u64, control: Control) {
        let _ = self.tx.send(Command::Control { id, control });
    }

    /// Forget request `id` (its connection closed): it stops within one token and its
    /// state is freed.
    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Command::Cancel { id });
    }
}

/// A request known to the engine thread.
struct Slot {
    id: u64,
    req: Box<Request>,
    events: UnboundedSender<JobEvent>,
    /// Created (tokenized, `Started` sent) when the request first gets the engine.
    job: Option<Job>,
    paused: bool,
    stop: bool,
    /// The connection is gone: end without reporting.
    gone: bool,
    /// Tokens since the request last joined the batch (its turn, while others wait).
    seg_tokens: usize,
    /// [`Scheduler::requests_held`], decremented when the slot is dropped.
    held: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests waiting for the engine, and paused ones.
struct Queues {
    runnable: VecDeque<Slot>,
    parked: HashMap<u64, Slot>,
    held: Arc<AtomicUsize>,
}

impl Queues {
    fn find(&mut self, id: u64) -> Option<&mut Slot> {
        match self.parked.get_mut(&id) {
            Some(s) => Some(s),
            None => self.runnable.iter_mut().find(|s| s.id == id),
        }
    }

    /// Applies a command; `running` are the requests in the batch now (flags only: the
    /// engine loop acts on them between steps).
    fn apply(&mut self, cmd: Command, running: &mut [Slot]) {
        let (id, control) = match cmd {
            Command::Submit { id, req, events } => {
                self.held.fetch_add(1, Ordering::SeqCst);
                let held = self.held.clone();
                let slot =
                    Slot { id, req, events, job: None, paused: false, stop: false, gone: false, seg_tokens: 0, held };
                self.runnable.push_back(slot);
                return;
            }
            Command::Control { id, control } => (id, Some(control)),
            Command::Cancel { id } => (id, None),
        };
        let slot = match running.iter_mut().find(|r| r.id == id) {
            Some(r) => r,
            None => match self.find(id) {
                Some(s) => s,
                None => return, // already finished
            },
        };
        match control {
            Some(Control::Pause) => slot.paused = true,
            Some(Control::Resume) => slot.paused = false,
            Some(Control::Stop) => slot.stop = true,
            None => (slot.stop, slot.gone) = (true, true),
        }
        // A parked request that must act (resume, or end) goes back to the queue.
        if (!slot.paused || slot.stop)
            && let Some(s) = self.parked.remove(&id)
        {
            if s.stop {
                self.runnable.push_front(s); // ending costs no GPU time: do it first
            } else {
                self.runnable.push_back(s);
            }
        }
    }
}

struct EngineLoop {
    engine: Engine,
    rx: Receiver<Command>,
    queues: Queues,
    info: ModelInfo,
    /// Requests decoding together now, in the batch's order (each has its job).
    running: Vec<Slot>,
    batch: Batch,
}

impl EngineLoop {
    fn new(engine: Engine, rx: Receiver<Command>, held: Arc<AtomicUsize>) -> Self {
        let info = model_info(&engine);
        let queues = Queues { runnable: VecDeque::new(), parked: HashMap::new(), held };
        EngineLoop { engine, rx, queues, info, running: Vec::new(), batch: Batch::default() }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.queues.runnable.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.queues.apply(cmd, &mut []),
                    Err(_) => return, // every Scheduler handle is gone
                }
                continue;
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.queues.apply(cmd, &mut self.running);
            }
            self.settle();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Running requests that were stopped, paused or disconnected, or that used their turn
    /// while others wait for a place in the batch, leave it (their ids are kept).
    fn settle(&mut self) {
        let full = self.running.len() >= self.engine.batch_capacity();
        let waiting = full && !self.queues.runnable.is_empty();
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let turn_over = waiting && s.seg_tokens >= TURN_TOKENS;
            if !(s.gone || s.stop || s.paused || turn_over) {
                i += 1;
                continue;
            }
            let mut slot = self.running.remove(i);
            let left = self.engine.batch_cancel(&mut self.batch, slot.id, &mut |_| true);
            let Some(mut job) = slot.job.take() else { continue };
            if let Ok(Some(g)) = &left {
                job.account(&g.stats);
            }
            if slot.gone {
                continue;
            }
            if slot.stop {
                let _ = slot.events.send(JobEvent::Finished(job.finish(FinishReason::Cancelled)));
            } else {
                slot.job = Some(job);
                slot.seg_tokens = 0;
                if slot.paused {
                    let _ = slot.events.send(JobEvent::Paused);
                    self.queues.parked.insert(slot.id, slot);
                } else {
                    self.queues.runnable.push_back(slot); // gave its turn
                }
            }
        }
    }

    /// Waiting requests join the batch while it has room: each is prefilled on a free lane
    /// and its first token delivered.
    fn admit(&mut self) {
        while self.running.len() < self.engine.batch_capacity() {
            let Some(mut slot) = self.queues.runnable.pop_front() else { return };
            if slot.gone {
                continue;
            }
            let mut job = match slot.job.take() {
                Some(job) => job,
                None => match Job::new(&self.engine, &slot.req, clock_seed()) {
                    Ok(job) => {
                        let _ = slot.events.send(JobEvent::Started(self.info.clone()));
                        job
                    }
                    Err(e) => {
                        let _ = slot.events.send(JobEvent::Failed(e));
                        continue;
                    }
                },
            };
            if slot.stop {
                let _ = slot.events.send(JobEvent::Finished(job.finish(FinishReason::Cancelled)));
                continue;
            }
            if slot.paused {
                let _ = slot.events.send(JobEvent::Paused);
                slot.job = Some(job);
                self.queues.parked.insert(slot.id, slot);
                continue;
            }
            let Some((context, params)) = job.segment() else {
                let _ = slot.events.send(JobEvent::Finished(job.finish(FinishReason::Length)));
                continue;
            };
            let events = slot.events.clone();
            let mut gone = false;
            let mut failed = None;
            let joined = {
                let mut on_token = |ev: TokenEvent<'_>| deliver(&mut job, &events, &ev, &mut gone, &mut failed);
                pollster::block_on(self.engine.batch_join(&mut self.batch, slot.id, &context, &params, &mut on_token))
            };
            slot.gone |= gone;
            slot.seg_tokens = 1;
            match (joined, failed) {
                (Err(e), _) | (Ok(_), Some(e)) => {
                    let _ = self.engine.batch_cancel(&mut self.batch, slot.id, &mut |_| true);
                    if !slot.gone {
                        let _ = slot.events.send(JobEvent::Failed(e));
                    }
                }
                (Ok(Some(g)), None) => self.finish(slot, job, &g),
                (Ok(None), None) => {
                    slot.job = Some(job);
                    self.running.push(slot);
                }
            }
        }
    }

    /// One batched submission for every running request; delivers the tokens and ends the
    /// requests that finished.
    fn step(&mut self) {
        let mut failed = None;
        let result = {
            let running = &mut self.running;
            let mut on_token = |id: u64, ev: TokenEvent<'_>| {
                let Some(slot) = running.iter_mut().find(|s| s.id == id) else { return false };
                let Some(job) = slot.job.as_mut() else { return false };
                slot.seg_tokens += usize::from(ev.id.is_some());
                let mut gone = false;
                let go_on = deliver(job, &slot.events, &ev, &mut gone, &mut failed);
                slot.gone |= gone;
                go_on
            };
            pollster::block_on(self.engine.batch_step(&mut self.batch, &mut on_token))
        };
        let ended = match (result, failed) {
            (Ok(ended), None) => ended,
            (Err(e), _) | (Ok(_), Some(e)) => {
                // The batch's state is unknown now: every running request fails.
                for slot in self.running.drain(..) {
                    if !slot.gone {
                        let _ = slot.events.send(JobEvent::Failed(e.clone()));
                    }
                }
                self.batch = Batch::default();
                return;
            }
        };
        for (id, g) in ended {
            let Some(i) = self.running.iter().position(|s| s.id == id) else { continue };
            let mut slot = self.running.remove(i);
            if let Some(job) = slot.job.take() {
                self.finish(slot, job, &g);
            }
        }
    }

    /// A request whose generation ended in the batch: report how.
    fn finish(&mut self, slot: Slot, mut job: Job, g: &Generation) {
        job.account(&g.stats);
        if slot.gone {
            return;
        }
        // A stop string ends the job through the callback, which the engine counts as a cancel.
        let reason = if job.stopped_by_string() { FinishReason::Stop } else { g.finish_reason };
        let _ = slot.events.send(JobEvent::Finished(job.finish(reason)));
    }
}

/// Hands one token event of a batched generation to its job and on to the connection.
/// Returns whether the generation goes on (false after a stop string or a decode error).
fn deliver(
    job: &mut Job,
    events: &UnboundedSender<JobEvent>,
    ev: &TokenEvent<'_>,
    gone: &mut bool,
    failed: &mut Option<Error>,
) -> bool {
    let Some(id) = ev.id else {
        return true; // the engine's own flush: the job decodes the ids itself
    };
    let mut send = |text: &str, id: u32| {
        if events.send(JobEvent::Token { text: text.to_string(), id }).is_err() {
            *gone = true;
        }
    };
    match job.accept(ev.tokenizer, id, &mut send) {
        Ok(stopped) => !stopped,
        Err(e) => {
            *failed = Some(e);
            false
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
