//! The protocol's state machine for one connection, shared by `wsi serve` and
//! `streamWebsocket`. It knows nothing of the transport or the engine: the transport feeds
//! it frames and the request's progress, and carries out the [`Action`]s it returns.
//!
//! ```text
//!   Idle --config--> Generating --pause--> Paused --resume--> Generating
//!   Generating/Paused --finished/failed--> Idle        any --close--> Closed
//! ```
//! A pause is acknowledged by a `status` frame (`operation: "paused"`) once it has taken
//! effect. A `control` stop in Generating or Paused is forwarded; the request then ends through
//! `on_finished` (`finish_reason: "cancelled"`). Every bad frame gets an `error` and leaves
//! the phase as it was.

use super::job::Finished;
use super::messages::{Control, Incoming, ModelInfo, Outgoing, Request, RequestDefaults, StreamOptions};
use crate::error::Error;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No request: a `config` starts one.
    Idle,
    /// A request is loading, waiting for its turn or generating.
    Generating,
    /// A request is paused by the peer.
    Paused,
    /// The connection closed; nothing more is sent.
    Closed,
}

/// What the transport must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this frame to the peer.
    Send(Outgoing),
    /// Start this request (then report through `on_started`, `on_token`, `on_finished` or
    /// `on_failed`).
    Start(Box<Request>),
    /// Apply this control to the running request.
    Control(Control),
}

/// The request in progress.
struct Current {
    stream: StreamOptions,
    /// The prompt when `echo_prompt`, else empty.
    echo: String,
    /// Generated text so far.
    text: String,
    /// Tokens generated so far.
    tokens: usize,
}

/// One connection's protocol state.
pub struct Session {
    phase: Phase,
    defaults: RequestDefaults,
    current: Option<Current>,
}

impl Session {
    /// A session whose `config` frames fall back to `defaults`.
    pub fn new(defaults: RequestDefaults) -> Self {
        Session { phase: Phase::Idle, defaults, current: None }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A text frame from the peer.
    pub fn on_frame(&mut self, text: &str) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        match Incoming::parse(text, &self.defaults) {
            Err(e) => vec![Action::Send(Outgoing::error(&e))],
            Ok(Incoming::Config(req)) => self.on_config(req),
            Ok(Incoming::Control(c)) => self.on_control(c),
        }
    }

    /// A binary frame from the peer: the protocol has none.
    pub fn on_binary(&mut self, len: usize) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        let e = Error::invalid(format!("binary frames are not part of the protocol (got {len} bytes): send JSON text"));
        vec![Action::Send(Outgoing::error(&e))]
    }

    fn on_config(&mut self, req: Box<Request>) -> Vec<Action> {
        if self.phase != Phase::Idle {
            let e = Error::Busy(
                "a generation is running on this connection: wait for its completion or send {\"type\": \
                 \"control\", \"action\": \"stop\"} first"
                    .into(),
            );
            return vec![Action::Send(Outgoing::error(&e))];
        }
        let echo = if req.stream.echo_prompt { req.prompt.clone() } else { String::new() };
        self.current = Some(Current { stream: req.stream, echo, text: String::new(), tokens: 0 });
        self.phase = Phase::Generating;
        vec![Action::Start(req)]
    }

    fn on_control(&mut self, c: Control) -> Vec<Action> {
        match (self.phase, c) {
            (Phase::Idle, _) => {
                let e = Error::invalid(format!(
                    "control \"{}\" with no generation running: send a config frame first",
                    control_name(c)
                ));
                vec![Action::Send(Outgoing::error(&e))]
            }
            (Phase::Generating, Control::Pause) => {
                self.phase = Phase::Paused;
                vec![Action::Control(c)]
            }
            (Phase::Paused, Control::Resume) => {
                self.phase = Phase::Generating;
                vec![Action::Control(c)]
            }
            (Phase::Generating, Control::Resume) => {
                let e = Error::invalid("control \"resume\": the generation is not paused");
                vec![Action::Send(Outgoing::error(&e))]
            }
            (Phase::Paused, Control::Pause) => Vec::new(),
            (Phase::Generating | Phase::Paused, Control::Stop) => vec![Action::Control(c)],
            (Phase::Closed, _) => Vec::new(),
        }
    }

    /// A `status` frame while the request waits (model loading); nothing when idle.
    pub fn status(&self, operation: &str, progress: Option<f64>, message: impl Into<String>) -> Vec<Action> {
        if self.current.is_none() || self.phase == Phase::Closed {
            return Vec::new();
        }
        vec![Action::Send(Outgoing::Status { operation: operation.into(), progress, message: message.into() })]
    }

    /// The request was accepted by the engine: `init`.
    pub fn on_started(&mut self, model_info: ModelInfo) -> Vec<Action> {
        if self.current.is_none() || self.phase == Phase::Closed {
            return Vec::new();
        }
        vec![Action::Send(Outgoing::Init { model_info })]
    }

    /// A pause took effect: no token follows until `resume`. A `status` frame says so.
    pub fn on_paused(&mut self) -> Vec<Action> {
        match (&self.current, self.phase) {
            (Some(cur), Phase::Paused) => vec![Action::Send(Outgoing::Status {
                operation: "paused".into(),
                progress: None,
                message: format!(
                    "paused after {} tokens; send {{\"type\": \"control\", \"action\": \"resume\"}} to go on",
                    cur.tokens
                ),
            })],
            _ => Vec::new(),
        }
    }

    /// One generated token and the text it completes.
    pub fn on_token(&mut self, piece: &str, id: u32) -> Vec<Action> {
        let Some(cur) = self.current.as_mut() else { return Vec::new() };
        cur.text.push_str(piece);
        cur.tokens += 1;
        if !cur.stream.stream || self.phase == Phase::Closed {
            return Vec::new();
        }
        vec![Action::Send(Outgoing::Token {
            token: piece.to_string(),
            token_id: Some(id),
            generated_text: format!("{}{}", cur.echo, cur.text),
            finished: false,
        })]
    }

    /// The request ended: the closing `token` (when streaming) and the `completion`.
    pub fn on_finished(&mut self, end: Finished) -> Vec<Action> {
        let Some(mut cur) = self.current.take() else { return Vec::new() };
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.phase = Phase::Idle;
        cur.text.push_str(&end.tail);
        let generated_text = format!("{}{}", cur.echo, cur.text);
        let mut out = Vec::new();
        if cur.stream.stream {
            out.push(Action::Send(Outgoing::Token {
                token: end.tail,
                token_id: None,
                generated_text: generated_text.clone(),
                finished: true,
            }));
        }
        out.push(Action::Send(Outgoing::Completion {
            generated_text,
            usage: end.usage,
            finish_reason: end.reason.as_str().to_string(),
            timing: cur.stream.include_timing.then_some(end.timing),
        }));
        out
    }

    /// The request failed (bad prompt, context, GPU): an `error`; the connection goes on.
    pub fn on_failed(&mut self, e: &Error) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.current = None;
        self.phase = Phase::Idle;
        vec![Action::Send(Outgoing::error(e))]
    }

    /// The connection closed: a running request must be stopped.
    pub fn on_close(&mut self) -> Vec<Action> {
        let was = self.phase;
        self.phase = Phase::Closed;
        self.current = None;
        match was {
            Phase::Generating | Phase::Paused => vec![Action::Control(Control::Stop)],
            Phase::Idle | Phase::Closed => Vec::new(),
        }
    }
}

fn control_name(c: Control) -> &'static str {
    match c {
        Control::Stop => "stop",
        Control::Pause => "pause",
        Control::Resume => "resume",
    }
}
