//! The one owner of the engine in `wsi serve`: a thread that takes requests from every
//! connection over a channel and runs them on the GPU. This is the place that decides which
//! request runs when (continuous batching would replace the loop below, behind the same
//! [`Scheduler`] interface).
//!
//! Now: requests run one at a time; while others wait, the running one yields its turn
//! every [`TURN_TOKENS`] tokens (its [`Job`] resumes later from prompt + ids so far, with
//! the same output), so concurrent connections are served fairly in turn. A paused request
//! is parked off the queue and costs nothing until it resumes. Commands (new requests,
//! controls, disconnects) are read between tokens, so a stop takes effect within one token.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::{Engine, FinishReason};
use crate::error::{Error, Result};
use crate::protocol::{Control, Finished, Interrupt, Job, ModelInfo, Request, SegmentEnd, model_info};

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

    /// Applies a command; `running` is the request on the GPU now (flags only).
    fn apply(&mut self, cmd: Command, running: Option<&mut Slot>) {
        let (id, control) = match cmd {
            Command::Submit { id, req, events } => {
                self.held.fetch_add(1, Ordering::SeqCst);
                let held = self.held.clone();
                let slot = Slot { id, req, events, job: None, paused: false, stop: false, gone: false, held };
                self.runnable.push_back(slot);
                return;
            }
            Command::Control { id, control } => (id, Some(control)),
            Command::Cancel { id } => (id, None),
        };
        let slot = match running {
            Some(r) if r.id == id => r,
            _ => match self.find(id) {
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
}

impl EngineLoop {
    fn new(engine: Engine, rx: Receiver<Command>, held: Arc<AtomicUsize>) -> Self {
        let info = model_info(&engine);
        let queues = Queues { runnable: VecDeque::new(), parked: HashMap::new(), held };
        EngineLoop { engine, rx, queues, info }
    }

    fn run(mut self) {
        loop {
            if self.queues.runnable.is_empty() {
                match self.rx.recv() {
                    Ok(cmd) => self.queues.apply(cmd, None),
                    Err(_) => return, // every Scheduler handle is gone
                }
                continue;
            }
            let Some(slot) = self.queues.runnable.pop_front() else { continue };
            self.turn(slot);
        }
    }

    /// Gives `slot` the engine until it ends, pauses or yields.
    fn turn(&mut self, mut slot: Slot) {
        if slot.gone {
            return;
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
                    return;
                }
            },
        };
        if slot.stop {
            let end = job.finish(FinishReason::Cancelled);
            let _ = slot.events.send(JobEvent::Finished(end));
            return;
        }
        if slot.paused {
            let _ = slot.events.send(JobEvent::Paused);
            slot.job = Some(job);
            self.queues.parked.insert(slot.id, slot);
            return;
        }
        let (rx, queues) = (&self.rx, &mut self.queues);
        let events = slot.events.clone();
        let peer_gone = std::cell::Cell::new(false);
        let mut kept = 0usize;
        let result = {
            let slot = &mut slot;
            let mut interrupt = || {
                while let Ok(cmd) = rx.try_recv() {
                    queues.apply(cmd, Some(slot));
                }
                if slot.stop || peer_gone.get() {
                    Interrupt::Stop
                } else if slot.paused || (kept >= TURN_TOKENS && !queues.runnable.is_empty()) {
                    Interrupt::Pause
                } else {
                    kept += 1;
                    Interrupt::None
                }
            };
            let mut on_token = |text: &str, id: u32| {
                if events.send(JobEvent::Token { text: text.to_string(), id }).is_err() {
                    peer_gone.set(true);
                }
            };
            pollster::block_on(job.run(&mut self.engine, &mut interrupt, &mut on_token))
        };
        if peer_gone.get() {
            slot.gone = true;
        }
        match result {
            Ok(SegmentEnd::Paused) => {
                slot.job = Some(job);
                if slot.paused {
                    let _ = slot.events.send(JobEvent::Paused);
                    self.queues.parked.insert(slot.id, slot);
                } else {
                    self.queues.runnable.push_back(slot); // yielded its turn
                }
            }
            Ok(SegmentEnd::Finished(end)) => {
                if !slot.gone {
                    let _ = slot.events.send(JobEvent::Finished(end));
                }
            }
            Err(e) => {
                if !slot.gone {
                    let _ = slot.events.send(JobEvent::Failed(e));
                }
            }
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
